//! Backend selection: which of the CPU twins or the GPU scores a model
//! and keeps z-score state. It sits above [`crate::score`],
//! [`crate::features`] and [`crate::gpu`], which need nothing of each other
//! to be chosen between.

use crate::forest::PackedForest;
use crate::score::cpu::CpuScorer;
use crate::score::{ScoreError, Scorer};

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

/// A resolved backend: where scoring and z-score state will run.
#[derive(Clone)]
pub enum Engine {
    /// CPU twins.
    Cpu,
    /// A shared wgpu context.
    #[cfg(feature = "gpu")]
    Gpu(std::sync::Arc<crate::gpu::GpuContext>),
}

impl Engine {
    /// Resolves `backend`. `gpu` without an adapter is an error listing the
    /// adapters seen; `auto` falls back to the CPU and logs that once. `auto`
    /// also passes over a software adapter (lavapipe, llvmpipe, WARP): the
    /// CPU scorer is an order of magnitude faster than a GPU emulated on
    /// the same cores; `gpu` still takes one.
    ///
    /// Built without the `gpu` feature, `gpu` is refused with a message
    /// saying so and `auto` is the CPU.
    pub fn select(backend: Backend) -> Result<Engine, ScoreError> {
        #[cfg(not(feature = "gpu"))]
        return match backend {
            Backend::Gpu => Err(ScoreError::NoAdapter(
                "this build has no GPU backend (built without the `gpu` feature): use --backend cpu"
                    .into(),
            )),
            Backend::Cpu | Backend::Auto => Ok(Engine::Cpu),
        };
        #[cfg(feature = "gpu")]
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
            Engine::Cpu => Ok(Box::new(CpuScorer::new(forest.clone()))),
            #[cfg(feature = "gpu")]
            Engine::Gpu(ctx) => Ok(Box::new(crate::gpu::GpuScorer::new(ctx.clone(), forest)?)),
        }
    }

    /// A z-score engine (per-key state) on this engine.
    pub fn z_engine(&self) -> Result<Box<dyn crate::features::ZEngine>, ScoreError> {
        match self {
            Engine::Cpu => Ok(Box::<crate::features::CpuZEngine>::default()),
            #[cfg(feature = "gpu")]
            Engine::Gpu(ctx) => Ok(Box::new(crate::gpu::GpuZEngine::new(ctx.clone())?)),
        }
    }

    /// Short name: "cpu" or "gpu".
    pub fn name(&self) -> &'static str {
        match self {
            Engine::Cpu => "cpu",
            #[cfg(feature = "gpu")]
            Engine::Gpu(_) => "gpu",
        }
    }
}
