//! Synthetic record streams with injected, labelled anomalies, for demos,
//! benchmarks and accuracy tests.
//!
//! Each [`Scenario`] simulates one user of isoflow (fraud, IoT operations,
//! security, data quality): a population of keys with their own normal, event
//! time that advances by realistic inter-arrival gaps, and incidents injected
//! at planned points of the stream. Every record says whether it is anomalous
//! and which anomaly it is, so scores can be checked against the truth
//! ([`write_truth`]).
//!
//! The one decision that shapes the module: output is a pure function of
//! [`GenOptions`]. The PRNG is our own, numbers are written with fixed
//! decimals, and the corruption draws use their own stream, so changing
//! `corrupt_rate` corrupts different records without changing the rest.
//!
//! Labels are truthful: a record is labelled only when it is the injected
//! anomaly (a burst's first three records, a duplicate's original, the
//! records around a silence are normal). Corruption only replaces normal
//! records, so an injected anomaly is never hidden by it.

mod corrupt;
mod fraud;
mod iot;
mod quality;
mod security;
mod sim;

use std::fmt;
use std::io::Write;
use std::str::FromStr;

use sim::{IncidentSpec, Plan, Rng};

/// Default start of simulated event time: 2026-01-01T00:00:00Z.
pub const DEFAULT_START_TS: f64 = 1_767_225_600.0;

/// Share of quality records corrupted by the quality scenario itself, on top
/// of [`GenOptions::corrupt_rate`]: corrupt events are one of its subjects.
const QUALITY_OWN_CORRUPT_RATE: f64 = 0.005;

/// Which user's stream to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// Card transactions: stolen cards, duplicates, bursts.
    Fraud,
    /// Device metrics: drifting devices, silent devices.
    Iot,
    /// Auth and firewall events: SSH brute force, DDoS, firewall-deny storms.
    Security,
    /// Feed events: gaps and corrupt records.
    Quality,
    /// The four above interleaved, about a quarter each.
    Mixed,
}

impl Scenario {
    /// Every scenario, in the order the CLI lists them.
    pub const ALL: [Scenario; 5] = [
        Scenario::Fraud,
        Scenario::Iot,
        Scenario::Security,
        Scenario::Quality,
        Scenario::Mixed,
    ];

    /// The concrete scenarios that records belong to (all but `Mixed`).
    pub const CONCRETE: [Scenario; 4] = [
        Scenario::Fraud,
        Scenario::Iot,
        Scenario::Security,
        Scenario::Quality,
    ];

    /// Suffix of the Kafka topic this scenario's records go to. `Mixed` never
    /// labels a record (each record carries its concrete scenario); it answers
    /// "mixed" only so the function is total.
    pub fn topic_suffix(self) -> &'static str {
        match self {
            Scenario::Fraud => "transactions",
            Scenario::Iot => "metrics",
            Scenario::Security => "auth",
            Scenario::Quality => "events",
            Scenario::Mixed => "mixed",
        }
    }

    /// The name used on the command line and as the record id prefix.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Fraud => "fraud",
            Scenario::Iot => "iot",
            Scenario::Security => "security",
            Scenario::Quality => "quality",
            Scenario::Mixed => "mixed",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = GenError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let wanted = text.trim();
        Scenario::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| GenError::UnknownScenario(text.to_string()))
    }
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenOptions {
    /// Which stream to simulate.
    pub scenario: Scenario,
    /// Number of records to generate (at least 1).
    pub count: usize,
    /// PRNG seed: the same options give byte-identical records.
    pub seed: u64,
    /// Probability in [0, 1] that a normal record is replaced by corrupt bytes.
    pub corrupt_rate: f64,
    /// Simulated event time of the start of the stream, epoch seconds.
    pub start_ts: f64,
}

impl Default for GenOptions {
    fn default() -> Self {
        Self {
            scenario: Scenario::Mixed,
            count: 10_000,
            seed: 1,
            corrupt_rate: 0.0,
            start_ts: DEFAULT_START_TS,
        }
    }
}

