//! `isoflow bench`: CPU against GPU on the same synthetic model and rows.
//!
//! The model is grown like a real isolation forest (random splits on a ψ-row
//! uniform sub-sample, depth ≤ ⌈log₂ ψ⌉), so tree shapes and walk lengths are
//! representative without a training run ([`crate::random::random_model`]);
//! a seed reproduces a run.

use crate::features::zscore::{KeySlotTable, ZEntry, ZParams, Z_INFINITE};
use crate::features::{CpuZEngine, ZEngine};
use crate::forest::PackedForest;
use crate::gpu::iforest::Walk;
use crate::gpu::{GpuContext, GpuScorer, GpuTimings, GpuZEngine};
use crate::random::{random_model, SplitMix64};
use crate::score::cpu::CpuScorer;
use crate::score::{RowScore, ScoreError, Scorer};
use std::fmt;
use std::time::{Duration, Instant};

/// Which backends a bench run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchBackend {
    /// The CPU scorer only.
    Cpu,
    /// The GPU scorer only (no parity check).
    Gpu,
    /// Both, on the same rows, with the largest CPU/GPU difference reported.
    Both,
}

impl std::str::FromStr for BenchBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "gpu" => Ok(Self::Gpu),
            "both" => Ok(Self::Both),
            other => Err(format!(
                "unknown bench backend '{other}': expected cpu, gpu or both"
            )),
        }
    }
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Backends to run.
    pub backend: BenchBackend,
    /// Rows scored (one batch).
    pub rows: usize,
    /// Features per row.
    pub dims: usize,
    /// Trees in the synthetic forest.
    pub trees: usize,
    /// Sub-sample size ψ each tree is grown from (fixes depth and c(ψ)).
    pub sample_size: usize,
    /// Also measure z-scores: one record per row spread over this many keys.
    pub keys: Option<usize>,
    /// Seed for the model, the rows and the keys.
    pub seed: u64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            backend: BenchBackend::Both,
            rows: 1_000_000,
            dims: 16,
            trees: 100,
            sample_size: 256,
            keys: None,
            seed: 1,
        }
    }
}

/// Forest scoring results.
#[derive(Clone, Debug, Default)]
pub struct BenchReport {
    /// Rows scored.
    pub rows: usize,
    /// Features per row.
    pub dims: usize,
    /// Trees.
    pub trees: usize,
    /// ψ.
    pub sample_size: usize,
    /// CPU scorer description and wall time for the batch.
    pub cpu: Option<(String, Duration)>,
    /// GPU adapter name, when the GPU ran.
    pub adapter: Option<String>,
    /// GPU phases; `total` is the end-to-end time including transfers.
    pub gpu: Option<GpuTimings>,
    /// Which kernel the GPU phases ran.
    pub gpu_walk: Option<Walk>,
    /// Kernel-only time of the linked walk on the same rows, when the
    /// phases above ran the implicit walk: the two kernels side by side.
    pub linked_kernel: Option<Duration>,
    /// Largest |score_cpu − score_gpu| (and mean path) over all rows.
    pub max_abs_diff: Option<f32>,
    /// Z-score results, when keys were asked for.
    pub zscore: Option<ZBenchReport>,
}

/// Z-score results.
#[derive(Clone, Debug, Default)]
pub struct ZBenchReport {
    /// Distinct keys.
    pub keys: usize,
    /// Records run through the engines.
    pub records: usize,
    /// CPU twin wall time.
    pub cpu: Option<Duration>,
    /// GPU engine wall time (sort, upload, kernel, readback).
    pub gpu: Option<Duration>,
    /// Largest |z_cpu − z_gpu| over finite values.
    pub max_abs_diff: Option<f32>,
}

