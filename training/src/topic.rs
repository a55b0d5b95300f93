//! `fit --brokers B --topic T`: a topic's history copied to a JSON-lines file,
//! which training then reads like any other input.
//!
//! The copy reads every partition from its first record at least up to the
//! end it had when the copy started (its high watermark), then on until a
//! second passes without a record: some brokers under-report the watermark
//! (tansu's memory engine), and a quiet spell alone would stop a copy short
//! on a slow broker. It commits nothing.

use crate::TrainError;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long the broker may take to answer a metadata or watermark request.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the copy may go without a record before it gives up on the rest.
const IDLE_LIMIT: Duration = Duration::from_secs(30);
/// How long a copy past every watermark waits for records beyond them.
const PAST_END_QUIET: Duration = Duration::from_secs(1);

/// Copies up to `max` records of `topic` (from the beginning of each
/// partition) to `path` as JSON lines, one message value per line; returns how
/// many were copied.
pub fn copy_topic(
    brokers: &str,
    topic: &str,
    max: usize,
    path: &Path,
) -> Result<usize, TrainError> {
    let kafka = |e: rdkafka::error::KafkaError| {
        TrainError::Data(format!("reading topic '{topic}' on {brokers}: {e}"))
    };
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        // librdkafka wants a group id even for a consumer that never joins.
        .set("group.id", format!("isoflow-train-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .create()
        .map_err(kafka)?;
    let metadata = consumer
        .fetch_metadata(Some(topic), BROKER_TIMEOUT)
        .map_err(kafka)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(TrainError::Data(format!(
            "topic '{topic}' does not exist on {brokers}"
        )));
    }
    // Partitions still to read, each with the offset that ends it.
    let mut ends = std::collections::HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for &p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, BROKER_TIMEOUT)
            .map_err(kafka)?;
        if high > low {
            ends.insert(p, high);
        }
        // Every partition, even one that reads empty: a watermark may be low.
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .map_err(kafka)?;
    }
    let io = |e: std::io::Error| TrainError::Data(format!("cannot write {}: {e}", path.display()));
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    let mut copied = 0;
    // One line's bytes, reused from record to record.
    let mut line = Vec::new();
    consumer.assign(&assignment).map_err(kafka)?;
    let mut last = Instant::now();
    let mut reading = true;
    while copied < max && reading {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            if ends.is_empty() {
                reading = last.elapsed() < PAST_END_QUIET;
                continue;
            }
            // A partition may end in records never delivered (transaction
            // markers): its position, not its last message, says it is done.
            let position = consumer.position().map_err(kafka)?;
            ends.retain(|&p, &mut end| {
                !matches!(position.find_partition(topic, p).map(|e| e.offset()),
                          Some(Offset::Offset(at)) if at >= end)
            });
            if !ends.is_empty() && last.elapsed() > IDLE_LIMIT {
                return Err(TrainError::Data(format!(
                    "topic '{topic}' on {brokers}: no record for {}s before its end",
                    IDLE_LIMIT.as_secs()
                )));
            }
            continue;
        };
        let message = message.map_err(kafka)?;
        last = Instant::now();
        if ends
            .get(&message.partition())
            .is_some_and(|&end| message.offset() >= end - 1)
        {
            ends.remove(&message.partition());
        }
        // A value with a raw newline is malformed JSON anyway; keeping it on
        // one line lets the reader set it aside like the service would.
        line.clear();
        line.extend(message.payload().unwrap_or_default().iter().map(|&b| {
            if b == b'\n' {
                b' '
            } else {
                b
            }
        }));
        line.push(b'\n');
        out.write_all(&line).map_err(io)?;
        copied += 1;
    }
    out.flush().map_err(io)?;
    Ok(copied)
}
