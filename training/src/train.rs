//! `isoflow-train fit` and `eval` as library calls.

use crate::data::{self, TrainingData};
use crate::eval::{self, Evaluation};
use crate::iforest::{IsolationForest, IsolationForestParams};
use crate::{report, TrainError};
use isoflow_core::detector::{Detector, DetectorOptions};
use isoflow_core::engine::Engine;
use isoflow_core::features::{FeaturePipeline, DEFAULT_SLOT_CAPACITY};
use isoflow_core::input::{self, Wanted};
use isoflow_core::model::{self, pb};
use isoflow_core::preset::Preset;
use std::path::PathBuf;

/// Options of `fit`.
#[derive(Clone, Debug)]
pub struct FitOptions {
    /// Training input (CSV, or JSON lines with a spec).
    pub input: String,
    /// Model file to write.
    pub out: PathBuf,
    /// Model name.
    pub name: String,
    /// Forest parameters.
    pub params: IsolationForestParams,
    /// Columns not used as features (CSV without a spec).
    pub ignore: Vec<String>,
    /// Expected anomaly share; sets the threshold.
    pub contamination: f64,
    /// Feature spec file; without one every numeric column is a feature.
    pub features: Option<PathBuf>,
    /// A preset's spec and settings (instead of `features`).
    pub preset: Option<PresetChoice>,
    /// Write the spec used as a spec file here.
    pub spec_out: Option<PathBuf>,
    /// Directory for report.json and plots.
    pub report: Option<PathBuf>,
    /// Provenance recorded in the model when `input` is a copy (e.g. `kafka://B/T`).
    pub source: Option<String>,
}

/// A preset and the stream it describes.
#[derive(Clone, Debug)]
pub struct PresetChoice {
    /// The preset.
    pub preset: Preset,
    /// Key fields; the first is the entity.
    pub keys: Vec<String>,
    /// Event-time field.
    pub time: String,
    /// Numeric fields; empty: every numeric field of the first record.
    pub fields: Vec<String>,
}

/// What `fit` produced.
#[derive(Clone, Debug)]
pub struct FitOutcome {
    /// The saved model.
    pub model: pb::Model,
    /// Training-set evaluation when labels were present.
    pub evaluation: Option<Evaluation>,
    /// Files the report wrote.
    pub report_files: Vec<String>,
    /// Non-numeric columns that were skipped.
    pub skipped: Vec<String>,
    /// Unreadable records set aside (count and the reasons).
    pub rejected: Vec<String>,
    /// Wall time of growing the forest.
    pub fit_seconds: f64,
}

/// Loads the training matrix described by `opts`.
pub fn load(opts: &FitOptions) -> Result<TrainingData, TrainError> {
    if let Some(p) = &opts.preset {
        let fields = if p.fields.is_empty() {
            input::numeric_fields_of_first_record(&opts.input, &p.keys, &p.time)?
        } else {
            p.fields.clone()
        };
        let spec = p
            .preset
            .spec(&p.keys, &p.time, &fields)
            .map_err(|e| TrainError::Params(e.to_string()))?;
        return data::load_with_spec(&opts.input, spec, "label");
    }
    match &opts.features {
        Some(spec_path) => {
            let spec = isoflow_core::features::spec::SpecFile::read(spec_path)?.to_proto()?;
            data::load_with_spec(&opts.input, spec, "label")
        }
        None => data::load_numeric_csv(&opts.input, &opts.ignore, "label"),
    }
}

