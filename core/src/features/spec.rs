//! The feature spec file (TOML) that `isoflow-train fit --features` reads.
//!
//! ```toml
//! key_field = "device"          # default entity key for keyed features
//!
//! [[feature]]
//! name = "value"
//! kind = "field"                # a numeric field, optionally log1p (it also isolates small values)
//! source = "value"
//!
//! [[feature]]
//! name = "value_z"
//! kind = "key_zscore"           # |z| against this key's EWMA mean/variance
//! source = "value"
//! alpha = 0.02                  # or: half_life = 34.3 (records)
//! warmup = 100
//! alert_z = 6.0                 # optional: alert on |z| alone
//!
//! [[feature]]
//! name = "rate_60s"
//! kind = "key_rate"             # decayed count of this key's records
//! window_s = 60.0
//!
//! [[feature]]
//! name = "gap_s"
//! kind = "key_gap"              # seconds since this key's previous record
//!
//! [[feature]]
//! name = "dup"
//! kind = "key_repeat"           # identical (key, fields) seen recently
//! fields = ["amount", "merchant"]
//! window_s = 300.0
//! ```
//!
//! History features of a field per key (signed, direction-aware, lagged,
//! windowed) and label-feedback risk:
//!
//! ```toml
//! [[feature]]
//! name = "amount_up"
//! kind = "key_deviation"        # (x − baseline) / sd, signed
//! source = "amount"
//! half_life = 20.0              # or alpha; records
//! warmup = 5
//! robust_z = 3.0
//! direction = "up"              # both (default) | up | down
//! fast_half_life = 5.0          # optional: level shift of a fast EWMA
//! bucket_s = 3600.0             # optional: seasonal baseline per hour...
//! season_s = 86400.0            # ...of the day
//!
//! [[feature]]
//! name = "value_spread"
//! kind = "key_spread"           # EWMA standard deviation (volatility)
//! source = "value"
//! half_life = 10.0
//!
//! [[feature]]
//! name = "value_d1"
//! kind = "key_lag"              # value `lag` records back, or the change
//! source = "value"
//! lag = 1
//! delta = true
//!
//! [[feature]]
//! name = "amount_mean_7d"
//! kind = "key_window"           # decayed mean | count | ratio of earlier records
//! source = "amount"
//! window_s = 604800.0
//! stat = "mean"
//!
//! [[feature]]
//! name = "terminal_risk_28d"
//! kind = "key_label_risk"       # share of confirmed anomalies, labels known by now
//! key_field = "terminal_id"
//! window_s = 2419200.0
//! ```
//!
//! Keyed rate/gap/repeat features need event times: `time_field = "ts"`
//! (epoch seconds) at the top, or broker timestamps when streaming.

use crate::model::pb::{self, feature::Kind};
use serde::Deserialize;

/// Why a spec file was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Unreadable file.
    #[error("cannot read feature spec {path}: {source}")]
    Read {
        /// Path given.
        path: String,
        /// I/O error.
        source: std::io::Error,
    },
    /// Not valid TOML, or an unknown/missing key.
    #[error("feature spec {path}: {message}")]
    Parse {
        /// Path given.
        path: String,
        /// Parser message, naming the field.
        message: String,
    },
    /// Semantically wrong.
    #[error("feature spec: {0}")]
    Invalid(String),
}

/// Top level of the spec file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecFile {
    /// Default entity key field for keyed features.
    #[serde(default)]
    pub key_field: String,
    /// Optional event-time field.
    #[serde(default)]
    pub time_field: String,
    /// Features in forest column order.
    #[serde(rename = "feature", default)]
    pub features: Vec<FeatureEntry>,
}

