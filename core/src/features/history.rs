//! Per-key features of a field's own history: signed deviations from a
//! robust baseline (plain, level shift, seasonal), lagged values, windowed
//! means, counts and ratios.
//!
//! Each keeps a few f64 per key in a bounded [`SlotTable`], updated in
//! arrival order on the CPU; the same code runs in the trainer, `isoflow
//! score` and the service. A record's value is computed from the state
//! before the record updates it, so it depends only on earlier records.

use super::slots::{Fingerprint, KeyHash, Owner, SlotTable};
use super::state::{f64s, put_f64s, StateChanges};

/// Deviations beyond this many standard deviations are reported as this:
/// the forest needs finite columns, and past it every split isolates alike.
pub const DEVIATION_LIMIT: f64 = 1000.0;

pub use crate::model::MAX_LAG;

/// Which side of a deviation counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Signed.
    Both,
    /// Rises only: max(0, d).
    Up,
    /// Falls only: max(0, −d).
    Down,
}

/// What a windowed feature reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowStat {
    /// Decayed mean of earlier values.
    Mean,
    /// Decayed count of earlier records.
    Count,
    /// Value over that mean, minus 1.
    Ratio,
}

/// What a history feature measures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HistoryKind {
    /// (x − mean) / sd against a robust EWMA baseline of the key.
    Deviation {
        /// Baseline EWMA weight.
        alpha: f64,
        /// Records before a deviation is reported.
        warmup: u32,
        /// Outlier rejection in standard deviations (0: off).
        robust_z: f64,
        /// Which side counts.
        direction: Direction,
        /// Above 0: deviation of a fast EWMA (level shift).
        fast_alpha: f64,
        /// Above 0: seasonal bucket width in seconds.
        bucket_s: f64,
        /// Seasonal period in seconds.
        season_s: f64,
    },
    /// The value `lag` records back, or the change since then.
    Lag {
        /// Records back (1 ..= [`MAX_LAG`]).
        lag: u32,
        /// Report `x − x[lag]`.
        delta: bool,
    },
    /// EWMA standard deviation, the record included.
    Spread {
        /// EWMA weight.
        alpha: f64,
    },
    /// Decayed statistic over earlier records.
    Window {
        /// Decay time constant in seconds.
        window_s: f64,
        /// What is reported.
        stat: WindowStat,
        /// With a ratio, [`Direction::Up`] clips it at 0.
        direction: Direction,
        /// Above 0: values enter as at most `cap` × the mean.
        cap: f64,
    },
}

impl HistoryKind {
    /// f64 cells of state per slot.
    fn stride(&self) -> usize {
        match *self {
            // mean, var, count, rejected, fast
            HistoryKind::Deviation { .. } => 5,
            // count, then a ring of `lag` values
            HistoryKind::Lag { lag, .. } => 1 + lag as usize,
            // last time, decayed weight, decayed weighted sum
            HistoryKind::Window { .. } => 3,
            // mean, var, count
            HistoryKind::Spread { .. } => 3,
        }
    }
}

/// One history feature's state across records.
#[derive(Debug)]
pub struct HistoryFeature {
    kind: HistoryKind,
    slots: SlotTable,
    state: Vec<f64>,
}

impl HistoryFeature {
    /// A feature of `kind` holding state for at most `capacity` keys (or
    /// key and season bucket pairs).
    pub fn new(kind: HistoryKind, capacity: usize) -> Self {
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
        let (state, stride) = (&self.state, self.kind.stride());
        out.add_table(id, &mut self.slots, |slot, bytes| {
            let base = slot * stride;
            match state.get(base..base + stride) {
                Some(s) => put_f64s(bytes, s),
                None => put_f64s(bytes, &vec![0.0; stride]),
            }
        });
    }

    /// Takes back the state of one key as [`Self::take_state`] wrote it;
    /// false (and nothing changed) when `value` is not such a state.
    pub fn restore(&mut self, owner: Owner, key: Fingerprint, value: &[u8]) -> bool {
        let stride = self.kind.stride();
        let Some(values) = f64s(value, stride) else {
            return false;
        };
        let (slot, _) = self.slots.restore(owner, key);
        let base = slot as usize * stride;
        if self.state.len() < base + stride {
            self.state.resize(base + stride, 0.0);
        }
        for (s, v) in self.state[base..base + stride].iter_mut().zip(values) {
            *s = v;
        }
        true
    }