/// One generated record: the Kafka key and value, plus its truth.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedRecord {
    /// Concrete scenario (never `Mixed`); decides the topic.
    pub scenario: Scenario,
    /// Unique id, `<scenario>-<8-digit index>`, also the record's "id" field.
    pub id: String,
    /// Entity key (card, device, source or — for DDoS — destination IP, feed):
    /// the Kafka message key.
    pub key: String,
    /// The JSON object bytes, or corrupt bytes when `kind` is "corrupt".
    pub value: Vec<u8>,
    /// Whether the record is an injected anomaly (corrupt records included).
    pub label: bool,
    /// "normal" or the anomaly: "stolen_card", "duplicate", "burst", "drift",
    /// "silent", "ssh_bruteforce", "ddos", "fw_deny_storm", "gap", "corrupt".
    pub kind: &'static str,
}

/// Why the generator refused its options.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    /// The scenario name is not one we know.
    #[error("unknown scenario '{0}': expected one of fraud, iot, security, quality, mixed")]
    UnknownScenario(String),
    /// Zero records requested.
    #[error("count must be at least 1 (got 0)")]
    ZeroCount,
    /// The corruption probability is not a probability.
    #[error("corrupt_rate must be a number in [0, 1] (got {0})")]
    CorruptRate(f64),
    /// The start of event time is negative, infinite or NaN.
    #[error("start_ts must be finite epoch seconds >= 0 (got {0})")]
    StartTs(f64),
}

/// Anomaly kinds a scenario can inject (corruption included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Anomaly {
    StolenCard,
    Duplicate,
    Burst,
    Drift,
    Silent,
    SshBruteforce,
    Ddos,
    FwDenyStorm,
    Gap,
    Corrupt,
}

impl Anomaly {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Anomaly::StolenCard => "stolen_card",
            Anomaly::Duplicate => "duplicate",
            Anomaly::Burst => "burst",
            Anomaly::Drift => "drift",
            Anomaly::Silent => "silent",
            Anomaly::SshBruteforce => "ssh_bruteforce",
            Anomaly::Ddos => "ddos",
            Anomaly::FwDenyStorm => "fw_deny_storm",
            Anomaly::Gap => "gap",
            Anomaly::Corrupt => "corrupt",
        }
    }
}

/// A record as a scenario drafts it, before corruption is decided.
pub(crate) struct Draft {
    pub(crate) key: String,
    pub(crate) value: Vec<u8>,
    pub(crate) anomaly: Option<Anomaly>,
    /// Another injected anomaly depends on this record staying valid (a
    /// duplicate's original, a burst's lead-in), so it is never corrupted.
    pub(crate) pinned: bool,
}

impl Draft {
    pub(crate) fn normal(key: String, value: Vec<u8>) -> Self {
        Self {
            key,
            value,
            anomaly: None,
            pinned: false,
        }
    }
}

/// One simulated scenario: a population of keys and a timeline of events.
pub(crate) trait Source {
    /// Starts an incident of `anomaly` at the current simulated time.
    fn inject(&mut self, anomaly: Anomaly, rng: &mut Rng);
    /// The next record in event-time order, with `id` as its "id" field.
    fn next(&mut self, rng: &mut Rng, id: &str) -> Draft;
}

/// One scenario's state inside a [`Generator`].
struct Lane {
    scenario: Scenario,
    source: Box<dyn Source + Send>,
    rng: Rng,
    plan: Plan,
    emitted: usize,
    own_corrupt_rate: f64,
}

impl Lane {
    fn new(scenario: Scenario, count: usize, opts: &GenOptions) -> Self {
        let stream = scenario as u64 + 1;
        let mut rng = Rng::new(opts.seed, stream);
        let mut plan_rng = Rng::new(opts.seed, stream + 100);
        let start = opts.start_ts;
        let (source, specs): (Box<dyn Source + Send>, &[IncidentSpec]) = match scenario {
            Scenario::Fraud => (
                Box::new(fraud::Fraud::new(&mut rng, count, start)),
                fraud::INCIDENTS,
            ),
            Scenario::Iot => (
                Box::new(iot::Iot::new(&mut rng, count, start)),
                iot::INCIDENTS,
            ),
            Scenario::Security => (
                Box::new(security::Security::new(&mut rng, count, start)),
                security::INCIDENTS,
            ),
            Scenario::Quality => (
                Box::new(quality::Quality::new(&mut rng, count, start)),
                quality::INCIDENTS,
            ),
            Scenario::Mixed => unreachable!("Mixed is split into one lane per scenario"),
        };
        Self {
            scenario,
            source,
            rng,
            plan: Plan::new(&mut plan_rng, count, specs),
            emitted: 0,
            own_corrupt_rate: if scenario == Scenario::Quality {
                QUALITY_OWN_CORRUPT_RATE
            } else {
                0.0
            },
        }
    }
}