/// Builds the model and rows, scores them on the chosen backends and times it.
pub fn run(opts: &BenchOptions) -> Result<BenchReport, ScoreError> {
    if opts.rows == 0 || opts.dims == 0 || opts.trees == 0 || opts.sample_size == 0 {
        return Err(ScoreError::Shape(
            "bench needs rows, dims, trees and sample size all above 0".into(),
        ));
    }
    let model = random_model(opts.dims, opts.trees, opts.sample_size, opts.seed);
    let forest = PackedForest::from_model(&model)
        .map_err(|e| ScoreError::Shape(format!("synthetic model is invalid: {e}")))?;
    let mut rng = SplitMix64::new(opts.seed ^ 0x9e37_79b9_7f4a_7c15);
    let rows: Vec<f32> = (0..opts.rows * opts.dims).map(|_| rng.unit()).collect();

    let mut report = BenchReport {
        rows: opts.rows,
        dims: opts.dims,
        trees: opts.trees,
        sample_size: opts.sample_size,
        ..BenchReport::default()
    };
    let run_cpu = opts.backend != BenchBackend::Gpu;
    let run_gpu = opts.backend != BenchBackend::Cpu;

    let mut cpu_out = vec![RowScore::default(); opts.rows];
    if run_cpu {
        let mut cpu = CpuScorer::new(forest.clone());
        // Warm-up spins up the rayon pool outside the timing.
        let warm = opts.rows.min(1024);
        cpu.score(&rows[..warm * opts.dims], &mut cpu_out[..warm])?;
        let start = Instant::now();
        cpu.score(&rows, &mut cpu_out)?;
        report.cpu = Some((cpu.describe(), start.elapsed()));
    }

    let ctx = if run_gpu {
        Some(GpuContext::new()?)
    } else {
        None
    };
    if let Some(ctx) = &ctx {
        report.adapter = Some(ctx.adapter_info().name.clone());
        let mut gpu = GpuScorer::new(ctx.clone(), &forest)?;
        let mut gpu_out = vec![RowScore::default(); opts.rows];
        // Warm-up grows the chunk buffers to full size outside the timing.
        let warm = opts.rows.min(gpu.chunk_rows());
        gpu.score(&rows[..warm * opts.dims], &mut gpu_out[..warm])?;
        report.gpu = Some(gpu.score_timed(&rows, &mut gpu_out)?);
        report.gpu_walk = Some(gpu.walk());
        if gpu.walk() != Walk::Linked {
            let mut linked = GpuScorer::linked(ctx.clone(), &forest)?;
            let mut linked_out = vec![RowScore::default(); opts.rows];
            linked.score(&rows[..warm * opts.dims], &mut linked_out[..warm])?;
            report.linked_kernel = Some(linked.score_timed(&rows, &mut linked_out)?.kernel);
        }
        if run_cpu {
            report.max_abs_diff = Some(
                cpu_out
                    .iter()
                    .zip(&gpu_out)
                    .map(|(c, g)| {
                        (c.score - g.score)
                            .abs()
                            .max((c.mean_path - g.mean_path).abs())
                    })
                    .fold(0.0, f32::max),
            );
        }
    }

    if let Some(keys) = opts.keys {
        report.zscore = Some(run_zscore(opts, keys.max(1), ctx.as_ref())?);
    }
    Ok(report)
}

