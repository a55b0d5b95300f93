//! Shared fixtures for isoflow's end-to-end tests and benchmarks.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Rows of a bench, from `ISOFLOW_BENCH_ROWS` (CI shrinks it) or `default`.
pub fn bench_rows(default: usize) -> usize {
    std::env::var("ISOFLOW_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Row-major `rows × dims` matrix: a standard-normal-ish bulk with 1% of rows
/// pushed far out, so trees have the shape they have on real data.
pub fn synthetic_rows(rows: usize, dims: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut data = Vec::with_capacity(rows * dims);
    for r in 0..rows {
        let scale = if r % 100 == 0 { 8.0 } else { 1.0 };
        for _ in 0..dims {
            // Sum of uniforms: cheap, bell-shaped.
            let x: f32 = (0..4).map(|_| rng.gen::<f32>()).sum::<f32>() - 2.0;
            data.push(x * scale);
        }
    }
    data
}
