//! Per-key EWMA z-scores: the CPU twin of `shaders/zscore.wgsl`.
//!
//! Each (z-feature, key) pair owns a slot of [`ZState`]. The host assigns
//! slots, shifts each value by the first value its slot saw (computed in f64,
//! so f32 state keeps its precision when a series sits far from zero), and
//! flags the record that (re)starts a slot. Records of one slot are applied in
//! arrival order; slots are independent, which is what lets the GPU run one
//! invocation per slot.

use super::slots::{key_hash, Changed, Fingerprint, KeyHash, Owner, SlotTable};
use crate::score::ScoreError;
use bytemuck::{Pod, Zeroable};

/// Entry flag: this record starts its slot (first sighting or slot reuse).
pub const FLAG_RESET: u32 = 1;

/// Written instead of +inf (a nonzero deviation against zero variance):
/// kernels cannot produce infinities portably, so the host maps it back.
pub const Z_INFINITE: f32 = -1.0;

/// Largest deviation from a slot's origin that reaches the f32 state: beyond
/// it, the squared deviation in the variance update would overflow f32 and
/// leave the key's variance infinite, its z silent for good. Clamped there,
/// one absurd value widens the baseline, which then decays back like any
/// other outlier's.
pub const Z_VALUE_LIMIT: f64 = 1e18;

/// One record for one z-feature, as uploaded to the GPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct ZEntry {
    /// State slot.
    pub slot: u32,
    /// [`FLAG_RESET`] or 0.
    pub flags: u32,
    /// Value minus the slot's origin.
    pub value: f32,
    /// Index into the per-feature parameter table.
    pub param: u32,
}

/// EWMA parameters of one z-feature.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct ZParams {
    /// Weight of the newest record.
    pub alpha: f32,
    /// Records before z is reported.
    pub warmup: u32,
    /// Robust baseline above 0: records beyond this many standard
    /// deviations stay out of it (up to `warmup` in a row), and a key's
    /// first records weigh 1/n.
    pub robust_z: f32,
    /// Padding to 16 bytes.
    pub _pad: u32,
}

/// State of one slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct ZState {
    /// EWMA mean (shifted by the slot origin).
    pub mean: f32,
    /// EWMA variance.
    pub var: f32,
    /// Records seen by this slot.
    pub count: u32,
    /// Robust baseline: records in a row kept out of the baseline.
    pub rejected: u32,
}

/// Applies one record to its slot and returns |z| before the update
/// (0 in warm-up, [`Z_INFINITE`] for a deviation against zero variance).
/// Mirrors `zscore.wgsl` operation for operation.
#[inline]
pub fn step(state: &mut ZState, params: &ZParams, entry: &ZEntry) -> f32 {
    if entry.flags & FLAG_RESET != 0 {
        *state = ZState {
            mean: entry.value,
            var: 0.0,
            count: 1,
            rejected: 0,
        };
        return 0.0;
    }
    let d = entry.value - state.mean;
    let z = if state.count < params.warmup {
        0.0
    } else if state.var > 0.0 {
        d.abs() / state.var.sqrt()
    } else if d == 0.0 {
        0.0
    } else {
        Z_INFINITE
    };
    let mut alpha = params.alpha;
    if params.robust_z > 0.0 {
        // A running mean and variance for the first records (weight 1/n),
        // then the EWMA. A warmed-up record beyond robust_z is kept out of
        // the baseline, unless `warmup` records in a row were: then the
        // level has moved and the EWMA follows it again.
        alpha = alpha.max(1.0 / (state.count as f32 + 1.0));
        let outlier = state.count >= params.warmup
            && state.var > 0.0
            && d.abs() > params.robust_z * state.var.sqrt();
        if outlier && state.rejected < params.warmup {
            state.rejected += 1;
            state.count = state.count.saturating_add(1);
            return z;
        }
        state.rejected = 0;
    }
    let incr = alpha * d;
    state.mean += incr;
    state.var = (1.0 - alpha) * (state.var + d * incr);
    state.count = state.count.saturating_add(1);
    z
}

/// Maps a kernel |z| to the reported value (+inf for [`Z_INFINITE`]).
#[inline]
pub fn reported(z: f32) -> f32 {
    if z < 0.0 {
        f32::INFINITY
    } else {
        // |z| of 0 can come out as -0.0 on one backend and 0.0 on the
        // other; both print as 0.
        z + 0.0
    }
}

/// Bounded map from (z-feature, key) to state slot, with each slot's origin
/// (the first value it saw). When full, a key not used recently loses its
/// slot (see [`SlotTable`]); the eviction is counted and the key's next
/// record restarts from scratch.
#[derive(Debug)]
pub struct KeySlotTable {
    slots: SlotTable,
    origin: Vec<f64>,
}

