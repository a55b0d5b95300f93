//! Shared helpers for the end-to-end tests: locating the built binaries and
//! the test data, running commands.

use std::path::PathBuf;
use std::process::{Command, Output};

/// Fits `spec` (a feature spec's text) on `rows` (CSV with its header)
/// with `isoflow-train fit`, into `dir/NAME.isoflow`.
pub fn fit_model(dir: &std::path::Path, name: &str, spec: &str, rows: &str) -> PathBuf {
    let spec_path = dir.join(format!("{name}.toml"));
    std::fs::write(&spec_path, spec).unwrap();
    let train = dir.join(format!("{name}.csv"));
    std::fs::write(&train, rows).unwrap();
    let model = dir.join(format!("{name}.isoflow"));
    #[rustfmt::skip]
    ok("isoflow-train", &["fit", "--input", train.to_str().unwrap(),
        "--features", spec_path.to_str().unwrap(), "--out", model.to_str().unwrap()]);
    model
}

/// Writes `dir/GROUP.toml`: consumer group `group` on `addr`, one pipeline
/// `devices` over `readings` with `model`, alerts to `alerts`, the DLQ to
/// `dlq`, every score to `scores`, and `extra` (TOML lines) in the
/// pipeline's table.
pub fn devices_config(
    dir: &std::path::Path,
    addr: &str,
    model: &std::path::Path,
    group: &str,
    extra: &str,
) -> PathBuf {
    let config = dir.join(format!("{group}.toml"));
    std::fs::write(
        &config,
        format!(
            r#"
[kafka]
brokers = "{addr}"
group_id = "{group}"
session_timeout_ms = 6000

[[pipeline]]
name = "devices"
input_topic = "readings"
model = "{}"
alerts_topic = "alerts"
dlq_topic = "dlq"
scores_topic = "scores"
{extra}"#,
            model.display()
        ),
    )
    .unwrap();
    config
}

/// Path of a workspace binary, next to the test executable's `deps/` folder.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run the tests with `cargo test --workspace` so the binaries are built",
        path.display()
    );
    path
}

/// A file or folder of the repository's own test data (`tests/data/`): the
/// contract tests need nothing beside the clone.
pub fn data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

/// The wider benchmark data (`../shared/data` beside the clone) when it is
/// there; `None` (and a line saying so) when it is not, so wider runs are
/// skipped visibly rather than failing on a bare clone.
pub fn shared_data(rel: &str) -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(rel);
    if path.exists() {
        Some(path)
    } else {
        // Written to the process's stderr itself, not through the test
        // harness's captured output, so a passing run still says it skipped.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipped: {} is not present (the wider benchmark data)",
            path.display()
        );
        None
    }
}

/// Runs a binary with arguments and returns its output.
pub fn run(name: &str, args: &[&str]) -> Output {
    Command::new(bin(name)).args(args).output().expect("spawn")
}

/// Runs and asserts success, returning stdout.
pub fn ok(name: &str, args: &[&str]) -> String {
    let out = run(name, args);
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Runs, asserts failure, and returns stderr.
pub fn fails(name: &str, args: &[&str]) -> String {
    let out = run(name, args);
    assert!(
        !out.status.success(),
        "{name} {args:?} unexpectedly succeeded"
    );
    String::from_utf8(out.stderr).expect("utf-8 stderr")
}

/// Arguments of `isoflow score --model M --input I --backend B`.
pub fn score_args<'a>(model: &'a str, input: &'a str, backend: &'a str) -> [&'a str; 7] {
    [
        "score",
        "--model",
        model,
        "--input",
        input,
        "--backend",
        backend,
    ]
}

/// Parses `score,alert[,z...]` output into rows of f64.
pub fn parse_scores(text: &str) -> (Vec<String>, Vec<Vec<f64>>) {
    let mut lines = text.lines();
    let header = lines
        .next()
        .expect("header")
        .split(',')
        .map(str::to_owned)
        .collect();
    let rows = lines
        .map(|l| {
            l.split(',')
                .map(|v| v.parse::<f64>().expect("number"))
                .collect()
        })
        .collect();
    (header, rows)
}

/// `(score, alert)` per row of an `isoflow score` output file, exactly as
/// written (the shortest text that reads back as the same `f32`).
pub fn scores_of_file(path: &std::path::Path) -> Vec<(f32, bool)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let mut f = l.split(',');
            let score = f.next().unwrap().parse().unwrap();
            (score, f.next().unwrap() == "1")
        })
        .collect()
}

