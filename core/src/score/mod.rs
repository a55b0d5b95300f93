//! Scorers: the [`Scorer`] trait and its CPU and GPU backends.
//!
//! Every backend takes a row-major `f32` batch and returns, per row, the
//! forest score and mean path length. The CPU backend is the reference twin of
//! the GPU kernel: same node layout, same operation order, so parity tests can
//! hold them to 1e-5.

pub mod cpu;

use bytemuck::{Pod, Zeroable};

/// Output of scoring one row, laid out as in `shaders/iforest.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct RowScore {
    /// 2^(−E[h(x)]/c(ψ)); higher is more anomalous.
    pub score: f32,
    /// E[h(x)], the mean path length over the trees.
    pub mean_path: f32,
}

/// Why a batch could not be scored.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// The batch's length is not a multiple of the model's feature count, or
    /// the output slice has the wrong length.
    #[error("batch shape mismatch: {0}")]
    Shape(String),
    /// The records cannot produce the model's features (e.g. no event time).
    #[error("{0}")]
    Features(String),
    /// No usable GPU adapter.
    #[error("{0}")]
    NoAdapter(String),
    /// The GPU device failed or was lost; rebuild the scorer or fall back to CPU.
    #[error("GPU device error: {0}")]
    Device(String),
}

/// Scores batches of feature rows against one model.
pub trait Scorer: Send {
    /// Backend name for logs and metrics (`cpu`, `gpu: <adapter>`).
    fn describe(&self) -> String;

    /// Feature columns per row.
    fn dims(&self) -> usize;

    /// Scores `rows` (row-major, `dims()` columns) into `out` (one per row).
    fn score(&mut self, rows: &[f32], out: &mut [RowScore]) -> Result<(), ScoreError>;
}

/// Checks that `rows` and `out` describe the same number of `dims`-wide rows.
pub(crate) fn check_shape(dims: usize, rows: &[f32], out: &[RowScore]) -> Result<(), ScoreError> {
    if dims == 0 || !rows.len().is_multiple_of(dims) {
        return Err(ScoreError::Shape(format!(
            "{} values is not a whole number of {dims}-feature rows",
            rows.len()
        )));
    }
    if rows.len() / dims != out.len() {
        return Err(ScoreError::Shape(format!(
            "{} rows in, {} output slots",
            rows.len() / dims,
            out.len()
        )));
    }
    Ok(())
}
