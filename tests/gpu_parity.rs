//! GPU ↔ CPU parity: the same inputs down both paths, held to a stated
//! tolerance. Runs on any adapter, including lavapipe (software Vulkan) in CI.
//! Without an adapter these tests fail with the NoAdapter message: a missing
//! driver must not pass silently as "skipped".

use isoflow::engine::Engine;
use isoflow::features::spec::fields_spec;
use isoflow::features::zscore::{KeySlotTable, ZEntry, ZParams, FLAG_RESET, Z_INFINITE};
use isoflow::features::{CpuZEngine, ZEngine};
use isoflow::forest::PackedForest;
use isoflow::gpu::iforest::{Walk, IMPLICIT_MAX_DEPTH, IMPLICIT_MAX_DIMS};
use isoflow::gpu::{list_adapters, GpuContext, GpuScorer, GpuZEngine};
use isoflow::model::pb;
use isoflow::score::cpu::CpuScorer;
use isoflow::score::{RowScore, ScoreError, Scorer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::{Arc, OnceLock};

/// Scores and mean paths agree to this absolute difference.
const SCORE_TOLERANCE: f32 = 1e-5;
/// |z| agrees to this absolute or relative difference (FMA contraction).
const Z_TOLERANCE: f32 = 1e-5;

/// One device for the whole file: opening one per test is slow on lavapipe.
fn context() -> Arc<GpuContext> {
    static CONTEXT: OnceLock<Result<Arc<GpuContext>, String>> = OnceLock::new();
    match CONTEXT.get_or_init(|| GpuContext::new().map_err(|e| e.to_string())) {
        Ok(ctx) => ctx.clone(),
        Err(message) => panic!("GPU parity tests need an adapter: {message}"),
    }
}

/// A random valid tree of depth at most `max_depth`; thresholds and row
/// values share a coarse grid half the time so `x == threshold` is exercised.
fn random_tree(rng: &mut ChaCha8Rng, dims: usize, max_depth: usize, grid: bool) -> pb::Tree {
    let mut tree = pb::Tree::default();
    // (node index, depth) still to fill; node 0 is the root.
    let mut stack = vec![(0usize, 0usize)];
    tree.push_node(0, 0.0, 0);
    while let Some((node, depth)) = stack.pop() {
        let split = depth < max_depth && (depth == 0 || rng.gen_bool(0.8));
        if !split {
            tree.leaf_size[node] = rng.gen_range(1..=20);
            continue;
        }
        tree.feature[node] = rng.gen_range(0..dims as u32);
        tree.threshold[node] = sample(rng, grid);
        let left = tree.push_node(0, 0.0, 0);
        let right = tree.push_node(0, 0.0, 0);
        tree.left[node] = left as u32;
        tree.right[node] = right as u32;
        stack.push((left, depth + 1));
        stack.push((right, depth + 1));
    }
    tree
}

fn sample(rng: &mut ChaCha8Rng, grid: bool) -> f32 {
    if grid {
        rng.gen_range(0..16) as f32 / 16.0
    } else {
        rng.gen_range(-1.0..1.0)
    }
}

fn random_forest(seed: u64, dims: usize, trees: usize, max_depth: usize) -> (PackedForest, bool) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let grid = seed.is_multiple_of(2);
    let names: Vec<String> = (0..dims).map(|i| format!("f{i}")).collect();
    let model = pb::Model {
        name: "parity".into(),
        version: 1,
        feature_spec: Some(fields_spec(&names)),
        forest: Some(pb::Forest {
            sample_size: 1 << max_depth.min(16),
            trees: (0..trees)
                .map(|_| random_tree(&mut rng, dims, max_depth, grid))
                .collect(),
        }),
        threshold: 0.6,
        ..Default::default()
    };
    let forest = PackedForest::from_model(&model).expect("random forest is valid");
    (forest, grid)
}

fn random_rows(seed: u64, rows: usize, dims: usize, grid: bool) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    (0..rows * dims).map(|_| sample(&mut rng, grid)).collect()
}

fn assert_scores_match(gpu: &[RowScore], cpu: &[RowScore], case: &str) {
    assert_eq!(gpu.len(), cpu.len());
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        let diff = (g.score - c.score)
            .abs()
            .max((g.mean_path - c.mean_path).abs());
        assert!(
            diff <= SCORE_TOLERANCE,
            "{case}: row {i}: gpu {g:?} vs cpu {c:?} (diff {diff})"
        );
    }
}

