//! The consuming side of a pipeline: a thread that polls Kafka, parses each
//! record as it arrives and forms whole batches (N records or T ms after
//! the first, whichever comes first), so collecting one batch overlaps
//! scoring and publishing the one before. The channel to the pipeline holds
//! one batch: a slow pipeline stops the thread, and librdkafka's own
//! bounded prefetch is all that piles up behind it.
//!
//! Parsing here, while the message is still at hand, lets the thread copy a
//! message's headers only when the record is rejected: the DLQ needs them,
//! nothing else does, and reading them costs the client an allocation per
//! header.

use super::parse::{LiveModel, ParsedBatch, Parser, Parsing};
use crate::kafka::RecordBatch;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long one poll waits while no batch is open; bounds how late the
/// thread notices a stop.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// Records between two readings of the clock while a batch fills.
const CLOCK_EVERY: u32 = 64;

/// Parsed batches from the collecting thread.
pub(super) struct Collector {
    batches: mpsc::Receiver<ParsedBatch>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Finished batches going back to the collecting thread for reuse.
    recycle: std::sync::mpsc::Sender<RecordBatch>,
}

impl Collector {
    /// Starts the thread for pipeline `name` on a subscribed consumer. Each
    /// batch is parsed with `parser`, which follows the `live` model from
    /// one batch to the next (taken up at a batch's first record).
    pub(super) fn spawn(
        name: &str,
        consumer: Arc<BaseConsumer>,
        max_records: usize,
        max_wait: Duration,
        parser: Parser,
        live: LiveModel,
    ) -> std::io::Result<Self> {
        let (tx, batches) = mpsc::channel(1);
        let (recycle, recycled) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            let name = name.to_owned();
            std::thread::Builder::new()
                .name(format!("collect-{name}"))
                .spawn(move || {
                    let limits = (max_records.max(1), max_wait);
                    let parsing = (parser, live);
                    collect(&name, &consumer, parsing, (&tx, &recycled), limits, &stop)
                })?
        };
        Ok(Self {
            batches,
            stop,
            thread: Some(thread),
            recycle,
        })
    }

    /// The next batch; `None` once the thread has stopped and every batch it
    /// made was taken.
    pub(super) async fn next(&mut self) -> Option<ParsedBatch> {
        self.batches.recv().await
    }

    /// Gives a finished batch's buffers back for a later batch. Buffers of a
    /// batch are hundreds of kilobytes: allocated afresh each time, they
    /// cost page faults on every batch.
    pub(super) fn recycle(&self, mut batch: RecordBatch) {
        batch.clear();
        let _ = self.recycle.send(batch);
    }

    /// Asks the collecting thread to hand over what it holds and stop; [`Self::next`]
    /// still returns the batches it made.
    pub(super) fn stop(&self) {
        self.stop.store(true, Relaxed);
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop();
        // Let a send that waits for room fail instead of blocking forever.
        self.batches.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn collect(
    name: &str,
    consumer: &BaseConsumer,
    (mut parser, mut live): (Parser, LiveModel),
    (tx, recycled): (
        &mpsc::Sender<ParsedBatch>,
        &std::sync::mpsc::Receiver<RecordBatch>,
    ),
    (max_records, max_wait): (usize, Duration),
    stop: &AtomicBool,
) {
    // Next offset per partition (indexed by partition number) already handed
    // over. After a rebalance the consumer resumes from the last commit,
    // which may be behind: those records are done or in flight, and feeding
    // them to the per-key state twice would corrupt gaps and rates.
    let mut handed: Vec<i64> = Vec::new();
    // The last batch's size: the next one will likely need as much room.
    let mut bytes_hint = 0;
    loop {
        let mut batch = recycled
            .try_recv()
            .unwrap_or_else(|_| RecordBatch::with_capacity(max_records, bytes_hint));
        // Made at the batch's first record, so a model that went live while
        // the thread waited for records applies to them.
        let mut parsing: Option<Parsing> = None;
        let mut flush_at: Option<Instant> = None;
        // Reading the clock is a good part of the per-record cost here.
        // While records are queued they are taken without waiting and the
        // clock is read once per CLOCK_EVERY of them; it is read afresh
        // whenever the queue runs dry and after every wait.
        let mut now = Instant::now();
        let mut since_clock = 0;
        while !stop.load(Relaxed) {
            if flush_at.is_some_and(|at| now >= at) {
                break;
            }
            let polled = match consumer.poll(Duration::ZERO) {
                Some(polled) => {
                    since_clock += 1;
                    if since_clock >= CLOCK_EVERY {
                        since_clock = 0;
                        now = Instant::now();
                    }
                    polled
                }
                None => {
                    now = Instant::now();
                    let wait = flush_at.map_or(IDLE_POLL, |at| at.saturating_duration_since(now));
                    let polled = consumer.poll(wait);
                    now = Instant::now();
                    match polled {
                        Some(polled) => polled,
                        None => continue,
                    }
                }
            };
            match polled {
                Ok(m) => {
                    let partition = usize::try_from(m.partition()).unwrap_or(0);
                    if handed.get(partition).is_some_and(|&next| m.offset() < next) {
                        continue;
                    }
                    let parsing = parsing.get_or_insert_with(|| {
                        parser.follow(&mut live);
                        Parsing::new(&parser, max_records)
                    });
                    batch.push_bare(&m);
                    if parsing.push(&batch, batch.len() - 1) {
                        batch.keep_headers(&m);
                    }
                    flush_at.get_or_insert(now + max_wait);
                    if batch.len() >= max_records {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(pipeline = %name, error = %e, "consumer error; retrying")
                }
            }
        }
        bytes_hint = batch.bytes();
        for (partition, next) in batch.next_offsets() {
            let partition = usize::try_from(partition).unwrap_or(0);
            if handed.len() <= partition {
                handed.resize(partition + 1, 0);
            }
            handed[partition] = handed[partition].max(next);
        }
        let stopping = stop.load(Relaxed);
        if let Some(parsing) = parsing.filter(|_| !batch.is_empty()) {
            let parsed = parsing.finish(batch, Instant::now());
            if tx.blocking_send(parsed).is_err() {
                return;
            }
        }
        if stopping {
            return;
        }
    }
}
