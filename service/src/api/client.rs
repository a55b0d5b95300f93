//! Client side of the API, for `isoflow model ...` and `isoflow score --grpc`.

use crate::pb::model_service_client::ModelServiceClient;
use crate::pb::scoring_service_client::ScoringServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Adds the bearer token to every call.
#[derive(Clone, Debug)]
pub struct WithToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for WithToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// A channel with its token.
pub type Authed = InterceptedService<Channel, WithToken>;

/// Why the client could not connect.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Bad address or token.
    #[error("{0}")]
    Invalid(String),
    /// Nothing answered.
    #[error("cannot connect to {address}: {source}. Is `isoflow run` serving gRPC there?")]
    Connect {
        /// Address tried.
        address: String,
        /// Transport error.
        source: tonic::transport::Error,
    },
}

/// Connects to `address` (`host:port` or `http://host:port`) with an
/// optional bearer token; returns the model and scoring clients.
pub async fn connect(
    address: &str,
    token: Option<&str>,
) -> Result<(ModelServiceClient<Authed>, ScoringServiceClient<Authed>), ClientError> {
    let uri = if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    };
    let channel = Channel::from_shared(uri)
        .map_err(|e| ClientError::Invalid(format!("address {address}: {e}")))?
        .initial_stream_window_size(super::WINDOW)
        .initial_connection_window_size(super::WINDOW)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|source| ClientError::Connect {
            address: address.to_owned(),
            source,
        })?;
    let token = token
        .filter(|t| !t.is_empty())
        .map(|t| {
            format!("Bearer {t}").parse().map_err(|_| {
                ClientError::Invalid("token has characters not allowed in metadata".into())
            })
        })
        .transpose()?;
    let auth = WithToken(token);
    Ok((
        ModelServiceClient::with_interceptor(channel.clone(), auth.clone())
            .max_decoding_message_size(usize::MAX),
        ScoringServiceClient::with_interceptor(channel, auth).max_decoding_message_size(usize::MAX),
    ))
}
