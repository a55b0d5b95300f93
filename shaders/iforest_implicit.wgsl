// Isolation-forest scoring on the implicit layout: one invocation per row.
//
// Used for forests of depth <= 12 and rows of <= 16 features (most models:
// ψ = 256 gives depth 8). Trees are in the layout of `forest::ImplicitForest`:
// node i has children 2i+1 and 2i+2, so each level of a tree is one
// contiguous run of 8-byte splits. A warp's invocations at one level read a
// few cache lines between them, where the linked layout scatters them over
// the whole tree, and every walk of a tree takes the same number of steps,
// so invocations never diverge. The row's features sit in four vec4
// registers; picking one is three selects and a component extract instead of
// a divergent memory load per level. Sums run in tree order in f32 exactly
// as in `CpuScorer::score_block` (service/src/score/cpu.rs).
//
// `iforest_common.wgsl` (prepended by the host) declares the workgroup
// size, `RowScore`, `Params` and bindings 2-4.

// Every tree's splits: (feature, threshold bits).
@group(0) @binding(0) var<storage, read> splits: array<vec2<u32>>;
// Per tree (4 words): first split, first leaf (an index into this array),
// depth, unused. Then every tree's leaf path lengths (f32 bits).
@group(0) @binding(1) var<storage, read> index: array<u32>;

// Feature f (< 16) of the row held in x0..x3.
fn pick(f: u32, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>) -> f32 {
    let low = select(x0, x1, f >= 4u);
    let high = select(x2, x3, f >= 12u);
    return select(low, high, f >= 8u)[f & 3u];
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    // Large chunks are dispatched as a 2-D grid; rebuild the linear row.
    let row = gid.y * groups.x * WORKGROUP_SIZE + gid.x;
    if row >= params.rows {
        return;
    }
    // Columns past the row's width repeat its last feature; no split reads them.
    let base = row * params.dims;
    let last = params.dims - 1u;
    let x0 = vec4(rows[base + min(0u, last)], rows[base + min(1u, last)],
                  rows[base + min(2u, last)], rows[base + min(3u, last)]);
    let x1 = vec4(rows[base + min(4u, last)], rows[base + min(5u, last)],
                  rows[base + min(6u, last)], rows[base + min(7u, last)]);
    let x2 = vec4(rows[base + min(8u, last)], rows[base + min(9u, last)],
                  rows[base + min(10u, last)], rows[base + min(11u, last)]);
    let x3 = vec4(rows[base + min(12u, last)], rows[base + min(13u, last)],
                  rows[base + min(14u, last)], rows[base + min(15u, last)]);
    var sum = 0.0;
    for (var t = 0u; t < params.trees; t++) {
        let first = index[4u * t];
        let leaves = index[4u * t + 1u];
        let depth = index[4u * t + 2u];
        var pos = 0u;
        for (var level = 0u; level < depth; level++) {
            let split = splits[first + pos];
            // NaN compares false and goes right, as on the CPU.
            let right = !(pick(split.x, x0, x1, x2, x3) <= bitcast<f32>(split.y));
            pos = 2u * pos + 1u + select(0u, 1u, right);
        }
        sum += bitcast<f32>(index[leaves + pos - ((1u << depth) - 1u)]);
    }
    let mean_path = sum / f32(params.trees);
    out[row] = RowScore(exp2(-mean_path / params.normaliser), mean_path);
}
