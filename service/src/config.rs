//! Typed configuration of `isoflow run` (TOML; flags and `ISOFLOW_*`
//! environment variables override the file's runtime knobs).
//!
//! ```toml
//! [kafka]
//! brokers = "127.0.0.1:9092"
//! group_id = "isoflow"
//!
//! [service]
//! backend = "auto"
//! metrics_listen = "127.0.0.1:9898"
//!
//! [grpc]
//! listen = "127.0.0.1:50051"
//!
//! [[pipeline]]
//! name = "fraud"
//! input_topic = "transactions"
//! model = "models/fraud.isoflow"
//! alerts_topic = "alerts"
//! dlq_topic = "isoflow-dlq"
//! ```

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unreadable file.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// Path given.
        path: String,
        /// I/O error.
        source: std::io::Error,
    },
    /// Not valid TOML or an unknown/missing field (named by the parser).
    #[error("config {path}: {message}")]
    Parse {
        /// Path given.
        path: String,
        /// Parser message.
        message: String,
    },
    /// A value out of range; names the field.
    #[error("config: {0}")]
    Invalid(String),
}

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Broker connection.
    pub kafka: KafkaConfig,
    /// Process-wide settings.
    #[serde(default)]
    pub service: ServiceConfig,
    /// The gRPC API and the model registry.
    #[serde(default)]
    pub grpc: GrpcConfig,
    /// One entry per input topic to score.
    #[serde(rename = "pipeline")]
    pub pipelines: Vec<PipelineConfig>,
}

/// Broker connection.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// Consumer group prefix: pipeline `p` consumes as group `<group_id>.<p>`,
    /// and replicas with the same groups share the partitions.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// How long the group waits for a dead member before reassigning its
    /// partitions. Short by default so a killed replica's partitions move on
    /// quickly (librdkafka's 45 s default stalls recovery).
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u32,
    /// Extra librdkafka properties, passed through as is.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// The cluster every client of the service connects to, with the same
    /// properties for all of them.
    pub fn cluster(&self) -> crate::kafka::Cluster {
        crate::kafka::Cluster {
            brokers: self.brokers.clone(),
            properties: self.properties.clone(),
        }
    }
}

/// Process-wide settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Scoring backend: auto, gpu or cpu.
    #[serde(default = "default_backend")]
    pub backend: String,
    /// Address for Prometheus `/metrics` (empty: no endpoint).
    #[serde(default)]
    pub metrics_listen: String,
    /// Keys with per-key state per keyed feature before the least recently
    /// used are evicted (evictions are counted in metrics).
    #[serde(default = "default_slot_capacity")]
    pub slot_capacity: usize,
    /// Messages larger than this many bytes go to the DLQ as oversized.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Seconds to finish in-flight work after SIGTERM before giving up.
    #[serde(default = "default_drain_timeout_s")]
    pub drain_timeout_s: u64,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            backend: default_backend(),
            metrics_listen: String::new(),
            slot_capacity: default_slot_capacity(),
            max_message_bytes: default_max_message_bytes(),
            drain_timeout_s: default_drain_timeout_s(),
        }
    }
}

