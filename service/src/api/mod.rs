//! The gRPC API (tonic): `ModelService` over the [`crate::registry`],
//! `ScoringService` over the scorers and the running pipelines, plus the
//! standard health and reflection services.
//!
//! Handlers are thin: they check the request, call the registry or the
//! scoring code, and map errors to status codes ([`status_of`]). Every RPC
//! but health needs the bearer token when one is configured ([`auth`]).
//! Requests over `grpc.max_request_bytes` are refused with
//! RESOURCE_EXHAUSTED before they are decoded, so a huge request costs the
//! server nothing but the bytes it already read.

pub mod auth;
pub mod client;
mod models;
pub mod scoring;

pub use models::ModelApi;
pub use scoring::ScoringApi;

use crate::config::GrpcConfig;
use crate::engine::Engine;
use crate::pb::model_service_server::ModelServiceServer;
use crate::pb::scoring_service_server::ScoringServiceServer;
use crate::registry::{ModelRegistry, RegistryError};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::Status;

/// HTTP/2 flow-control window of server and client, bytes.
pub const WINDOW: u32 = 16 << 20;

/// Why the API server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The listen address is unusable.
    #[error("grpc.listen {address}: cannot listen: {source}")]
    Listen {
        /// Configured address.
        address: String,
        /// Socket error.
        source: std::io::Error,
    },
    /// TLS certificate or key unreadable or refused.
    #[error("grpc TLS: {0}")]
    Tls(String),
    /// Reflection descriptors could not be built.
    #[error("grpc reflection: {0}")]
    Reflection(String),
    /// The server failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Maps a registry error to the status a client can act on.
pub fn status_of(e: RegistryError) -> Status {
    let message = e.to_string();
    match e {
        RegistryError::Invalid(_) | RegistryError::BadRequest(_) => {
            Status::invalid_argument(message)
        }
        RegistryError::ModelNotFound(_) | RegistryError::PipelineNotFound(_) => {
            Status::not_found(message)
        }
        RegistryError::InUse { .. } => Status::failed_precondition(message),
        RegistryError::Publish { .. } | RegistryError::Kafka(_) => Status::unavailable(message),
        RegistryError::Pipeline(_) => Status::invalid_argument(message),
        RegistryError::Io { .. } => Status::internal(message),
    }
}

/// Binds `listen` for [`serve`]: done before anything else starts, so an
/// address in use fails start-up at once.
pub async fn bind(listen: &str) -> Result<tokio::net::TcpListener, ApiError> {
    tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ApiError::Listen {
            address: listen.to_owned(),
            source,
        })
}

/// Serves the API on `listener` until `shutdown`, with `config`'s limits,
/// token and TLS.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: &GrpcConfig,
    registry: Arc<ModelRegistry>,
    engine: Engine,
    shutdown: CancellationToken,
) -> Result<(), ApiError> {
    let address = listener.local_addr().map_err(|source| ApiError::Listen {
        address: config.listen.clone(),
        source,
    })?;
    let auth = auth::BearerAuth::new(&config.token);
    let limit = config.max_request_bytes;
    let models = ModelServiceServer::new(ModelApi::new(registry.clone()))
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX);
    let scoring = ScoringServiceServer::new(ScoringApi::new(
        registry.clone(),
        engine,
        (config.max_score_records, config.max_concurrent_scores),
        shutdown.clone(),
    ))
    .max_decoding_message_size(limit)
    .max_encoding_message_size(usize::MAX);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ModelServiceServer<ModelApi>>().await;
    health
        .set_serving::<ScoringServiceServer<ScoringApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ApiError::Reflection(e.to_string()))?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ApiError::Reflection(e.to_string()))?;
    // Large windows: a 10K-record Score is megabytes, and HTTP/2's default
    // 64 KiB window would make it many round trips.
    let mut builder = tonic::transport::Server::builder()
        .initial_stream_window_size(Some(WINDOW))
        .initial_connection_window_size(Some(WINDOW))
        .tcp_nodelay(true);
    let tls = config.tls_cert.is_some();
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| ApiError::Tls(format!("{}: {e}", p.display())))
        };
        let identity = tonic::transport::Identity::from_pem(read(cert)?, read(key)?);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| ApiError::Tls(e.to_string()))?;
    }
    tracing::info!(%address, tls, auth = !config.token.is_empty(), "serving gRPC");
    if config.token.is_empty() && !address.ip().is_loopback() {
        tracing::warn!(
            %address,
            "gRPC serves without a token on an address other hosts can reach: anyone who \
             reaches it can put, activate and delete models; set ISOFLOW_GRPC_TOKEN"
        );
    }
    let router = builder
        .layer(tower::util::MapResponseLayer::new(
            oversize_is_resource_exhausted,
        ))
        .add_service(health_service)
        .add_service(InterceptedService::new(models, auth.clone()))
        .add_service(InterceptedService::new(scoring, auth.clone()))
        .add_service(InterceptedService::new(reflection, auth.clone()))
        .add_service(InterceptedService::new(reflection_alpha, auth));
    let health_on_stop = health.clone();
    router
        .serve_with_incoming_shutdown(
            // The builder's `tcp_nodelay` applies only to listeners it binds
            // itself; without it a response's last frame can wait out the
            // peer's delayed ACK (~40 ms).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                shutdown.cancelled().await;
                health_on_stop
                    .set_not_serving::<ModelServiceServer<ModelApi>>()
                    .await;
            },
        )
        .await?;
    tracing::info!("gRPC server stopped");
    Ok(())
}

/// tonic refuses a message over the decoding limit with OUT_OF_RANGE; the
/// API promises RESOURCE_EXHAUSTED, the code gRPC uses for size limits.
fn oversize_is_resource_exhausted<B>(
    mut response: tonic::codegen::http::Response<B>,
) -> tonic::codegen::http::Response<B> {
    let headers = response.headers_mut();
    let oversize = headers.get("grpc-status").is_some_and(|s| s == "11")
        && headers
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| m.contains("too%20large") || m.contains("too large"));
    if oversize {
        headers.insert(
            "grpc-status",
            tonic::codegen::http::HeaderValue::from_static("8"),
        );
    }
    response
}
