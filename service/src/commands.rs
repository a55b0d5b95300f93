//! The work behind the CLI commands; `main` only parses flags and calls these.

use crate::features::{FeaturePipeline, DEFAULT_SLOT_CAPACITY};
use crate::forest::PackedForest;
use crate::model::{self, ModelError};
use crate::score::{Backend, Engine, RowScore, ScoreError};
use crate::{decision, input, output};
use std::io::Write;
use std::path::PathBuf;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Model refused.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Input unreadable or malformed.
    #[error(transparent)]
    Input(#[from] input::InputError),
    /// Scoring failed.
    #[error(transparent)]
    Score(#[from] ScoreError),
    /// Output could not be written.
    #[error("cannot write output {path}: {source}")]
    Output {
        /// Output path.
        path: String,
        /// I/O error.
        source: std::io::Error,
    },
}

/// Options of `isoflow score`.
#[derive(Clone, Debug)]
pub struct ScoreOptions {
    /// Model file.
    pub model: PathBuf,
    /// Input path (CSV or JSON lines) or `-`.
    pub input: String,
    /// Output path or `-`.
    pub output: String,
    /// Backend.
    pub backend: Backend,
}

/// What `score_file` did.
#[derive(Clone, Debug)]
pub struct ScoreSummary {
    /// Rows scored.
    pub rows: usize,
    /// Rows that alerted.
    pub alerts: usize,
    /// Backend that scored ("cpu" / "gpu").
    pub backend: &'static str,
}

/// Scores every row of a file against a model and writes `score,alert[,z_*]`.
pub fn score_file(opts: &ScoreOptions) -> Result<ScoreSummary, CommandError> {
    let model = model::load(&opts.model)?;
    let spec = model.feature_spec.clone().unwrap_or_default();
    let mut pipeline = FeaturePipeline::new(&spec, DEFAULT_SLOT_CAPACITY);
    let started = std::time::Instant::now();
    let columns = input::read_path(&opts.input, pipeline.wanted())?;
    let read_ms = started.elapsed().as_secs_f64() * 1e3;
    let engine = Engine::select(opts.backend)?;
    let scored = score_columns(&model, &mut pipeline, &columns, &engine)?;
    let score_ms = started.elapsed().as_secs_f64() * 1e3 - read_ms;
    let write_err = |source| CommandError::Output {
        path: opts.output.clone(),
        source,
    };
    let sink: Box<dyn Write> = if opts.output == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::fs::File::create(&opts.output).map_err(write_err)?)
    };
    let mut sink = std::io::BufWriter::with_capacity(1 << 20, sink);
    output::write_scores(
        &mut sink,
        &scored.scores,
        &scored.alerts,
        pipeline.z_names(),
        &scored.z,
    )
    .map_err(write_err)?;
    sink.flush().map_err(write_err)?;
    tracing::info!(
        rows = scored.scores.len(),
        read_ms,
        score_ms,
        write_ms = started.elapsed().as_secs_f64() * 1e3 - read_ms - score_ms,
        backend = engine.name(),
        "scored file"
    );
    Ok(ScoreSummary {
        rows: scored.scores.len(),
        alerts: scored.alerts.iter().filter(|&&a| a).count(),
        backend: engine.name(),
    })
}

/// Scores, decisions and z-scores of a batch of records.
#[derive(Clone, Debug, Default)]
pub struct Scored {
    /// Forest score and mean path per row.
    pub scores: Vec<RowScore>,
    /// Alert decision per row.
    pub alerts: Vec<bool>,
    /// Row-major |z| per z-feature.
    pub z: Vec<f32>,
}

/// Runs records (read with `pipeline.wanted()`) through features, scorer and
/// decision on `engine`.
pub fn score_columns(
    model: &model::Model,
    pipeline: &mut FeaturePipeline,
    columns: &input::Columns,
    engine: &Engine,
) -> Result<Scored, CommandError> {
    let forest = PackedForest::from_model(model)?;
    let features = pipeline.compute(columns, engine.z_engine()?.as_mut())?;
    let mut scores = vec![RowScore::default(); features.rows];
    engine
        .scorer(&forest)?
        .score(&features.matrix, &mut scores)?;
    let nz = pipeline.z_names().len();
    let alerts = scores
        .iter()
        .enumerate()
        .map(|(row, s)| {
            decision::is_alert(
                s.score,
                model.threshold,
                &features.z[row * nz..(row + 1) * nz],
                pipeline.z_alert(),
            )
        })
        .collect();
    Ok(Scored {
        scores,
        alerts,
        z: features.z,
    })
}

/// `isoflow model inspect`: the model's metadata as pretty JSON.
pub fn inspect(path: &std::path::Path) -> Result<String, CommandError> {
    let model = model::load(path)?;
    Ok(serde_json::to_string_pretty(&model::metadata_json(&model)).expect("JSON values serialize"))
}
