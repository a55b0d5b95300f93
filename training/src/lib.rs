//! isoflow-train: offline training and evaluation of isoflow models.
//!
//! Map of the crate:
//! - [`iforest`]: isolation-forest growth (parallel, seeded per tree) behind
//!   linfa's `Fit` / `Predict` traits.
//! - [`data`]: training matrices from numeric CSV columns, or any input
//!   replayed through the service's own feature pipeline (no train/serve skew).
//! - [`eval`]: ROC AUC (tie-aware ranks), PR AUC, precision/recall, and the
//!   contamination threshold.
//! - [`report`]: `report.json` and PNG plots.
//! - [`streams`]: a stream's detection figures against a truth file.
//! - [`topic`]: `fit --brokers/--topic`, a topic's history copied to a file.
//! - [`train`]: the whole `fit` command as a library call.

pub mod data;
pub mod eval;
pub mod iforest;
pub mod report;
pub mod streams;
pub mod topic;
pub mod train;

/// Why training or evaluation failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Bad hyper-parameters.
    #[error("invalid parameters: {0}")]
    Params(String),
    /// Unusable training data.
    #[error("training data: {0}")]
    Data(String),
    /// Input could not be read.
    #[error(transparent)]
    Input(#[from] isoflow_core::input::InputError),
    /// Feature spec refused.
    #[error(transparent)]
    Spec(#[from] isoflow_core::features::spec::SpecError),
    /// Model refused or unwritable.
    #[error(transparent)]
    Model(#[from] isoflow_core::model::ModelError),
    /// Scoring failed.
    #[error(transparent)]
    Score(#[from] isoflow_core::score::ScoreError),
    /// The detector could not be built or could not score.
    #[error(transparent)]
    Detect(#[from] isoflow_core::detector::DetectError),
    /// Report could not be written.
    #[error("report: {0}")]
    Report(String),
    /// linfa refused the dataset.
    #[error("linfa: {0}")]
    Linfa(#[from] linfa::Error),
}
