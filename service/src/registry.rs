//! The model registry: named, versioned models and which version each
//! pipeline scores with.
//!
//! The source of truth is a compacted Kafka topic (like a schema registry);
//! a local models directory caches it. Every change is one message:
//!
//! | key                          | value                            |
//! |------------------------------|----------------------------------|
//! | `model/<name>@<version>`     | the encoded `Model`; tombstone = deleted |
//! | `activation/<pipeline>/live` | `name@version`                   |
//! | `activation/<pipeline>/shadow` | `name@version`; tombstone = no shadow |
//! | `versions/<name>`            | the highest version ever given to `name` |
//!
//! so compaction keeps exactly the current state. A delete writes the
//! name's highest version before its tombstone, so that once compaction
//! drops both the deleted model and its tombstone no later put reuses the
//! number. After a replay the topic is the whole truth: cached files of
//! models it no longer carries are removed. Every replica reads the
//! topic from the beginning (partition assignment, no consumer group) and
//! applies each event to its cache and to the pipelines it runs; a restarted
//! process recovers the registry by replaying it. A replica that serves a
//! change publishes it, waits for the broker's acknowledgement, and applies
//! it at once; applying the echo from the topic again is a no-op. Every
//! event is applied at its topic offset, and an event older than the one
//! last applied for its key is ignored, so concurrent changes end as the
//! topic orders them, on every replica.
//!
//! Versions are assigned by the replica receiving the put: one more than the
//! highest version of that name it knows. Two replicas taking puts of the
//! same name at the same instant can assign the same version; the later
//! message in the topic wins on every replica (they still converge), and the
//! earlier caller's version then names the other model. Route puts of one
//! name through one replica if that matters.
//!
//! The models that pipelines load from the configuration at start-up are
//! known locally (not published), so a put of the same name gets the next
//! version after them.

use crate::kafka::{self, KafkaError};
use crate::model::{self, ModelError};
use crate::pb;
use crate::pipeline::{Handles, PipelineHandle};
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why a registry operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The model failed validation or could not be decoded.
    #[error("model refused: {0}")]
    Invalid(#[from] ModelError),
    /// The request names something malformed.
    #[error("{0}")]
    BadRequest(String),
    /// No such model version.
    #[error("model {0} not found; ListModels shows what the registry holds")]
    ModelNotFound(String),
    /// This process runs no such pipeline.
    #[error("pipeline '{0}' not found; GetStatus lists the pipelines")]
    PipelineNotFound(String),
    /// The model is in use and cannot be deleted.
    #[error("model {model} is the {mode} model of pipeline '{pipeline}'; activate another version first")]
    InUse {
        /// `name@version`.
        model: String,
        /// Pipeline using it.
        pipeline: String,
        /// "live" or "shadow".
        mode: &'static str,
    },
    /// The registry topic did not accept the change; nothing was applied.
    #[error("registry topic {topic}: {message}; nothing changed, retry")]
    Publish {
        /// Registry topic.
        topic: String,
        /// Client message.
        message: String,
    },
    /// The models directory could not be written.
    #[error("models directory {path}: {source}")]
    Io {
        /// File or folder.
        path: String,
        /// I/O error.
        source: std::io::Error,
    },
    /// Kafka set-up failed.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// The pipeline refused the model.
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
}

/// Where a model is activated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// Scores and alerts.
    Live,
    /// Scores, counts, never alerts.
    Shadow,
}

impl Mode {
    /// "live" or "shadow".
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Live => "live",
            Mode::Shadow => "shadow",
        }
    }
}

/// One change to the registry, as carried by the topic.
#[derive(Clone, Debug)]
pub enum Event {
    /// A model version stored.
    Put(Arc<pb::Model>),
    /// A model version removed.
    Delete {
        /// Model name.
        name: String,
        /// Version.
        version: u32,
    },
    /// The highest version ever given to a name, deleted ones included.
    Versions {
        /// Model name.
        name: String,
        /// Highest version.
        highest: u32,
    },
    /// A pipeline's live or shadow model set (`None`: shadow cleared).
    Activate {
        /// Pipeline name.
        pipeline: String,
        /// Live or shadow.
        mode: Mode,
        /// `(name, version)`.
        target: Option<(String, u32)>,
    },
}

