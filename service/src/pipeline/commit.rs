//! The acknowledging side of a pipeline: a task that waits for the broker
//! to acknowledge each batch's output, then commits the batch's offsets and
//! counts it, batch after batch in order.
//!
//! Waiting for acknowledgements is mostly idle time (a round trip to the
//! broker); doing it here lets the pipeline parse and score the next batch
//! meanwhile. Batches are finished strictly in order, so a committed offset
//! still only ever covers records whose output the broker acknowledged.
//!
//! With a changelog, offsets are committed only after a checkpoint that
//! covers them (the state of the keys the batches changed, then markers of
//! the offsets) is acknowledged: a restore then knows exactly which records
//! its state holds. Without one, offsets are committed at most every
//! [`COMMIT_INTERVAL`], not per batch: each commit is a request the broker
//! (the group coordinator) serves, and at a batch every few milliseconds
//! those cost it more than the records' own fetches. A crash replays at
//! most that much more, which at-least-once with stable alert ids allows; a
//! drain commits the last batch.

use super::changelog::{Changelog, StateMessage};
use super::PipelineError;
use crate::config::PipelineConfig;
use crate::pipeline::PipelineHandle;
use rdkafka::consumer::Consumer;
use rdkafka::producer::{DeliveryFuture, FutureProducer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Longest time acknowledged output waits for its offsets' commit.
const COMMIT_INTERVAL: Duration = Duration::from_millis(100);

/// Batches published but not yet acknowledged, beyond the one being
/// processed: enough to hide a round trip, few enough that a broker outage
/// holds little output in memory.
const IN_FLIGHT: usize = 2;

/// The output topics of a pipeline.
#[derive(Clone, Copy, Debug)]
pub(super) enum Output {
    Alerts,
    Dlq,
    Scores,
    ShadowScores,
}

impl Output {
    /// The topic `config` names for this output.
    pub(super) fn topic(self, config: &PipelineConfig) -> &str {
        match self {
            Output::Alerts => &config.alerts_topic,
            Output::Dlq => &config.dlq_topic,
            Output::Scores => &config.scores_topic,
            Output::ShadowScores => &config.shadow_scores_topic,
        }
    }
}

impl Output {
    /// What the output's messages are, for messages about them.
    pub(super) fn kind(self) -> &'static str {
        match self {
            Output::Alerts => "alert",
            Output::Dlq => "dead letter",
            Output::Scores => "score message",
            Output::ShadowScores => "shadow score message",
        }
    }
}

/// One message on its way: where it goes, the input record it is for, and
/// its acknowledgement.
pub(super) struct Delivery {
    pub(super) output: Output,
    /// (partition, offset) of the input record.
    pub(super) record: (i32, i64),
    pub(super) future: DeliveryFuture,
}

/// A batch whose output is on its way to the broker.
pub(super) struct Sent {
    /// Every delivery of the batch.
    pub(super) deliveries: Vec<Delivery>,
    /// Next offset per partition once the batch is done.
    pub(super) next_offsets: BTreeMap<i32, i64>,
    /// Alerts as published, for the gRPC alert stream.
    pub(super) alert_texts: Vec<String>,
    /// DLQ reason class of each dead-lettered record.
    pub(super) dlq: Vec<&'static str>,
    /// Records in the batch, scored, alerting, and shadow alerts.
    pub(super) records: usize,
    pub(super) scored: usize,
    pub(super) alerts: u64,
    pub(super) shadow_alerts: u64,
    /// Per-key state evictions so far.
    pub(super) evictions: u64,
    /// The fullest per-key table's share of its capacity.
    pub(super) state_fill: f64,
    /// Oldest broker timestamp in the batch, ms.
    pub(super) oldest_ms: Option<i64>,
    /// When the batch was handed to the pipeline, and when publishing ended.
    pub(super) started: Instant,
    pub(super) published_at: Instant,
    /// Parse, score and publish durations.
    pub(super) phases: [Duration; 3],
}

/// The state of the keys changed since the last checkpoint, as changelog
/// messages, as of the end of the batch handed over before it.
pub(super) struct Checkpoint {
    /// The keys changed since the last checkpoint.
    pub(super) changes: crate::features::state::StateChanges,
    /// The layout each table's state is written under.
    pub(super) layout_of: Box<dyn Fn(u16) -> u64 + Send>,
}

/// What the committer is handed, in order.
enum Finishing {
    Batch(Box<Sent>),
    Checkpoint(Checkpoint),
}

/// The task finishing batches of one pipeline.
pub(super) struct Committer {
    tx: mpsc::Sender<Finishing>,
    task: JoinHandle<Result<(), PipelineError>>,
}

