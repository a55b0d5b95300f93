//! Label feedback from a topic: confirmed labels (the original record plus
//! `label` and `label_ts`) for the model's label-risk features.
//!
//! The topic is read from its start at every start-up, so the label risk a
//! restart would otherwise lose is rebuilt from the labels themselves (the
//! topic's retention bounds how far back), then as labels arrive. Nothing
//! is committed. Labels are taken between batches and applied in
//! `label_ts` order from the first record at or after it, as
//! `isoflow score --feedback` applies a file's: a label that arrives after
//! records later than its `label_ts` were scored applies from the next one.

use crate::input::{Columns, Wanted};
use crate::kafka::{Cluster, KafkaError};
use crate::metrics::PipelineMetrics;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message as _;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// Most feedback records taken between two batches, so that a long topic
/// read at start-up delays no batch by more than a moment.
const TAKE_AT_MOST: usize = 65_536;

/// Feedback records refused that are logged one by one; the rest are
/// only counted (`isoflow_feedback_refused_total`).
const LOGGED_REFUSALS: u64 = 20;

/// The feedback topic of one pipeline.
pub(super) struct FeedbackTopic {
    consumer: BaseConsumer,
    topic: String,
    pipeline: String,
}

impl FeedbackTopic {
    /// Reads `topic` from its start, for pipeline `pipeline`.
    pub(super) fn open(cluster: &Cluster, topic: &str, pipeline: &str) -> Result<Self, KafkaError> {
        Ok(Self {
            consumer: crate::kafka::consumer_from_start(cluster, topic, &[])?,
            topic: topic.to_owned(),
            pipeline: pipeline.to_owned(),
        })
    }

    /// Every label on the topic when called, waiting at most `limit` for
    /// them: what a start-up applies before its first record, so that a
    /// restart scores with the label risk the labels give. Returns the
    /// labels and whether the end was reached in time.
    pub(super) fn catch_up(
        &mut self,
        wanted: &Wanted,
        metrics: &PipelineMetrics,
        limit: Duration,
    ) -> Result<(Columns, bool), KafkaError> {
        let deadline = std::time::Instant::now() + limit;
        let mut ends = crate::kafka::TopicEnds::of(&self.consumer, &self.topic)?;
        let mut columns = Columns::new(wanted);
        while !ends.reached() && std::time::Instant::now() < deadline {
            match self.consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(m)) => {
                    self.push(&mut columns, wanted, metrics, &m);
                    ends.passed(m.partition(), m.offset());
                }
                Some(Err(e)) => {
                    tracing::warn!(pipeline = %self.pipeline, topic = %self.topic, error = %e, "feedback consumer error; retrying")
                }
            }
        }
        Ok((columns, ends.reached()))
    }

    /// The feedback records that arrived since last asked, read for
    /// `wanted` (without waiting).
    pub(super) fn take(&mut self, wanted: &Wanted, metrics: &PipelineMetrics) -> Columns {
        let mut columns = Columns::new(wanted);
        for _ in 0..TAKE_AT_MOST {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Ok(m)) => self.push(&mut columns, wanted, metrics, &m),
                Some(Err(e)) => {
                    tracing::warn!(pipeline = %self.pipeline, topic = %self.topic, error = %e, "feedback consumer error; retrying");
                    break;
                }
            }
        }
        columns
    }

    /// Adds one feedback record to `columns`. One that is not a label is
    /// counted in `metrics`, the first few logged with where it is and why.
    /// Labels are not dead-lettered: the topic is read again at every
    /// start, so each restart would copy them again.
    fn push(
        &self,
        columns: &mut Columns,
        wanted: &Wanted,
        metrics: &PipelineMetrics,
        message: &impl rdkafka::message::Message,
    ) {
        let value = message.payload().unwrap_or_default();
        let row = columns.rows + 1;
        let parsed = serde_json::from_slice::<serde_json::Value>(value)
            .map_err(|e| e.to_string())
            .and_then(|v| {
                columns
                    .push_json(wanted, &v, row, None)
                    .map_err(|e| e.to_string())
            });
        match parsed {
            Ok(()) => {
                metrics.feedback_labels.fetch_add(1, Relaxed);
            }
            Err(reason) => {
                let refused = metrics.feedback_refused.fetch_add(1, Relaxed) + 1;
                if refused <= LOGGED_REFUSALS {
                    tracing::warn!(
                        pipeline = %self.pipeline,
                        topic = %self.topic,
                        partition = message.partition(),
                        offset = message.offset(),
                        reason,
                        "feedback record is not a label; left out"
                    );
                }
            }
        }
    }
}
