//! Kafka clients (rdkafka): consumer and producer settings that give
//! at-least-once delivery, start-up checks with clear errors, and small
//! helpers to create and read topics.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, Producer as _};
use std::collections::BTreeMap;
use std::time::Duration;

/// Why talking to Kafka failed.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// No broker answered.
    #[error(
        "cannot reach Kafka at {brokers}: {message}. Is the broker running and the address right?"
    )]
    Unreachable {
        /// Bootstrap servers tried.
        brokers: String,
        /// Client message.
        message: String,
    },
    /// Topics the configuration needs do not exist.
    #[error("topic(s) missing on {brokers}: {topics}. Create them first (e.g. `tansu topic create --broker tcp://HOST:PORT --partitions 4 NAME`)")]
    MissingTopics {
        /// Bootstrap servers.
        brokers: String,
        /// Missing topic names.
        topics: String,
    },
    /// Any other client error.
    #[error("kafka: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
}

/// An in-process Kafka-protocol cluster of one broker (librdkafka's mock
/// cluster), for the demo. Unlike a broker's default, its consumer groups
/// start at once: the first rebalance of a group does not wait 3 s for more
/// members to join.
pub struct EmbeddedCluster {
    client: rdkafka::producer::BaseProducer,
}

impl EmbeddedCluster {
    /// Starts the cluster; it stops when this value is dropped.
    pub fn start() -> Result<Self, KafkaError> {
        let client: rdkafka::producer::BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", "1")
            .set("log_level", "3")
            .create()?;
        // SAFETY: the mock cluster belongs to `client`, which is alive here;
        // a null handle (no mock cluster) is checked before use.
        unsafe {
            let cluster =
                rdkafka::bindings::rd_kafka_handle_mock_cluster(client.client().native_ptr());
            if !cluster.is_null() {
                rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 0);
            }
        }
        Ok(Self { client })
    }

    fn cluster(
        &self,
    ) -> rdkafka::mocking::MockCluster<'_, rdkafka::producer::DefaultProducerContext> {
        self.client
            .client()
            .mock_cluster()
            .expect("a client made with test.mock.num.brokers has a mock cluster")
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), KafkaError> {
        Ok(self.cluster().create_topic(topic, partitions, 1)?)
    }

    /// The address clients connect to.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster().bootstrap_servers()
    }
}

/// How to reach a cluster: the bootstrap brokers and the extra librdkafka
/// properties (`[kafka.properties]`: SASL, TLS, client ids) that every
/// client of the service takes, probes, admin and registry clients included.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cluster {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Extra client properties, passed through as is.
    pub properties: BTreeMap<String, String>,
}

impl Cluster {
    /// A cluster reached with no extra properties.
    pub fn plain(brokers: &str) -> Self {
        Self {
            brokers: brokers.to_owned(),
            properties: BTreeMap::new(),
        }
    }

    /// [`client_config`] for this cluster.
    pub fn client_config(&self) -> ClientConfig {
        client_config(&self.brokers, &self.properties)
    }
}

/// Shared client settings.
pub fn client_config(brokers: &str, extra: &BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    // Our own messages ("Connection refused" on every retry) would flood the
    // log; failures surface as errors from the calls instead.
    c.set("log_level", "3");
    // KIP-714 client metrics cost a histogram entry per poll; isoflow
    // reports its own on /metrics. `[kafka.properties]` can turn them on.
    c.set("enable.metrics.push", "false");
    for (k, v) in extra {
        c.set(k, v);
    }
    c
}

/// A consumer for at-least-once processing: offsets are stored only by the
/// pipeline once a batch's alerts and DLQ messages are acknowledged, then
/// committed. Starts from the earliest offset when the group has none.
pub fn consumer<C: rdkafka::config::FromClientConfig>(
    brokers: &str,
    group: &str,
    session_timeout_ms: u32,
    extra: &BTreeMap<String, String>,
) -> Result<C, KafkaError> {
    Ok(consumer_config(brokers, group, session_timeout_ms, extra).create()?)
}

/// [`consumer`] with a client context of its own.
pub fn consumer_with_context<X: rdkafka::consumer::ConsumerContext>(
    brokers: &str,
    group: &str,
    session_timeout_ms: u32,
    extra: &BTreeMap<String, String>,
    context: X,
) -> Result<BaseConsumer<X>, KafkaError> {
    Ok(consumer_config(brokers, group, session_timeout_ms, extra).create_with_context(context)?)
}