/// One `[[feature]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum FeatureEntry {
    /// A numeric field.
    Field {
        /// Feature name.
        name: String,
        /// Field to read; defaults to `name`.
        source: Option<String>,
        /// Apply sign(x)·ln(1+|x|).
        #[serde(default)]
        log1p: bool,
    },
    /// EWMA z-score per key.
    KeyZscore {
        /// Feature name (output column `z_<name>`).
        name: String,
        /// Field to read; defaults to `name`.
        source: Option<String>,
        /// Key field; defaults to the file's `key_field`.
        #[serde(default)]
        key_field: String,
        /// EWMA weight of the newest record, in (0, 1).
        alpha: Option<f64>,
        /// Half-life in records; alpha = 1 − 2^(−1/half_life).
        half_life: Option<f64>,
        /// Records per key before z is reported.
        #[serde(default = "default_warmup")]
        warmup: u32,
        /// Alert when |z| is at least this (0 = never on z alone).
        #[serde(default)]
        alert_z: f64,
        /// Robust baseline: records beyond this many standard deviations
        /// stay out of it (up to `warmup` in a row), and a key's first
        /// records weigh 1/n (0 = plain EWMA).
        #[serde(default)]
        robust_z: f64,
    },
    /// Decayed count of this key's records over a window.
    KeyRate {
        /// Feature name.
        name: String,
        /// Key field; defaults to the file's `key_field`.
        #[serde(default)]
        key_field: String,
        /// Window (decay time constant) in seconds.
        window_s: f64,
        /// Alert when the rate is at least this (0 = no rule).
        #[serde(default)]
        alert_above: f64,
        /// Count only records whose numeric field of this name is non-zero.
        #[serde(default)]
        when: String,
    },
    /// Seconds since this key's previous record.
    KeyGap {
        /// Feature name.
        name: String,
        /// Key field; defaults to the file's `key_field`.
        #[serde(default)]
        key_field: String,
        /// Alert when the gap is at least this many seconds (0 = no rule).
        #[serde(default)]
        alert_above: f64,
    },
    /// Decayed count of identical earlier records (same key and `fields`).
    KeyRepeat {
        /// Feature name.
        name: String,
        /// Key field; defaults to the file's `key_field`.
        #[serde(default)]
        key_field: String,
        /// Fields whose values must match.
        fields: Vec<String>,
        /// Window (decay time constant) in seconds.
        window_s: f64,
        /// Alert when the repeat count is at least this (0 = no rule).
        #[serde(default)]
        alert_above: f64,
    },
    /// Signed deviation from the key's robust EWMA baseline.
    KeyDeviation {
        /// Feature name.
        name: String,
        /// Field to read; defaults to `name`.
        source: Option<String>,
        /// Key field; defaults to the file's `key_field`.
        #[serde(default)]
        key_field: String,
        /// Baseline EWMA weight of the newest record, in (0, 1).
        alpha: Option<f64>,
        /// Baseline half-life in records.
        half_life: Option<f64>,
        /// Records before a deviation is reported.
        #[serde(default = "default_warmup")]
        warmup: u32,
        /// Outlier rejection in standard deviations (0 = plain EWMA).
        #[serde(default)]
        robust_z: f64,
        /// both | up | down.
        #[serde(default)]
        direction: DirectionName,
        /// Level shift: a fast EWMA with this half-life (records) is compared.
        fast_half_life: Option<f64>,
        /// Seasonal bucket width in seconds (with `season_s`).
        #[serde(default)]
        bucket_s: f64,
        /// Seasonal period in seconds.
        #[serde(default)]
        season_s: f64,
    },
    /// EWMA standard deviation of a field per key.
    KeySpread {
        /// Feature name.
        name: String,
        /// Field to read; defaults to `name`.
        source: Option<String>,
        /// Key field; defaults to the file's `key_field`.
        #[serde(default)]
        key_field: String,
        /// EWMA weight of the newest record, in (0, 1).
        alpha: Option<f64>,
        /// Half-life in records.
        half_life: Option<f64>,
    },
    /// The value `lag` records back, or the change since.
    KeyLag {
        /// Feature name.
        name: String,
        /// Field to read; defaults to `name`.
        source: Option<String>,
        /// Key field; defaults to the file's `key_field`.
        #[serde(default)]
        key_field: String,
        /// Records back (1 to 16).
        lag: u32,
        /// Report the change instead of the value.
        #[serde(default)]
        delta: bool,
    },
    /// Decayed mean, count or ratio over the key's earlier records.
    KeyWindow {
        /// Feature name.
        name: String,
        /// Field to read; defaults to `name`.
        source: Option<String>,
        /// Key field; defaults to the file's `key_field`.
        #[serde(default)]
        key_field: String,
        /// Decay time constant in seconds.
        window_s: f64,
        /// mean | count | ratio.
        #[serde(default)]
        stat: StatName,
        /// With a ratio: both | up | down.
        #[serde(default)]
        direction: DirectionName,
        /// Values enter as at most this many times the mean (0 = no cap).
        #[serde(default)]
        cap: f64,
    },
    /// Share of confirmed anomalies of this key, from label feedback.
    KeyLabelRisk {
        /// Feature name.
        name: String,
        /// Key field; defaults to the file's `key_field`.
        #[serde(default)]
        key_field: String,
        /// Decay time constant in seconds.
        window_s: f64,
        /// Pseudo-count of normal labels (default 1).
        #[serde(default = "default_prior")]
        prior: f64,
    },
}

