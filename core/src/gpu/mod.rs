//! GPU backend on wgpu: the one module that knows about the GPU.
//!
//! - [`context`]: adapter discovery and the long-lived device, queue and
//!   compiled pipelines, shared by every scorer through an `Arc`. Acquiring a
//!   device is separate from the work so tests can bring their own adapter.
//! - [`iforest`]: [`GpuScorer`], the host side of the two isolation-forest
//!   kernels (implicit layout for narrow forests; linked for the rest). The
//!   forest is uploaded once; batches stream through two ping-pong buffer sets
//!   so the upload of one chunk overlaps the compute and readback of the last.
//! - [`zscore`]: [`GpuZEngine`], per-slot EWMA state resident on the device.
//! - `buffers`: storage buffers that grow geometrically and are reused.
//!
//! Every call is synchronous (map, then `poll` on the calling thread): the
//! scorer runs on its own thread, never inside an async runtime.

mod buffers;
pub mod context;
pub mod iforest;
pub mod zscore;

pub use context::{list_adapters, AdapterSummary, GpuContext};
pub use iforest::{GpuScorer, GpuTimings};
pub use zscore::GpuZEngine;

/// The wgpu version this backend is built on, for callers (tests, embedders)
/// that bring their own adapter to [`GpuContext::from_adapter`].
pub use wgpu;

/// Invocations per workgroup in both kernels (`WORKGROUP_SIZE` in the WGSL).
pub const WORKGROUP_SIZE: u32 = 64;

/// The text of files under `shaders/`, one after another.
macro_rules! shader_source {
    ($($file:literal),+) => {
        concat!($(include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../shaders/", $file))),+)
    };
}

/// Source of the isolation-forest kernel: the declarations both forest
/// kernels share, then the kernel.
pub(crate) const IFOREST_WGSL: &str = shader_source!("iforest_common.wgsl", "iforest.wgsl");

/// Source of the implicit-layout isolation-forest kernel (narrow forests),
/// after the same shared declarations.
pub(crate) const IFOREST_IMPLICIT_WGSL: &str =
    shader_source!("iforest_common.wgsl", "iforest_implicit.wgsl");

/// Source of the z-score kernel.
pub(crate) const ZSCORE_WGSL: &str = shader_source!("zscore.wgsl");

/// Workgroup grid for `groups` workgroups when one dimension holds at most
/// `max_per_dim`: the kernels rebuild the linear index from
/// `num_workgroups.x`, so a 2-D grid covers batches a 1-D one cannot.
pub(crate) fn dispatch_grid(groups: u32, max_per_dim: u32) -> (u32, u32) {
    let max_per_dim = max_per_dim.max(1);
    if groups <= max_per_dim {
        (groups.max(1), 1)
    } else {
        (max_per_dim, groups.div_ceil(max_per_dim))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::zscore::{FLAG_RESET, Z_INFINITE};
    use crate::forest::LEAF;

    /// Rust defines the shared constants; the shaders must spell the same values.
    #[test]
    fn shader_constants_match_rust() {
        let workgroup = format!("const WORKGROUP_SIZE: u32 = {WORKGROUP_SIZE}u;");
        assert!(
            IFOREST_WGSL.contains(&workgroup),
            "iforest.wgsl: {workgroup}"
        );
        assert!(ZSCORE_WGSL.contains(&workgroup), "zscore.wgsl: {workgroup}");
        let leaf = format!("const LEAF: u32 = {LEAF:#x}u;");
        assert!(IFOREST_WGSL.contains(&leaf), "iforest.wgsl: {leaf}");
        let reset = format!("const FLAG_RESET: u32 = {FLAG_RESET}u;");
        assert!(ZSCORE_WGSL.contains(&reset), "zscore.wgsl: {reset}");
        let infinite = format!("const Z_INFINITE: f32 = {Z_INFINITE:?};");
        assert!(ZSCORE_WGSL.contains(&infinite), "zscore.wgsl: {infinite}");
        for src in [IFOREST_WGSL, ZSCORE_WGSL] {
            assert!(src.contains("@workgroup_size(WORKGROUP_SIZE)"));
        }
        assert!(IFOREST_IMPLICIT_WGSL.contains(&workgroup));
        assert!(IFOREST_IMPLICIT_WGSL.contains("@workgroup_size(WORKGROUP_SIZE)"));
    }

    #[test]
    fn dispatch_grid_covers_every_group() {
        assert_eq!(dispatch_grid(0, 65_535), (1, 1));
        assert_eq!(dispatch_grid(10, 65_535), (10, 1));
        let (x, y) = dispatch_grid(200_000, 65_535);
        assert!(x <= 65_535 && y <= 65_535 && x as u64 * y as u64 >= 200_000);
    }
}
