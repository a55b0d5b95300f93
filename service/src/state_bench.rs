//! `isoflow bench state`: the memory a pipeline's per-key state takes at
//! scale. A model's detector is fed records whose every key field takes a
//! new value in each record, so each keyed feature (z baselines, rates,
//! gaps, repeats, history windows, label risk, score smoothing) holds one
//! entry per record until its table is full and evicts; the process's
//! resident memory before and after gives the bytes each key costs.
//!
//! Records are built in memory and read through the service's own JSON
//! reader, in batches like a pipeline's, so the state is exactly what `isoflow
//! run` would hold for the same keys.

use crate::detector::{DetectError, Detector, DetectorOptions};
use crate::engine::Engine;
use crate::features::FeaturePipeline;
use crate::input::InputError;
use crate::model::ModelError;
use crate::pipeline::changelog::{layouts, StateMessage};
use crate::random::SplitMix64;
use std::fmt;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What to measure (also the flags of `isoflow bench state`).
#[derive(Clone, Debug, clap::Args)]
pub struct StateBenchOptions {
    /// Distinct keys: records fed, each with new values in every key field.
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: usize,
    /// Model whose features hold the state.
    #[arg(long, default_value = "models/fraud.isoflow")]
    pub model: PathBuf,
    /// Keys of state per keyed feature (`service.slot_capacity`).
    #[arg(long, default_value_t = crate::features::DEFAULT_SLOT_CAPACITY)]
    pub slot_capacity: usize,
    /// Records per batch.
    #[arg(long, default_value_t = 4096)]
    pub batch_size: usize,
    /// Seed of the records' numeric values.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also keep the state in a changelog topic on these brokers, as a
    /// pipeline does (each batch's changed keys written as a checkpoint),
    /// then time reading it back into an empty detector: the restore a
    /// partition's assignment does.
    #[arg(long)]
    pub brokers: Option<String>,
}

/// What keeping the state in a changelog cost, and reading it back.
#[derive(Debug)]
pub struct RestoreReport {
    /// The changelog topic.
    pub topic: String,
    /// Messages written (key states and tombstones).
    pub messages: usize,
    /// Time spent writing them, batch after batch.
    pub write: Duration,
    /// Keys read back, and their bytes.
    pub keys: usize,
    pub bytes: usize,
    /// Time to read the changelog partition back.
    pub read: Duration,
    /// Time to put the keys into the empty detector.
    pub apply: Duration,
    /// Keys the detector took.
    pub restored: usize,
}

