//! CPU scoring throughput: 1M rows × 16 dims, 100 trees, ψ = 256 (shrink the
//! rows with `ISOFLOW_BENCH_ROWS`). Reports rows/s via `Throughput::Elements`.

/// The allocator the `isoflow` binaries run with, so the figures are theirs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use isoflow::score::{
    cpu::{Attribution, CpuScorer},
    RowScore, Scorer,
};
use isoflow_suite::{bench_rows, synthetic_rows};
use isoflow_train::iforest::{IsolationForest, IsolationForestParams};

/// 100 trees, ψ = 256, grown on `data` (rows of `dims` values).
fn forest(data: &[f32], dims: usize) -> IsolationForest {
    IsolationForestParams {
        trees: 100,
        sample_size: 256,
        seed: 0,
    }
    .fit_rows(data, dims)
    .expect("fit")
}

fn cpu_scoring(c: &mut Criterion) {
    let rows = bench_rows(1_000_000);
    let mut group = c.benchmark_group("cpu_scoring");
    group.sample_size(10);
    group.throughput(Throughput::Elements(rows as u64));
    // 16 dims is the shape; 3 dims is the whole-process CSV's.
    for dims in [16, 3] {
        let data = synthetic_rows(rows, dims, 1);
        let forest = forest(&data, dims);
        let mut out = vec![RowScore::default(); rows];
        // `new` takes the AVX-512 walk where the CPU has it; `portable` is
        // the scalar walk, measured side by side.
        let scorers = [
            ("best", CpuScorer::new(forest.packed().clone())),
            ("portable", CpuScorer::portable(forest.packed().clone())),
        ];
        for (walk, mut scorer) in scorers {
            eprintln!("{walk}: {}", scorer.describe());
            group.bench_function(format!("{rows}x{dims}_100trees_psi256/{walk}"), |b| {
                b.iter(|| scorer.score(&data, &mut out).expect("score"))
            });
        }
    }
    group.finish();
}

/// Per-feature shares of alerting rows (the alert's top features): 1,000
/// rows of 7 dims, 100 trees, ψ = 256, the fraud model's shape.
fn attribution(c: &mut Criterion) {
    let (rows, dims) = (1_000, 7);
    let data = synthetic_rows(rows, dims, 2);
    let forest = forest(&data, dims);
    let mut group = c.benchmark_group("attribution");
    group.throughput(Throughput::Elements(rows as u64));
    group.bench_function(format!("{rows}x{dims}_100trees_psi256"), |b| {
        b.iter(|| forest.packed().attribution_rows(&data))
    });
    // What the pipeline runs: the AVX-512 walk where the CPU has it.
    let fast = Attribution::new(forest.packed().clone());
    let walk = if fast.vector() { "vector" } else { "branching" };
    group.bench_function(format!("{rows}x{dims}_100trees_psi256/{walk}"), |b| {
        b.iter(|| fast.rows(&data))
    });
    group.finish();
}

criterion_group!(benches, cpu_scoring, attribution);
criterion_main!(benches);
