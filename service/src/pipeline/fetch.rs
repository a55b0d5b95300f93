//! Fetched messages in batches: every partition the group assigns is
//! forwarded, before it is assigned, to a queue of the pipeline's own, which
//! the collecting thread drains a batch at a time
//! (`rd_kafka_consume_batch_queue`).
//!
//! Polling the consumer one message at a time costs three clock readings, a
//! lock and an allocation per message on top of librdkafka's own work; a
//! batch call pays those once. Only fetched messages (and fetch errors) go
//! to this queue: rebalances, commit replies and client errors stay on the
//! consumer's queue, which the thread still polls between batches. The batch
//! call must not see those, as it cannot hand them back.

use crate::kafka::RecordBatch;
use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The consumer of a pipeline.
pub(crate) type PipelineConsumer = BaseConsumer<Forwarding>;

/// Client context that forwards each assigned partition to the pipeline's
/// [`MessageQueue`], if one is open, and keeps what the collector needs to
/// tell a rebalance's replay from an offset reset.
#[derive(Default)]
pub(crate) struct Forwarding {
    queue: AtomicPtr<rdsys::rd_kafka_queue_t>,
    /// This consumer's commits, sent and confirmed.
    commits: Mutex<Commits>,
    /// Assignments so far: within one, a partition's offsets only go up.
    /// Raised under the `commits` lock, before the assignment is applied.
    assignments: AtomicU64,
    /// Partitions given up, whose per-key state is to be released.
    ownership: Mutex<Ownership>,
    /// Signalled when a checkpoint is written.
    written: std::sync::Condvar,
}

/// Commits `offsets` without waiting; the broker's answer comes to
/// [`Forwarding`]'s commit callback on the consumer's next poll.
/// librdkafka answers a plain asynchronous commit (`rd_kafka_commit`) only
/// to an `offset_commit_cb`, never as an event, so this one names the
/// consumer's queue as where the answer goes.
pub(crate) fn commit_async(
    consumer: &PipelineConsumer,
    offsets: &TopicPartitionList,
) -> rdkafka::error::KafkaResult<()> {
    let context = consumer.context();
    // Held until the commit is queued: an assignment that starts meanwhile
    // waits, so a commit counted as sent before it was queued before it.
    let mut commits = context.commits.lock().expect("commits lock");
    let rk = consumer.client().native_ptr();
    // SAFETY: the client is live; the queue reference taken here is
    // released here, and librdkafka keeps its own for the reply.
    let err = unsafe {
        let queue = rdsys::rd_kafka_queue_get_consumer(rk);
        if queue.is_null() {
            // No group: nothing answers, and a null queue would wait.
            rdsys::rd_kafka_commit(rk, offsets.ptr(), 1)
        } else {
            let err = rdsys::rd_kafka_commit_queue(rk, offsets.ptr(), queue, None, ptr::null_mut());
            rdsys::rd_kafka_queue_destroy(queue);
            err
        }
    };
    if err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        commits.sent(context.assignments(), offsets);
        Ok(())
    } else {
        Err(rdkafka::error::KafkaError::ConsumerCommit(err.into()))
    }
}

/// Commits sent and not yet answered, at most this many: an answer that
/// never comes (the client closing) is forgotten with the oldest.
const PENDING_COMMITS: usize = 256;

/// This consumer's commits, to tell a rebalance's replay from an offset
/// reset. An assignment starts each partition at the group's committed
/// offset, which librdkafka fetches only once the commits queued before
/// the assignment are answered. So a commit sent before an assignment and
/// confirmed is at or below where that assignment starts, unless the
/// offsets went back. A commit sent later may land after that fetch, and
/// one the broker refused (sent during a rebalance) does not count.
#[derive(Default)]
struct Commits {
    /// Sent, not yet answered: the assignment each was sent in and its
    /// offsets, oldest first.
    pending: std::collections::VecDeque<(u64, Vec<(i32, i64)>)>,
    /// Per partition, per assignment a commit was sent in, the last
    /// offset confirmed (only the last few assignments are kept).
    confirmed: HashMap<i32, std::collections::BTreeMap<u64, i64>>,
}

