//! Simulation plumbing shared by the scenarios: a seeded PRNG, an event-time
//! queue, the incident plan and a flat JSON object writer.
//!
//! The PRNG is written here (SplitMix64 seeding xoshiro256**) rather than taken
//! from a crate so that a seed names the same stream forever, whatever versions
//! the lock file holds.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::io::Write;

use super::Anomaly;

/// xoshiro256** (Blackman & Vigna), seeded through SplitMix64.
#[derive(Debug, Clone)]
pub(crate) struct Rng {
    state: [u64; 4],
}

impl Rng {
    /// A generator for `seed`, decorrelated from other `stream`s of the same seed.
    pub(crate) fn new(seed: u64, stream: u64) -> Self {
        let mut sm = seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let mut next = || {
            sm = sm.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = sm;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self {
            state: [next(), next(), next(), next()],
        }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub(crate) fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform integer in [0, n); `n` must be positive.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform integer in [lo, hi] (inclusive).
    pub(crate) fn between(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Standard normal (Marsaglia's polar method).
    pub(crate) fn normal(&mut self) -> f64 {
        loop {
            let u = 2.0 * self.unit() - 1.0;
            let v = 2.0 * self.unit() - 1.0;
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                return u * (-2.0 * s.ln() / s).sqrt();
            }
        }
    }

    /// Exponential with the given mean: Poisson inter-arrival gaps.
    pub(crate) fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }

    /// `n` sorted offsets uniform in [0, window): arrival times of a burst.
    pub(crate) fn sorted_offsets(&mut self, n: usize, window: f64) -> Vec<f64> {
        let mut offsets: Vec<f64> = (0..n).map(|_| self.uniform(0.0, window)).collect();
        offsets.sort_by(f64::total_cmp);
        offsets
    }
}

/// Pending events ordered by event time, ties in insertion order, so a
/// scenario emits its records with non-decreasing `ts`.
#[derive(Debug)]
pub(crate) struct Timeline<E> {
    heap: BinaryHeap<Slot<E>>,
    inserted: u64,
}

#[derive(Debug)]
struct Slot<E> {
    ts: f64,
    order: u64,
    event: E,
}

impl<E> PartialEq for Slot<E> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<E> Eq for Slot<E> {}
impl<E> PartialOrd for Slot<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Slot<E> {
    // Reversed: BinaryHeap is a max-heap and we want the earliest first.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .ts
            .total_cmp(&self.ts)
            .then(other.order.cmp(&self.order))
    }
}

impl<E> Timeline<E> {
    pub(crate) fn new() -> Self {
        Self {
            heap: BinaryHeap::new(),
            inserted: 0,
        }
    }

    pub(crate) fn push(&mut self, ts: f64, event: E) {
        self.inserted += 1;
        self.heap.push(Slot {
            ts,
            order: self.inserted,
            event,
        });
    }

    /// Event time of the earliest pending event.
    pub(crate) fn peek_ts(&self) -> Option<f64> {
        self.heap.peek().map(|slot| slot.ts)
    }

    pub(crate) fn pop(&mut self) -> Option<(f64, E)> {
        self.heap.pop().map(|slot| (slot.ts, slot.event))
    }
}

/// How often one anomaly kind is injected into a scenario.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IncidentSpec {
    pub(crate) anomaly: Anomaly,
    /// Target share of the scenario's records labelled with this kind.
    pub(crate) share: f64,
    /// Mean labelled records per incident.
    pub(crate) mean_labels: f64,
    /// Incidents start after this fraction of the stream (keys need a
    /// history before they can depart from it).
    pub(crate) earliest: f64,
    /// Incidents start before this fraction of the stream, so that ones
    /// which only show when they end (silences) end inside it.
    pub(crate) latest: f64,
}

/// Below this many records a scenario gets only the incidents its shares pay
/// for; from here on every kind appears at least once.
const EVERY_KIND_FROM: usize = 1_000;

/// Where in a scenario's stream each incident starts: record indices drawn
/// up front, so the share of anomalies follows `count` rather than luck.
#[derive(Debug)]
pub(crate) struct Plan {
    /// (record index, anomaly), latest first so `pop` yields the next one.
    starts: Vec<(usize, Anomaly)>,
}

impl Plan {
    pub(crate) fn new(rng: &mut Rng, count: usize, specs: &[IncidentSpec]) -> Self {
        let mut starts = Vec::new();
        for spec in specs {
            let mut incidents = (count as f64 * spec.share / spec.mean_labels).round() as usize;
            if count >= EVERY_KIND_FROM {
                incidents = incidents.max(1);
            }
            let first = (count as f64 * spec.earliest) as usize;
            let last = ((count as f64 * spec.latest) as usize).max(first + 1);
            for _ in 0..incidents {
                starts.push((rng.between(first, last - 1), spec.anomaly));
            }
        }
        starts.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
        Self { starts }
    }

    /// The next incident due at or before record `index`, if any.
    pub(crate) fn due(&mut self, index: usize) -> Option<Anomaly> {
        match self.starts.last() {
            Some(&(at, anomaly)) if at <= index => {
                self.starts.pop();
                Some(anomaly)
            }
            _ => None,
        }
    }
}

/// Picks indices with probability proportional to fixed weights: some cards
/// and hosts are simply busier than others.
#[derive(Debug)]
pub(crate) struct Weighted {
    cumulative: Vec<f64>,
}

