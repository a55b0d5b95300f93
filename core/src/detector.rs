//! The detector: records in, scores and alert decisions out, in one
//! sequence — features, forest (fixed, or learning online), per-key score
//! smoothing, threshold (fixed, or tracking a target alert rate), rules.
//!
//! The pipelines of `isoflow run`, the gRPC `Score` call, `isoflow score`
//! and the trainer's evaluation all score through it, so a record gets the
//! same score and decision whichever way it comes; it is where the online
//! forest and the alerting settings of a model ([`pb::Learning`],
//! [`pb::Alerting`]) take effect. A record's score depends only on the
//! records before it: the online forest learns a row after scoring it, and
//! the smoothed score and threshold include nothing later.

use crate::decision;
use crate::engine::Engine;
use crate::features::slots::{owner_of, KeyHash, Owner, SlotTable};
use crate::features::state::{layout_hash, Restored, StateChanges, SMOOTHER_TABLE};
use crate::features::{FeaturePipeline, ZEngine};
use crate::forest::PackedForest;
use crate::input::Columns;
use crate::learn::{LearnSettings, OnlineForest};
use crate::model::{pb, ModelError};
use crate::score::{RowScore, ScoreError, Scorer};

/// Scores, decisions and z-scores of a batch of records.
#[derive(Clone, Debug, Default)]
pub struct Scored {
    /// Reported score (smoothed when the model says so) and mean path per row.
    pub scores: Vec<RowScore>,
    /// Alert decision per row.
    pub alerts: Vec<bool>,
    /// Row-major |z| per z-feature.
    pub z: Vec<f32>,
    /// Row-major feature vectors, as computed (label-risk columns the
    /// forest does not see included).
    pub matrix: Vec<f32>,
}

