//! GPU backend (wgpu). Placeholder until the kernels land: reports no adapter.

use crate::features::{zscore::ZEntry, zscore::ZParams, ZEngine};
use crate::forest::PackedForest;
use crate::score::{RowScore, ScoreError, Scorer};
use std::sync::Arc;

/// Long-lived wgpu device, queue and pipelines.
pub struct GpuContext {}

impl GpuContext {
    /// Opens the first suitable adapter.
    pub fn new() -> Result<Arc<Self>, ScoreError> {
        Err(ScoreError::NoAdapter("GPU backend not built".into()))
    }
}

/// Scores on a wgpu device.
pub struct GpuScorer {
    dims: usize,
}

impl GpuScorer {
    /// Uploads the forest to the context's device.
    pub fn new(_ctx: Arc<GpuContext>, forest: &PackedForest) -> Result<Self, ScoreError> {
        Ok(Self { dims: forest.dims })
    }
}

impl Scorer for GpuScorer {
    fn describe(&self) -> String {
        "gpu".into()
    }
    fn dims(&self) -> usize {
        self.dims
    }
    fn score(&mut self, _rows: &[f32], _out: &mut [RowScore]) -> Result<(), ScoreError> {
        Err(ScoreError::NoAdapter("GPU backend not built".into()))
    }
}

/// Z-score state resident on the GPU.
pub struct GpuZEngine {}

impl GpuZEngine {
    /// Allocates state on the context's device.
    pub fn new(_ctx: Arc<GpuContext>) -> Result<Self, ScoreError> {
        Ok(Self {})
    }
}

impl ZEngine for GpuZEngine {
    fn run(
        &mut self,
        _p: &[ZParams],
        _e: &[ZEntry],
        _s: usize,
        _o: &mut [f32],
    ) -> Result<(), ScoreError> {
        Err(ScoreError::NoAdapter("GPU backend not built".into()))
    }
}
