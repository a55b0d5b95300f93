//! The `isoflow` command line.

use anyhow::Context;
use clap::{Parser, Subcommand};
use isoflow::bench::{self, BenchBackend, BenchOptions};
use isoflow::commands::{self, ScoreOptions};
use isoflow::score::Backend;
use std::path::PathBuf;

/// GPU-accelerated anomaly detection: isolation forests and per-key z-scores.
#[derive(Parser)]
#[command(name = "isoflow", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Score every row of a CSV or JSON-lines file; writes `score,alert[,z_<name>...]`.
    Score {
        /// Model file (from `isoflow-train fit`).
        #[arg(long)]
        model: PathBuf,
        /// Input: CSV with a header, JSON lines (.jsonl), or `-` for stdin.
        #[arg(long)]
        input: String,
        /// Output CSV path, or `-` for stdout.
        #[arg(long, default_value = "-")]
        output: String,
        /// Where to score: auto (GPU if present, else CPU), gpu, or cpu.
        #[arg(long, default_value = "auto", value_parser = parse_backend)]
        backend: Backend,
    },
    /// List the GPU adapters found (name, backend, type, limits that matter).
    Info,
    /// Measure scoring throughput on synthetic data, CPU and GPU side by side.
    Bench {
        /// Which backends to measure: cpu, gpu, or both.
        #[arg(long, default_value = "both", value_parser = parse_bench_backend)]
        backend: BenchBackend,
        /// Rows scored.
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
        /// Features per row.
        #[arg(long, default_value_t = 16)]
        dims: usize,
        /// Trees in the forest.
        #[arg(long, default_value_t = 100)]
        trees: usize,
        /// Sub-sample size ψ the trees are grown from.
        #[arg(long, default_value_t = 256)]
        sample_size: usize,
        /// Also measure per-key z-scores with this many distinct keys.
        #[arg(long)]
        keys: Option<usize>,
        /// Seed of the synthetic data and forest.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Model file operations.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Print a model's metadata as JSON.
    Inspect {
        /// Model file.
        model: PathBuf,
    },
}

fn parse_backend(s: &str) -> Result<Backend, String> {
    s.parse()
}

fn parse_bench_backend(s: &str) -> Result<BenchBackend, String> {
    s.parse()
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Score {
            model,
            input,
            output,
            backend,
        } => {
            let summary = commands::score_file(&ScoreOptions {
                model,
                input,
                output: output.clone(),
                backend,
            })
            .context("isoflow score failed")?;
            if output != "-" {
                eprintln!(
                    "scored {} rows on {}: {} alerts -> {output}",
                    summary.rows, summary.backend, summary.alerts
                );
            }
        }
        Command::Info => {
            let adapters = isoflow::gpu::list_adapters();
            if adapters.is_empty() {
                println!(
                    "no GPU adapters found; scoring runs on the CPU. For a software Vulkan \
                     adapter: apt-get install mesa-vulkan-drivers libvulkan1"
                );
            }
            for adapter in adapters {
                println!("{adapter}");
            }
            println!("cpu: {} threads", rayon_threads());
        }
        Command::Bench {
            backend,
            rows,
            dims,
            trees,
            sample_size,
            keys,
            seed,
        } => {
            let report = bench::run(&BenchOptions {
                backend,
                rows,
                dims,
                trees,
                sample_size,
                keys,
                seed,
            })
            .context("isoflow bench failed")?;
            println!("{report}");
        }
        Command::Model {
            command: ModelCommand::Inspect { model },
        } => {
            println!("{}", commands::inspect(&model)?);
        }
    }
    Ok(())
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
