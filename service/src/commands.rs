//! The work behind the CLI commands; `main` only parses flags and calls these.

use crate::detector::{DetectError, Detector, DetectorOptions};
use crate::engine::{Backend, Engine};
use crate::features::DEFAULT_SLOT_CAPACITY;
use crate::model::{self, ModelError};
use crate::preset::{Preset, PresetError};
use crate::score::ScoreError;
use crate::{input, scores_csv};
use std::io::Write;
use std::path::PathBuf;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Model refused.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Input unreadable or malformed.
    #[error(transparent)]
    Input(#[from] input::InputError),
    /// Scoring failed.
    #[error(transparent)]
    Score(#[from] ScoreError),
    /// The detector could not be built or could not score.
    #[error(transparent)]
    Detect(#[from] DetectError),
    /// A preset cannot describe the stream.
    #[error(transparent)]
    Preset(#[from] PresetError),
    /// Options that do not go together.
    #[error("{0}")]
    Usage(String),
    /// Output could not be written.
    #[error("cannot write output {path}: {source}")]
    Output {
        /// Output path.
        path: String,
        /// I/O error.
        source: std::io::Error,
    },
}

impl CommandError {
    /// Standard output was closed by its reader (`isoflow score ... | head`).
    pub fn reader_left(&self) -> bool {
        matches!(self, Self::Output { path, source } if closed_stdout(path, source))
    }
}

impl GenCommandError {
    /// Standard output was closed by its reader (`isoflow gen --out - | head`).
    pub fn reader_left(&self) -> bool {
        matches!(self, Self::Io { path, source } if closed_stdout(path, source))
    }
}

fn closed_stdout(path: &str, e: &std::io::Error) -> bool {
    path == "-" && e.kind() == std::io::ErrorKind::BrokenPipe
}

/// Where `isoflow score` gets its model.
#[derive(Clone, Debug)]
pub enum ModelSource {
    /// A model file.
    File(PathBuf),
    /// A preset with no model file: a cold start that learns from the stream.
    Preset {
        /// The preset.
        preset: Preset,
        /// Key fields; the first is the entity.
        keys: Vec<String>,
        /// Event-time field.
        time: String,
        /// Numeric fields; empty: every numeric field of the first record.
        fields: Vec<String>,
    },
}

/// Options of `isoflow score`.
#[derive(Clone, Debug)]
pub struct ScoreOptions {
    /// The model.
    pub model: ModelSource,
    /// Input path (CSV or JSON lines) or `-`.
    pub input: String,
    /// Output path or `-`.
    pub output: String,
    /// Backend.
    pub backend: Backend,
    /// Keep learning from the stream (online forest).
    pub learn: bool,
    /// Label feedback (JSON lines: records plus `label` and `label_ts`).
    pub feedback: Option<String>,
    /// Seed of regrown trees (default: the model's training seed).
    pub seed: Option<u64>,
}

/// What `score_file` did.
#[derive(Clone, Debug)]
pub struct ScoreSummary {
    /// Rows scored.
    pub rows: usize,
    /// Rows that alerted.
    pub alerts: usize,
    /// Backend that scored ("cpu" / "gpu").
    pub backend: &'static str,
}

/// The model `source` names: a file, or a preset's cold-start model.
pub fn resolve_model(
    source: &ModelSource,
    input: &str,
    seed: u64,
) -> Result<model::Model, CommandError> {
    match source {
        ModelSource::File(path) => Ok(model::load(path)?),
        ModelSource::Preset {
            preset,
            keys,
            time,
            fields,
        } => {
            let fields = if fields.is_empty() {
                input::numeric_fields_of_first_record(input, keys, time)?
            } else {
                fields.clone()
            };
            Ok(preset.cold_model(keys, time, &fields, seed)?)
        }
    }
}

/// Scores every row of a file against a model and writes `score,alert[,z_*]`.
pub fn score_file(opts: &ScoreOptions) -> Result<ScoreSummary, CommandError> {
    let model = resolve_model(&opts.model, &opts.input, opts.seed.unwrap_or(0))?;
    if matches!(opts.model, ModelSource::Preset { .. }) && !opts.learn {
        return Err(CommandError::Usage(
            "a preset without a model file starts cold and must learn: add --learn".into(),
        ));
    }
    let engine = Engine::select(opts.backend)?;
    let mut detector = Detector::new(
        model,
        engine,
        &DetectorOptions {
            learn: opts.learn,
            seed: opts.seed,
            slot_capacity: DEFAULT_SLOT_CAPACITY,
            ..Default::default()
        },
    )?;
    if let Some(path) = &opts.feedback {
        if !detector.pipeline().uses_feedback() {
            return Err(CommandError::Usage(format!(
                "--feedback {path}: the model has no key_label_risk feature to use it"
            )));
        }
        detector.load_feedback(path)?;
    }
    let started = std::time::Instant::now();
    let columns = input::read_path(&opts.input, detector.pipeline().wanted())?;
    let read_ms = started.elapsed().as_secs_f64() * 1e3;
    let scored = detector.score(&columns)?;
    let score_ms = started.elapsed().as_secs_f64() * 1e3 - read_ms;
    let write_err = |source| CommandError::Output {
        path: opts.output.clone(),
        source,
    };
    let sink = scores_csv::create(opts.output.as_ref()).map_err(write_err)?;
    let mut sink = std::io::BufWriter::with_capacity(1 << 20, sink);
    scores_csv::write_scores(
        &mut sink,
        &scored.scores,
        &scored.alerts,
        detector.pipeline().z_names(),
        &scored.z,
    )
    .map_err(write_err)?;
    sink.flush().map_err(write_err)?;
    tracing::info!(
        rows = scored.scores.len(),
        read_ms,
        score_ms,
        write_ms = started.elapsed().as_secs_f64() * 1e3 - read_ms - score_ms,
        backend = detector.backend(),
        "scored file"
    );
    Ok(ScoreSummary {
        rows: scored.scores.len(),
        alerts: scored.alerts.iter().filter(|&&a| a).count(),
        backend: detector.backend(),
    })
}

/// `isoflow model inspect`: the model's metadata as pretty JSON.
pub fn inspect(path: &std::path::Path) -> Result<String, CommandError> {
    let model = model::load(path)?;
    Ok(serde_json::to_string_pretty(&model::metadata_json(&model)).expect("JSON values serialize"))
}

/// Writes a generated stream as JSON lines (and the truth file).
pub fn gen_to_file(
    opts: &crate::synthetic::GenOptions,
    path: &std::path::Path,
    truth: Option<&std::path::Path>,
) -> Result<String, GenCommandError> {
    let records = crate::synthetic::generate(opts)?;
    let io = |source, path: &std::path::Path| GenCommandError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut out = std::io::BufWriter::new(scores_csv::create(path).map_err(|e| io(e, path))?);
    crate::synthetic::write_jsonl(&mut out, &records).map_err(|e| io(e, path))?;
    out.flush().map_err(|e| io(e, path))?;
    write_truth(&records, truth)?;
    Ok(format!(
        "wrote {} {} records to {}",
        records.len(),
        opts.scenario,
        path.display()
    ))
}

/// Produces a generated stream to Kafka: each record keyed by its entity,
/// with its id in the `isoflow.record.id` header; `mixed` goes to
/// `TOPIC.<kind>` per scenario. Topics are created when missing.
pub async fn gen_to_kafka(
    opts: &crate::synthetic::GenOptions,
    brokers: &str,
    topic: &str,
    partitions: i32,
    rate: f64,
    truth: Option<&std::path::Path>,
) -> Result<String, GenCommandError> {
    let records = crate::synthetic::generate(opts)?;
    let topic_of = |s: crate::synthetic::Scenario| {
        if opts.scenario == crate::synthetic::Scenario::Mixed {
            format!("{topic}.{}", s.topic_suffix())
        } else {
            topic.to_owned()
        }
    };
    let mut topics: Vec<String> = records.iter().map(|r| topic_of(r.scenario)).collect();
    topics.sort();
    topics.dedup();
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    crate::kafka::create_topics(brokers, &refs, partitions).await?;
    let started = std::time::Instant::now();
    produce(&records, brokers, &topic_of, rate, None).await?;
    write_truth(&records, truth)?;
    let secs = started.elapsed().as_secs_f64();
    Ok(format!(
        "produced {} {} records to {} in {secs:.2}s ({:.0} msg/s)",
        records.len(),
        opts.scenario,
        topics.join(","),
        records.len() as f64 / secs.max(1e-9)
    ))
}

/// Produces generated records to `topic_of(scenario)`, keyed by entity, with
/// the record id in the [`RECORD_ID_HEADER`] header, paced to `rate`
/// records/s when positive; returns once the broker acknowledged them all.
/// With `sent` (one cell per record), notes when each record was handed to
/// the producer.
pub async fn produce(
    records: &[crate::synthetic::GeneratedRecord],
    brokers: &str,
    topic_of: &(dyn Fn(crate::synthetic::Scenario) -> String + Sync),
    rate: f64,
    sent: Option<&[std::sync::OnceLock<std::time::Instant>]>,
) -> Result<(), GenCommandError> {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureRecord, Producer};
    // Generated records stand for the applications upstream of the service,
    // so they are batched as a default client batches them (librdkafka's and
    // Kafka's `linger.ms` of 5 ms), not by the service's own 1 ms. It matters
    // on tansu's memory storage, where each fetch lists every batch stored in
    // the partition: at 20K records/s, batches of a millisecond's records
    // made produce-to-alert p99 pass 100 ms within 10 s.
    let linger = [("linger.ms".to_owned(), "5".to_owned())].into();
    let producer = crate::kafka::producer(brokers, &linger)?;
    if rate > 0.0 {
        // A paced stream stands for a running application: connect and
        // learn the topics' leaders before the first record is due, so a
        // latency measured from its send time is not the client's start-up.
        let mut scenarios = Vec::new();
        for r in records {
            if !scenarios.contains(&r.scenario) {
                scenarios.push(r.scenario);
            }
        }
        let topics: Vec<String> = scenarios.into_iter().map(topic_of).collect();
        let client = producer.clone();
        tokio::task::spawn_blocking(move || {
            topics.iter().try_for_each(|topic| {
                client
                    .client()
                    .fetch_metadata(Some(topic), std::time::Duration::from_secs(10))
                    .map(drop)
            })
        })
        .await
        .expect("metadata task does not panic")
        .map_err(|e| GenCommandError::Kafka(e.into()))?;
    }
    let started = std::time::Instant::now();
    let mut pending = std::collections::VecDeque::new();
    for (i, r) in records.iter().enumerate() {
        if rate > 0.0 {
            let due = std::time::Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        if let Some(sent) = sent {
            let _ = sent[i].set(std::time::Instant::now());
        }
        let headers = OwnedHeaders::new().insert(Header {
            key: RECORD_ID_HEADER,
            value: Some(r.id.as_str()),
        });
        let target = topic_of(r.scenario);
        let mut record = FutureRecord::to(&target)
            .key(r.key.as_bytes())
            .payload(&r.value)
            .headers(headers);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push_back(delivery);
                    break;
                }
                Err((_, back)) => {
                    record = back;
                    // Queue full: wait for the oldest delivery.
                    match pending.pop_front() {
                        Some(d) => check_delivery(d.await)?,
                        None => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
                    }
                }
            }
        }
        if pending.len() > 50_000 {
            if let Some(d) = pending.pop_front() {
                check_delivery(d.await)?;
            }
        }
    }
    for d in pending {
        check_delivery(d.await)?;
    }
    Ok(())
}