/// The gRPC API (model management, scoring, alert streams) and the model
/// registry behind it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    /// Address to serve gRPC on, e.g. `127.0.0.1:50051`; empty (the
    /// default): no gRPC server and no model registry.
    #[serde(default)]
    pub listen: String,
    /// Bearer token every RPC but health must carry (`authorization: Bearer
    /// <token>`); empty: no authentication. Prefer `ISOFLOW_GRPC_TOKEN` to
    /// writing it in the file.
    #[serde(default)]
    pub token: String,
    /// PEM certificate chain for TLS; with `tls_key`, the server speaks TLS
    /// only.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Local cache of registry models (`<name>@<version>.isoflow`).
    #[serde(default = "default_models_dir")]
    pub models_dir: PathBuf,
    /// Compacted Kafka topic holding the registry (the source of truth,
    /// replayed from the start by every replica); empty: local registry only.
    #[serde(default = "default_registry_topic")]
    pub registry_topic: String,
    /// Largest request accepted, in bytes; larger ones are RESOURCE_EXHAUSTED.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Most records one `Score` call may carry.
    #[serde(default = "default_max_score_records")]
    pub max_score_records: usize,
    /// Most `Score` calls scoring at once (1 to 1024); more are
    /// RESOURCE_EXHAUSTED at once, so API load cannot take the CPU (or GPU)
    /// from the pipelines.
    #[serde(default = "default_max_concurrent_scores")]
    pub max_concurrent_scores: usize,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            listen: String::new(),
            token: String::new(),
            tls_cert: None,
            tls_key: None,
            models_dir: default_models_dir(),
            registry_topic: default_registry_topic(),
            max_request_bytes: default_max_request_bytes(),
            max_score_records: default_max_score_records(),
            max_concurrent_scores: default_max_concurrent_scores(),
        }
    }
}

/// One scored topic.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Name used in logs, metrics and alerts.
    pub name: String,
    /// Topic of JSON records to score.
    pub input_topic: String,
    /// Model file, or a registry name; empty with `preset`.
    #[serde(default)]
    pub model: PathBuf,
    /// Topic alerts are published to.
    pub alerts_topic: String,
    /// Dead-letter topic for records that cannot be scored.
    pub dlq_topic: String,
    /// Optional topic with one message per scored record.
    #[serde(default)]
    pub scores_topic: String,
    /// Optional topic with one message per record scored by the shadow model.
    #[serde(default)]
    pub shadow_scores_topic: String,
    /// Optional topic of confirmed labels (the original record plus
    /// `label` and `label_ts`) for the model's `key_label_risk` features:
    /// read from its start at every start-up, then as labels come.
    #[serde(default)]
    pub feedback_topic: String,
    /// Flush a batch at this many records...
    #[serde(default = "default_batch_max_records")]
    pub batch_max_records: usize,
    /// ...or this many milliseconds after its first record, whichever first.
    #[serde(default = "default_batch_max_ms")]
    pub batch_max_ms: u64,
    /// ...or once its records' bytes reach this many (a batch holds at
    /// least one record, and overshoots by at most one read of at most
    /// `batch_max_bytes / service.max_message_bytes` records).
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// Keep learning from the stream: the online forest regrows trees from
    /// recent rows, each record scored before it is learnt (as
    /// `isoflow score --learn`).
    #[serde(default)]
    pub learn: bool,
    /// Seed of the trees grown while learning (default: the model's
    /// training seed; 0 for a preset's cold start).
    #[serde(default)]
    pub seed: Option<u64>,
    /// No model: start cold with this preset's features (`metrics`,
    /// `transactions`) and learn from the stream; needs `learn`, `key` and
    /// `fields`.
    #[serde(default)]
    pub preset: String,
    /// With `preset`: key fields, the first being the entity.
    #[serde(default)]
    pub key: Vec<String>,
    /// With `preset`: the event-time field (epoch seconds); empty: the
    /// broker timestamp.
    #[serde(default)]
    pub time: String,
    /// With `preset`: the numeric fields to learn from.
    #[serde(default)]
    pub fields: Vec<String>,
    /// Keep per-key state in the compacted changelog topic
    /// `<group_id>.<name>.state` (created by the service), restored when a
    /// partition is assigned: restarts, rebalances and new replicas go on
    /// with the state the partition had.
    #[serde(default = "default_state_changelog")]
    pub state_changelog: bool,
    /// With `state_changelog`: how often (ms) the state of the keys
    /// changed since the last checkpoint is written, and the input offsets
    /// it covers committed.
    #[serde(default = "default_checkpoint_ms")]
    pub checkpoint_ms: u64,
}

fn default_state_changelog() -> bool {
    true
}

fn default_checkpoint_ms() -> u64 {
    1000
}

/// Bounds of `checkpoint_ms`.
pub const CHECKPOINT_MS: std::ops::RangeInclusive<u64> = 10..=600_000;

