//! CPU scoring throughput: 1M rows × 16 dims, 100 trees, ψ = 256 (shrink the
//! rows with `ISOFLOW_BENCH_ROWS`). Reports rows/s via `Throughput::Elements`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use isoflow::score::{cpu::CpuScorer, RowScore, Scorer};
use isoflow_suite::{bench_rows, synthetic_rows};
use isoflow_train::iforest::IsolationForestParams;

fn cpu_scoring(c: &mut Criterion) {
    let dims = 16;
    let rows = bench_rows(1_000_000);
    let data = synthetic_rows(rows, dims, 1);
    let forest = IsolationForestParams {
        trees: 100,
        sample_size: 256,
        seed: 0,
    }
    .fit_rows(&data, dims)
    .expect("fit");
    let mut scorer = CpuScorer::new(forest.packed().clone());
    let mut out = vec![RowScore::default(); rows];
    let mut group = c.benchmark_group("cpu_scoring");
    group.sample_size(10);
    group.throughput(Throughput::Elements(rows as u64));
    group.bench_function(format!("{rows}x{dims}_100trees_psi256"), |b| {
        b.iter(|| scorer.score(&data, &mut out).expect("score"))
    });
    group.finish();
}

criterion_group!(benches, cpu_scoring);
criterion_main!(benches);