impl KeySlotTable {
    /// A table of at most `capacity` slots (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            slots: SlotTable::new(capacity),
            origin: Vec::new(),
        }
    }

    /// Slots handed out so far (state arrays must be at least this long).
    pub fn allocated(&self) -> usize {
        self.slots.allocated()
    }

    /// The table this feature keeps its keys in (evictions, fill, owners).
    pub fn table(&self) -> &SlotTable {
        &self.slots
    }

    /// [`Self::table`], to set the owner of the keys looked up next or
    /// release a partition's keys.
    pub fn table_mut(&mut self) -> &mut SlotTable {
        &mut self.slots
    }

    /// Keys used or evicted since last asked ([`SlotTable::take_changes`]).
    pub fn take_changes(&mut self) -> Vec<Changed> {
        self.slots.take_changes()
    }

    /// The first value `slot` saw, which its state is shifted by.
    pub fn origin(&self, slot: u32) -> f64 {
        self.origin.get(slot as usize).copied().unwrap_or(0.0)
    }

    /// The slot of a restored key, owned by `owner`, whose state is
    /// shifted by `origin`.
    pub fn restore(&mut self, owner: Owner, key: Fingerprint, origin: f64) -> u32 {
        let (slot, _) = self.slots.restore(owner, key);
        let i = slot as usize;
        if i >= self.origin.len() {
            self.origin.resize(i + 1, 0.0);
        }
        self.origin[i] = origin;
        slot
    }

    /// Maps one record to an entry: its slot, reset flag and shifted value.
    pub fn entry(&mut self, feature: u32, key: &str, value: f64) -> ZEntry {
        self.entry_hashed(feature, key_hash(key), value)
    }

    /// Starts loading what [`Self::entry_hashed`] of `key` will read first.
    #[inline]
    pub fn prefetch(&self, feature: u32, key: KeyHash) {
        self.slots.prefetch(feature, key);
    }

    /// [`Self::entry`] for a key already hashed with [`key_hash`].
    pub fn entry_hashed(&mut self, feature: u32, key: KeyHash, value: f64) -> ZEntry {
        let (slot, fresh) = self.slots.slot_hashed(feature, key);
        let i = slot as usize;
        if i >= self.origin.len() {
            self.origin.resize(i + 1, 0.0);
        }
        if fresh {
            self.origin[i] = value;
            return ZEntry {
                slot,
                flags: FLAG_RESET,
                value: 0.0,
                param: feature,
            };
        }
        ZEntry {
            slot,
            flags: 0,
            value: (value - self.origin[i]).clamp(-Z_VALUE_LIMIT, Z_VALUE_LIMIT) as f32,
            param: feature,
        }
    }
}

/// Refuses a batch a z-score engine must not run: one output per entry, and
/// every entry's slot and parameter inside the state and parameter tables.
/// The GPU kernel trusts these indices, so both engines check them the same way.
pub fn check_entries(
    params: &[ZParams],
    entries: &[ZEntry],
    slots: usize,
    out: &[f32],
) -> Result<(), ScoreError> {
    if entries.len() != out.len() {
        return Err(ScoreError::Shape(format!(
            "{} z-score entries, {} output slots",
            entries.len(),
            out.len()
        )));
    }
    if let Some(bad) = entries
        .iter()
        .find(|e| e.slot as usize >= slots || e.param as usize >= params.len())
    {
        return Err(ScoreError::Shape(format!(
            "z-score entry for slot {} / parameter {} is outside {slots} slots / {} parameters",
            bad.slot,
            bad.param,
            params.len()
        )));
    }
    Ok(())
}