impl PipelineConfig {
    /// Pipeline `name` scoring `input_topic` with `model` into
    /// `alerts_topic` and `dlq_topic`, everything else at its default.
    pub fn new(
        name: &str,
        input_topic: &str,
        model: PathBuf,
        (alerts_topic, dlq_topic): (&str, &str),
    ) -> Self {
        Self {
            name: name.to_owned(),
            input_topic: input_topic.to_owned(),
            model,
            alerts_topic: alerts_topic.to_owned(),
            dlq_topic: dlq_topic.to_owned(),
            scores_topic: String::new(),
            shadow_scores_topic: String::new(),
            feedback_topic: String::new(),
            batch_max_records: default_batch_max_records(),
            batch_max_ms: default_batch_max_ms(),
            batch_max_bytes: default_batch_max_bytes(),
            learn: false,
            seed: None,
            preset: String::new(),
            key: Vec::new(),
            time: String::new(),
            fields: Vec::new(),
            state_changelog: default_state_changelog(),
            checkpoint_ms: default_checkpoint_ms(),
        }
    }

    /// The preset of a cold start, if the pipeline has one.
    pub fn preset(&self) -> Result<Option<crate::preset::Preset>, ConfigError> {
        if self.preset.is_empty() {
            return Ok(None);
        }
        let preset = self
            .preset
            .parse()
            .map_err(|e| ConfigError::Invalid(format!("pipeline '{}': preset: {e}", self.name)))?;
        Ok(Some(preset))
    }
}

/// Most records a batch may hold (`batch_max_records`).
pub const MAX_BATCH_RECORDS: usize = 1 << 20;
/// Default `batch_max_bytes`: 64 MiB.
pub const DEFAULT_BATCH_MAX_BYTES: usize = 64 << 20;
/// Largest `batch_max_bytes`: 1 GiB.
pub const MAX_BATCH_BYTES: usize = 1 << 30;
/// Longest a partial batch may wait, in milliseconds (`batch_max_ms`).
pub const MAX_BATCH_MS: u64 = 60_000;
/// Largest record accepted (`service.max_message_bytes`): 64 MiB.
pub const MAX_MESSAGE_BYTES: u64 = 64 << 20;
/// Longest drain after SIGTERM (`service.drain_timeout_s`).
pub const MAX_DRAIN_TIMEOUT_S: u64 = 3600;

fn default_group() -> String {
    "isoflow".into()
}
fn default_session_timeout_ms() -> u32 {
    6000
}
fn default_backend() -> String {
    "auto".into()
}
fn default_slot_capacity() -> usize {
    crate::features::DEFAULT_SLOT_CAPACITY
}
fn default_max_message_bytes() -> usize {
    1 << 20
}
fn default_drain_timeout_s() -> u64 {
    30
}
fn default_models_dir() -> PathBuf {
    "isoflow-models".into()
}
fn default_registry_topic() -> String {
    "isoflow.models".into()
}
fn default_max_request_bytes() -> usize {
    64 << 20
}
fn default_max_concurrent_scores() -> usize {
    4
}

fn default_max_score_records() -> usize {
    100_000
}
fn default_batch_max_records() -> usize {
    4096
}
fn default_batch_max_bytes() -> usize {
    DEFAULT_BATCH_MAX_BYTES
}
fn default_batch_max_ms() -> u64 {
    100
}

/// Runtime knobs from flags or `ISOFLOW_*` variables; each one set replaces
/// the file's value.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `kafka.brokers`.
    pub brokers: Option<String>,
    /// `kafka.group_id`.
    pub group: Option<String>,
    /// `service.backend`.
    pub backend: Option<String>,
    /// `service.metrics_listen`.
    pub metrics_listen: Option<String>,
    /// `grpc.listen`.
    pub grpc_listen: Option<String>,
    /// `grpc.token`.
    pub grpc_token: Option<String>,
    /// One pipeline described by flags.
    pub pipeline: PipelineFlags,
}

