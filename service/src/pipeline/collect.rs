//! The consuming side of a pipeline: a thread that takes fetched messages a
//! batch at a time ([`super::fetch`]), parses each record as it arrives and
//! forms whole batches (N records or T ms after
//! the first, whichever comes first), so collecting one batch overlaps
//! scoring and publishing the one before. The channel to the pipeline holds
//! one batch: a slow pipeline stops the thread, and librdkafka's own
//! bounded prefetch is all that piles up behind it.
//!
//! Parsing here, while the message is still at hand, lets the thread copy a
//! message's headers only when the record is rejected: the DLQ needs them,
//! nothing else does, and reading them costs the client an allocation per
//! header.

use super::changelog::{Changelog, StateMoves};
use super::fetch::{Incoming, MessageQueue, PipelineConsumer, Rebalanced};
use super::parse::{LiveModel, ParsedBatch, Parser, Parsing};
use crate::input::Columns;
use crate::kafka::RecordBatch;
use crate::metrics::PipelineMetrics;
use rdkafka::consumer::Consumer as _;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Longest wait for fetched messages before the consumer's own queue is
/// served again (rebalances wait at most this long) and a stop is noticed.
const EVENT_POLL: Duration = Duration::from_millis(10);

/// Parsed batches from the collecting thread.
pub(super) struct Collector {
    batches: mpsc::Receiver<ParsedBatch>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Finished batches' buffers going back to the collecting thread for reuse.
    recycle: std::sync::mpsc::Sender<(RecordBatch, Columns)>,
}

impl Collector {
    /// Starts the thread for pipeline `name` on a subscribed consumer. Each
    /// batch is parsed with `parser`, which follows the `live` model from
    /// one batch to the next (taken up at a batch's first record).
    pub(super) fn spawn(
        name: &str,
        consumer: Arc<PipelineConsumer>,
        (max_records, max_wait, max_bytes): (usize, Duration, usize),
        parser: Parser,
        live: LiveModel,
        (metrics, changelog): (Arc<PipelineMetrics>, Option<Changelog>),
    ) -> std::io::Result<Self> {
        let pipeline = name.to_owned();
        Self::start(name, move |tx, recycled, stop| {
            let limits = (max_records.max(1), max_wait, max_bytes.max(1));
            let parsing = (parser, live);
            let source = Source {
                pipeline: &pipeline,
                consumer: &consumer,
                metrics: &metrics,
                changelog: changelog.as_ref(),
            };
            collect(&source, parsing, (tx, recycled), limits, stop)
        })
    }

    /// Runs `body` on the collecting thread of pipeline `name`.
    fn start(
        name: &str,
        body: impl FnOnce(
                &mpsc::Sender<ParsedBatch>,
                &std::sync::mpsc::Receiver<(RecordBatch, Columns)>,
                &AtomicBool,
            ) + Send
            + 'static,
    ) -> std::io::Result<Self> {
        let (tx, batches) = mpsc::channel(1);
        let (recycle, recycled) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("collect-{name}"))
                .spawn(move || body(&tx, &recycled, &stop))?
        };
        Ok(Self {
            batches,
            stop,
            thread: Some(thread),
            recycle,
        })
    }

    /// Why the thread ended while nobody asked it to stop: its panic, or
    /// that it ended. Waits for the thread.
    pub(super) fn failure(&mut self, pipeline: &str) -> super::PipelineError {
        let message = match self.thread.take().map(JoinHandle::join) {
            Some(Err(panic)) => {
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                format!("panicked: {text}")
            }
            _ => "ended unexpectedly".into(),
        };
        super::PipelineError::Collector {
            pipeline: pipeline.to_owned(),
            message,
        }
    }

    /// The next batch; `None` once the thread has stopped and every batch it
    /// made was taken.
    pub(super) async fn next(&mut self) -> Option<ParsedBatch> {
        self.batches.recv().await
    }

    /// Gives a finished batch's buffers (its records and its columns) back
    /// for a later batch. Buffers of a batch are hundreds of kilobytes:
    /// allocated afresh each time, they cost page faults on every batch.
    pub(super) fn recycle(&self, mut batch: RecordBatch, columns: Columns) {
        batch.clear();
        let _ = self.recycle.send((batch, columns));
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

/// The batch being formed, and what forming it needs.
struct Forming<'a> {
    batch: RecordBatch,
    /// Columns of an earlier batch, for this one's parsing to reuse.
    spare: Option<Columns>,
    /// Made at the batch's first record, so a model that went live while
    /// the thread waited for records applies to them.
    parsing: Option<Parsing>,
    parser: &'a mut Parser,
    live: &'a mut LiveModel,
    handed: &'a mut Handed,
    source: &'a Source<'a>,
    flush_at: Option<Instant>,
    max_records: usize,
    max_wait: Duration,
    /// Bytes at which the batch is full, and the largest record (records
    /// read in one go are bounded so the batch overshoots by little).
    max_bytes: usize,
    record_bytes: usize,
    /// Per-key state released or restored before this batch's records
    /// are scored: partitions a rebalance gave up or gained before the
    /// batch's first record.
    moves: StateMoves,
}

