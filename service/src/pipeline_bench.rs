//! `isoflow bench pipeline`: the streaming service against a real broker, in
//! one run. First the raw consume rate of a topic (a plain consumer, no
//! work), then the same topic end to end through a pipeline, then the
//! latency from producing a record to receiving its alert at an offered
//! rate. Records are the generated fraud stream, scored by a fraud model.

use crate::commands::GenCommandError;
use crate::config::{Config, PipelineConfig};
use crate::kafka::{self, KafkaError};
use crate::metrics::Metrics;
use crate::synthetic::{GenOptions, Scenario};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Longest wait for the alert watcher's first message (the bulk phase's
/// last alert) before the latency phase starts anyway.
const WATCHER_WARM_UP: Duration = Duration::from_secs(3);

/// What to measure (also the flags of `isoflow bench pipeline`).
#[derive(Clone, Debug, clap::Args)]
pub struct PipelineBenchOptions {
    /// Bootstrap servers.
    #[arg(long, env = "ISOFLOW_BROKERS")]
    pub brokers: String,
    /// Records for the throughput phases.
    #[arg(long, default_value_t = 200_000)]
    pub records: usize,
    /// Offered rate of the latency phase, records/s.
    #[arg(long, default_value_t = 20_000.0)]
    pub rate: f64,
    /// Length of the latency phase, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Partitions of the input topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Fraud model to score with.
    #[arg(long, default_value = "models/fraud.isoflow")]
    pub model: PathBuf,
    /// Backend: auto, gpu or cpu.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Pipeline batch size, records.
    #[arg(long, default_value_t = 4096)]
    pub batch_size: usize,
    /// Pipeline linger, ms.
    #[arg(long, default_value_t = 20)]
    pub linger_ms: u64,
    /// Keep the per-key state in the pipeline's changelog topic, as the
    /// service does by default (`false` measures what that costs).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub state_changelog: bool,
    /// With the changelog: checkpoint interval, ms.
    #[arg(long, default_value_t = 1000)]
    pub checkpoint_ms: u64,
}

/// Why the bench could not finish.
#[derive(Debug, thiserror::Error)]
pub enum PipelineBenchError {
    /// Broker or client failure.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// Producing the records failed.
    #[error(transparent)]
    Produce(#[from] GenCommandError),
    /// The pipeline failed.
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
    /// A phase did not finish in time.
    #[error("{0}")]
    Timeout(String),
    /// The options cannot make a run.
    #[error("{0}")]
    Options(String),
}

/// The figures of one run.
#[derive(Clone, Debug)]
pub struct PipelineBenchReport {
    /// Options the run used.
    pub options: PipelineBenchOptions,
    /// Input topic.
    pub topic: String,
    /// Records/s produced (acknowledged).
    pub produce_rate: f64,
    /// Records/s a plain consumer reads, from the record after the first
    /// batch's worth to the last.
    pub consume_rate: f64,
    /// CPU time of this process per record while the plain consumer reads,
    /// microseconds (the broker's own CPU is not counted).
    pub consume_cpu_us: f64,
    /// Records/s through the pipeline (scored or dead-lettered), from the
    /// first batch through to the one before the last.
    pub pipeline_rate: f64,
    /// Records/s through the pipeline from the first batch through to the
    /// last, whose linger wait this counts.
    pub pipeline_rate_through_last: f64,
    /// CPU time of this process per record through the pipeline,
    /// microseconds (the broker's own CPU is not counted).
    pub pipeline_cpu_us: f64,
    /// Records produced in the latency phase.
    pub latency_records: usize,
    /// Alerts whose latency was measured.
    pub alerts: usize,
    /// Produce-to-alert latency percentiles (p50, p99, max), seconds.
    pub latency: Option<(f64, f64, f64)>,
}

impl std::fmt::Display for PipelineBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "pipeline: {} records on {} ({} partitions), model {}, backend {}, batch {} / {} ms, {}",
            o.records,
            self.topic,
            o.partitions,
            o.model.display(),
            o.backend,
            o.batch_size,
            o.linger_ms,
            if o.state_changelog {
                format!("state changelog, checkpoint every {} ms", o.checkpoint_ms)
            } else {
                "state in memory only".to_string()
            }
        )?;
        writeln!(
            f,
            "  produce              {:>12.0} records/s",
            self.produce_rate
        )?;
        writeln!(
            f,
            "  raw consume          {:>12.0} records/s  {:>5.2} µs CPU/record",
            self.consume_rate, self.consume_cpu_us
        )?;
        writeln!(
            f,
            "  end to end           {:>12.0} records/s  {:>5.2} µs CPU/record  ({:.2} of raw consume)",
            self.pipeline_rate,
            self.pipeline_cpu_us,
            self.pipeline_rate / self.consume_rate
        )?;
        writeln!(
            f,
            "    through the last batch {:>6.0} records/s  (its linger counted; {:.2} of raw consume)",
            self.pipeline_rate_through_last,
            self.pipeline_rate_through_last / self.consume_rate
        )?;
        match self.latency {
            Some((p50, p99, max)) => write!(
                f,
                "  produce → alert at {:.0} records/s offered ({} records, {} alerts): p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
                o.rate,
                self.latency_records,
                self.alerts,
                p50 * 1e3,
                p99 * 1e3,
                max * 1e3
            ),
            None => write!(
                f,
                "  produce → alert at {:.0} records/s offered ({} records): no alert arrived",
                o.rate, self.latency_records
            ),
        }
    }
}

