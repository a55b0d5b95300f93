//! `ScoringService`: on-demand scores, alert streams and status.
//!
//! `Score` is stateless per request: records run through a fresh detector
//! (the pipelines' scoring sequence), so keyed features (rates, gaps,
//! z-scores) and score smoothing see only the records of that request, in
//! order — the request is its own little stream. The pipelines' per-key
//! state is never touched by a query. Scoring runs on a blocking thread with
//! the process's engine (the shared GPU context when there is one);
//! prepared scorers are cached per model version.

use crate::detector::{DetectError, Detector, DetectorOptions};
use crate::engine::Engine;
use crate::forest::PackedForest;
use crate::input::Columns;
use crate::pb;
use crate::pb::scoring_service_server::ScoringService;
use crate::registry::{self, ModelRegistry};
use crate::score::cpu::Attribution;
use crate::score::{ScoreError, Scorer};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// Prepared scorers kept; the oldest entries go when more models are used.
const PREPARED_MODELS: usize = 32;

/// A model ready to score: its packed forest (held by its attribution walk)
/// and idle scorers to reuse.
pub struct Prepared {
    model: Arc<pb::Model>,
    attribution: Attribution,
    names: Vec<String>,
    idle: Mutex<Vec<Box<dyn Scorer>>>,
}

impl Prepared {
    /// Packs `model` (validated by the registry) for scoring.
    pub fn new(model: Arc<pb::Model>) -> Result<Self, Status> {
        let forest = PackedForest::from_model(&model)
            .map_err(|e| Status::invalid_argument(format!("model refused: {e}")))?;
        Ok(Self {
            names: crate::model::feature_names(&model),
            attribution: Attribution::new(forest),
            model,
            idle: Mutex::new(Vec::new()),
        })
    }
}

/// Scores one request against `prepared` on `engine`: JSON records through a
/// fresh detector, or raw feature vectors as they are. Alerting records
/// (every record with `explain_all`) get reasons and top features.
pub fn score_request(
    prepared: &Prepared,
    engine: &Engine,
    request: &pb::ScoreRequest,
) -> Result<pb::ScoreResponse, Status> {
    let model = &prepared.model;
    let records = request.records.len() + request.json_records.len();
    let raw = request.features.as_ref().filter(|f| !f.values.is_empty());
    if records > 0 && raw.is_some() {
        return Err(Status::invalid_argument(
            "send JSON records or a feature matrix, not both",
        ));
    }
    let internal = |e: ScoreError| Status::internal(format!("scoring failed: {e}"));
    let detect = |e: DetectError| match e {
        DetectError::Score(ScoreError::Features(_)) | DetectError::Input(_) => {
            Status::invalid_argument(e.to_string())
        }
        e => Status::internal(format!("scoring failed: {e}")),
    };
    let idle = prepared.idle.lock().expect("scorer pool lock").pop();
    let scorer = match idle {
        Some(s) => s,
        None => engine
            .scorer(prepared.attribution.forest())
            .map_err(internal)?,
    };
    let options = DetectorOptions {
        slot_capacity: records.max(1),
        ..Default::default()
    };
    let mut detector = Detector::with_scorer(model.clone(), engine.clone(), &options, Some(scorer))
        .map_err(detect)?;
    let scored = match raw {
        Some(f) => {
            let dims = prepared.attribution.forest().dims;
            if f.dims as usize != dims || f.values.len() % dims != 0 {
                return Err(Status::invalid_argument(format!(
                    "features: model {} takes {dims} features per row ({}); got dims {} and {} values",
                    registry::model_id(model),
                    prepared.names.join(", "),
                    f.dims,
                    f.values.len()
                )));
            }
            if let Some(i) = f.values.iter().position(|v| !v.is_finite()) {
                return Err(Status::invalid_argument(format!(
                    "features: value {i} (row {}) is not finite",
                    i / dims + 1
                )));
            }
            detector.score_features(f.values.clone(), None)
        }
        None => {
            let wanted = detector.pipeline().wanted().clone();
            let mut columns = Columns::new(&wanted);
            // Without a time field, the request is "now" for every record.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            let texts: Vec<&[u8]> = request
                .records
                .iter()
                .map(Vec::as_slice)
                .chain(request.json_records.iter().map(String::as_bytes))
                .collect();
            // JSON parsing is most of the cost of a big request: parse in
            // parallel, then feed the columns in order.
            use rayon::prelude::*;
            let picker = crate::input::JsonPicker::new(&wanted);
            let values: Vec<serde_json::Value> = texts
                .par_iter()
                .enumerate()
                .map(|(i, text)| {
                    picker.parse(text).map_err(|e| {
                        Status::invalid_argument(format!("record {}: not JSON: {e}", i + 1))
                    })
                })
                .collect::<Result<_, _>>()?;
            for (i, value) in values.iter().enumerate() {
                columns
                    .push_json(&wanted, value, i + 1, Some(now))
                    .map_err(|e| Status::invalid_argument(format!("records: {e}")))?;
            }
            detector.score(&columns)
        }
    }
    .map_err(detect)?;
    let dims = prepared.attribution.forest().dims;
    let (scores, alerts, matrix) = (&scored.scores, &scored.alerts, &scored.matrix);
    let explained = |row: usize| alerts[row] || request.explain_all;
    // Shares of every explained row in one call: sixteen rows per walk on
    // the vector walk.
    let explained_rows: Vec<f32> = (0..scores.len())
        .filter(|&row| explained(row))
        .flat_map(|row| &matrix[row * dims..(row + 1) * dims])
        .copied()
        .collect();
    let shares = prepared.attribution.rows(&explained_rows);
    let mut shares = shares.chunks_exact(dims.max(1));
    let results = scores
        .iter()
        .zip(alerts)
        .enumerate()
        .map(|(row, (s, &alert))| {
            let mut r = pb::RecordScore {
                score: s.score,
                alert,
                ..Default::default()
            };
            if explained(row) {
                let features = &matrix[row * dims..(row + 1) * dims];
                r.reasons = crate::alerts::reasons(model, detector.pipeline(), s.score, features);
                let shares = shares.next().expect("one row of shares per explained row");
                r.top_features = crate::alerts::top_shares(shares, 3)
                    .into_iter()
                    .map(|(i, share)| pb::FeatureContribution {
                        feature: prepared.names[i].clone(),
                        value: features[i],
                        share,
                    })
                    .collect();
            }
            r
        })
        .collect();
    if let Some(scorer) = detector.into_scorer() {
        prepared.idle.lock().expect("scorer pool lock").push(scorer);
    }
    Ok(pb::ScoreResponse {
        model: registry::model_id(model),
        backend: engine.name().to_owned(),
        results,
    })
}