fn consumer_config(
    brokers: &str,
    group: &str,
    session_timeout_ms: u32,
    extra: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut c = client_config(brokers, extra);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Some brokers (tansu among them) hold a fetch for its whole wait
        // even when records arrive; librdkafka's 500 ms default would then
        // sit in every record's latency.
        .set("fetch.wait.max.ms", "5")
        // With the prefetch queue full, librdkafka postpones the next fetch
        // by this much (1 s by default) and the pipeline then runs dry
        // after it drains the queue.
        .set("fetch.queue.backoff.ms", "10")
        .set("session.timeout.ms", session_timeout_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            (session_timeout_ms / 3).max(100).to_string(),
        );
    for (k, v) in extra {
        c.set(k, v);
    }
    c
}

/// A producer that waits for all in-sync replicas and keeps retrying
/// transient failures; delivery futures resolve when the broker acknowledges.
pub fn producer(
    brokers: &str,
    extra: &BTreeMap<String, String>,
) -> Result<FutureProducer, KafkaError> {
    let mut c = client_config(brokers, extra);
    c.set("acks", "all")
        // The pipeline queues a batch's messages in one burst, which leaves
        // as one request, and awaits their acknowledgements before its
        // commit: lingering would only add latency.
        .set("linger.ms", "1")
        .set("message.timeout.ms", "60000")
        .set("queue.buffering.max.messages", "200000");
    for (k, v) in extra {
        c.set(k, v);
    }
    Ok(c.create()?)
}

/// Checks that the brokers answer and that `topics` exist.
pub fn check_topics(brokers: &str, topics: &[&str], timeout: Duration) -> Result<(), KafkaError> {
    check_topics_on(&Cluster::plain(brokers), topics, timeout)
}

/// [`check_topics`] on a cluster with its client properties.
pub fn check_topics_on(
    cluster: &Cluster,
    topics: &[&str],
    timeout: Duration,
) -> Result<(), KafkaError> {
    let brokers = cluster.brokers.as_str();
    let probe: BaseConsumer = cluster.client_config().create()?;
    let metadata = probe
        .fetch_metadata(None, timeout)
        .map_err(|e| KafkaError::Unreachable {
            brokers: brokers.into(),
            message: e.to_string(),
        })?;
    let present: std::collections::HashSet<&str> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.name())
        .collect();
    let mut missing: Vec<&str> = topics
        .iter()
        .copied()
        .filter(|t| !present.contains(t))
        .collect();
    missing.sort();
    missing.dedup();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(KafkaError::MissingTopics {
            brokers: brokers.into(),
            topics: missing.join(", "),
        })
    }
}

/// Creates the topics that do not exist yet (for `gen`, the demo and tests).
pub async fn create_topics(
    brokers: &str,
    topics: &[&str],
    partitions: i32,
) -> Result<(), KafkaError> {
    create_topics_on(&Cluster::plain(brokers), topics, partitions).await
}

/// [`create_topics`] on a cluster with its client properties.
pub async fn create_topics_on(
    cluster: &Cluster,
    topics: &[&str],
    partitions: i32,
) -> Result<(), KafkaError> {
    let missing: Vec<String> = match check_topics_on(cluster, topics, Duration::from_secs(10)) {
        Ok(()) => return Ok(()),
        Err(KafkaError::MissingTopics {
            topics: missing, ..
        }) => missing.split(", ").map(str::to_owned).collect(),
        Err(e) => return Err(e),
    };
    let admin: AdminClient<DefaultClientContext> = cluster.client_config().create()?;
    let new: Vec<NewTopic> = missing
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &options).await? {
        if let Err((_, code)) = result {
            if code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                return Err(KafkaError::Client(rdkafka::error::KafkaError::AdminOp(
                    code,
                )));
            }
        }
    }
    Ok(())
}

