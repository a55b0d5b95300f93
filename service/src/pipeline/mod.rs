//! The streaming service: Kafka records in, alerts and DLQ messages out.
//!
//! Each configured pipeline is a thread and two tasks. The collecting
//! thread polls Kafka, reads each record into feature columns as it arrives
//! (bad records to the DLQ) and forms batches (N records or T ms, whichever
//! first); the pipeline task builds features → scores on the GPU or CPU on
//! a blocking thread → publishes alerts, DLQ and optional score messages;
//! the committer task waits for every acknowledgement of a batch, then
//! commits its offsets. The three overlap, batch after batch. Batches are
//! finished in order, so offsets only ever advance over records whose output
//! the broker has acknowledged: at-least-once, with alert ids that are
//! stable across replays.

mod batch;
pub(crate) mod changelog;
mod collect;
mod commit;
mod control;
mod feedback;
mod fetch;
mod parse;

pub use control::{Handles, PipelineHandle, ServiceRuntime};

use crate::config::{Config, PipelineConfig};
use crate::detector::{DetectError, Detector, DetectorOptions};
use crate::engine::{Backend, Engine};
use crate::features::FeaturePipeline;
use crate::forest::PackedForest;
use crate::input::RowReader;
use crate::kafka::{self, KafkaError};
use crate::metrics::{Metrics, PipelineMetrics};
use crate::model::ModelError;
use crate::pb;
use crate::score::cpu::Attribution;
use crate::score::{ScoreError, Scorer};
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureProducer;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Why the service stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A pipeline's model could not be loaded.
    #[error("pipeline '{pipeline}': {source}")]
    Model {
        /// Pipeline name.
        pipeline: String,
        /// The model problem.
        source: ModelError,
    },
    /// Kafka set-up or client failure.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// Scoring failed (e.g. GPU device lost).
    #[error("pipeline '{pipeline}': scoring failed: {source}")]
    Score {
        /// Pipeline name.
        pipeline: String,
        /// The scorer's error.
        source: ScoreError,
    },
    /// The detector of a model could not be built, or failed.
    #[error("pipeline '{pipeline}': {source}")]
    Detect {
        /// Pipeline name.
        pipeline: String,
        /// The detector's error.
        source: DetectError,
    },
    /// The broker did not acknowledge output; offsets were not committed, so
    /// the batch will be processed again on restart.
    #[error(
        "pipeline '{pipeline}': publishing to {topic} failed: {message}; offsets not committed"
    )]
    Delivery {
        /// Pipeline name.
        pipeline: String,
        /// Output topic.
        topic: String,
        /// Client message.
        message: String,
    },
    /// The pipeline's collecting thread could not start.
    #[error("pipeline '{pipeline}': starting the consumer thread: {source}")]
    Thread {
        /// Pipeline name.
        pipeline: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The model registry did not finish replaying its topic in time.
    #[error("pipeline '{pipeline}': the model registry did not finish its replay within {limit_s} s; no record was scored")]
    ReplayTimeout {
        /// Pipeline name.
        pipeline: String,
        /// The limit, seconds.
        limit_s: u64,
    },
    /// The pipeline's collecting thread died (a panic), which must not pass
    /// for a clean end of input.
    #[error("pipeline '{pipeline}': the consumer thread {message}")]
    Collector {
        /// Pipeline name.
        pipeline: String,
        /// What happened to it.
        message: String,
    },
    /// Draining did not finish within the configured deadline.
    #[error("pipeline '{0}': in-flight batch did not finish before the drain deadline")]
    DrainTimeout(String),
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// Longest a pipeline waits for the model registry's replay before its
/// first record.
const REPLAY_LIMIT: Duration = Duration::from_secs(60);

/// A trained forest's fixed scorer and attribution walk (see
/// [`ScoringState::packed`]).
type Packed = (Option<Box<dyn Scorer>>, Option<Attribution>);

/// The detector of one pipeline and what explains its alerts; moved onto a
/// blocking thread for each batch and back.
pub(crate) struct ScoringState {
    /// Features, forest, smoothing, threshold and rules: the scoring
    /// sequence `isoflow score` and the gRPC `Score` call run too.
    pub(crate) detector: Detector,
    /// Shares of the alerting rows' features, on the CPU whatever scores;
    /// none before a cold start's first trees.
    attribution: Option<Attribution>,
    /// The learning forest's regrowths when `attribution` was built.
    attributed: Option<u64>,
}

impl ScoringState {
    /// The state of a pipeline scoring with `model` as `options` say.
    fn new(
        model: Arc<pb::Model>,
        engine: &Engine,
        options: &DetectorOptions,
    ) -> Result<Self, DetectError> {
        let (scorer, attribution) = Self::packed(&model, engine, options)?;
        Ok(Self {
            detector: Detector::with_scorer(model, engine.clone(), options, scorer)?,
            attribution,
            attributed: None,
        })
    }

    /// A model's trained forest, packed once for both of its uses: the
    /// fixed scorer (none when the forest learns, which builds its own) and
    /// the attribution walk. Neither when there is no trained forest.
    fn packed(
        model: &pb::Model,
        engine: &Engine,
        options: &DetectorOptions,
    ) -> Result<Packed, DetectError> {
        if model.forest.as_ref().is_none_or(|f| f.trees.is_empty()) {
            return Ok((None, None));
        }
        let forest = PackedForest::from_model(model)?;
        let scorer = match options.learn {
            true => None,
            false => Some(engine.scorer(&forest)?),
        };
        Ok((scorer, Some(Attribution::new(forest))))
    }

    /// The attribution of the forest as it is now: a learning forest's
    /// alerts are explained by the trees at the end of their batch.
    pub(crate) fn attribution(&mut self) -> Option<&Attribution> {
        if let Some((forest, updates)) = self.detector.learnt_forest() {
            if self.attributed != Some(updates) {
                self.attribution = Some(Attribution::new(forest.clone()));
                self.attributed = Some(updates);
            }
        }
        self.attribution.as_ref()
    }

    /// The model scoring now.
    pub(crate) fn model(&self) -> &pb::Model {
        self.detector.model()
    }

    /// Swaps in a new live model. Per-key state survives when the feature
    /// spec is unchanged; otherwise it starts afresh.
    fn swap_model(&mut self, model: Arc<pb::Model>, engine: &Engine) -> Result<(), DetectError> {
        let (scorer, attribution) = Self::packed(&model, engine, self.detector.options())?;
        if !self.detector.swap_model(model, scorer)? {
            let model = self.detector.model();
            tracing::warn!(model = %model.name, version = model.version, "feature spec changed: per-key state restarts");
        }
        self.attribution = attribution;
        self.attributed = None;
        Ok(())
    }
}

/// A shadow model: judges the live model's features, counted, never
/// alerting.
pub(crate) struct Shadow {
    pub(crate) detector: Detector,
}

/// Everything a pipeline task needs.
pub(crate) struct PipelineContext {
    pub(crate) handle: PipelineHandle,
    /// Every pipeline's handles: the registry replay gate.
    pub(crate) handles: Arc<Handles>,
    pub(crate) engine: Engine,
    pub(crate) slot_capacity: usize,
    pub(crate) config: PipelineConfig,
    pub(crate) producer: FutureProducer,
    pub(crate) metrics: Arc<PipelineMetrics>,
    pub(crate) max_message_bytes: usize,
    /// The producer's largest message (`message.max.bytes`): DLQ copies are
    /// bounded by it.
    pub(crate) produce_limit: usize,
    /// Where per-key state is kept, when it is.
    pub(crate) changelog: Option<changelog::Changelog>,
    /// With a changelog, the producer its checkpoints go through: a client
    /// of their own, so that a checkpoint's burst of state messages does
    /// not queue the alerts behind it on the outputs' connection.
    pub(crate) state_producer: Option<FutureProducer>,
}

/// Runs every configured pipeline until `shutdown` is cancelled (then drains:
/// finishes the batch in hand, publishes, commits) or one of them fails.
pub async fn run(
    config: Config,
    process_metrics: Arc<Metrics>,
    handles: Arc<Handles>,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    config.validate()?;
    let backend: Backend = config
        .service
        .backend
        .parse()
        .map_err(crate::config::ConfigError::Invalid)?;
    let mut states = Vec::new();
    for p in &config.pipelines {
        let model = match p.preset()? {
            Some(preset) => preset
                .cold_model(&p.key, &p.time, &p.fields, p.seed.unwrap_or(0))
                .map_err(|e| {
                    crate::config::ConfigError::Invalid(format!("pipeline '{}': {e}", p.name))
                })?,
            None => crate::model::reference::resolve_model(&p.model, &config.grpc.models_dir)
                .map_err(|source| PipelineError::Model {
                    pipeline: p.name.clone(),
                    source,
                })?,
        };
        states.push(model);
    }
    let engine = tokio::task::spawn_blocking(move || Engine::select(backend))
        .await
        .expect("backend selection does not panic")
        .map_err(|source| PipelineError::Score {
            pipeline: "*".into(),
            source,
        })?;
    *process_metrics.backend.lock().expect("metrics lock") = engine.name().to_owned();
    handles.set_engine(engine.clone());
    let mut topics: Vec<String> = Vec::new();
    for p in &config.pipelines {
        topics.extend([
            p.input_topic.clone(),
            p.alerts_topic.clone(),
            p.dlq_topic.clone(),
        ]);
        for optional in [&p.scores_topic, &p.shadow_scores_topic, &p.feedback_topic] {
            if !optional.is_empty() {
                topics.push(optional.clone());
            }
        }
    }
    let cluster = config.kafka.cluster();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        kafka::check_topics_on(&cluster, &refs, Duration::from_secs(10))
    })
    .await
    .expect("metadata probe does not panic")?;
    let producer = kafka::producer(&config.kafka.brokers, &config.kafka.properties)?;
    let produce_limit = config
        .kafka
        .properties
        .get("message.max.bytes")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(crate::dlq::PRODUCER_MESSAGE_MAX_BYTES);
    let drain = Duration::from_secs(config.service.drain_timeout_s);
    let failed = shutdown.child_token();
    let mut tasks = tokio::task::JoinSet::new();
    // Changelogs first: their seeds must be pinned before any key is hashed.
    let mut changelogs = Vec::new();
    for p in &config.pipelines {
        changelogs.push(match p.state_changelog {
            true => {
                let cluster = config.kafka.cluster();
                let group = &config.kafka.group_id;
                changelog::Changelog::open(&cluster, group, &p.name, &p.input_topic).await?
            }
            false => None,
        });
    }
    for ((p, model), changelog) in config.pipelines.iter().zip(states).zip(changelogs) {
        let options = DetectorOptions {
            learn: p.learn,
            seed: p.seed,
            slot_capacity: config.service.slot_capacity,
            track_state: changelog.is_some(),
        };
        let state = ScoringState::new(Arc::new(model), &engine, &options).map_err(|source| {
            PipelineError::Detect {
                pipeline: p.name.clone(),
                source,
            }
        })?;
        let feedback = match p.feedback_topic.as_str() {
            "" => None,
            _ if !state.detector.pipeline().uses_feedback() => {
                return Err(crate::config::ConfigError::Invalid(format!(
                    "pipeline '{}': feedback_topic '{}': the model has no key_label_risk feature to use it",
                    p.name, p.feedback_topic
                ))
                .into())
            }
            topic => Some(feedback::FeedbackTopic::open(&config.kafka.cluster(), topic, &p.name)?),
        };
        // One group per pipeline: a replica joining for one topic must not
        // pause every other pipeline with a group-wide rebalance.
        let consumer: fetch::PipelineConsumer = kafka::consumer_with_context(
            &config.kafka.brokers,
            &format!("{}.{}", config.kafka.group_id, p.name),
            config.kafka.session_timeout_ms,
            &config.kafka.properties,
            fetch::Forwarding::default(),
        )?;
        consumer
            .subscribe(&[p.input_topic.as_str()])
            .map_err(KafkaError::from)?;
        let metrics = process_metrics.pipeline(&p.name);
        let handle = PipelineHandle::new(
            &p.name,
            &p.input_topic,
            metrics.clone(),
            state.detector.model().clone(),
        );
        handles.add(handle.clone());
        let ctx = PipelineContext {
            handle,
            handles: handles.clone(),
            engine: engine.clone(),
            slot_capacity: config.service.slot_capacity,
            config: p.clone(),
            producer: producer.clone(),
            metrics,
            max_message_bytes: config.service.max_message_bytes,
            produce_limit,
            state_producer: match changelog {
                Some(_) => Some(kafka::producer(
                    &config.kafka.brokers,
                    &config.kafka.properties,
                )?),
                None => None,
            },
            changelog,
        };
        tracing::info!(pipeline = %p.name, topic = %p.input_topic, model = %state.model().name, version = state.model().version, learn = p.learn, backend = engine.name(), "pipeline starting");
        let stop = failed.clone();
        tasks.spawn(async move {
            let consumer = Arc::new(consumer);
            let probe_stop = stop.child_token();
            let probe = tokio::spawn(probe_lag(
                consumer.clone(),
                ctx.metrics.clone(),
                probe_stop.clone(),
            ));
            let result = run_pipeline(ctx, &consumer, (state, feedback), stop.clone(), drain).await;
            probe_stop.cancel();
            let _ = probe.await;
            if result.is_err() {
                stop.cancel();
            }
            result
        });
    }
    handles.mark_started();
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("pipeline task does not panic") {
            Ok(()) => {}
            Err(e) => {
                tracing::error!(error = %e, "pipeline stopped");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The score → publish → commit loop of one pipeline, fed by its collector.
async fn run_pipeline(
    ctx: PipelineContext,
    consumer: &Arc<fetch::PipelineConsumer>,
    (state, mut feedback): (ScoringState, Option<feedback::FeedbackTopic>),
    shutdown: CancellationToken,
    drain: Duration,
) -> Result<(), PipelineError> {
    let mut state = Some(Box::new(state));
    let mut live = ctx.handle.live_receiver();
    let mut shadow_rx = ctx.handle.shadow_receiver();
    let mut shadow: Option<Shadow> = None;
    // Live models not yet active, in deployment order, with the fields each
    // reads.
    let mut pending: Vec<(crate::input::Wanted, Arc<pb::Model>)> = Vec::new();
    let parser = parse::Parser {
        reader: Arc::new(RowReader::new(
            state
                .as_ref()
                .expect("state is home")
                .detector
                .pipeline()
                .wanted(),
        )),
        max_bytes: ctx.max_message_bytes,
    };
    // Records wait for the registry's replay: the model it activates is the
    // one that scores them.
    let waited = Instant::now();
    tokio::select! {
        replayed = ctx.handles.wait_replayed(REPLAY_LIMIT) => if !replayed {
            return Err(PipelineError::ReplayTimeout {
                pipeline: ctx.config.name.clone(),
                limit_s: REPLAY_LIMIT.as_secs(),
            });
        },
        _ = shutdown.cancelled() => return Ok(()),
    }
    if waited.elapsed() > Duration::from_millis(1) {
        tracing::info!(pipeline = %ctx.config.name, waited_ms = waited.elapsed().as_millis() as u64, "registry replayed; taking records");
    }
    // Labels the topic holds now come first: a restart scores with the
    // label risk they give, as the run before it did.
    if let Some(topic) = feedback.take() {
        let s = state.as_mut().expect("state is home");
        let wanted = s.detector.pipeline().feedback_wanted();
        let metrics = ctx.metrics.clone();
        let (topic, caught_up) = tokio::task::spawn_blocking(move || {
            let mut topic = topic;
            let caught = topic.catch_up(&wanted, &metrics, REPLAY_LIMIT);
            (topic, caught)
        })
        .await
        .expect("reading labels does not panic");
        let (labels, whole) = caught_up?;
        let queued = s.detector.add_feedback(&labels);
        if whole {
            tracing::info!(pipeline = %ctx.config.name, labels = queued, "feedback topic read; taking records");
        } else {
            tracing::warn!(pipeline = %ctx.config.name, labels = queued, limit_s = REPLAY_LIMIT.as_secs(), "feedback topic not read to its end in time; later labels apply as they come");
        }
        feedback = Some(topic);
    }
    let mut collector = collect::Collector::spawn(
        &ctx.config.name,
        consumer.clone(),
        (
            ctx.config.batch_max_records,
            Duration::from_millis(ctx.config.batch_max_ms),
            ctx.config.batch_max_bytes,
        ),
        parser,
        ctx.handle.live_receiver(),
        (ctx.handle.metrics.clone(), ctx.changelog.clone()),
    )
    .map_err(|source| PipelineError::Thread {
        pipeline: ctx.config.name.clone(),
        source,
    })?;
    let state_output =
        ctx.changelog
            .clone()
            .zip(ctx.state_producer.clone())
            .map(|(changelog, producer)| commit::StateOutput {
                changelog,
                producer,
            });
    let mut committer = commit::Committer::spawn(
        ctx.handle.clone(),
        &ctx.config,
        consumer.clone(),
        state_output,
    );
    let interval = Duration::from_millis(ctx.config.checkpoint_ms);
    // Batches handed to the committer since the last checkpoint, and when
    // that was.
    let mut unchecked = 0usize;
    let mut checked_at = Instant::now();
    // Set when shutdown is asked for: everything after it, whatever the
    // pipeline is doing (scoring, waiting on a full producer queue or on
    // acknowledgements), must end by then.
    let mut deadline: Option<Instant> = None;
    let name = ctx.config.name.as_str();
    loop {
        let checkpoint_due = ctx.changelog.is_some() && unchecked > 0;
        let batch = if deadline.is_some() {
            collector.next().await
        } else {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    begin_drain(&mut deadline, drain, name);
                    // Drain: the collector hands over what it holds, then ends.
                    collector.stop();
                    continue;
                }
                // No batch for a while: what was done is checkpointed anyway.
                _ = tokio::time::sleep_until(checked_at + interval), if checkpoint_due => {
                    let Ok(taken) = checkpoint(&ctx, consumer, &mut state, &mut committer).await? else {
                        break;
                    };
                    // Not taken: tried again an interval later.
                    unchecked = if taken { 0 } else { unchecked };
                    checked_at = Instant::now();
                    continue;
                }
                batch = collector.next() => batch,
            }
        };
        let Some(batch) = batch else {
            if deadline.is_none() {
                // The collecting thread ended with nobody asking it to.
                return Err(collector.failure(name));
            }
            break;
        };
        // Model changes take effect here, between batches. A model that
        // reads other fields goes live with the first batch parsed for it:
        // batches collected before it are scored by the model they were
        // parsed for.
        if live.has_changed().unwrap_or(false) {
            // The collecting thread follows the live model on its own.
            let model = live.borrow_and_update().clone();
            pending.push((FeaturePipeline::wanted_for(&model), model));
        }
        // The newest model this batch was parsed for goes live, and the ones
        // deployed before it are passed over.
        if let Some(at) = pending
            .iter()
            .rposition(|(w, _)| w == batch.reader.wanted())
        {
            let (_, model) = pending
                .drain(..=at)
                .next_back()
                .expect("drained at least one");
            let s = state.as_mut().expect("state is home between batches");
            let (name, version) = (model.name.clone(), model.version);
            s.swap_model(model, &ctx.engine)
                .map_err(|source| PipelineError::Detect {
                    pipeline: ctx.config.name.clone(),
                    source,
                })?;
            tracing::info!(pipeline = %ctx.config.name, model = %name, version, "live model activated");
        }
        if shadow_rx.has_changed().unwrap_or(false) {
            let next = shadow_rx.borrow_and_update().clone();
            shadow = match next {
                Some(model) => {
                    let options = DetectorOptions {
                        slot_capacity: ctx.slot_capacity,
                        ..Default::default()
                    };
                    tracing::info!(pipeline = %ctx.config.name, model = %model.name, version = model.version, "shadow model set");
                    let detector =
                        Detector::new(model, ctx.engine.clone(), &options).map_err(|source| {
                            PipelineError::Detect {
                                pipeline: ctx.config.name.clone(),
                                source,
                            }
                        })?;
                    Some(Shadow { detector })
                }
                None => None,
            };
        }
        if let Some(topic) = feedback.as_mut() {
            let s = state.as_mut().expect("state is home between batches");
            let labels = topic.take(&s.detector.pipeline().feedback_wanted(), &ctx.metrics);
            if labels.rows > 0 {
                s.detector.add_feedback(&labels);
            }
        }
        let releases = batch.moves.releases;
        let work = batch::process(&ctx, &mut state, &mut shadow, batch, |b, c| {
            collector.recycle(b, c)
        });
        let sent = within_drain(work, &shutdown, &mut deadline, drain, name).await??;
        consumer.context().releases_applied(releases);
        let pushed =
            within_drain(committer.push(sent), &shutdown, &mut deadline, drain, name).await?;
        if deadline.is_some() {
            collector.stop();
        }
        if pushed.is_err() {
            // The committer stopped on a failed delivery; close says which.
            break;
        }
        unchecked += 1;
        if ctx.changelog.is_some() && checked_at.elapsed() >= interval {
            let done = checkpoint(&ctx, consumer, &mut state, &mut committer);
            let Ok(taken) = within_drain(done, &shutdown, &mut deadline, drain, name).await??
            else {
                break;
            };
            unchecked = if taken { 0 } else { unchecked };
            checked_at = Instant::now();
        }
    }
    // What the last checkpoint did not cover: its offsets wait for it.
    if ctx.changelog.is_some() && unchecked > 0 {
        let until = deadline.unwrap_or_else(|| Instant::now() + drain);
        let done = checkpoint(&ctx, consumer, &mut state, &mut committer);
        tokio::time::timeout_at(until, done)
            .await
            .map_err(|_| PipelineError::DrainTimeout(ctx.config.name.clone()))??
            .ok();
    }
    let until = deadline.unwrap_or_else(|| Instant::now() + drain);
    tokio::time::timeout_at(until, committer.close())
        .await
        .map_err(|_| PipelineError::DrainTimeout(ctx.config.name.clone()))??;
    let m = &ctx.metrics;
    tracing::info!(
        pipeline = %ctx.config.name,
        records_in = m.records_in.load(std::sync::atomic::Ordering::Relaxed),
        scored = m.scored.load(std::sync::atomic::Ordering::Relaxed),
        dlq = m.dlq_total(),
        alerts = m.alerts.load(std::sync::atomic::Ordering::Relaxed),
        "pipeline drained and stopped"
    );
    Ok(())
}

