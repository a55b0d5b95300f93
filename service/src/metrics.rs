//! Prometheus metrics: counters and histograms per pipeline, rendered in the
//! text exposition format and served on `/metrics` by a small HTTP endpoint.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// A fixed-bucket histogram.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if value <= *b {
                c.fetch_add(1, Relaxed);
            }
        }
        self.sum_micros
            .fetch_add((value.max(0.0) * 1e6) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"{b}\"}} {}",
                c.load(Relaxed)
            );
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

const SECONDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const SIZES: &[f64] = &[
    1.0, 10.0, 100.0, 500.0, 1000.0, 2000.0, 4096.0, 8192.0, 16384.0,
];

/// The steps of a batch, in order, as `phase` labels.
pub const PHASES: [&str; 4] = ["parse", "score", "publish", "ack"];

/// Metrics of one pipeline.
#[derive(Debug)]
pub struct PipelineMetrics {
    /// Messages consumed.
    pub records_in: AtomicU64,
    /// Records scored.
    pub scored: AtomicU64,
    /// Alerts published.
    pub alerts: AtomicU64,
    /// Records the shadow model would have alerted on.
    pub shadow_alerts: AtomicU64,
    /// DLQ messages by reason class.
    pub dlq: Mutex<BTreeMap<&'static str, u64>>,
    /// Batches completed.
    pub batches: AtomicU64,
    /// Records per batch.
    pub batch_size: Histogram,
    /// Seconds from batch flush to offsets stored (scoring + publishing).
    pub batch_latency: Histogram,
    /// Seconds from a record's timestamp to its batch being acknowledged.
    pub end_to_end_latency: Histogram,
    /// Sum over assigned partitions of high watermark minus position.
    pub consumer_lag: AtomicI64,
    /// Input partitions assigned to this process now.
    pub assigned_partitions: AtomicI64,
    /// Keys evicted from bounded per-key state.
    pub state_evictions: AtomicU64,
    /// Records dropped because they had been handed over before (a
    /// rebalance replays from the last commit).
    pub redelivered: AtomicU64,
    /// Offset resets: a partition's offsets went back below what was
    /// committed, and its records were taken again.
    pub offset_resets: AtomicU64,
    /// Per-key state entries released because their partitions went to
    /// another consumer.
    pub state_released: AtomicU64,
    /// Restores of gained partitions' state from the changelog.
    pub state_restores: AtomicU64,
    /// Keys read back from the changelog, over all restores.
    pub state_restored_keys: AtomicU64,
    /// Changelog bytes read back, over all restores.
    pub state_restored_bytes: AtomicU64,
    /// How long the last restore took, seconds as `f64` bits.
    pub state_restore_seconds: AtomicU64,
    /// Records passed over because the restored state already held them.
    pub state_covered: AtomicU64,
    /// Checkpoints written to the changelog.
    pub checkpoints: AtomicU64,
    /// Changelog messages written (key states, tombstones, markers).
    pub changelog_messages: AtomicU64,
    /// Labels taken from the feedback topic.
    pub feedback_labels: AtomicU64,
    /// Feedback records that were not labels (not JSON, a field missing).
    pub feedback_refused: AtomicU64,
    /// The fullest per-key table's keys over its capacity, as `f64` bits.
    pub state_fill: AtomicU64,
    /// When the last batch finished, milliseconds since the epoch (0: none yet).
    pub last_batch_ms: AtomicI64,
    /// Microseconds spent in each of [`PHASES`], over all batches.
    pub phase_micros: [AtomicU64; 4],
}

impl Default for PipelineMetrics {
    fn default() -> Self {
        Self {
            records_in: AtomicU64::new(0),
            scored: AtomicU64::new(0),
            alerts: AtomicU64::new(0),
            shadow_alerts: AtomicU64::new(0),
            dlq: Mutex::new(BTreeMap::new()),
            batches: AtomicU64::new(0),
            batch_size: Histogram::new(SIZES),
            batch_latency: Histogram::new(SECONDS),
            end_to_end_latency: Histogram::new(SECONDS),
            consumer_lag: AtomicI64::new(0),
            assigned_partitions: AtomicI64::new(0),
            state_evictions: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
            offset_resets: AtomicU64::new(0),
            state_released: AtomicU64::new(0),
            state_restores: AtomicU64::new(0),
            state_restored_keys: AtomicU64::new(0),
            state_restored_bytes: AtomicU64::new(0),
            state_restore_seconds: AtomicU64::new(0f64.to_bits()),
            state_covered: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            changelog_messages: AtomicU64::new(0),
            feedback_labels: AtomicU64::new(0),
            feedback_refused: AtomicU64::new(0),
            state_fill: AtomicU64::new(0f64.to_bits()),
            last_batch_ms: AtomicI64::new(0),
            phase_micros: Default::default(),
        }
    }
}