/// Assignments a partition's confirmed commits are kept for.
const CONFIRMED_ASSIGNMENTS: usize = 4;

impl Commits {
    fn sent(&mut self, assignment: u64, offsets: &TopicPartitionList) {
        if self.pending.len() == PENDING_COMMITS {
            self.pending.pop_front();
        }
        let mut listed: Vec<(i32, i64)> = Self::listed(offsets).map(|(p, o, _)| (p, o)).collect();
        listed.sort_unstable();
        self.pending.push_back((assignment, listed));
    }

    /// The broker answered the commit of `offsets`: where `ok`, the
    /// partitions without an error of their own are confirmed.
    fn answered(&mut self, ok: bool, offsets: &TopicPartitionList) {
        let mut listed: Vec<(i32, i64, bool)> = Self::listed(offsets).collect();
        listed.sort_unstable();
        let Some(at) = self.pending.iter().position(|(_, sent)| {
            sent.len() == listed.len() && sent.iter().zip(&listed).all(|(s, l)| *s == (l.0, l.1))
        }) else {
            return;
        };
        let (assignment, _) = self.pending.remove(at).expect("found");
        for (partition, offset, _) in listed.into_iter().filter(|l| ok && l.2) {
            let by_assignment = self.confirmed.entry(partition).or_default();
            by_assignment.insert(assignment, offset);
            while by_assignment.len() > CONFIRMED_ASSIGNMENTS {
                by_assignment.pop_first();
            }
        }
    }

    /// The last confirmed commit of `partition` sent before `assignment`.
    fn before(&self, partition: i32, assignment: u64) -> Option<i64> {
        let by_assignment = self.confirmed.get(&partition)?;
        by_assignment
            .range(..assignment)
            .next_back()
            .map(|(_, &o)| o)
    }

    /// The partitions of `offsets` with an offset, and whether each is
    /// free of an error of its own.
    fn listed(offsets: &TopicPartitionList) -> impl Iterator<Item = (i32, i64, bool)> + '_ {
        offsets
            .elements()
            .into_iter()
            .filter_map(|p| match p.offset() {
                Offset::Offset(o) => Some((p.partition(), o, p.error().is_ok())),
                _ => None,
            })
    }
}

/// Longest a revocation waits for checkpoints in flight.
const REVOKE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What rebalances took away and gave. A partition revoked and assigned
/// again in the same rebalance (an eager rebalance revokes everything
/// first) went to nobody else, so its state is still right; one not
/// assigned again, or revoked because the assignment was lost (the session
/// expired: another consumer may have read it meanwhile), is released. A
/// partition assigned that was not held is gained: its state is to be
/// restored.
#[derive(Default)]
struct Ownership {
    /// Partitions whose state this consumer holds.
    held: std::collections::BTreeSet<i32>,
    /// Revoked by the rebalance under way.
    revoked: Vec<i32>,
    /// Given up, not yet taken by [`Forwarding::take_rebalanced`].
    released: Vec<i32>,
    /// Gained, not yet taken.
    gained: Vec<i32>,
    /// Releases taken by the collector, not yet applied to the state.
    releases_in_flight: usize,
    /// Checkpoints taken, not yet written.
    checkpoints: usize,
}

impl Ownership {
    /// `partitions` were revoked; `lost` when the assignment was lost.
    fn revoke(&mut self, partitions: impl IntoIterator<Item = i32>, lost: bool) {
        if lost {
            for p in partitions {
                self.give_up(p);
            }
        } else {
            self.revoked.extend(partitions);
        }
    }

    fn give_up(&mut self, partition: i32) {
        self.held.remove(&partition);
        self.gained.retain(|&g| g != partition);
        self.released.push(partition);
    }