/// Where a pipeline's checkpoints go.
pub(super) struct StateOutput {
    pub(super) changelog: Changelog,
    pub(super) producer: FutureProducer,
}

impl Committer {
    /// Starts the task for `handle`'s pipeline (configured as `config`) on
    /// `consumer`.
    /// With a changelog (`state`), offsets are committed only once a
    /// checkpoint covering them is written.
    pub(super) fn spawn(
        handle: PipelineHandle,
        config: &PipelineConfig,
        consumer: Arc<super::fetch::PipelineConsumer>,
        state: Option<StateOutput>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(IN_FLIGHT);
        let task = tokio::spawn(finish_all(handle, config.clone(), consumer, state, rx));
        Self { tx, task }
    }

    /// Hands over a sent batch; waits while [`IN_FLIGHT`] batches are
    /// pending. An error means the task stopped: [`Self::close`] says why.
    pub(super) async fn push(&mut self, sent: Sent) -> Result<(), ()> {
        self.tx
            .send(Finishing::Batch(Box::new(sent)))
            .await
            .map_err(|_| ())
    }

    /// Hands over a checkpoint of the state as of the last batch pushed:
    /// written once every batch before it is acknowledged, then their
    /// offsets are committed.
    pub(super) async fn checkpoint(&mut self, checkpoint: Checkpoint) -> Result<(), ()> {
        let item = Finishing::Checkpoint(checkpoint);
        self.tx.send(item).await.map_err(|_| ())
    }

    /// Waits until every handed-over batch is finished, or the first failure.
    pub(super) async fn close(self) -> Result<(), PipelineError> {
        let Self { tx, task } = self;
        // No more batches: the task ends once it has finished the last one.
        drop(tx);
        task.await.expect("committer does not panic")
    }
}

async fn finish_all(
    handle: PipelineHandle,
    config: PipelineConfig,
    consumer: Arc<super::fetch::PipelineConsumer>,
    state: Option<StateOutput>,
    mut rx: mpsc::Receiver<Finishing>,
) -> Result<(), PipelineError> {
    let mut offsets = Offsets::default();
    // With a changelog, offsets wait for the checkpoint that covers them.
    let timed = state.is_none();
    loop {
        let item = match offsets.due().filter(|_| timed) {
            // Offsets wait for the next batch, or for their time.
            Some(due) => tokio::select! {
                item = rx.recv() => item,
                _ = tokio::time::sleep_until(due.into()) => {
                    offsets.commit(&handle, &consumer);
                    continue;
                }
            },
            None => rx.recv().await,
        };
        let sent = match item {
            Some(Finishing::Batch(sent)) => *sent,
            Some(Finishing::Checkpoint(checkpoint)) => {
                let output = state.as_ref().expect("checkpoints come with a changelog");
                // Partitions given up since: their state was released
                // unwritten, so neither a marker nor a commit may claim it.
                let context = consumer.context();
                offsets.next.retain(|&p, _| context.holds(p));
                let written = write_checkpoint(&handle, output, checkpoint, &offsets).await;
                consumer.context().checkpoint_written();
                written?;
                offsets.commit(&handle, &consumer);
                continue;
            }
            None => {
                // Asynchronous like the others: closing the consumer waits
                // for the replies of commits in flight. With a changelog,
                // the last checkpoint committed what it covers.
                if timed {
                    offsets.commit(&handle, &consumer);
                }
                return Ok(());
            }
        };
        if let Err(e) = finish(&handle, &config, sent, &mut offsets).await {
            // The batches before the failed one were acknowledged.
            if timed {
                offsets.commit(&handle, &consumer);
            }
            return Err(e);
        }
        if timed && offsets.due().is_some_and(|due| due <= Instant::now()) {
            offsets.commit(&handle, &consumer);
        }
    }
}

/// Writes a checkpoint: the changed keys' state, then, once that is
/// acknowledged, a marker per partition with the offsets to commit (the
/// producer may reorder retried messages: a marker must never land
/// before the state it vouches for). Batches before it were acknowledged
/// already.
async fn write_checkpoint(
    handle: &PipelineHandle,
    output: &StateOutput,
    checkpoint: Checkpoint,
    offsets: &Offsets,
) -> Result<(), PipelineError> {
    let changelog = &output.changelog;
    let markers: Vec<StateMessage> = offsets
        .next
        .iter()
        .map(|(&partition, &next)| changelog.marker(partition, next))
        .collect();
    // Made here, not by the pipeline task: scoring goes on meanwhile.
    let made = changelog.clone();
    let states = tokio::task::spawn_blocking(move || {
        made.messages(&checkpoint.changes, checkpoint.layout_of)
    })
    .await
    .expect("making the state messages does not panic");
    let written = states.len() + markers.len();
    for messages in [states, markers] {
        let (producer, topic) = (&output.producer, &changelog.topic);
        super::changelog::produce(producer, topic, &messages)
            .await
            .map_err(|message| PipelineError::Delivery {
                pipeline: handle.name.clone(),
                topic: changelog.topic.clone(),
                message: format!("checkpoint: {message}"),
            })?;
    }
    let m = &handle.metrics;
    m.checkpoints.fetch_add(1, Relaxed);
    m.changelog_messages.fetch_add(written as u64, Relaxed);
    Ok(())
}