impl Forming<'_> {
    /// Records the next read may take: what is left of the record count,
    /// and of the bytes at the largest record's size (at least one).
    fn room(&self) -> usize {
        room(
            self.max_records - self.batch.len(),
            self.max_bytes.saturating_sub(self.batch.bytes()),
            self.record_bytes,
        )
    }

    /// Whether the batch is full, by count or by bytes.
    fn full(&self) -> bool {
        self.batch.len() >= self.max_records || self.batch.bytes() >= self.max_bytes
    }
}

impl Forming<'_> {
    fn take(&mut self, m: &impl Incoming) {
        let source = self.source;
        let context = source.consumer.context();
        let seen = Seen {
            partition: m.partition(),
            offset: m.offset(),
            assignment: context.assignments(),
        };
        match self
            .handed
            .check(seen, |p| context.committed_before(p, seen.assignment))
        {
            Verdict::New => {}
            Verdict::Covered => {
                source.metrics.state_covered.fetch_add(1, Relaxed);
                return;
            }
            Verdict::Redelivered => {
                source.metrics.redelivered.fetch_add(1, Relaxed);
                return;
            }
            Verdict::Reset { handed } => {
                source.metrics.offset_resets.fetch_add(1, Relaxed);
                tracing::warn!(
                    pipeline = %source.pipeline,
                    partition = seen.partition,
                    offset = seen.offset,
                    handed,
                    "offset reset: the partition's offsets went back below what was committed \
                     (topic recreated, broker storage lost, or offsets reset by hand); \
                     its records are taken again from here"
                );
            }
        }
        let (parser, live, max_records) = (&mut *self.parser, &mut *self.live, self.max_records);
        let parsing = self.parsing.get_or_insert_with(|| {
            parser.follow(live);
            Parsing::new(parser, max_records, self.spare.take())
        });
        m.push_into(&mut self.batch);
        if parsing.push(&self.batch, self.batch.len() - 1) {
            m.keep_headers(&mut self.batch);
        }
        if self.flush_at.is_none() {
            self.flush_at = Some(Instant::now() + self.max_wait);
        }
    }
}

/// Takes what the consumer's own queue returned: a message fetched before
/// its partition was forwarded, or a client error.
fn serve<M: Incoming>(forming: &mut Forming<'_>, polled: Option<rdkafka::error::KafkaResult<M>>) {
    match polled {
        Some(Ok(m)) => forming.take(&m),
        Some(Err(e)) => {
            tracing::warn!(pipeline = %forming.source.pipeline, error = %e, "consumer error; retrying")
        }
        None => {}
    }
}

/// Where the collecting thread reads from, and what it reports to.
struct Source<'a> {
    pipeline: &'a str,
    consumer: &'a PipelineConsumer,
    metrics: &'a PipelineMetrics,
    /// Where gained partitions' state is read back from.
    changelog: Option<&'a Changelog>,
}

impl Source<'_> {
    /// The state moves of a rebalance: gained partitions' state read back
    /// from the changelog (none without one), their records up to what it
    /// covers marked in `handed` to be passed over.
    fn moves(&self, rebalanced: Rebalanced, handed: &mut Handed) -> StateMoves {
        let Rebalanced { released, gained } = rebalanced;
        let releases = usize::from(!released.is_empty());
        let restored = match (self.changelog, gained.is_empty()) {
            (Some(changelog), false) => {
                let started = Instant::now();
                match changelog.restore(&gained) {
                    Ok(restored) => {
                        let seconds = started.elapsed().as_secs_f64();
                        let keys: usize = restored.iter().map(|r| r.keys.len()).sum();
                        let bytes: usize = restored.iter().map(|r| r.bytes).sum();
                        let m = self.metrics;
                        m.state_restores.fetch_add(1, Relaxed);
                        m.state_restored_keys.fetch_add(keys as u64, Relaxed);
                        m.state_restored_bytes.fetch_add(bytes as u64, Relaxed);
                        m.state_restore_seconds.store(seconds.to_bits(), Relaxed);
                        for r in &restored {
                            handed.restored(r.partition, r.covered);
                        }
                        let covered: Vec<(i32, Option<i64>)> =
                            restored.iter().map(|r| (r.partition, r.covered)).collect();
                        tracing::info!(pipeline = %self.pipeline, topic = %changelog.topic, partitions = ?gained, covered = ?covered, keys, bytes, seconds, "per-key state read back from the changelog");
                        restored
                    }
                    Err(e) => {
                        // Not fatal: the partition starts with no state, as
                        // it would with no changelog.
                        tracing::error!(pipeline = %self.pipeline, topic = %changelog.topic, partitions = ?gained, error = %e, "reading per-key state back failed; these partitions start afresh");
                        Vec::new()
                    }
                }
            }
            _ => Vec::new(),
        };
        StateMoves {
            released,
            restored,
            releases,
        }
    }
}

