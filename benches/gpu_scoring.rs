//! CPU against GPU forest scoring on the same batch.
//!
//! - `forest/cpu`: `CpuScorer::score` on all cores.
//! - `forest/gpu_end_to_end`: `GpuScorer::score`, transfers included (the
//!   pipelined path the service uses).
//! - `forest/gpu_upload`, `gpu_kernel`, `gpu_readback`: the phases of
//!   `GpuScorer::score_timed`, each measured with `iter_custom` (wall clock
//!   with a wait after each phase; the kernel runs on rows already resident).
//!
//! Default size: 1M rows × 16 dims, 100 trees, ψ = 256. `ISOFLOW_BENCH_ROWS`
//! shrinks the batch (CI, software adapters). Without a GPU adapter only the
//! CPU is measured and the reason is printed.

/// The allocator the `isoflow` binaries run with, so the figures are theirs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use isoflow::forest::PackedForest;
use isoflow::gpu::{GpuContext, GpuScorer, GpuTimings};
use isoflow::random::random_model;
use isoflow::score::cpu::CpuScorer;
use isoflow::score::{RowScore, Scorer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;
use std::time::Duration;

const DIMS: usize = 16;

/// Picks one phase out of a timed run.
type Phase = fn(&GpuTimings) -> Duration;
const TREES: usize = 100;
const SAMPLE_SIZE: usize = 256;

fn rows_from_env() -> usize {
    std::env::var("ISOFLOW_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1_000_000)
}

fn scoring(c: &mut Criterion) {
    let rows = rows_from_env();
    let model = random_model(DIMS, TREES, SAMPLE_SIZE, 7);
    let forest = PackedForest::from_model(&model).expect("synthetic model is valid");
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let batch: Vec<f32> = (0..rows * DIMS).map(|_| rng.gen::<f32>()).collect();
    let mut out = vec![RowScore::default(); rows];

    let mut group = c.benchmark_group("forest");
    group
        .throughput(Throughput::Elements(rows as u64))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));

    let mut cpu = CpuScorer::new(forest.clone());
    group.bench_function("cpu", |b| {
        b.iter(|| cpu.score(black_box(&batch), &mut out).expect("cpu score"))
    });

    match GpuContext::new() {
        Ok(ctx) => {
            eprintln!("gpu adapter: {}", ctx.adapter_info().name);
            let mut gpu = GpuScorer::new(ctx, &forest).expect("gpu scorer");
            group.bench_function("gpu_end_to_end", |b| {
                b.iter(|| gpu.score(black_box(&batch), &mut out).expect("gpu score"))
            });
            let phases: [(&str, Phase); 3] = [
                ("gpu_upload", |t| t.upload),
                ("gpu_kernel", |t| t.kernel),
                ("gpu_readback", |t| t.readback),
            ];
            for (name, phase) in phases {
                bench_phase(&mut group, name, &mut gpu, &batch, &mut out, phase);
            }
        }
        Err(e) => eprintln!("skipping GPU benches: {e}"),
    }
    group.finish();
}

fn bench_phase(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    gpu: &mut GpuScorer,
    batch: &[f32],
    out: &mut [RowScore],
    phase: Phase,
) {
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| phase(&gpu.score_timed(batch, out).expect("timed gpu score")))
                .sum()
        })
    });
}

criterion_group!(benches, scoring);
criterion_main!(benches);