    /// Starts loading the state index entry of `key`.
    #[inline]
    pub fn prefetch(&self, key: KeyHash) {
        self.slots.prefetch(0, key);
    }

    /// The value for a record of `key` at event time `t` with field value
    /// `x`, then the state updated with it.
    pub fn observe_hashed(&mut self, key: KeyHash, t: f64, x: f64) -> f64 {
        let namespace = match self.kind {
            HistoryKind::Deviation {
                bucket_s, season_s, ..
            } if bucket_s > 0.0 && season_s > 0.0 => {
                let phase = t.rem_euclid(season_s);
                (phase / bucket_s) as u32
            }
            _ => 0,
        };
        let (slot, fresh) = self.slots.slot_hashed(namespace, key);
        let stride = self.kind.stride();
        let base = slot as usize * stride;
        if self.state.len() < base + stride {
            self.state.resize(base + stride, 0.0);
        }
        let s = &mut self.state[base..base + stride];
        if fresh {
            s.fill(0.0);
        }
        match self.kind {
            HistoryKind::Deviation {
                alpha,
                warmup,
                robust_z,
                direction,
                fast_alpha,
                ..
            } => deviation(s, x, alpha, warmup, robust_z, direction, fast_alpha),
            HistoryKind::Spread { alpha } => {
                let count = s[2];
                if count == 0.0 {
                    s[0] = x;
                    s[1] = 0.0;
                    s[2] = 1.0;
                    return 0.0;
                }
                let a = alpha.max(1.0 / (count + 1.0));
                let d = x - s[0];
                let incr = a * d;
                s[0] += incr;
                s[1] = (1.0 - a) * (s[1] + d * incr);
                s[2] = count + 1.0;
                s[1].sqrt()
            }
            HistoryKind::Lag { lag, delta } => {
                let lag = lag as usize;
                let count = s[0] as usize;
                // The ring holds the last `lag` values; position count % lag
                // is the oldest, exactly `lag` records back.
                let at = 1 + count % lag;
                let out = if count >= lag {
                    if delta {
                        x - s[at]
                    } else {
                        s[at]
                    }
                } else {
                    0.0
                };
                s[at] = x;
                s[0] = (count + 1) as f64;
                out
            }
            HistoryKind::Window {
                window_s,
                stat,
                direction,
                cap,
            } => {
                let (last_t, weight, sum) = (s[0], s[1], s[2]);
                let dt = t - last_t;
                // A late record reads the state as of the key's latest time
                // and adds its own decayed weight, as rates do.
                let (decay, w) = if fresh || dt >= 0.0 {
                    (if fresh { 1.0 } else { (-dt / window_s).exp() }, 1.0)
                } else {
                    (1.0, (dt / window_s).exp())
                };
                let (weight, sum) = (weight * decay, sum * decay);
                let mean = if weight > 0.0 { sum / weight } else { 0.0 };
                let out = match stat {
                    WindowStat::Mean => mean,
                    WindowStat::Count => weight,
                    WindowStat::Ratio if weight > 1e-12 && mean != 0.0 => {
                        let r = x / mean - 1.0;
                        match direction {
                            Direction::Up => r.max(0.0),
                            Direction::Down => (-r).max(0.0),
                            Direction::Both => r,
                        }
                    }
                    WindowStat::Ratio => 0.0,
                };
                let x = if cap > 0.0 && weight > 1e-12 {
                    x.min(cap * mean)
                } else {
                    x
                };
                s[0] = if fresh { t } else { last_t.max(t) };
                s[1] = weight + w;
                s[2] = sum + w * x;
                out
            }
        }
    }
}

