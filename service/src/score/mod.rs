//! Scorers: the [`Scorer`] trait and its CPU and GPU backends.
//!
//! Every backend takes a row-major `f32` batch and returns, per row, the
//! forest score and mean path length. The CPU backend is the reference twin of
//! the GPU kernel: same node layout, same operation order, so parity tests can
//! hold them to 1e-5.

pub mod cpu;

use crate::forest::PackedForest;
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

/// Which scoring backend to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Multi-threaded CPU.
    Cpu,
    /// wgpu compute shaders.
    Gpu,
    /// GPU when an adapter exists, else CPU (said once in the log).
    Auto,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Backend::Cpu),
            "gpu" => Ok(Backend::Gpu),
            "auto" => Ok(Backend::Auto),
            other => Err(format!(
                "unknown backend '{other}': expected auto, gpu or cpu"
            )),
        }
    }
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

/// A resolved backend: where scoring and z-score state will run.
#[derive(Clone)]
pub enum Engine {
    /// CPU twins.
    Cpu,
    /// A shared wgpu context.
    Gpu(std::sync::Arc<crate::gpu::GpuContext>),
}

impl Engine {
    /// Resolves `backend`. `gpu` without an adapter is an error listing the
    /// adapters seen; `auto` falls back to the CPU and logs that once. `auto`
    /// also passes over a software adapter (lavapipe, llvmpipe, WARP): the
    /// CPU scorer is an order of magnitude faster than a GPU emulated on
    /// the same cores; `gpu` still takes one.
    pub fn select(backend: Backend) -> Result<Engine, ScoreError> {
        match backend {
            Backend::Cpu => Ok(Engine::Cpu),
            Backend::Gpu => Ok(Engine::Gpu(crate::gpu::GpuContext::new()?)),
            Backend::Auto => match crate::gpu::GpuContext::new() {
                Ok(ctx) if ctx.adapter_info().device_type == wgpu::DeviceType::Cpu => {
                    tracing::warn!(
                        adapter = %ctx.adapter_info().name,
                        "only a software GPU adapter found, scoring on the CPU (faster); --backend gpu forces it"
                    );
                    Ok(Engine::Cpu)
                }
                Ok(ctx) => Ok(Engine::Gpu(ctx)),
                Err(e) => {
                    tracing::warn!(reason = %e, "no usable GPU adapter, scoring on the CPU");
                    Ok(Engine::Cpu)
                }
            },
        }
    }

    /// A forest scorer on this engine.
    pub fn scorer(&self, forest: &PackedForest) -> Result<Box<dyn Scorer>, ScoreError> {
        match self {
            Engine::Cpu => Ok(Box::new(cpu::CpuScorer::new(forest.clone()))),
            Engine::Gpu(ctx) => Ok(Box::new(crate::gpu::GpuScorer::new(ctx.clone(), forest)?)),
        }
    }

    /// A z-score engine (per-key state) on this engine.
    pub fn z_engine(&self) -> Result<Box<dyn crate::features::ZEngine>, ScoreError> {
        match self {
            Engine::Cpu => Ok(Box::<crate::features::CpuZEngine>::default()),
            Engine::Gpu(ctx) => Ok(Box::new(crate::gpu::GpuZEngine::new(ctx.clone())?)),
        }
    }

    /// Short name: "cpu" or "gpu".
    pub fn name(&self) -> &'static str {
        match self {
            Engine::Cpu => "cpu",
            Engine::Gpu(_) => "gpu",
        }
    }
}