/// A record as the consumer delivered it.
#[derive(Clone, Copy, Debug)]
struct Seen {
    partition: i32,
    offset: i64,
    /// The consumer's assignment count when it arrived.
    assignment: u64,
}

/// What to do with a delivered record.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// Not handed over before: take it.
    New,
    /// Below what the partition's restored state covers: its output was
    /// acknowledged before the changelog was written.
    Covered,
    /// Handed over before (a rebalance resumes from the last commit, which
    /// may be behind): those records are done or in flight, and feeding
    /// them to the per-key state twice would corrupt gaps, rates and
    /// duplicate checks.
    Redelivered,
    /// The partition's offsets went back where no rebalance explains it:
    /// below this consumer's own last commit, or within one
    /// assignment. These are new records at reused offsets: take them.
    Reset {
        /// The next offset that had been handed over.
        handed: i64,
    },
}

/// Per partition, the next offset already handed over and the assignment
/// it came in.
#[derive(Default)]
struct Handed {
    next: Vec<Option<(i64, u64)>>,
    /// Per partition restored from the changelog, the next offset its
    /// state covers.
    covered: std::collections::HashMap<i32, i64>,
}

impl Handed {
    /// Forgets what was handed over of `partition`, whose state is gone.
    fn forget(&mut self, partition: i32) {
        if let Some(next) = self.next.get_mut(usize::try_from(partition).unwrap_or(0)) {
            *next = None;
        }
        self.covered.remove(&partition);
    }

    /// `partition`'s state was restored, covering the records before
    /// `covered`: those are passed over, every later one is new to it.
    fn restored(&mut self, partition: i32, covered: Option<i64>) {
        self.forget(partition);
        if let Some(c) = covered {
            self.covered.insert(partition, c);
        }
    }

    /// Classifies `seen` and, unless redelivered, marks it handed over.
    /// `committed` gives this consumer's last commit of a partition
    /// confirmed and sent before `seen`'s assignment.
    fn check(&mut self, seen: Seen, committed: impl FnOnce(i32) -> Option<i64>) -> Verdict {
        if self
            .covered
            .get(&seen.partition)
            .is_some_and(|&c| seen.offset < c)
        {
            return Verdict::Covered;
        }
        let at = usize::try_from(seen.partition).unwrap_or(0);
        if self.next.len() <= at {
            self.next.resize(at + 1, None);
        }
        let verdict = match self.next[at] {
            Some((next, assignment)) if seen.offset < next => {
                let same_assignment = assignment == seen.assignment;
                if same_assignment || committed(seen.partition).is_some_and(|c| seen.offset < c) {
                    Verdict::Reset { handed: next }
                } else {
                    return Verdict::Redelivered;
                }
            }
            _ => Verdict::New,
        };
        self.next[at] = Some((seen.offset + 1, seen.assignment));
        verdict
    }
}

/// Records one read may take with `records` and `bytes` left in the batch
/// and records of up to `record_bytes` each: the batch then stays within
/// its bytes, bar one record.
fn room(records: usize, bytes: usize, record_bytes: usize) -> usize {
    records.min((bytes / record_bytes.max(1)).max(1))
}