/// Hands the committer a checkpoint of the state as of the last batch
/// handed over: the keys changed since the last one. Inside: whether one
/// was taken (none while a rebalance is under way), `Err(())` when the
/// committer stopped (its close says why).
async fn checkpoint(
    ctx: &PipelineContext,
    consumer: &fetch::PipelineConsumer,
    state: &mut Option<Box<ScoringState>>,
    committer: &mut commit::Committer,
) -> Result<Result<bool, ()>, PipelineError> {
    if !consumer.context().begin_checkpoint() {
        // A rebalance is under way: the next batch tries again.
        return Ok(Ok(false));
    }
    let mut s = state.take().expect("state is home between batches");
    // On a blocking thread: the GPU's z-score state is read back.
    let (s, changes) = tokio::task::spawn_blocking(move || {
        let changes = s.detector.take_state();
        (s, changes)
    })
    .await
    .expect("taking the state does not panic");
    let layout_of = Box::new(changelog::layouts(&s.detector));
    *state = Some(s);
    let changes = changes.map_err(|source| PipelineError::Detect {
        pipeline: ctx.config.name.clone(),
        source,
    })?;
    Ok(committer
        .checkpoint(commit::Checkpoint { changes, layout_of })
        .await
        .map(|()| true))
}

/// Starts the drain clock, once.
fn begin_drain(deadline: &mut Option<Instant>, drain: Duration, name: &str) {
    if deadline.is_none() {
        tracing::info!(pipeline = %name, drain_timeout_s = drain.as_secs(), "draining");
        *deadline = Some(Instant::now() + drain);
    }
}

