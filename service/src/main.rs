//! The `isoflow` command line.

use anyhow::Context;
use clap::{Parser, Subcommand};
use isoflow::bench::{self, BenchBackend, BenchOptions};
use isoflow::commands::{self, ScoreOptions};
use isoflow::engine::Backend;
use isoflow::synthetic::Scenario;
use std::path::PathBuf;

/// Scoring requests and Kafka batches allocate and free many short-lived
/// buffers across threads; mimalloc's per-thread heaps keep that off the
/// critical path where the system allocator trims and re-faults pages.
/// Chosen here, by the program, not by the library it links.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// GPU-accelerated anomaly detection: isolation forests and per-key z-scores.
#[derive(Parser)]
#[command(name = "isoflow", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// What `isoflow bench` measures besides scoring.
#[derive(Subcommand, Debug)]
enum BenchTarget {
    /// The streaming service on a broker, in one run: raw consume rate of a
    /// topic, records/s end to end through a pipeline, and produce-to-alert
    /// latency at an offered rate. Creates fresh `isoflow-bench-*` topics.
    Pipeline(isoflow::pipeline_bench::PipelineBenchOptions),
    /// The memory of per-key state: a model's detector fed records that
    /// each bring new keys; prints keys held, evictions, resident memory
    /// and bytes per key.
    State(isoflow::state_bench::StateBenchOptions),
}