fn collect(
    source: &Source<'_>,
    (mut parser, mut live): (Parser, LiveModel),
    (tx, recycled): (
        &mpsc::Sender<ParsedBatch>,
        &std::sync::mpsc::Receiver<(RecordBatch, Columns)>,
    ),
    (max_records, max_wait, max_bytes): (usize, Duration, usize),
    stop: &AtomicBool,
) {
    let (name, consumer) = (source.pipeline, source.consumer);
    let record_bytes_limit = parser.max_bytes;
    // Before the first poll, which serves the first assignment.
    let mut queue = MessageQueue::open(consumer, max_records);
    // Marked record by record, not batch by batch: a rebalance in the
    // middle of a batch redelivers records of that same batch.
    let mut handed = Handed::default();
    // The last batch's size: the next one will likely need as much room.
    let mut bytes_hint = 0;
    // A rebalance that gave partitions up or gained some while a batch was
    // being formed ends that batch, whose records came before it: the
    // state moves go with the next one, together with the message that
    // poll returned.
    let mut next_moves = StateMoves::default();
    let mut carried = None;
    loop {
        let (batch, spare) = match recycled.try_recv() {
            Ok((batch, columns)) => (batch, Some(columns)),
            Err(_) => (RecordBatch::with_capacity(max_records, bytes_hint), None),
        };
        let mut forming = Forming {
            batch,
            spare,
            parsing: None,
            parser: &mut parser,
            live: &mut live,
            handed: &mut handed,
            source,
            flush_at: None,
            max_records,
            max_wait,
            max_bytes,
            record_bytes: record_bytes_limit,
            moves: std::mem::take(&mut next_moves),
        };
        if let Some(polled) = carried.take() {
            serve(&mut forming, polled);
        }
        while !stop.load(Relaxed) && !forming.full() {
            let now = Instant::now();
            if forming.flush_at.is_some_and(|at| now >= at) {
                break;
            }
            // Rebalances, commit replies and client errors; a message here
            // was fetched before its partition was forwarded.
            let polled = consumer.poll(Duration::ZERO);
            let rebalanced = consumer.context().take_rebalanced();
            if !rebalanced.is_empty() {
                let moves = source.moves(rebalanced, forming.handed);
                if forming.parsing.is_some() {
                    next_moves = moves;
                    carried = Some(polled);
                    break;
                }
                forming.moves.extend(moves);
            }
            serve(&mut forming, polled);
            let wait = forming
                .flush_at
                .map_or(EVENT_POLL, |at| at.saturating_duration_since(now))
                .min(EVENT_POLL);
            // The batch's linger runs from its first record: wait for that
            // one alone, then for the rest.
            let room = match forming.flush_at {
                None => 1,
                Some(_) => forming.room(),
            };
            queue.drain(wait, room, |fetched| match fetched {
                Ok(m) => forming.take(&m),
                Err(e) => {
                    tracing::warn!(pipeline = %name, error = %e, "fetch error; retrying")
                }
            });
        }
        let Forming {
            batch,
            parsing,
            moves,
            ..
        } = forming;
        bytes_hint = batch.bytes();
        let stopping = stop.load(Relaxed);
        // Parsing starts with a batch's first record: none means no record.
        if let Some(parsing) = parsing {
            let mut parsed = parsing.finish(batch, Instant::now());
            parsed.moves = moves;
            if tx.blocking_send(parsed).is_err() {
                return;
            }
        } else {
            // No record came, so no rebalance ended the batch early and
            // nothing waits in `next_moves`: these moves wait instead.
            next_moves = moves;
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(offset: i64, assignment: u64) -> Seen {
        Seen {
            partition: 0,
            offset,
            assignment,
        }
    }

    /// A rebalance replays from the last commit: records already handed
    /// over are dropped, even within the batch being formed.
    #[test]
    fn a_rebalance_replay_is_not_fed_twice() {
        let mut handed = Handed::default();
        for offset in 0..10 {
            assert_eq!(handed.check(seen(offset, 1), |_| None), Verdict::New);
        }
        // Reassigned; 6 was committed.
        for offset in 6..10 {
            let verdict = handed.check(seen(offset, 2), |_| Some(6));
            assert_eq!(verdict, Verdict::Redelivered, "offset {offset}");
        }
        assert_eq!(handed.check(seen(10, 2), |_| Some(6)), Verdict::New);
    }

    /// Offsets going back below the last commit, or within one
    /// assignment, are new records: taken, and reported as a reset.
    #[test]
    fn an_offset_reset_is_taken_and_reported_not_skipped() {
        let mut handed = Handed::default();
        for offset in 0..100 {
            handed.check(seen(offset, 1), |_| Some(50));
        }
        // Broker storage lost: the group rejoins, offsets restart at 0.
        let verdict = handed.check(seen(0, 2), |_| Some(100));
        assert_eq!(verdict, Verdict::Reset { handed: 100 });
        for offset in 1..20 {
            assert_eq!(handed.check(seen(offset, 2), |_| Some(100)), Verdict::New);
        }
        // Reset to earliest within one assignment (topic recreated).
        let verdict = handed.check(seen(3, 2), |_| None);
        assert_eq!(verdict, Verdict::Reset { handed: 20 });
    }

    #[test]
    fn reads_stay_within_the_batch_bytes() {
        // 64 MiB batches of records up to 1 MiB: at most 64 per read.
        assert_eq!(room(4096, 64 << 20, 1 << 20), 64);
        assert_eq!(room(10, 64 << 20, 1 << 20), 10);
        // Nearly full: one more record, never none.
        assert_eq!(room(4096, 100, 1 << 20), 1);
    }

    /// A collecting thread that dies must not look like a clean end of
    /// input: the pipeline reports it as a failure with the panic's text.
    #[test]
    fn a_panicking_thread_is_a_failure_not_an_end() {
        let mut collector = Collector::start("p", |_, _, _| panic!("parser bug")).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(runtime.block_on(collector.next()).is_none());
        let e = collector.failure("p").to_string();
        assert!(
            e.contains("'p'") && e.contains("panicked: parser bug"),
            "{e}"
        );
    }
}