/// Why a detector could not be built or could not score.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// Model refused.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Scoring failed.
    #[error(transparent)]
    Score(#[from] ScoreError),
    /// Label feedback could not be read.
    #[error(transparent)]
    Input(#[from] crate::input::InputError),
}

/// How a detector is run.
#[derive(Clone, Copy, Debug, Default)]
pub struct DetectorOptions {
    /// Keep learning from the stream (online forest).
    pub learn: bool,
    /// Seed of regrown trees; default: the model's training seed.
    pub seed: Option<u64>,
    /// Keys of state per keyed feature.
    pub slot_capacity: usize,
    /// Note the keys whose state changes, for a changelog
    /// ([`Detector::take_state`]).
    pub track_state: bool,
}

enum Forest {
    Fixed(Box<dyn Scorer>),
    Online {
        forest: Box<OnlineForest>,
        scorer: Option<Box<dyn Scorer>>,
        /// `forest.updates()` when `scorer` was built.
        built_at: u64,
        gate: Gate,
    },
}

/// Per-key EWMA of the forest score.
struct Smoother {
    alpha: f64,
    slots: SlotTable,
    state: Vec<f64>,
    key: Option<usize>,
}

/// A threshold that tracks a target share of recent scores.
struct RateThreshold {
    rate: f64,
    recent: Vec<f32>,
    next: usize,
    window: usize,
    since: usize,
    current: Option<f64>,
    /// Reused for the quantile, so a refresh does not allocate.
    scratch: Vec<f32>,
}

/// How often (records) the tracked threshold is recomputed.
const RATE_REFRESH: usize = 64;

impl RateThreshold {
    fn new(rate: f64, window: usize) -> Self {
        Self {
            rate,
            recent: Vec::with_capacity(window),
            next: 0,
            window,
            since: 0,
            current: None,
            scratch: Vec::with_capacity(window),
        }
    }

    /// The threshold for the next score, then `score` counted.
    fn judge(&mut self, score: f32, fallback: f64) -> f64 {
        let threshold = self.current.unwrap_or(fallback);
        if self.recent.len() < self.window {
            self.recent.push(score);
        } else {
            self.recent[self.next] = score;
        }
        self.next = (self.next + 1) % self.window;
        self.since += 1;
        if self.since >= RATE_REFRESH && self.recent.len() >= self.window / 4 {
            self.since = 0;
            self.scratch.clear();
            self.scratch.extend_from_slice(&self.recent);
            let k = ((1.0 - self.rate) * (self.scratch.len() - 1) as f64).round() as usize;
            let (_, v, _) = self.scratch.select_nth_unstable_by(k, f32::total_cmp);
            // A threshold just above the quantile's score, so ties at the
            // quantile (many equal scores) do not all alert.
            self.current = Some(f64::from(*v).next_up());
        }
        threshold
    }
}

/// The one scoring sequence of a model.
pub struct Detector {
    model: std::sync::Arc<pb::Model>,
    options: DetectorOptions,
    pipeline: FeaturePipeline,
    engine: Engine,
    z_engine: Box<dyn ZEngine>,
    forest: Forest,
    smoother: Option<Smoother>,
    rate: Option<RateThreshold>,
    /// Label-risk columns that raise the score instead of entering the forest.
    risk_columns: Vec<usize>,
}

impl Detector {
    /// A detector for `model` on `engine`. A model with no trees (a preset
    /// cold start) needs `options.learn`.
    pub fn new(
        model: impl Into<std::sync::Arc<pb::Model>>,
        engine: Engine,
        options: &DetectorOptions,
    ) -> Result<Self, DetectError> {
        Self::with_scorer(model, engine, options, None)
    }

    /// [`Self::new`], with a scorer already built for the model's forest
    /// (taken back by [`Self::into_scorer`]): building one packs the forest
    /// and, on a GPU, uploads it, which a caller scoring many small
    /// requests does once.
    pub fn with_scorer(
        model: impl Into<std::sync::Arc<pb::Model>>,
        engine: Engine,
        options: &DetectorOptions,
        scorer: Option<Box<dyn Scorer>>,
    ) -> Result<Self, DetectError> {
        let model = model.into();
        let spec = model.feature_spec.clone().unwrap_or_default();
        let capacity = options.slot_capacity.max(1);
        let mut pipeline = FeaturePipeline::new(&spec, capacity);
        let has_trees = model.forest.as_ref().is_some_and(|f| !f.trees.is_empty());
        let forest = if options.learn {
            crate::model::validate_spec(&spec)?;
            if has_trees {
                crate::model::validate(&model)?;
            }
            let trained = model.forest.as_ref().filter(|_| has_trees);
            let training = model.training.clone().unwrap_or_default();
            let settings = LearnSettings::new(
                model.learning.as_ref(),
                trained.map_or(DEFAULT_TREES, |f| f.trees.len()),
                trained.map_or(DEFAULT_SAMPLE_SIZE, |f| f.sample_size as usize),
                options.seed.unwrap_or(training.seed),
            );
            let gate = Gate {
                skip_alerting: model.learning.is_some_and(|l| l.skip_alerting),
                run: 0,
                follow_after: settings.interval,
            };
            let online = OnlineForest::new(settings, pipeline.dims(), trained);
            Forest::Online {
                forest: Box::new(online),
                scorer: None,
                built_at: u64::MAX,
                gate,
            }
        } else {
            if !has_trees {
                return Err(ModelError::Invalid(
                    "the model has no trees: score it with --learn, which grows them from the stream".into(),
                )
                .into());
            }
            match scorer {
                Some(scorer) => Forest::Fixed(scorer),
                None => Forest::Fixed(engine.scorer(&PackedForest::from_model(&model)?)?),
            }
        };
        let alerting = model.alerting.unwrap_or_default();
        let smoother = (alerting.score_half_life > 0.0).then(|| Smoother {
            alpha: crate::features::spec::half_life_weight(alerting.score_half_life),
            slots: SlotTable::new(capacity),
            state: Vec::new(),
            key: pipeline.track_entity(),
        });
        let mut alerting = alerting;
        if options.learn && has_trees && alerting.alert_rate == 0.0 {
            // A forest that keeps learning rescales its scores as it goes:
            // the trained threshold serves until there are recent scores,
            // then the threshold tracks the model's contamination share of
            // them.
            alerting.alert_rate = model
                .training
                .as_ref()
                .map(|t| t.contamination)
                .filter(|c| *c > 0.0 && *c < 1.0)
                .unwrap_or(crate::preset::COLD_ALERT_RATE);
        }
        let rate = (alerting.alert_rate > 0.0).then(|| {
            let window = if alerting.rate_window == 0 {
                DEFAULT_RATE_WINDOW
            } else {
                alerting.rate_window as usize
            };
            RateThreshold::new(alerting.alert_rate, window.max(4))
        });
        let mut smoother = smoother;
        if options.track_state {
            pipeline.track_changes();
            if let Some(s) = smoother.as_mut() {
                s.slots.track_changes();
            }
        }
        let risk_columns = if alerting.risk_outside_forest {
            pipeline.risk_columns()
        } else {
            Vec::new()
        };
        Ok(Self {
            risk_columns,
            z_engine: engine.z_engine()?,
            options: *options,
            model,
            pipeline,
            engine,
            forest,
            smoother,
            rate,
        })
    }

    /// The feature pipeline (what to read, z names, label feedback).
    pub fn pipeline(&self) -> &FeaturePipeline {
        &self.pipeline
    }

    /// The model scoring now.
    pub fn model(&self) -> &std::sync::Arc<pb::Model> {
        &self.model
    }

    /// How this detector runs.
    pub fn options(&self) -> &DetectorOptions {
        &self.options
    }

    /// A learning forest as it is now, and how many times it was regrown;
    /// `None` for a fixed forest, or before a cold start's first trees.
    pub fn learnt_forest(&self) -> Option<(&PackedForest, u64)> {
        match &self.forest {
            Forest::Online { forest, .. } => forest.forest().map(|f| (f, forest.updates())),
            Forest::Fixed(_) => None,
        }
    }

    /// The fixed forest's scorer, for a later [`Self::with_scorer`]; `None`
    /// for a learning forest.
    pub fn into_scorer(self) -> Option<Box<dyn Scorer>> {
        match self.forest {
            Forest::Fixed(scorer) => Some(scorer),
            Forest::Online { .. } => None,
        }
    }

    /// Scores with `model` from now on (with `scorer` already built for its
    /// forest, as [`Self::with_scorer`] takes one). Per-key state (features
    /// and score smoothing) carries over when the feature spec (and for
    /// smoothing, the alerting settings) is unchanged; otherwise it starts
    /// afresh. Returns whether the features' state was kept.
    pub fn swap_model(
        &mut self,
        model: impl Into<std::sync::Arc<pb::Model>>,
        scorer: Option<Box<dyn Scorer>>,
    ) -> Result<bool, DetectError> {
        let mut next = Self::with_scorer(model, self.engine.clone(), &self.options, scorer)?;
        let kept = next.model.feature_spec == self.model.feature_spec;
        if kept {
            std::mem::swap(&mut next.pipeline, &mut self.pipeline);
            std::mem::swap(&mut next.z_engine, &mut self.z_engine);
            if next.model.alerting == self.model.alerting {
                std::mem::swap(&mut next.smoother, &mut self.smoother);
                std::mem::swap(&mut next.rate, &mut self.rate);
            }
        }
        *self = next;
        Ok(kept)
    }

    /// Keys that lost their state slot so far: the features' and the
    /// score smoother's.
    pub fn evictions(&self) -> u64 {
        let smoothed = self.smoother.as_ref().map_or(0, |s| s.slots.evictions());
        self.pipeline.evictions() + smoothed
    }

    /// The fullest per-key table's keys as a share of its capacity, the
    /// score smoother's table included.
    pub fn state_fill(&self) -> f64 {
        let smoothed = self.smoother.as_ref().map_or(0.0, |s| s.slots.fill());
        self.pipeline.state_fill().max(smoothed)
    }

    /// Forgets the per-key state of records from `partitions`
    /// ([`FeaturePipeline::release_partitions`]), score smoothing included.
    /// Returns the state entries released.
    pub fn release_partitions(&mut self, partitions: &[i32]) -> usize {
        let owners: Vec<Owner> = partitions.iter().map(|&p| owner_of(p)).collect();
        let smoothed = self
            .smoother
            .as_mut()
            .map_or(0, |s| s.slots.release(&owners));
        self.pipeline.release_partitions(partitions) + smoothed
    }

    /// The layout of the state of `table` ([`Self::take_state`]): a stable
    /// hash of what the state means, which changes with the feature spec
    /// (and for the score smoother, the alerting settings). State recorded
    /// under another layout must not be restored.
    pub fn state_layout(&self, table: u16) -> u64 {
        use prost::Message;
        let spec = self
            .model
            .feature_spec
            .as_ref()
            .map(Message::encode_to_vec)
            .unwrap_or_default();
        let alerting = match table {
            SMOOTHER_TABLE => self
                .model
                .alerting
                .as_ref()
                .map(Message::encode_to_vec)
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        layout_hash(&[b"isoflow state 1", &spec, &alerting])
    }

    /// The state of every key changed (or evicted) since last asked, for a
    /// changelog: features, then the score smoother
    /// ([`SMOOTHER_TABLE`]). Empty unless built with
    /// [`DetectorOptions::track_state`]. Label risk is not included: the
    /// feedback it learns from is a topic of its own, read again on start.
    pub fn take_state(&mut self) -> Result<StateChanges, DetectError> {
        let mut out = StateChanges::default();
        self.pipeline.take_state(self.z_engine.as_mut(), &mut out)?;
        if let Some(s) = self.smoother.as_mut() {
            let state = &s.state;
            out.add_table(SMOOTHER_TABLE, &mut s.slots, |slot, bytes| {
                let v = state.get(slot).copied().unwrap_or_default();
                bytes.extend_from_slice(&v.to_le_bytes());
            });
        }
        Ok(out)
    }

    /// Takes back keys' state as [`Self::take_state`] gave it (records of
    /// the current [`Self::state_layout`] only). Returns the records taken.
    pub fn restore_state(&mut self, records: &[Restored<'_>]) -> Result<usize, DetectError> {
        let mut taken = self
            .pipeline
            .restore_state(records, self.z_engine.as_mut())?;
        if let Some(s) = self.smoother.as_mut() {
            for r in records.iter().filter(|r| r.table == SMOOTHER_TABLE) {
                let Ok(v) = <[u8; 8]>::try_from(r.value) else {
                    continue;
                };
                let (slot, _) = s.slots.restore(r.owner, r.key);
                let i = slot as usize;
                if i >= s.state.len() {
                    s.state.resize(i + 1, 0.0);
                }
                s.state[i] = f64::from_le_bytes(v);
                taken += 1;
            }
        }
        Ok(taken)
    }

    /// Backend name.
    pub fn backend(&self) -> &'static str {
        self.engine.name()
    }

    /// Reads label feedback (JSON lines or CSV: records with their label
    /// and `label_ts`) and queues it for the label-risk features.
    pub fn load_feedback(&mut self, path: &str) -> Result<(), DetectError> {
        let wanted = self.pipeline.feedback_wanted();
        let columns = crate::input::read_path(path, &wanted)?;
        self.add_feedback(&columns);
        Ok(())
    }

    /// Queues the labels of feedback records read with
    /// `pipeline().feedback_wanted()` (a file, or a feedback topic as it
    /// comes); each applies from the first record at or after its
    /// `label_ts`. Returns how many were queued.
    pub fn add_feedback(&mut self, columns: &Columns) -> usize {
        let labels = self.pipeline.labels_from(columns);
        let queued = labels.len();
        self.pipeline.add_labels(labels);
        queued
    }

    /// Scores a batch of records read with `pipeline().wanted()`.
    pub fn score(&mut self, columns: &Columns) -> Result<Scored, DetectError> {
        let features = self.pipeline.compute(columns, self.z_engine.as_mut())?;
        self.judge(features.matrix, features.z, Some(columns))
    }

    /// Scores feature vectors computed elsewhere (row-major, `dims()` per
    /// row): a request that sends features, or a shadow model judging the
    /// live model's features. `columns` are the records they came from,
    /// when there are any (per-key score smoothing needs their keys).
    pub fn score_features(
        &mut self,
        matrix: Vec<f32>,
        columns: Option<&Columns>,
    ) -> Result<Scored, DetectError> {
        self.judge(matrix, Vec::new(), columns)
    }

    /// Forest, risk, smoothing, threshold and rules over `matrix`.
    fn judge(
        &mut self,
        matrix: Vec<f32>,
        z: Vec<f32>,
        columns: Option<&Columns>,
    ) -> Result<Scored, DetectError> {
        let dims = self.pipeline.dims().max(1);
        let rows = matrix.len() / dims;
        // The forest sees risk columns as a constant (trees never split on
        // one); each row's largest risk is kept aside to raise its score.
        let (risks, forest_rows) = if self.risk_columns.is_empty() {
            (Vec::new(), None)
        } else {
            let mut seen = matrix.clone();
            let risks = seen
                .chunks_exact_mut(dims)
                .map(|row| {
                    self.risk_columns.iter().fold(0f32, |r, &c| {
                        let v = row[c];
                        row[c] = 0.0;
                        r.max(v)
                    })
                })
                .collect();
            (risks, Some(seen))
        };
        let seen = forest_rows.as_deref().unwrap_or(&matrix);
        let mut scores = vec![RowScore::default(); rows];
        let mut alerts = Vec::with_capacity(rows);
        // Segments end where the online forest may update, so each row is
        // judged, then (unless it alerted and the model skips those) learnt,
        // before the next segment is scored.
        let mut row = 0;
        while row < rows {
            let n = match &self.forest {
                Forest::Fixed(_) => rows - row,
                Forest::Online { forest, .. } => forest.rows_until_update().min(rows - row),
            };
            let part = &seen[row * dims..(row + n) * dims];
            let out = &mut scores[row..row + n];
            self.forest_part(part, out)?;
            if !risks.is_empty() {
                for (s, &r) in out.iter_mut().zip(&risks[row..row + n]) {
                    s.score = s.score.max(0.5 + 0.5 * r) + 0.3 * s.score;
                }
            }
            if let Some(smoother) = &mut self.smoother {
                smoother.apply(columns, row, out);
            }
            let rules = self.pipeline.rules();
            for (s, x) in out.iter().zip(part.chunks_exact(dims)) {
                let threshold = match &mut self.rate {
                    Some(rate) => rate.judge(s.score, self.model.threshold),
                    None => self.model.threshold,
                };
                alerts.push(decision::is_alert(s.score, threshold, x, rules));
            }
            if let Forest::Online { forest, gate, .. } = &mut self.forest {
                let judged = &alerts[row..row + n];
                for (x, &alert) in part.chunks_exact(dims).zip(judged) {
                    if gate.admits(alert) {
                        forest.learn(x);
                    }
                }
            }
            row += n;
        }
        Ok(Scored {
            scores,
            alerts,
            z,
            matrix,
        })
    }

    /// Forest scores of `part`, which the forest scores as it is now.
    fn forest_part(&mut self, part: &[f32], out: &mut [RowScore]) -> Result<(), DetectError> {
        match &mut self.forest {
            Forest::Fixed(scorer) => scorer.score(part, out)?,
            Forest::Online {
                forest,
                scorer,
                built_at,
                ..
            } => {
                // Until a cold start's first forest, rows score 0.
                if let Some(packed) = forest.forest() {
                    if *built_at != forest.updates() || scorer.is_none() {
                        *scorer = Some(self.engine.scorer(packed)?);
                        *built_at = forest.updates();
                    }
                    scorer.as_mut().expect("built above").score(part, out)?;
                }
            }
        }
        Ok(())
    }
}

/// Which scored rows the online forest learns.
struct Gate {
    /// Keep alerting rows out.
    skip_alerting: bool,
    /// Alerting rows in a row kept out; at `follow_after` the level has
    /// moved and rows are learnt until one does not alert.
    run: usize,
    follow_after: usize,
}

impl Gate {
    fn admits(&mut self, alert: bool) -> bool {
        if !self.skip_alerting || !alert {
            self.run = 0;
            return true;
        }
        if self.run >= self.follow_after {
            return true;
        }
        self.run += 1;
        false
    }
}

/// Trees of a cold-started forest.
pub const DEFAULT_TREES: usize = 100;
/// ψ of a cold-started forest.
pub const DEFAULT_SAMPLE_SIZE: usize = 256;
/// Scores a tracked threshold covers by default.
pub const DEFAULT_RATE_WINDOW: usize = 4096;

impl Smoother {
    /// Smooths `scores`, the scores of rows `first..` of `columns` (one
    /// unkeyed stream without them).
    fn apply(&mut self, columns: Option<&Columns>, first: usize, scores: &mut [RowScore]) {
        let unkeyed: KeyHash = crate::features::slots::key_hash("");
        for (i, s) in scores.iter_mut().enumerate() {
            let row = first + i;
            let key = match (self.key, columns) {
                (Some(c), Some(columns)) => columns.keys[c].hashes()[row],
                _ => unkeyed,
            };
            let partition = columns.and_then(|c| c.partition.get(row));
            self.slots.set_owner(partition.map_or(0, |&p| owner_of(p)));
            let (slot, fresh) = self.slots.slot_hashed(0, key);
            let i = slot as usize;
            if i >= self.state.len() {
                self.state.resize(i + 1, 0.0);
            }
            let x = f64::from(s.score);
            let v = if fresh {
                x
            } else {
                self.state[i] + self.alpha * (x - self.state[i])
            };
            self.state[i] = v;
            s.score = v as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preset::Preset;

    fn stream(n: usize) -> Vec<serde_json::Value> {
        (0..n)
            .map(|i| {
                let level = if (1200..1220).contains(&i) {
                    40.0
                } else {
                    10.0
                };
                serde_json::json!({
                    "device": if i % 2 == 0 { "a" } else { "b" },
                    "ts": i as f64,
                    "value": level + (i * 7 % 11) as f64 * 0.1,
                })
            })
            .collect()
    }

    /// The metrics preset's cold model of devices' `value`, five trees.
    fn cold_device_model() -> pb::Model {
        let keys = ["device".to_owned()];
        Preset::Metrics
            .cold_model(&keys, "ts", &["value".to_owned()], 5)
            .unwrap()
    }

    fn detector(learn: bool) -> Detector {
        Detector::new(
            cold_device_model(),
            Engine::Cpu,
            &DetectorOptions {
                learn,
                seed: None,
                slot_capacity: 1024,
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn score(d: &mut Detector, records: &[serde_json::Value]) -> Scored {
        let wanted = d.pipeline().wanted().clone();
        let mut cols = Columns::new(&wanted);
        for (i, r) in records.iter().enumerate() {
            cols.push_json(&wanted, r, i + 1, None).unwrap();
        }
        d.score(&cols).unwrap()
    }

    /// A detector keyed by `device` with every kind of per-key state a
    /// changelog carries, a fixed forest and a score smoother.
    fn stateful(engine: Engine) -> Detector {
        let spec = crate::features::spec::SpecFile::parse(
            r#"
key_field = "device"
time_field = "ts"
[[feature]]
name = "value"
kind = "field"
source = "value"
[[feature]]
name = "value_z"
kind = "key_zscore"
source = "value"
alpha = 0.05
warmup = 5
[[feature]]
name = "gap"
kind = "key_gap"
[[feature]]
name = "rate"
kind = "key_rate"
window_s = 30.0
[[feature]]
name = "prev"
kind = "key_lag"
source = "value"
lag = 3
[[feature]]
name = "dev"
kind = "key_deviation"
source = "value"
alpha = 0.1
bucket_s = 10.0
season_s = 40.0
"#,
            "test",
        )
        .unwrap()
        .to_proto()
        .unwrap();
        let mut model = crate::random::random_model(6, 20, 64, 3);
        model.feature_spec = Some(spec);
        model.alerting = Some(pb::Alerting {
            score_half_life: 3.0,
            ..Default::default()
        });
        let options = DetectorOptions {
            slot_capacity: 1024,
            track_state: true,
            ..Default::default()
        };
        Detector::new(model, engine, &options).unwrap()
    }

    /// Records of many devices, each on a partition of its own.
    fn devices(range: std::ops::Range<usize>) -> Vec<(serde_json::Value, i32)> {
        range
            .map(|i| {
                let device = i * 7 % 13;
                let record = serde_json::json!({
                    "device": format!("d{device}"),
                    "ts": (i / 3) as f64,
                    "value": 10.0 + (i * 31 % 17) as f64 * 0.5,
                });
                (record, (device % 4) as i32)
            })
            .collect()
    }

    fn score_on(d: &mut Detector, records: &[(serde_json::Value, i32)]) -> Scored {
        let wanted = d.pipeline().wanted().clone();
        let mut cols = Columns::new(&wanted);
        for (i, (r, partition)) in records.iter().enumerate() {
            cols.push_json(&wanted, r, i + 1, None).unwrap();
            cols.partition.push(*partition);
        }
        d.score(&cols).unwrap()
    }

    /// What a compacted changelog holds after `changes`: each key's last
    /// state, evicted keys gone.
    fn compacted(
        changes: &[StateChanges],
    ) -> std::collections::BTreeMap<(u16, u16, u128), Vec<u8>> {
        let mut log = std::collections::BTreeMap::new();
        for c in changes {
            for r in &c.records {
                let at = (r.owner, r.table, r.key);
                match c.value(r) {
                    Some(v) => log.insert(at, v.to_vec()),
                    None => log.remove(&at),
                };
            }
        }
        log
    }

    /// A detector given the changelog's state of some partitions scores
    /// their next records exactly as the detector that wrote it, whose
    /// state was never lost: z past warm-up, gaps, rates, lags, seasonal
    /// baselines and smoothed scores all carry over.
    fn restored_state_scores_as_the_uninterrupted_detector(engine: Engine) {
        let mut writer = stateful(engine.clone());
        let mut changes = Vec::new();
        for chunk in devices(0..600).chunks(70) {
            score_on(&mut writer, chunk);
            changes.push(writer.take_state().unwrap());
        }
        assert!(writer.take_state().unwrap().is_empty(), "nothing new");
        let log = compacted(&changes);
        // Five tables (z, gap, rate, lag, smoother) for 13 devices, and the
        // deviation's four season buckets each.
        assert_eq!(log.len(), (5 + 4) * 13);
        let mut reader = stateful(engine.clone());
        let records: Vec<Restored<'_>> = log
            .iter()
            .map(|(&(owner, table, key), value)| Restored {
                owner,
                table,
                key,
                value,
            })
            .collect();
        assert_eq!(reader.restore_state(&records).unwrap(), log.len());
        assert!(
            reader.take_state().unwrap().is_empty(),
            "restored, not changed"
        );
        let next = devices(600..700);
        let expected = score_on(&mut writer, &next);
        let got = score_on(&mut reader, &next);
        assert_eq!(got.matrix, expected.matrix);
        assert_eq!(got.scores, expected.scores);
        // Against a detector that never saw the first records.
        let fresh = score_on(&mut stateful(engine), &next);
        assert_ne!(fresh.matrix, expected.matrix);
        // Restored keys belong to their partitions: releasing one drops them.
        assert_eq!(reader.release_partitions(&[1]), (5 + 4) * 3);
    }

    #[test]
    fn restored_state_scores_as_the_uninterrupted_detector_on_the_cpu() {
        restored_state_scores_as_the_uninterrupted_detector(Engine::Cpu);
    }

    /// The GPU keeps z-score state on the device: it is read back for the
    /// changelog and written back on restore.
    #[cfg(feature = "gpu")]
    #[test]
    fn restored_state_scores_as_the_uninterrupted_detector_on_the_gpu() {
        let engine = Engine::select(crate::engine::Backend::Gpu)
            .expect("GPU tests need an adapter (lavapipe in CI)");
        restored_state_scores_as_the_uninterrupted_detector(engine);
    }

    /// Evicted keys are reported without state, so a changelog can drop
    /// them (tombstones); a released partition's keys are not reported.
    #[test]
    fn evicted_keys_leave_the_changelog_and_released_keys_are_not_written() {
        let model = cold_device_model();
        let options = DetectorOptions {
            learn: true,
            slot_capacity: 4,
            track_state: true,
            ..Default::default()
        };
        let mut d = Detector::new(model, Engine::Cpu, &options).unwrap();
        score_on(&mut d, &devices(0..4));
        let first = d.take_state().unwrap();
        assert!(first.records.iter().all(|r| r.value.is_some()));
        score_on(&mut d, &devices(4..40));
        let second = d.take_state().unwrap();
        assert!(
            second.records.iter().any(|r| r.value.is_none()),
            "tombstones"
        );
        let log = compacted(&[first, second]);
        let tables = log
            .keys()
            .map(|&(_, t, _)| t)
            .collect::<std::collections::BTreeSet<_>>();
        for t in tables {
            let held = log.keys().filter(|&&(_, table, _)| table == t).count();
            assert!(held <= 4, "table {t}: {held} keys in a table of 4");
        }
        score_on(&mut d, &devices(40..60));
        d.release_partitions(&[0, 1, 2, 3]);
        assert!(d
            .take_state()
            .unwrap()
            .records
            .iter()
            .all(|r| r.value.is_none()));
    }

    /// A replay cut into other batches, or `isoflow score --learn` over the
    /// whole file, scores every record as the service did.
    #[test]
    fn learning_scores_do_not_depend_on_batching() {
        let records = stream(1500);
        let whole = score(&mut detector(true), &records);
        let mut d = detector(true);
        let mut parts = Scored::default();
        for chunk in records.chunks(97) {
            let s = score(&mut d, chunk);
            parts.scores.extend(s.scores);
            parts.alerts.extend(s.alerts);
        }
        assert_eq!(whole.scores, parts.scores);
        assert_eq!(whole.alerts, parts.alerts);
        // Cold start: nothing scores before the warm-up, the burst does after.
        assert!(whole.scores[..128].iter().all(|s| s.score == 0.0));
        let burst = whole.scores[1218].score;
        let usual = whole.scores[1100].score;
        assert!(burst > usual + 0.05, "burst {burst} usual {usual}");
        assert!(whole.alerts[1200..1225].iter().any(|&a| a));
        assert!(
            !whole.alerts[..1024].iter().any(|&a| a),
            "no alert before the tracked threshold has scores"
        );
    }

    /// The smoother keeps a key table of its own: its evictions and fill
    /// are the detector's too, so the operator's gauges see them.
    #[test]
    fn the_score_smoothers_keys_count_in_the_state_gauges() {
        let model = cold_device_model();
        let options = DetectorOptions {
            learn: true,
            seed: None,
            slot_capacity: 2,
            ..Default::default()
        };
        let mut d = Detector::new(model, Engine::Cpu, &options).unwrap();
        let records: Vec<serde_json::Value> = (0..30)
            .map(|i| serde_json::json!({"device": format!("d{}", i % 3), "ts": i as f64, "value": 1.0}))
            .collect();
        score(&mut d, &records);
        let features = d.pipeline().evictions();
        assert!(d.evictions() > features, "{} vs {features}", d.evictions());
        assert_eq!(d.state_fill(), 1.0);
    }

    #[test]
    fn a_cold_model_needs_learning() {
        let model = cold_device_model();
        let err = Detector::new(model, Engine::Cpu, &DetectorOptions::default())
            .err()
            .unwrap();
        assert!(err.to_string().contains("--learn"), "{err}");
    }
}
