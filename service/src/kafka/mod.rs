//! Kafka clients (rdkafka): consumer and producer settings that give
//! at-least-once delivery, start-up checks with clear errors, and topic
//! creation. Submodule `record` holds consumed records ([`Record`], one
//! owned; [`RecordBatch`], a batch in one buffer); `read` reads a topic
//! whole, outside any group ([`consumer_from_start`], [`read_topic`]).

mod read;
mod record;

pub use read::{consumer_from_start, read_topic, TopicEnds};
pub use record::{Record, RecordBatch, RecordHeaders, RecordRef};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
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

/// Creates `topic` with `partitions` partitions and
/// `cleanup.policy=compact` unless it exists; falls back to a plain topic
/// when the broker refuses the setting (its retention then bounds what is
/// kept). For the model registry and the changelogs of per-key state.
pub async fn create_compacted_topic(
    cluster: &Cluster,
    topic: &str,
    partitions: i32,
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = cluster.client_config().create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for compact in [true, false] {
        let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        if compact {
            new = new.set("cleanup.policy", "compact");
        }
        let results = admin.create_topics(&[new], &opts).await?;
        match results.into_iter().next() {
            Some(Ok(_)) | None => return Ok(()),
            Some(Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists))) => return Ok(()),
            Some(Err((_, code))) if compact => {
                tracing::warn!(topic, error = %code, "broker refused a compacted topic; creating a plain one");
            }
            Some(Err((_, code))) => {
                return Err(KafkaError::Client(rdkafka::error::KafkaError::AdminOp(
                    code,
                )))
            }
        }
    }
    Ok(())
}
