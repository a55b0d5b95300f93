// Per-key EWMA |z|: one invocation per slot segment.
//
// The host sorts a batch's entries stably by slot, so each segment holds one
// slot's entries in arrival order and no two invocations touch the same state.
// Each entry applies exactly the operations of `features::zscore::step`.
// Constants below are defined in Rust and checked against this text by a
// unit test in service/src/gpu/mod.rs.

const WORKGROUP_SIZE: u32 = 64u;
const FLAG_RESET: u32 = 1u;
const Z_INFINITE: f32 = -1.0;

// Same layouts as `features::zscore::{ZEntry, ZParams, ZState}` (16 bytes each).
struct ZEntry {
    slot: u32,
    flags: u32,
    value: f32,
    param: u32,
}

struct ZParams {
    alpha: f32,
    warmup: u32,
    robust_z: f32,
    _pad: u32,
}

struct ZState {
    mean: f32,
    variance: f32,
    count: u32,
    rejected: u32,
}

// Same layout as `gpu::zscore::BatchParams` (16 bytes).
struct Batch {
    segments: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read> params: array<ZParams>;
// Entries sorted by slot, arrival order kept within a slot.
@group(0) @binding(1) var<storage, read> entries: array<ZEntry>;
// Original (arrival) index of each sorted entry: where its |z| goes.
@group(0) @binding(2) var<storage, read> order: array<u32>;
// Segment s is entries[starts[s] .. starts[s + 1]].
@group(0) @binding(3) var<storage, read> starts: array<u32>;
@group(0) @binding(4) var<storage, read_write> states: array<ZState>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<uniform> batch: Batch;

@compute @workgroup_size(WORKGROUP_SIZE)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let segment = gid.y * groups.x * WORKGROUP_SIZE + gid.x;
    if segment >= batch.segments {
        return;
    }
    let begin = starts[segment];
    let end = starts[segment + 1u];
    let slot = entries[begin].slot;
    // The slot's state lives in a register for the whole segment.
    var state = states[slot];
    for (var i = begin; i < end; i++) {
        let entry = entries[i];
        var z = 0.0;
        if (entry.flags & FLAG_RESET) != 0u {
            state = ZState(entry.value, 0.0, 1u, 0u);
        } else {
            let p = params[entry.param];
            let d = entry.value - state.mean;
            if state.count < p.warmup {
                z = 0.0;
            } else if state.variance > 0.0 {
                z = abs(d) / sqrt(state.variance);
            } else if d == 0.0 {
                z = 0.0;
            } else {
                z = Z_INFINITE;
            }
            var alpha = p.alpha;
            var keep = false;
            if p.robust_z > 0.0 {
                // Running mean and variance for the first records, then the
                // EWMA; a warmed-up outlier stays out of the baseline unless
                // `warmup` records in a row did.
                alpha = max(p.alpha, 1.0 / (f32(state.count) + 1.0));
                let outlier = state.count >= p.warmup && state.variance > 0.0
                    && abs(d) > p.robust_z * sqrt(state.variance);
                if outlier && state.rejected < p.warmup {
                    state.rejected += 1u;
                    keep = true;
                } else {
                    state.rejected = 0u;
                }
            }
            if !keep {
                let incr = alpha * d;
                state.mean += incr;
                state.variance = (1.0 - alpha) * (state.variance + d * incr);
            }
            // saturating_add, as on the CPU.
            state.count = select(state.count + 1u, state.count, state.count == 0xffffffffu);
        }
        out[order[i]] = z;
    }
    states[slot] = state;
}