/// Prepared models by `(name, version)`.
type PreparedCache = HashMap<(String, u32), Arc<Prepared>>;

/// The `ScoringService` handlers.
#[derive(Clone)]
pub struct ScoringApi {
    registry: Arc<ModelRegistry>,
    engine: Engine,
    max_records: usize,
    prepared: Arc<Mutex<PreparedCache>>,
    started: Instant,
    shutdown: CancellationToken,
    /// One permit per `Score` call allowed to score at once, of `max_concurrent`.
    scoring: Arc<tokio::sync::Semaphore>,
    max_concurrent: usize,
}

impl ScoringApi {
    /// Handlers scoring on `engine`, refusing requests of more than
    /// `max_records` records and more than `max_concurrent` calls at once;
    /// alert streams end at `shutdown`.
    pub fn new(
        registry: Arc<ModelRegistry>,
        engine: Engine,
        (max_records, max_concurrent): (usize, usize),
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            registry,
            engine,
            max_records,
            prepared: Arc::default(),
            started: Instant::now(),
            shutdown,
            scoring: Arc::new(tokio::sync::Semaphore::new(max_concurrent.max(1))),
            max_concurrent: max_concurrent.max(1),
        }
    }

    fn prepare(&self, model: Arc<pb::Model>) -> Result<Arc<Prepared>, Status> {
        let key = (model.name.clone(), model.version);
        let mut cache = self.prepared.lock().expect("prepared lock");
        if let Some(p) = cache.get(&key) {
            // A version re-put by another replica is a different model.
            if Arc::ptr_eq(&p.model, &model) {
                return Ok(p.clone());
            }
        }
        if cache.len() >= PREPARED_MODELS {
            cache.clear();
        }
        let p = Arc::new(Prepared::new(model)?);
        cache.insert(key, p.clone());
        Ok(p)
    }
}

type AlertStream = Pin<Box<dyn futures::Stream<Item = Result<pb::Alert, Status>> + Send>>;

