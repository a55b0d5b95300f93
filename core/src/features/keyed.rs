//! Keyed behavioural features: rate, gap and repeat, per entity key.
//!
//! Each keeps a little state per key in a bounded [`SlotTable`], updated in
//! arrival order; the same code runs in the trainer and the service. Times are
//! event times in seconds. Counts are kept as of each key's latest event
//! time, so a late record adds its decayed weight and never a negative gap.

use super::slots::{key_hash, Fingerprint, KeyHash, Owner, SlotTable};
use super::state::{f64s, put_f64s, StateChanges};

/// What a keyed feature measures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KeyedKind {
    /// Decayed count of this key's records over `window_s`, this one included.
    Rate {
        /// Decay time constant (seconds).
        window_s: f64,
    },
    /// Seconds since this key's previous record (0 for its first).
    Gap,
    /// Decayed count of identical earlier records (same key and fields) over `window_s`.
    Repeat {
        /// Decay time constant (seconds).
        window_s: f64,
    },
}

#[derive(Clone, Copy, Debug, Default)]
struct KeyState {
    last_t: f64,
    count: f64,
}

/// One keyed feature's state across records.
#[derive(Debug)]
pub struct KeyedFeature {
    kind: KeyedKind,
    slots: SlotTable,
    state: Vec<KeyState>,
}