/// Trains, thresholds, saves and (optionally) reports. `on_tree` is called
/// once per grown tree (for a progress bar).
pub fn fit(opts: &FitOptions, on_tree: &(dyn Fn() + Sync)) -> Result<FitOutcome, TrainError> {
    if !(opts.contamination > 0.0 && opts.contamination <= 0.5) {
        return Err(TrainError::Params(format!(
            "--contamination must be in (0, 0.5], got {}",
            opts.contamination
        )));
    }
    let data = load(opts)?;
    // A preset's records, read once more with its entity key: the detector
    // scores them for the threshold, and each key's first records are the
    // features' warm-up (a volatility of one record is 0), which neither
    // grow trees nor set the threshold.
    let preset_columns = match &opts.preset {
        Some(_) => {
            let mut pipeline = FeaturePipeline::new(&data.spec, 1);
            let entity = pipeline.track_entity();
            Some((read_lenient(&opts.input, pipeline.wanted())?, entity))
        }
        None => None,
    };
    let settled = match (&opts.preset, &preset_columns) {
        (Some(p), Some((columns, Some(entity)))) if p.preset.fit_warmup() > 0 => Some(
            settled_rows(columns, *entity, p.preset.fit_warmup(), data.rows)?,
        ),
        _ => None,
    };
    let fit_matrix: std::borrow::Cow<[f32]> = match &settled {
        Some(keep) => {
            let dims = data.dims();
            let rows: Vec<f32> = data
                .matrix
                .chunks_exact(dims)
                .zip(keep)
                .filter(|(_, &k)| k)
                .flat_map(|(r, _)| r.iter().copied())
                .collect();
            if rows.len() / dims < 2 {
                return Err(TrainError::Data(format!(
                    "fewer than 2 rows after each key's first {} (the preset's warm-up): give more training records",
                    opts.preset.as_ref().map_or(0, |p| p.preset.fit_warmup())
                )));
            }
            rows.into()
        }
        None => (&data.matrix[..]).into(),
    };
    let started = std::time::Instant::now();
    let forest: IsolationForest =
        opts.params
            .fit_rows_with_progress(&fit_matrix, data.dims(), on_tree)?;
    let fit_seconds = started.elapsed().as_secs_f64();
    let (learning, alerting) = match &opts.preset {
        Some(p) => (Some(p.preset.learning()), Some(p.preset.alerting())),
        None => (None, None),
    };
    let scores: Vec<f64> = if let Some((columns, _)) = &preset_columns {
        // The threshold is a quantile of the scores as the detector reports
        // them (smoothed per key, raised by risk), from the same records in
        // the same order.
        let probe = pb::Model {
            feature_spec: Some(data.spec.clone()),
            forest: Some(forest.forest.clone()),
            threshold: f64::MAX,
            alerting,
            ..Default::default()
        };
        let mut detector = Detector::new(
            probe,
            Engine::Cpu,
            &DetectorOptions {
                learn: false,
                seed: None,
                slot_capacity: DEFAULT_SLOT_CAPACITY,
                ..Default::default()
            },
        )?;
        detector
            .score(columns)?
            .scores
            .iter()
            .map(|s| s.score as f64)
            .collect()
    } else {
        forest
            .score_rows(&data.matrix)
            .iter()
            .map(|s| s.score as f64)
            .collect()
    };
    let threshold = match &settled {
        Some(keep) => {
            let kept: Vec<f64> = scores
                .iter()
                .zip(keep)
                .filter(|(_, &k)| k)
                .map(|(&s, _)| s)
                .collect();
            eval::contamination_threshold(&kept, opts.contamination)
        }
        None => eval::contamination_threshold(&scores, opts.contamination),
    };
    let evaluation = data
        .labels
        .as_ref()
        .map(|l| eval::evaluate(&scores, l, threshold));
    let model = pb::Model {
        name: opts.name.clone(),
        version: 1,
        created_at_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
        feature_spec: Some(data.spec.clone()),
        forest: Some(forest.forest),
        threshold,
        learning,
        alerting,
        training: Some(pb::TrainingInfo {
            rows: data.rows as u64,
            seed: opts.params.seed,
            data_fingerprint: data.fingerprint(),
            training_auc: evaluation
                .as_ref()
                .map(|e| e.roc_auc)
                .filter(|a| a.is_finite()),
            contamination: opts.contamination,
            source: opts.source.clone().unwrap_or_else(|| opts.input.clone()),
            trainer_version: env!("CARGO_PKG_VERSION").to_owned(),
        }),
    };
    model::save(&model, &opts.out)?;
    if let Some(path) = &opts.spec_out {
        std::fs::write(path, isoflow_core::features::spec::to_toml(&data.spec))
            .map_err(|e| TrainError::Data(format!("cannot write {}: {e}", path.display())))?;
    }
    let report_files = match &opts.report {
        Some(dir) => {
            let mut summary = model::metadata_json(&model);
            summary["fit_seconds"] = fit_seconds.into();
            summary["model_file"] = opts.out.display().to_string().into();
            report::write(
                dir,
                &summary,
                &scores,
                threshold,
                data.labels.as_deref(),
                evaluation.as_ref(),
            )?
        }
        None => Vec::new(),
    };
    Ok(FitOutcome {
        model,
        evaluation,
        report_files,
        skipped: data.skipped,
        rejected: data.rejected,
        fit_seconds,
    })
}

