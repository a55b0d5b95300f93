//! Process-level wiring of `isoflow run`: metrics endpoint, signal-driven
//! shutdown, and the pipelines.

use crate::config::Config;
use crate::metrics::{self, Registry};
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

/// Runs the service until `shutdown` (or a pipeline failure): serves
/// `/metrics` when configured, then runs every pipeline.
pub async fn run(
    config: Config,
    registry: Arc<Registry>,
    handles: Arc<pipeline::Handles>,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    let metrics_stop = shutdown.child_token();
    if !config.service.metrics_listen.is_empty() {
        let listener = tokio::net::TcpListener::bind(&config.service.metrics_listen)
            .await
            .map_err(|e| {
                crate::config::ConfigError::Invalid(format!(
                    "service.metrics_listen {}: cannot listen: {e}",
                    config.service.metrics_listen
                ))
            })?;
        tracing::info!(address = %config.service.metrics_listen, "serving /metrics");
        tokio::spawn(metrics::serve(
            listener,
            registry.clone(),
            metrics_stop.clone(),
        ));
    }
    let result = pipeline::run(config, registry, handles, shutdown).await;
    metrics_stop.cancel();
    result
}
