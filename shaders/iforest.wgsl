// Isolation-forest scoring: one invocation per row.
//
// Twin of `CpuScorer::score_block` (service/src/score/cpu.rs): leaf path
// lengths are summed in tree order in f32, then mean = sum / trees and
// score = exp2(-mean / normaliser), so the two agree to ~1 ulp of the exp2.
// `iforest_common.wgsl` (prepended by the host) declares the workgroup
// size, `RowScore`, `Params` and bindings 2-4; constants below are defined
// in Rust and checked against this text by a unit test in
// service/src/gpu/mod.rs.

const LEAF: u32 = 0xffffffffu;

// Same layout as `forest::PackedNode` (16 bytes).
struct PackedNode {
    feature: u32,
    threshold: f32,
    left: u32,
    right: u32,
}

@group(0) @binding(0) var<storage, read> nodes: array<PackedNode>;
@group(0) @binding(1) var<storage, read> roots: array<u32>;

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
    let base = row * params.dims;
    var sum = 0.0;
    for (var t = 0u; t < params.trees; t++) {
        var node = nodes[roots[t]];
        // Validated models are at most 32 deep, so max_depth + 1 steps always
        // reach a leaf; the bound only guarantees the loop terminates.
        for (var step = 0u; step <= params.max_depth; step++) {
            if node.feature == LEAF {
                break;
            }
            // NaN compares false and goes right, as on the CPU.
            if rows[base + node.feature] <= node.threshold {
                node = nodes[node.left];
            } else {
                node = nodes[node.right];
            }
        }
        sum += node.threshold;
    }
    let mean_path = sum / f32(params.trees);
    out[row] = RowScore(exp2(-mean_path / params.normaliser), mean_path);
}
