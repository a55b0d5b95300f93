//! The feature pipeline: records in, the forest's feature vectors out.
//!
//! One implementation serves the trainer and the scorer, so a model sees at
//! serving time exactly the features it was trained on. Stateless features
//! are computed here; keyed z-scores are delegated to a [`ZEngine`] (CPU twin
//! or GPU kernel) after the host has mapped keys to slots in arrival order.

pub mod feedback;
pub mod history;
pub mod keyed;
pub mod slots;
pub mod spec;
pub mod state;
pub mod zscore;

use crate::input::{Columns, Wanted};
use crate::model::pb::{self, feature::Kind};
use crate::score::ScoreError;
use feedback::{Label, LabelQueue, LabelRisk};
use history::{Direction, HistoryFeature, HistoryKind, WindowStat};
use keyed::{KeyedFeature, KeyedKind};
use slots::{combine, key_hash, owner_of, KeyHash, Owner, SlotTable};
use state::{Restored, StateChanges};
use zscore::{KeySlotTable, ZEntry, ZParams, ZState};

/// Default bound on keyed state slots.
pub const DEFAULT_SLOT_CAPACITY: usize = 1 << 20;

/// How many records ahead a batch prefetches the per-key state index: far
/// enough to cover a miss to memory, near enough to stay in cache.
const PREFETCH_AHEAD: usize = 8;

/// Runs z-score entries against resident per-slot state.
pub trait ZEngine: Send {
    /// Applies `entries` in order; writes |z| (kernel encoding) per entry.
    /// `slots` is the number of slots allocated so far.
    fn run(
        &mut self,
        params: &[ZParams],
        entries: &[ZEntry],
        slots: usize,
        out: &mut [f32],
    ) -> Result<(), ScoreError>;

    /// The state of each of `slots` (of `allocated` so far), in order: what
    /// a changelog records of them.
    fn read_states(&mut self, slots: &[u32], allocated: usize) -> Result<Vec<ZState>, ScoreError>;

    /// Sets the state of slots (of `allocated` so far): restored keys.
    fn write_states(
        &mut self,
        states: &[(u32, ZState)],
        allocated: usize,
    ) -> Result<(), ScoreError>;
}

/// The CPU twin of the z-score kernel.
#[derive(Debug, Default)]
pub struct CpuZEngine {
    states: Vec<ZState>,
}

impl ZEngine for CpuZEngine {
    fn run(
        &mut self,
        params: &[ZParams],
        entries: &[ZEntry],
        slots: usize,
        out: &mut [f32],
    ) -> Result<(), ScoreError> {
        zscore::check_entries(params, entries, slots, out)?;
        if self.states.len() < slots {
            self.states.resize(slots, ZState::default());
        }
        zscore::run_cpu(&mut self.states, params, entries, out);
        Ok(())
    }

    fn read_states(&mut self, slots: &[u32], _: usize) -> Result<Vec<ZState>, ScoreError> {
        let state = |&s: &u32| self.states.get(s as usize).copied().unwrap_or_default();
        Ok(slots.iter().map(state).collect())
    }

    fn write_states(
        &mut self,
        states: &[(u32, ZState)],
        allocated: usize,
    ) -> Result<(), ScoreError> {
        if self.states.len() < allocated {
            self.states.resize(allocated, ZState::default());
        }
        for &(slot, state) in states {
            if let Some(s) = self.states.get_mut(slot as usize) {
                *s = state;
            }
        }
        Ok(())
    }
}

enum Op {
    Field { column: usize, log1p: bool },
    Zscore { index: usize },
    Keyed { index: usize },
    History { index: usize },
    Risk { index: usize },
}

struct History {
    feature: HistoryFeature,
    key: Option<usize>,
    column: usize,
    needs_time: bool,
}

struct Risk {
    risk: LabelRisk,
    key: Option<usize>,
    /// The key field, read from feedback records too.
    key_field: String,
}

struct Keyed {
    feature: KeyedFeature,
    key: Option<usize>,
    /// Key columns whose values must also match (repeat).
    fields: Vec<usize>,
    /// Numeric column that must be non-zero for a record to count (rate).
    when: Option<usize>,
    name: String,
}

