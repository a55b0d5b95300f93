//! `isoflow demo`: the whole service in one process with nothing installed.
//!
//! An in-process Kafka-protocol cluster (librdkafka's mock cluster, or a real
//! broker with `--brokers`), the mixed scenario produced into it, one
//! pipeline per scenario scoring with the shipped models, a live view, and
//! precision/recall per anomaly type against the generator's truth.

use crate::config::{Config, KafkaConfig, PipelineConfig, ServiceConfig};
use crate::metrics::Metrics;
use crate::synthetic::{self, GenOptions, Scenario};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The shipped models, one per scenario, compiled in so the demo runs from
/// any directory.
const MODELS: [(Scenario, &str, &[u8]); 4] = [
    (
        Scenario::Fraud,
        "fraud",
        include_bytes!("../../models/fraud.isoflow"),
    ),
    (
        Scenario::Iot,
        "iot",
        include_bytes!("../../models/iot.isoflow"),
    ),
    (
        Scenario::Security,
        "security",
        include_bytes!("../../models/security.isoflow"),
    ),
    (
        Scenario::Quality,
        "quality",
        include_bytes!("../../models/quality.isoflow"),
    ),
];

const PREFIX: &str = "demo";
const ALERTS: &str = "demo.alerts";
const DLQ: &str = "demo.dlq";

