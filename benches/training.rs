//! Training throughput: 100 trees, ψ = 256 on 1M rows × 16 dims (shrink the
//! rows with `ISOFLOW_BENCH_ROWS`). Measures forest growth on data already in
//! memory, which is what `isoflow-train fit` reports as fit time.

/// The allocator the `isoflow` binaries run with, so the figures are theirs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, Criterion};
use isoflow_suite::{bench_rows, synthetic_rows};
use isoflow_train::iforest::IsolationForestParams;

fn training(c: &mut Criterion) {
    let dims = 16;
    let rows = bench_rows(1_000_000);
    let data = synthetic_rows(rows, dims, 2);
    let params = IsolationForestParams {
        trees: 100,
        sample_size: 256,
        seed: 0,
    };
    let mut group = c.benchmark_group("training");
    group.sample_size(20);
    group.bench_function(format!("fit_{rows}x{dims}_100trees_psi256"), |b| {
        b.iter(|| params.fit_rows(&data, dims).expect("fit"))
    });
    group.finish();
}

criterion_group!(benches, training);
criterion_main!(benches);