/// `(score, alert)` by source offset of the messages of a one-partition
/// input's scores topic, which must cover offsets `0..n` (replays may
/// repeat some).
pub fn scores_by_offset(scores: &[isoflow::kafka::Record], n: usize) -> Vec<(f32, bool)> {
    let mut by_offset = vec![None; n];
    for r in scores {
        let v: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        let offset = v["source"]["offset"].as_u64().unwrap() as usize;
        by_offset[offset] = Some((
            v["score"].as_f64().unwrap() as f32,
            v["alert"].as_bool().unwrap(),
        ));
    }
    by_offset
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.unwrap_or_else(|| panic!("offset {i} not scored")))
        .collect()
}

/// A port that a child process chose itself (it was told port 0) and
/// logged once bound, e.g. `serving gRPC address=127.0.0.1:4242`: read from
/// its log on first use, then kept.
pub struct LoggedPort {
    log: PathBuf,
    message: &'static str,
    port: std::sync::OnceLock<u16>,
}

impl LoggedPort {
    /// The port logged in `log` on the first line with `message`.
    pub fn new(log: PathBuf, message: &'static str) -> Self {
        Self {
            log,
            message,
            port: std::sync::OnceLock::new(),
        }
    }

    /// The port, once the log has said it.
    pub fn get(&self) -> Option<u16> {
        if let Some(port) = self.port.get() {
            return Some(*port);
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let line = log.lines().find(|l| l.contains(self.message))?;
        let address = line.split("address=").nth(1)?.split_whitespace().next()?;
        let port = address.rsplit(':').next()?.parse().ok()?;
        Some(*self.port.get_or_init(|| port))
    }

    /// The port, waiting at most `timeout` for the log to say it.
    pub fn wait(&self, timeout: std::time::Duration) -> u16 {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(port) = self.get() {
                return port;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} never logged '{}':\n{}",
                self.log.display(),
                self.message,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// A TCP port on loopback that nothing listened on when asked: for a broker
/// process, which must be told its port before it starts, and for an
/// address where no broker is.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Path of the tansu broker binary: `ISOFLOW_TANSU`, else `tools/bin/tansu`
/// (where `scripts/test.sh` installs it).
pub fn tansu() -> PathBuf {
    let path = std::env::var_os("ISOFLOW_TANSU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools/bin/tansu"));
    assert!(
        path.exists(),
        "tansu not found at {}: run ./scripts/test.sh, which installs it",
        path.display()
    );
    path
}

/// Which broker the end-to-end tests run against: tansu (the default), or
/// Apache Kafka with `ISOFLOW_BROKER=kafka` (jars from `scripts/kafka.sh`,
/// or `ISOFLOW_KAFKA_LIBS`).
fn kafka_libs() -> Option<PathBuf> {
    (std::env::var("ISOFLOW_BROKER").as_deref() == Ok("kafka")).then(|| {
        let libs = std::env::var_os("ISOFLOW_KAFKA_LIBS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools/kafka/libs"));
        assert!(
            libs.is_dir(),
            "no Kafka jars at {}: run scripts/kafka.sh",
            libs.display()
        );
        libs
    })
}

/// Any id `kafka-storage random-uuid` would give: one node, one cluster.
const KAFKA_CLUSTER_ID: &str = "WgiTsZZtRReqwPEpVw0g7Q";

fn java(libs: &std::path::Path) -> Command {
    let mut c = Command::new("java");
    c.args([
        "-Xmx512m",
        "-Xms128m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-Dorg.apache.logging.log4j.level=INFO",
        "-cp",
    ])
    .arg(libs.join("*"));
    c
}

/// The test node's configuration (`scripts/kafka-test.properties`, shared
/// with the soak script) for client port `port`, controller port
/// `controller` and folder `dir`.
fn kafka_properties(dir: &std::path::Path, port: u16, controller: u16) -> String {
    include_str!("../../scripts/kafka-test.properties")
        .replace("{port}", &port.to_string())
        .replace("{controller}", &controller.to_string())
        .replace("{dir}", &dir.display().to_string())
}

/// A Kafka-protocol broker on a free port, killed on drop: tansu with
/// in-memory storage, or an Apache Kafka node (see [`kafka_libs`]).
pub struct Broker {
    /// Listening port.
    pub port: u16,
    storage: String,
    child: Option<std::process::Child>,
    log: PathBuf,
    /// The Kafka jars and the node's folder, when it is Apache Kafka.
    kafka: Option<(PathBuf, tempfile::TempDir)>,
}

impl Broker {
    /// Starts a broker: tansu with in-memory storage, or Apache Kafka.
    pub fn memory() -> Broker {
        let Some(libs) = kafka_libs() else {
            return Self::start(free_port(), "memory://tansu/".into());
        };
        let dir = tempfile::Builder::new()
            .prefix("isoflow-kafka-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let mut b = Broker {
            port,
            storage: String::new(),
            child: None,
            log: std::env::temp_dir().join(format!("isoflow-kafka-{port}.log")),
            kafka: Some((libs, dir)),
        };
        b.format();
        b.restart();
        b
    }