impl Weighted {
    pub(crate) fn new(weights: impl IntoIterator<Item = f64>) -> Self {
        let mut total = 0.0;
        let cumulative = weights
            .into_iter()
            .map(|w| {
                total += w;
                total
            })
            .collect();
        Self { cumulative }
    }

    pub(crate) fn pick(&self, rng: &mut Rng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let target = rng.unit() * total;
        self.cumulative
            .partition_point(|&c| c <= target)
            .min(self.cumulative.len() - 1)
    }
}

/// Records per key that sizes a scenario's key population: short streams get
/// fewer keys, so every key still has a history to call its normal.
pub(crate) fn population(count: usize, records_per_key: usize, min: usize, max: usize) -> usize {
    (count / records_per_key).clamp(min, max)
}

/// Writes one flat JSON object. Field names and string values come from the
/// scenarios and never need escaping; numbers get a fixed number of decimals
/// so output is byte-stable.
pub(crate) struct JsonObject {
    buf: Vec<u8>,
}

impl JsonObject {
    /// Opens an object with the `id` and `ts` every record carries.
    pub(crate) fn new(id: &str, ts: f64) -> Self {
        let mut buf = Vec::with_capacity(192);
        buf.extend_from_slice(b"{\"id\":\"");
        buf.extend_from_slice(id.as_bytes());
        buf.extend_from_slice(b"\",\"ts\":");
        let mut object = Self { buf };
        object.fixed(ts, 3);
        object
    }

    fn name(&mut self, name: &str) {
        self.buf.extend_from_slice(b",\"");
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    /// Writes `value` rounded to `decimals` places. Integer arithmetic rather
    /// than `{:.N}`, which is exact but several times slower; the values here
    /// stay far below 2^53 / 10^decimals.
    fn fixed(&mut self, value: f64, decimals: usize) {
        const SCALE: [u64; 4] = [1, 10, 100, 1000];
        let scale = SCALE[decimals];
        let scaled = (value.abs() * scale as f64).round() as u64;
        if value < 0.0 && scaled != 0 {
            self.buf.push(b'-');
        }
        self.uint(scaled / scale);
        if decimals > 0 {
            self.buf.push(b'.');
            let fraction = scaled % scale;
            let mut digit_scale = scale / 10;
            while digit_scale > 0 {
                self.buf.push(b'0' + (fraction / digit_scale % 10) as u8);
                digit_scale /= 10;
            }
        }
    }

    fn uint(&mut self, mut value: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        self.buf.extend_from_slice(&digits[at..]);
    }

    pub(crate) fn str(mut self, name: &str, value: &str) -> Self {
        self.name(name);
        self.buf.push(b'"');
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.push(b'"');
        self
    }

    /// A number with `decimals` (at most 3) places.
    pub(crate) fn num(mut self, name: &str, value: f64, decimals: usize) -> Self {
        self.name(name);
        self.fixed(value, decimals);
        self
    }

    /// A string of the form `prefix-000index`, written without allocating.
    pub(crate) fn code(mut self, name: &str, prefix: &str, index: usize, width: usize) -> Self {
        let _ = write!(self.buf, ",\"{name}\":\"{prefix}-{index:0width$}\"");
        self
    }

    /// A dotted IPv4 address string.
    pub(crate) fn ip(mut self, name: &str, ip: [u8; 4]) -> Self {
        let [a, b, c, d] = ip;
        let _ = write!(self.buf, ",\"{name}\":\"{a}.{b}.{c}.{d}\"");
        self
    }

    pub(crate) fn int(mut self, name: &str, value: u64) -> Self {
        self.name(name);
        self.uint(value);
        self
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.buf.push(b'}');
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gen_rng_is_stable_and_uniform() {
        let mut a = Rng::new(7, 0);
        let mut b = Rng::new(7, 0);
        let mut c = Rng::new(7, 1);
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..8).map(|_| c.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
        let mean = (0..100_000).map(|_| a.unit()).sum::<f64>() / 100_000.0;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        let normals: Vec<f64> = (0..100_000).map(|_| a.normal()).collect();
        let m = normals.iter().sum::<f64>() / normals.len() as f64;
        let var = normals.iter().map(|x| (x - m).powi(2)).sum::<f64>() / normals.len() as f64;
        assert!(m.abs() < 0.02 && (var - 1.0).abs() < 0.03, "{m} {var}");
        assert!((0..1000).all(|_| a.below(3) < 3));
    }

    #[test]
    fn gen_timeline_pops_in_time_then_insertion_order() {
        let mut t = Timeline::new();
        t.push(5.0, 'c');
        t.push(1.0, 'a');
        t.push(5.0, 'd');
        t.push(2.0, 'b');
        let order: String = std::iter::from_fn(|| t.pop().map(|(_, e)| e)).collect();
        assert_eq!(order, "abcd");
    }

    #[test]
    fn gen_json_object_is_flat_and_fixed_precision() {
        let v = JsonObject::new("x-1", 1.0)
            .str("k", "v")
            .num("a", 2.0 / 3.0, 2)
            .num("b", -0.004, 2)
            .num("c", -12.05, 1)
            .num("d", 1_767_225_600.062_5, 3)
            .num("e", 41.0, 0)
            .int("n", 7)
            .int("z", 0)
            .finish();
        assert_eq!(
            std::str::from_utf8(&v).unwrap(),
            r#"{"id":"x-1","ts":1.000,"k":"v","a":0.67,"b":0.00,"c":-12.1,"d":1767225600.063,"e":41,"n":7,"z":0}"#
        );
    }
}
