//! Reading a topic whole, from its first record, in no consumer group:
//! for the model registry's replay, label feedback and tools.

use super::record::Record;
use super::{check_topics, Cluster, KafkaError};
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::BTreeMap;
use std::time::Duration;

/// Where each non-empty partition of a topic ended when asked: a reader
/// from the start has read what the topic held then once every partition
/// is [`Self::passed`] (the model registry's replay, label feedback).
#[derive(Debug)]
pub struct TopicEnds(BTreeMap<i32, i64>);

impl TopicEnds {
    /// The ends of `topic`'s partitions as `consumer` sees them now. A
    /// partition whose end cannot be read counts as empty.
    pub fn of(consumer: &BaseConsumer, topic: &str) -> Result<Self, KafkaError> {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let ends = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .filter_map(|p| {
                consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .ok()
                    .filter(|(low, high)| high > low)
                    .map(|(_, high)| (p, high))
            })
            .collect();
        Ok(Self(ends))
    }

    /// Notes that the record at `offset` of `partition` was read.
    pub fn passed(&mut self, partition: i32, offset: i64) {
        if self.0.get(&partition).is_some_and(|&end| offset + 1 >= end) {
            self.0.remove(&partition);
        }
    }

    /// Whether every partition was read to its end.
    pub fn reached(&self) -> bool {
        self.0.is_empty()
    }
}

/// A consumer of every partition of `topic` from its first record, in no
/// group and committing nothing: no group join, no rebalance wait. For
/// reading a topic whole: the model registry, label feedback, tools.
/// `settings` adjust the client's configuration.
pub fn consumer_from_start(
    cluster: &Cluster,
    topic: &str,
    settings: &[(&str, &str)],
) -> Result<BaseConsumer, KafkaError> {
    static READERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let reader = READERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut c = cluster.client_config();
    // librdkafka wants a group id even for a consumer that never joins.
    c.set(
        "group.id",
        format!("isoflow-reader-{}-{reader}", std::process::id()),
    )
    .set("enable.auto.commit", "false");
    for (key, value) in settings {
        c.set(*key, *value);
    }
    let consumer: BaseConsumer = c.create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// Reads a topic from the beginning until `max` messages or until no message
/// arrives for `idle` (end of topic), without committing anything.
pub fn read_topic(
    brokers: &str,
    topic: &str,
    max: usize,
    idle: Duration,
) -> Result<Vec<Record>, KafkaError> {
    check_topics(brokers, &[topic], Duration::from_secs(10))?;
    let consumer = consumer_from_start(&Cluster::plain(brokers), topic, &[])?;
    let mut out = Vec::new();
    let mut last = std::time::Instant::now();
    while out.len() < max && last.elapsed() < idle {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                last = std::time::Instant::now();
                out.push(Record::from_message(&m));
            }
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    Ok(out)
}