struct ZFeature {
    column: usize,
    key: Option<usize>,
}

/// Feature vectors of a batch of records.
#[derive(Clone, Debug, Default)]
pub struct FeatureBatch {
    /// Records in the batch.
    pub rows: usize,
    /// Row-major `rows × dims` matrix the forest scores.
    pub matrix: Vec<f32>,
    /// Row-major `rows × z-features` |z| values (+inf kept).
    pub z: Vec<f32>,
}

/// A threshold rule on one feature: the record alerts when the feature's
/// value (as the forest sees it) is at or above `limit`, whatever its score.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Feature name.
    pub name: String,
    /// Column in the feature vector.
    pub column: usize,
    /// Alert at or above this value.
    pub limit: f32,
}

/// Turns record columns into feature vectors, keeping per-key state across batches.
pub struct FeaturePipeline {
    ops: Vec<Op>,
    wanted: Wanted,
    z_features: Vec<ZFeature>,
    z_params: Vec<ZParams>,
    z_names: Vec<String>,
    keyed: Vec<Keyed>,
    rules: Vec<Rule>,
    slots: KeySlotTable,
    entries: Vec<ZEntry>,
    z_raw: Vec<f32>,
    /// Each record's key per keyed feature, row-major: kept between
    /// batches so its buffer is reused.
    keyed_keys: Vec<KeyHash>,
    history: Vec<History>,
    risks: Vec<Risk>,
    labels: LabelQueue,
    key_field: String,
}

impl FeaturePipeline {
    /// Builds the pipeline for a (validated) feature spec.
    pub fn new(spec: &pb::FeatureSpec, slot_capacity: usize) -> Self {
        let mut wanted = Wanted {
            time: (!spec.time_field.is_empty()).then(|| spec.time_field.clone()),
            ..Wanted::default()
        };
        let key_of = |field: &str| {
            if field.is_empty() {
                spec.key_field.clone()
            } else {
                field.to_owned()
            }
        };
        let mut keyed = Vec::new();
        fn column(list: &mut Vec<String>, name: &str) -> usize {
            list.iter().position(|n| n == name).unwrap_or_else(|| {
                list.push(name.to_owned());
                list.len() - 1
            })
        }
        let mut ops = Vec::new();
        let mut history = Vec::new();
        let mut risks = Vec::new();
        let mut pipeline_z = Vec::new();
        let (mut params, mut names) = (Vec::new(), Vec::new());
        for f in &spec.features {
            if let Some((kind, key_field, fields, when)) = f.kind.as_ref().and_then(keyed_parts) {
                ops.push(Op::Keyed { index: keyed.len() });
                keyed.push((f.name.clone(), kind, key_of(key_field), fields, when));
                continue;
            }
            match &f.kind {
                Some(Kind::Field(field)) => ops.push(Op::Field {
                    column: column(&mut wanted.numeric, &field.source),
                    log1p: field.log1p,
                }),
                Some(Kind::KeyZscore(z)) => {
                    let key_field = if z.key_field.is_empty() {
                        &spec.key_field
                    } else {
                        &z.key_field
                    };
                    let key = (!key_field.is_empty()).then(|| column(&mut wanted.keys, key_field));
                    ops.push(Op::Zscore {
                        index: pipeline_z.len(),
                    });
                    pipeline_z.push(ZFeature {
                        column: column(&mut wanted.numeric, &z.source),
                        key,
                    });
                    params.push(ZParams {
                        alpha: z.alpha as f32,
                        warmup: z.warmup,
                        robust_z: z.robust_z as f32,
                        _pad: 0,
                    });
                    names.push(f.name.clone());
                }
                Some(
                    kind @ (Kind::KeyDeviation(_)
                    | Kind::KeyLag(_)
                    | Kind::KeyWindow(_)
                    | Kind::KeySpread(_)),
                ) => {
                    let (kind, source, key_field, needs_time) = history_parts(kind);
                    let key_field = key_of(key_field);
                    ops.push(Op::History {
                        index: history.len(),
                    });
                    history.push(History {
                        feature: HistoryFeature::new(kind, slot_capacity),
                        key: (!key_field.is_empty()).then(|| column(&mut wanted.keys, &key_field)),
                        column: column(&mut wanted.numeric, source),
                        needs_time,
                    });
                }
                Some(Kind::KeyLabelRisk(r)) => {
                    let key_field = key_of(&r.key_field);
                    ops.push(Op::Risk { index: risks.len() });
                    risks.push(Risk {
                        risk: LabelRisk::new(
                            r.window_s,
                            if r.prior > 0.0 { r.prior } else { 1.0 },
                            slot_capacity,
                        ),
                        key: (!key_field.is_empty()).then(|| column(&mut wanted.keys, &key_field)),
                        key_field,
                    });
                }
                _ => {}
            }
        }
        let mut rules = Vec::new();
        for (column, f) in spec.features.iter().enumerate() {
            let limit = match &f.kind {
                Some(Kind::KeyZscore(z)) => z.alert_z,
                Some(Kind::KeyRate(r)) => r.alert_above,
                Some(Kind::KeyGap(g)) => g.alert_above,
                Some(Kind::KeyRepeat(r)) => r.alert_above,
                _ => 0.0,
            };
            if limit > 0.0 {
                rules.push(Rule {
                    name: f.name.clone(),
                    column,
                    limit: limit as f32,
                });
            }
        }
        let keyed = keyed
            .into_iter()
            .map(|(name, kind, key_field, fields, when)| Keyed {
                feature: KeyedFeature::new(kind, slot_capacity),
                key: (!key_field.is_empty()).then(|| column(&mut wanted.keys, &key_field)),
                fields: fields.iter().map(|f| column(&mut wanted.keys, f)).collect(),
                when: (!when.is_empty()).then(|| column(&mut wanted.numeric, when)),
                name,
            })
            .collect();
        Self {
            ops,
            wanted,
            z_features: pipeline_z,
            z_params: params,
            z_names: names,
            keyed,
            rules,
            slots: KeySlotTable::new(slot_capacity),
            entries: Vec::new(),
            z_raw: Vec::new(),
            keyed_keys: Vec::new(),
            history,
            risks,
            labels: LabelQueue::default(),
            key_field: spec.key_field.clone(),
        }
    }