/// Streams the records of [`generate`] one at a time, for callers that
/// produce to Kafka without holding the whole stream in memory.
pub struct Generator {
    lanes: Vec<Lane>,
    /// Chooses the lane of each record in `Mixed`.
    mixer: Rng,
    /// Corruption decisions and shapes; separate so the clean stream does not
    /// depend on `corrupt_rate`.
    corrupter: Rng,
    corrupt_rate: f64,
    remaining: usize,
}

impl Generator {
    /// Validates `opts` and sets up the simulation.
    pub fn new(opts: &GenOptions) -> Result<Self, GenError> {
        validate(opts)?;
        let lanes = match opts.scenario {
            Scenario::Mixed => {
                let per_lane = opts.count.div_ceil(4);
                Scenario::CONCRETE
                    .into_iter()
                    .map(|s| Lane::new(s, per_lane, opts))
                    .collect()
            }
            single => vec![Lane::new(single, opts.count, opts)],
        };
        Ok(Self {
            lanes,
            mixer: Rng::new(opts.seed, 200),
            corrupter: Rng::new(opts.seed, 300),
            corrupt_rate: opts.corrupt_rate,
            remaining: opts.count,
        })
    }
}

impl Iterator for Generator {
    type Item = GeneratedRecord;

    fn next(&mut self) -> Option<GeneratedRecord> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let lane_index = if self.lanes.len() == 1 {
            0
        } else {
            self.mixer.below(self.lanes.len())
        };
        let lane = &mut self.lanes[lane_index];
        while let Some(anomaly) = lane.plan.due(lane.emitted) {
            lane.source.inject(anomaly, &mut lane.rng);
        }
        let id = format!("{}-{:08}", lane.scenario.name(), lane.emitted);
        lane.emitted += 1;
        let mut draft = lane.source.next(&mut lane.rng, &id);