/// The robust EWMA deviation of `x` (or of its fast EWMA) against the slot's
/// baseline `s` = [mean, var, count, rejected, fast], then the update: the
/// f64 form of the z-score kernel's robust baseline, with a sign.
fn deviation(
    s: &mut [f64],
    x: f64,
    alpha: f64,
    warmup: u32,
    robust_z: f64,
    direction: Direction,
    fast_alpha: f64,
) -> f64 {
    let (mean, var, count, rejected) = (s[0], s[1], s[2] as u32, s[3] as u32);
    if count == 0 {
        s[0] = x;
        s[1] = 0.0;
        s[2] = 1.0;
        s[3] = 0.0;
        s[4] = x;
        return 0.0;
    }
    let fast = if fast_alpha > 0.0 {
        s[4] + fast_alpha * (x - s[4])
    } else {
        x
    };
    s[4] = fast;
    let sd = var.sqrt();
    let d = x - mean;
    let reported = if count < warmup {
        0.0
    } else {
        let shown = fast - mean;
        // A key whose history is constant has no spread: any change is
        // as far out as a deviation can be.
        let z = if sd > 0.0 {
            shown / sd
        } else if shown == 0.0 {
            0.0
        } else {
            shown.signum() * DEVIATION_LIMIT
        };
        let z = z.clamp(-DEVIATION_LIMIT, DEVIATION_LIMIT);
        match direction {
            Direction::Both => z,
            Direction::Up => z.max(0.0),
            Direction::Down => (-z).max(0.0),
        }
    };
    let mut a = alpha;
    if robust_z > 0.0 {
        a = a.max(1.0 / (count as f64 + 1.0));
        let outlier = count >= warmup && sd > 0.0 && d.abs() > robust_z * sd;
        if outlier && rejected < warmup.max(1) {
            s[3] = (rejected + 1) as f64;
            s[2] = (count + 1) as f64;
            return reported + 0.0;
        }
        s[3] = 0.0;
    }
    let incr = a * d;
    s[0] = mean + incr;
    s[1] = (1.0 - a) * (var + d * incr);
    s[2] = (count.saturating_add(1)) as f64;
    reported + 0.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::slots::key_hash;

    fn dev(direction: Direction) -> HistoryFeature {
        HistoryFeature::new(
            HistoryKind::Deviation {
                alpha: 0.1,
                warmup: 5,
                robust_z: 0.0,
                direction,
                fast_alpha: 0.0,
                bucket_s: 0.0,
                season_s: 0.0,
            },
            16,
        )
    }

    #[test]
    fn deviation_keeps_its_sign_and_each_direction_one_side() {
        let k = key_hash("card");
        let mut both = dev(Direction::Both);
        let mut up = dev(Direction::Up);
        let mut down = dev(Direction::Down);
        let xs = [10.0, 11.0, 9.0, 10.0, 11.0, 9.0, 10.0];
        for (i, &x) in xs.iter().enumerate() {
            let v = both.observe_hashed(k, i as f64, x);
            up.observe_hashed(k, i as f64, x);
            down.observe_hashed(k, i as f64, x);
            if i < 5 {
                assert_eq!(v, 0.0, "warm-up reports 0");
            }
        }
        let spike = both.observe_hashed(k, 7.0, 20.0);
        assert!(spike > 5.0, "{spike}");
        assert!(up.observe_hashed(k, 7.0, 20.0) > 5.0);
        assert_eq!(down.observe_hashed(k, 7.0, 20.0), 0.0);
        let mut both2 = dev(Direction::Both);
        let mut down2 = dev(Direction::Down);
        for (i, &x) in xs.iter().enumerate() {
            both2.observe_hashed(k, i as f64, x);
            down2.observe_hashed(k, i as f64, x);
        }
        assert!(both2.observe_hashed(k, 7.0, 0.0) < -5.0);
        assert!(down2.observe_hashed(k, 7.0, 0.0) > 5.0);
    }

    #[test]
    fn constant_history_gives_a_finite_limit() {
        let k = key_hash("d");
        let mut f = dev(Direction::Both);
        for i in 0..6 {
            assert_eq!(f.observe_hashed(k, i as f64, 3.0), 0.0);
        }
        assert_eq!(f.observe_hashed(k, 6.0, 4.0), DEVIATION_LIMIT);
        assert_eq!(f.observe_hashed(k, 7.0, 1e300), DEVIATION_LIMIT);
    }

    #[test]
    fn seasonal_baselines_are_kept_per_bucket() {
        let k = key_hash("s");
        let mut f = HistoryFeature::new(
            HistoryKind::Deviation {
                alpha: 0.2,
                warmup: 3,
                robust_z: 0.0,
                direction: Direction::Both,
                fast_alpha: 0.0,
                bucket_s: 3600.0,
                season_s: 86400.0,
            },
            64,
        );
        // Nights low, days high, over ten days with a little noise: once
        // warmed up, neither is a deviation in its own hour.
        let mut last = (0.0, 0.0);
        for day in 0..10 {
            for (hour, level) in [(2.0, 1.0), (14.0, 100.0)] {
                let t = day as f64 * 86400.0 + hour * 3600.0;
                let noise = if day % 2 == 0 { 1.0 } else { -1.0 };
                let v = f.observe_hashed(k, t, level + noise);
                if hour == 2.0 {
                    last.0 = v;
                } else {
                    last.1 = v;
                }
            }
        }
        assert!(last.0.abs() < 3.0 && last.1.abs() < 3.0, "{last:?}");
        // A day's level at night is far out.
        assert!(f.observe_hashed(k, 10.0 * 86400.0 + 7200.0, 100.0) > 50.0);
    }

    #[test]
    fn spread_is_the_running_then_ewma_standard_deviation() {
        let k = key_hash("m");
        let mut f = HistoryFeature::new(HistoryKind::Spread { alpha: 0.01 }, 16);
        let xs = [1.0, 3.0, 1.0, 3.0];
        let got: Vec<f64> = xs.iter().map(|&x| f.observe_hashed(k, 0.0, x)).collect();
        // Weights 1/n: the population standard deviation of the records so far.
        assert_eq!(got[0], 0.0);
        assert!((got[1] - 1.0).abs() < 1e-12, "{got:?}");
        let sd3 = (8.0f64 / 9.0).sqrt();
        assert!((got[2] - sd3).abs() < 1e-12, "{got:?}");
        assert!((got[3] - 1.0).abs() < 1e-12, "{got:?}");
    }

    #[test]
    fn lag_reads_the_value_k_records_back_per_key() {
        let mut f = HistoryFeature::new(
            HistoryKind::Lag {
                lag: 2,
                delta: false,
            },
            16,
        );
        let mut d = HistoryFeature::new(
            HistoryKind::Lag {
                lag: 1,
                delta: true,
            },
            16,
        );
        let (a, b) = (key_hash("a"), key_hash("b"));
        let got: Vec<f64> = [(a, 1.0), (b, 50.0), (a, 2.0), (a, 3.0), (a, 4.0), (b, 60.0)]
            .iter()
            .map(|&(k, x)| f.observe_hashed(k, 0.0, x))
            .collect();
        assert_eq!(got, [0.0, 0.0, 0.0, 1.0, 2.0, 0.0]);
        let got: Vec<f64> = [(a, 1.0), (a, 4.0), (b, 5.0), (a, 2.0)]
            .iter()
            .map(|&(k, x)| d.observe_hashed(k, 0.0, x))
            .collect();
        assert_eq!(got, [0.0, 3.0, 0.0, -2.0]);
    }

    #[test]
    fn window_mean_count_and_ratio_exclude_the_record() {
        let k = key_hash("card");
        let mk = |stat| {
            HistoryFeature::new(
                HistoryKind::Window {
                    window_s: 86400.0,
                    stat,
                    direction: Direction::Both,
                    cap: 0.0,
                },
                16,
            )
        };
        let (mut mean, mut count, mut ratio) = (
            mk(WindowStat::Mean),
            mk(WindowStat::Count),
            mk(WindowStat::Ratio),
        );
        for (i, x) in [10.0, 30.0].into_iter().enumerate() {
            let t = i as f64;
            mean.observe_hashed(k, t, x);
            count.observe_hashed(k, t, x);
            ratio.observe_hashed(k, t, x);
        }
        let m = mean.observe_hashed(k, 2.0, 100.0);
        assert!((m - 20.0).abs() < 1e-3, "{m}");
        let c = count.observe_hashed(k, 2.0, 100.0);
        assert!((c - 2.0).abs() < 1e-3, "{c}");
        let r = ratio.observe_hashed(k, 2.0, 100.0);
        assert!((r - 4.0).abs() < 1e-2, "{r}");
        // A day later the history weighs 1/e as much, the mean is the same.
        let c = count.observe_hashed(k, 2.0 + 86400.0, 1.0);
        assert!((c - 3.0 / std::f64::consts::E).abs() < 1e-3, "{c}");
    }
}
