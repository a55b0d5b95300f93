//! Durable per-key state: each pipeline's changelog topic,
//! `<group>.<pipeline>.state`, compacted, with the input's partition count.
//!
//! At every checkpoint the pipeline writes the state of each key changed
//! since the last one (a key evicted meanwhile as a tombstone), then, per
//! input partition that advanced, a marker with the next input offset the
//! state covers; only then are those offsets committed. A partition
//! assigned to the pipeline (start-up, rebalance, scale-out) is read back
//! from its changelog partition before any of its records is scored, and
//! its records below the marker's offset are passed over: their output was
//! acknowledged before the checkpoint was written, and the state already
//! holds them (Flink keeps source offsets in its checkpoints for the same
//! reason).
//!
//! Messages, keyed so that compaction keeps each key's latest state:
//! - `k` + input partition (u32, big-endian) + table (u16) + key
//!   fingerprint (10 bytes): the layout of the state (u64, little-endian),
//!   then the state; no value for an evicted key;
//! - `o` + input partition: the next input offset the state covers (i64,
//!   little-endian);
//! - `seed` + 8 bytes naming its writer, in partition 0: the key-hashing
//!   seeds. The first such message holds the seeds every process of the
//!   pipeline uses, so that fingerprints mean the same key everywhere (the
//!   seeds stay as secret as the topic). Each writer's key is its own, so
//!   compaction never replaces the first seeds by a later writer's.

use crate::detector::Detector;
use crate::features::slots::{Fingerprint, Owner};
use crate::features::state::{Restored, StateChanges, SMOOTHER_TABLE};
use crate::input::key::{self, KeySeeds};
use crate::kafka::{Cluster, KafkaError};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError as ClientError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseProducer, BaseRecord, FutureProducer, FutureRecord, Producer};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How the key of a seed message starts.
const SEED_KEY: &[u8] = b"seed";
/// Bytes of a seed message's key: [`SEED_KEY`] and its writer.
const SEED_KEY_BYTES: usize = 4 + 8;
/// Bytes of a state message's key.
const STATE_KEY_BYTES: usize = 1 + 4 + 2 + 10;
/// Bytes of a fingerprint in a key.
const FINGERPRINT_BYTES: usize = 10;

/// Longest a restore reads one partition before it goes on with what it
/// has (and says so).
const RESTORE_LIMIT: Duration = Duration::from_secs(60);
/// A restore has read a partition once it reached the end the broker
/// reported and then nothing came for this long (tansu's memory engine
/// reports ends short of what it holds).
const RESTORE_QUIET: Duration = Duration::from_millis(300);

/// The changelog topic of one pipeline.
#[derive(Clone, Debug)]
pub(crate) struct Changelog {
    /// Topic name.
    pub(crate) topic: String,
    /// Its partitions; input partition `p` writes to `p % partitions`.
    partitions: i32,
    cluster: Cluster,
    pipeline: String,
}

/// One changelog message on its way.
pub(crate) struct StateMessage {
    /// Changelog partition.
    pub(crate) partition: i32,
    pub(crate) key: Vec<u8>,
    /// `None`: a tombstone.
    pub(crate) value: Option<Vec<u8>>,
}

/// Per-key state to change before a batch's records are scored.
#[derive(Debug, Default)]
pub(crate) struct StateMoves {
    /// Partitions given up: their state is released.
    pub(crate) released: Vec<i32>,
    /// Partitions gained, with their state read back (after `released`:
    /// a partition may be in both).
    pub(crate) restored: Vec<RestoredPartition>,
    /// Releases taken from the consumer these moves hold
    /// (`Forwarding::releases_applied` once applied).
    pub(crate) releases: usize,
}

impl StateMoves {
    /// Adds `later` moves after these.
    pub(crate) fn extend(&mut self, later: StateMoves) {
        // Restored, then given up again: nothing of it is to be restored.
        self.restored
            .retain(|r| !later.released.contains(&r.partition));
        self.released.extend(later.released);
        self.releases += later.releases;
        self.restored.extend(later.restored);
    }
}