#[test]
fn forest_scores_match_cpu() {
    let ctx = context();
    // (depth, dims, trees) over the shapes a model can take.
    let cases = [
        (1, 1, 7),
        (2, 3, 10),
        (4, 64, 12),
        (6, 16, 25),
        (8, 5, 30),
        (9, 16, 9),
        (9, 17, 6),
        (12, 16, 5),
        (10, 33, 16),
        (12, 8, 20),
    ];
    for (i, &(depth, dims, trees)) in cases.iter().enumerate() {
        let seed = 1000 + i as u64;
        let (forest, grid) = random_forest(seed, dims, trees, depth);
        let mut cpu = CpuScorer::new(forest.clone());
        let implicit = forest.max_depth <= IMPLICIT_MAX_DEPTH && dims <= IMPLICIT_MAX_DIMS;
        let best = GpuScorer::new(ctx.clone(), &forest).expect("gpu scorer");
        assert_eq!(
            best.walk() == Walk::Implicit,
            implicit,
            "depth {depth}, dims {dims}"
        );
        let linked = GpuScorer::linked(ctx.clone(), &forest).expect("gpu scorer");
        assert_eq!(linked.walk(), Walk::Linked);
        for mut gpu in [best, linked] {
            // The same scorer across sizes: buffers grow, then are reused.
            for rows in [1, 1001, 64, 3] {
                let batch = random_rows(seed + rows as u64, rows, dims, grid);
                let mut want = vec![RowScore::default(); rows];
                let mut got = vec![RowScore::default(); rows];
                cpu.score(&batch, &mut want).unwrap();
                gpu.score(&batch, &mut got).expect("gpu score");
                let case = format!(
                    "{:?}: depth {depth}, dims {dims}, trees {trees}, rows {rows}",
                    gpu.walk()
                );
                assert_scores_match(&got, &want, &case);
            }
        }
    }
}

#[test]
fn batches_larger_than_a_chunk_match_cpu() {
    let ctx = context();
    let (forest, grid) = random_forest(77, 9, 20, 8);
    let mut cpu = CpuScorer::new(forest.clone());
    // 100-row chunks: 2,501 rows is 26 chunks through both ping-pong sets,
    // the last one partial.
    let mut gpu = GpuScorer::with_chunk_rows(ctx, &forest, 100).expect("gpu scorer");
    assert_eq!(gpu.chunk_rows(), 100);
    for rows in [2_501, 200, 99] {
        let batch = random_rows(rows as u64, rows, forest.dims, grid);
        let mut want = vec![RowScore::default(); rows];
        let mut got = vec![RowScore::default(); rows];
        cpu.score(&batch, &mut want).unwrap();
        gpu.score(&batch, &mut got).expect("gpu score");
        assert_scores_match(&got, &want, &format!("chunked, rows {rows}"));
        // The timed path must produce the same numbers.
        let mut timed = vec![RowScore::default(); rows];
        let timings = gpu.score_timed(&batch, &mut timed).expect("timed score");
        assert_eq!(timings.rows, rows);
        assert_scores_match(&timed, &want, &format!("timed, rows {rows}"));
    }
}

#[test]
fn engine_builds_a_working_gpu_scorer() {
    let ctx = context();
    let (forest, grid) = random_forest(5, 4, 10, 5);
    let mut scorer = Engine::Gpu(ctx).scorer(&forest).expect("scorer");
    assert!(scorer.describe().starts_with("gpu"));
    let batch = random_rows(5, 10, 4, grid);
    let mut got = vec![RowScore::default(); 10];
    let mut want = vec![RowScore::default(); 10];
    scorer.score(&batch, &mut got).unwrap();
    CpuScorer::new(forest).score(&batch, &mut want).unwrap();
    assert_scores_match(&got, &want, "engine");
}

#[test]
fn bad_shapes_are_refused() {
    let ctx = context();
    let (forest, _) = random_forest(9, 3, 4, 3);
    let mut gpu = GpuScorer::new(ctx.clone(), &forest).expect("gpu scorer");
    let mut out = vec![RowScore::default(); 2];
    // Seven values are not whole 3-feature rows.
    let err = gpu.score(&[0.0; 7], &mut out).unwrap_err();
    assert!(matches!(err, ScoreError::Shape(_)), "{err}");
    // Two rows in, three output slots.
    let err = gpu
        .score(&[0.0; 6], &mut [RowScore::default(); 3])
        .unwrap_err();
    assert!(matches!(err, ScoreError::Shape(_)), "{err}");
    // The scorer still works afterwards.
    gpu.score(&[0.0; 6], &mut out)
        .expect("good batch after bad");

    let mut z = GpuZEngine::new(ctx).expect("z engine");
    let params = [ZParams::default()];
    let entry = ZEntry {
        slot: 5,
        ..ZEntry::default()
    };
    let err = z.run(&params, &[entry], 2, &mut [0.0]).unwrap_err();
    assert!(matches!(err, ScoreError::Shape(_)), "{err}");
    let err = z
        .run(&params, &[ZEntry::default()], 1, &mut [])
        .unwrap_err();
    assert!(matches!(err, ScoreError::Shape(_)), "{err}");
}