        // Both draws every record, so corruption of one record does not shift
        // the decisions for the next ones.
        let by_option = self.corrupter.unit() < self.corrupt_rate;
        let by_scenario = self.corrupter.unit() < lane.own_corrupt_rate;
        if (by_option || by_scenario) && draft.anomaly.is_none() && !draft.pinned {
            draft.value = corrupt::corrupt(&draft.value, &mut self.corrupter);
            draft.anomaly = Some(Anomaly::Corrupt);
        }
        Some(GeneratedRecord {
            scenario: lane.scenario,
            id,
            key: draft.key,
            value: draft.value,
            label: draft.anomaly.is_some(),
            kind: draft.anomaly.map_or("normal", Anomaly::name),
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

fn validate(opts: &GenOptions) -> Result<(), GenError> {
    if opts.count == 0 {
        return Err(GenError::ZeroCount);
    }
    if !(0.0..=1.0).contains(&opts.corrupt_rate) {
        return Err(GenError::CorruptRate(opts.corrupt_rate));
    }
    if !opts.start_ts.is_finite() || opts.start_ts < 0.0 {
        return Err(GenError::StartTs(opts.start_ts));
    }
    Ok(())
}

/// Generates `opts.count` records in arrival order. `Mixed` interleaves the
/// four scenarios (about a quarter each), each with its own keys and event
/// time.
pub fn generate(opts: &GenOptions) -> Result<Vec<GeneratedRecord>, GenError> {
    Ok(Generator::new(opts)?.collect())
}

/// Writes the ground truth as CSV: header `id,label,type`, label 0 or 1.
pub fn write_truth(out: &mut impl Write, records: &[GeneratedRecord]) -> std::io::Result<()> {
    out.write_all(b"id,label,type\n")?;
    for record in records {
        writeln!(
            out,
            "{},{},{}",
            record.id,
            u8::from(record.label),
            record.kind
        )?;
    }
    Ok(())
}

/// Writes one value per line. Corrupt values are written as they are, except
/// that CR and LF become the two-character escapes `\r` and `\n`, so every
/// record stays on one line.
pub fn write_jsonl(out: &mut impl Write, records: &[GeneratedRecord]) -> std::io::Result<()> {
    for record in records {
        let mut rest = record.value.as_slice();
        while let Some(at) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            out.write_all(&rest[..at])?;
            out.write_all(if rest[at] == b'\n' { b"\\n" } else { b"\\r" })?;
            rest = &rest[at + 1..];
        }
        out.write_all(rest)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use serde_json::{Map, Value};

    use super::*;

    fn opts(scenario: Scenario, count: usize, seed: u64) -> GenOptions {
        GenOptions {
            scenario,
            count,
            seed,
            ..GenOptions::default()
        }
    }

    fn run(scenario: Scenario, count: usize, seed: u64) -> Vec<GeneratedRecord> {
        generate(&opts(scenario, count, seed)).unwrap()
    }

    /// (string fields, numeric fields) of each scenario's schema; the first
    /// string field after "id" is the key field.
    fn schema(scenario: Scenario) -> (&'static [&'static str], &'static [&'static str]) {
        match scenario {
            Scenario::Fraud => (
                &["id", "card", "merchant", "country"],
                &["ts", "amount", "merchant_risk", "foreign", "distance_km"],
            ),
            Scenario::Iot => (
                &["id", "device"],
                &["ts", "temperature", "vibration", "battery"],
            ),
            Scenario::Security => (
                &["id", "src_ip", "dst_ip", "event"],
                &["ts", "dst_port", "failed", "denied", "bytes"],
            ),
            Scenario::Quality => (&["id", "feed"], &["ts", "value", "seq"]),
            Scenario::Mixed => unreachable!(),
        }
    }

    fn parse(record: &GeneratedRecord) -> Map<String, Value> {
        serde_json::from_slice(&record.value).unwrap_or_else(|e| {
            panic!(
                "{} ({}) is not a JSON object: {e}: {}",
                record.id,
                record.kind,
                String::from_utf8_lossy(&record.value)
            )
        })
    }

    fn num(object: &Map<String, Value>, field: &str) -> f64 {
        object[field].as_f64().unwrap()
    }

    fn kinds(records: &[GeneratedRecord]) -> HashMap<&'static str, usize> {
        let mut counts = HashMap::new();
        for r in records {
            *counts.entry(r.kind).or_insert(0) += 1;
        }
        counts
    }