impl KeyedFeature {
    /// A feature of `kind` holding state for at most `capacity` keys.
    pub fn new(kind: KeyedKind, capacity: usize) -> Self {
        Self {
            kind,
            slots: SlotTable::new(capacity),
            state: Vec::new(),
        }
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

    /// Adds the keys changed since last asked to `out`, as table `id`.
    pub fn take_state(&mut self, id: u16, out: &mut StateChanges) {
        let state = &self.state;
        out.add_table(id, &mut self.slots, |slot, bytes| {
            let s = state.get(slot).copied().unwrap_or_default();
            put_f64s(bytes, &[s.last_t, s.count]);
        });
    }

    /// Takes back the state of one key as [`Self::take_state`] wrote it;
    /// false (and nothing changed) when `value` is not such a state.
    pub fn restore(&mut self, owner: Owner, key: Fingerprint, value: &[u8]) -> bool {
        let Some(mut v) = f64s(value, 2) else {
            return false;
        };
        let (slot, _) = self.slots.restore(owner, key);
        let i = slot as usize;
        if i >= self.state.len() {
            self.state.resize(i + 1, KeyState::default());
        }
        self.state[i] = KeyState {
            last_t: v.next().expect("two values"),
            count: v.next().expect("two values"),
        };
        true
    }

    /// The feature value of a record of `key` at time `t`, updating the state.
    /// For [`KeyedKind::Repeat`], `key` must already include the compared fields.
    /// A record that does not `count` (a rate's `when` field is zero) gets
    /// the key's decayed rate and adds nothing to it; gaps and repeats count
    /// every record.
    pub fn observe(&mut self, key: &str, t: f64, count: bool) -> f64 {
        self.observe_hashed(key_hash(key), t, count)
    }

    /// Starts loading what [`Self::observe_hashed`] of `key` will read first.
    #[inline]
    pub fn prefetch(&self, key: KeyHash) {
        self.slots.prefetch(0, key);
    }

    /// [`Self::observe`] for a key already hashed with [`key_hash`].
    pub fn observe_hashed(&mut self, key: KeyHash, t: f64, count: bool) -> f64 {
        let (slot, fresh) = self.slots.slot_hashed(0, key);
        let i = slot as usize;
        if i >= self.state.len() {
            self.state.resize(i + 1, KeyState::default());
        }
        let s = &mut self.state[i];
        let counted = if count { 1.0 } else { 0.0 };
        if fresh {
            *s = KeyState {
                last_t: t,
                count: counted,
            };
            return match self.kind {
                KeyedKind::Rate { .. } => counted,
                KeyedKind::Gap | KeyedKind::Repeat { .. } => 0.0,
            };
        }
        // Decayed counts are kept as of the key's latest time. A record from
        // the past (keys spread over partitions arrive interleaved) adds its
        // own decayed weight instead of pretending to be new.
        let dt = t - s.last_t;
        let window = match self.kind {
            KeyedKind::Rate { window_s } | KeyedKind::Repeat { window_s } => window_s,
            KeyedKind::Gap => 1.0,
        };
        let (decay, weight) = if dt >= 0.0 {
            (dt, counted)
        } else {
            (0.0, counted * (dt / window).exp())
        };
        if dt > 0.0 {
            s.last_t = t;
        }
        match self.kind {
            KeyedKind::Rate { .. } => {
                s.count = s.count * (-decay / window).exp() + weight;
                s.count
            }
            KeyedKind::Gap => dt.max(0.0),
            KeyedKind::Repeat { .. } => {
                let before = s.count * (-decay / window).exp();
                s.count = before + weight;
                before
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_counts_recent_events_per_key() {
        let mut f = KeyedFeature::new(KeyedKind::Rate { window_s: 60.0 }, 16);
        assert_eq!(f.observe("a", 0.0, true), 1.0);
        assert_eq!(f.observe("a", 0.0, true), 2.0);
        assert_eq!(f.observe("b", 0.0, true), 1.0);
        // One window later the old two have decayed by e.
        let r = f.observe("a", 60.0, true);
        assert!((r - (2.0 / std::f64::consts::E + 1.0)).abs() < 1e-12, "{r}");
        // A record from the past adds its decayed weight, not a full count.
        let late = f.observe("a", 0.0, true);
        assert!((late - (r + (-1.0f64).exp())).abs() < 1e-12, "{late}");
        // A burst climbs fast.
        let burst: Vec<f64> = (0..10)
            .map(|i| f.observe("c", 100.0 + i as f64, true))
            .collect();
        assert!(burst[9] > 9.0);
    }

    #[test]
    fn a_filtered_rate_counts_only_matching_records() {
        // A rate of failures: successes read the decayed count, add nothing.
        let mut f = KeyedFeature::new(KeyedKind::Rate { window_s: 60.0 }, 16);
        assert_eq!(f.observe("src", 0.0, false), 0.0);
        assert_eq!(f.observe("src", 1.0, true), 1.0);
        assert_eq!(f.observe("src", 1.0, true), 2.0);
        assert_eq!(f.observe("src", 1.0, false), 2.0);
        // The success after the failures still carries their decayed count.
        let later = f.observe("src", 61.0, false);
        assert!((later - 2.0 / std::f64::consts::E).abs() < 1e-12, "{later}");
    }

    #[test]
    fn gap_is_time_since_previous_record_of_the_key() {
        let mut f = KeyedFeature::new(KeyedKind::Gap, 16);
        assert_eq!(f.observe("d", 100.0, true), 0.0);
        assert_eq!(f.observe("d", 160.0, true), 60.0);
        assert_eq!(f.observe("e", 170.0, true), 0.0);
        assert_eq!(f.observe("d", 3760.0, true), 3600.0);
        // A late record does not produce a negative gap.
        assert_eq!(f.observe("d", 3000.0, true), 0.0);
        assert_eq!(f.observe("d", 3770.0, true), 10.0);
    }

    #[test]
    fn repeat_flags_duplicates_within_the_window() {
        let mut f = KeyedFeature::new(KeyedKind::Repeat { window_s: 300.0 }, 16);
        assert_eq!(f.observe("card1|9.99|m1", 0.0, true), 0.0);
        let dup = f.observe("card1|9.99|m1", 5.0, true);
        assert!(dup > 0.98 && dup <= 1.0, "{dup}");
        assert_eq!(f.observe("card1|10.00|m1", 6.0, true), 0.0);
        // Long after, the same values are no longer a duplicate.
        assert!(f.observe("card1|9.99|m1", 5.0 + 3000.0, true) < 0.01);
    }

    #[test]
    fn bounded_state_counts_evictions() {
        let mut f = KeyedFeature::new(KeyedKind::Gap, 2);
        f.observe("a", 0.0, true);
        f.observe("b", 0.0, true);
        f.observe("c", 0.0, true);
        assert_eq!(f.table().evictions(), 1);
    }
}