#[test]
fn zscores_match_cpu_across_batches() {
    let ctx = context();
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let params = [
        ZParams {
            alpha: 0.05,
            warmup: 10,
            robust_z: 0.0,
            _pad: 0,
        },
        // The robust baseline: 1/n start, clipped updates.
        ZParams {
            alpha: 0.3,
            warmup: 3,
            robust_z: 2.0,
            _pad: 0,
        },
        ZParams {
            alpha: 0.5,
            warmup: 0,
            robust_z: 0.0,
            _pad: 0,
        },
    ];
    // 60 keys over 3 features compete for 100 slots: least-recently-used
    // keys are evicted and later restart with FLAG_RESET.
    let mut table = KeySlotTable::new(100);
    let keys: Vec<String> = (0..60).map(|k| format!("key{k}")).collect();
    let mut cpu = CpuZEngine::default();
    let mut gpu = GpuZEngine::new(ctx).expect("z engine");
    let (mut resets, mut infinite) = (0, 0);
    for batch in 0..20 {
        let mut entries = Vec::new();
        for _ in 0..rng.gen_range(1..600) {
            // A few hot keys repeat many times within one batch.
            let key = if rng.gen_bool(0.5) {
                rng.gen_range(0..4)
            } else {
                rng.gen_range(0..60)
            };
            let feature = rng.gen_range(0..3u32);
            // Keys 0..8 are near constant (zero variance, then a jump);
            // the rest are noisy around a far-from-zero level.
            let value = if key < 8 {
                if rng.gen_bool(0.97) {
                    100.0
                } else {
                    101.0
                }
            } else {
                1e4 * key as f64 + rng.gen_range(-50.0..50.0)
            };
            entries.push(table.entry(feature, &keys[key], value));
        }
        resets += entries.iter().filter(|e| e.flags & FLAG_RESET != 0).count();
        let slots = table.allocated();
        let mut want = vec![0f32; entries.len()];
        let mut got = vec![0f32; entries.len()];
        cpu.run(&params, &entries, slots, &mut want).unwrap();
        gpu.run(&params, &entries, slots, &mut got).expect("gpu z");
        for (i, (&g, &c)) in got.iter().zip(&want).enumerate() {
            assert!(!g.is_nan(), "batch {batch} entry {i}: NaN");
            if c == Z_INFINITE {
                infinite += 1;
            }
            let diff = (g - c).abs();
            assert!(
                diff <= Z_TOLERANCE || diff <= Z_TOLERANCE * c.abs(),
                "batch {batch} entry {i} {:?}: gpu {g} vs cpu {c}",
                entries[i]
            );
        }
    }
    assert!(
        table.table().evictions() > 0,
        "the test should exercise slot reuse"
    );
    assert!(
        resets > 60 && infinite > 0,
        "resets {resets}, infinite {infinite}"
    );
    assert!(gpu.state_capacity() >= table.allocated());
}

#[test]
fn adapters_are_listed() {
    let ctx = context();
    let adapters = list_adapters();
    for adapter in &adapters {
        println!("{adapter}");
    }
    assert!(!adapters.is_empty());
    let name = &ctx.adapter_info().name;
    assert!(adapters.iter().any(|a| &a.name == name), "{adapters:?}");
    assert!(ctx.summary().to_string().contains(name.as_str()));
}

#[test]
fn bench_report_shows_agreement() {
    context();
    // ISOFLOW_BENCH_ROWS lets a developer run the full-size report here:
    // cargo test --release --test integration gpu_parity::bench_report -- --nocapture
    let rows = std::env::var("ISOFLOW_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let report = isoflow::bench::run(&isoflow::bench::BenchOptions {
        rows,
        trees: 20,
        keys: Some(50),
        ..Default::default()
    })
    .expect("bench");
    println!("{report}");
    let diff = report.max_abs_diff.expect("both backends ran");
    assert!(diff <= SCORE_TOLERANCE, "{report}");
    let z = report.zscore.expect("z-score bench ran");
    // |z| reaches the hundreds here; 1e-3 absolute is ~1e-5 relative.
    assert!(z.max_abs_diff.is_some_and(|d| d <= 1e-3), "{z:?}");
}