impl PipelineMetrics {
    /// Counts one DLQ message.
    pub fn dlq_inc(&self, class: &'static str) {
        *self
            .dlq
            .lock()
            .expect("metrics lock")
            .entry(class)
            .or_default() += 1;
    }

    /// DLQ messages over all classes.
    pub fn dlq_total(&self) -> u64 {
        self.dlq.lock().expect("metrics lock").values().sum()
    }
}

/// Reads one counter of a pipeline.
type CounterOf = fn(&PipelineMetrics) -> u64;
/// Reads one gauge of a pipeline.
/// Reads an `f64` gauge kept as bits.
type BitsOf = fn(&PipelineMetrics) -> &AtomicU64;
type GaugeOf = fn(&PipelineMetrics) -> i64;
/// Picks one histogram of a pipeline.
type HistogramOf = fn(&PipelineMetrics) -> &Histogram;

/// All metrics of the process.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Backend in use ("cpu" / "gpu").
    pub backend: Mutex<String>,
    /// Per pipeline, in configuration order.
    pub pipelines: Mutex<Vec<(String, Arc<PipelineMetrics>)>>,
}

impl Metrics {
    /// The metrics of pipeline `name`, registered on first use (so an
    /// observer may ask before the pipeline starts).
    pub fn pipeline(&self, name: &str) -> Arc<PipelineMetrics> {
        let mut pipelines = self.pipelines.lock().expect("metrics lock");
        if let Some((_, m)) = pipelines.iter().find(|(n, _)| n == name) {
            return m.clone();
        }
        let m = Arc::new(PipelineMetrics::default());
        pipelines.push((name.to_owned(), m.clone()));
        m
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let backend = self.backend.lock().expect("metrics lock").clone();
        let _ = writeln!(
            out,
            "# TYPE isoflow_backend_info gauge\nisoflow_backend_info{{backend=\"{backend}\"}} 1"
        );
        let pipelines = self.pipelines.lock().expect("metrics lock");
        let counters: [(&str, &str, CounterOf); 17] = [
            ("isoflow_shadow_alerts_total", "counter", |m| {
                m.shadow_alerts.load(Relaxed)
            }),
            ("isoflow_records_in_total", "counter", |m| {
                m.records_in.load(Relaxed)
            }),
            ("isoflow_records_scored_total", "counter", |m| {
                m.scored.load(Relaxed)
            }),
            ("isoflow_alerts_total", "counter", |m| {
                m.alerts.load(Relaxed)
            }),
            ("isoflow_batches_total", "counter", |m| {
                m.batches.load(Relaxed)
            }),
            ("isoflow_state_evictions_total", "counter", |m| {
                m.state_evictions.load(Relaxed)
            }),
            ("isoflow_records_redelivered_total", "counter", |m| {
                m.redelivered.load(Relaxed)
            }),
            ("isoflow_offset_resets_total", "counter", |m| {
                m.offset_resets.load(Relaxed)
            }),
            ("isoflow_state_released_total", "counter", |m| {
                m.state_released.load(Relaxed)
            }),
            ("isoflow_state_restores_total", "counter", |m| {
                m.state_restores.load(Relaxed)
            }),
            ("isoflow_state_restored_keys_total", "counter", |m| {
                m.state_restored_keys.load(Relaxed)
            }),
            ("isoflow_state_restored_bytes_total", "counter", |m| {
                m.state_restored_bytes.load(Relaxed)
            }),
            ("isoflow_records_covered_by_state_total", "counter", |m| {
                m.state_covered.load(Relaxed)
            }),
            ("isoflow_checkpoints_total", "counter", |m| {
                m.checkpoints.load(Relaxed)
            }),
            ("isoflow_changelog_messages_total", "counter", |m| {
                m.changelog_messages.load(Relaxed)
            }),
            ("isoflow_feedback_labels_total", "counter", |m| {
                m.feedback_labels.load(Relaxed)
            }),
            ("isoflow_feedback_refused_total", "counter", |m| {
                m.feedback_refused.load(Relaxed)
            }),
        ];
        for (name, kind, get) in counters {
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (p, m) in pipelines.iter() {
                let _ = writeln!(out, "{name}{{pipeline=\"{p}\"}} {}", get(m));
            }
        }
        let _ = writeln!(out, "# TYPE isoflow_dlq_total counter");
        for (p, m) in pipelines.iter() {
            for (class, n) in m.dlq.lock().expect("metrics lock").iter() {
                let _ = writeln!(
                    out,
                    "isoflow_dlq_total{{pipeline=\"{p}\",reason=\"{class}\"}} {n}"
                );
            }
        }
        // Lag covers assigned partitions only: 0 partitions means the
        // pipeline reads nothing (out of its group, or more members than
        // partitions), whatever the lag says.
        let gauges: [(&str, GaugeOf); 2] = [
            ("isoflow_consumer_lag", |m| m.consumer_lag.load(Relaxed)),
            ("isoflow_assigned_partitions", |m| {
                m.assigned_partitions.load(Relaxed)
            }),
        ];
        for (name, get) in gauges {
            let _ = writeln!(out, "# TYPE {name} gauge");
            for (p, m) in pipelines.iter() {
                let _ = writeln!(out, "{name}{{pipeline=\"{p}\"}} {}", get(m));
            }
        }
        // f64 gauges, kept as bits. Near 1, the fill ratio says new keys
        // are about to evict old ones: raise `slot_capacity` before
        // evictions make keyed features forget.
        let ratios: [(&str, BitsOf); 2] = [
            ("isoflow_state_fill_ratio", |m| &m.state_fill),
            ("isoflow_state_restore_seconds", |m| {
                &m.state_restore_seconds
            }),
        ];
        for (name, get) in ratios {
            let _ = writeln!(out, "# TYPE {name} gauge");
            for (p, m) in pipelines.iter() {
                let value = f64::from_bits(get(m).load(Relaxed));
                let _ = writeln!(out, "{name}{{pipeline=\"{p}\"}} {value}");
            }
        }
        // Alert on a stalled pipeline with
        // `time() - isoflow_last_batch_timestamp_seconds > N and (isoflow_consumer_lag > 0 or isoflow_assigned_partitions == 0)`.
        let _ = writeln!(out, "# TYPE isoflow_last_batch_timestamp_seconds gauge");
        for (p, m) in pipelines.iter() {
            let _ = writeln!(
                out,
                "isoflow_last_batch_timestamp_seconds{{pipeline=\"{p}\"}} {}",
                m.last_batch_ms.load(Relaxed) as f64 / 1e3
            );
        }
        // Where a pipeline's time goes: rate() of each phase.
        let _ = writeln!(out, "# TYPE isoflow_batch_phase_seconds_total counter");
        for (p, m) in pipelines.iter() {
            for (phase, micros) in PHASES.iter().zip(&m.phase_micros) {
                let _ = writeln!(
                    out,
                    "isoflow_batch_phase_seconds_total{{pipeline=\"{p}\",phase=\"{phase}\"}} {}",
                    micros.load(Relaxed) as f64 / 1e6
                );
            }
        }
        let histograms: [(&str, HistogramOf); 3] = [
            ("isoflow_batch_size", |m| &m.batch_size),
            ("isoflow_batch_latency_seconds", |m| &m.batch_latency),
            ("isoflow_end_to_end_latency_seconds", |m| {
                &m.end_to_end_latency
            }),
        ];
        for (name, get) in histograms {
            let _ = writeln!(out, "# TYPE {name} histogram");
            for (p, m) in pipelines.iter() {
                get(m).render(&mut out, name, &format!("pipeline=\"{p}\""));
            }
        }
        out
    }
}