    fn expected_kinds(scenario: Scenario) -> &'static [&'static str] {
        match scenario {
            Scenario::Fraud => &["stolen_card", "duplicate", "burst"],
            Scenario::Iot => &["drift", "silent"],
            Scenario::Security => &["ssh_bruteforce", "ddos", "fw_deny_storm"],
            Scenario::Quality => &["gap", "corrupt"],
            Scenario::Mixed => unreachable!(),
        }
    }

    #[test]
    fn gen_same_seed_same_records_other_seed_other_records() {
        for scenario in Scenario::ALL {
            let o = GenOptions {
                corrupt_rate: 0.02,
                ..opts(scenario, 3_000, 11)
            };
            let a = generate(&o).unwrap();
            assert_eq!(a, generate(&o).unwrap(), "{scenario}");
            let b = generate(&GenOptions { seed: 12, ..o }).unwrap();
            assert_ne!(a, b, "{scenario}");
        }
    }

    #[test]
    fn gen_corrupt_rate_does_not_change_the_clean_stream() {
        let clean = run(Scenario::Fraud, 5_000, 3);
        let dirty = generate(&GenOptions {
            corrupt_rate: 0.1,
            ..opts(Scenario::Fraud, 5_000, 3)
        })
        .unwrap();
        for (c, d) in clean.iter().zip(&dirty) {
            assert_eq!(c.id, d.id);
            if d.kind != "corrupt" {
                assert_eq!(c, d);
            }
        }
    }

    #[test]
    fn gen_counts_are_exact_and_ids_unique() {
        for scenario in Scenario::ALL {
            for count in [1, 2, 7, 1_001] {
                let records = run(scenario, count, 5);
                assert_eq!(records.len(), count, "{scenario} {count}");
                let ids: HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
                assert_eq!(ids.len(), count, "{scenario} {count}");
            }
        }
        let records = run(Scenario::Iot, 3, 5);
        assert_eq!(records[0].id, "iot-00000000");
        assert!(records.iter().all(|r| r.scenario == Scenario::Iot));
    }

    #[test]
    fn gen_every_anomaly_kind_appears_at_10k() {
        for seed in [1, 2, 3, 42] {
            for scenario in Scenario::CONCRETE {
                let counts = kinds(&run(scenario, 10_000, seed));
                for kind in expected_kinds(scenario) {
                    assert!(
                        counts.get(kind).copied().unwrap_or(0) > 0,
                        "{scenario} seed {seed}: no {kind} in {counts:?}"
                    );
                }
                assert!(counts.keys().all(|k| *k == "normal"
                    || *k == "corrupt"
                    || expected_kinds(scenario).contains(k)));
            }
        }
    }

    #[test]
    fn gen_anomaly_share_is_about_two_percent() {
        for count in [10_000, 200_000] {
            for scenario in [Scenario::Fraud, Scenario::Iot, Scenario::Security] {
                let records = run(scenario, count, 9);
                let anomalies = records
                    .iter()
                    .filter(|r| r.label && r.kind != "corrupt")
                    .count();
                let share = anomalies as f64 / count as f64;
                assert!(
                    (0.01..=0.035).contains(&share),
                    "{scenario} at {count}: {share}"
                );
            }
        }
    }

    #[test]
    fn gen_valid_records_follow_the_schema() {
        let records = generate(&GenOptions {
            corrupt_rate: 0.05,
            ..opts(Scenario::Mixed, 20_000, 8)
        })
        .unwrap();
        for record in records.iter().filter(|r| r.kind != "corrupt") {
            let object = parse(record);
            let (strings, numbers) = schema(record.scenario);
            assert_eq!(object.len(), strings.len() + numbers.len(), "{}", record.id);
            for field in strings.iter() {
                assert!(object[*field].is_string(), "{} {field}", record.id);
            }
            for field in numbers.iter() {
                assert!(num(&object, field).is_finite(), "{} {field}", record.id);
            }
            assert_eq!(object["id"], record.id.as_str());
            let key_field = match (record.scenario, record.kind) {
                (Scenario::Security, "ddos") => "dst_ip",
                (scenario, _) => schema(scenario).0[1],
            };
            assert_eq!(object[key_field], record.key.as_str(), "{}", record.id);
            assert!(num(&object, "ts") >= DEFAULT_START_TS);
        }
    }

    #[test]
    fn gen_event_time_never_goes_back_per_key() {
        for scenario in Scenario::ALL {
            let records = run(scenario, 20_000, 4);
            let mut last: HashMap<(Scenario, &str), f64> = HashMap::new();
            for record in records.iter().filter(|r| r.kind != "corrupt") {
                let ts = num(&parse(record), "ts");
                let previous = last.insert((record.scenario, record.key.as_str()), ts);
                assert!(previous.is_none_or(|p| p <= ts), "{} went back", record.id);
            }
        }
    }

    #[test]
    fn gen_corrupt_rate_is_honoured_and_corrupt_records_are_unusable() {
        for scenario in Scenario::ALL {
            let records = generate(&GenOptions {
                corrupt_rate: 0.05,
                ..opts(scenario, 10_000, 6)
            })
            .unwrap();
            let corrupt: Vec<&GeneratedRecord> =
                records.iter().filter(|r| r.kind == "corrupt").collect();
            let rate = corrupt.len() as f64 / records.len() as f64;
            let own = if scenario == Scenario::Quality {
                0.005
            } else {
                0.0
            };
            assert!((rate - 0.05 - own).abs() < 0.02, "{scenario}: {rate}");
            for record in corrupt {
                assert!(record.label);
                assert!(
                    corrupt::is_unusable(&record.value, schema(record.scenario).1),
                    "{}: usable: {}",
                    record.id,
                    String::from_utf8_lossy(&record.value)
                );
            }
        }
        let none = run(Scenario::Fraud, 10_000, 6);
        assert!(none.iter().all(|r| r.kind != "corrupt"));
        let all = generate(&GenOptions {
            corrupt_rate: 1.0,
            ..opts(Scenario::Iot, 2_000, 6)
        })
        .unwrap();
        assert!(all.iter().all(|r| r.label));
    }

    #[test]
    fn gen_fraud_labels_are_truthful() {
        let records = run(Scenario::Fraud, 50_000, 21);
        let mut history: HashMap<&str, Vec<Map<String, Value>>> = HashMap::new();
        for record in &records {
            let object = parse(record);
            let card_history = history.entry(record.key.as_str()).or_default();
            match record.kind {
                "stolen_card" => {
                    assert_eq!(num(&object, "foreign"), 1.0);
                    assert!(num(&object, "merchant_risk") >= 0.6);
                    assert!(num(&object, "distance_km") >= 2000.0);
                }
                "duplicate" => {
                    let ts = num(&object, "ts");
                    let same = |o: &Map<String, Value>| {
                        ["amount", "merchant", "country", "distance_km"]
                            .iter()
                            .all(|f| o[*f] == object[*f])
                            && (1.0..=60.001).contains(&(ts - num(o, "ts")))
                    };
                    assert!(card_history.iter().any(same), "{}", record.id);
                }
                "burst" => {
                    let ts = num(&object, "ts");
                    let recent = card_history
                        .iter()
                        .filter(|o| ts - num(o, "ts") <= 60.0)
                        .count();
                    assert!(recent >= 3, "{}: {recent}", record.id);
                }
                kind => assert_eq!(kind, "normal"),
            }
            card_history.push(object);
        }
    }

    #[test]
    fn gen_iot_and_quality_labels_are_truthful() {
        for (scenario, min_gap_s, kind) in [
            (Scenario::Iot, 1800.0, "silent"),
            (Scenario::Quality, 600.0, "gap"),
        ] {
            let records = run(scenario, 50_000, 22);
            let mut last_ts: HashMap<&str, f64> = HashMap::new();
            let mut seen = 0;
            for record in records.iter().filter(|r| r.kind != "corrupt") {
                let ts = num(&parse(record), "ts");
                if let Some(previous) = last_ts.insert(record.key.as_str(), ts) {
                    let gap = ts - previous;
                    if record.kind == kind {
                        seen += 1;
                        assert!(gap >= min_gap_s, "{}: gap {gap}", record.id);
                    } else {
                        assert!(gap < min_gap_s / 4.0, "{}: unlabelled gap {gap}", record.id);
                    }
                }
            }
            assert!(seen > 0, "{scenario}");
        }

        // Drift: far from the device's own normal, measured on its normal records.
        let records = run(Scenario::Iot, 50_000, 23);
        let mut normal: HashMap<&str, Vec<f64>> = HashMap::new();
        for record in records.iter().filter(|r| r.kind == "normal") {
            let t = num(&parse(record), "temperature");
            normal.entry(record.key.as_str()).or_default().push(t);
        }
        let mut drifted = 0;
        for record in records.iter().filter(|r| r.kind == "drift") {
            let values = &normal[record.key.as_str()];
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
            let z = (num(&parse(record), "temperature") - mean).abs() / var.sqrt();
            assert!(z > 1.5, "{}: z {z}", record.id);
            drifted += usize::from(z > 3.0);
        }
        let total = records.iter().filter(|r| r.kind == "drift").count();
        assert!(drifted as f64 > 0.9 * total as f64, "{drifted} of {total}");
    }

    #[test]
    fn gen_security_incidents_look_like_themselves() {
        let records = run(Scenario::Security, 100_000, 24);
        let mut per_incident_key: HashMap<(&str, &str), Vec<f64>> = HashMap::new();
        for record in records.iter().filter(|r| r.label) {
            let object = parse(record);
            let event = object["event"].as_str().unwrap();
            let expected = match record.kind {
                "ssh_bruteforce" => "ssh_fail",
                "ddos" => "conn",
                "fw_deny_storm" => "fw_deny",
                other => panic!("unexpected {other}"),
            };
            assert_eq!(event, expected, "{}", record.id);
            per_incident_key
                .entry((record.kind, record.key.as_str()))
                .or_default()
                .push(num(&object, "ts"));
        }
        for ((kind, key), times) in per_incident_key {
            let (lo, window) = match kind {
                "ssh_bruteforce" => (30, 305.0),
                "ddos" => (200, 17.0),
                _ => (50, 65.0),
            };
            // Two incidents can share a key (a busy internal host), never fewer.
            assert!(times.len() >= lo, "{kind} {key}: {}", times.len());
            if times.len() < 2 * lo {
                let span = times.last().unwrap() - times[0];
                assert!(span <= window, "{kind} {key}: span {span}");
            }
        }
        let normal_failures = records
            .iter()
            .filter(|r| r.kind == "normal")
            .filter(|r| parse(r)["event"] != "conn" && parse(r)["event"] != "ssh_ok")
            .count();
        assert!(normal_failures > 0 && normal_failures < records.len() / 50);
    }

    #[test]
    fn gen_mixed_interleaves_all_four_with_own_keys() {
        let records = run(Scenario::Mixed, 20_000, 13);
        for scenario in Scenario::CONCRETE {
            let n = records.iter().filter(|r| r.scenario == scenario).count();
            assert!((4_000..6_000).contains(&n), "{scenario}: {n}");
            assert!(records
                .iter()
                .any(|r| r.scenario == scenario && r.id.starts_with(scenario.name())));
        }
        assert!(records.iter().all(|r| r.scenario != Scenario::Mixed));
        let first_scenarios: HashSet<Scenario> = records[..20].iter().map(|r| r.scenario).collect();
        assert!(first_scenarios.len() > 1, "not interleaved");
    }

    #[test]
    fn gen_truth_csv_and_jsonl_formats() {
        let records = generate(&GenOptions {
            corrupt_rate: 0.3,
            ..opts(Scenario::Quality, 500, 2)
        })
        .unwrap();
        let mut truth = Vec::new();
        write_truth(&mut truth, &records).unwrap();
        let truth = String::from_utf8(truth).unwrap();
        let mut lines = truth.lines();
        assert_eq!(lines.next(), Some("id,label,type"));
        for (line, record) in lines.zip(&records) {
            let label = u8::from(record.label);
            assert_eq!(line, format!("{},{label},{}", record.id, record.kind));
        }
        assert_eq!(truth.lines().count(), records.len() + 1);

        let mut jsonl = Vec::new();
        write_jsonl(&mut jsonl, &records).unwrap();
        let lines: Vec<&[u8]> = jsonl.split(|&b| b == b'\n').collect();
        assert_eq!(lines.len(), records.len() + 1);
        assert!(lines.last().unwrap().is_empty());
        for (line, record) in lines.iter().zip(&records) {
            if record.value.contains(&b'\n') {
                assert!(line.windows(2).any(|w| w == b"\\n"));
            } else {
                assert_eq!(*line, record.value.as_slice());
            }
        }
    }

    #[test]
    fn gen_bad_options_are_refused_with_what_was_expected() {
        let bad = |o: GenOptions| generate(&o).unwrap_err().to_string();
        let good = opts(Scenario::Fraud, 10, 1);
        assert!(bad(GenOptions {
            count: 0,
            ..good.clone()
        })
        .contains("at least 1"));
        for rate in [-0.1, 1.5, f64::NAN] {
            let message = bad(GenOptions {
                corrupt_rate: rate,
                ..good.clone()
            });
            assert!(message.contains("[0, 1]"), "{message}");
        }
        for start in [-1.0, f64::INFINITY] {
            let message = bad(GenOptions {
                start_ts: start,
                ..good.clone()
            });
            assert!(message.contains("start_ts"), "{message}");
        }
        let message = "payments".parse::<Scenario>().unwrap_err().to_string();
        assert!(
            message.contains("'payments'")
                && message.contains("fraud, iot, security, quality, mixed")
        );
    }

    #[test]
    fn gen_scenario_names_round_trip() {
        for scenario in Scenario::ALL {
            assert_eq!(scenario.to_string().parse::<Scenario>().unwrap(), scenario);
        }
        assert_eq!("IoT".parse::<Scenario>().unwrap(), Scenario::Iot);
        let suffixes: Vec<&str> = Scenario::CONCRETE
            .iter()
            .map(|s| s.topic_suffix())
            .collect();
        assert_eq!(suffixes, ["transactions", "metrics", "auth", "events"]);
    }

    #[test]
    fn gen_start_ts_sets_event_time() {
        let records = generate(&GenOptions {
            start_ts: 1_000.0,
            ..opts(Scenario::Iot, 100, 1)
        })
        .unwrap();
        let first = num(&parse(&records[0]), "ts");
        assert!((1_000.0..1_100.0).contains(&first), "{first}");
    }
}