/// Awaits `work`; once shutdown is asked for (before or during it), only
/// until the drain deadline.
async fn within_drain<T>(
    work: impl std::future::Future<Output = T>,
    shutdown: &CancellationToken,
    deadline: &mut Option<Instant>,
    drain: Duration,
    name: &str,
) -> Result<T, PipelineError> {
    tokio::pin!(work);
    if deadline.is_none() {
        tokio::select! {
            biased;
            out = &mut work => return Ok(out),
            _ = shutdown.cancelled() => begin_drain(deadline, drain, name),
        }
    }
    let until = deadline.expect("set above or before");
    tokio::time::timeout_at(until, work)
        .await
        .map_err(|_| PipelineError::DrainTimeout(name.to_owned()))
}

/// Updates the consumer-lag gauge every 5 s until `stop`. Watermark
/// queries wait on the broker (tansu answers them behind a pending fetch),
/// so they run on a blocking thread of their own, never in the batch loop.
async fn probe_lag(
    consumer: Arc<fetch::PipelineConsumer>,
    metrics: Arc<PipelineMetrics>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        let (consumer, metrics) = (consumer.clone(), metrics.clone());
        let _ = tokio::task::spawn_blocking(move || update_lag(&consumer, &metrics)).await;
    }
}

/// Consumer lag: high watermark minus position, summed over assigned partitions.
fn update_lag(consumer: &fetch::PipelineConsumer, metrics: &PipelineMetrics) {
    let Ok(position) = consumer.position() else {
        return;
    };
    let mut lag = 0i64;
    for tp in position.elements() {
        let Ok((_, high)) =
            consumer.fetch_watermarks(tp.topic(), tp.partition(), Duration::from_millis(500))
        else {
            continue;
        };
        if let rdkafka::Offset::Offset(pos) = tp.offset() {
            lag += (high - pos).max(0);
        }
    }
    metrics
        .consumer_lag
        .store(lag, std::sync::atomic::Ordering::Relaxed);
    metrics.assigned_partitions.store(
        position.count() as i64,
        std::sync::atomic::Ordering::Relaxed,
    );
}