/// A partition's state as read back.
#[derive(Debug, Default)]
pub(crate) struct RestoredPartition {
    /// Input partition.
    pub(crate) partition: i32,
    /// The next input offset the state covers, if a checkpoint was written.
    pub(crate) covered: Option<i64>,
    /// Each key's latest state: (table, fingerprint) → where its layout
    /// and state lie in `values`.
    pub(crate) keys: HashMap<(u16, Fingerprint), std::ops::Range<usize>>,
    /// The values read, back to back: one buffer, not an allocation per
    /// key (a restore of millions of keys would double its memory).
    /// Values replaced or removed stay, unreferenced, until the restore ends.
    values: Vec<u8>,
    /// Bytes read.
    pub(crate) bytes: usize,
}

impl RestoredPartition {
    /// The keys whose state has the layout `layout_of(table)` gives, as a
    /// detector takes them back.
    pub(crate) fn records(&self, layout_of: impl Fn(u16) -> u64) -> Vec<Restored<'_>> {
        let owner = crate::features::slots::owner_of(self.partition);
        self.keys
            .iter()
            .filter_map(|(&(table, key), at)| {
                let value = &self.values[at.clone()];
                let layout = u64::from_le_bytes(value.get(..8)?.try_into().ok()?);
                (layout == layout_of(table)).then(|| Restored {
                    owner,
                    table,
                    key,
                    value: &value[8..],
                })
            })
            .collect()
    }
}

impl Changelog {
    /// The changelog of pipeline `pipeline` in consumer group `group`,
    /// created (compacted, partitioned like `input`) when missing; pins
    /// this process's key-hashing seeds to the changelog's. `None`, with a
    /// warning, when this process already hashes keys with other seeds
    /// (another pipeline's changelog was written by other processes).
    pub(crate) async fn open(
        cluster: &Cluster,
        group: &str,
        pipeline: &str,
        input: &str,
    ) -> Result<Option<Self>, KafkaError> {
        let topic = format!("{group}.{pipeline}.state");
        let (c, t) = (cluster.clone(), input.to_owned());
        let partitions = tokio::task::spawn_blocking(move || partition_count(&c, &t))
            .await
            .expect("reading metadata does not panic")?;
        // Made beforehand where the broker takes no admin requests
        // (librdkafka's mock cluster of `isoflow demo`).
        let exists = crate::kafka::check_topics_on(cluster, &[&topic], Duration::from_secs(10));
        if exists.is_err() {
            crate::kafka::create_compacted_topic(cluster, &topic, partitions.max(1)).await?;
        }
        let (c, t) = (cluster.clone(), topic.clone());
        let (seeds, partitions) = tokio::task::spawn_blocking(move || {
            Ok::<_, KafkaError>((agreed_seeds(&c, &t)?, partition_count(&c, &t)?))
        })
        .await
        .expect("reading the seeds does not panic")?;
        if key::pin_key_seeds(seeds).is_err() {
            tracing::warn!(pipeline, topic, "this process already hashes keys with other seeds than the changelog's (another pipeline's changelog has its own): this pipeline's per-key state is not kept");
            return Ok(None);
        }
        Ok(Some(Self {
            topic,
            partitions: partitions.max(1),
            cluster: cluster.clone(),
            pipeline: pipeline.to_owned(),
        }))
    }

    /// The changelog partition of input partition `partition`.
    fn partition_of(&self, partition: i32) -> i32 {
        partition.rem_euclid(self.partitions)
    }

