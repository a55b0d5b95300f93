//! Presets: the recommended features, forest, learning and alerting settings
//! for a kind of stream, so a user names the stream's key, time and fields
//! and need not tune (`isoflow-train fit --preset`, `isoflow score --preset`).
//!
//! - `metrics`: sensor, server and service metrics, one entity (device,
//!   machine, series) per key. Each field raw, its recent volatility (EWMA
//!   standard deviation, half-life 10 records) and its change since the
//!   previous record; the score is smoothed per key (half-life 30 records),
//!   as incidents in metrics last many points, and the threshold is the
//!   training rows' 95th percentile of that smoothed score. Measured and
//!   left out: signed deviations from a slow baseline (|z| helped pumps but
//!   hurt servers), level shifts (nothing over volatility), five lags (helped
//!   ad-exchange series, cost servers as much).
//! - `transactions`: payments per card (the first key) at terminals or
//!   merchants (a second key). The amount raw (no `log1p`: under a
//!   symmetric forest it isolates small payments) and its rise over the
//!   card's own 30-day average (one-sided, so only rises isolate; a payment
//!   enters the average as at most 3× it). With label feedback, each key's
//!   share of confirmed fraud over the last days raises the score outside
//!   the forest ([`pb::Alerting::risk_outside_forest`]). Card activity
//!   counts and terminal rates were measured and left out: they added
//!   heavy tails without signal.

use crate::model::pb::{self, feature::Kind};

/// Which kind of stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// Metric streams.
    Metrics,
    /// Payment streams.
    Transactions,
}

impl std::str::FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "metrics" => Ok(Preset::Metrics),
            "transactions" => Ok(Preset::Transactions),
            other => Err(format!(
                "unknown preset '{other}': expected metrics or transactions"
            )),
        }
    }
}

/// Why a preset cannot describe a stream.
#[derive(Debug, thiserror::Error)]
pub enum PresetError {
    /// Keys, time or fields missing or clashing.
    #[error("preset {preset}: {message}")]
    Invalid {
        /// The preset's name.
        preset: &'static str,
        /// What is wrong and what to give.
        message: String,
    },
}

/// The share of recent scores a cold start alerts on: with no training
/// rows to set a threshold from, it alerts on the top 1%.
pub const COLD_ALERT_RATE: f64 = 0.01;

/// Seconds in a day.
const DAY: f64 = 86_400.0;