    /// Columns of the feature vector that hold label risk.
    pub fn risk_columns(&self) -> Vec<usize> {
        self.ops
            .iter()
            .enumerate()
            .filter(|(_, op)| matches!(op, Op::Risk { .. }))
            .map(|(j, _)| j)
            .collect()
    }

    /// Makes sure the spec's entity key (`key_field`) is read, and returns
    /// its column in [`Columns::keys`]; `None` when the spec has none.
    pub fn track_entity(&mut self) -> Option<usize> {
        let name = self.key_field.clone();
        if name.is_empty() {
            return None;
        }
        Some(match self.wanted.keys.iter().position(|k| *k == name) {
            Some(c) => c,
            None => {
                self.wanted.keys.push(name);
                self.wanted.keys.len() - 1
            }
        })
    }

    /// True when a feature reads label feedback ([`Self::add_labels`]).
    pub fn uses_feedback(&self) -> bool {
        !self.risks.is_empty()
    }

    /// The fields a feedback record must provide: the risk features' keys,
    /// [`feedback::LABEL_FIELD`] and [`feedback::LABEL_TS_FIELD`], and the
    /// event time when the spec has one.
    pub fn feedback_wanted(&self) -> Wanted {
        let mut keys: Vec<String> = Vec::new();
        for r in &self.risks {
            if !keys.contains(&r.key_field) {
                keys.push(r.key_field.clone());
            }
        }
        Wanted {
            numeric: vec![
                feedback::LABEL_FIELD.to_owned(),
                feedback::LABEL_TS_FIELD.to_owned(),
            ],
            keys,
            time: self.wanted.time.clone(),
        }
    }

