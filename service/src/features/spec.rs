//! The feature spec file (TOML) that `isoflow-train fit --features` reads.
//!
//! ```toml
//! key_field = "device"          # default entity key for keyed features
//!
//! [[feature]]
//! name = "value"
//! kind = "field"                # a numeric field, optionally log1p
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
}

fn default_warmup() -> u32 {
    30
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
                    let alpha = match (alpha, half_life) {
                        (Some(a), None) => *a,
                        (None, Some(h)) if *h > 0.0 => 1.0 - (-1.0 / h).exp2(),
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
