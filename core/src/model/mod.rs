//! The model file format and its validation.
//!
//! A model file is the protobuf encoding of [`pb::Model`]. Nothing reaches a
//! scorer without passing [`validate`]: a forest with a cycle, an index out of
//! range or an unbounded depth could hang a GPU kernel, so it is refused here
//! with a message that names the tree and node at fault.

pub mod reference;
mod validate;

pub use validate::{
    validate, validate_spec, ModelError, IMPLICIT_MAX_DEPTH, MAX_EXPANDED_LEAVES, MAX_LAG,
    MAX_NODES, MAX_TREES, MAX_TREE_DEPTH,
};

use prost::Message;
use std::path::Path;

/// Generated protobuf types (one module for the model file and the API).
pub use crate::pb;

pub use pb::Model;

impl pb::Tree {
    /// Appends a node with no children yet (a leaf until `left`/`right` are
    /// set) and returns its index.
    pub fn push_node(&mut self, feature: u32, threshold: f32, leaf_size: u32) -> usize {
        self.feature.push(feature);
        self.threshold.push(threshold);
        self.left.push(0);
        self.right.push(0);
        self.leaf_size.push(leaf_size);
        self.feature.len() - 1
    }
}

/// Decodes and validates a model from its protobuf bytes.
pub fn decode(bytes: &[u8]) -> Result<Model, ModelError> {
    let model = Model::decode(bytes).map_err(|e| ModelError::Decode(e.to_string()))?;
    validate(&model)?;
    Ok(model)
}

/// Reads, decodes and validates a model file.
pub fn load(path: &Path) -> Result<Model, ModelError> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Read {
        path: path.display().to_string(),
        source,
    })?;
    decode(&bytes).map_err(|e| ModelError::InFile {
        path: path.display().to_string(),
        source: Box::new(e),
    })
}

/// Validates a model and writes its protobuf encoding to `path`.
pub fn save(model: &Model, path: &Path) -> Result<(), ModelError> {
    validate(model)?;
    std::fs::write(path, model.encode_to_vec()).map_err(|source| ModelError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// Names of the model's features, in forest column order.
pub fn feature_names(model: &Model) -> Vec<String> {
    model
        .feature_spec
        .as_ref()
        .map(|s| s.features.iter().map(|f| f.name.clone()).collect())
        .unwrap_or_default()
}

/// The model's metadata as JSON (everything but the tree arrays).
pub fn metadata_json(model: &Model) -> serde_json::Value {
    use pb::feature::Kind;
    let spec = model.feature_spec.clone().unwrap_or_default();
    let features: Vec<serde_json::Value> = spec
        .features
        .iter()
        .map(|f| match &f.kind {
            Some(Kind::Field(field)) => serde_json::json!({
                "name": f.name, "kind": "field", "source": field.source, "log1p": field.log1p,
            }),
            Some(Kind::KeyZscore(z)) => serde_json::json!({
                "name": f.name, "kind": "key_zscore", "source": z.source,
                "key_field": z.key_field, "alpha": z.alpha, "warmup": z.warmup, "alert_z": z.alert_z,
            }),
            Some(Kind::KeyRate(r)) => serde_json::json!({
                "name": f.name, "kind": "key_rate", "key_field": r.key_field, "window_s": r.window_s,
            }),
            Some(Kind::KeyGap(g)) => serde_json::json!({
                "name": f.name, "kind": "key_gap", "key_field": g.key_field,
            }),
            Some(Kind::KeyRepeat(r)) => serde_json::json!({
                "name": f.name, "kind": "key_repeat", "key_field": r.key_field,
                "fields": r.fields, "window_s": r.window_s,
            }),
            Some(Kind::KeyDeviation(d)) => serde_json::json!({
                "name": f.name, "kind": "key_deviation", "source": d.source,
                "key_field": d.key_field, "alpha": d.alpha, "warmup": d.warmup,
                "robust_z": d.robust_z, "direction": d.direction().as_str_name(),
                "fast_alpha": d.fast_alpha, "bucket_s": d.bucket_s, "season_s": d.season_s,
            }),
            Some(Kind::KeySpread(x)) => serde_json::json!({
                "name": f.name, "kind": "key_spread", "source": x.source,
                "key_field": x.key_field, "alpha": x.alpha,
            }),
            Some(Kind::KeyLag(l)) => serde_json::json!({
                "name": f.name, "kind": "key_lag", "source": l.source,
                "key_field": l.key_field, "lag": l.lag, "delta": l.delta,
            }),
            Some(Kind::KeyWindow(w)) => serde_json::json!({
                "name": f.name, "kind": "key_window", "source": w.source,
                "key_field": w.key_field, "window_s": w.window_s, "stat": w.stat().as_str_name(),
            }),
            Some(Kind::KeyLabelRisk(r)) => serde_json::json!({
                "name": f.name, "kind": "key_label_risk", "key_field": r.key_field,
                "window_s": r.window_s, "prior": r.prior,
            }),
            None => serde_json::json!({ "name": f.name, "kind": null }),
        })
        .collect();
    let forest = model.forest.clone().unwrap_or_default();
    let nodes: usize = forest.trees.iter().map(|t| t.feature.len()).sum();
    let max_depth = forest
        .trees
        .iter()
        .map(validate::tree_depth)
        .max()
        .unwrap_or(0);
    let training = model.training.clone().unwrap_or_default();
    serde_json::json!({
        "name": model.name,
        "version": model.version,
        "created_at_unix_ms": model.created_at_unix_ms,
        "threshold": model.threshold,
        "feature_spec": {
            "key_field": spec.key_field,
            "time_field": spec.time_field,
            "features": features,
        },
        "forest": {
            "trees": forest.trees.len(),
            "sample_size": forest.sample_size,
            "nodes": nodes,
            "max_depth": max_depth,
        },
        "learning": model.learning.as_ref().map(|l| serde_json::json!({
            "window": l.window, "interval": l.interval,
            "trees_per_update": l.trees_per_update, "warmup": l.warmup,
            "skip_alerting": l.skip_alerting,
        })),
        "alerting": model.alerting.as_ref().map(|a| serde_json::json!({
            "score_half_life": a.score_half_life, "alert_rate": a.alert_rate,
            "rate_window": a.rate_window, "risk_outside_forest": a.risk_outside_forest,
        })),
        "training": {
            "rows": training.rows,
            "seed": training.seed,
            "data_fingerprint": training.data_fingerprint,
            "training_auc": training.training_auc,
            "contamination": training.contamination,
            "source": training.source,
            "trainer_version": training.trainer_version,
        },
    })
}
