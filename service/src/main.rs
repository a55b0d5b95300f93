//! The `isoflow` command line.

use anyhow::Context;
use clap::{Parser, Subcommand};
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
        Command::Model {
            command: ModelCommand::Inspect { model },
        } => {
            println!("{}", commands::inspect(&model)?);
        }
    }
    Ok(())
}