impl Preset {
    /// The preset's name.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Metrics => "metrics",
            Preset::Transactions => "transactions",
        }
    }

    /// Share of the training rows above the alert threshold.
    pub fn contamination(self) -> f64 {
        match self {
            Preset::Metrics => 0.05,
            Preset::Transactions => 0.01,
        }
    }

    /// Records of each key that `fit` leaves out of the forest and the
    /// threshold, while the key's features warm up.
    pub fn fit_warmup(self) -> usize {
        match self {
            Preset::Metrics => 100,
            Preset::Transactions => 0,
        }
    }

    /// The feature spec for a stream keyed by `keys` (the first is the
    /// entity), timed by `time`, with numeric `fields`.
    pub fn spec(
        self,
        keys: &[String],
        time: &str,
        fields: &[String],
    ) -> Result<pb::FeatureSpec, PresetError> {
        let invalid = |message: String| PresetError::Invalid {
            preset: self.name(),
            message,
        };
        let entity = keys
            .first()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| invalid("give the entity key: --key FIELD[,FIELD2]".into()))?;
        if fields.is_empty() {
            return Err(invalid(
                "no numeric fields: give --fields a,b,... (the first record had none)".into(),
            ));
        }
        if let Some(f) = fields.iter().find(|f| keys.contains(f) || *f == time) {
            return Err(invalid(format!(
                "field '{f}' is also a key or the time field; leave it out of --fields"
            )));
        }
        let mut features = Vec::new();
        let mut add = |name: String, kind: Kind| {
            features.push(pb::Feature {
                name,
                kind: Some(kind),
            })
        };
        match self {
            Preset::Metrics => {
                for f in fields {
                    add(f.clone(), raw(f));
                    add(
                        format!("{f}_spread"),
                        Kind::KeySpread(pb::KeySpreadFeature {
                            source: f.clone(),
                            key_field: String::new(),
                            alpha: crate::features::spec::half_life_weight(10.0),
                        }),
                    );
                    add(
                        format!("{f}_d1"),
                        Kind::KeyLag(pb::KeyLagFeature {
                            source: f.clone(),
                            key_field: String::new(),
                            lag: 1,
                            delta: true,
                        }),
                    );
                }
            }
            Preset::Transactions => {
                let second = keys.get(1).filter(|k| !k.is_empty());
                for f in fields {
                    add(f.clone(), raw(f));
                    add(
                        format!("{f}_up_30d"),
                        Kind::KeyWindow(pb::KeyWindowFeature {
                            source: f.clone(),
                            key_field: String::new(),
                            window_s: 30.0 * DAY,
                            stat: pb::WindowStat::Ratio as i32,
                            direction: pb::Direction::Up as i32,
                            cap: 3.0,
                        }),
                    );
                }
                for k in std::iter::once(entity).chain(second) {
                    add(
                        format!("{k}_risk_2d"),
                        Kind::KeyLabelRisk(pb::KeyLabelRiskFeature {
                            key_field: k.clone(),
                            window_s: 2.0 * DAY,
                            prior: 1.0,
                        }),
                    );
                }
            }
        }
        if self == Preset::Transactions && time.is_empty() {
            return Err(invalid(
                "windowed features need event times: give --time FIELD (epoch seconds)".into(),
            ));
        }
        Ok(pb::FeatureSpec {
            features,
            key_field: entity.clone(),
            time_field: time.to_owned(),
        })
    }

    /// How the preset's forest keeps learning.
    pub fn learning(self) -> pb::Learning {
        // A metric stream drifts within hours and its forest must follow;
        // a payment stream of many cards is wide and steady, and a forest
        // from a few thousand payments only adds noise to a ranking of them
        // all: its window spans a day's payments and it regrows less often.
        let (window, interval) = match self {
            Preset::Metrics => (4096, 256),
            Preset::Transactions => (65_536, 4096),
        };
        pb::Learning {
            window,
            interval,
            // Regrowing the whole forest from the window every interval
            // measured best on drifting series (NAB dev, three seeds, AWS:
            // 0.680 against 0.620 for a quarter of the trees, 0.569 for a
            // tenth); it costs the most CPU of the choices (README).
            trees_per_update: 100,
            warmup: 128,
            // Alerting payments stay in: without the largest amounts in
            // its window a forest cannot rank one outlier above another
            // (dev card data with --learn: AP 0.23 with them kept out).
            skip_alerting: self == Preset::Metrics,
        }
    }

    /// How the preset's scores become alerts.
    pub fn alerting(self) -> pb::Alerting {
        match self {
            Preset::Metrics => pb::Alerting {
                score_half_life: 30.0,
                alert_rate: 0.0,
                rate_window: 0,
                risk_outside_forest: false,
            },
            Preset::Transactions => pb::Alerting {
                score_half_life: 0.0,
                alert_rate: 0.0,
                rate_window: 0,
                risk_outside_forest: true,
            },
        }
    }

    /// A model with the preset's spec and settings and no trees yet: `isoflow
    /// score --preset ... --learn` grows them from the stream (cold start),
    /// and alerts on the top `alert_rate` of recent scores.
    pub fn cold_model(
        self,
        keys: &[String],
        time: &str,
        fields: &[String],
        seed: u64,
    ) -> Result<pb::Model, PresetError> {
        let mut alerting = self.alerting();
        alerting.alert_rate = COLD_ALERT_RATE;
        Ok(pb::Model {
            name: self.name().to_owned(),
            version: 1,
            feature_spec: Some(self.spec(keys, time, fields)?),
            forest: None,
            // No alert until the tracked threshold has scores to go on.
            threshold: f64::MAX,
            training: Some(pb::TrainingInfo {
                seed,
                source: format!("preset:{}", self.name()),
                trainer_version: env!("CARGO_PKG_VERSION").to_owned(),
                ..Default::default()
            }),
            learning: Some(self.learning()),
            alerting: Some(alerting),
            ..Default::default()
        })
    }
}

/// A numeric field as it is (no `log1p`).
fn raw(field: &str) -> Kind {
    Kind::Field(pb::FieldFeature {
        source: field.to_owned(),
        log1p: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn specs_validate_and_name_their_columns() {
        let m = Preset::Metrics
            .spec(&s(&["machine"]), "ts", &s(&["cpu", "mem"]))
            .unwrap();
        crate::model::validate_spec(&m).unwrap();
        let names: Vec<&str> = m.features.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names[..3], ["cpu", "cpu_spread", "cpu_d1"]);
        assert_eq!(m.key_field, "machine");
        let t = Preset::Transactions
            .spec(&s(&["customer_id", "terminal_id"]), "ts", &s(&["amount"]))
            .unwrap();
        crate::model::validate_spec(&t).unwrap();
        assert!(t.features.iter().any(|f| f.name == "terminal_id_risk_2d"));
    }

    #[test]
    fn missing_keys_or_fields_are_named() {
        let e = Preset::Metrics.spec(&[], "ts", &s(&["a"])).unwrap_err();
        assert!(e.to_string().contains("--key"), "{e}");
        let e = Preset::Metrics.spec(&s(&["k"]), "ts", &[]).unwrap_err();
        assert!(e.to_string().contains("--fields"), "{e}");
        let e = Preset::Metrics
            .spec(&s(&["k"]), "ts", &s(&["k", "a"]))
            .unwrap_err();
        assert!(e.to_string().contains("'k'"), "{e}");
        assert!("nope".parse::<Preset>().is_err());
    }
}
