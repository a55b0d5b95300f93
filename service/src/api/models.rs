//! `ModelService`: put, list, get, activate and delete registry models.

use super::status_of;
use crate::model;
use crate::pb;
use crate::pb::model_service_server::ModelService;
use crate::registry::{self, Mode, ModelRegistry};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The `ModelService` handlers.
#[derive(Clone)]
pub struct ModelApi {
    registry: Arc<ModelRegistry>,
}

impl ModelApi {
    /// Handlers over `registry`.
    pub fn new(registry: Arc<ModelRegistry>) -> Self {
        Self { registry }
    }

    fn summary(&self, m: &pb::Model) -> pb::ModelSummary {
        let forest = m.forest.as_ref();
        pb::ModelSummary {
            name: m.name.clone(),
            version: m.version,
            created_at_unix_ms: m.created_at_unix_ms,
            threshold: m.threshold,
            features: m.feature_spec.as_ref().map_or(0, |s| s.features.len()) as u32,
            trees: forest.map_or(0, |f| f.trees.len()) as u32,
            used_by: self
                .registry
                .usage(&m.name, m.version)
                .into_iter()
                .map(|(pipeline, mode)| pb::Usage {
                    pipeline,
                    mode: to_pb_mode(mode) as i32,
                })
                .collect(),
        }
    }
}

fn to_pb_mode(mode: Mode) -> pb::Mode {
    match mode {
        Mode::Live => pb::Mode::Live,
        Mode::Shadow => pb::Mode::Shadow,
    }
}

fn need(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        Err(Status::invalid_argument(format!("{field} is required")))
    } else {
        Ok(())
    }
}

#[tonic::async_trait]
impl ModelService for ModelApi {
    async fn put_model(
        &self,
        request: Request<pb::PutModelRequest>,
    ) -> Result<Response<pb::PutModelResponse>, Status> {
        let request = request.into_inner();
        let model = match request.source {
            Some(pb::put_model_request::Source::ModelBytes(bytes)) => model::decode(&bytes)
                .map_err(|e| Status::invalid_argument(format!("model_bytes: {e}")))?,
            Some(pb::put_model_request::Source::Model(m)) => m,
            None => {
                return Err(Status::invalid_argument(
                    "set model_bytes (a model file) or model",
                ))
            }
        };
        let stored = self
            .registry
            .put(model, &request.name)
            .await
            .map_err(status_of)?;
        tracing::info!(model = %registry::model_id(&stored), "model put");
        Ok(Response::new(pb::PutModelResponse {
            name: stored.name.clone(),
            version: stored.version,
        }))
    }

    async fn list_models(
        &self,
        request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let models = self.registry.list(&request.into_inner().name);
        Ok(Response::new(pb::ListModelsResponse {
            models: models.iter().map(|m| self.summary(m)).collect(),
        }))
    }

    async fn get_model(
        &self,
        request: Request<pb::GetModelRequest>,
    ) -> Result<Response<pb::GetModelResponse>, Status> {
        let request = request.into_inner();
        need("name", &request.name)?;
        let m = self
            .registry
            .get(&request.name, Some(request.version))
            .map_err(status_of)?;
        Ok(Response::new(pb::GetModelResponse {
            summary: Some(self.summary(&m)),
            metadata_json: model::metadata_json(&m).to_string(),
            model: request.include_model.then(|| (*m).clone()),
        }))
    }

    async fn activate_model(
        &self,
        request: Request<pb::ActivateModelRequest>,
    ) -> Result<Response<pb::ActivateModelResponse>, Status> {
        let request = request.into_inner();
        need("pipeline", &request.pipeline)?;
        let mode = match pb::Mode::try_from(request.mode) {
            Ok(pb::Mode::Unspecified | pb::Mode::Live) => Mode::Live,
            Ok(pb::Mode::Shadow) => Mode::Shadow,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "mode {}: expected MODE_LIVE or MODE_SHADOW",
                    request.mode
                )))
            }
        };
        if request.clear {
            if mode != Mode::Shadow {
                return Err(Status::invalid_argument(
                    "clear applies to MODE_SHADOW only; activate another live model instead",
                ));
            }
            let previous = self
                .registry
                .clear_shadow(&request.pipeline)
                .await
                .map_err(status_of)?;
            return Ok(Response::new(pb::ActivateModelResponse {
                pipeline: request.pipeline,
                mode: pb::Mode::Shadow as i32,
                model: String::new(),
                previous: previous.unwrap_or_default(),
            }));
        }
        need("name", &request.name)?;
        let (model, previous) = self
            .registry
            .activate(&request.pipeline, mode, &request.name, request.version)
            .await
            .map_err(status_of)?;
        tracing::info!(pipeline = %request.pipeline, mode = mode.as_str(), model = %registry::model_id(&model), "model activated");
        Ok(Response::new(pb::ActivateModelResponse {
            pipeline: request.pipeline,
            mode: to_pb_mode(mode) as i32,
            model: registry::model_id(&model),
            previous: previous.unwrap_or_default(),
        }))
    }

    async fn delete_model(
        &self,
        request: Request<pb::DeleteModelRequest>,
    ) -> Result<Response<pb::DeleteModelResponse>, Status> {
        let request = request.into_inner();
        need("name", &request.name)?;
        self.registry
            .delete(&request.name, request.version)
            .await
            .map_err(status_of)?;
        tracing::info!(model = %crate::registry::version_id(&request.name, request.version), "model deleted");
        Ok(Response::new(pb::DeleteModelResponse {}))
    }
}