    /// Whether this is Apache Kafka rather than tansu.
    pub fn is_kafka(&self) -> bool {
        self.kafka.is_some()
    }

    fn start(port: u16, storage: String) -> Broker {
        let log = std::env::temp_dir().join(format!("isoflow-tansu-{port}.log"));
        let mut b = Broker {
            port,
            storage,
            child: None,
            log,
            kafka: None,
        };
        b.restart();
        b
    }

    /// Writes a Kafka node's configuration and formats its empty storage.
    fn format(&self) {
        let Some((libs, dir)) = &self.kafka else {
            return;
        };
        let controller = loop {
            let p = free_port();
            if p != self.port {
                break p;
            }
        };
        let _ = std::fs::remove_dir_all(dir.path().join("data"));
        let properties = dir.path().join("server.properties");
        std::fs::write(
            &properties,
            kafka_properties(dir.path(), self.port, controller),
        )
        .unwrap();
        let out = java(libs)
            .args([
                "kafka.tools.StorageTool",
                "format",
                "-t",
                KAFKA_CLUSTER_ID,
                "-c",
            ])
            .arg(&properties)
            .output()
            .expect("java runs");
        assert!(
            out.status.success(),
            "kafka storage format: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the broker process (again, after [`Broker::kill`]): same port
    /// and storage.
    pub fn restart(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = match &self.kafka {
            Some((libs, dir)) => {
                let mut c = java(libs);
                c.arg("kafka.Kafka")
                    .arg(dir.path().join("server.properties"));
                c
            }
            None => {
                let mut c = Command::new(tansu());
                c.args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                    "--storage-engine",
                    &self.storage,
                ]);
                c
            }
        };
        let child = command
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the broker");
        self.child = Some(child);
        let (port, log, child) = (self.port, &self.log, self.child.as_mut().unwrap());
        wait_for(
            "broker to listen",
            std::time::Duration::from_secs(60),
            || {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("broker exited ({status}); see {}", log.display());
                }
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            },
        );
    }

    /// Kills the broker (-9) and starts it again with empty storage, as
    /// after losing its disk: topics, records and committed offsets gone.
    pub fn restart_empty(&mut self) {
        self.kill();
        self.format();
        self.restart();
    }