    /// `partitions` were assigned: what was revoked and is not among them
    /// is given up; what was not held is gained.
    fn assign(&mut self, partitions: &[i32]) {
        for p in std::mem::take(&mut self.revoked) {
            if !partitions.contains(&p) {
                self.give_up(p);
            }
        }
        for &p in partitions {
            if self.held.insert(p) {
                self.gained.push(p);
            }
        }
    }
}

/// What rebalances changed since last asked ([`Forwarding::take_rebalanced`]).
#[derive(Debug, Default, PartialEq)]
pub(super) struct Rebalanced {
    /// Partitions given up, whose per-key state is stale from now on.
    pub(super) released: Vec<i32>,
    /// Partitions gained, whose state is to be restored before their
    /// records are scored.
    pub(super) gained: Vec<i32>,
}

impl Rebalanced {
    /// True when nothing changed.
    pub(super) fn is_empty(&self) -> bool {
        self.released.is_empty() && self.gained.is_empty()
    }
}

impl Forwarding {
    /// The last commit of `partition` this consumer sent before
    /// `assignment` began and the broker confirmed: the group's committed
    /// offset is at least that when `assignment` starts, unless the
    /// partition's offsets went back.
    pub(super) fn committed_before(&self, partition: i32, assignment: u64) -> Option<i64> {
        let commits = self.commits.lock().expect("commits lock");
        commits.before(partition, assignment)
    }

    /// Assignments served so far.
    pub(super) fn assignments(&self) -> u64 {
        self.assignments.load(Ordering::Acquire)
    }

    /// Partitions given up and gained since last asked. Rebalances run
    /// inside the consumer's poll, so after a poll this holds what that
    /// poll's rebalance changed. A partition given up and gained again
    /// since is in both, and is to be restored.
    pub(super) fn take_rebalanced(&self) -> Rebalanced {
        let mut ownership = self.ownership.lock().expect("ownership lock");
        let released = std::mem::take(&mut ownership.released);
        ownership.releases_in_flight += usize::from(!released.is_empty());
        Rebalanced {
            released,
            gained: std::mem::take(&mut ownership.gained),
        }
    }

    /// `n` releases taken by [`Self::take_rebalanced`] are applied to the
    /// per-key state.
    pub(super) fn releases_applied(&self, n: usize) {
        let mut ownership = self.ownership.lock().expect("ownership lock");
        ownership.releases_in_flight = ownership.releases_in_flight.saturating_sub(n);
    }

    /// Whether a checkpoint may be taken now; if so it counts as in flight
    /// until [`Self::checkpoint_written`]. Not while a rebalance is under
    /// way or its releases are not yet applied: the state would hold
    /// partitions another member may be restoring, and a checkpoint of
    /// them written after that member read the changelog would mix two
    /// owners' state. A revocation waits for the checkpoints in flight.
    pub(super) fn begin_checkpoint(&self) -> bool {
        let mut o = self.ownership.lock().expect("ownership lock");
        let settled = o.revoked.is_empty() && o.released.is_empty() && o.releases_in_flight == 0;
        o.checkpoints += usize::from(settled);
        settled
    }

    /// Whether this consumer holds `partition`'s state: assigned, not being
    /// revoked.
    pub(super) fn holds(&self, partition: i32) -> bool {
        let o = self.ownership.lock().expect("ownership lock");
        o.held.contains(&partition) && !o.revoked.contains(&partition)
    }

    /// A checkpoint from [`Self::begin_checkpoint`] is written (or failed).
    pub(super) fn checkpoint_written(&self) {
        let mut o = self.ownership.lock().expect("ownership lock");
        o.checkpoints = o.checkpoints.saturating_sub(1);
        self.written.notify_all();
    }
}

impl ClientContext for Forwarding {}