/// Header carrying a generated record's id.
pub const RECORD_ID_HEADER: &str = "isoflow.record.id";

fn check_delivery(
    d: Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
) -> Result<(), GenCommandError> {
    match d {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(GenCommandError::Kafka(e.into())),
        Err(_) => Err(GenCommandError::Kafka(crate::kafka::KafkaError::Client(
            rdkafka::error::KafkaError::Canceled,
        ))),
    }
}

fn write_truth(
    records: &[crate::synthetic::GeneratedRecord],
    truth: Option<&std::path::Path>,
) -> Result<(), GenCommandError> {
    if let Some(path) = truth {
        let io = |source| GenCommandError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
        crate::synthetic::write_truth(&mut out, records).map_err(io)?;
        out.flush().map_err(io)?;
    }
    Ok(())
}

/// Why `isoflow gen` failed.
#[derive(Debug, thiserror::Error)]
pub enum GenCommandError {
    /// Bad generator options.
    #[error(transparent)]
    Gen(#[from] crate::synthetic::GenError),
    /// Kafka failure.
    #[error(transparent)]
    Kafka(#[from] crate::kafka::KafkaError),
    /// File failure.
    #[error("cannot write {path}: {source}")]
    Io {
        /// Path.
        path: String,
        /// I/O error.
        source: std::io::Error,
    },
}
