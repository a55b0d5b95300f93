//! The `isoflow-train` command line.

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use isoflow_train::iforest::IsolationForestParams;
use isoflow_train::train::{self, FitOptions};
use std::path::PathBuf;

/// Tree growth on every core allocates many small vectors at once;
/// mimalloc's per-thread heaps keep the threads from contending.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Train and evaluate isoflow isolation-forest models.
#[derive(Parser)]
#[command(name = "isoflow-train", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Grow an isolation forest and write a model file.
    Fit {
        /// Training data: CSV with a header (or JSON lines with --features).
        #[arg(long, required_unless_present = "topic")]
        input: Option<String>,
        /// Train on a Kafka topic's history instead (JSON records; needs --features).
        #[arg(long, requires_all = ["topic", "features"])]
        brokers: Option<String>,
        /// Topic to read from the beginning (with --brokers).
        #[arg(long, requires = "brokers")]
        topic: Option<String>,
        /// At most this many records from the topic.
        #[arg(long, default_value_t = 1_000_000)]
        max_records: usize,
        /// Model file to write.
        #[arg(long)]
        out: PathBuf,
        /// Model name (default: the input's file stem).
        #[arg(long)]
        name: Option<String>,
        /// Number of trees.
        #[arg(long, default_value_t = 100)]
        trees: usize,
        /// Rows drawn per tree (ψ).
        #[arg(long, default_value_t = 256)]
        sample_size: usize,
        /// Random seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Columns that are not features (repeat or comma-separate).
        #[arg(long, value_delimiter = ',', default_value = "label")]
        ignore: Vec<String>,
        /// Expected share of anomalies, in (0, 0.5]; sets the alert threshold
        /// (default 0.01, or the preset's).
        #[arg(long)]
        contamination: Option<f64>,
        /// Feature spec (TOML): fields, keyed z-scores, rates, gaps, repeats,
        /// deviations, lags, windows, label risk.
        #[arg(long, conflicts_with = "preset")]
        features: Option<PathBuf>,
        /// Pick the features and settings for a kind of stream: metrics or
        /// transactions (needs --key; JSON lines input).
        #[arg(long, requires = "key")]
        preset: Option<isoflow_core::preset::Preset>,
        /// With --preset: key fields, the first being the entity.
        #[arg(long, value_delimiter = ',')]
        key: Vec<String>,
        /// With --preset: event-time field (epoch seconds).
        #[arg(long, default_value = "")]
        time: String,
        /// With --preset: numeric fields (default: every numeric field of the
        /// first record).
        #[arg(long, value_delimiter = ',')]
        fields: Vec<String>,
        /// Write the feature spec used (a preset's choices) as a spec file.
        #[arg(long)]
        spec_out: Option<PathBuf>,
        /// Directory for report.json and PNG plots.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Score labelled data with a model and print detection metrics: against
    /// its label column, or with --truth against a stream's truth file.
    Eval {
        /// Model file.
        #[arg(long)]
        model: PathBuf,
        /// Labelled data (CSV or JSON lines), or the whole stream with --truth.
        #[arg(long)]
        input: String,
        /// Label column (nonzero = anomaly).
        #[arg(long, default_value = "label")]
        label: String,
        /// Truth file (`line,label,kind,split`, one row per input line): the
        /// figures of the test lines.
        #[arg(long)]
        truth: Option<String>,
        /// With --truth: keep learning while scoring (as `isoflow score --learn`).
        #[arg(long, requires = "truth")]
        learn: bool,
        /// With --truth: label feedback (records plus `label` and `label_ts`).
        #[arg(long, requires = "truth")]
        feedback: Option<String>,
        /// With --learn: seed of the trees grown while learning.
        #[arg(long)]
        seed: Option<u64>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Fit {
            input,
            brokers,
            topic,
            max_records,
            out,
            name,
            trees,
            sample_size,
            seed,
            ignore,
            contamination,
            features,
            preset,
            key,
            time,
            fields,
            spec_out,
            report,
        } => {
            let contamination = contamination
                .or(preset.map(|p| p.contamination()))
                .unwrap_or(0.01);
            let preset = preset.map(|preset| train::PresetChoice {
                preset,
                keys: key,
                time,
                fields,
            });
            // A topic's history is replayed from a JSON-lines copy, through
            // the same feature code as a file.
            let history = tempfile_path();
            let mut source = None;
            let input = match (input, brokers, topic) {
                (Some(input), _, _) => input,
                (None, Some(brokers), Some(topic)) => {
                    source = Some(format!("kafka://{brokers}/{topic}"));
                    let n =
                        isoflow_train::topic::copy_topic(&brokers, &topic, max_records, &history)
                            .context("reading the training topic")?;
                    println!("read {n} records from {topic}");
                    history.display().to_string()
                }
                _ => anyhow::bail!("give --input FILE, or --brokers B --topic T --features SPEC"),
            };
            let name = name.unwrap_or_else(|| {
                std::path::Path::new(&input)
                    .file_stem()
                    .map_or("model".into(), |s| s.to_string_lossy().into_owned())
            });
            let opts = FitOptions {
                input,
                out,
                name,
                params: IsolationForestParams {
                    trees,
                    sample_size,
                    seed,
                },
                ignore,
                contamination,
                features,
                preset,
                spec_out,
                report,
                source,
            };
            let bar = ProgressBar::new(trees as u64);
            bar.set_style(
                ProgressStyle::with_template("growing trees {bar:30} {pos}/{len} {elapsed}")
                    .expect("static template"),
            );
            let outcome = train::fit(&opts, &|| bar.inc(1));
            let _ = std::fs::remove_file(&history);
            let outcome = outcome.context("isoflow-train fit failed")?;
            bar.finish_and_clear();
            let m = &outcome.model;
            let t = m.training.clone().unwrap_or_default();
            println!(
                "model {} v{}: {} trees, ψ={}, {} features, {} rows, fit in {:.3}s",
                m.name,
                m.version,
                trees,
                m.forest.as_ref().map_or(0, |f| f.sample_size),
                isoflow_core::model::feature_names(m).len(),
                t.rows,
                outcome.fit_seconds
            );
            println!(
                "features: {}",
                isoflow_core::model::feature_names(m).join(",")
            );
            if !outcome.rejected.is_empty() {
                println!(
                    "set aside {} unreadable records (the service would dead-letter them), e.g. {}",
                    outcome.rejected.len(),
                    outcome.rejected[0]
                );
            }
            if !outcome.skipped.is_empty() {
                println!("skipped non-numeric columns: {}", outcome.skipped.join(","));
            }
            println!(
                "threshold {:.6} (contamination {})",
                m.threshold, contamination
            );
            if let Some(e) = &outcome.evaluation {
                println!(
                    "training set: roc_auc {:.4}  pr_auc {:.4}  precision {:.4}  recall {:.4}",
                    e.roc_auc, e.pr_auc, e.precision, e.recall
                );
            }
            println!("wrote {}", opts.out.display());
            for f in &outcome.report_files {
                println!("wrote {f}");
            }
        }
        Command::Eval {
            model,
            input,
            truth: Some(truth),
            learn,
            feedback,
            seed,
            ..
        } => {
            let r =
                train::evaluate_stream(&model, &input, &truth, learn, feedback.as_deref(), seed)
                    .context("isoflow-train eval failed")?;
            println!("test lines     {}", r.lines);
            println!("anomalies      {}", r.anomalies);
            println!("roc_auc        {:.6}", r.roc_auc);
            println!("avg_precision  {:.6}", r.average_precision);
            let [tp, fp, tn, fn_] = r.counts;
            println!("alert flag     TP {tp}  FP {fp}  TN {tn}  FN {fn_}");
            println!("f1             {:.6}", r.f1);
            println!("far_percent    {:.4}", r.far);
            println!("mar_percent    {:.4}", r.mar);
            println!("precision@1%   {:.6}", r.precision_at_1pct);
            for (kind, recall) in &r.recall_at_1pct {
                println!("recall@1%      {kind} {recall:.6}");
            }
        }
        Command::Eval {
            model,
            input,
            label,
            ..
        } => {
            let e = train::evaluate_file(&model, &input, &label)
                .context("isoflow-train eval failed")?;
            println!("rows       {}", e.rows);
            println!("positives  {}", e.positives);
            println!("roc_auc    {:.6}", e.roc_auc);
            println!("pr_auc     {:.6}", e.pr_auc);
            println!("threshold  {:.6}", e.threshold);
            println!("alerts     {}", e.alerts);
            println!("precision  {:.6}", e.precision);
            println!("recall     {:.6}", e.recall);
        }
    }
    Ok(())
}

fn tempfile_path() -> PathBuf {
    std::env::temp_dir().join(format!("isoflow-train-{}.jsonl", std::process::id()))
}