/// One consumed message, owned.
#[derive(Clone, Debug)]
pub struct Record {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Message key.
    pub key: Option<Vec<u8>>,
    /// Message value.
    pub value: Option<Vec<u8>>,
    /// Headers as (name, value).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Broker/producer timestamp, milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}

/// A message's headers as (name, value); none costs no allocation.
fn copy_headers(m: &impl Message) -> Vec<(String, Vec<u8>)> {
    use rdkafka::message::Headers;
    m.headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default()
}

impl Record {
    /// Copies a consumed message.
    pub fn from_message(m: &impl Message) -> Record {
        let headers = copy_headers(m);
        Record {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: m.timestamp().to_millis(),
        }
    }
}

/// Consumed records in one buffer: the keys, values and headers of a whole
/// batch in one allocation, instead of several allocations (and frees) per
/// record.
#[derive(Debug, Default)]
pub struct RecordBatch {
    bytes: Vec<u8>,
    meta: Vec<Meta>,
    headers: Vec<HeaderAt>,
}

#[derive(Debug)]
struct Meta {
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    key: Option<std::ops::Range<usize>>,
    value: Option<std::ops::Range<usize>>,
    /// This record's entries of `RecordBatch::headers`.
    headers: std::ops::Range<usize>,
}

/// One header of one record: name and value, as ranges of the batch's bytes.
#[derive(Clone, Debug)]
struct HeaderAt {
    name: std::ops::Range<usize>,
    value: Option<std::ops::Range<usize>>,
}

/// One record of a [`RecordBatch`].
#[derive(Clone, Copy, Debug)]
pub struct RecordRef<'a> {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Message key.
    pub key: Option<&'a [u8]>,
    /// Message value.
    pub value: Option<&'a [u8]>,
    /// Message headers, in order.
    pub headers: RecordHeaders<'a>,
    /// Broker/producer timestamp, milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}

/// The headers of one record of a [`RecordBatch`].
#[derive(Clone, Copy, Debug)]
pub struct RecordHeaders<'a> {
    bytes: &'a [u8],
    headers: &'a [HeaderAt],
}

impl<'a> RecordHeaders<'a> {
    /// Headers held.
    pub fn len(&self) -> usize {
        self.headers.len()
    }

    /// True when the record has no header.
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
    }

    /// Each header as (name, value); a header without a value gives `None`.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&'a str, Option<&'a [u8]>)> + 'a {
        let bytes = self.bytes;
        self.headers.iter().map(move |h| {
            // Names were copied from `&str`s, whole.
            let name = std::str::from_utf8(&bytes[h.name.clone()]).unwrap_or_default();
            (name, h.value.clone().map(|v| &bytes[v]))
        })
    }
}

impl RecordBatch {
    /// An empty batch with room for `records` records of `bytes` bytes of
    /// keys and values in all.
    pub fn with_capacity(records: usize, bytes: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bytes),
            meta: Vec::with_capacity(records),
            headers: Vec::new(),
        }
    }

    /// Empties the batch, keeping its buffers for the next one.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.meta.clear();
        self.headers.clear();
    }

    /// Bytes of keys, values and headers held.
    pub fn bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Copies a consumed message in, headers included.
    pub fn push(&mut self, m: &impl Message) {
        self.push_bare(m);
        self.keep_headers(m);
    }

    /// Copies a consumed message's key and value in, without its headers:
    /// reading headers costs the client an allocation per header, and
    /// only a record that goes to the DLQ needs them
    /// ([`Self::keep_headers`]).
    pub fn push_bare(&mut self, m: &impl Message) {
        let coordinates = (m.partition(), m.offset(), m.timestamp().to_millis());
        self.push_parts(coordinates, m.key(), m.payload());
    }

    /// Copies a record in from its parts: (partition, offset, timestamp in
    /// ms), key and value; no headers.
    pub fn push_parts(
        &mut self,
        (partition, offset, timestamp_ms): (i32, i64, Option<i64>),
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) {
        let key = key.map(|k| copy_into(&mut self.bytes, k));
        let value = value.map(|v| copy_into(&mut self.bytes, v));
        let at = self.headers.len();
        self.meta.push(Meta {
            partition,
            offset,
            timestamp_ms,
            key,
            value,
            headers: at..at,
        });
    }

    /// Copies `m`'s headers onto the last record, which must be `m`, pushed
    /// with [`Self::push_bare`].
    pub fn keep_headers(&mut self, m: &impl Message) {
        use rdkafka::message::Headers;
        if let Some(headers) = m.headers() {
            self.keep_header_list(headers.iter().map(|h| (h.key, h.value)));
        }
    }

    /// Copies `headers`, (name, value) in order, onto the last record.
    pub fn keep_header_list<'h>(
        &mut self,
        headers: impl IntoIterator<Item = (&'h str, Option<&'h [u8]>)>,
    ) {
        let last = self.meta.last_mut().expect("a record to keep headers for");
        debug_assert!(last.headers.end == self.headers.len());
        for (name, value) in headers {
            let name = copy_into(&mut self.bytes, name.as_bytes());
            let value = value.map(|v| copy_into(&mut self.bytes, v));
            self.headers.push(HeaderAt { name, value });
        }
        last.headers.end = self.headers.len();
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.meta.len()
    }

    /// True when no record is held.
    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }

    /// Record `i`.
    pub fn get(&self, i: usize) -> RecordRef<'_> {
        let m = &self.meta[i];
        let part = |r: &Option<std::ops::Range<usize>>| r.clone().map(|r| &self.bytes[r]);
        RecordRef {
            partition: m.partition,
            offset: m.offset,
            key: part(&m.key),
            value: part(&m.value),
            headers: RecordHeaders {
                bytes: &self.bytes,
                headers: &self.headers[m.headers.clone()],
            },
            timestamp_ms: m.timestamp_ms,
        }
    }

    /// Per partition, the offset after the batch's last record there: what
    /// a commit of the batch stores, and where a replay of it ends. The
    /// last, not the highest: the collector hands a partition's records
    /// over in rising offsets but after an offset reset, where the new,
    /// lower offsets are the ones to commit.
    pub fn next_offsets(&self) -> std::collections::BTreeMap<i32, i64> {
        // Records come in runs of one partition: one map entry per run.
        let mut next = std::collections::BTreeMap::new();
        for run in self.meta.chunk_by(|a, b| a.partition == b.partition) {
            let last = run.last().expect("runs are not empty");
            next.insert(last.partition, last.offset + 1);
        }
        next
    }

    /// Every record, in order.
    pub fn iter(&self) -> impl Iterator<Item = RecordRef<'_>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