/// Options of the demo.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// A real broker instead of the in-process cluster.
    pub brokers: Option<String>,
    /// Records to generate.
    pub count: usize,
    /// Generator seed.
    pub seed: u64,
    /// Scoring backend.
    pub backend: String,
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Kafka failure.
    #[error(transparent)]
    Kafka(#[from] crate::kafka::KafkaError),
    /// Generator failure.
    #[error(transparent)]
    Gen(#[from] crate::commands::GenCommandError),
    /// Bad generator options.
    #[error(transparent)]
    GenOptions(#[from] synthetic::GenError),
    /// The service failed.
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
    /// The service failed.
    #[error(transparent)]
    Service(#[from] crate::service::ServiceError),
    /// Temporary files.
    #[error("demo: {0}")]
    Io(#[from] std::io::Error),
}

/// Live counts of alerts by the truth kind of the alerted record.
#[derive(Default)]
struct AlertTally {
    by_kind: BTreeMap<String, u64>,
    alerted_ids: std::collections::HashSet<String>,
}

/// Records produced ahead of the pipelines on the embedded cluster. A
/// quarter of them go to the one partition of the security topic: 5,000
/// records, about 1 MB of its 5 MB.
const EMBEDDED_AHEAD: usize = 20_000;

/// How long the demo waits for records that stopped arriving.
const STALL: Duration = Duration::from_secs(15);

/// Runs the demo to completion and prints the report. `handles` receives the
/// scoring engine (see [`crate::pipeline::ServiceRuntime`]).
pub async fn run(
    opts: DemoOptions,
    handles: Arc<crate::pipeline::Handles>,
) -> Result<(), DemoError> {
    let records = synthetic::generate(&GenOptions {
        scenario: Scenario::Mixed,
        count: opts.count,
        seed: opts.seed,
        corrupt_rate: 0.005,
        start_ts: 1_767_225_600.0,
    })?;
    let truth: HashMap<String, (bool, &'static str)> = records
        .iter()
        .map(|r| (r.id.clone(), (r.label, r.kind)))
        .collect();
    let topic_of = |s: Scenario| format!("{PREFIX}.{}", s.topic_suffix());
    // The security model keys one feature by destination while the topic is
    // keyed by source: only a single partition keeps that feature exact.
    let partitions = |s: Scenario| if s == Scenario::Security { 1 } else { 4 };
    let group = format!("isoflow-demo-{}", std::process::id());
    let mut topics: Vec<(String, i32)> = Vec::new();
    for (scenario, name, _) in MODELS {
        topics.push((topic_of(scenario), partitions(scenario)));
        // Each pipeline's changelog: the embedded cluster takes no admin
        // request, so the service cannot create it there itself.
        topics.push((format!("{group}.{name}.state"), partitions(scenario)));
    }
    topics.extend([(ALERTS.to_owned(), 4), (DLQ.to_owned(), 4)]);
    // Keep the mock cluster alive for the whole run.
    let mock;
    let brokers = match &opts.brokers {
        Some(b) => {
            for (t, n) in &topics {
                crate::kafka::create_topics(b, &[t.as_str()], *n).await?;
            }
            b.clone()
        }
        None => {
            mock = crate::kafka::EmbeddedCluster::start()?;
            for (t, n) in &topics {
                mock.create_topic(t, *n)?;
            }
            mock.bootstrap_servers()
        }
    };
    println!(
        "isoflow demo: {} records of the mixed scenario → {brokers} ({})",
        records.len(),
        if opts.brokers.is_some() {
            "your broker"
        } else {
            "in-process Kafka cluster"
        }
    );

    let dir = std::env::temp_dir().join(format!("isoflow-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut pipelines = Vec::new();
    for (scenario, name, bytes) in MODELS {
        let path = dir.join(format!("{name}.isoflow"));
        std::fs::write(&path, bytes)?;
        pipelines.push(PipelineConfig {
            batch_max_records: 2048,
            batch_max_ms: 50,
            ..PipelineConfig::new(name, &topic_of(scenario), path, (ALERTS, DLQ))
        });
    }
    let config = Config {
        kafka: KafkaConfig {
            brokers: brokers.clone(),
            group_id: group,
            session_timeout_ms: 6000,
            properties: BTreeMap::new(),
        },
        service: ServiceConfig {
            backend: opts.backend.clone(),
            ..ServiceConfig::default()
        },
        // The demo shows the pipelines; no API server.
        grpc: crate::config::GrpcConfig {
            listen: String::new(),
            ..Default::default()
        },
        pipelines,
    };

    let metrics = Arc::new(Metrics::default());
    let shutdown = CancellationToken::new();
    crate::service::cancel_on_signals(shutdown.clone());
    let service = tokio::spawn(crate::service::run(
        config,
        metrics.clone(),
        handles,
        shutdown.clone(),
    ));
    let producing = {
        let brokers = brokers.clone();
        let records = records.clone();
        // The embedded cluster keeps 5 MB per partition and deletes older
        // records beyond that, read or not: there, records go out in chunks,
        // never more than EMBEDDED_AHEAD ahead of the pipelines.
        let ahead = if opts.brokers.is_some() {
            usize::MAX
        } else {
            EMBEDDED_AHEAD
        };
        let chunk = (ahead / 2).clamp(1, records.len().max(1));
        let (metrics, stop) = (metrics.clone(), shutdown.clone());
        tokio::spawn(async move {
            for (i, part) in records.chunks(chunk).enumerate() {
                while (i * chunk).saturating_sub(progress(&metrics).0 as usize) > ahead - chunk {
                    if stop.is_cancelled() {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                crate::commands::produce(part, &brokers, &|s| topic_of(s), 0.0, None).await?;
            }
            Ok::<(), crate::commands::GenCommandError>(())
        })
    };
    let tally = Arc::new(Mutex::new(AlertTally::default()));
    let watcher = spawn_alert_watcher(
        brokers.clone(),
        truth.clone(),
        tally.clone(),
        shutdown.clone(),
    );

    // Live view until every record is scored or dead-lettered.
    let started = Instant::now();
    let mut last = (Instant::now(), 0u64);
    let mut moved = Instant::now();
    let total = records.len() as u64;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (done, dlq) = progress(&metrics);
        let rate = (done - last.1) as f64 / last.0.elapsed().as_secs_f64();
        if done != last.1 {
            moved = Instant::now();
        }
        last = (Instant::now(), done);
        let kinds = tally
            .lock()
            .expect("tally lock")
            .by_kind
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "[{:>3}s] {done}/{total} records ({rate:.0}/s)  dlq {dlq}  backend {}  alerts by type: {}",
            started.elapsed().as_secs(),
            metrics.backend.lock().expect("metrics lock"),
            if kinds.is_empty() { "-".into() } else { kinds }
        );
        if done >= total || service.is_finished() || shutdown.is_cancelled() {
            break;
        }
        // Records that stopped arriving (lost by a broker, say) are reported
        // as missing rather than waited for.
        if moved.elapsed() > STALL {
            println!(
                "{} records not scored or dead-lettered after {}s without progress; \
                 reporting on those that were",
                total - done,
                STALL.as_secs()
            );
            break;
        }
    }
    // Let the alert watcher catch up with every alert published (a replayed
    // alert is counted once, hence the time limit), then stop everything.
    let caught_up = Instant::now();
    while tally.lock().expect("tally lock").alerted_ids.len() < published_alerts(&metrics)
        && caught_up.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead_lettered = progress(&metrics).1 as usize;
    shutdown.cancel();
    service.await.expect("service task")?;
    producing.await.expect("producer task")?;
    let _ = watcher.await;
    let dlq_ids = read_dlq_ids(&brokers, dead_lettered).await;
    report(&records, &tally.lock().expect("tally lock"), &dlq_ids);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn progress(metrics: &Metrics) -> (u64, u64) {
    let pipelines = metrics.pipelines.lock().expect("metrics lock");
    let scored: u64 = pipelines.iter().map(|(_, m)| m.scored.load(Relaxed)).sum();
    let dlq: u64 = pipelines.iter().map(|(_, m)| m.dlq_total()).sum();
    (scored + dlq, dlq)
}

fn published_alerts(metrics: &Metrics) -> usize {
    let pipelines = metrics.pipelines.lock().expect("metrics lock");
    pipelines
        .iter()
        .map(|(_, m)| m.alerts.load(Relaxed) as usize)
        .sum()
}

fn spawn_alert_watcher(
    brokers: String,
    truth: HashMap<String, (bool, &'static str)>,
    tally: Arc<Mutex<AlertTally>>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::Message;
    tokio::spawn(async move {
        let mut c = crate::kafka::client_config(&brokers, &BTreeMap::new());
        c.set(
            "group.id",
            format!("isoflow-demo-watch-{}", std::process::id()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false");
        let Ok(consumer) = c.create::<StreamConsumer>() else {
            return;
        };
        if consumer.subscribe(&[ALERTS]).is_err() {
            return;
        }
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                m = consumer.recv() => m,
            };
            let Ok(m) = next else { continue };
            let Some(alert) = m
                .payload()
                .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
            else {
                continue;
            };
            let id = alert["record"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let kind = truth.get(&id).map_or("unknown", |t| t.1);
            let mut t = tally.lock().expect("tally lock");
            if t.alerted_ids.insert(id) {
                *t.by_kind.entry(kind.to_owned()).or_default() += 1;
            }
        }
    })
}

/// Ids of the records in the DLQ, read until `expected` messages are in or
/// the topic stays quiet for 3 s.
async fn read_dlq_ids(brokers: &str, expected: usize) -> std::collections::HashSet<String> {
    let brokers = brokers.to_owned();
    tokio::task::spawn_blocking(move || {
        crate::kafka::read_topic(&brokers, DLQ, expected, Duration::from_secs(3))
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| {
                r.headers
                    .iter()
                    .find(|(k, _)| k == crate::commands::RECORD_ID_HEADER)
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}

fn report(
    records: &[synthetic::GeneratedRecord],
    tally: &AlertTally,
    dlq_ids: &std::collections::HashSet<String>,
) {
    println!("\nDetection against the generator's truth");
    println!(
        "{:<16} {:>8} {:>9} {:>8}",
        "anomaly type", "records", "detected", "recall"
    );
    let mut kinds: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for r in records.iter().filter(|r| r.label) {
        let caught = if r.kind == "corrupt" {
            dlq_ids.contains(&r.id)
        } else {
            tally.alerted_ids.contains(&r.id)
        };
        let e = kinds.entry(r.kind).or_default();
        e.0 += 1;
        e.1 += caught as u64;
    }
    for (kind, (n, caught)) in &kinds {
        let how = if *kind == "corrupt" { " (to DLQ)" } else { "" };
        println!(
            "{kind:<16} {n:>8} {caught:>9} {:>7.1}%{how}",
            100.0 * *caught as f64 / (*n).max(1) as f64
        );
    }
    println!(
        "\n{:<16} {:>8} {:>8} {:>9} {:>9} {:>12}",
        "scenario", "records", "alerts", "true", "precision", "false alerts"
    );
    // Per scenario: (records, normal records, alerts, true alerts). False
    // alerts are counted against normal records: the share of ordinary
    // traffic that pages someone.
    let mut per: BTreeMap<String, [u64; 4]> = BTreeMap::new();
    for r in records {
        let e = per.entry(r.scenario.to_string()).or_default();
        let alerted = tally.alerted_ids.contains(&r.id) as u64;
        e[0] += 1;
        e[1] += !r.label as u64;
        e[2] += alerted;
        e[3] += alerted * r.label as u64;
    }
    for (scenario, [n, normal, alerts, tp]) in &per {
        println!(
            "{scenario:<16} {n:>8} {alerts:>8} {tp:>9} {:>8.1}% {:>11.2}%",
            100.0 * *tp as f64 / (*alerts).max(1) as f64,
            100.0 * (alerts - tp) as f64 / (*normal).max(1) as f64
        );
    }
}
