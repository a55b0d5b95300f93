//! Process-level wiring of `isoflow run`: metrics endpoint, signal-driven
//! shutdown, the pipelines, and — once they have started — the model
//! registry and the gRPC API.

use crate::config::Config;
use crate::metrics::{self, Metrics};
use crate::pipeline::{self, PipelineError};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Cancels `token` on SIGTERM or SIGINT (Ctrl-C).
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler installs");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested: finishing in-flight batches");
        token.cancel();
    });
}

/// Why the service stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A pipeline failed (or could not start).
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The model registry could not open or replay its topic.
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    /// The gRPC server could not start or failed.
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
}

/// Runs the service until `shutdown` (or a failure): serves `/metrics` when
/// configured, runs every pipeline, and, when `grpc.listen` is set, opens the
/// model registry (replaying its topic, which may re-activate models) and
/// serves the gRPC API once the pipelines have started.
pub async fn run(
    config: Config,
    metrics: Arc<Metrics>,
    handles: Arc<pipeline::Handles>,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let metrics_stop = shutdown.child_token();
    if !config.service.metrics_listen.is_empty() {
        let listener = tokio::net::TcpListener::bind(&config.service.metrics_listen)
            .await
            .map_err(|e| {
                PipelineError::from(crate::config::ConfigError::Invalid(format!(
                    "service.metrics_listen {}: cannot listen: {e}",
                    config.service.metrics_listen
                )))
            })?;
        // The bound address, not the configured one: with port 0 the log
        // is where a supervisor learns which port was taken.
        if let Ok(address) = listener.local_addr() {
            tracing::info!(%address, "serving /metrics");
        }
        tokio::spawn(metrics::serve(
            listener,
            metrics.clone(),
            metrics_stop.clone(),
        ));
    }
    let api_listener = match config.grpc.listen.as_str() {
        "" => None,
        listen => Some(crate::api::bind(listen).await?),
    };
    let grpc = config.grpc.clone();
    let cluster = config.kafka.cluster();
    let pipelines = config.pipelines.len();
    let stop = shutdown.child_token();
    if !grpc.listen.is_empty() && !grpc.registry_topic.is_empty() {
        handles.expect_replay();
    }
    let running = pipeline::run(config, metrics, handles.clone(), stop.clone());
    let pipelines_done = async {
        let result = running.await;
        // Pipelines gone (done or failed): the API has nothing left to serve.
        stop.cancel();
        result
    };
    let api = async {
        let Some(listener) = api_listener else {
            return Ok(());
        };
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = handles.wait_started(pipelines) => {}
        }
        let result = serve_api(listener, &grpc, &cluster, handles.clone(), stop.clone()).await;
        if result.is_err() {
            stop.cancel();
        }
        result
    };
    let (pipelines_result, api_result) = tokio::join!(pipelines_done, api);
    metrics_stop.cancel();
    pipelines_result?;
    api_result
}

/// Opens the registry, replays it, and serves gRPC on `listener` until `stop`.
async fn serve_api(
    listener: tokio::net::TcpListener,
    grpc: &crate::config::GrpcConfig,
    cluster: &crate::kafka::Cluster,
    handles: Arc<pipeline::Handles>,
    stop: CancellationToken,
) -> Result<(), ServiceError> {
    let models = crate::registry::ModelRegistry::open(
        grpc.models_dir.clone(),
        cluster,
        &grpc.registry_topic,
        handles.clone(),
    )
    .await?;
    for h in handles.all() {
        models.seed(&h.live_model());
    }
    models.follow(stop.clone()).await?;
    handles.mark_replayed();
    let engine = handles.engine().unwrap_or(crate::engine::Engine::Cpu);
    crate::api::serve(listener, grpc, models, engine, stop).await?;
    Ok(())
}