#[tonic::async_trait]
impl ScoringService for ScoringApi {
    async fn score(
        &self,
        request: Request<pb::ScoreRequest>,
    ) -> Result<Response<pb::ScoreResponse>, Status> {
        let request = request.into_inner();
        let records = request.records.len()
            + request.json_records.len()
            + request
                .features
                .as_ref()
                .map_or(0, |f| f.values.len() / (f.dims as usize).max(1));
        if records > self.max_records {
            return Err(Status::resource_exhausted(format!(
                "{records} records in one Score call; the limit is {} (grpc.max_score_records): split the batch",
                self.max_records
            )));
        }
        let model = match (request.model.is_empty(), request.pipeline.is_empty()) {
            (false, true) => {
                let (name, version) =
                    registry::parse_id(&request.model).map_err(Status::invalid_argument)?;
                self.registry
                    .get(&name, version)
                    .map_err(super::status_of)?
            }
            (true, false) => self
                .registry
                .handles()
                .get(&request.pipeline)
                .ok_or_else(|| {
                    super::status_of(crate::registry::RegistryError::PipelineNotFound(
                        request.pipeline.clone(),
                    ))
                })?
                .live_model(),
            (true, true) => {
                // Neither: the process's only pipeline, if it has one.
                let all = self.registry.handles().all();
                match all.as_slice() {
                    [only] => only.live_model(),
                    _ => {
                        let names: Vec<&str> = all.iter().map(|h| h.name.as_str()).collect();
                        return Err(Status::invalid_argument(format!(
                            "no model or pipeline named, and this process runs {} pipelines ({}): set model (name or name@version) or pipeline",
                            names.len(),
                            names.join(", ")
                        )));
                    }
                }
            }
            (false, false) => {
                return Err(Status::invalid_argument(
                    "set model (name or name@version) or pipeline, not both",
                ))
            }
        };
        let Ok(permit) = self.scoring.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(format!(
                "{} Score calls are scoring already, the limit (grpc.max_concurrent_scores): retry with backoff",
                self.max_concurrent
            )));
        };
        let prepared = self.prepare(model)?;
        let engine = self.engine.clone();
        let response = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            score_request(&prepared, &engine, &request)
        })
        .await
        .map_err(|e| Status::internal(format!("scoring task failed: {e}")))??;
        Ok(Response::new(response))
    }

    type WatchAlertsStream = AlertStream;

    async fn watch_alerts(
        &self,
        request: Request<pb::WatchAlertsRequest>,
    ) -> Result<Response<Self::WatchAlertsStream>, Status> {
        use futures::StreamExt;
        let filter = request.into_inner();
        let handles: Vec<_> = self
            .registry
            .handles()
            .all()
            .into_iter()
            .filter(|h| filter.pipeline.is_empty() || h.name == filter.pipeline)
            .collect();
        if handles.is_empty() && !filter.pipeline.is_empty() {
            return Err(super::status_of(
                crate::registry::RegistryError::PipelineNotFound(filter.pipeline),
            ));
        }
        let streams = handles.into_iter().map(|h| {
            let pipeline = h.name.clone();
            tokio_stream::wrappers::BroadcastStream::new(h.subscribe_alerts())
                .filter_map(move |item| {
                    let pipeline = pipeline.clone();
                    async move {
                        match item {
                            Ok(text) => Some(to_alert(&pipeline, &text)),
                            Err(
                                tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n),
                            ) => {
                                tracing::warn!(
                                    pipeline,
                                    missed = n,
                                    "alert watcher too slow; alerts skipped"
                                );
                                None
                            }
                        }
                    }
                })
                .boxed()
        });
        let key = filter.key;
        let min_score = filter.min_score;
        let merged = futures::stream::select_all(streams)
            .filter(move |a| {
                let keep = (key.is_empty() || a.key == key) && a.score >= min_score;
                async move { keep }
            })
            .map(Ok)
            .take_until(self.shutdown.clone().cancelled_owned());
        Ok(Response::new(Box::pin(merged)))
    }

    async fn get_status(
        &self,
        _request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let uptime = self.started.elapsed().as_secs_f64().max(1e-3);
        let pipelines = self
            .registry
            .handles()
            .all()
            .into_iter()
            .map(|h| {
                let m = &h.metrics;
                let scored = m.scored.load(Relaxed);
                let alerts = m.alerts.load(Relaxed);
                let shadow_alerts = m.shadow_alerts.load(Relaxed);
                let rate = |n: u64| {
                    if scored == 0 {
                        0.0
                    } else {
                        n as f64 / scored as f64
                    }
                };
                pb::PipelineStatus {
                    name: h.name.clone(),
                    input_topic: h.input_topic.clone(),
                    live_model: registry::model_id(&h.live_model()),
                    shadow_model: h
                        .shadow_model()
                        .map(|s| registry::model_id(&s))
                        .unwrap_or_default(),
                    records_in: m.records_in.load(Relaxed),
                    scored,
                    alerts,
                    shadow_alerts,
                    live_alert_rate: rate(alerts),
                    shadow_alert_rate: if h.shadow_model().is_some() {
                        rate(shadow_alerts)
                    } else {
                        0.0
                    },
                    dlq: m.dlq.lock().expect("metrics lock").values().sum(),
                    consumer_lag: m.consumer_lag.load(Relaxed),
                    state_evictions: m.state_evictions.load(Relaxed),
                    records_per_second: scored as f64 / uptime,
                    state_fill: f64::from_bits(m.state_fill.load(Relaxed)),
                }
            })
            .collect();
        let adapter = match &self.engine {
            Engine::Cpu => String::new(),
            Engine::Gpu(ctx) => ctx.adapter_info().name.clone(),
        };
        Ok(Response::new(pb::GetStatusResponse {
            backend: self.engine.name().to_owned(),
            adapter,
            pipelines,
            uptime_s: uptime as u64,
            registry_topic: self.registry.topic().to_owned(),
            models: self.registry.list("").len() as u32,
        }))
    }
}