/// Appends `part` to `bytes`; where it landed.
fn copy_into(bytes: &mut Vec<u8>, part: &[u8]) -> std::ops::Range<usize> {
    let start = bytes.len();
    bytes.extend_from_slice(part);
    start..bytes.len()
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

    fn message(
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        value: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> OwnedMessage {
        OwnedMessage::new(
            Some(value.to_vec()),
            key.map(<[u8]>::to_vec),
            "in".into(),
            Timestamp::CreateTime(1_000 + offset),
            partition,
            offset,
            headers,
        )
    }

    #[test]
    fn a_batch_keeps_each_records_parts_and_headers_apart() {
        let mut batch = RecordBatch::default();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "id",
                value: Some("r-1"),
            })
            .insert(Header {
                key: "empty",
                value: None::<&[u8]>,
            });
        for round in 0..2 {
            batch.push(&message(
                3,
                7,
                Some(b"card-1"),
                b"{\"a\":1}",
                Some(headers.clone()),
            ));
            batch.push(&message(0, 9, None, b"{}", None));
            batch.push(&message(3, 8, Some(b""), b"x", Some(OwnedHeaders::new())));
            assert_eq!(batch.len(), 3, "round {round}");

            let first = batch.get(0);
            assert_eq!((first.partition, first.offset), (3, 7));
            assert_eq!(first.key, Some(&b"card-1"[..]));
            assert_eq!(first.value, Some(&b"{\"a\":1}"[..]));
            assert_eq!(first.timestamp_ms, Some(1_007));
            let h: Vec<_> = first.headers.iter().collect();
            assert_eq!(h, vec![("id", Some(&b"r-1"[..])), ("empty", None)]);

            let second = batch.get(1);
            assert_eq!((second.key, second.value), (None, Some(&b"{}"[..])));
            assert!(second.headers.is_empty());
            let third = batch.get(2);
            assert_eq!((third.key, third.value), (Some(&b""[..]), Some(&b"x"[..])));
            assert_eq!(third.headers.len(), 0);

            // A recycled batch starts empty and fills the same way.
            batch.clear();
            assert!(batch.is_empty() && batch.bytes() == 0);
        }
    }

    #[test]
    fn headers_are_kept_only_where_asked() {
        let headers = OwnedHeaders::new().insert(Header {
            key: "id",
            value: Some("r-2"),
        });
        let with = message(0, 1, None, b"{}", Some(headers));
        let mut batch = RecordBatch::default();
        batch.push_bare(&with);
        batch.push_bare(&with);
        batch.keep_headers(&with);
        batch.push_bare(&with);
        assert!(batch.get(0).headers.is_empty());
        let kept: Vec<_> = batch.get(1).headers.iter().collect();
        assert_eq!(kept, vec![("id", Some(&b"r-2"[..]))]);
        assert!(batch.get(2).headers.is_empty());
        assert_eq!(batch.get(2).value, Some(&b"{}"[..]));
    }

    #[test]
    fn next_offsets_is_one_past_the_last_offset_per_partition() {
        let mut batch = RecordBatch::default();
        // Partition 0 was reset to 1 after 3.
        for (partition, offset) in [(1, 5), (1, 6), (0, 2), (1, 7), (0, 3), (2, 0), (0, 1)] {
            batch.push(&message(partition, offset, None, b"{}", None));
        }
        let next: Vec<_> = batch.next_offsets().into_iter().collect();
        assert_eq!(next, vec![(0, 2), (1, 8), (2, 1)]);
        assert!(RecordBatch::default().next_offsets().is_empty());
    }
}
