//! Handles into running pipelines, for the gRPC API: swap the live model or
//! set a shadow model (taking effect at the next batch boundary, per-key
//! state kept when the feature spec is unchanged), and watch alerts.

use super::PipelineError;
use crate::engine::Engine;
use crate::forest::PackedForest;
use crate::metrics::PipelineMetrics;
use crate::pb;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, watch};

/// Alerts kept for slow watchers before they start missing some.
const ALERT_BUFFER: usize = 4096;

/// One running pipeline, as seen from outside.
#[derive(Clone, Debug)]
pub struct PipelineHandle {
    /// Pipeline name from the configuration.
    pub name: String,
    /// Topic it consumes.
    pub input_topic: String,
    /// Its metrics.
    pub metrics: Arc<PipelineMetrics>,
    live: watch::Sender<Arc<pb::Model>>,
    shadow: watch::Sender<Option<Arc<pb::Model>>>,
    alerts: broadcast::Sender<Arc<String>>,
}

impl PipelineHandle {
    pub(crate) fn new(
        name: &str,
        input_topic: &str,
        metrics: Arc<PipelineMetrics>,
        model: Arc<pb::Model>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            input_topic: input_topic.to_owned(),
            metrics,
            live: watch::channel(model).0,
            shadow: watch::channel(None).0,
            alerts: broadcast::channel(ALERT_BUFFER).0,
        }
    }

    /// The model scoring live traffic (after the next batch boundary, the
    /// latest one activated).
    pub fn live_model(&self) -> Arc<pb::Model> {
        self.live.borrow().clone()
    }

    /// The shadow model, if any: scored on the same records, counted in
    /// metrics, never alerting.
    pub fn shadow_model(&self) -> Option<Arc<pb::Model>> {
        self.shadow.borrow().clone()
    }

    /// Makes `model` the live model from the next batch on. Refused when it
    /// is invalid.
    pub fn activate(&self, model: pb::Model) -> Result<(), PipelineError> {
        PackedForest::from_model(&model).map_err(|source| PipelineError::Model {
            pipeline: self.name.clone(),
            source,
        })?;
        self.live.send_replace(Arc::new(model));
        Ok(())
    }

    /// Sets (or clears, with `None`) the shadow model from the next batch on.
    pub fn set_shadow(&self, model: Option<pb::Model>) -> Result<(), PipelineError> {
        if let Some(m) = &model {
            PackedForest::from_model(m).map_err(|source| PipelineError::Model {
                pipeline: self.name.clone(),
                source,
            })?;
        }
        self.shadow.send_replace(model.map(Arc::new));
        Ok(())
    }

    /// Alerts published from now on, as their JSON text.
    pub fn subscribe_alerts(&self) -> broadcast::Receiver<Arc<String>> {
        self.alerts.subscribe()
    }

    pub(crate) fn publish_alert(&self, alert: String) {
        // No watcher is fine: the alert already went to Kafka.
        if self.alerts.receiver_count() > 0 {
            let _ = self
                .alerts
                .send(Arc::new(crate::alerts::for_watchers(alert)));
        }
    }

    pub(crate) fn live_receiver(&self) -> watch::Receiver<Arc<pb::Model>> {
        self.live.subscribe()
    }

    pub(crate) fn shadow_receiver(&self) -> watch::Receiver<Option<Arc<pb::Model>>> {
        self.shadow.subscribe()
    }
}

/// Every pipeline of the process, filled in as they start, and the scoring
/// engine they share.
///
/// It holds the engine, and with it the GPU device, for as long as it lives.
/// Drop the last `Handles` only after the tokio runtime the pipelines ran on,
/// as [`ServiceRuntime`] does: NVIDIA's Vulkan driver keeps state for each
/// thread that called it and crashes in that thread's exit if the device is
/// gone by then. Dropping the runtime joins its threads; the device then goes
/// on the calling thread.
#[derive(Default)]
pub struct Handles {
    list: Mutex<Vec<PipelineHandle>>,
    engine: std::sync::OnceLock<Engine>,
    started: tokio::sync::Notify,
    /// Whether pipelines wait for a registry replay before their first
    /// record, and whether it has finished.
    replay: std::sync::OnceLock<watch::Sender<bool>>,
}

impl std::fmt::Debug for Handles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handles")
            .field("list", &self.list)
            .field("engine", &self.engine.get().map(Engine::name))
            .finish()
    }
}