/// Runs entries through state on the CPU, in order; writes |z| per entry.
pub fn run_cpu(states: &mut Vec<ZState>, params: &[ZParams], entries: &[ZEntry], out: &mut [f32]) {
    for (entry, z) in entries.iter().zip(out.iter_mut()) {
        let slot = entry.slot as usize;
        if slot >= states.len() {
            states.resize(slot + 1, ZState::default());
        }
        *z = step(&mut states[slot], &params[entry.param as usize], entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One huge finite value must not silence a key's z for good.
    #[test]
    fn a_huge_value_does_not_silence_the_key() {
        let params = [ZParams {
            alpha: 0.1,
            warmup: 10,
            robust_z: 0.0,
            _pad: 0,
        }];
        let mut table = KeySlotTable::new(4);
        let mut states = Vec::new();
        let mut z_of = |value: f64| {
            let entry = table.entry(0, "k", value);
            let mut z = [0f32];
            run_cpu(&mut states, &params, &[entry], &mut z);
            z[0]
        };
        let normal = |i: usize| if i.is_multiple_of(2) { 9.0 } else { 11.0 };
        for i in 0..50 {
            z_of(normal(i));
        }
        z_of(1e20);
        for i in 0..2000 {
            assert!(z_of(normal(i)).is_finite());
        }
        let z = z_of(30.0);
        assert!(
            z > 5.0 && z.is_finite(),
            "z of a 20σ spike after recovery: {z}"
        );
    }

    #[test]
    fn matches_f64_definition_on_a_simple_series() {
        let xs = [10.0, 12.0, 9.0, 11.0, 30.0, 10.0];
        let params = ZParams {
            alpha: 0.5,
            warmup: 2,
            robust_z: 0.0,
            _pad: 0,
        };
        let mut table = KeySlotTable::new(4);
        let mut states = Vec::new();
        let entries: Vec<_> = xs.iter().map(|&x| table.entry(0, "k", x)).collect();
        let mut z = vec![0.0; xs.len()];
        run_cpu(&mut states, &[params], &entries, &mut z);
        // Reference: the f64 recurrence of shared/data/README.md.
        let (mut mean, mut var) = (xs[0], 0.0f64);
        let mut want = vec![0.0];
        for (t, &x) in xs.iter().enumerate().skip(1) {
            let d = x - mean;
            want.push(if t < 2 { 0.0 } else { d.abs() / var.sqrt() });
            let incr = 0.5 * d;
            mean += incr;
            var = 0.5 * (var + d * incr);
        }
        for (g, w) in z.iter().zip(&want) {
            assert!(
                (*g as f64 - w).abs() < 1e-5 * w.max(1.0),
                "{z:?} vs {want:?}"
            );
        }
    }

    /// The robust baseline starts as a running mean and variance, and an
    /// excursion does not move it: the records of a drift keep their full
    /// |z| and the first normal record after it is not flagged, where the
    /// plain EWMA follows the drift. A shift that lasts is followed.
    #[test]
    fn robust_baseline_is_unbiased_early_and_ignores_excursions() {
        let robust = ZParams {
            alpha: 0.05,
            warmup: 10,
            robust_z: 3.0,
            _pad: 0,
        };
        let plain = ZParams {
            robust_z: 0.0,
            ..robust
        };
        let run = |params: ZParams, xs: &[f64]| {
            let mut table = KeySlotTable::new(4);
            let entries: Vec<_> = xs.iter().map(|&x| table.entry(0, "k", x)).collect();
            let mut states = Vec::new();
            let mut z = vec![0.0; xs.len()];
            run_cpu(&mut states, &[params], &entries, &mut z);
            (z, states[0])
        };
        // Ten records alternating 9 and 11: running mean 10, variance 1.
        let mut xs: Vec<f64> = (0..10)
            .map(|i| if i % 2 == 0 { 9.0 } else { 11.0 })
            .collect();
        let (_, state) = run(robust, &xs);
        // The mean is kept relative to the key's first value (9).
        assert!((state.mean - 1.0).abs() < 1e-5, "{state:?}");
        assert!((state.var - 1.0).abs() < 1e-5, "{state:?}");
        // A drift 8 sd up for `warmup` records, then back to normal.
        xs.extend([18.0; 10]);
        xs.push(10.0);
        let (z_robust, _) = run(robust, &xs);
        let (z_plain, _) = run(plain, &xs);
        let drift = &z_robust[10..20];
        assert!(drift.iter().all(|&z| (z - 8.0).abs() < 1e-4), "{drift:?}");
        assert!(z_robust[20] < 1e-4, "return flagged: {}", z_robust[20]);
        assert!(
            z_plain[19] < 4.0,
            "the plain EWMA follows the drift: {}",
            z_plain[19]
        );
        // A level that stays is learnt: |z| falls once `warmup` records in a
        // row were kept out.
        xs.pop();
        xs.extend([18.0; 60]);
        let (z_shift, _) = run(robust, &xs);
        assert!(*z_shift.last().unwrap() < 3.0, "{z_shift:?}");
    }

    #[test]
    fn zero_variance_gives_infinite_or_zero() {
        let params = [ZParams {
            alpha: 0.1,
            warmup: 1,
            robust_z: 0.0,
            _pad: 0,
        }];
        let mut table = KeySlotTable::new(4);
        let entries: Vec<_> = [5.0, 5.0, 6.0]
            .iter()
            .map(|&x| table.entry(0, "k", x))
            .collect();
        let mut z = vec![0.0; 3];
        run_cpu(&mut Vec::new(), &params, &entries, &mut z);
        assert_eq!(z[1], 0.0);
        assert_eq!(reported(z[2]), f32::INFINITY);
    }

    #[test]
    fn keys_are_independent_and_evictions_counted() {
        let mut table = KeySlotTable::new(2);
        let a = table.entry(0, "a", 1.0);
        let b = table.entry(0, "b", 2.0);
        assert_ne!(a.slot, b.slot);
        assert_eq!(table.entry(0, "a", 3.0).flags, 0);
        // Full: "c" takes a slot from an older key.
        let c = table.entry(0, "c", 4.0);
        assert!(c.slot == a.slot || c.slot == b.slot);
        assert_eq!(c.flags, FLAG_RESET);
        assert_eq!(table.table().evictions(), 1);
        // Same key under another feature is another slot.
        let mut wide = KeySlotTable::new(8);
        assert_ne!(wide.entry(1, "a", 1.0).slot, wide.entry(0, "a", 1.0).slot);
    }
}