    /// The messages of `changes`, each value headed by its table's layout.
    pub(crate) fn messages(
        &self,
        changes: &StateChanges,
        layout_of: impl Fn(u16) -> u64,
    ) -> Vec<StateMessage> {
        changes
            .records
            .iter()
            .map(|r| {
                let partition = i32::from(r.owner);
                let value = changes.value(r).map(|state| {
                    let mut v = Vec::with_capacity(8 + state.len());
                    v.extend_from_slice(&layout_of(r.table).to_le_bytes());
                    v.extend_from_slice(state);
                    v
                });
                StateMessage {
                    partition: self.partition_of(partition),
                    key: state_key(r.owner, r.table, r.key),
                    value,
                }
            })
            .collect()
    }

    /// The marker of input partition `partition`: its state covers the
    /// records before `next`.
    pub(crate) fn marker(&self, partition: i32, next: i64) -> StateMessage {
        StateMessage {
            partition: self.partition_of(partition),
            key: marker_key(partition),
            value: Some(next.to_le_bytes().to_vec()),
        }
    }

    /// Reads the state of input `partitions` back (blocking).
    pub(crate) fn restore(&self, partitions: &[i32]) -> Result<Vec<RestoredPartition>, KafkaError> {
        let mut by_changelog: HashMap<i32, Vec<i32>> = HashMap::new();
        for &p in partitions {
            by_changelog
                .entry(self.partition_of(p))
                .or_default()
                .push(p);
        }
        let mut out = Vec::new();
        for (changelog_partition, inputs) in by_changelog {
            let mut restored: HashMap<i32, RestoredPartition> = inputs
                .iter()
                .map(|&p| {
                    (
                        p,
                        RestoredPartition {
                            partition: p,
                            ..Default::default()
                        },
                    )
                })
                .collect();
            let complete = read_partition(
                &self.cluster,
                &self.topic,
                changelog_partition,
                |key, value| {
                    apply(&mut restored, key, value);
                    true
                },
            )?;
            if !complete {
                tracing::warn!(pipeline = %self.pipeline, topic = %self.topic, partition = changelog_partition, limit_s = RESTORE_LIMIT.as_secs(), "changelog partition not read to its end in time; restoring what was read");
            }
            out.extend(restored.into_values());
        }
        out.sort_by_key(|r| r.partition);
        Ok(out)
    }
}

/// The layout of each table of `detector`'s state
/// ([`Detector::state_layout`], computed once).
pub(crate) fn layouts(detector: &Detector) -> impl Fn(u16) -> u64 {
    let features = detector.state_layout(0);
    let smoother = detector.state_layout(SMOOTHER_TABLE);
    move |table| match table {
        SMOOTHER_TABLE => smoother,
        _ => features,
    }
}

/// Produces `messages` to `topic` and waits for every acknowledgement; the
/// first failure's text. A full local queue is waited out.
pub(crate) async fn produce(
    producer: &FutureProducer,
    topic: &str,
    messages: &[StateMessage],
) -> Result<(), String> {
    let mut futures = Vec::with_capacity(messages.len());
    for m in messages {
        let mut record = FutureRecord::to(topic)
            .partition(m.partition)
            .key(&m.key[..]);
        if let Some(value) = &m.value {
            record = record.payload(&value[..]);
        }
        loop {
            match producer.send_result(record) {
                Ok(delivery) => break futures.push(delivery),
                Err((ClientError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    record = back;
                }
                Err((e, _)) => return Err(e.to_string()),
            }
        }
    }
    for future in futures {
        match future.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(e.to_string()),
            Err(_) => return Err("producer dropped the message".into()),
        }
    }
    Ok(())
}