/// Most connections `/metrics` and `/health` serve at once; more are
/// closed on arrival, so idle or slow clients cannot use up the process's
/// file descriptors.
pub const MAX_CONNECTIONS: usize = 64;

/// Longest a connection may take to send its request line, and to take the
/// response.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `/metrics` and `/health` on `listener` until `shutdown`, with at
/// most [`MAX_CONNECTIONS`] open and [`IO_TIMEOUT`] per read and write.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    serve_within(listener, metrics, shutdown, (MAX_CONNECTIONS, IO_TIMEOUT)).await
}

async fn serve_within(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    (max_connections, io_timeout): (usize, Duration),
) {
    let open = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let (mut stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    // Out of descriptors, say: do not spin on the error.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            tracing::debug!(max_connections, "metrics connection refused: too many open");
            drop(stream);
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut buf = [0u8; 2048];
            let read = tokio::time::timeout(io_timeout, stream.read(&mut buf)).await;
            let Ok(Ok(n)) = read else {
                return;
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match path {
                "/metrics" => ("200 OK", metrics.render()),
                "/health" => ("200 OK", "ok\n".to_owned()),
                _ => ("404 Not Found", "try /metrics or /health\n".to_owned()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(io_timeout, stream.write_all(response.as_bytes())).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Idle clients are cut off after the timeout and beyond the limit at
    /// once, and a real scrape is still answered meanwhile.
    #[test]
    fn idle_connections_are_bounded_in_number_and_time() {
        use std::io::{Read, Write};
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = CancellationToken::new();
        let limits = (2, Duration::from_millis(300));
        let served = serve_within(listener, Arc::new(Metrics::default()), stop.clone(), limits);
        runtime.spawn(served);
        let connect = || {
            let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        };
        let idle: Vec<_> = (0..2).map(|_| connect()).collect();
        std::thread::sleep(Duration::from_millis(50));
        // A third while two are open: closed without an answer.
        let mut extra = connect();
        assert_eq!(extra.read(&mut [0; 16]).unwrap_or(0), 0);
        // The idle two are closed by the server, not left open forever.
        for mut s in idle {
            assert_eq!(s.read(&mut [0; 16]).unwrap(), 0);
        }
        let mut scrape = connect();
        scrape.write_all(b"GET /health HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        scrape.read_to_string(&mut text).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 200 OK") && text.ends_with("ok\n"),
            "{text}"
        );
        stop.cancel();
    }

    #[test]
    fn renders_counters_and_histograms() {
        let r = Metrics::default();
        *r.backend.lock().unwrap() = "cpu".into();
        let m = r.pipeline("fraud");
        m.records_in.fetch_add(10, Relaxed);
        m.dlq_inc("invalid_json");
        m.batch_latency.observe(0.02);
        let text = r.render();
        assert!(
            text.contains("isoflow_records_in_total{pipeline=\"fraud\"} 10"),
            "{text}"
        );
        assert!(text.contains("isoflow_dlq_total{pipeline=\"fraud\",reason=\"invalid_json\"} 1"));
        assert!(text
            .contains("isoflow_batch_latency_seconds_bucket{pipeline=\"fraud\",le=\"0.025\"} 1"));
        assert!(
            text.contains("isoflow_batch_latency_seconds_bucket{pipeline=\"fraud\",le=\"0.01\"} 0")
        );
        assert!(text.contains("isoflow_backend_info{backend=\"cpu\"} 1"));
        assert!(text.contains("isoflow_state_fill_ratio{pipeline=\"fraud\"} 0\n"));
        m.state_fill.store(0.75f64.to_bits(), Relaxed);
        assert!(r
            .render()
            .contains("isoflow_state_fill_ratio{pipeline=\"fraud\"} 0.75\n"));
        m.phase_micros[1].fetch_add(1_500_000, Relaxed);
        m.last_batch_ms.store(1_767_225_600_250, Relaxed);
        let text = r.render();
        assert!(
            text.contains(
                "isoflow_batch_phase_seconds_total{pipeline=\"fraud\",phase=\"score\"} 1.5"
            ),
            "{text}"
        );
        assert!(
            text.contains("isoflow_last_batch_timestamp_seconds{pipeline=\"fraud\"} 1767225600.25"),
            "{text}"
        );
    }
}