impl ConsumerContext for Forwarding {
    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        let ok = result.is_ok();
        self.commits
            .lock()
            .expect("commits lock")
            .answered(ok, offsets);
        match result {
            Ok(()) => {}
            // Not fatal: the next commit carries later offsets; a crash
            // before it replays these batches, which at-least-once allows.
            Err(e) => tracing::warn!(error = %e, "offset commit failed"),
        }
    }

    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            let revoked = partitions
                .elements()
                .iter()
                .map(|p| p.partition())
                .collect::<Vec<_>>();
            let mut ownership = self.ownership.lock().expect("ownership lock");
            ownership.revoke(revoked, consumer.assignment_lost());
            // Whoever gets these partitions reads their changelog: what
            // this member checkpointed must be there in whole by then.
            let (ownership, waited) = self
                .written
                .wait_timeout_while(ownership, REVOKE_WAIT, |o| o.checkpoints > 0)
                .expect("ownership lock");
            if waited.timed_out() {
                tracing::warn!(
                    checkpoints = ownership.checkpoints,
                    "revocation went on with checkpoints still in flight"
                );
            }
            return;
        }
        // Before the assignment, so no fetch for these partitions starts
        // on the consumer's own queue.
        let Rebalance::Assign(partitions) = rebalance else {
            return;
        };
        {
            let _commits = self.commits.lock().expect("commits lock");
            self.assignments.fetch_add(1, Ordering::AcqRel);
        }
        let queue = self.queue.load(Ordering::Acquire);
        if queue.is_null() {
            return;
        }
        let rk = consumer.client().native_ptr();
        for p in partitions.elements() {
            let Ok(topic) = CString::new(p.topic()) else {
                continue;
            };
            // SAFETY: `rk` is the live client; the partition queue handle is
            // released right after forwarding, which keeps its own
            // reference to `queue`.
            unsafe {
                let partition =
                    rdsys::rd_kafka_queue_get_partition(rk, topic.as_ptr(), p.partition());
                if !partition.is_null() {
                    rdsys::rd_kafka_queue_forward(partition, queue);
                    rdsys::rd_kafka_queue_destroy(partition);
                }
            }
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            let assigned: Vec<i32> = partitions
                .elements()
                .iter()
                .map(|p| p.partition())
                .collect();
            let mut ownership = self.ownership.lock().expect("ownership lock");
            ownership.assign(&assigned);
        }
    }
}

/// The pipeline's queue of fetched messages; open while the collecting
/// thread runs.
pub(super) struct MessageQueue<'c> {
    consumer: &'c PipelineConsumer,
    queue: *mut rdsys::rd_kafka_queue_t,
    taken: Vec<*mut rdsys::rd_kafka_message_t>,
}

/// One fetched message, as [`MessageQueue::drain`] hands it over.
pub(super) struct Fetched<'m> {
    message: &'m rdsys::rd_kafka_message_t,
}

impl<'c> MessageQueue<'c> {
    /// Opens the queue; partitions assigned from now on are forwarded to it.
    /// Call before the consumer's first poll, so the first assignment is.
    pub(super) fn open(consumer: &'c PipelineConsumer, capacity: usize) -> Self {
        // SAFETY: the client is live for `'c`.
        let queue = unsafe { rdsys::rd_kafka_queue_new(consumer.client().native_ptr()) };
        consumer.context().queue.store(queue, Ordering::Release);
        Self {
            consumer,
            queue,
            taken: Vec::with_capacity(capacity),
        }
    }