/// Applies one changelog message to the partitions being restored.
fn apply(restored: &mut HashMap<i32, RestoredPartition>, key: &[u8], value: Option<&[u8]>) {
    let Some((&kind, rest)) = key.split_first() else {
        return;
    };
    let Some(partition) = rest
        .get(..4)
        .map(|p| i32::from_be_bytes(p.try_into().expect("4 bytes")))
    else {
        return;
    };
    let Some(r) = restored.get_mut(&partition) else {
        return;
    };
    r.bytes += key.len() + value.map_or(0, <[u8]>::len);
    match (kind, key.len(), value) {
        (b'k', STATE_KEY_BYTES, value) => {
            let table = u16::from_be_bytes([key[5], key[6]]);
            let mut fingerprint = [0u8; 16];
            fingerprint[16 - FINGERPRINT_BYTES..].copy_from_slice(&key[7..]);
            let at = (table, u128::from_be_bytes(fingerprint));
            match value {
                Some(v) => {
                    let start = r.values.len();
                    r.values.extend_from_slice(v);
                    r.keys.insert(at, start..r.values.len())
                }
                None => r.keys.remove(&at),
            };
        }
        (b'o', 5, Some(v)) => {
            if let Ok(next) = <[u8; 8]>::try_from(v) {
                r.covered = Some(i64::from_le_bytes(next));
            }
        }
        _ => {}
    }
}

/// The key of a state message.
fn state_key(owner: Owner, table: u16, key: Fingerprint) -> Vec<u8> {
    let mut k = Vec::with_capacity(STATE_KEY_BYTES);
    k.push(b'k');
    k.extend_from_slice(&i32::from(owner).to_be_bytes());
    k.extend_from_slice(&table.to_be_bytes());
    k.extend_from_slice(&key.to_be_bytes()[16 - FINGERPRINT_BYTES..]);
    k
}

/// The key of a partition's marker.
fn marker_key(partition: i32) -> Vec<u8> {
    let mut k = vec![b'o'];
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// Partitions of `topic`.
fn partition_count(cluster: &Cluster, topic: &str) -> Result<i32, KafkaError> {
    let client: BaseProducer = cluster.client_config().create()?;
    let metadata = client
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))?;
    Ok(metadata
        .topics()
        .iter()
        .map(|t| t.partitions().len() as i32)
        .sum())
}

/// The seeds of the changelog: its first seed message, written now (this
/// process's own) if there is none. Two processes starting on an empty
/// changelog both write theirs; both then take the first one.
fn agreed_seeds(cluster: &Cluster, topic: &str) -> Result<KeySeeds, KafkaError> {
    if let Some(seeds) = first_seeds(cluster, topic)? {
        return Ok(seeds);
    }
    let producer: BaseProducer = cluster.client_config().create()?;
    let proposed = key::proposed_key_seeds();
    let value: Vec<u8> = proposed.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut writer = SEED_KEY.to_vec();
    // Random per writer, so two writers' keys differ.
    writer.extend_from_slice(&key::random_key_seeds()[0].to_be_bytes());
    producer
        .send(
            BaseRecord::to(topic)
                .partition(0)
                .key(&writer)
                .payload(&value),
        )
        .map_err(|(e, _)| KafkaError::from(e))?;
    producer.flush(Duration::from_secs(10))?;
    first_seeds(cluster, topic)?.ok_or_else(|| {
        KafkaError::Client(rdkafka::error::KafkaError::MessageProduction(
            rdkafka::types::RDKafkaErrorCode::MessageTimedOut,
        ))
    })
}

/// The seeds in the first seed message of partition 0, if any. Every
/// writer agrees on the seeds before it writes state, so that message
/// comes first, unless the topic was emptied or made again while a
/// process went on writing: the state before it was hashed with other
/// seeds, is not found, and ages out of the table.
fn first_seeds(cluster: &Cluster, topic: &str) -> Result<Option<KeySeeds>, KafkaError> {
    let mut found = None;
    let mut before = 0usize;
    read_partition(cluster, topic, 0, |key, value| {
        if !is_seed_key(key) {
            before += 1;
            return true;
        }
        found = value.and_then(|v| {
            let words: Vec<u64> = v
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect();
            <[u64; 4]>::try_from(words).ok()
        });
        found.is_none()
    })?;
    if found.is_some() && before > 0 {
        tracing::warn!(
            topic,
            messages = before,
            "the changelog's first messages came before its seeds (the topic was emptied or made again under a running process): their state is not restored"
        );
    }
    Ok(found)
}