/// Why the bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum StateBenchError {
    /// The model could not be loaded.
    #[error("{0}")]
    Model(#[from] ModelError),
    /// The detector refused the model or a batch.
    #[error("{0}")]
    Detect(#[from] DetectError),
    /// A generated batch could not be read (a bug).
    #[error("{0}")]
    Input(#[from] InputError),
    /// Resident memory cannot be read on this system.
    #[error("resident memory is read from /proc/self/statm, which this system lacks")]
    NoProc,
    /// Bad options.
    #[error("{0}")]
    Options(String),
    /// The changelog could not be written or read.
    #[error("changelog: {0}")]
    Broker(String),
}

/// A changelog of the bench's own on a broker, and what writes to it.
struct Changelog {
    log: crate::pipeline::changelog::Changelog,
    producer: rdkafka::producer::FutureProducer,
    runtime: tokio::runtime::Runtime,
}

impl Changelog {
    /// A new one-partition changelog on `brokers`, named for this run.
    fn start(brokers: &str) -> Result<Self, StateBenchError> {
        let broker = |e: crate::kafka::KafkaError| StateBenchError::Broker(e.to_string());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StateBenchError::Broker(e.to_string()))?;
        let cluster = crate::kafka::Cluster::plain(brokers);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let input = format!("isoflow-bench-state-{stamp}");
        let log = runtime.block_on(async {
            crate::kafka::create_topics_on(&cluster, &[&input], 1).await?;
            crate::pipeline::changelog::Changelog::open(&cluster, &input, "bench", &input).await
        });
        let log = log.map_err(broker)?.ok_or_else(|| {
            StateBenchError::Broker(
                "keys were hashed before the changelog's seeds were read".into(),
            )
        })?;
        let producer = crate::kafka::producer(brokers, &Default::default()).map_err(broker)?;
        Ok(Self {
            log,
            producer,
            runtime,
        })
    }

    /// Writes `messages`, waiting for the broker's acknowledgements.
    fn write(&self, messages: &[StateMessage]) -> Result<(), StateBenchError> {
        let topic = &self.log.topic;
        self.runtime
            .block_on(crate::pipeline::changelog::produce(
                &self.producer,
                topic,
                messages,
            ))
            .map_err(StateBenchError::Broker)
    }
}

/// What one run measured.
#[derive(Debug)]
pub struct StateReport {
    /// The model's name.
    pub model: String,
    /// Records fed, each with new keys.
    pub keys: usize,
    /// Key fields of the model (each gets a new value per record).
    pub key_fields: Vec<String>,
    /// Capacity per keyed table.
    pub slot_capacity: usize,
    /// The fullest table's share of its capacity at the end.
    pub fill: f64,
    /// State entries evicted to make room.
    pub evictions: u64,
    /// Resident memory with the detector built and no key yet.
    pub rss_empty: u64,
    /// Resident memory after the last batch.
    pub rss_full: u64,
    /// Peak resident memory of the process.
    pub rss_peak: u64,
    /// Time to score every record.
    pub elapsed: Duration,
    /// With `--brokers`: the changelog's figures.
    pub restore: Option<RestoreReport>,
}

impl StateReport {
    /// Keys held at the end: those not evicted, at most the capacity
    /// (none for a model without key fields).
    pub fn keys_held(&self) -> usize {
        if self.key_fields.is_empty() {
            return 0;
        }
        self.keys.min(self.slot_capacity)
    }

    /// Resident bytes the state added per key held.
    pub fn bytes_per_key(&self) -> f64 {
        self.rss_full.saturating_sub(self.rss_empty) as f64 / self.keys_held().max(1) as f64
    }
}

/// Runs the bench.
pub fn run(options: &StateBenchOptions) -> Result<StateReport, StateBenchError> {
    if options.keys == 0 || options.batch_size == 0 || options.slot_capacity == 0 {
        return Err(StateBenchError::Options(
            "--keys, --batch-size and --slot-capacity must be at least 1".into(),
        ));
    }
    let model = crate::model::load(&options.model)?;
    let wanted = FeaturePipeline::wanted_for(&model);
    let name = model.name.clone();
    // The changelog first: it fixes how keys are hashed.
    let changelog = match &options.brokers {
        Some(brokers) => Some(Changelog::start(brokers)?),
        None => None,
    };
    let detector_options = DetectorOptions {
        slot_capacity: options.slot_capacity,
        // As a pipeline with a changelog (the default) notes changed keys.
        track_state: true,
        ..DetectorOptions::default()
    };
    let mut detector = Detector::new(model.clone(), Engine::Cpu, &detector_options)?;
    let (mut messages, mut write) = (0, Duration::ZERO);
    let mut rng = SplitMix64::new(options.seed);
    let mut text = Vec::new();
    let rss_empty = resident()?;
    let started = Instant::now();
    let mut fed = 0;
    while fed < options.keys {
        let rows = options.batch_size.min(options.keys - fed);
        text.clear();
        for i in fed..fed + rows {
            text.push(b'{');
            let mut sep = "";
            for key in wanted.keys.iter().filter(|k| !wanted.numeric.contains(k)) {
                let _ = write!(text, "{sep}\"{key}\":\"k{i:08}\"");
                sep = ",";
            }
            if let Some(time) = &wanted.time {
                // A record a millisecond: windows and rates see a busy stream.
                let _ = write!(text, "{sep}\"{time}\":{}", 1.7e9 + i as f64 * 1e-3);
                sep = ",";
            }
            for field in &wanted.numeric {
                // A number that is also a key (a card's amount, for
                // duplicates) is new in each record too.
                let value = if wanted.keys.contains(field) {
                    i as f64 + rng.unit() as f64
                } else {
                    rng.unit() as f64 * 100.0
                };
                let _ = write!(text, "{sep}\"{field}\":{value}");
                sep = ",";
            }
            text.extend_from_slice(b"}\n");
        }
        let columns = crate::input::read_jsonl(text.as_slice(), &wanted)?;
        detector.score(&columns)?;
        // A checkpoint per batch: the changed keys leave the list.
        let changes = detector.take_state()?;
        if let Some(c) = &changelog {
            let batch = c.log.messages(&changes, layouts(&detector));
            let at = Instant::now();
            c.write(&batch)?;
            write += at.elapsed();
            messages += batch.len();
        }
        fed += rows;
    }
    let elapsed = started.elapsed();
    drop(text);
    let (fill, evictions, rss_full) = (detector.state_fill(), detector.evictions(), resident()?);
    let restore = match changelog {
        Some(c) => {
            drop(detector);
            let at = Instant::now();
            let read = c
                .log
                .restore(&[0])
                .map_err(|e| StateBenchError::Broker(e.to_string()))?;
            let read_time = at.elapsed();
            let mut empty = Detector::new(model, Engine::Cpu, &detector_options)?;
            let at = Instant::now();
            let mut restored = 0;
            for partition in &read {
                restored += empty.restore_state(&partition.records(layouts(&empty)))?;
            }
            Some(RestoreReport {
                topic: c.log.topic.clone(),
                messages,
                write,
                keys: read.iter().map(|r| r.keys.len()).sum(),
                bytes: read.iter().map(|r| r.bytes).sum(),
                read: read_time,
                apply: at.elapsed(),
                restored,
            })
        }
        None => None,
    };
    Ok(StateReport {
        restore,
        model: name,
        keys: options.keys,
        key_fields: wanted.keys.clone(),
        slot_capacity: options.slot_capacity,
        fill,
        evictions,
        rss_empty,
        rss_full,
        rss_peak: peak_resident().unwrap_or(0),
        elapsed,
    })
}

/// Resident bytes of this process now.
fn resident() -> Result<u64, StateBenchError> {
    let statm = std::fs::read_to_string("/proc/self/statm").map_err(|_| StateBenchError::NoProc)?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .ok_or(StateBenchError::NoProc)?;
    // SAFETY: sysconf reads a constant of the system and has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Ok(pages * page.max(1) as u64)
}

/// The process's peak resident bytes (`VmHWM`).
fn peak_resident() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl fmt::Display for StateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        writeln!(
            f,
            "per-key state, model {} (key fields: {}), {} keys, {} per table",
            self.model,
            self.key_fields.join(", "),
            self.keys,
            self.slot_capacity
        )?;
        writeln!(
            f,
            "  keys held {}  fill {:.3}  evicted {}",
            self.keys_held(),
            self.fill,
            self.evictions
        )?;
        write!(
            f,
            "  resident {:.1} MiB with no key, {:.1} MiB after (peak {:.1} MiB)",
            mib(self.rss_empty),
            mib(self.rss_full),
            mib(self.rss_peak),
        )?;
        if self.keys_held() > 0 {
            write!(f, ": {:.0} bytes per key", self.bytes_per_key())?;
        }
        writeln!(f)?;
        write!(
            f,
            "  {:.2} µs per record ({:.0} records/s)",
            self.elapsed.as_secs_f64() * 1e6 / self.keys as f64,
            self.keys as f64 / self.elapsed.as_secs_f64().max(1e-9)
        )?;
        if let Some(r) = &self.restore {
            writeln!(f)?;
            writeln!(
                f,
                "  changelog {}: {} messages written in {:.2} s",
                r.topic,
                r.messages,
                r.write.as_secs_f64()
            )?;
            write!(
                f,
                "  restore: {} keys ({:.1} MiB) read back in {:.2} s, restored in {:.2} s ({} taken): {:.2} s in all",
                r.keys,
                mib(r.bytes as u64),
                r.read.as_secs_f64(),
                r.apply.as_secs_f64(),
                r.restored,
                (r.read + r.apply).as_secs_f64()
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(keys: usize, capacity: usize) -> StateBenchOptions {
        StateBenchOptions {
            keys,
            model: PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../models/fraud.isoflow"
            )),
            slot_capacity: capacity,
            batch_size: 1000,
            seed: 1,
            brokers: None,
        }
    }

    #[test]
    fn every_record_brings_a_key_until_the_tables_are_full() {
        let under = run(&options(3000, 4096)).expect("bench");
        assert_eq!(under.evictions, 0);
        assert!(
            (under.fill - 3000.0 / 4096.0).abs() < 1e-9,
            "{}",
            under.fill
        );
        assert!(under.to_string().contains("3000 keys"));
        let over = run(&options(3000, 1024)).expect("bench");
        assert_eq!(over.fill, 1.0);
        assert!(over.evictions >= 3000 - 1024, "{}", over.evictions);
    }
}