    /// Waits up to `wait` for up to `max` messages and hands each to `each`
    /// in order (an `Err` is a fetch error, with librdkafka's text). Waiting
    /// ends early once `max` arrived.
    pub(super) fn drain(
        &mut self,
        wait: Duration,
        max: usize,
        mut each: impl FnMut(Result<Fetched<'_>, String>),
    ) {
        self.taken.clear();
        self.taken.reserve(max);
        let timeout = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `taken` has room for `max` pointers; librdkafka writes at
        // most that many and returns how many (negative on error).
        let n = unsafe {
            rdsys::rd_kafka_consume_batch_queue(self.queue, timeout, self.taken.as_mut_ptr(), max)
        };
        let n = usize::try_from(n).unwrap_or(0);
        // SAFETY: librdkafka initialised the first `n` entries.
        unsafe { self.taken.set_len(n) };
        for &message in &self.taken {
            // SAFETY: each pointer is a live message owned by us until the
            // destroy below; `each` cannot keep the borrow.
            let m = unsafe { &*message };
            if m.err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                each(Ok(Fetched { message: m }));
            } else {
                // SAFETY: `rd_kafka_message_errstr` returns a string owned by
                // the message.
                let text = unsafe { CStr::from_ptr(rdsys::rd_kafka_message_errstr(message)) };
                each(Err(text.to_string_lossy().into_owned()));
            }
            // SAFETY: handed back exactly once.
            unsafe { rdsys::rd_kafka_message_destroy(message) };
        }
    }
}

impl Drop for MessageQueue<'_> {
    fn drop(&mut self) {
        self.consumer
            .context()
            .queue
            .store(ptr::null_mut(), Ordering::Release);
        // SAFETY: our handle, released once; partitions still forwarded hold
        // their own references.
        unsafe { rdsys::rd_kafka_queue_destroy(self.queue) };
    }
}

/// A consumed message, from the pipeline's queue or the consumer's own.
pub(super) trait Incoming {
    fn partition(&self) -> i32;
    fn offset(&self) -> i64;
    /// Copies key and value into `batch` (no headers).
    fn push_into(&self, batch: &mut RecordBatch);
    /// Copies the headers onto `batch`'s last record, which must be this
    /// message.
    fn keep_headers(&self, batch: &mut RecordBatch);
}

impl<M: Message> Incoming for M {
    fn partition(&self) -> i32 {
        Message::partition(self)
    }
    fn offset(&self) -> i64 {
        Message::offset(self)
    }
    fn push_into(&self, batch: &mut RecordBatch) {
        batch.push_bare(self);
    }
    fn keep_headers(&self, batch: &mut RecordBatch) {
        batch.keep_headers(self);
    }
}

impl Incoming for Fetched<'_> {
    fn partition(&self) -> i32 {
        self.message.partition
    }

    fn offset(&self) -> i64 {
        self.message.offset
    }

    fn push_into(&self, batch: &mut RecordBatch) {
        let m = self.message;
        let part = |p: *mut std::ffi::c_void, len: usize| {
            // SAFETY: librdkafka's key/payload pointer and length; null
            // means absent.
            (!p.is_null()).then(|| unsafe { std::slice::from_raw_parts(p as *const u8, len) })
        };
        let mut kind = rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: a live message; `kind` is written.
        let ts = unsafe { rdsys::rd_kafka_message_timestamp(m, &mut kind) };
        let ts = (kind != rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE)
            .then_some(ts);
        batch.push_parts(
            (m.partition, m.offset, ts),
            part(m.key, m.key_len),
            part(m.payload, m.len),
        );
    }

    fn keep_headers(&self, batch: &mut RecordBatch) {
        let mut headers: *mut rdsys::rd_kafka_headers_t = ptr::null_mut();
        // SAFETY: a live message; the headers stay owned by it.
        let found = unsafe { rdsys::rd_kafka_message_headers(self.message, &mut headers) };
        if found != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || headers.is_null() {
            return;
        }
        let mut list = Vec::new();
        for idx in 0.. {
            let (mut name, mut value, mut size) = (ptr::null(), ptr::null(), 0usize);
            // SAFETY: reads header `idx` of a live header list; the
            // pointers stay valid while the message lives.
            let got = unsafe {
                rdsys::rd_kafka_header_get_all(headers, idx, &mut name, &mut value, &mut size)
            };
            if got != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                break;
            }
            // SAFETY: as above; names are NUL-terminated.
            let name = unsafe { CStr::from_ptr(name) }.to_str().unwrap_or_default();
            let value = (!value.is_null())
                .then(|| unsafe { std::slice::from_raw_parts(value as *const u8, size) });
            list.push((name, value));
        }
        batch.keep_header_list(list);
    }
}