/// Whether `key` is a seed message's.
/// of it).
fn is_seed_key(key: &[u8]) -> bool {
    key.len() == SEED_KEY_BYTES && key.starts_with(SEED_KEY)
}

/// Reads `partition` of `topic` from its start, handing each message's key
/// and value to `each`, which returns whether to go on. Returns whether
/// the end was reached within [`RESTORE_LIMIT`].
fn read_partition(
    cluster: &Cluster,
    topic: &str,
    partition: i32,
    mut each: impl FnMut(&[u8], Option<&[u8]>) -> bool,
) -> Result<bool, KafkaError> {
    let mut c = cluster.client_config();
    c.set(
        "group.id",
        format!("isoflow-restore-{}", std::process::id()),
    )
    .set("enable.auto.commit", "false")
    .set("fetch.wait.max.ms", "10")
    // A restore reads one partition flat out: large fetches, few requests.
    .set("max.partition.fetch.bytes", "16777216")
    .set("fetch.max.bytes", "67108864")
    .set("queued.max.messages.kbytes", "65536");
    let consumer: BaseConsumer = c.create()?;
    let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, rdkafka::Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let started = Instant::now();
    // An end reported short is made up for by the quiet wait.
    let mut reached = high <= low;
    let mut last = Instant::now();
    while started.elapsed() < RESTORE_LIMIT {
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                last = Instant::now();
                reached |= m.offset() + 1 >= high;
                if !each(m.key().unwrap_or_default(), m.payload()) {
                    return Ok(true);
                }
            }
            Some(Err(e)) => return Err(e.into()),
            None if reached && last.elapsed() >= RESTORE_QUIET => return Ok(true),
            None => {}
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A partition's messages, read back: each key's last state, evicted
    /// keys gone, the marker's offset, other partitions' keys ignored.
    #[test]
    fn a_partitions_messages_read_back_as_its_latest_state() {
        let changelog = Changelog {
            topic: "g.p.state".into(),
            partitions: 2,
            cluster: Cluster::default(),
            pipeline: "p".into(),
        };
        let mut changes = StateChanges::default();
        let mut add = |owner: Owner, table: u16, key: u128, state: Option<&[u8]>| {
            let value = state.map(|s| {
                let start = changes.bytes.len();
                changes.bytes.extend_from_slice(s);
                start..changes.bytes.len()
            });
            changes.records.push(crate::features::state::StateRecord {
                owner,
                table,
                key,
                value,
            });
        };
        let big = (1u128 << 80) - 3;
        add(3, 0, big, Some(b"first"));
        add(3, 65535, 7, Some(b"smooth"));
        add(3, 2, 9, Some(b"gone soon"));
        add(1, 0, big, Some(b"other partition"));
        add(3, 0, big, Some(b"latest"));
        add(3, 2, 9, None);
        let messages = changelog.messages(&changes, |t| u64::from(t) + 100);
        assert!(messages.iter().all(|m| m.partition == 1));
        let mut restored: HashMap<i32, RestoredPartition> = [(
            3,
            RestoredPartition {
                partition: 3,
                ..Default::default()
            },
        )]
        .into();
        for m in messages.iter().chain([&changelog.marker(3, 42)]) {
            apply(&mut restored, &m.key, m.value.as_deref());
        }
        let r = &restored[&3];
        assert_eq!(r.covered, Some(42));
        let records = r.records(|t| u64::from(t) + 100);
        let mut got: Vec<(u16, u128, &[u8])> =
            records.iter().map(|r| (r.table, r.key, r.value)).collect();
        got.sort();
        assert_eq!(got, [(0, big, &b"latest"[..]), (65535, 7, &b"smooth"[..])]);
        assert!(records.iter().all(|r| r.owner == 3));
        // State of another layout (another feature spec) is not restored.
        assert!(r.records(|_| 0).is_empty());
    }
}