/// One pipeline from flags (`--input-topic`, `--model`, ...). With
/// `input_topic`, they replace the file's pipeline reading that topic, or
/// add one named after the topic; without it, they adjust the file's only
/// pipeline.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct PipelineFlags {
    /// Topic of the records to score (a pipeline's input_topic).
    #[arg(long, env = "ISOFLOW_INPUT_TOPIC")]
    pub input_topic: Option<String>,
    /// Model file, or a registry name (`name` or `name@version`) cached in grpc.models_dir.
    #[arg(long, env = "ISOFLOW_MODEL")]
    pub model: Option<PathBuf>,
    /// Topic alerts are published to.
    #[arg(long, env = "ISOFLOW_ALERTS_TOPIC")]
    pub alerts_topic: Option<String>,
    /// Dead-letter topic for records that cannot be scored.
    #[arg(long, env = "ISOFLOW_DLQ_TOPIC")]
    pub dlq_topic: Option<String>,
    /// Optional topic with one score message per record.
    #[arg(long, env = "ISOFLOW_SCORES_TOPIC")]
    pub scores_topic: Option<String>,
    /// Optional topic with one message per record the shadow model scores.
    #[arg(long, env = "ISOFLOW_SHADOW_SCORES_TOPIC")]
    pub shadow_scores_topic: Option<String>,
    /// Optional topic of confirmed labels (records plus `label` and
    /// `label_ts`) for the model's label-risk features (feedback_topic).
    #[arg(long, env = "ISOFLOW_FEEDBACK_TOPIC")]
    pub feedback_topic: Option<String>,
    /// Records per batch at most (batch_max_records; default 4096).
    #[arg(long, env = "ISOFLOW_BATCH_SIZE")]
    pub batch_size: Option<usize>,
    /// Milliseconds a partial batch waits (batch_max_ms; default 100).
    #[arg(long, env = "ISOFLOW_LINGER_MS")]
    pub linger_ms: Option<u64>,
    /// Keep learning from the stream (learn): the online forest regrows
    /// trees from recent rows, each record scored before it is learnt.
    #[arg(long)]
    pub learn: bool,
    /// Seed of the trees grown while learning (seed; default: the model's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// No model: start cold with this preset (metrics, transactions) and
    /// learn (preset; needs --learn, --key and --fields).
    #[arg(long)]
    pub preset: Option<String>,
    /// With --preset: key fields, the first being the entity.
    #[arg(long, value_delimiter = ',')]
    pub key: Vec<String>,
    /// With --preset: event-time field (epoch seconds).
    #[arg(long)]
    pub time: Option<String>,
    /// With --preset: numeric fields.
    #[arg(long, value_delimiter = ',')]
    pub fields: Vec<String>,
}

impl PipelineFlags {
    fn is_empty(&self) -> bool {
        self.input_topic.is_none()
            && self.model.is_none()
            && self.alerts_topic.is_none()
            && self.dlq_topic.is_none()
            && self.scores_topic.is_none()
            && self.shadow_scores_topic.is_none()
            && self.feedback_topic.is_none()
            && self.batch_size.is_none()
            && self.linger_ms.is_none()
            && !self.learn
            && self.seed.is_none()
            && self.preset.is_none()
            && self.key.is_empty()
            && self.time.is_none()
            && self.fields.is_empty()
    }

    /// Sets the fields given on `p`.
    fn set(self, p: &mut PipelineConfig) {
        let PipelineFlags {
            input_topic,
            model,
            alerts_topic,
            dlq_topic,
            scores_topic,
            shadow_scores_topic,
            feedback_topic,
            batch_size,
            linger_ms,
            learn,
            seed,
            preset,
            key,
            time,
            fields,
        } = self;
        for (value, field) in [
            (input_topic, &mut p.input_topic),
            (alerts_topic, &mut p.alerts_topic),
            (dlq_topic, &mut p.dlq_topic),
            (scores_topic, &mut p.scores_topic),
            (shadow_scores_topic, &mut p.shadow_scores_topic),
            (feedback_topic, &mut p.feedback_topic),
            (preset, &mut p.preset),
            (time, &mut p.time),
        ] {
            if let Some(v) = value {
                *field = v;
            }
        }
        if let Some(m) = model {
            p.model = m;
        }
        if let Some(n) = batch_size {
            p.batch_max_records = n;
        }
        if let Some(ms) = linger_ms {
            p.batch_max_ms = ms;
        }
        p.learn |= learn;
        if seed.is_some() {
            p.seed = seed;
        }
        for (value, field) in [(key, &mut p.key), (fields, &mut p.fields)] {
            if !value.is_empty() {
                *field = value;
            }
        }
    }
}