/// Runs the three phases on fresh topics named `isoflow-bench-<stamp>-*`.
/// `handles` receives the scoring engine (see
/// [`crate::pipeline::ServiceRuntime`]).
pub async fn run(
    options: PipelineBenchOptions,
    handles: Arc<crate::pipeline::Handles>,
) -> Result<PipelineBenchReport, PipelineBenchError> {
    let o = &options;
    if o.records < 2
        || !(o.rate > 0.0 && o.seconds > 0.0)
        || o.batch_size == 0
        || o.linger_ms == 0
        || o.partitions < 1
    {
        return Err(PipelineBenchError::Options(
            "expected --records >= 2, --partitions >= 1 and --rate, --seconds, --batch-size, --linger-ms > 0".into(),
        ));
    }
    if !crate::config::CHECKPOINT_MS.contains(&o.checkpoint_ms) {
        return Err(PipelineBenchError::Options(format!(
            "expected --checkpoint-ms within {}..={}",
            crate::config::CHECKPOINT_MS.start(),
            crate::config::CHECKPOINT_MS.end()
        )));
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let topic = format!("isoflow-bench-{stamp}-in");
    let alerts_topic = format!("isoflow-bench-{stamp}-alerts");
    let dlq_topic = format!("isoflow-bench-{stamp}-dlq");
    let brokers = options.brokers.as_str();
    kafka::create_topics(brokers, &[&topic], options.partitions).await?;
    kafka::create_topics(brokers, &[&alerts_topic, &dlq_topic], 1).await?;

    // One stream for both phases, so event time only moves forward.
    let latency_records = (options.rate * options.seconds).round().max(1.0) as usize;
    let stream = crate::synthetic::generate(&GenOptions {
        scenario: Scenario::Fraud,
        count: options.records + latency_records,
        seed: 0,
        corrupt_rate: 0.0,
        start_ts: 1_767_225_600.0,
    })
    .map_err(GenCommandError::from)?;
    let (bulk, paced) = stream.split_at(options.records);

    let started = Instant::now();
    crate::commands::produce(bulk, brokers, &|_| topic.clone(), 0.0, None).await?;
    let produce_rate = bulk.len() as f64 / started.elapsed().as_secs_f64();

    let (consume_rate, consume_cpu_us) = raw_consume(
        brokers,
        &topic,
        &stamp.to_string(),
        bulk.len(),
        o.batch_size,
    )
    .await?;

    // The pipeline, in this process, reading the same topic from the start.
    let process_metrics = Arc::new(Metrics::default());
    let mut config = Config::default();
    config.kafka.brokers = options.brokers.clone();
    config.kafka.group_id = format!("isoflow-bench-{stamp}");
    config.service.backend = options.backend.clone();
    config.pipelines.push(PipelineConfig {
        batch_max_records: options.batch_size,
        batch_max_ms: options.linger_ms,
        state_changelog: options.state_changelog,
        checkpoint_ms: options.checkpoint_ms,
        ..PipelineConfig::new(
            "bench",
            &topic,
            options.model.clone(),
            (&alerts_topic, &dlq_topic),
        )
    });
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(crate::pipeline::run(
        config,
        process_metrics.clone(),
        handles,
        shutdown.clone(),
    ));
    let metrics = process_metrics.pipeline("bench");
    let accounted =
        || metrics.scored.load(std::sync::atomic::Ordering::Relaxed) + metrics.dlq_total();
    let limit = Duration::from_secs(120);
    let bulk_total = bulk.len() as u64;
    let deadline = Instant::now() + limit;
    // (time, CPU, records done) when the first batch was through, and at
    // the last two changes since.
    let mut first: Option<(Instant, Duration, u64)> = None;
    let mut changes: [Option<(Instant, Duration, u64)>; 2] = [None, None];
    loop {
        let done = accounted();
        let now = || Some((Instant::now(), process_cpu(), done));
        if first.is_none() && done > 0 {
            first = now();
        } else if first.is_some() && changes[1].is_none_or(|(_, _, seen)| seen != done) {
            changes = [changes[1], now()];
        }
        if done >= bulk_total {
            break;
        }
        if running.is_finished() {
            return Err(fail(None, shutdown, running).await);
        }
        if Instant::now() > deadline {
            let timeout = PipelineBenchError::Timeout(format!(
                "end to end: {done} of {bulk_total} records through the pipeline after {limit:?}"
            ));
            return Err(fail(Some(timeout), shutdown, running).await);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = |end: Option<(Instant, Duration, u64)>| match (first, end) {
        (Some((at, cpu, done)), Some((last, last_cpu, last_done)))
            if last_done > done && last > at =>
        {
            let records = (last_done - done) as f64;
            (
                records / (last - at).as_secs_f64(),
                (last_cpu - cpu).as_secs_f64() * 1e6 / records,
            )
        }
        _ => (f64::NAN, f64::NAN),
    };
    let through_last = rate(changes[1]);
    // The last batch is usually partial: it waits out the linger for
    // records that never come. That wait is latency (the next phase
    // measures it), not throughput, so the rate stops at the batch before.
    let (pipeline_rate, pipeline_cpu_us) = match rate(changes[0]) {
        (r, _) if r.is_nan() => through_last,
        steady => steady,
    };

    // Latency: alerts are read as they arrive, on a thread of their own so
    // a busy runtime cannot delay the receipt time, while records are
    // produced at the offered rate; each alert carries its record's id.
    let watcher: BaseConsumer = kafka::consumer(
        brokers,
        &format!("isoflow-bench-{stamp}-watch"),
        6000,
        &Default::default(),
    )?;
    // Assigned, not subscribed: a group join would hold back the first
    // alerts by its own duration. Reading from the bulk phase's last alert
    // (every one is acknowledged by now) shows when the watcher is fetching
    // for real, without a backlog to read first: from the start, the
    // thousands of alerts of a long bulk phase delayed the receipt of the
    // first paced ones by tens of milliseconds.
    // A broker round trip: off the runtime, where the pipeline runs.
    let (watcher, watermarks) = tokio::task::spawn_blocking({
        let topic = alerts_topic.clone();
        move || {
            let watermarks = watcher.fetch_watermarks(&topic, 0, Duration::from_secs(10));
            (watcher, watermarks)
        }
    })
    .await
    .expect("watermark task does not panic");
    let alerts_end = watermarks.map_err(KafkaError::from)?.1;
    let from = match alerts_end {
        0 => rdkafka::Offset::Beginning,
        end => rdkafka::Offset::Offset(end - 1),
    };
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(&alerts_topic, 0, from)
        .map_err(KafkaError::from)?;
    watcher.assign(&assignment).map_err(KafkaError::from)?;
    let watch_stop = Arc::new(AtomicBool::new(false));
    let watch_ready = Arc::new(AtomicBool::new(false));
    let received: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let watching = std::thread::spawn({
        let (stop, ready, received) = (watch_stop.clone(), watch_ready.clone(), received.clone());
        move || -> Result<(), KafkaError> {
            let started = Instant::now();
            while !stop.load(Relaxed) {
                let polled = watcher.poll(Duration::from_millis(20));
                if polled.is_some() || started.elapsed() > WATCHER_WARM_UP {
                    ready.store(true, Relaxed);
                }
                match polled {
                    Some(Ok(m)) => {
                        let now = Instant::now();
                        let id = m
                            .payload()
                            .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                            .and_then(|a| a["record"]["id"].as_str().map(str::to_owned));
                        if let Some(id) = id {
                            received.lock().expect("receipts lock").push((id, now));
                        }
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => {}
                }
            }
            Ok(())
        }
    });
    while !watch_ready.load(Relaxed) && !watching.is_finished() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sent: Vec<std::sync::OnceLock<Instant>> = (0..paced.len())
        .map(|_| std::sync::OnceLock::new())
        .collect();
    let topic_of = |_| topic.clone();
    let producing = crate::commands::produce(paced, brokers, &topic_of, options.rate, Some(&sent));
    let settling = async {
        // Done once every paced record is through and no alert has arrived
        // for a second.
        let mut last = (0usize, Instant::now());
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let seen = received.lock().expect("receipts lock").len();
            if seen != last.0 {
                last = (seen, Instant::now());
            }
            let through = accounted() >= bulk_total + paced.len() as u64;
            if (through && last.1.elapsed() > Duration::from_secs(1)) || running.is_finished() {
                return;
            }
        }
    };
    let (produced, ()) = tokio::join!(producing, settling);
    watch_stop.store(true, Relaxed);
    let watched = tokio::task::spawn_blocking(move || watching.join())
        .await
        .expect("join task does not panic")
        .expect("watcher thread does not panic");
    shutdown.cancel();
    let stopped = running.await.expect("pipeline task does not panic");
    produced?;
    watched?;
    stopped?;
    if accounted() < bulk_total + paced.len() as u64 {
        return Err(PipelineBenchError::Timeout(
            "latency phase: the pipeline stopped before every record was through".into(),
        ));
    }
    let index: HashMap<&str, usize> = paced
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id.as_str(), i))
        .collect();
    let mut latencies: Vec<f64> = received
        .lock()
        .expect("receipts lock")
        .iter()
        .filter_map(|(id, at)| {
            let sent_at = sent[*index.get(id.as_str())?].get()?;
            Some((*at - *sent_at).as_secs_f64())
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    let latency = (!latencies.is_empty()).then(|| (pick(0.5), pick(0.99), pick(1.0)));
    Ok(PipelineBenchReport {
        topic,
        produce_rate,
        consume_rate,
        consume_cpu_us,
        pipeline_rate,
        pipeline_cpu_us,
        pipeline_rate_through_last: through_last.0,
        latency_records: paced.len(),
        alerts: latencies.len(),
        latency,
        options,
    })
}

/// Stops the pipeline and returns the error that ended a phase: the
/// pipeline's own when it failed, else the phase's.
async fn fail(
    error: Option<PipelineBenchError>,
    shutdown: CancellationToken,
    running: tokio::task::JoinHandle<Result<(), crate::pipeline::PipelineError>>,
) -> PipelineBenchError {
    shutdown.cancel();
    match running.await.expect("pipeline task does not panic") {
        Err(e) => e.into(),
        Ok(()) => error
            .unwrap_or_else(|| PipelineBenchError::Timeout("the pipeline stopped early".into())),
    }
}

/// CPU time used by this process so far, all threads together.
fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } == 0;
    if ok {
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    } else {
        Duration::ZERO
    }
}

/// Records/s a consumer in its own group reads `count` records of `topic`
/// from the start, and this process's CPU microseconds per record
/// meanwhile. Timed from record `skip` (the first when there are too few)
/// to the last: the pipeline's clock starts once its first batch of `skip`
/// records is through, so both leave out the same start-up.
async fn raw_consume(
    brokers: &str,
    topic: &str,
    stamp: &str,
    count: usize,
    skip: usize,
) -> Result<(f64, f64), PipelineBenchError> {
    let consumer: StreamConsumer = kafka::consumer(
        brokers,
        &format!("isoflow-bench-{stamp}-raw"),
        6000,
        &Default::default(),
    )?;
    consumer.subscribe(&[topic]).map_err(KafkaError::from)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let skip = if skip < count / 2 { skip } else { 0 };
    let mut first = None;
    let mut seen = 0usize;
    while seen < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(_)) => {
                if seen == skip {
                    first = Some((Instant::now(), process_cpu()));
                }
                seen += 1;
            }
            Ok(Err(e)) => return Err(KafkaError::from(e).into()),
            Err(_) => {
                return Err(PipelineBenchError::Timeout(format!(
                    "raw consume: {seen} of {count} records after 120 s"
                )))
            }
        }
    }
    let (span, cpu) = first.map_or((0.0, 0.0), |(t, cpu): (Instant, Duration)| {
        (
            t.elapsed().as_secs_f64(),
            process_cpu().saturating_sub(cpu).as_secs_f64(),
        )
    });
    let records = count.saturating_sub(skip + 1) as f64;
    Ok((records / span.max(1e-9), cpu * 1e6 / records.max(1.0)))
}