#[cfg(test)]
mod tests {
    use super::{rdsys, Commits, Offset, Ownership, TopicPartitionList};

    /// An eager rebalance revokes everything, then assigns: only what did
    /// not come back is given up. A cooperative one revokes what moves and
    /// assigns what is new. A lost assignment is given up whole. What was
    /// not held is gained.
    #[test]
    fn partitions_are_given_up_when_they_go_elsewhere() {
        let mut o = Ownership::default();
        let take = |o: &mut Ownership| {
            (
                std::mem::take(&mut o.released),
                std::mem::take(&mut o.gained),
            )
        };
        o.assign(&[0, 1, 2, 3]);
        assert_eq!(take(&mut o), (vec![], vec![0, 1, 2, 3]));
        o.revoke([0, 1, 2, 3], false);
        assert_eq!(
            take(&mut o),
            (vec![], vec![]),
            "nothing until the assignment"
        );
        o.assign(&[0, 2]);
        assert_eq!(take(&mut o), (vec![1, 3], vec![]));
        o.revoke([0, 2], false);
        o.assign(&[0, 2, 1]);
        assert_eq!(
            take(&mut o),
            (vec![], vec![1]),
            "0 and 2 kept through the rebalance"
        );
        o.revoke([2], false);
        o.assign(&[]);
        assert_eq!(take(&mut o), (vec![2], vec![]));
        o.revoke([0, 1], true);
        assert_eq!(take(&mut o), (vec![0, 1], vec![]));
        o.assign(&[0, 1]);
        assert_eq!(take(&mut o), (vec![], vec![0, 1]));
        assert!(o.revoked.is_empty());
    }

    fn list(offsets: &[(i32, i64)]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for &(p, o) in offsets {
            tpl.add_partition_offset("t", p, Offset::Offset(o)).unwrap();
        }
        tpl
    }

    #[test]
    fn only_confirmed_commits_sent_before_an_assignment_count_for_it() {
        let mut c = Commits::default();
        c.sent(1, &list(&[(0, 100), (1, 90)]));
        assert_eq!(c.before(0, 2), None, "not answered yet");
        c.answered(true, &list(&[(1, 90), (0, 100)]));
        assert_eq!((c.before(0, 2), c.before(1, 2)), (Some(100), Some(90)));
        assert_eq!(c.before(0, 1), None, "sent in assignment 1, not before it");
        // Refused (sent while the group rebalanced): the last confirmed
        // one still counts.
        c.sent(1, &list(&[(0, 150)]));
        c.answered(false, &list(&[(0, 150)]));
        assert_eq!(c.before(0, 2), Some(100));
        // Sent in the new assignment: not before it, whenever answered.
        c.sent(2, &list(&[(0, 120)]));
        c.answered(true, &list(&[(0, 120)]));
        assert_eq!((c.before(0, 2), c.before(0, 3)), (Some(100), Some(120)));
        // An answer for no commit sent marks nothing.
        c.answered(true, &list(&[(0, 999)]));
        assert_eq!(c.before(0, 3), Some(120));
    }

    #[test]
    fn a_partition_refused_in_an_accepted_commit_is_not_confirmed() {
        let mut c = Commits::default();
        c.sent(1, &list(&[(0, 10), (1, 20)]));
        let answer = list(&[(0, 10), (1, 20)]);
        // SAFETY: the list holds two elements, as librdkafka gives them.
        unsafe {
            (*(*answer.ptr()).elems.add(1)).err =
                rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS;
        }
        c.answered(true, &answer);
        assert_eq!((c.before(0, 2), c.before(1, 2)), (Some(10), None));
    }
}