impl Default for Config {
    /// No file: defaults everywhere, no brokers and no pipelines yet (flags
    /// must supply them).
    fn default() -> Self {
        Self {
            kafka: KafkaConfig {
                brokers: String::new(),
                group_id: default_group(),
                session_timeout_ms: default_session_timeout_ms(),
                properties: BTreeMap::new(),
            },
            service: ServiceConfig::default(),
            grpc: GrpcConfig::default(),
            pipelines: Vec::new(),
        }
    }
}

impl Config {
    /// Applies `overrides`, then validates the result.
    pub fn apply(&mut self, overrides: Overrides) -> Result<(), ConfigError> {
        let Overrides {
            brokers,
            group,
            backend,
            metrics_listen,
            grpc_listen,
            grpc_token,
            pipeline,
        } = overrides;
        let fields = [
            (brokers, &mut self.kafka.brokers),
            (group, &mut self.kafka.group_id),
            (backend, &mut self.service.backend),
            (metrics_listen, &mut self.service.metrics_listen),
            (grpc_listen, &mut self.grpc.listen),
            (grpc_token, &mut self.grpc.token),
        ];
        for (value, field) in fields {
            if let Some(v) = value {
                *field = v;
            }
        }
        self.apply_pipeline(pipeline)?;
        self.validate()
    }

    fn apply_pipeline(&mut self, flags: PipelineFlags) -> Result<(), ConfigError> {
        if flags.is_empty() {
            return Ok(());
        }
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let at = match &flags.input_topic {
            Some(topic) => self.pipelines.iter().position(|p| &p.input_topic == topic),
            None if self.pipelines.len() == 1 => Some(0),
            None => {
                return bad(format!(
                    "pipeline flags without --input-topic: the config has {} pipelines, say which with --input-topic",
                    self.pipelines.len()
                ))
            }
        };
        match at {
            Some(i) => flags.set(&mut self.pipelines[i]),
            None => {
                let model = flags
                    .model
                    .clone()
                    .or(flags.preset.as_ref().map(|_| PathBuf::new()));
                let (Some(topic), Some(model), Some(alerts), Some(dlq)) = (
                    flags.input_topic.clone(),
                    model,
                    flags.alerts_topic.clone(),
                    flags.dlq_topic.clone(),
                ) else {
                    return bad(format!(
                        "--input-topic {}: a new pipeline also needs --model (or --preset), --alerts-topic and --dlq-topic",
                        flags.input_topic.as_deref().unwrap_or_default()
                    ));
                };
                let mut p = PipelineConfig::new(&topic, &topic, model, (&alerts, &dlq));
                flags.set(&mut p);
                self.pipelines.push(p);
            }
        }
        Ok(())
    }

