// Declarations both isolation-forest kernels share (`iforest.wgsl` and
// `iforest_implicit.wgsl`); the host prepends this file to each of them
// (`gpu::IFOREST_WGSL`, `gpu::IFOREST_IMPLICIT_WGSL`). Constants below are
// defined in Rust and checked against this text by a unit test in
// service/src/gpu/mod.rs.

const WORKGROUP_SIZE: u32 = 64u;

// Same layout as `score::RowScore` (8 bytes).
struct RowScore {
    score: f32,
    mean_path: f32,
}

// Same layout as `gpu::iforest::KernelParams` (32 bytes).
struct Params {
    rows: u32,
    dims: u32,
    trees: u32,
    max_depth: u32,
    normaliser: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// Bindings 0 and 1 hold the forest, in each kernel's own layout.
@group(0) @binding(2) var<storage, read> rows: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<RowScore>;
@group(0) @binding(4) var<uniform> params: Params;