/// Scores `input` with a model file and evaluates against its `label` column,
/// using the model's own threshold and alert rule.
pub fn evaluate_file(
    model_path: &std::path::Path,
    input_path: &str,
    label: &str,
) -> Result<Evaluation, TrainError> {
    let model = model::load(model_path)?;
    let mut detector = Detector::new(
        model.clone(),
        Engine::Cpu,
        &DetectorOptions {
            learn: false,
            seed: None,
            slot_capacity: DEFAULT_SLOT_CAPACITY,
            ..Default::default()
        },
    )?;
    let columns = input::read_path(input_path, detector.pipeline().wanted())?;
    let labels: Vec<bool> = input::read_path(
        input_path,
        &Wanted {
            numeric: vec![label.to_owned()],
            keys: vec![],
            time: None,
        },
    )?
    .numeric[0]
        .iter()
        .map(|&v| v != 0.0)
        .collect();
    let scored = detector.score(&columns)?;
    let scores: Vec<f64> = scored.scores.iter().map(|s| s.score as f64).collect();
    let mut evaluation = eval::evaluate(&scores, &labels, model.threshold);
    // Precision/recall follow the model's full decision (z rules included).
    let alerts = scored.alerts.iter().filter(|&&a| a).count();
    let tp = scored
        .alerts
        .iter()
        .zip(&labels)
        .filter(|(&a, &l)| a && l)
        .count();
    evaluation.alerts = alerts;
    evaluation.precision = if alerts == 0 {
        0.0
    } else {
        tp as f64 / alerts as f64
    };
    evaluation.recall = if evaluation.positives == 0 {
        0.0
    } else {
        tp as f64 / evaluation.positives as f64
    };
    Ok(evaluation)
}

/// Scores a whole stream with a model file, in order, as `isoflow score`
/// does (learning with `learn`, label feedback from `feedback`), and gives
/// the figures of its test lines against `truth`.
pub fn evaluate_stream(
    model_path: &std::path::Path,
    input_path: &str,
    truth: &str,
    learn: bool,
    feedback: Option<&str>,
    seed: Option<u64>,
) -> Result<crate::streams::StreamReport, TrainError> {
    let truth = crate::streams::read_truth(truth)?;
    let model = model::load(model_path)?;
    let mut detector = Detector::new(
        model,
        Engine::Cpu,
        &DetectorOptions {
            learn,
            seed,
            slot_capacity: DEFAULT_SLOT_CAPACITY,
            ..Default::default()
        },
    )?;
    if let Some(path) = feedback {
        detector.load_feedback(path)?;
    }
    let columns = input::read_path(input_path, detector.pipeline().wanted())?;
    let scored = detector.score(&columns)?;
    let scores: Vec<f64> = scored.scores.iter().map(|s| s.score as f64).collect();
    crate::streams::evaluate(&scores, &scored.alerts, &truth)
}

/// For each training row, whether its key (column `entity` of `columns`)
/// had at least `warmup` records before it. The columns are read as the
/// training matrix reads its rows (unreadable JSON lines set aside), so the
/// flags line up with them.
fn settled_rows(
    columns: &input::Columns,
    entity: usize,
    warmup: usize,
    rows: usize,
) -> Result<Vec<bool>, TrainError> {
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let keep: Vec<bool> = columns.keys[entity]
        .iter()
        .map(|k| {
            let n = seen.entry(k).or_default();
            *n += 1;
            *n > warmup
        })
        .collect();
    if keep.len() != rows {
        return Err(TrainError::Data(format!(
            "read {} rows for the warm-up but {rows} for training",
            keep.len()
        )));
    }
    Ok(keep)
}

/// Reads `path` with `wanted`, setting unreadable JSON lines aside as the
/// training matrix does, so scores line up with its rows.
fn read_lenient(path: &str, wanted: &Wanted) -> Result<input::Columns, TrainError> {
    if input::Format::detect(path, None) == input::Format::JsonLines {
        let file = std::fs::File::open(path)
            .map_err(|e| TrainError::Data(format!("cannot open {path}: {e}")))?;
        Ok(input::read_jsonl_lenient(std::io::BufReader::new(file), wanted)?.0)
    } else {
        Ok(input::read_path(path, wanted)?)
    }
}