    /// Parses TOML text (`path` only names it in messages).
    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a file.
    pub fn read(path: &std::path::Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    /// Checks values the types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.kafka.brokers.trim().is_empty() {
            return bad("kafka.brokers is empty: set it in the file or pass --brokers".into());
        }
        if self
            .service
            .backend
            .parse::<crate::engine::Backend>()
            .is_err()
        {
            return bad(format!(
                "service.backend '{}': expected auto, gpu or cpu",
                self.service.backend
            ));
        }
        let most = crate::features::slots::MAX_CAPACITY;
        if !(1..=most).contains(&self.service.slot_capacity) {
            return bad(format!(
                "service.slot_capacity {}: expected 1 to {most} keys per keyed feature",
                self.service.slot_capacity
            ));
        }
        if self.grpc.tls_cert.is_some() != self.grpc.tls_key.is_some() {
            return bad("grpc.tls_cert and grpc.tls_key must be set together".into());
        }
        if !(1..=1024).contains(&self.grpc.max_concurrent_scores) {
            return bad(format!(
                "grpc.max_concurrent_scores {}: expected 1 to 1024",
                self.grpc.max_concurrent_scores
            ));
        }
        if self.grpc.max_request_bytes < 1024 || self.grpc.max_score_records == 0 {
            return bad(
                "grpc.max_request_bytes must be >= 1024 and grpc.max_score_records > 0".into(),
            );
        }
        if self.pipelines.is_empty() {
            return bad("no pipeline: pass --input-topic, --model, --alerts-topic and --dlq-topic, or [[pipeline]] entries in --config".into());
        }
        let mut names = std::collections::HashSet::new();
        for p in &self.pipelines {
            if !names.insert(&p.name) {
                return bad(format!("pipeline name '{}' appears twice", p.name));
            }
            for (field, value, most) in [
                (
                    "batch_max_records",
                    p.batch_max_records as u64,
                    MAX_BATCH_RECORDS as u64,
                ),
                ("batch_max_ms", p.batch_max_ms, MAX_BATCH_MS),
                (
                    "batch_max_bytes",
                    p.batch_max_bytes as u64,
                    MAX_BATCH_BYTES as u64,
                ),
            ] {
                if !(1..=most).contains(&value) {
                    return bad(format!(
                        "pipeline '{}': {field} {value}: expected 1 to {most}",
                        p.name
                    ));
                }
            }
            if !CHECKPOINT_MS.contains(&p.checkpoint_ms) {
                return bad(format!(
                    "pipeline '{}': checkpoint_ms {}: expected {} to {}",
                    p.name,
                    p.checkpoint_ms,
                    CHECKPOINT_MS.start(),
                    CHECKPOINT_MS.end()
                ));
            }
            let outputs = [
                ("alerts_topic", &p.alerts_topic),
                ("dlq_topic", &p.dlq_topic),
                ("scores_topic", &p.scores_topic),
                ("shadow_scores_topic", &p.shadow_scores_topic),
                // Not written, but read as labels: one of the pipeline's
                // own topics it must not be.
                ("feedback_topic", &p.feedback_topic),
            ];
            for (field, topic) in [("input_topic", &p.input_topic)]
                .iter()
                .chain(&outputs[..2])
            {
                if topic.is_empty() {
                    return bad(format!("pipeline '{}': {field} is empty", p.name));
                }
            }
            // Output read back as input would loop; a shared output topic
            // mixes message kinds its readers cannot tell apart.
            for (i, (field, topic)) in outputs.iter().enumerate() {
                if topic.is_empty() {
                    continue;
                }
                if *topic == &p.input_topic {
                    return bad(format!(
                        "pipeline '{}': {field} '{topic}' is also its input_topic",
                        p.name
                    ));
                }
                if let Some((other, _)) = outputs[..i].iter().find(|(_, t)| t == topic) {
                    return bad(format!(
                        "pipeline '{}': {field} and {other} are both '{topic}'",
                        p.name
                    ));
                }
            }
            let named = !p.model.as_os_str().is_empty();
            match p.preset()? {
                None if !named => {
                    return bad(format!(
                        "pipeline '{}': no model: set model (a file or registry name), or preset with learn",
                        p.name
                    ))
                }
                None => {}
                Some(_) if named => {
                    return bad(format!(
                        "pipeline '{}': model and preset both set: a preset is the cold start without a model",
                        p.name
                    ))
                }
                Some(_) if !p.learn || p.key.is_empty() || p.fields.is_empty() => {
                    return bad(format!(
                        "pipeline '{}': preset '{}' starts cold and needs learn = true, key and fields \
                         (the service cannot look at a first record for its fields before it starts)",
                        p.name, p.preset
                    ))
                }
                Some(_) => {}
            }
            if self.grpc.registry_topic == p.input_topic && !self.grpc.listen.is_empty() {
                return bad(format!(
                    "pipeline '{}': input_topic '{}' is the model registry topic",
                    p.name, p.input_topic
                ));
            }
        }
        let s = &self.service;
        for (field, value, least, most) in [
            (
                "service.max_message_bytes",
                s.max_message_bytes as u64,
                1,
                MAX_MESSAGE_BYTES,
            ),
            (
                "service.drain_timeout_s",
                s.drain_timeout_s,
                1,
                MAX_DRAIN_TIMEOUT_S,
            ),
            (
                "kafka.session_timeout_ms",
                self.kafka.session_timeout_ms as u64,
                1000,
                3_600_000,
            ),
        ] {
            if !(least..=most).contains(&value) {
                return bad(format!("{field} {value}: expected {least} to {most}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[kafka]
brokers = "127.0.0.1:9092"
[[pipeline]]
name = "fraud"
input_topic = "transactions"
model = "models/fraud.isoflow"
alerts_topic = "alerts"
dlq_topic = "dlq"
"#;

    #[test]
    fn overrides_replace_file_values_and_are_validated() {
        let mut c = Config::parse(GOOD, "t.toml").unwrap();
        c.apply(Overrides {
            brokers: Some("b:1".into()),
            backend: Some("cpu".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.kafka.brokers, "b:1");
        assert_eq!(c.service.backend, "cpu");
        assert_eq!(c.kafka.group_id, "isoflow");
        let err = c
            .apply(Overrides {
                backend: Some("tpu".into()),
                ..Default::default()
            })
            .unwrap_err();
        assert!(
            err.to_string().contains("expected auto, gpu or cpu"),
            "{err}"
        );
    }

    #[test]
    fn flags_alone_describe_one_pipeline() {
        let mut c = Config::default();
        let flags = PipelineFlags {
            input_topic: Some("tx".into()),
            model: Some("m.isoflow".into()),
            alerts_topic: Some("a".into()),
            dlq_topic: Some("d".into()),
            batch_size: Some(512),
            linger_ms: Some(20),
            ..Default::default()
        };
        c.apply(Overrides {
            brokers: Some("b:1".into()),
            pipeline: flags.clone(),
            ..Default::default()
        })
        .unwrap();
        let p = &c.pipelines[0];
        assert_eq!((p.name.as_str(), p.input_topic.as_str()), ("tx", "tx"));
        assert_eq!((p.batch_max_records, p.batch_max_ms), (512, 20));
        assert_eq!(p.scores_topic, "");

        // Missing the rest of a new pipeline, or the brokers: said plainly.
        let err = Config::default()
            .apply(Overrides {
                brokers: Some("b:1".into()),
                pipeline: PipelineFlags {
                    input_topic: Some("tx".into()),
                    ..Default::default()
                },
                ..Default::default()
            })
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("--model (or --preset), --alerts-topic and --dlq-topic"),
            "{err}"
        );
        let err = Config::default()
            .apply(Overrides {
                pipeline: flags,
                ..Default::default()
            })
            .unwrap_err();
        assert!(err.to_string().contains("--brokers"), "{err}");
        let err = Config::default()
            .apply(Overrides {
                brokers: Some("b:1".into()),
                ..Default::default()
            })
            .unwrap_err();
        assert!(err.to_string().contains("--input-topic"), "{err}");
    }

    #[test]
    fn flags_adjust_the_file_pipeline_they_name() {
        let mut c = Config::parse(GOOD, "t.toml").unwrap();
        c.apply(Overrides {
            pipeline: PipelineFlags {
                scores_topic: Some("scores".into()),
                ..Default::default()
            },
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.pipelines[0].scores_topic, "scores");
        c.apply(Overrides {
            pipeline: PipelineFlags {
                input_topic: Some("transactions".into()),
                dlq_topic: Some("dlq2".into()),
                ..Default::default()
            },
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.pipelines.len(), 1);
        assert_eq!(c.pipelines[0].dlq_topic, "dlq2");
    }

    #[test]
    fn defaults_fill_runtime_knobs() {
        let c = Config::parse(GOOD, "t.toml").unwrap();
        assert_eq!(c.kafka.group_id, "isoflow");
        assert_eq!(c.kafka.session_timeout_ms, 6000);
        assert_eq!(c.service.backend, "auto");
        assert_eq!(c.pipelines[0].batch_max_records, 4096);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_named() {
        let err = Config::parse(&GOOD.replace("dlq_topic", "dead_topic"), "t.toml").unwrap_err();
        assert!(err.to_string().contains("dead_topic"), "{err}");
        let err =
            Config::parse(&format!("{GOOD}[service]\nbackend = \"tpu\"\n"), "t.toml").unwrap_err();
        assert!(
            err.to_string().contains("expected auto, gpu or cpu"),
            "{err}"
        );
        let err =
            Config::parse(&format!("{GOOD}[service]\nslot_capacity = 0\n"), "t.toml").unwrap_err();
        assert!(
            err.to_string().contains("slot_capacity 0: expected 1 to"),
            "{err}"
        );
        let err = Config::parse(&GOOD.replace("\"alerts\"", "\"\""), "t.toml").unwrap_err();
        assert!(err.to_string().contains("alerts_topic is empty"), "{err}");
    }

    #[test]
    fn limits_and_topic_loops_are_refused() {
        for (from, to, says) in [
            (
                "dlq_topic = \"dlq\"",
                "dlq_topic = \"transactions\"",
                "dlq_topic 'transactions' is also its input_topic",
            ),
            (
                "dlq_topic = \"dlq\"",
                "dlq_topic = \"alerts\"",
                "dlq_topic and alerts_topic are both 'alerts'",
            ),
            (
                "dlq_topic = \"dlq\"",
                "dlq_topic = \"dlq\"\nbatch_max_ms = 18446744073709551615",
                "batch_max_ms 18446744073709551615: expected 1 to 60000",
            ),
            (
                "dlq_topic = \"dlq\"",
                "dlq_topic = \"dlq\"\nbatch_max_records = 0",
                "batch_max_records 0: expected 1 to",
            ),
        ] {
            let err = Config::parse(&GOOD.replace(from, to), "t.toml").unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
        }
        let err = Config::parse(&format!("{GOOD}[service]\ndrain_timeout_s = 0\n"), "t.toml")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("drain_timeout_s 0: expected 1 to 3600"),
            "{err}"
        );
    }

    /// A cold start names its preset, learns, and says what to read; it
    /// cannot also have a model, and a pipeline needs one or the other.
    #[test]
    fn a_preset_pipeline_learns_and_names_its_fields() {
        let model = "model = \"models/fraud.isoflow\"";
        let cold = "preset = \"metrics\"\nkey = [\"device\"]\nfields = [\"value\"]\nlearn = true";
        let c = Config::parse(&GOOD.replace(model, cold), "t.toml").unwrap();
        let p = &c.pipelines[0];
        assert_eq!(p.preset().unwrap(), Some(crate::preset::Preset::Metrics));
        assert!(p.learn && p.model.as_os_str().is_empty());
        for (to, says) in [
            ("", "no model: set model"),
            (
                "preset = \"metrics\"\nkey = [\"device\"]\nfields = [\"value\"]",
                "needs learn = true, key and fields",
            ),
            (
                "preset = \"metrics\"\nkey = [\"device\"]\nlearn = true",
                "needs learn = true, key and fields",
            ),
            (
                "preset = \"trades\"\nlearn = true",
                "preset: unknown preset 'trades'",
            ),
            (&format!("{model}\n{cold}"), "model and preset both set"),
        ] {
            let err = Config::parse(&GOOD.replace(model, to), "t.toml").unwrap_err();
            assert!(err.to_string().contains(says), "{to}: {err}");
        }
    }
}