#[derive(Subcommand)]
enum Command {
    /// Score every row of a CSV or JSON-lines file; writes `score,alert[,z_<name>...]`.
    Score {
        /// Model file (from `isoflow-train fit`); with --grpc, a registry
        /// model `name` or `name@version`.
        #[arg(long, required_unless_present_any = ["pipeline", "preset"], conflicts_with = "preset")]
        model: Option<PathBuf>,
        /// No model file: start cold with this preset's features (metrics,
        /// transactions) and learn from the stream (needs --learn).
        #[arg(long, requires_all = ["key", "learn"])]
        preset: Option<isoflow::preset::Preset>,
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
        /// Keep learning: regrow the oldest trees from recent rows as the
        /// stream goes (each record scored before it is learnt).
        #[arg(long)]
        learn: bool,
        /// Label feedback, JSON lines: records plus `label` and `label_ts`
        /// (when the label became known); used only once known.
        #[arg(long)]
        feedback: Option<String>,
        /// Seed of the trees grown while learning (default: the model's).
        #[arg(long)]
        seed: Option<u64>,
        /// Score through a running service's gRPC API at this address instead
        /// of locally (JSON lines, or CSV rows sent as JSON objects).
        #[arg(long)]
        grpc: Option<String>,
        /// With --grpc: score with this pipeline's live model.
        #[arg(long, requires = "grpc")]
        pipeline: Option<String>,
        /// With --grpc: bearer token.
        #[arg(long, env = "ISOFLOW_GRPC_TOKEN", hide_env_values = true)]
        token: Option<String>,
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
    #[command(args_conflicts_with_subcommands = true)]
    Bench {
        /// `pipeline`: the streaming service against a broker.
        #[command(subcommand)]
        target: Option<BenchTarget>,
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
    /// Run the streaming service: consume records, score, publish alerts and DLQ.
    Run {
        /// Service configuration (TOML); may hold several pipelines. Flags
        /// override it, and can describe one pipeline without it.
        #[arg(long, env = "ISOFLOW_CONFIG")]
        config: Option<PathBuf>,
        /// Bootstrap servers (kafka.brokers).
        #[arg(long, env = "ISOFLOW_BROKERS")]
        brokers: Option<String>,
        /// The one pipeline the flags describe.
        #[command(flatten)]
        pipeline: Box<isoflow::config::PipelineFlags>,
        /// Consumer group prefix (kafka.group_id).
        #[arg(long, env = "ISOFLOW_GROUP")]
        group: Option<String>,
        /// Backend: auto, gpu or cpu (service.backend).
        #[arg(long, env = "ISOFLOW_BACKEND")]
        backend: Option<String>,
        /// Serve Prometheus /metrics and /health here (service.metrics_listen, e.g. 127.0.0.1:9898).
        #[arg(
            long = "metrics",
            visible_alias = "metrics-listen",
            env = "ISOFLOW_METRICS_LISTEN"
        )]
        metrics: Option<String>,
        /// Serve the gRPC API here (grpc.listen, e.g. 127.0.0.1:50051).
        #[arg(
            long = "grpc",
            visible_alias = "grpc-listen",
            env = "ISOFLOW_GRPC_LISTEN"
        )]
        grpc: Option<String>,
        /// Override grpc.token: bearer token every RPC but health must carry.
        #[arg(long, env = "ISOFLOW_GRPC_TOKEN", hide_env_values = true)]
        grpc_token: Option<String>,
    },
    /// Produce a labelled synthetic stream (to Kafka, or to a JSON-lines file).
    Gen {
        /// Bootstrap servers (omit with --out).
        #[arg(long, env = "ISOFLOW_BROKERS")]
        brokers: Option<String>,
        /// Topic; for `mixed`, a prefix: records go to TOPIC.transactions, TOPIC.metrics, TOPIC.auth, TOPIC.events.
        #[arg(long, default_value = "isoflow")]
        topic: String,
        /// fraud, iot, security, quality or mixed.
        #[arg(long, value_parser = parse_scenario)]
        scenario: Scenario,
        /// Number of records.
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Records per second (0: as fast as possible).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Seed; the same seed gives the same stream.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Write `id,label,type` per record here.
        #[arg(long)]
        truth: Option<PathBuf>,
        /// Share of records corrupted (malformed JSON, missing or non-numeric fields).
        #[arg(long, default_value_t = 0.0)]
        corrupt_rate: f64,
        /// Partitions for topics that do not exist yet.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// Write JSON lines to this file (`-`: standard output) instead of producing to Kafka.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Everything in one process: an in-process Kafka cluster, the mixed
    /// scenario, the service with the shipped models, a live view, and
    /// precision/recall per anomaly type at the end.
    Demo {
        /// Use this broker instead of the in-process cluster.
        #[arg(long)]
        brokers: Option<String>,
        /// Records to generate.
        #[arg(long, default_value_t = 40_000)]
        count: usize,
        /// Seed of the generated stream.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Scoring backend: auto, gpu or cpu.
        #[arg(long, default_value = "auto")]
        backend: String,
    },
    /// Model file operations, and the registry of a running service.
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
    /// Upload a model file to the registry; prints `name@version`.
    Put {
        /// Model file.
        file: PathBuf,
        /// Register under this name instead of the model's own.
        #[arg(long, default_value = "")]
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// List registry models: `name@version trees features used-by`.
    List {
        /// Only this name.
        #[arg(default_value = "")]
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Print a registry model's metadata as JSON.
    Get {
        /// `name` (latest) or `name@version`.
        model: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Make a model the live (or shadow) model of a pipeline.
    Activate {
        /// `name` (latest) or `name@version`; omit with --clear-shadow.
        #[arg(required_unless_present = "clear_shadow")]
        model: Option<String>,
        /// Pipeline name.
        #[arg(long)]
        pipeline: String,
        /// Shadow instead of live.
        #[arg(long)]
        shadow: bool,
        /// Remove the pipeline's shadow model.
        #[arg(long, conflicts_with = "shadow")]
        clear_shadow: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Delete a model version (refused while a pipeline uses it).
    Delete {
        /// `name@version`.
        model: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// Where the service's gRPC API is.
#[derive(clap::Args)]
struct Remote {
    /// gRPC address of `isoflow run`.
    #[arg(long, env = "ISOFLOW_GRPC", default_value = "127.0.0.1:50051")]
    grpc: String,
    /// Bearer token.
    #[arg(long, env = "ISOFLOW_GRPC_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

fn parse_backend(s: &str) -> Result<Backend, String> {
    s.parse()
}

fn parse_scenario(s: &str) -> Result<Scenario, String> {
    s.parse().map_err(|e| format!("{e}"))
}

fn parse_bench_backend(s: &str) -> Result<BenchBackend, String> {
    s.parse()
}

fn main() -> anyhow::Result<()> {
    match run() {
        // The reader of standard output went away (`isoflow score ... | head`):
        // what it wanted was written, so this is no failure.
        Err(e) if closed_pipe(&e) => Ok(()),
        result => result,
    }
}

fn closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<commands::CommandError>()
            .is_some_and(commands::CommandError::reader_left)
            || cause
                .downcast_ref::<commands::GenCommandError>()
                .is_some_and(commands::GenCommandError::reader_left)
    })
}

fn run() -> anyhow::Result<()> {
    // Mesa's Vulkan driver probes Wayland and prints an error when
    // XDG_RUNTIME_DIR is unset, which headless hosts usually leave it. Compute
    // never needs a display; set it while the process is still one thread.
    #[cfg(target_os = "linux")]
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    let cli = Cli::parse();
    // The service logs its lifecycle; one-shot commands stay quiet.
    let default_level = if matches!(cli.command, Command::Run { .. }) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_level.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Score {
            model,
            grpc: Some(address),
            pipeline,
            token,
            input,
            output,
            ..
        } => {
            let model = model.map(|m| m.display().to_string()).unwrap_or_default();
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(remote::score(
                &address,
                token.as_deref(),
                &model,
                pipeline.as_deref().unwrap_or_default(),
                &input,
                &output,
            ))?;
        }
        Command::Score {
            model,
            preset,
            key,
            time,
            fields,
            learn,
            feedback,
            seed,
            input,
            output,
            backend,
            ..
        } => {
            let model = match (model, preset) {
                (Some(path), _) => commands::ModelSource::File(path),
                (None, Some(preset)) => commands::ModelSource::Preset {
                    preset,
                    keys: key,
                    time,
                    fields,
                },
                (None, None) => anyhow::bail!("give --model FILE, or --preset P --key K --learn"),
            };
            let summary = commands::score_file(&ScoreOptions {
                model,
                input,
                output: output.clone(),
                backend,
                learn,
                feedback,
                seed,
            })
            .context("isoflow score failed")?;
            if output != "-" {
                eprintln!(
                    "scored {} rows on {}: {} alerts -> {output}",
                    summary.rows, summary.backend, summary.alerts
                );
            }
        }
        Command::Run {
            config,
            brokers,
            pipeline,
            group,
            backend,
            metrics,
            grpc,
            grpc_token,
        } => {
            let mut config = match config {
                Some(path) => isoflow::config::Config::read(&path)?,
                None => isoflow::config::Config::default(),
            };
            config.apply(isoflow::config::Overrides {
                brokers,
                group,
                backend,
                metrics_listen: metrics,
                grpc_listen: grpc,
                grpc_token,
                pipeline: *pipeline,
            })?;
            let runtime = isoflow::pipeline::ServiceRuntime::new()?;
            runtime.block_on(async {
                let shutdown = tokio_util::sync::CancellationToken::new();
                isoflow::service::cancel_on_signals(shutdown.clone());
                let metrics = std::sync::Arc::new(isoflow::metrics::Metrics::default());
                isoflow::service::run(config, metrics, runtime.handles(), shutdown).await
            })?;
        }
        Command::Gen {
            brokers,
            topic,
            scenario,
            count,
            rate,
            seed,
            truth,
            corrupt_rate,
            partitions,
            out,
        } => {
            let opts = isoflow::synthetic::GenOptions {
                scenario,
                count,
                seed,
                corrupt_rate,
                start_ts: 1_767_225_600.0,
            };
            let summary = match (out, brokers) {
                (Some(path), _) => commands::gen_to_file(&opts, &path, truth.as_deref())?,
                (None, Some(brokers)) => {
                    let runtime = tokio::runtime::Runtime::new()?;
                    runtime.block_on(commands::gen_to_kafka(
                        &opts,
                        &brokers,
                        &topic,
                        partitions,
                        rate,
                        truth.as_deref(),
                    ))?
                }
                (None, None) => {
                    anyhow::bail!("isoflow gen needs --brokers HOST:PORT (or --out FILE.jsonl)")
                }
            };
            eprintln!("{summary}");
        }
        Command::Demo {
            brokers,
            count,
            seed,
            backend,
        } => {
            let runtime = isoflow::pipeline::ServiceRuntime::new()?;
            runtime.block_on(isoflow::demo::run(
                isoflow::demo::DemoOptions {
                    brokers,
                    count,
                    seed,
                    backend,
                },
                runtime.handles(),
            ))?;
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
            target: Some(BenchTarget::Pipeline(options)),
            ..
        } => {
            let runtime = isoflow::pipeline::ServiceRuntime::new()?;
            let report = runtime
                .block_on(isoflow::pipeline_bench::run(options, runtime.handles()))
                .context("isoflow bench pipeline failed")?;
            println!("{report}");
        }
        Command::Bench {
            target: Some(BenchTarget::State(options)),
            ..
        } => {
            let report =
                isoflow::state_bench::run(&options).context("isoflow bench state failed")?;
            println!("{report}");
        }
        Command::Bench {
            target: None,
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
        Command::Model { command } => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(remote::model(command))?;
        }
    }
    Ok(())
}

mod remote;

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
