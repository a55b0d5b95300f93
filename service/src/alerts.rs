//! Alert messages: what an operator at 3 a.m. needs in one JSON object.
//!
//! `alert_id` is `topic/partition/offset/model@version`: the same record
//! scored by the same model version always gets the same id, so consumers
//! can drop duplicates after an at-least-once replay.

use crate::features::FeaturePipeline;
use crate::pb;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::value::RawValue;

/// Where a record came from; serializes as `{"topic", "partition",
/// "offset"}`, as alerts and score messages carry it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Source<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
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
    /// Each feature's share of the record's isolation
    /// ([`crate::forest::PackedForest::attribution`]).
    pub shares: &'a [f32],
    /// The original record, as it arrived (JSON).
    pub record: &'a [u8],
}

/// One alert message; serialize it to get the JSON on the alerts topic.
#[derive(Debug, Serialize)]
pub struct Alert<'a> {
    /// Stable id ([`alert_id`]).
    pub alert_id: String,
    /// Entity key.
    pub key: &'a str,
    /// Event time, epoch seconds.
    pub event_time: f64,
    /// `name@version` of the model.
    pub model: String,
    /// Forest score, rounded to 4 decimals.
    pub score: f64,
    /// Forest score, unrounded.
    pub forest_score: f32,
    /// The model's alert threshold.
    pub threshold: f64,
    /// |z| per z-feature, by name.
    pub z: ZScores<'a>,
    /// Why it alerted, as sentences.
    pub reasons: Vec<String>,
    /// The features that isolated the record most, largest share first.
    pub top_features: Vec<TopFeature<'a>>,
    /// Source coordinates.
    pub source: Source<'a>,
    /// The original record, verbatim when it is JSON (it always is for an
    /// accepted record) and at most [`ALERT_RECORD_LIMIT`] bytes, else `null`.
    pub record: Option<&'a RawValue>,
    /// Size of the record when it was too large to embed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_omitted_bytes: Option<usize>,
}

/// |z| per z-feature, written as a JSON object in the pipeline's order.
#[derive(Debug)]
pub struct ZScores<'a> {
    names: &'a [String],
    values: &'a [f32],
}

impl Serialize for ZScores<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.names.len()))?;
        for (name, &value) in self.names.iter().zip(self.values) {
            map.serialize_entry(name, &Finite(value))?;
        }
        map.end()
    }
}

/// One of an alert's top contributing features.
#[derive(Debug, Serialize)]
pub struct TopFeature<'a> {
    /// Feature name.
    pub feature: &'a str,
    /// The record's value of it.
    pub value: Finite,
    /// Its share of the record's isolation, rounded to 4 decimals.
    pub share: f64,
}

/// A number as JSON: JSON has no infinities, so those are written as the
/// strings "inf" and "-inf" (and NaN as "NaN").
#[derive(Clone, Copy, Debug)]
pub struct Finite(pub f32);

impl Serialize for Finite {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_finite() {
            s.serialize_f32(self.0)
        } else {
            s.collect_str(&self.0)
        }
    }
}

/// Largest record an alert embeds: a larger one is left out
/// (`record_omitted_bytes` gives its size; `source` finds it), so an alert
/// always fits a producer's message limit.
pub const ALERT_RECORD_LIMIT: usize = 64 << 10;

/// Largest alert kept for `WatchAlerts` watchers as published: a larger
/// one is kept without its record, which bounds the buffer of alerts held
/// for slow watchers (4096 per pipeline) to tens of megabytes.
pub const WATCHED_ALERT_LIMIT: usize = 8 << 10;

/// `alert` (an alert's JSON) as watchers get it: with its record left out
/// (`record: null`, `record_omitted_bytes`) when the alert is larger than
/// [`WATCHED_ALERT_LIMIT`].
pub fn for_watchers(alert: String) -> String {
    if alert.len() <= WATCHED_ALERT_LIMIT {
        return alert;
    }
    let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_str(&alert) else {
        return alert;
    };
    if let Some(record) = fields.get_mut("record").filter(|r| !r.is_null()) {
        let bytes = serde_json::to_string(record).map_or(0, |r| r.len());
        *record = serde_json::Value::Null;
        fields.insert("record_omitted_bytes".into(), bytes.into());
    }
    serde_json::to_string(&fields).unwrap_or(alert)
}

/// Builds the alert for a record that alerted.
pub fn build<'a>(model: &'a pb::Model, pipeline: &'a FeaturePipeline, s: &Scored<'a>) -> Alert<'a> {
    let spec = model.feature_spec.as_ref();
    let names = spec.map_or(&[][..], |spec| &spec.features[..]);
    let top_features = top_shares(s.shares, 3)
        .into_iter()
        .map(|(i, share)| TopFeature {
            feature: names[i].name.as_str(),
            value: Finite(s.features[i]),
            share: round4(share),
        })
        .collect();
    Alert {
        alert_id: alert_id(&s.source, model),
        key: s.key,
        event_time: s.event_time,
        model: crate::model::reference::model_id(model),
        score: round4(s.score),
        forest_score: s.score,
        threshold: model.threshold,
        z: ZScores {
            names: pipeline.z_names(),
            values: s.z,
        },
        reasons: reasons(model, pipeline, s.score, s.features),
        top_features,
        source: s.source.clone(),
        record: (s.record.len() <= ALERT_RECORD_LIMIT)
            .then(|| serde_json::from_slice(s.record).ok())
            .flatten(),
        record_omitted_bytes: (s.record.len() > ALERT_RECORD_LIMIT).then_some(s.record.len()),
    }
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

/// The `n` largest of a record's feature `shares` as `(column, share)`,
/// largest first; features with no share are left out.
pub fn top_shares(shares: &[f32], n: usize) -> Vec<(usize, f32)> {
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