    /// Kills the broker process (-9).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `host:port` for clients.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates a topic (retrying while the broker finishes starting); an
    /// existing one is left as it is.
    pub fn create_topic(&self, name: &str, partitions: u32) {
        if self.kafka.is_some() {
            return self.create_kafka_topic(name, partitions);
        }
        let mut last = String::new();
        for _ in 0..30 {
            let out = Command::new(tansu())
                .args([
                    "topic",
                    "create",
                    "--broker",
                    &format!("tcp://127.0.0.1:{}", self.port),
                ])
                .args(["--partitions", &partitions.to_string(), name])
                .output()
                .expect("tansu topic create");
            if out.status.success() {
                return;
            }
            last = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        panic!("topic create {name}: {last}");
    }

    fn create_kafka_topic(&self, name: &str, partitions: u32) {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::types::RDKafkaErrorCode;
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", self.addr());
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            config.create().expect("admin client");
        let topic = NewTopic::new(name, partitions as i32, TopicReplication::Fixed(1));
        let options =
            AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(10)));
        // Not tokio's: the tests that call this may run inside a runtime.
        let created = futures::executor::block_on(admin.create_topics([&topic], &options))
            .expect("create topics");
        match created.first() {
            Some(Ok(_)) | Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => {}
            other => panic!("topic create {name}: {other:?}"),
        }
        let probe: BaseConsumer = config.create().expect("metadata client");
        wait_for(
            "every partition to have a leader",
            std::time::Duration::from_secs(20),
            || {
                probe
                    .fetch_metadata(Some(name), std::time::Duration::from_secs(2))
                    .is_ok_and(|m| {
                        m.topics().iter().any(|t| {
                            t.error().is_none()
                                && t.partitions().len() == partitions as usize
                                && t.partitions().iter().all(|p| p.leader() >= 0)
                        })
                    })
            },
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `cond` until true, panicking after `timeout` with `what`.
pub fn wait_for(what: &str, timeout: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A running `isoflow run`, killed on drop.
pub struct Service {
    /// The process.
    pub child: std::process::Child,
    /// Port of `/metrics`, as the service logs it.
    metrics_port: LoggedPort,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Service {
    /// Starts `isoflow run --config CONFIG` with metrics on a port of its own.
    pub fn start(config: &std::path::Path) -> Service {
        Self::start_with(&["--config", config.to_str().unwrap()], config)
    }

    /// Starts `isoflow run ARGS --metrics 127.0.0.1:0 --backend cpu`; its
    /// log goes next to `near`. The service binds a port of the system's
    /// choosing and logs it, so no port is probed for and then raced for.
    pub fn start_with(args: &[&str], near: &std::path::Path) -> Service {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = near.with_extension(format!("{}-{n}.log", std::process::id()));
        let child = Command::new(bin("isoflow"))
            .arg("run")
            .args(args)
            .args(["--metrics", "127.0.0.1:0", "--backend", "cpu"])
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start isoflow run");
        Service {
            child,
            metrics_port: LoggedPort::new(log.clone(), "serving /metrics"),
            log,
        }
    }

    /// Sum of a metric over its label sets (0 when absent or unreachable).
    pub fn metric(&self, name: &str) -> f64 {
        use std::io::{Read, Write};
        let Some(port) = self.metrics_port.get() else {
            return 0.0;
        };
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return 0.0;
        };
        let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Records scored plus records dead-lettered so far.
    pub fn accounted(&self) -> u64 {
        (self.metric("isoflow_records_scored_total") + self.metric("isoflow_dlq_total")) as u64
    }

    /// The service's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The encoding of the shipped fraud model with its forest replaced by
/// `trees` chain trees of depth `depth` (one split a level, a leaf on the
/// left): a few bytes a node on disk, 2^depth leaves a tree once expanded to
/// complete trees for scoring.
pub fn chain_forest_model(trees: usize, depth: usize) -> Vec<u8> {
    use prost::Message;
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/fraud.isoflow");
    let mut model = isoflow::model::load(&path).expect("shipped model loads");
    let mut chain = isoflow::pb::Tree::default();
    for level in 0..depth {
        let split = chain.feature.len() as u32;
        let last = level + 1 == depth;
        for (feature, threshold, left, right, leaf) in [
            (0, level as f32, split + 1, split + 2, 0),
            (0, 0.0, 0, 0, 1),
        ] {
            chain.feature.push(feature);
            chain.threshold.push(threshold);
            chain.left.push(left);
            chain.right.push(right);
            chain.leaf_size.push(leaf);
        }
        if last {
            chain.feature.push(0);
            chain.threshold.push(0.0);
            chain.left.push(0);
            chain.right.push(0);
            chain.leaf_size.push(1);
        }
    }
    let forest = model.forest.as_mut().expect("forest");
    forest.trees = vec![chain; trees];
    model.encode_to_vec()
}

/// Runs a binary to its end and returns its output with its peak resident
/// memory in bytes (the kernel's own count, read when it is reaped).
// The child is reaped by wait4, which also returns its resource usage.
#[allow(clippy::zombie_processes)]
pub fn run_measured(name: &str, args: &[&str]) -> (Output, u64) {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = Command::new(bin(name))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stdout.read_to_end(&mut buf).map(|_| buf)
    });
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_end(&mut err)
        .expect("read stderr");
    out.extend(reader.join().expect("reader").expect("read stdout"));
    let mut status = 0;
    // SAFETY: plain syscall on our own child; rusage is written by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4");
    use std::os::unix::process::ExitStatusExt;
    let output = Output {
        status: std::process::ExitStatus::from_raw(status),
        stdout: out,
        stderr: err,
    };
    (output, usage.ru_maxrss as u64 * 1024)
}