/// `direction` of a deviation feature.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DirectionName {
    /// Signed.
    #[default]
    Both,
    /// Rises only.
    Up,
    /// Falls only.
    Down,
}

/// `stat` of a window feature.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StatName {
    /// Decayed mean.
    #[default]
    Mean,
    /// Decayed count.
    Count,
    /// Value over the mean, minus 1.
    Ratio,
}

fn default_warmup() -> u32 {
    30
}

fn default_prior() -> f64 {
    1.0
}

fn direction_proto(d: DirectionName) -> pb::Direction {
    match d {
        DirectionName::Both => pb::Direction::Both,
        DirectionName::Up => pb::Direction::Up,
        DirectionName::Down => pb::Direction::Down,
    }
}

fn direction_text(d: pb::Direction) -> &'static str {
    match d {
        pb::Direction::Both => "both",
        pb::Direction::Up => "up",
        pb::Direction::Down => "down",
    }
}

/// alpha from exactly one of `alpha` and `half_life` (records).
fn weight(name: &str, alpha: Option<f64>, half_life: Option<f64>) -> Result<f64, SpecError> {
    let alpha = match (alpha, half_life) {
        (Some(a), None) => a,
        (None, Some(h)) if h > 0.0 => half_life_weight(h),
        (None, Some(h)) => {
            return Err(SpecError::Invalid(format!(
                "feature '{name}': half_life {h} must be > 0"
            )))
        }
        _ => {
            return Err(SpecError::Invalid(format!(
                "feature '{name}': give exactly one of alpha or half_life"
            )))
        }
    };
    if !(alpha > 0.0 && alpha < 1.0) {
        return Err(SpecError::Invalid(format!(
            "feature '{name}': alpha {alpha} is outside (0, 1)"
        )));
    }
    Ok(alpha)
}

/// The EWMA weight whose half-life is `h` records: 1 − 2^(−1/h).
pub fn half_life_weight(h: f64) -> f64 {
    1.0 - (-1.0 / h).exp2()
}

