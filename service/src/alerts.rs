//! Alert messages: what an operator at 3 a.m. needs in one JSON object.
//!
//! `alert_id` is `topic/partition/offset/model@version`: the same record
//! scored by the same model version always gets the same id, so consumers
//! can drop duplicates after an at-least-once replay.

use crate::features::FeaturePipeline;
use crate::forest::PackedForest;
use crate::model::pb;
use serde_json::{json, Value};

/// Where a record came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

impl Source<'_> {
    /// `{"topic", "partition", "offset"}`, as alerts and score messages carry it.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({ "topic": self.topic, "partition": self.partition, "offset": self.offset })
    }
}

/// The stable id of an alert for `source` under `model`.
pub fn alert_id(source: &Source, model: &pb::Model) -> String {
    format!(
        "{}/{}/{}/{}@{}",
        source.topic, source.partition, source.offset, model.name, model.version
    )
}

/// Everything known about one scored record.
pub struct Scored<'a> {
    /// Source coordinates.
    pub source: Source<'a>,
    /// Entity key (may be empty).
    pub key: &'a str,
    /// Event time, epoch seconds.
    pub event_time: f64,
    /// Forest score.
    pub score: f32,
    /// Feature vector the forest saw.
    pub features: &'a [f32],
    /// |z| per z-feature.
    pub z: &'a [f32],
    /// The original record.
    pub record: &'a Value,
}

/// Builds the alert JSON for a record that alerted.
pub fn build(
    model: &pb::Model,
    forest: &PackedForest,
    pipeline: &FeaturePipeline,
    s: &Scored,
) -> Value {
    let names = crate::model::feature_names(model);
    let reasons = reasons(model, pipeline, s.score, s.features);
    let mut z = serde_json::Map::new();
    for (name, &value) in pipeline.z_names().iter().zip(s.z) {
        z.insert(name.clone(), finite_or_string(value));
    }
    let top: Vec<Value> = top_features(forest, s.features, 3)
        .into_iter()
        .map(|(i, share)| json!({ "feature": names[i], "value": finite_or_string(s.features[i]), "share": round4(share) }))
        .collect();
    json!({
        "alert_id": alert_id(&s.source, model),
        "key": s.key,
        "event_time": s.event_time,
        "model": crate::registry::model_id(model),
        "score": round4(s.score),
        "forest_score": s.score,
        "threshold": model.threshold,
        "z": z,
        "reasons": reasons,
        "top_features": top,
        "source": s.source.json(),
        "record": s.record,
    })
}

/// Why a record alerts (or would): the forest threshold and every keyed
/// rule it meets, as sentences.
pub fn reasons(
    model: &pb::Model,
    pipeline: &FeaturePipeline,
    score: f32,
    features: &[f32],
) -> Vec<String> {
    let mut reasons = Vec::new();
    if score as f64 >= model.threshold {
        reasons.push(format!(
            "forest score {score:.4} >= threshold {:.4}",
            model.threshold
        ));
    }
    for rule in pipeline.rules() {
        let value = features[rule.column];
        if value >= rule.limit {
            reasons.push(format!("{} = {value:.2} >= {}", rule.name, rule.limit));
        }
    }
    reasons
}

/// The `n` features with the largest share of the record's isolation, as
/// `(column, share)`, largest first; features with no share are left out.
pub fn top_features(forest: &PackedForest, features: &[f32], n: usize) -> Vec<(usize, f32)> {
    let shares = forest.attribution(features);
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by(|&a, &b| shares[b].total_cmp(&shares[a]));
    order
        .into_iter()
        .take(n)
        .filter(|&i| shares[i] > 0.0)
        .map(|i| (i, shares[i]))
        .collect()
}

fn round4(x: f32) -> f64 {
    (x as f64 * 1e4).round() / 1e4
}

/// JSON has no infinities: report them as the string "inf".
fn finite_or_string(x: f32) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        json!(x.to_string())
    }
}