/// Offsets of finished batches not committed yet.
#[derive(Default)]
struct Offsets {
    next: BTreeMap<i32, i64>,
    /// When the oldest of them was finished.
    since: Option<Instant>,
}

impl Offsets {
    /// When they are to be committed, if there are any.
    fn due(&self) -> Option<Instant> {
        self.since.map(|at| at + COMMIT_INTERVAL)
    }

    /// Batches come in order, so a later batch's offset replaces an
    /// earlier one's, even a higher one after an offset reset.
    fn add(&mut self, next: &BTreeMap<i32, i64>) {
        self.next.extend(next);
        self.since.get_or_insert_with(Instant::now);
    }

    fn commit(&mut self, handle: &PipelineHandle, consumer: &super::fetch::PipelineConsumer) {
        self.since = None;
        if self.next.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (partition, offset) in std::mem::take(&mut self.next) {
            tpl.add_partition_offset(&handle.input_topic, partition, Offset::Offset(offset))
                .expect("valid offset");
        }
        // Its outcome comes to the consumer's commit callback.
        if let Err(e) = super::fetch::commit_async(consumer, &tpl) {
            // Not fatal: the next commit carries later offsets; a crash before
            // it replays these batches, which at-least-once allows.
            tracing::warn!(pipeline = %handle.name, error = %e, "offset commit failed");
        }
    }
}

/// Waits for every acknowledgement of one batch, adds its offsets to those
/// to commit and counts it.
async fn finish(
    handle: &PipelineHandle,
    config: &PipelineConfig,
    sent: Sent,
    offsets: &mut Offsets,
) -> Result<(), PipelineError> {
    let name = &handle.name;
    for delivery in sent.deliveries {
        let problem = match delivery.future.await {
            Ok(Ok(_)) => continue,
            Ok(Err((e, _))) => e.to_string(),
            Err(_) => "producer dropped the message".into(),
        };
        let (partition, offset) = delivery.record;
        return Err(PipelineError::Delivery {
            pipeline: name.clone(),
            topic: delivery.output.topic(config).to_owned(),
            message: format!(
                "{} for record {}/{partition}@{offset}: {problem}",
                delivery.output.kind(),
                config.input_topic
            ),
        });
    }
    let acked_at = Instant::now();
    offsets.add(&sent.next_offsets);
    for text in sent.alert_texts {
        handle.publish_alert(text);
    }
    let m = &handle.metrics;
    for class in &sent.dlq {
        m.dlq_inc(class);
    }
    m.shadow_alerts.fetch_add(sent.shadow_alerts, Relaxed);
    m.scored.fetch_add(sent.scored as u64, Relaxed);
    m.alerts.fetch_add(sent.alerts, Relaxed);
    m.batches.fetch_add(1, Relaxed);
    m.batch_size.observe(sent.records as f64);
    m.batch_latency
        .observe(sent.started.elapsed().as_secs_f64());
    m.state_evictions.store(sent.evictions, Relaxed);
    m.state_fill.store(sent.state_fill.to_bits(), Relaxed);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    if let Some(oldest) = sent.oldest_ms {
        m.end_to_end_latency
            .observe(((now_ms - oldest).max(0)) as f64 / 1e3);
    }
    // Parse, score, publish, ack: the order of metrics::PHASES.
    let ack = acked_at - sent.published_at;
    for (total, phase) in m.phase_micros.iter().zip(sent.phases.iter().chain([&ack])) {
        total.fetch_add(phase.as_micros() as u64, Relaxed);
    }
    m.last_batch_ms.store(now_ms, Relaxed);
    let [parse_ms, score_ms, publish_ms] = sent.phases.map(|d| d.as_secs_f64() * 1e3);
    tracing::debug!(
        pipeline = %name,
        records = sent.records,
        scored = sent.scored,
        dlq = sent.dlq.len(),
        alerts = sent.alerts,
        parse_ms,
        score_ms,
        publish_ms,
        ack_ms = ack.as_secs_f64() * 1e3,
        "batch done"
    );
    Ok(())
}