impl Event {
    /// The message key of this event: later events of one key replace
    /// earlier ones.
    pub fn key(&self) -> String {
        match self {
            Event::Put(m) => format!("model/{}", model_id(m)),
            Event::Delete { name, version } => format!("model/{}", version_id(name, *version)),
            Event::Versions { name, .. } => format!("versions/{name}"),
            Event::Activate { pipeline, mode, .. } => {
                format!("activation/{pipeline}/{}", mode.as_str())
            }
        }
    }

    /// The message key and value (None: tombstone) of this event.
    pub fn encode(&self) -> (String, Option<Vec<u8>>) {
        use prost::Message as _;
        let value = match self {
            Event::Put(m) => Some(m.encode_to_vec()),
            Event::Delete { .. } => None,
            Event::Versions { highest, .. } => Some(highest.to_string().into_bytes()),
            Event::Activate { target, .. } => {
                target.as_ref().map(|(n, v)| version_id(n, *v).into_bytes())
            }
        };
        (self.key(), value)
    }

    /// Parses a registry topic message; `Err` names what is wrong with it.
    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<Event, String> {
        let key = std::str::from_utf8(key).map_err(|_| "key is not UTF-8".to_owned())?;
        if let Some(id) = key.strip_prefix("model/") {
            let (name, version) = parse_id(id).map_err(|e| format!("key {key}: {e}"))?;
            return match value {
                None => Ok(Event::Delete {
                    name,
                    version: version.unwrap_or(0),
                }),
                Some(bytes) => {
                    let m = model::decode(bytes).map_err(|e| format!("key {key}: {e}"))?;
                    Ok(Event::Put(Arc::new(m)))
                }
            };
        }
        if let Some(name) = key.strip_prefix("versions/") {
            let highest = value
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("key {key}: value is not a version number"))?;
            return Ok(Event::Versions {
                name: name.to_owned(),
                highest,
            });
        }
        if let Some(rest) = key.strip_prefix("activation/") {
            let (pipeline, mode) = rest
                .rsplit_once('/')
                .ok_or_else(|| format!("key {key}: expected activation/<pipeline>/<mode>"))?;
            let mode = match mode {
                "live" => Mode::Live,
                "shadow" => Mode::Shadow,
                other => return Err(format!("key {key}: unknown mode {other}")),
            };
            let target = match value {
                None => None,
                Some(v) => {
                    let text = std::str::from_utf8(v).map_err(|_| "value is not UTF-8")?;
                    match parse_id(text)? {
                        (name, Some(version)) => Some((name, version)),
                        _ => return Err(format!("key {key}: value {text} has no version")),
                    }
                }
            };
            return Ok(Event::Activate {
                pipeline: pipeline.to_owned(),
                mode,
                target,
            });
        }
        Err(format!("unknown key {key}"))
    }
}

pub use crate::model::reference::{model_id, parse_id, resolve_model, version_id};

/// Checks a model name ([`crate::model::reference::check_name`]).
pub fn check_name(name: &str) -> Result<(), RegistryError> {
    crate::model::reference::check_name(name).map_err(RegistryError::BadRequest)
}

/// Where models are published and how fast replicas follow.
struct Topic {
    name: String,
    cluster: kafka::Cluster,
    producer: FutureProducer,
}

/// The registry of one process. Cheap to share (`Arc`); reads take a read
/// lock on an in-memory map.
pub struct ModelRegistry {
    dir: PathBuf,
    models: RwLock<BTreeMap<(String, u32), Arc<pb::Model>>>,
    topic: Option<Topic>,
    handles: Arc<Handles>,
    /// Serialises version assignment within this process.
    put_lock: tokio::sync::Mutex<()>,
    /// Every activation the topic carried, by (pipeline, mode), including
    /// pipelines other replicas run: deletes must respect those too.
    activations: RwLock<Activations>,
    /// Per name, the highest version ever given, deleted ones included.
    highest: RwLock<BTreeMap<String, u32>>,
    /// Per event key, the topic offset of the event last applied.
    applied: std::sync::Mutex<BTreeMap<String, i64>>,
    /// Models loaded from the cache folder that the replay has not (yet)
    /// carried: once it ends, these are gone from the registry.
    unconfirmed: std::sync::Mutex<std::collections::BTreeSet<(String, u32)>>,
}

/// (pipeline, mode) → (model name, version).
type Activations = BTreeMap<(String, Mode), (String, u32)>;