impl Handles {
    /// From now on, pipelines that start take no record until
    /// [`Self::mark_replayed`]: a model registry replays its topic first, and
    /// what it activates is what scores the first record (else replayed
    /// records would get other alert ids after every restart).
    pub fn expect_replay(&self) {
        let _ = self.replay.set(watch::channel(false).0);
    }

    /// The registry's replay has finished: pipelines may take records.
    pub fn mark_replayed(&self) {
        if let Some(replay) = self.replay.get() {
            replay.send_replace(true);
        }
    }

    /// Waits until the registry replay has finished, when pipelines are to
    /// wait for one; `false` when `limit` passed first.
    pub(crate) async fn wait_replayed(&self, limit: std::time::Duration) -> bool {
        let Some(replay) = self.replay.get() else {
            return true;
        };
        let mut done = replay.subscribe();
        tokio::time::timeout(limit, done.wait_for(|&d| d))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub(crate) fn set_engine(&self, engine: Engine) {
        let _ = self.engine.set(engine);
    }

    /// The engine the pipelines score on (set once the backend is chosen).
    pub fn engine(&self) -> Option<Engine> {
        self.engine.get().cloned()
    }

    pub(crate) fn mark_started(&self) {
        self.started.notify_waiters();
        self.started.notify_one();
    }

    /// Waits until every configured pipeline has its handle (returns at once
    /// if that already happened).
    pub async fn wait_started(&self, pipelines: usize) {
        loop {
            let notified = self.started.notified();
            if self.all().len() >= pipelines && self.engine.get().is_some() {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn add(&self, handle: PipelineHandle) {
        self.list.lock().expect("handles lock").push(handle);
    }

    /// All pipelines.
    pub fn all(&self) -> Vec<PipelineHandle> {
        self.list.lock().expect("handles lock").clone()
    }

    /// The pipeline called `name`.
    pub fn get(&self, name: &str) -> Option<PipelineHandle> {
        self.list
            .lock()
            .expect("handles lock")
            .iter()
            .find(|h| h.name == name)
            .cloned()
    }
}

/// A tokio runtime for pipelines and their [`Handles`], which it gives up in
/// the order the GPU needs: the runtime and its threads first, then the
/// handles and the engine they hold.
pub struct ServiceRuntime {
    // Fields drop in the order they are declared; the runtime is taken
    // out and shut down first (see Drop).
    runtime: Option<tokio::runtime::Runtime>,
    handles: Arc<Handles>,
}

/// Longest wait, at exit, for blocking work still running (a scoring call
/// stuck past the drain deadline): the process exits anyway after it.
const BLOCKING_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

impl Drop for ServiceRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(BLOCKING_GRACE);
        }
    }
}

impl ServiceRuntime {
    /// A multi-threaded runtime and empty handles.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            runtime: Some(tokio::runtime::Runtime::new()?),
            handles: Arc::default(),
        })
    }

    /// The handles to give the pipelines.
    pub fn handles(&self) -> Arc<Handles> {
        self.handles.clone()
    }

    /// Runs `future` to completion on the runtime.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime
            .as_ref()
            .expect("the runtime lives until drop")
            .block_on(future)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The buffer of alerts kept for watchers holds no large records: an
    /// alert embedding a 60 KiB record reaches them without it, sized.
    #[test]
    fn watched_alerts_are_bounded_in_bytes() {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fraud.isoflow");
        let model = crate::model::load(&file).unwrap();
        let handle = PipelineHandle::new("fraud", "tx", Arc::default(), Arc::new(model));
        let mut watcher = handle.subscribe_alerts();
        let record = format!("{{\"memo\":\"{}\"}}", "x".repeat(60 << 10));
        let alert = format!("{{\"alert_id\":\"a1\",\"score\":0.9,\"record\":{record}}}");
        handle.publish_alert(alert);
        handle.publish_alert("{\"alert_id\":\"a2\",\"record\":{\"v\":1}}".into());
        let big = watcher.try_recv().unwrap();
        assert!(
            big.len() < crate::alerts::WATCHED_ALERT_LIMIT,
            "{} bytes",
            big.len()
        );
        let v: serde_json::Value = serde_json::from_str(&big).unwrap();
        assert_eq!(v["alert_id"], "a1");
        assert!(v["record"].is_null());
        assert_eq!(v["record_omitted_bytes"], record.len());
        let small = watcher.try_recv().unwrap();
        assert_eq!(*small, "{\"alert_id\":\"a2\",\"record\":{\"v\":1}}");
    }
}