    /// Labels of feedback records read with [`Self::feedback_wanted`].
    pub fn labels_from(&self, cols: &Columns) -> Vec<Label> {
        let wanted = self.feedback_wanted();
        let unkeyed = key_hash("");
        // Each risk feature's key column among the feedback columns.
        let key_columns: Vec<Option<usize>> = self
            .risks
            .iter()
            .map(|r| {
                (!r.key_field.is_empty()).then(|| {
                    wanted
                        .keys
                        .iter()
                        .position(|k| *k == r.key_field)
                        .expect("feedback_wanted lists every risk key")
                })
            })
            .collect();
        (0..cols.rows)
            .map(|row| Label {
                known_at: cols.numeric[1][row],
                anomaly: cols.numeric[0][row] != 0.0,
                keys: key_columns
                    .iter()
                    .map(|c| c.map_or(unkeyed, |c| cols.keys[c].hashes()[row]))
                    .collect(),
            })
            .collect()
    }

    /// Queues confirmed labels; each is applied before the first record
    /// whose event time is at or after its `known_at`.
    pub fn add_labels(&mut self, labels: Vec<Label>) {
        self.labels.extend(labels);
    }

    /// The fields a pipeline for `model`'s feature spec reads, without
    /// keeping one.
    pub fn wanted_for(model: &pb::Model) -> Wanted {
        let none = pb::FeatureSpec::default();
        // The slot capacity does not change which fields are read.
        Self::new(model.feature_spec.as_ref().unwrap_or(&none), 1).wanted
    }

    /// Fields the input must provide.
    pub fn wanted(&self) -> &Wanted {
        &self.wanted
    }

    /// Names of the z-features, in output column order.
    pub fn z_names(&self) -> &[String] {
        &self.z_names
    }

    /// Threshold rules on features (|z|, rates, gaps, repeats).
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Forest input width.
    pub fn dims(&self) -> usize {
        self.ops.len()
    }

    /// Every table of per-key state.
    fn tables(&self) -> impl Iterator<Item = &SlotTable> {
        std::iter::once(self.slots.table())
            .chain(self.keyed.iter().map(|k| k.feature.table()))
            .chain(self.history.iter().map(|h| h.feature.table()))
            .chain(self.risks.iter().map(|r| r.risk.table()))
    }

    /// [`Self::tables`], to change.
    fn tables_mut(&mut self) -> impl Iterator<Item = &mut SlotTable> {
        std::iter::once(self.slots.table_mut())
            .chain(self.keyed.iter_mut().map(|k| k.feature.table_mut()))
            .chain(self.history.iter_mut().map(|h| h.feature.table_mut()))
            .chain(self.risks.iter_mut().map(|r| r.risk.table_mut()))
    }

    /// Keys that lost their state slot so far, over all keyed features.
    pub fn evictions(&self) -> u64 {
        self.tables().map(SlotTable::evictions).sum()
    }

    /// The fullest per-key table's keys as a share of its capacity: at 1
    /// its features evict a key for each new one.
    pub fn state_fill(&self) -> f64 {
        self.tables().map(SlotTable::fill).fold(0.0, f64::max)
    }

    /// Forgets the per-key state of records from `partitions` (a key
    /// belongs to the partition whose record used it last), as when those
    /// partitions move to another consumer: should one come back, its keys
    /// start afresh instead of from state that missed what happened
    /// meanwhile. Returns the state entries released, over all features.
    pub fn release_partitions(&mut self, partitions: &[i32]) -> usize {
        let owners: Vec<Owner> = partitions.iter().map(|&p| owner_of(p)).collect();
        self.tables_mut().map(|t| t.release(&owners)).sum()
    }

    /// Starts noting the keys whose state changes, for
    /// [`Self::take_state`]: in every table but label risk's, which the
    /// feedback topic rebuilds.
    pub fn track_changes(&mut self) {
        self.slots.table_mut().track_changes();
        self.keyed
            .iter_mut()
            .for_each(|k| k.feature.table_mut().track_changes());
        self.history
            .iter_mut()
            .for_each(|h| h.feature.table_mut().track_changes());
    }