impl ModelRegistry {
    /// Opens the registry: creates `dir` and loads the models cached there,
    /// and, with a `topic`, creates it (compacted) when missing. Nothing is
    /// replayed until [`Self::follow`].
    pub async fn open(
        dir: PathBuf,
        cluster: &kafka::Cluster,
        topic: &str,
        handles: Arc<Handles>,
    ) -> Result<Arc<Self>, RegistryError> {
        let io = |path: &std::path::Path, source| RegistryError::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let mut models = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let path = entry.map_err(|e| io(&dir, e))?.path();
            if path.extension().is_some_and(|e| e == "isoflow") {
                match model::load(&path) {
                    Ok(m) => {
                        models.insert((m.name.clone(), m.version), Arc::new(m));
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "skipping unreadable cached model")
                    }
                }
            }
        }
        let topic = if topic.is_empty() {
            None
        } else {
            kafka::create_compacted_topic(cluster, topic, 1).await?;
            Some(Topic {
                name: topic.to_owned(),
                cluster: cluster.clone(),
                producer: kafka::producer(&cluster.brokers, &cluster.properties)?,
            })
        };
        tracing::info!(dir = %dir.display(), cached = models.len(), topic = topic.as_ref().map_or("", |t| t.name.as_str()), "model registry open");
        let unconfirmed = match topic {
            Some(_) => models.keys().cloned().collect(),
            None => Default::default(),
        };
        Ok(Arc::new(Self {
            dir,
            models: RwLock::new(models),
            topic,
            handles,
            put_lock: tokio::sync::Mutex::new(()),
            activations: RwLock::new(BTreeMap::new()),
            highest: RwLock::new(BTreeMap::new()),
            applied: Default::default(),
            unconfirmed: std::sync::Mutex::new(unconfirmed),
        }))
    }

    /// The registry topic ("" when local only).
    pub fn topic(&self) -> &str {
        self.topic.as_ref().map_or("", |t| t.name.as_str())
    }

    /// The pipelines of this process.
    pub fn handles(&self) -> &Arc<Handles> {
        &self.handles
    }

    /// Makes a model known locally without publishing it (the models the
    /// configuration loads), unless that version is already known.
    pub fn seed(&self, model: &pb::Model) {
        let mut models = self.models.write().expect("registry lock");
        models
            .entry((model.name.clone(), model.version))
            .or_insert_with(|| Arc::new(model.clone()));
    }

    /// Every model (only `name`'s when non-empty), by name then version.
    pub fn list(&self, name: &str) -> Vec<Arc<pb::Model>> {
        let models = self.models.read().expect("registry lock");
        models
            .iter()
            .filter(|((n, _), _)| name.is_empty() || n == name)
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Model `name` at `version` (0 or `None`: the latest).
    pub fn get(&self, name: &str, version: Option<u32>) -> Result<Arc<pb::Model>, RegistryError> {
        let models = self.models.read().expect("registry lock");
        let found = match version.filter(|&v| v != 0) {
            Some(v) => models.get(&(name.to_owned(), v)).cloned(),
            None => models
                .range((name.to_owned(), 0)..=(name.to_owned(), u32::MAX))
                .next_back()
                .map(|(_, m)| m.clone()),
        };
        found.ok_or_else(|| {
            RegistryError::ModelNotFound(match version.filter(|&v| v != 0) {
                Some(v) => format!("{name}@{v}"),
                None => format!("'{name}' (any version)"),
            })
        })
    }

    /// Where `name@version` is in use in this process.
    pub fn usage(&self, name: &str, version: u32) -> Vec<(String, Mode)> {
        let mut out = Vec::new();
        // Pipelines of other replicas, as their activations said; this
        // process's own pipelines are judged by their actual state below.
        for ((pipeline, mode), (n, v)) in self.activations.read().expect("registry lock").iter() {
            if n == name && *v == version && self.handles.get(pipeline).is_none() {
                out.push((pipeline.clone(), *mode));
            }
        }
        out.extend(self.own_usage(name, version));
        out
    }

    /// Validates `model`, stores it as the next version of its name (or of
    /// `rename` when non-empty) and publishes it. Returns the stored model.
    pub async fn put(
        &self,
        mut model: pb::Model,
        rename: &str,
    ) -> Result<Arc<pb::Model>, RegistryError> {
        if !rename.is_empty() {
            model.name = rename.to_owned();
        }
        check_name(&model.name)?;
        model::validate(&model)?;
        let _guard = self.put_lock.lock().await;
        model.version = self.highest_version(&model.name) + 1;
        if model.created_at_unix_ms == 0 {
            model.created_at_unix_ms = now_ms();
        }
        let model = Arc::new(model);
        self.change(Event::Put(model.clone())).await?;
        Ok(model)
    }

    /// Makes `name@version` (0: latest) the `mode` model of `pipeline`, from
    /// its next batch. Returns the model and the `name@version` it replaced.
    pub async fn activate(
        &self,
        pipeline: &str,
        mode: Mode,
        name: &str,
        version: u32,
    ) -> Result<(Arc<pb::Model>, Option<String>), RegistryError> {
        let handle = self.pipeline(pipeline)?;
        let model = self.get(name, Some(version))?;
        let live = handle.live_model();
        if mode == Mode::Shadow && model.feature_spec != live.feature_spec {
            // The shadow scores the live model's features; it cannot score
            // a different spec's without state of its own.
            return Err(RegistryError::BadRequest(format!(
                "shadow {} has a different feature spec from live {}: a shadow model must share the live model's features",
                model_id(&model),
                model_id(&live)
            )));
        }
        let previous = match mode {
            Mode::Live => Some(model_id(&live)),
            Mode::Shadow => handle.shadow_model().map(|m| model_id(&m)),
        };
        let event = Event::Activate {
            pipeline: pipeline.to_owned(),
            mode,
            target: Some((model.name.clone(), model.version)),
        };
        self.change(event).await?;
        Ok((model, previous))
    }

    /// Removes `pipeline`'s shadow model; returns the one removed.
    pub async fn clear_shadow(&self, pipeline: &str) -> Result<Option<String>, RegistryError> {
        let handle = self.pipeline(pipeline)?;
        let previous = handle.shadow_model().map(|m| model_id(&m));
        let event = Event::Activate {
            pipeline: pipeline.to_owned(),
            mode: Mode::Shadow,
            target: None,
        };
        self.change(event).await?;
        Ok(previous)
    }

    /// Deletes `name@version`; refused while a pipeline of this process uses it.
    pub async fn delete(&self, name: &str, version: u32) -> Result<(), RegistryError> {
        if version == 0 {
            return Err(RegistryError::BadRequest(
                "DeleteModel needs an explicit version (> 0)".into(),
            ));
        }
        self.get(name, Some(version))?;
        if let Some((pipeline, mode)) = self.usage(name, version).into_iter().next() {
            return Err(RegistryError::InUse {
                model: version_id(name, version),
                pipeline,
                mode: mode.as_str(),
            });
        }
        // The number outlives the model: compaction may drop the model
        // and its tombstone, but not the name's highest version.
        let _guard = self.put_lock.lock().await;
        let highest = self.highest_version(name);
        self.change(Event::Versions {
            name: name.to_owned(),
            highest,
        })
        .await?;
        self.change(Event::Delete {
            name: name.to_owned(),
            version,
        })
        .await
    }

    /// The highest version `name` was ever given (0: none).
    fn highest_version(&self, name: &str) -> u32 {
        let latest = self.get(name, None).map_or(0, |m| m.version);
        let highest = self.highest.read().expect("registry lock");
        latest.max(highest.get(name).copied().unwrap_or(0))
    }

    /// Publishes `event`, then applies it at the offset the topic gave it.
    async fn change(&self, event: Event) -> Result<(), RegistryError> {
        let offset = self.publish(&event).await?;
        self.apply_at(event, offset)
    }

    fn pipeline(&self, name: &str) -> Result<PipelineHandle, RegistryError> {
        self.handles
            .get(name)
            .ok_or_else(|| RegistryError::PipelineNotFound(name.to_owned()))
    }

    /// Publishes `event`; returns its offset in the topic (`None` when
    /// local only).
    async fn publish(&self, event: &Event) -> Result<Option<i64>, RegistryError> {
        let Some(topic) = &self.topic else {
            return Ok(None);
        };
        let (key, value) = event.encode();
        let mut record: FutureRecord<'_, String, Vec<u8>> = FutureRecord::to(&topic.name).key(&key);
        if let Some(v) = &value {
            record = record.payload(v);
        }
        topic
            .producer
            .send(record, Duration::from_secs(10))
            .await
            .map(|delivery| Some(delivery.offset))
            .map_err(|(e, _)| RegistryError::Publish {
                topic: topic.name.clone(),
                message: e.to_string(),
            })
    }

    /// Applies one event to the cache and to this process's pipelines.
    /// Idempotent: an event already reflected changes nothing.
    pub fn apply(&self, event: Event) -> Result<(), RegistryError> {
        self.apply_at(event, None)
    }

    /// [`Self::apply`] for the event at `offset` of the topic: ignored if
    /// an event of the same key at a later offset was applied already.
    pub fn apply_at(&self, event: Event, offset: Option<i64>) -> Result<(), RegistryError> {
        // Names from the topic become file names: one written by anything
        // but this API (`../x`) must not reach outside the cache folder.
        match &event {
            Event::Put(model) => check_name(&model.name)?,
            Event::Delete { name, .. } | Event::Versions { name, .. } => check_name(name)?,
            Event::Activate { .. } => {}
        }
        if let Some(offset) = offset {
            let mut applied = self.applied.lock().expect("registry lock");
            let last = applied.entry(event.key()).or_insert(offset);
            if *last > offset {
                tracing::debug!(key = %event.key(), offset, later = *last, "registry event superseded");
                return Ok(());
            }
            *last = offset;
        }
        match event {
            Event::Put(model) => {
                self.raise_highest(&model.name, model.version);
                self.unconfirmed
                    .lock()
                    .expect("registry lock")
                    .remove(&(model.name.clone(), model.version));
                let path = self.path_of(&model.name, model.version);
                model::save(&model, &path)?;
                let mut models = self.models.write().expect("registry lock");
                models.insert((model.name.clone(), model.version), model);
            }
            Event::Versions { name, highest } => self.raise_highest(&name, highest),
            Event::Delete { name, version } => {
                self.raise_highest(&name, version);
                if let Some((pipeline, mode)) = self.own_usage(&name, version).into_iter().next() {
                    // Deleted through a replica that did not know this
                    // process scores with it: removing the file would break
                    // this pipeline's next start.
                    tracing::warn!(model = %version_id(&name, version), pipeline, mode = mode.as_str(), "model deleted in the registry but used here; kept in this process until it is replaced");
                    return Ok(());
                }
                let path = self.path_of(&name, version);
                if path.exists() {
                    std::fs::remove_file(&path).map_err(|source| RegistryError::Io {
                        path: path.display().to_string(),
                        source,
                    })?;
                }
                self.models
                    .write()
                    .expect("registry lock")
                    .remove(&(name, version));
            }
            Event::Activate {
                pipeline,
                mode,
                target,
            } => {
                {
                    let mut activations = self.activations.write().expect("registry lock");
                    let slot = (pipeline.clone(), mode);
                    match &target {
                        Some(t) => activations.insert(slot, t.clone()),
                        None => activations.remove(&slot),
                    };
                }
                // Pipelines this process does not run are some other
                // replica's business.
                let Some(handle) = self.handles.get(&pipeline) else {
                    return Ok(());
                };
                let model = match &target {
                    Some((name, version)) => Some(self.get(name, Some(*version))?),
                    None => None,
                };
                match (mode, model) {
                    (Mode::Live, Some(m)) => {
                        let live = handle.live_model();
                        if live.name != m.name || live.version != m.version {
                            handle.activate((*m).clone())?;
                            tracing::info!(pipeline, model = %model_id(&m), "live model activation applied");
                        }
                    }
                    (Mode::Live, None) => {}
                    (Mode::Shadow, next) => {
                        let current = handle.shadow_model().map(|s| model_id(&s));
                        if current != next.as_ref().map(|m| model_id(m)) {
                            handle.set_shadow(next.map(|m| (*m).clone()))?;
                            tracing::info!(pipeline, model = ?target, "shadow model change applied");
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn raise_highest(&self, name: &str, version: u32) {
        let mut highest = self.highest.write().expect("registry lock");
        let at = highest.entry(name.to_owned()).or_insert(version);
        *at = (*at).max(version);
    }

    /// Where `name@version` scores in this process's own pipelines, by
    /// their actual state.
    fn own_usage(&self, name: &str, version: u32) -> Vec<(String, Mode)> {
        let is = |m: &pb::Model| m.name == name && m.version == version;
        let mut out = Vec::new();
        for h in self.handles.all() {
            if is(&h.live_model()) {
                out.push((h.name.clone(), Mode::Live));
            }
            if h.shadow_model().is_some_and(|s| is(&s)) {
                out.push((h.name.clone(), Mode::Shadow));
            }
        }
        out
    }

    /// Once a replay has ended: cached models the topic did not carry were
    /// deleted while this process was away, and compaction has since
    /// dropped their tombstones. Removes them, but for those a pipeline
    /// here scores with.
    fn forget_unconfirmed(&self) {
        let stale = std::mem::take(&mut *self.unconfirmed.lock().expect("registry lock"));
        for (name, version) in stale {
            if let Some((pipeline, _)) = self.own_usage(&name, version).into_iter().next() {
                tracing::warn!(model = %version_id(&name, version), pipeline, "cached model not in the registry topic but used here; kept");
                continue;
            }
            let path = self.path_of(&name, version);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "stale cached model not removed");
            }
            self.models
                .write()
                .expect("registry lock")
                .remove(&(name.clone(), version));
            tracing::info!(model = %version_id(&name, version), "cached model no longer in the registry topic; removed");
        }
    }

    fn path_of(&self, name: &str, version: u32) -> PathBuf {
        self.dir
            .join(format!("{}.isoflow", version_id(name, version)))
    }

    /// Replays the registry topic up to its current end (so a restarted
    /// process has recovered every model and activation when this returns),
    /// then keeps applying new events on a background thread until
    /// `shutdown`. Without a topic, returns at once.
    pub async fn follow(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> Result<(), RegistryError> {
        let Some(topic) = &self.topic else {
            return Ok(());
        };
        let (cluster, name) = (topic.cluster.clone(), topic.name.clone());
        let registry = self.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("isoflow-registry".into())
            .spawn(move || registry.follow_blocking(&cluster, &name, shutdown, ready_tx))
            .map_err(|source| RegistryError::Io {
                path: "registry follower thread".into(),
                source,
            })?;
        ready_rx.await.unwrap_or_else(|_| {
            Err(RegistryError::BadRequest(
                "registry follower stopped during replay".into(),
            ))
        })
    }

    fn follow_blocking(
        &self,
        cluster: &kafka::Cluster,
        topic: &str,
        shutdown: CancellationToken,
        ready: tokio::sync::oneshot::Sender<Result<(), RegistryError>>,
    ) {
        let consumer = match self.assign_from_start(cluster, topic) {
            Ok(c) => c,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        // Replay: read until every partition reaches the end it had at start.
        let mut ends = match kafka::TopicEnds::of(&consumer, topic) {
            Ok(ends) => ends,
            Err(e) => {
                let _ = ready.send(Err(e.into()));
                return;
            }
        };
        let mut ready = Some(ready);
        let mut replayed = 0usize;
        while !shutdown.is_cancelled() {
            if ends.reached() {
                if let Some(r) = ready.take() {
                    self.forget_unconfirmed();
                    tracing::info!(
                        topic,
                        events = replayed,
                        models = self.list("").len(),
                        "registry replayed"
                    );
                    let _ = r.send(Ok(()));
                }
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    ends.passed(m.partition(), m.offset());
                    replayed += 1;
                    let event = Event::decode(m.key().unwrap_or_default(), m.payload());
                    match event
                        .map_err(RegistryError::BadRequest)
                        .and_then(|e| self.apply_at(e, Some(m.offset())))
                    {
                        Ok(()) => {}
                        Err(e) => {
                            tracing::warn!(topic, offset = m.offset(), error = %e, "registry event not applied")
                        }
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(topic, error = %e, "registry consumer error; retrying")
                }
                None => {}
            }
        }
    }

    fn assign_from_start(
        &self,
        cluster: &kafka::Cluster,
        topic: &str,
    ) -> Result<BaseConsumer, RegistryError> {
        // Replicas must see a change within a second.
        let settings = [("fetch.wait.max.ms", "50")];
        Ok(kafka::consumer_from_start(cluster, topic, &settings)?)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn delete_respects_activations_of_pipelines_other_replicas_run() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let registry = runtime
            .block_on(ModelRegistry::open(
                dir.path().into(),
                &crate::kafka::Cluster::default(),
                "",
                Arc::new(Handles::default()),
            ))
            .unwrap();
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fraud.isoflow");
        let m = model::load(&file).unwrap();
        registry.seed(&m);
        // Another replica's pipeline, known only through the topic.
        registry
            .apply(Event::Activate {
                pipeline: "elsewhere".into(),
                mode: Mode::Shadow,
                target: Some((m.name.clone(), m.version)),
            })
            .unwrap();
        let refused = runtime
            .block_on(registry.delete(&m.name, m.version))
            .unwrap_err();
        assert!(refused.to_string().contains("elsewhere"), "{refused}");
        // Once cleared there, the delete goes through.
        registry
            .apply(Event::Activate {
                pipeline: "elsewhere".into(),
                mode: Mode::Shadow,
                target: None,
            })
            .unwrap();
        runtime
            .block_on(registry.delete(&m.name, m.version))
            .unwrap();
    }

    #[test]
    fn names_from_the_topic_never_leave_the_cache_folder() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cache");
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let registry = runtime
            .block_on(ModelRegistry::open(
                dir.clone(),
                &crate::kafka::Cluster::default(),
                "",
                Arc::new(Handles::default()),
            ))
            .unwrap();
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fraud.isoflow");
        let mut m = model::load(&file).unwrap();
        m.name = "../escaped".into();
        let e = registry.apply(Event::Put(Arc::new(m))).unwrap_err();
        assert!(e.to_string().contains("model name '../escaped'"), "{e}");
        let outside = std::fs::read_dir(root.path()).unwrap().count();
        assert_eq!(outside, 1, "only the cache folder");
        let e = registry
            .apply(Event::Delete {
                name: "../cache/x".into(),
                version: 1,
            })
            .unwrap_err();
        assert!(e.to_string().contains("model name"), "{e}");
    }

    #[test]
    fn pipelines_name_models_by_file_or_registry_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fraud.isoflow");
        let mut m = model::load(&file).unwrap();
        for v in [1, 2, 10] {
            m.version = v;
            model::save(&m, &dir.path().join(format!("fraud@{v}.isoflow"))).unwrap();
        }
        assert_eq!(resolve_model(&file, dir.path()).unwrap().name, m.name);
        assert_eq!(
            resolve_model(Path::new("fraud"), dir.path())
                .unwrap()
                .version,
            10
        );
        assert_eq!(
            resolve_model(Path::new("fraud@2"), dir.path())
                .unwrap()
                .version,
            2
        );
        let err = resolve_model(Path::new("fraud@3"), dir.path()).unwrap_err();
        assert!(
            err.to_string()
                .contains("no model 'fraud@3' in the registry cache"),
            "{err}"
        );
        let err = resolve_model(Path::new("nope.isoflow"), dir.path()).unwrap_err();
        assert!(err.to_string().contains("nope.isoflow"), "{err}");
    }

    use super::*;
    use std::path::Path;

    /// A local registry in `dir` with the pipelines of `handles`, and the
    /// shipped fraud model.
    fn local(dir: &Path, handles: Arc<Handles>) -> (Arc<ModelRegistry>, pb::Model) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let cluster = crate::kafka::Cluster::default();
        let registry = runtime
            .block_on(ModelRegistry::open(dir.into(), &cluster, "", handles))
            .unwrap();
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fraud.isoflow");
        (registry, model::load(&file).unwrap())
    }

    /// Alert and score messages name the model by `name@version`: a number
    /// once given must never name another model, even once deleted.
    #[test]
    fn deleting_the_latest_version_does_not_free_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let (registry, m) = local(dir.path(), Arc::new(Handles::default()));
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let put = |m: &pb::Model| runtime.block_on(registry.put(m.clone(), "x")).unwrap();
        assert_eq!(put(&m).version, 1);
        assert_eq!(put(&m).version, 2);
        runtime.block_on(registry.delete("x", 2)).unwrap();
        assert_eq!(put(&m).version, 3);
        // Compaction dropped x@4 and its tombstone; the topic keeps its number.
        registry
            .apply_at(
                Event::Versions {
                    name: "x".into(),
                    highest: 4,
                },
                Some(9),
            )
            .unwrap();
        assert_eq!(put(&m).version, 5);
    }

    /// Two activations published close together apply in topic order,
    /// whichever request applies its own first.
    #[test]
    fn activations_apply_in_topic_order() {
        let dir = tempfile::tempdir().unwrap();
        let (registry, mut m) = local(dir.path(), Arc::new(Handles::default()));
        for v in [1, 2] {
            m.version = v;
            registry.apply(Event::Put(Arc::new(m.clone()))).unwrap();
        }
        let activate = |version, offset| {
            let event = Event::Activate {
                pipeline: "elsewhere".into(),
                mode: Mode::Live,
                target: Some((m.name.clone(), version)),
            };
            registry.apply_at(event, Some(offset)).unwrap();
        };
        // The later one (offset 8) is applied first; the earlier arrives late.
        activate(2, 8);
        activate(1, 7);
        assert_eq!(registry.usage(&m.name, 2).len(), 1);
        assert!(registry.usage(&m.name, 1).is_empty());
        // Its echo changes nothing either.
        activate(2, 8);
        assert_eq!(registry.usage(&m.name, 2).len(), 1);
    }

    /// A delete published by a replica that did not know this process
    /// scores with the model must not take the model from under it.
    #[test]
    fn a_delete_keeps_a_model_this_process_scores_with() {
        let dir = tempfile::tempdir().unwrap();
        let handles = Arc::new(Handles::default());
        let (registry, mut m) = local(dir.path(), handles.clone());
        m.version = 4;
        registry.apply(Event::Put(Arc::new(m.clone()))).unwrap();
        let metrics = Arc::new(crate::metrics::PipelineMetrics::default());
        handles.add(PipelineHandle::new(
            "fraud",
            "tx",
            metrics,
            Arc::new(m.clone()),
        ));
        let file = dir.path().join(format!("{}.isoflow", model_id(&m)));
        assert!(file.exists());
        let delete = Event::Delete {
            name: m.name.clone(),
            version: 4,
        };
        registry.apply_at(delete, Some(3)).unwrap();
        assert!(file.exists(), "the file a pipeline here loads");
        assert!(registry.get(&m.name, Some(4)).is_ok());
    }

    /// With a registry topic, the cache folder holds copies: a cached model
    /// that the replay did not carry was deleted while this process was
    /// away (compaction then dropped its tombstone) and must not come back.
    #[test]
    fn cached_models_the_replay_did_not_carry_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let (registry, mut m) = local(dir.path(), Arc::new(Handles::default()));
        for v in [1, 2] {
            m.version = v;
            registry.apply(Event::Put(Arc::new(m.clone()))).unwrap();
        }
        // As `open` with a topic leaves them: both cached, neither replayed.
        *registry.unconfirmed.lock().unwrap() = [(m.name.clone(), 1), (m.name.clone(), 2)].into();
        m.version = 2;
        registry
            .apply_at(Event::Put(Arc::new(m.clone())), Some(0))
            .unwrap();
        registry.forget_unconfirmed();
        let left: Vec<u32> = registry.list("").iter().map(|m| m.version).collect();
        assert_eq!(left, [2]);
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 1);
    }

    #[test]
    fn events_round_trip_through_key_and_value() {
        let m = pb::Model {
            name: "fraud".into(),
            version: 3,
            ..Default::default()
        };
        let (key, value) = Event::Put(Arc::new(m)).encode();
        assert_eq!(key, "model/fraud@3");
        assert!(value.is_some());
        let (key, value) = Event::Delete {
            name: "fraud".into(),
            version: 3,
        }
        .encode();
        assert!(matches!(
            Event::decode(key.as_bytes(), value.as_deref()),
            Ok(Event::Delete { version: 3, .. })
        ));
        let (key, value) = Event::Activate {
            pipeline: "p1".into(),
            mode: Mode::Shadow,
            target: Some(("fraud".into(), 2)),
        }
        .encode();
        assert_eq!(key, "activation/p1/shadow");
        match Event::decode(key.as_bytes(), value.as_deref()).unwrap() {
            Event::Activate {
                pipeline,
                mode: Mode::Shadow,
                target: Some((n, 2)),
            } => assert_eq!((pipeline.as_str(), n.as_str()), ("p1", "fraud")),
            other => panic!("{other:?}"),
        }
        let (key, value) = Event::Versions {
            name: "fraud".into(),
            highest: 9,
        }
        .encode();
        assert!(matches!(
            Event::decode(key.as_bytes(), value.as_deref()),
            Ok(Event::Versions { highest: 9, .. })
        ));
        assert!(Event::decode(b"versions/fraud", None).is_err());
        assert!(Event::decode(b"other/x", None).is_err());
    }

    #[test]
    fn names_and_ids_are_checked() {
        assert!(check_name("fraud-v2.1").is_ok());
        assert!(check_name("a/b").is_err());
        assert!(check_name("").is_err());
        assert_eq!(parse_id("fraud@7").unwrap(), ("fraud".into(), Some(7)));
        assert_eq!(parse_id("fraud").unwrap(), ("fraud".into(), None));
        assert!(parse_id("fraud@x").is_err());
    }
}
