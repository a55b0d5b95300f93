// Isolation-forest scoring, tiled: one invocation per row, TILE_ROWS rows per
// workgroup, trees walked out of workgroup memory.
//
// Used for forests of depth <= 9 and rows of <= 16 features (most models:
// ψ = 256 gives depth 8). The trees are in the implicit layout of
// `forest::ImplicitForest`: node i has children 2i+1 and 2i+2, every walk of
// a tree takes the same number of steps, so invocations never diverge. The
// host groups consecutive trees into stages of at most STAGE_WORDS words;
// the workgroup copies a stage into workgroup memory with coalesced loads,
// then every row walks those trees. The workgroup's rows sit in workgroup
// memory too, at an odd stride so rows reading the same feature hit
// different banks. Sums run in tree order in f32 exactly as in
// `CpuScorer::score_block` (service/src/score/cpu.rs).
//
// Constants below are defined in Rust (service/src/gpu/iforest.rs) and
// checked against this text by a unit test in service/src/gpu/mod.rs.

const TILE_ROWS: u32 = 128u;
const TILE_STRIDE: u32 = 17u;
const STAGE_WORDS: u32 = 1792u;

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
    stages: u32,
    _pad1: u32,
    _pad2: u32,
}

// Stages back to back. Per tree: 2^D - 1 split features, 2^D - 1 split
// thresholds (f32 bits), 2^D leaf path lengths (f32 bits).
@group(0) @binding(0) var<storage, read> words: array<u32>;
// Per stage (4 words): first word in `words`, word count, first tree, trees.
// Then per tree (4 words): depth, and the offsets of its features,
// thresholds and leaves within its stage.
@group(0) @binding(1) var<storage, read> directory: array<u32>;
@group(0) @binding(2) var<storage, read> rows: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<RowScore>;
@group(0) @binding(4) var<uniform> params: Params;

var<workgroup> tile: array<f32, 2176>; // TILE_ROWS * TILE_STRIDE
var<workgroup> stage: array<u32, STAGE_WORDS>;

@compute @workgroup_size(TILE_ROWS)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) local: u32,
) {
    // Large chunks are dispatched as a 2-D grid; rebuild the linear tile.
    // Every value below up to `has_row` is the same across the workgroup, so
    // the early return and the barriers are in uniform control flow.
    let first = (wid.y * groups.x + wid.x) * TILE_ROWS;
    if first >= params.rows {
        return;
    }
    let count = min(TILE_ROWS, params.rows - first);
    let dims = params.dims;
    let stride = dims | 1u;
    let base = first * dims;
    for (var i = local; i < count * dims; i += TILE_ROWS) {
        let r = i / dims;
        tile[r * stride + (i - r * dims)] = rows[base + i];
    }
    let has_row = local < count;
    let own = local * stride;
    var sum = 0.0;
    for (var s = 0u; s < params.stages; s++) {
        // Also orders the tile's writes before the first stage's reads.
        workgroupBarrier();
        let start = directory[4u * s];
        let len = directory[4u * s + 1u];
        for (var i = local; i < len; i += TILE_ROWS) {
            stage[i] = words[start + i];
        }
        workgroupBarrier();
        if has_row {
            let t0 = directory[4u * s + 2u];
            let t1 = t0 + directory[4u * s + 3u];
            for (var t = t0; t < t1; t++) {
                let e = 4u * (params.stages + t);
                let depth = directory[e];
                let features = directory[e + 1u];
                let thresholds = directory[e + 2u];
                var pos = 0u;
                for (var level = 0u; level < depth; level++) {
                    let x = tile[own + stage[features + pos]];
                    // NaN compares false and goes right, as on the CPU.
                    let right = !(x <= bitcast<f32>(stage[thresholds + pos]));
                    pos = 2u * pos + 1u + select(0u, 1u, right);
                }
                let leaf = pos - ((1u << depth) - 1u);
                sum += bitcast<f32>(stage[directory[e + 3u] + leaf]);
            }
        }
    }
    if has_row {
        let mean_path = sum / f32(params.trees);
        out[first + local] = RowScore(exp2(-mean_path / params.normaliser), mean_path);
    }
}