/// One keyed z-feature over `opts.rows` records.
fn run_zscore(
    opts: &BenchOptions,
    keys: usize,
    ctx: Option<&std::sync::Arc<GpuContext>>,
) -> Result<ZBenchReport, ScoreError> {
    let mut rng = SplitMix64::new(opts.seed ^ 0x2545_f491_4f6c_dd1d);
    let names: Vec<String> = (0..keys).map(|k| format!("k{k}")).collect();
    // Key mapping is host work common to both engines: done once, untimed.
    let mut table = KeySlotTable::new(keys);
    let entries: Vec<ZEntry> = (0..opts.rows)
        .map(|_| {
            let key = rng.below(keys);
            let value = key as f64 * 10.0 + rng.unit() as f64;
            table.entry(0, &names[key], value)
        })
        .collect();
    let params = [ZParams {
        alpha: 0.02,
        warmup: 20,
        robust_z: 0.0,
        _pad: 0,
    }];
    let slots = table.allocated();
    let mut report = ZBenchReport {
        keys,
        records: entries.len(),
        ..ZBenchReport::default()
    };
    let mut cpu_z = vec![0f32; entries.len()];
    if opts.backend != BenchBackend::Gpu {
        let start = Instant::now();
        CpuZEngine::default().run(&params, &entries, slots, &mut cpu_z)?;
        report.cpu = Some(start.elapsed());
    }
    if let Some(ctx) = ctx {
        let mut gpu_z = vec![0f32; entries.len()];
        let mut engine = GpuZEngine::new(ctx.clone())?;
        let start = Instant::now();
        engine.run(&params, &entries, slots, &mut gpu_z)?;
        report.gpu = Some(start.elapsed());
        if report.cpu.is_some() {
            report.max_abs_diff = Some(
                cpu_z
                    .iter()
                    .zip(&gpu_z)
                    .filter(|(c, g)| **c != Z_INFINITE && **g != Z_INFINITE)
                    .map(|(c, g)| (c - g).abs())
                    .fold(0.0, f32::max),
            );
        }
    }
    Ok(report)
}

fn per_second(items: usize, time: Duration) -> String {
    let secs = time.as_secs_f64();
    if secs <= 0.0 {
        return "-".into();
    }
    let rate = items as f64 / secs;
    if rate >= 1e6 {
        format!("{:.2} M/s", rate / 1e6)
    } else if rate >= 1e3 {
        format!("{:.1} k/s", rate / 1e3)
    } else {
        format!("{rate:.0} /s")
    }
}

fn line(f: &mut fmt::Formatter<'_>, what: &str, items: usize, time: Duration) -> fmt::Result {
    writeln!(
        f,
        "  {what:<28} {:>10.3} ms  {:>12}",
        time.as_secs_f64() * 1e3,
        per_second(items, time)
    )
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "forest: {} rows × {} dims, {} trees, ψ = {}",
            self.rows, self.dims, self.trees, self.sample_size
        )?;
        if let Some(adapter) = &self.adapter {
            writeln!(f, "adapter: {adapter}")?;
        }
        writeln!(f, "  {:<28} {:>13}  {:>12}", "", "time", "rows/s")?;
        if let Some((name, time)) = &self.cpu {
            line(f, name, self.rows, *time)?;
        }
        if let Some(gpu) = &self.gpu {
            line(f, "gpu end-to-end", self.rows, gpu.total)?;
            line(f, "gpu upload", self.rows, gpu.upload)?;
            let kernel = match self.gpu_walk {
                Some(Walk::Implicit) => "gpu kernel only (implicit)",
                _ => "gpu kernel only (linked)",
            };
            line(f, kernel, self.rows, gpu.kernel)?;
            if let Some(time) = self.linked_kernel {
                line(f, "gpu kernel only (linked)", self.rows, time)?;
            }
            line(f, "gpu readback", self.rows, gpu.readback)?;
        }
        if let Some(diff) = self.max_abs_diff {
            writeln!(f, "  max |cpu − gpu| (score, mean path): {diff:.3e}")?;
        }
        if let Some(z) = &self.zscore {
            writeln!(f, "z-score: {} records over {} keys", z.records, z.keys)?;
            if let Some(time) = z.cpu {
                line(f, "cpu twin", z.records, time)?;
            }
            if let Some(time) = z.gpu {
                line(f, "gpu", z.records, time)?;
            }
            if let Some(diff) = z.max_abs_diff {
                writeln!(f, "  max |cpu − gpu| (finite |z|): {diff:.3e}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_only_bench_runs_without_a_gpu() {
        let report = run(&BenchOptions {
            backend: BenchBackend::Cpu,
            rows: 500,
            dims: 3,
            trees: 4,
            keys: Some(7),
            ..BenchOptions::default()
        })
        .expect("bench");
        assert!(report.cpu.is_some() && report.gpu.is_none());
        assert!(report.zscore.as_ref().is_some_and(|z| z.cpu.is_some()));
        assert!(report.to_string().contains("500 rows"));
    }
}