impl SpecFile {
    /// Parses TOML text.
    pub fn parse(text: &str, path: &str) -> Result<Self, SpecError> {
        toml::from_str(text).map_err(|e| SpecError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Reads and parses a spec file.
    pub fn read(path: &std::path::Path) -> Result<Self, SpecError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    /// Converts to the model's protobuf spec, checking alpha/half-life.
    pub fn to_proto(&self) -> Result<pb::FeatureSpec, SpecError> {
        if self.features.is_empty() {
            return Err(SpecError::Invalid("no [[feature]] tables".into()));
        }
        let mut features = Vec::with_capacity(self.features.len());
        for entry in &self.features {
            features.push(match entry {
                FeatureEntry::Field {
                    name,
                    source,
                    log1p,
                } => pb::Feature {
                    name: name.clone(),
                    kind: Some(Kind::Field(pb::FieldFeature {
                        source: source.clone().unwrap_or_else(|| name.clone()),
                        log1p: *log1p,
                    })),
                },
                FeatureEntry::KeyZscore {
                    name,
                    source,
                    key_field,
                    alpha,
                    half_life,
                    warmup,
                    alert_z,
                    robust_z,
                } => {
                    let alpha = weight(name, *alpha, *half_life)?;
                    if !(robust_z.is_finite() && *robust_z >= 0.0) {
                        return Err(SpecError::Invalid(format!(
                            "feature '{name}': robust_z {robust_z} must be 0 (off) or a positive number of standard deviations"
                        )));
                    }
                    pb::Feature {
                        name: name.clone(),
                        kind: Some(Kind::KeyZscore(pb::KeyZscoreFeature {
                            source: source.clone().unwrap_or_else(|| name.clone()),
                            key_field: key_field.clone(),
                            alpha,
                            warmup: *warmup,
                            alert_z: *alert_z,
                            robust_z: *robust_z,
                        })),
                    }
                }
                FeatureEntry::KeyRate {
                    name,
                    key_field,
                    window_s,
                    alert_above,
                    when,
                } => pb::Feature {
                    name: name.clone(),
                    kind: Some(Kind::KeyRate(pb::KeyRateFeature {
                        key_field: key_field.clone(),
                        window_s: *window_s,
                        alert_above: *alert_above,
                        when: when.clone(),
                    })),
                },
                FeatureEntry::KeyGap {
                    name,
                    key_field,
                    alert_above,
                } => pb::Feature {
                    name: name.clone(),
                    kind: Some(Kind::KeyGap(pb::KeyGapFeature {
                        key_field: key_field.clone(),
                        alert_above: *alert_above,
                    })),
                },
                FeatureEntry::KeyDeviation {
                    name,
                    source,
                    key_field,
                    alpha,
                    half_life,
                    warmup,
                    robust_z,
                    direction,
                    fast_half_life,
                    bucket_s,
                    season_s,
                } => pb::Feature {
                    name: name.clone(),
                    kind: Some(Kind::KeyDeviation(pb::KeyDeviationFeature {
                        source: source.clone().unwrap_or_else(|| name.clone()),
                        key_field: key_field.clone(),
                        alpha: weight(name, *alpha, *half_life)?,
                        warmup: *warmup,
                        robust_z: *robust_z,
                        direction: direction_proto(*direction) as i32,
                        fast_alpha: match fast_half_life {
                            Some(h) => weight(name, None, Some(*h))?,
                            None => 0.0,
                        },
                        bucket_s: *bucket_s,
                        season_s: *season_s,
                    })),
                },
                FeatureEntry::KeySpread {
                    name,
                    source,
                    key_field,
                    alpha,
                    half_life,
                } => pb::Feature {
                    name: name.clone(),
                    kind: Some(Kind::KeySpread(pb::KeySpreadFeature {
                        source: source.clone().unwrap_or_else(|| name.clone()),
                        key_field: key_field.clone(),
                        alpha: weight(name, *alpha, *half_life)?,
                    })),
                },
                FeatureEntry::KeyLag {
                    name,
                    source,
                    key_field,
                    lag,
                    delta,
                } => pb::Feature {
                    name: name.clone(),
                    kind: Some(Kind::KeyLag(pb::KeyLagFeature {
                        source: source.clone().unwrap_or_else(|| name.clone()),
                        key_field: key_field.clone(),
                        lag: *lag,
                        delta: *delta,
                    })),
                },
                FeatureEntry::KeyWindow {
                    name,
                    source,
                    key_field,
                    window_s,
                    stat,
                    direction,
                    cap,
                } => pb::Feature {
                    name: name.clone(),
                    kind: Some(Kind::KeyWindow(pb::KeyWindowFeature {
                        source: source.clone().unwrap_or_else(|| name.clone()),
                        key_field: key_field.clone(),
                        window_s: *window_s,
                        stat: match stat {
                            StatName::Mean => pb::WindowStat::Mean,
                            StatName::Count => pb::WindowStat::Count,
                            StatName::Ratio => pb::WindowStat::Ratio,
                        } as i32,
                        direction: direction_proto(*direction) as i32,
                        cap: *cap,
                    })),
                },
                FeatureEntry::KeyLabelRisk {
                    name,
                    key_field,
                    window_s,
                    prior,
                } => pb::Feature {
                    name: name.clone(),
                    kind: Some(Kind::KeyLabelRisk(pb::KeyLabelRiskFeature {
                        key_field: key_field.clone(),
                        window_s: *window_s,
                        prior: *prior,
                    })),
                },
                FeatureEntry::KeyRepeat {
                    name,
                    key_field,
                    fields,
                    window_s,
                    alert_above,
                } => pb::Feature {
                    name: name.clone(),
                    kind: Some(Kind::KeyRepeat(pb::KeyRepeatFeature {
                        key_field: key_field.clone(),
                        fields: fields.clone(),
                        window_s: *window_s,
                        alert_above: *alert_above,
                    })),
                },
            });
        }
        Ok(pb::FeatureSpec {
            features,
            key_field: self.key_field.clone(),
            time_field: self.time_field.clone(),
        })
    }
}

/// The spec as a spec file that [`SpecFile::parse`] reads back to the same
/// spec (`isoflow-train fit --spec-out`): a preset's choices, written out
/// for a user to read, edit and fit with `--features`.
pub fn to_toml(spec: &pb::FeatureSpec) -> String {
    use std::fmt::Write;
    let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let mut out = String::new();
    if !spec.key_field.is_empty() {
        let _ = writeln!(out, "key_field = {}", q(&spec.key_field));
    }
    if !spec.time_field.is_empty() {
        let _ = writeln!(out, "time_field = {}", q(&spec.time_field));
    }
    for f in &spec.features {
        let _ = write!(out, "\n[[feature]]\nname = {}\n", q(&f.name));
        let mut line = |k: &str, v: String| {
            let _ = writeln!(out, "{k} = {v}");
        };
        let key = |line: &mut dyn FnMut(&str, String), k: &str| {
            if !k.is_empty() {
                line("key_field", q(k));
            }
        };
        match &f.kind {
            Some(Kind::Field(x)) => {
                line("kind", q("field"));
                line("source", q(&x.source));
                if x.log1p {
                    line("log1p", "true".into());
                }
            }
            Some(Kind::KeyZscore(z)) => {
                line("kind", q("key_zscore"));
                line("source", q(&z.source));
                key(&mut line, &z.key_field);
                line("alpha", format!("{:?}", z.alpha));
                line("warmup", z.warmup.to_string());
                line("alert_z", format!("{:?}", z.alert_z));
                line("robust_z", format!("{:?}", z.robust_z));
            }
            Some(Kind::KeyRate(r)) => {
                line("kind", q("key_rate"));
                key(&mut line, &r.key_field);
                line("window_s", format!("{:?}", r.window_s));
                line("alert_above", format!("{:?}", r.alert_above));
                if !r.when.is_empty() {
                    line("when", q(&r.when));
                }
            }
            Some(Kind::KeyGap(g)) => {
                line("kind", q("key_gap"));
                key(&mut line, &g.key_field);
                line("alert_above", format!("{:?}", g.alert_above));
            }
            Some(Kind::KeyRepeat(r)) => {
                line("kind", q("key_repeat"));
                key(&mut line, &r.key_field);
                let fields: Vec<String> = r.fields.iter().map(|f| q(f)).collect();
                line("fields", format!("[{}]", fields.join(", ")));
                line("window_s", format!("{:?}", r.window_s));
                line("alert_above", format!("{:?}", r.alert_above));
            }
            Some(Kind::KeyDeviation(d)) => {
                line("kind", q("key_deviation"));
                line("source", q(&d.source));
                key(&mut line, &d.key_field);
                line("alpha", format!("{:?}", d.alpha));
                line("warmup", d.warmup.to_string());
                line("robust_z", format!("{:?}", d.robust_z));
                line("direction", q(direction_text(d.direction())));
                if d.fast_alpha > 0.0 {
                    // Written as the half-life whose weight it is.
                    let h = -1.0 / (1.0 - d.fast_alpha).log2();
                    line("fast_half_life", format!("{h:?}"));
                }
                if d.bucket_s > 0.0 {
                    line("bucket_s", format!("{:?}", d.bucket_s));
                    line("season_s", format!("{:?}", d.season_s));
                }
            }
            Some(Kind::KeySpread(x)) => {
                line("kind", q("key_spread"));
                line("source", q(&x.source));
                key(&mut line, &x.key_field);
                line("alpha", format!("{:?}", x.alpha));
            }
            Some(Kind::KeyLag(l)) => {
                line("kind", q("key_lag"));
                line("source", q(&l.source));
                key(&mut line, &l.key_field);
                line("lag", l.lag.to_string());
                line("delta", l.delta.to_string());
            }
            Some(Kind::KeyWindow(w)) => {
                line("kind", q("key_window"));
                line("source", q(&w.source));
                key(&mut line, &w.key_field);
                line("window_s", format!("{:?}", w.window_s));
                let stat = match w.stat() {
                    pb::WindowStat::Mean => "mean",
                    pb::WindowStat::Count => "count",
                    pb::WindowStat::Ratio => "ratio",
                };
                line("stat", q(stat));
                line("direction", q(direction_text(w.direction())));
                if w.cap > 0.0 {
                    line("cap", format!("{:?}", w.cap));
                }
            }
            Some(Kind::KeyLabelRisk(r)) => {
                line("kind", q("key_label_risk"));
                key(&mut line, &r.key_field);
                line("window_s", format!("{:?}", r.window_s));
                line("prior", format!("{:?}", r.prior));
            }
            None => {}
        }
    }
    out
}

/// A spec of plain fields named `names`, each read from the column of the same name.
pub fn fields_spec(names: &[String]) -> pb::FeatureSpec {
    pb::FeatureSpec {
        features: names
            .iter()
            .map(|n| pb::Feature {
                name: n.clone(),
                kind: Some(Kind::Field(pb::FieldFeature {
                    source: n.clone(),
                    log1p: false,
                })),
            })
            .collect(),
        key_field: String::new(),
        time_field: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields_and_zscores() {
        let spec = SpecFile::parse(
            r#"
key_field = "device"
[[feature]]
name = "value"
kind = "field"
[[feature]]
name = "vz"
kind = "key_zscore"
source = "value"
half_life = 1.0
warmup = 5
"#,
            "t.toml",
        )
        .unwrap()
        .to_proto()
        .unwrap();
        assert_eq!(spec.features.len(), 2);
        match &spec.features[1].kind {
            Some(Kind::KeyZscore(z)) => {
                assert_eq!(z.alpha, 0.5);
                assert_eq!(z.warmup, 5);
                assert_eq!(z.source, "value");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refuses_unknown_keys_and_bad_alpha() {
        let err = SpecFile::parse("[[feature]]\nname='a'\nkind='field'\nsauce='x'\n", "t.toml")
            .unwrap_err();
        assert!(err.to_string().contains("sauce"), "{err}");
        let err = SpecFile::parse(
            "[[feature]]\nname='a'\nkind='key_zscore'\nalpha=1.5\n",
            "t.toml",
        )
        .unwrap()
        .to_proto()
        .unwrap_err();
        assert!(err.to_string().contains("alpha 1.5"), "{err}");
        let err = SpecFile::parse("[[feature]]\nname='a'\nkind='key_zscore'\n", "t.toml")
            .unwrap()
            .to_proto()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("exactly one of alpha or half_life"),
            "{err}"
        );
    }
}