    /// Adds the state of the keys changed since last asked to `out`:
    /// z-scores (table 0, their state read from `engine`), then each rate,
    /// gap or repeat, then each history feature (tables 1, 2, ...).
    pub fn take_state(
        &mut self,
        engine: &mut dyn ZEngine,
        out: &mut StateChanges,
    ) -> Result<(), ScoreError> {
        let changes = self.slots.take_changes();
        let slots: Vec<u32> = changes.iter().filter_map(|c| c.slot).collect();
        let states = engine.read_states(&slots, self.slots.allocated())?;
        let mut states = states.into_iter();
        let table = &self.slots;
        out.add_changes(0, changes, |slot, bytes| {
            let s = states.next().expect("one state per slot");
            bytes.extend_from_slice(&table.origin(slot as u32).to_le_bytes());
            bytes.extend_from_slice(bytemuck::bytes_of(&s));
        });
        for (i, k) in self.keyed.iter_mut().enumerate() {
            k.feature.take_state(1 + i as u16, out);
        }
        let first = 1 + self.keyed.len();
        for (i, h) in self.history.iter_mut().enumerate() {
            h.feature.take_state((first + i) as u16, out);
        }
        Ok(())
    }

    /// Takes back keys' state as [`Self::take_state`] wrote it, z-score
    /// state into `engine`. Returns the records taken; one for a table the
    /// pipeline does not have, or of the wrong size, is passed over.
    pub fn restore_state(
        &mut self,
        records: &[Restored<'_>],
        engine: &mut dyn ZEngine,
    ) -> Result<usize, ScoreError> {
        let (nk, nh) = (self.keyed.len(), self.history.len());
        let mut z = Vec::new();
        let mut taken = 0;
        for r in records {
            let table = usize::from(r.table);
            let ok = match table {
                0 => match r.value.len() == 8 + std::mem::size_of::<ZState>() {
                    true => {
                        let origin = f64::from_le_bytes(r.value[..8].try_into().expect("8 bytes"));
                        let state: ZState = bytemuck::pod_read_unaligned(&r.value[8..]);
                        z.push((self.slots.restore(r.owner, r.key, origin), state));
                        true
                    }
                    false => false,
                },
                t if t <= nk => self.keyed[t - 1].feature.restore(r.owner, r.key, r.value),
                t if t <= nk + nh => self.history[t - 1 - nk]
                    .feature
                    .restore(r.owner, r.key, r.value),
                _ => false,
            };
            taken += usize::from(ok);
        }
        engine.write_states(&z, self.slots.allocated())?;
        Ok(taken)
    }

    /// Makes the keys looked up next belong to `owner`, in every table.
    fn set_owner(&mut self, owner: Owner) {
        self.tables_mut().for_each(|t| t.set_owner(owner));
    }

    /// True when some feature needs event times ([`Columns::time`]).
    pub fn needs_time(&self) -> bool {
        !self.keyed.is_empty()
            || !self.risks.is_empty()
            || self.history.iter().any(|h| h.needs_time)
    }

    /// Computes the feature vectors of `cols` (read with [`Self::wanted`]),
    /// records in order, z-scores on `engine`.
    pub fn compute(
        &mut self,
        cols: &Columns,
        engine: &mut dyn ZEngine,
    ) -> Result<FeatureBatch, ScoreError> {
        let rows = cols.rows;
        if self.needs_time() && cols.time.len() != rows {
            let names: Vec<&str> = self.keyed.iter().map(|k| k.name.as_str()).collect();
            let names = if names.is_empty() {
                "windowed, seasonal and label-risk".to_owned()
            } else {
                names.join(", ")
            };
            return Err(ScoreError::Features(format!(
                "features {names} need event times: set time_field in the feature spec (epoch seconds)"
            )));
        }
        let hash_of = |c: usize, row: usize| cols.keys[c].hashes()[row];
        let owner = |row: usize| cols.partition.get(row).map_or(0, |&p| owner_of(p));
        // Owners change rarely from one row to the next (records arrive in
        // runs per partition): tables are told only when they do.
        let mut owning = None;
        let mut own = |pipeline: &mut Self, row: usize| {
            let o = owner(row);
            if owning != Some(o) {
                owning = Some(o);
                pipeline.set_owner(o);
            }
        };
        let unkeyed = key_hash("");
        let nz = self.z_features.len();
        let mut z = vec![0f32; rows * nz];
        if nz > 0 {
            self.entries.clear();
            self.entries.reserve(rows * nz);
            for row in 0..rows {
                own(self, row);
                for (index, zf) in self.z_features.iter().enumerate() {
                    if let (Some(k), true) = (zf.key, row + PREFETCH_AHEAD < rows) {
                        self.slots
                            .prefetch(index as u32, hash_of(k, row + PREFETCH_AHEAD));
                    }
                    let key = zf.key.map_or(unkeyed, |k| hash_of(k, row));
                    let entry =
                        self.slots
                            .entry_hashed(index as u32, key, cols.numeric[zf.column][row]);
                    self.entries.push(entry);
                }
            }
            self.z_raw.resize(self.entries.len(), 0.0);
            engine.run(
                &self.z_params,
                &self.entries,
                self.slots.allocated(),
                &mut self.z_raw,
            )?;
            for (out, &raw) in z.iter_mut().zip(&self.z_raw) {
                *out = zscore::reported(raw);
            }
        }
        let nk = self.keyed.len();
        let mut keyed_values = vec![0f32; rows * nk];
        // Every record's key first, so the state lookups below can run
        // ahead of themselves. A repeat's key is the tuple (key, fields...),
        // hashed from the hashes of its parts.
        self.keyed_keys.clear();
        for row in 0..rows {
            self.keyed_keys.extend(self.keyed.iter().map(|k| {
                k.fields
                    .iter()
                    .fold(k.key.map_or(unkeyed, |c| hash_of(c, row)), |h, &c| {
                        combine(h, hash_of(c, row))
                    })
            }));
        }
        for row in 0..rows {
            own(self, row);
            for (index, k) in self.keyed.iter_mut().enumerate() {
                if let Some(&ahead) = self.keyed_keys.get((row + PREFETCH_AHEAD) * nk + index) {
                    k.feature.prefetch(ahead);
                }
                let counts = k.when.is_none_or(|c| cols.numeric[c][row] != 0.0);
                let key = self.keyed_keys[row * nk + index];
                keyed_values[row * nk + index] =
                    k.feature.observe_hashed(key, cols.time[row], counts) as f32;
            }
        }
        let nh = self.history.len();
        let mut history_values = vec![0f32; rows * nh];
        let nr = self.risks.len();
        let mut risk_values = vec![0f32; rows * nr];
        if nh + nr > 0 {
            for row in 0..rows {
                own(self, row);
                let t = cols.time.get(row).copied().unwrap_or(0.0);
                for (index, h) in self.history.iter_mut().enumerate() {
                    let key = h.key.map_or(unkeyed, |c| hash_of(c, row));
                    history_values[row * nh + index] =
                        h.feature
                            .observe_hashed(key, t, cols.numeric[h.column][row])
                            as f32;
                }
                if nr > 0 {
                    for label in self.labels.due(t) {
                        for (r, &key) in self.risks.iter_mut().zip(&label.keys) {
                            r.risk.learn(key, label.known_at, label.anomaly);
                        }
                    }
                    for (index, r) in self.risks.iter_mut().enumerate() {
                        let key = r.key.map_or(unkeyed, |c| hash_of(c, row));
                        risk_values[row * nr + index] = r.risk.risk(key, t) as f32;
                    }
                }
            }
        }
        let dims = self.ops.len();
        let mut matrix = vec![0f32; rows * dims];
        for (j, op) in self.ops.iter().enumerate() {
            match *op {
                Op::Field { column, log1p } => {
                    for (row, &x) in cols.numeric[column].iter().enumerate() {
                        matrix[row * dims + j] = if log1p { signed_log1p(x) } else { x } as f32;
                    }
                }
                Op::Zscore { index } => {
                    for row in 0..rows {
                        matrix[row * dims + j] = z[row * nz + index];
                    }
                }
                Op::Keyed { index } => {
                    for row in 0..rows {
                        matrix[row * dims + j] = keyed_values[row * nk + index];
                    }
                }
                Op::History { index } => {
                    for row in 0..rows {
                        matrix[row * dims + j] = history_values[row * nh + index];
                    }
                }
                Op::Risk { index } => {
                    for row in 0..rows {
                        matrix[row * dims + j] = risk_values[row * nr + index];
                    }
                }
            }
        }
        Ok(FeatureBatch { rows, matrix, z })
    }
}

/// A keyed feature's kind, key field, compared fields (repeat) and
/// counting field (rate's `when`; empty counts every record).
fn keyed_parts(kind: &Kind) -> Option<(KeyedKind, &str, &[String], &str)> {
    match kind {
        Kind::KeyRate(r) => Some((
            KeyedKind::Rate {
                window_s: r.window_s,
            },
            &r.key_field,
            &[],
            &r.when,
        )),
        Kind::KeyGap(g) => Some((KeyedKind::Gap, &g.key_field, &[], "")),
        Kind::KeyRepeat(r) => Some((
            KeyedKind::Repeat {
                window_s: r.window_s,
            },
            &r.key_field,
            &r.fields,
            "",
        )),
        _ => None,
    }
}

fn direction_of(d: i32) -> Direction {
    match pb::Direction::try_from(d) {
        Ok(pb::Direction::Up) => Direction::Up,
        Ok(pb::Direction::Down) => Direction::Down,
        _ => Direction::Both,
    }
}

/// A history feature's kind, source field, key field and whether it needs
/// event times.
fn history_parts(kind: &Kind) -> (HistoryKind, &str, &str, bool) {
    match kind {
        Kind::KeyDeviation(d) => (
            HistoryKind::Deviation {
                alpha: d.alpha,
                warmup: d.warmup,
                robust_z: d.robust_z,
                direction: direction_of(d.direction),
                fast_alpha: d.fast_alpha,
                bucket_s: d.bucket_s,
                season_s: d.season_s,
            },
            &d.source,
            &d.key_field,
            d.bucket_s > 0.0,
        ),
        Kind::KeySpread(x) => (
            HistoryKind::Spread { alpha: x.alpha },
            &x.source,
            &x.key_field,
            false,
        ),
        Kind::KeyLag(l) => (
            HistoryKind::Lag {
                lag: l.lag.clamp(1, history::MAX_LAG),
                delta: l.delta,
            },
            &l.source,
            &l.key_field,
            false,
        ),
        Kind::KeyWindow(w) => (
            HistoryKind::Window {
                window_s: w.window_s,
                stat: match pb::WindowStat::try_from(w.stat) {
                    Ok(pb::WindowStat::Count) => WindowStat::Count,
                    Ok(pb::WindowStat::Ratio) => WindowStat::Ratio,
                    _ => WindowStat::Mean,
                },
                direction: direction_of(w.direction),
                cap: w.cap,
            },
            &w.source,
            &w.key_field,
            true,
        ),
        _ => unreachable!("history_parts is called for history kinds only"),
    }
}

/// sign(x)·ln(1 + |x|): compresses heavy tails (amounts, byte counts) symmetrically.
pub fn signed_log1p(x: f64) -> f64 {
    x.signum() * x.abs().ln_1p()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spec keyed by `card`, timed by `ts`, with `features` (TOML).
    fn card_spec(features: &str) -> pb::FeatureSpec {
        let text = format!("key_field = \"card\"\ntime_field = \"ts\"\n{features}");
        spec::SpecFile::parse(&text, "test")
            .unwrap()
            .to_proto()
            .unwrap()
    }

    /// A repeat is the same card, amount and merchant again; a part that
    /// differs, or the same text split differently between the parts, is
    /// another tuple.
    #[test]
    fn repeat_keys_are_tuples_of_the_key_and_fields() {
        let spec = card_spec(
            r#"
[[feature]]
name = "dup"
kind = "key_repeat"
fields = ["amount", "merchant"]
window_s = 300.0
"#,
        );
        let mut features = FeaturePipeline::new(&spec, 1 << 10);
        let rows = [
            ("c1", "10", "m1"),
            ("c1", "10", "m1"),
            ("c1", "10", "m2"),
            ("c2", "10", "m1"),
            ("c1", "11", "m1"),
            ("c1", "10", "m1"),
            ("a\u{1f}b", "c", "m"),
            ("a", "b\u{1f}c", "m"),
        ];
        let mut cols = Columns::new(features.wanted());
        for (i, (card, amount, merchant)) in rows.iter().enumerate() {
            let record = serde_json::json!({
                "card": card, "amount": amount, "merchant": merchant, "ts": i as f64,
            });
            cols.push_json(features.wanted(), &record, i + 1, None)
                .unwrap();
        }
        let batch = features.compute(&cols, &mut CpuZEngine::default()).unwrap();
        let dup: Vec<bool> = batch.matrix.iter().map(|&v| v > 0.5).collect();
        assert_eq!(dup, [false, true, false, false, false, true, false, false]);
    }

    /// The fill an operator watches is the fullest table's: here the
    /// repeat feature's, whose tuples outnumber the cards.
    #[test]
    fn state_fill_is_the_fullest_tables_share_of_capacity() {
        let spec = card_spec(
            r#"
[[feature]]
name = "amount_z"
kind = "key_zscore"
source = "amount"
alpha = 0.1
[[feature]]
name = "dup"
kind = "key_repeat"
fields = ["amount"]
window_s = 300.0
"#,
        );
        let mut features = FeaturePipeline::new(&spec, 4);
        assert_eq!(features.state_fill(), 0.0);
        let mut fills = Vec::new();
        for (i, amount) in [1.0, 2.0, 3.0, 4.0, 5.0].into_iter().enumerate() {
            let mut cols = Columns::new(features.wanted());
            let record = serde_json::json!({"card": "c1", "amount": amount, "ts": i as f64});
            cols.push_json(features.wanted(), &record, 1, None).unwrap();
            features.compute(&cols, &mut CpuZEngine::default()).unwrap();
            fills.push(features.state_fill());
        }
        // One card holds one z slot; each amount is a new tuple.
        assert_eq!(fills, [0.25, 0.5, 0.75, 1.0, 1.0]);
        assert_eq!(features.evictions(), 1);
    }

    /// A partition given up and later back starts its keys afresh: its
    /// device's gap reads 0, not the whole time it was away, and its z
    /// baseline is new. Keys of the partition kept are untouched.
    #[test]
    fn released_partitions_start_their_keys_afresh() {
        let spec = card_spec(
            r#"
[[feature]]
name = "gap"
kind = "key_gap"
[[feature]]
name = "amount_z"
kind = "key_zscore"
source = "amount"
alpha = 0.1
[[feature]]
name = "prev"
kind = "key_lag"
source = "amount"
lag = 1
"#,
        );
        let mut features = FeaturePipeline::new(&spec, 64);
        let batch = |features: &mut FeaturePipeline, rows: &[(&str, i32, f64)]| {
            let mut cols = Columns::new(features.wanted());
            for (i, &(card, partition, ts)) in rows.iter().enumerate() {
                let record = serde_json::json!({"card": card, "amount": 10.0 + ts, "ts": ts});
                cols.push_json(features.wanted(), &record, i + 1, None)
                    .unwrap();
                cols.partition.push(partition);
            }
            let out = features.compute(&cols, &mut CpuZEngine::default()).unwrap();
            let dims = features.dims();
            (0..rows.len())
                .map(|r| out.matrix[r * dims..(r + 1) * dims].to_vec())
                .collect::<Vec<_>>()
        };
        batch(
            &mut features,
            &[("a", 0, 0.0), ("b", 1, 0.0), ("a", 0, 1.0), ("b", 1, 1.0)],
        );
        // Three features keep state for each of the two cards.
        assert_eq!(features.release_partitions(&[1]), 3);
        assert_eq!(features.release_partitions(&[1]), 0);
        let back = batch(&mut features, &[("a", 0, 1000.0), ("b", 1, 1000.0)]);
        assert_eq!(back[0][0], 999.0, "kept partition's gap");
        assert_eq!(back[1][0], 0.0, "released partition's gap starts afresh");
        assert_eq!(back[0][2], 11.0, "kept partition's previous amount");
        assert_eq!(back[1][2], 0.0, "released key has no previous amount");
        assert!(back[1][1] == 0.0, "a new z baseline: {:?}", back[1]);
        assert_eq!(features.evictions(), 0);
    }
}