/// An alert's JSON text as the streamed message.
fn to_alert(pipeline: &str, text: &str) -> pb::Alert {
    let value: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    let field = |name: &str| {
        value
            .get(name)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    pb::Alert {
        pipeline: pipeline.to_owned(),
        alert_id: field("alert_id"),
        key: field("key"),
        score: value.get("score").and_then(|v| v.as_f64()).unwrap_or(0.0),
        model: field("model"),
        json: text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Backend;

    /// Explained rows, alerting or not, get the top features of their own
    /// attribution, named, with their values, largest share first.
    #[test]
    fn explained_rows_get_their_own_top_features() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fraud.isoflow");
        let model = Arc::new(crate::model::load(&path).unwrap());
        let prepared = Prepared::new(model.clone()).unwrap();
        let engine = Engine::select(Backend::Cpu).unwrap();
        let dims = prepared.attribution.forest().dims;
        // 37 rows, not a multiple of the vector walk's 16: odd rows spread
        // wide (most alert), even rows near a usual payment (amount,
        // merchant risk, foreign, distance, amount z, rate, duplicates).
        let usual = [3.5f32, 0.1, 0.0, 1.0, 0.0, 1.0, 0.0];
        assert_eq!(usual.len(), dims);
        let mut rng = 11u64;
        let mut next = move || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((rng >> 40) % 1000) as f32 / 1000.0
        };
        let values: Vec<f32> = (0..37 * dims)
            .map(|i| match (i / dims) % 2 {
                0 => usual[i % dims] + 0.05 * next(),
                _ => 10.0 * next(),
            })
            .collect();
        let request = |explain_all| pb::ScoreRequest {
            features: Some(pb::FeatureMatrix {
                dims: dims as u32,
                values: values.clone(),
            }),
            explain_all,
            ..Default::default()
        };
        let all = score_request(&prepared, &engine, &request(true)).unwrap();
        assert_eq!(all.results.len(), 37);
        for (row, r) in all.results.iter().enumerate() {
            let features = &values[row * dims..(row + 1) * dims];
            let want: Vec<(String, f32, f32)> =
                crate::alerts::top_shares(&prepared.attribution.forest().attribution(features), 3)
                    .into_iter()
                    .map(|(i, share)| (prepared.names[i].clone(), features[i], share))
                    .collect();
            let got: Vec<(String, f32, f32)> = r
                .top_features
                .iter()
                .map(|c| (c.feature.clone(), c.value, c.share))
                .collect();
            assert_eq!(got, want, "row {row}");
            assert!(!got.is_empty() && got.windows(2).all(|w| w[0].2 >= w[1].2));
        }
        // Without explain_all only the alerting rows are explained, each
        // with the same top features as above.
        let alerting = score_request(&prepared, &engine, &request(false)).unwrap();
        assert!(alerting.results.iter().any(|r| r.alert), "no row alerted");
        assert!(
            alerting.results.iter().any(|r| !r.alert),
            "every row alerted"
        );
        for (a, b) in alerting.results.iter().zip(&all.results) {
            if a.alert {
                assert_eq!(a.top_features, b.top_features);
            } else {
                assert!(a.top_features.is_empty());
            }
        }
    }
}
