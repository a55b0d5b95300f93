//! `isoflow run` end to end: count conservation, DLQ reasons and detection
//! against a real Kafka-protocol broker (tansu); graceful shutdown, kill -9
//! recovery and a broker outage with fault injection on librdkafka's mock
//! cluster; start-up errors.

use crate::util;

use isoflow::kafka::{read_topic, Record};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;
use util::{bin, devices_config, fit_model, ok, scores_of_file, wait_for, Broker, Service};

const INPUT: &str = "transactions";

/// Records of the mock-cluster recovery tests: few enough that their scores
/// topic stays under the mock cluster's 5 MB per partition (it drops the
/// oldest messages beyond that), replays after a crash included.
const MOCK_RECORDS: usize = 30_000;

/// (partition, offset) of an input record.
type Coordinates = (i64, i64);

/// The DLQ reason codes of the wire contract.
const DLQ_REASONS: [&str; 5] = [
    "invalid_json",
    "missing_field",
    "wrong_type",
    "non_finite",
    "too_large",
];

/// Topics and a config for one fraud pipeline with a scores topic.
fn setup(
    addr: &str,
    create: &dyn Fn(&str, u32),
    dir: &Path,
    partitions: u32,
    batch: usize,
) -> std::path::PathBuf {
    for (topic, n) in [
        (INPUT, partitions),
        ("alerts", 1),
        ("dlq", 1),
        // One score message per record, replays included: spread over the
        // input's partitions so no partition nears the mock cluster's limit.
        ("scores", partitions),
        // The pipeline's changelog: the mock cluster takes no admin
        // request, so the service cannot create it there.
        ("e2e.fraud.state", partitions),
    ] {
        create(topic, n);
    }
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fraud.isoflow");
    let config = dir.join("isoflow.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[kafka]
brokers = "{}"
group_id = "e2e"

[[pipeline]]
name = "fraud"
input_topic = "{INPUT}"
model = "{}"
alerts_topic = "alerts"
dlq_topic = "dlq"
scores_topic = "scores"
batch_max_records = {batch}
batch_max_ms = 50
"#,
            addr,
            model.display()
        ),
    )
    .unwrap();
    config
}

/// Produces `count` fraud records of generator seed `seed` to `topic` with
/// `isoflow gen`, passing `extra` flags on.
fn gen(addr: &str, topic: &str, count: usize, seed: u64, extra: &[&str]) {
    let (count, seed) = (count.to_string(), seed.to_string());
    let mut args = vec![
        "gen",
        "--brokers",
        addr,
        "--topic",
        topic,
        "--scenario",
        "fraud",
        "--count",
        &count,
        "--seed",
        &seed,
    ];
    args.extend_from_slice(extra);
    ok("isoflow", &args);
}

/// Produces `count` fraud records; returns truth: id → type.
fn produce(
    addr: &str,
    dir: &Path,
    count: usize,
    corrupt: f64,
    seed: u64,
) -> HashMap<String, String> {
    let truth = dir.join(format!("truth-{seed}.csv"));
    let corrupt = corrupt.to_string();
    let extra = [
        "--corrupt-rate",
        &corrupt,
        "--truth",
        truth.to_str().unwrap(),
    ];
    gen(addr, INPUT, count, seed, &extra);
    std::fs::read_to_string(truth)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_owned(), f[2].to_owned())
        })
        .collect()
}

pub(crate) fn read_all(addr: &str, topic: &str) -> Vec<Record> {
    read_topic(addr, topic, usize::MAX, Duration::from_secs(3)).expect("read topic")
}

/// Reads a topic until at least `n` messages came back (a read can end early
/// while the broker is busy).
fn read_at_least(addr: &str, topic: &str, n: usize) -> Vec<Record> {
    let mut records = Vec::new();
    wait_for(
        &format!("{n} messages on {topic}"),
        Duration::from_secs(60),
        || {
            records = read_all(addr, topic);
            records.len() >= n
        },
    );
    records
}

/// The `scored=` count of a service log's "drained and stopped" line.
fn scored_in_log(log: &str) -> usize {
    let line = log
        .lines()
        .find(|l| l.contains("drained and stopped"))
        .expect("drain line");
    let plain: String = line
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '=' || *c == ' ')
        .collect();
    plain
        .split_whitespace()
        .find_map(|w| w.strip_prefix("scored="))
        .and_then(|v| v.parse().ok())
        .expect("scored= field")
}

fn header<'a>(r: &'a Record, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| std::str::from_utf8(v).unwrap())
}

/// Source coordinates (partition, offset) of every scored and dead-lettered record.
fn accounted_offsets(addr: &str) -> (Vec<Coordinates>, Vec<Coordinates>) {
    let scored: Vec<(i64, i64)> = read_all(addr, "scores")
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            assert_eq!(v["source"]["topic"], INPUT, "{v}");
            assert!(v["model"].as_str().unwrap().contains('@'), "{v}");
            assert!(v["alert"].is_boolean() && v["score"].is_f64(), "{v}");
            let source = &v["source"];
            (
                source["partition"].as_i64().unwrap(),
                source["offset"].as_i64().unwrap(),
            )
        })
        .collect();
    let dead: Vec<(i64, i64)> = read_all(addr, "dlq")
        .iter()
        .map(|r| {
            (
                header(r, "isoflow.source.partition")
                    .unwrap()
                    .parse()
                    .unwrap(),
                header(r, "isoflow.source.offset").unwrap().parse().unwrap(),
            )
        })
        .collect();
    (scored, dead)
}

/// Waits until `total` distinct input offsets were scored or dead-lettered.
fn wait_all_accounted(addr: &str, total: usize) {
    wait_for("every offset accounted", Duration::from_secs(120), || {
        let (s, d) = accounted_offsets(addr);
        s.iter().chain(&d).collect::<HashSet<_>>().len() >= total
    });
}

/// Every input offset, from the input topic itself.
fn input_offsets(addr: &str) -> HashSet<(i64, i64)> {
    read_all(addr, INPUT)
        .iter()
        .map(|r| (r.partition as i64, r.offset))
        .collect()
}

#[test]
fn every_record_is_scored_or_dead_lettered_and_anomalies_alert() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::memory();
    let addr = broker.addr();
    let config = setup(&addr, &|t, n| broker.create_topic(t, n), dir.path(), 4, 500);
    let truth = produce(&addr, dir.path(), 6000, 0.03, 11);
    // The one-pipeline flag form, no config file.
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fraud.isoflow");
    #[rustfmt::skip]
    let service = Service::start_with(
        &[
            "--brokers", &addr, "--input-topic", INPUT, "--model", model.to_str().unwrap(),
            "--alerts-topic", "alerts", "--dlq-topic", "dlq", "--scores-topic", "scores",
            "--group", "e2e", "--batch-size", "500", "--linger-ms", "50",
        ],
        &config,
    );
    wait_for("all records accounted", Duration::from_secs(60), || {
        service.accounted() >= 6000
    });
    assert_eq!(service.accounted(), 6000, "{}", service.log_text());

    // Conservation: input offsets = scored ∪ dead-lettered, disjoint.
    let (scored, dead) = accounted_offsets(&addr);
    let input = input_offsets(&addr);
    assert_eq!(input.len(), 6000);
    let scored_set: HashSet<_> = scored.iter().copied().collect();
    let dead_set: HashSet<_> = dead.iter().copied().collect();
    assert!(scored_set.is_disjoint(&dead_set));
    let all: HashSet<_> = scored_set.union(&dead_set).copied().collect();
    assert_eq!(all, input);

    // DLQ: every message is a corrupt record, with a reason and its source.
    let dlq = read_all(&addr, "dlq");
    assert!(!dlq.is_empty());
    let mut classes = HashSet::new();
    let dead_ids: HashSet<&str> = dlq
        .iter()
        .map(|r| header(r, "isoflow.record.id").expect("original headers kept"))
        .collect();
    let corrupt_ids: HashSet<&str> = truth
        .iter()
        .filter(|(_, kind)| kind.as_str() == "corrupt")
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(
        dead_ids, corrupt_ids,
        "every corrupt record, and only those, dead-lettered"
    );
    for r in &dlq {
        let id = header(r, "isoflow.record.id").expect("original headers kept");
        assert_eq!(truth[id], "corrupt", "{id} dead-lettered but not corrupt");
        assert_eq!(header(r, "isoflow.source.topic"), Some(INPUT));
        assert!(!header(r, "isoflow.error.message").unwrap().is_empty());
        classes.insert(header(r, "isoflow.error.reason").unwrap().to_owned());
    }
    assert!(classes.contains("invalid_json"), "{classes:?}");
    assert!(
        classes.iter().all(|c| DLQ_REASONS.contains(&c.as_str())),
        "{classes:?}"
    );
    assert!(classes.len() >= 2, "{classes:?}");

    // Detection: injected anomalies alert, normal traffic mostly does not.
    let alerts = read_all(&addr, "alerts");
    let mut alerted: HashSet<String> = HashSet::new();
    for r in &alerts {
        let a: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        assert!(a["alert_id"].as_str().unwrap().starts_with("transactions/"));
        assert!(a["alert_id"].as_str().unwrap().ends_with("/fraud@1"));
        assert!(!a["reasons"].as_array().unwrap().is_empty());
        assert!(!a["top_features"].as_array().unwrap().is_empty());
        alerted.insert(a["record"]["id"].as_str().unwrap().to_owned());
    }
    let recall = |kind: &str| {
        let ids: Vec<&String> = truth
            .iter()
            .filter(|(_, t)| *t == kind)
            .map(|(id, _)| id)
            .collect();
        assert!(!ids.is_empty(), "no {kind} in the stream");
        ids.iter().filter(|id| alerted.contains(**id)).count() as f64 / ids.len() as f64
    };
    assert!(
        recall("stolen_card") >= 0.9,
        "stolen_card recall {}",
        recall("stolen_card")
    );
    assert!(
        recall("duplicate") >= 0.9,
        "duplicate recall {}",
        recall("duplicate")
    );
    assert!(recall("burst") >= 0.6, "burst recall {}", recall("burst"));
    let true_alerts = alerted.iter().filter(|id| truth[*id] != "normal").count();
    assert!(
        true_alerts as f64 / alerted.len() as f64 >= 0.6,
        "precision {true_alerts}/{}",
        alerted.len()
    );
}

/// librdkafka's mock cluster in this process, for fault injection: tansu
/// 0.6's memory engine skips records when a consumer resumes mid-topic and
/// its sqlite engine stalls on large topics, so restarts are tested here.
struct Mock {
    cluster: rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    addr: String,
}

impl Mock {
    fn new() -> Mock {
        let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
        let addr = cluster.bootstrap_servers();
        Mock { cluster, addr }
    }

    fn create(&self) -> impl Fn(&str, u32) + '_ {
        |t, n| {
            self.cluster
                .create_topic(t, n as i32, 1)
                .expect("create topic")
        }
    }
}

/// 10⁵ records, 10% of them corrupt: every corrupt record reaches the DLQ
/// with a reason code, every valid record is scored, and the one service
/// process keeps running throughout.
#[test]
fn hundred_thousand_records_with_ten_percent_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::memory();
    let addr = broker.addr();
    let config = setup(
        &addr,
        &|t, n| broker.create_topic(t, n),
        dir.path(),
        4,
        4096,
    );
    let total = 100_000;
    let truth = produce(&addr, dir.path(), total, 0.1, 15);
    let corrupt: HashSet<&str> = truth
        .iter()
        .filter(|(_, kind)| kind.as_str() == "corrupt")
        .map(|(id, _)| id.as_str())
        .collect();
    assert!(corrupt.len() > total / 20, "{} corrupt", corrupt.len());
    let mut service = Service::start(&config);
    wait_for("all records accounted", Duration::from_secs(120), || {
        service.accounted() >= total as u64
    });
    assert_eq!(service.accounted(), total as u64, "{}", service.log_text());
    assert!(
        service.child.try_wait().unwrap().is_none(),
        "the service exited: {}",
        service.log_text()
    );
    // What an operator watches: time spent per phase, and a recent batch.
    assert!(service.metric("isoflow_batch_phase_seconds_total") > 0.0);
    let last = service.metric("isoflow_last_batch_timestamp_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(now - last < 60.0, "last batch at {last}, now {now}");
    let dlq = read_at_least(&addr, "dlq", corrupt.len());
    let mut dead = HashSet::new();
    for r in &dlq {
        let reason = header(r, "isoflow.error.reason").expect("reason header");
        assert!(DLQ_REASONS.contains(&reason), "{reason}");
        assert!(!header(r, "isoflow.error.message").unwrap().is_empty());
        dead.insert(header(r, "isoflow.record.id").expect("original headers kept"));
    }
    assert_eq!(
        dead, corrupt,
        "every corrupt record, and only those, dead-lettered"
    );
    let scored = read_at_least(&addr, "scores", total - corrupt.len());
    assert_eq!(
        scored.len(),
        total - corrupt.len(),
        "every valid record scored once"
    );
}

/// Sends SIGTERM and waits for the exit, at most `limit`.
pub(crate) fn terminate(service: &mut Service, limit: Duration) -> std::process::ExitStatus {
    let pid = service.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let start = std::time::Instant::now();
    loop {
        if let Some(s) = service.child.try_wait().unwrap() {
            return s;
        }
        assert!(
            start.elapsed() < limit,
            "no exit {limit:?} after SIGTERM: {}",
            service.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One invalid-JSON record just over 1 MB (over `max_message_bytes`, and
/// over the producer's message limit as it is), then 100 good ones: the good
/// ones are scored, the big one reaches the DLQ as a bounded copy that says
/// it was cut, the offsets are committed, and SIGTERM exits 0.
#[test]
fn a_poison_pill_is_dead_lettered_and_the_stream_goes_on() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::memory();
    let addr = broker.addr();
    let config = setup(&addr, &|t, n| broker.create_topic(t, n), dir.path(), 1, 500);
    let big = vec![b'{'; 1_100_000];
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .set("message.max.bytes", "2000000")
        .create()
        .unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        producer
            .send(
                FutureRecord::<str, [u8]>::to(INPUT)
                    .key("pill")
                    .payload(&big[..]),
                Duration::from_secs(10),
            )
            .await
            .expect("broker takes the big record");
    });
    gen(&addr, INPUT, 100, 21, &[]);
    let mut service = Service::start(&config);
    wait_for(
        "100 scored and 1 dead-lettered",
        Duration::from_secs(60),
        || service.accounted() >= 101,
    );
    let dead = read_at_least(&addr, "dlq", 1);
    assert_eq!(dead.len(), 1);
    assert_eq!(header(&dead[0], "isoflow.error.reason"), Some("too_large"));
    assert_eq!(header(&dead[0], "isoflow.source.offset"), Some("0"));
    assert_eq!(
        header(&dead[0], "isoflow.value.truncated_from"),
        Some("1100000")
    );
    let copy = dead[0].value.as_deref().unwrap();
    assert!(copy.len() < 1_000_000 && copy.iter().all(|&b| b == b'{'));
    assert_eq!(read_at_least(&addr, "scores", 100).len(), 100);
    wait_for("the partition reported", Duration::from_secs(15), || {
        service.metric("isoflow_assigned_partitions") == 1.0
    });
    let status = terminate(&mut service, Duration::from_secs(30));
    assert!(status.success(), "exit {status:?}: {}", service.log_text());
    // Committed past the pill: a restart has nothing to replay.
    assert_eq!(committed_offset(&addr, 0), Some(101));
}

/// The fraud pipeline's committed offset of input partition `partition`,
/// asked without joining its group.
fn committed_offset(addr: &str, partition: i32) -> Option<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let probe: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", "e2e.fraud")
        .create()
        .unwrap();
    let mut partitions = rdkafka::TopicPartitionList::new();
    partitions.add_partition(INPUT, partition);
    let committed = probe
        .committed_offsets(partitions, Duration::from_secs(5))
        .ok()?;
    match committed.find_partition(INPUT, partition)?.offset() {
        rdkafka::Offset::Offset(o) => Some(o),
        _ => None,
    }
}

/// A broker that loses its storage (as a topic deleted and recreated does)
/// starts the partition's offsets again at 0. Those are new records: the
/// service takes them, says so in its log and metrics, and commits them,
/// rather than skipping them as records it had already handed over.
#[test]
fn an_offset_reset_is_reported_and_its_records_are_scored() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::memory();
    if !broker.is_kafka() {
        // tansu 0.6 restarted empty answers metadata in a way that crashes
        // librdkafka 2.12.1 (SIGSEGV in its metadata cache); the Apache
        // Kafka pass of scripts/test.sh runs this test.
        eprintln!("skipped on tansu: run with ISOFLOW_BROKER=kafka");
        return;
    }
    let addr = broker.addr();
    let config = setup(&addr, &|t, n| broker.create_topic(t, n), dir.path(), 1, 100);
    // Offset resets with per-key state in memory only: a broker that lost
    // its storage lost the changelog too.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}state_changelog = false\n")).unwrap();
    gen(&addr, INPUT, 300, 31, &[]);
    let mut service = Service::start(&config);
    wait_for("300 committed", Duration::from_secs(60), || {
        committed_offset(&addr, 0) == Some(300)
    });
    broker.restart_empty();
    // Every topic is gone, the pipeline's changelog too: made again, as
    // the others are.
    for (topic, n) in [
        (INPUT, 1),
        ("alerts", 1),
        ("dlq", 1),
        ("scores", 1),
        ("e2e.fraud.state", 1),
    ] {
        broker.create_topic(topic, n);
    }
    gen(&addr, INPUT, 50, 32, &[]);
    let started = std::time::Instant::now();
    while service.accounted() < 350 {
        let exited = service.child.try_wait().unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(60) && exited.is_none(),
            "the 50 new records not scored (exit: {exited:?}, redelivered {}, accounted {}): {}",
            service.metric("isoflow_records_redelivered_total"),
            service.accounted(),
            service.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let scores = read_at_least(&addr, "scores", 50);
    let offsets: HashSet<i64> = scores
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            v["source"]["offset"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(offsets, (0..50).collect());
    assert_eq!(service.metric("isoflow_offset_resets_total"), 1.0);
    wait_for("the reset committed", Duration::from_secs(10), || {
        committed_offset(&addr, 0) == Some(50)
    });
    assert!(
        service.log_text().contains("offset reset"),
        "{}",
        service.log_text()
    );
    let status = terminate(&mut service, Duration::from_secs(30));
    assert!(status.success(), "exit {status:?}: {}", service.log_text());
}

/// `[kafka.properties]` reach every client: the topic probe, the pipeline's
/// consumer and producer, and the registry's admin, producer and consumer.
/// Here the brokers are only reachable through the properties (they name
/// the real bootstrap servers over a dead `brokers` address), as a SASL or
/// TLS cluster is only reachable with its settings.
#[test]
fn kafka_properties_reach_every_client() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::memory();
    let addr = broker.addr();
    setup(&addr, &|t, n| broker.create_topic(t, n), dir.path(), 1, 100);
    gen(&addr, INPUT, 200, 22, &[]);
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fraud.isoflow");
    let config = dir.path().join("props.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[kafka]
brokers = "127.0.0.1:1"
group_id = "props"
[kafka.properties]
"bootstrap.servers" = "{addr}"

[grpc]
listen = "127.0.0.1:0"
models_dir = "{}"

[[pipeline]]
name = "fraud"
input_topic = "{INPUT}"
model = "{}"
alerts_topic = "alerts"
dlq_topic = "dlq"
scores_topic = "scores"
"#,
            dir.path().join("models").display(),
            model.display()
        ),
    )
    .unwrap();
    let service = Service::start(&config);
    wait_for("200 scored", Duration::from_secs(60), || {
        service.accounted() >= 200
    });
    wait_for("registry replayed", Duration::from_secs(30), || {
        service.log_text().contains("serving gRPC")
    });
    assert!(
        isoflow::kafka::check_topics(&addr, &["isoflow.models"], Duration::from_secs(5)).is_ok(),
        "the registry topic was created through the properties"
    );
}

#[test]
fn sigterm_drains_commits_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::new();
    let addr = mock.addr.clone();
    let config = setup(&addr, &mock.create(), dir.path(), 2, 100);
    // Enough records that the signal lands mid-stream.
    let total = MOCK_RECORDS;
    produce(&addr, dir.path(), total, 0.0, 12);
    let mut first = Service::start(&config);
    wait_for("first records", Duration::from_secs(30), || {
        first.accounted() > 0
    });
    let status = terminate(&mut first, Duration::from_secs(30));
    assert!(status.success(), "exit {status:?}: {}", first.log_text());
    let first_done = scored_in_log(&first.log_text());
    assert!(first_done < total, "the signal arrived after all the work");

    // A restart continues where the first run committed: every record scored
    // exactly once across both runs.
    let second = Service::start(&config);
    wait_for("the rest", Duration::from_secs(90), || {
        second.accounted() as usize + first_done >= total
    });
    // Give anything the second run would re-process time to show up.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        second.accounted() as usize,
        total - first_done,
        "nothing scored twice"
    );
    let scored = read_at_least(&addr, "scores", total);
    assert_eq!(
        scored.len(),
        total,
        "graceful shutdown committed everything it published"
    );
}

/// Offsets are committed in batches a little after their output is
/// acknowledged, also when the stream stops: a service gone idle has
/// committed every offset it read, so a crash then replays nothing.
#[test]
fn an_idle_service_has_committed_every_offset() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::new();
    let addr = mock.addr.clone();
    let config = setup(&addr, &mock.create(), dir.path(), 2, 100);
    let total = 5_000;
    produce(&addr, dir.path(), total, 0.0, 14);
    let mut service = Service::start(&config);
    wait_for("every record", Duration::from_secs(60), || {
        service.accounted() as usize >= total
    });
    // The service's group, asked without joining it.
    let probe: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .set("group.id", "e2e.fraud")
        .create()
        .unwrap();
    let mut partitions = rdkafka::TopicPartitionList::new();
    for p in 0..2 {
        partitions.add_partition(INPUT, p);
    }
    let ends: Vec<i64> = (0..2)
        .map(|p| {
            probe
                .fetch_watermarks(INPUT, p, Duration::from_secs(5))
                .unwrap()
                .1
        })
        .collect();
    wait_for("every offset committed", Duration::from_secs(5), || {
        let committed = probe
            .committed_offsets(partitions.clone(), Duration::from_secs(5))
            .unwrap();
        let at: Vec<i64> = (0..2)
            .map(
                |p| match committed.find_partition(INPUT, p).unwrap().offset() {
                    rdkafka::Offset::Offset(o) => o,
                    _ => -1,
                },
            )
            .collect();
        at == ends
    });
    assert!(service.child.try_wait().unwrap().is_none(), "still running");
}

#[test]
fn kill_9_then_restart_loses_nothing_and_replays_same_alert_ids() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::new();
    let addr = mock.addr.clone();
    let config = setup(&addr, &mock.create(), dir.path(), 2, 100);
    let total = MOCK_RECORDS;
    produce(&addr, dir.path(), total, 0.01, 13);
    {
        let mut first = Service::start(&config);
        wait_for("some progress", Duration::from_secs(30), || {
            first.accounted() > 2000
        });
        first.child.kill().unwrap(); // SIGKILL: no drain, no final commit
        first.child.wait().unwrap();
    }
    let second = Service::start(&config);
    wait_all_accounted(&addr, total);
    assert!(
        second.accounted() > 0,
        "the restarted service picked up the rest"
    );
    let input = input_offsets(&addr);
    let (scored, dead) = accounted_offsets(&addr);
    let all: HashSet<_> = scored.iter().chain(&dead).copied().collect();
    assert_eq!(
        all, input,
        "an input offset was neither scored nor dead-lettered"
    );
    // A replayed record that alerts again carries the same alert id, and an
    // id always names the same record. Per-key state starts empty after the
    // crash, so a replay's keyed features (and score) may differ.
    let mut by_id: HashMap<String, serde_json::Value> = HashMap::new();
    for r in read_all(&addr, "alerts") {
        let a: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        let id = a["alert_id"].as_str().unwrap().to_owned();
        let record = a["record"].clone();
        assert!(record["id"].is_string(), "{a}");
        if let Some(prev) = by_id.insert(id.clone(), record.clone()) {
            assert_eq!(prev, record, "alert id {id} names two records");
        }
    }
    assert!(!by_id.is_empty());
}

/// A second replica joins while the first is consuming: the group moves
/// partitions between two live members, and every input offset is still
/// scored or dead-lettered.
#[test]
fn a_replica_joining_mid_stream_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::new();
    let addr = mock.addr.clone();
    let config = setup(&addr, &mock.create(), dir.path(), 4, 100);
    let half = MOCK_RECORDS / 2;
    produce(&addr, dir.path(), half, 0.01, 17);
    let first = Service::start(&config);
    wait_for("some progress", Duration::from_secs(30), || {
        first.accounted() > 2000
    });
    // The second replica joins while the rest of the stream arrives, paced
    // over several seconds so the group rebalances with records in flight.
    let second = Service::start(&config);
    gen(&addr, INPUT, half, 18, &["--rate", "2500"]);
    wait_all_accounted(&addr, 2 * half);
    assert!(
        second.accounted() > 0,
        "the second replica never got a partition; the test saw no rebalance"
    );
    let input = input_offsets(&addr);
    assert_eq!(input.len(), 2 * half);
    let (scored, dead) = accounted_offsets(&addr);
    let all: HashSet<_> = scored.iter().chain(&dead).copied().collect();
    assert_eq!(
        all, input,
        "an input offset was neither scored nor dead-lettered"
    );
}

#[test]
fn service_rides_out_a_broker_outage() {
    let dir = tempfile::tempdir().unwrap();
    let mock = Mock::new();
    let addr = mock.addr.clone();
    let config = setup(&addr, &mock.create(), dir.path(), 2, 100);
    let total = 30000;
    produce(&addr, dir.path(), total, 0.0, 14);
    let service = Service::start(&config);
    wait_for("some progress", Duration::from_secs(30), || {
        service.accounted() > 500
    });
    mock.cluster.broker_down(1).expect("broker down");
    std::thread::sleep(Duration::from_secs(3));
    mock.cluster.broker_up(1).expect("broker up");
    wait_all_accounted(&addr, total);
    assert!(service.child.id() > 0);
    assert_eq!(input_offsets(&addr).len(), total);
}

#[test]
fn start_up_errors_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let run = |config: &str| {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, config).unwrap();
        let out = std::process::Command::new(bin("isoflow"))
            .args([
                "run",
                "--config",
                path.to_str().unwrap(),
                "--backend",
                "cpu",
            ])
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fraud.isoflow");
    let config = |brokers: &str, model: &Path| {
        format!(
            "[kafka]\nbrokers = \"{brokers}\"\n[[pipeline]]\nname = \"p\"\ninput_topic = \"in\"\nmodel = \"{}\"\nalerts_topic = \"alerts\"\ndlq_topic = \"dlq\"\n",
            model.display()
        )
    };
    let err = run(&config(&format!("127.0.0.1:{}", util::free_port()), &model));
    assert!(err.contains("cannot reach Kafka"), "{err}");
    let broker = Broker::memory();
    broker.create_topic("in", 1);
    let err = run(&config(&broker.addr(), &model));
    assert!(
        err.contains("topic(s) missing") && err.contains("alerts") && err.contains("dlq"),
        "{err}"
    );
    let err = run(&config(&broker.addr(), Path::new("/no/such.isoflow")));
    assert!(
        err.contains("cannot read model file /no/such.isoflow"),
        "{err}"
    );
    let err = run("[kafka]\nbrokers = \"x\"\n");
    assert!(err.contains("pipeline"), "{err}");
    // An API address already taken fails the start, before any pipeline.
    broker.create_topic("alerts", 1);
    broker.create_topic("dlq", 1);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let err = run(&format!(
        "{}[grpc]\nlisten = \"{address}\"\nmodels_dir = \"{}\"\n",
        config(&broker.addr(), &model),
        dir.path().join("models").display()
    ));
    assert!(
        err.contains(&format!("grpc.listen {address}: cannot listen")),
        "{err}"
    );
}

#[test]
fn trains_on_a_topics_history_with_the_service_feature_code() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::memory();
    let addr = broker.addr();
    broker.create_topic("history", 2);
    gen(&addr, "history", 5000, 0, &["--corrupt-rate", "0.02"]);
    let model = dir.path().join("fraud.isoflow");
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fraud.toml");
    let out = ok(
        "isoflow-train",
        &[
            "fit",
            "--brokers",
            &addr,
            "--topic",
            "history",
            "--max-records",
            "4000",
            "--features",
            spec.to_str().unwrap(),
            "--out",
            model.to_str().unwrap(),
            "--name",
            "fraud-history",
        ],
    );
    assert!(out.contains("read 4000 records from history"), "{out}");
    assert!(
        out.contains("set aside"),
        "corrupt records are set aside: {out}"
    );
    let meta: serde_json::Value = serde_json::from_str(&ok(
        "isoflow",
        &["model", "inspect", model.to_str().unwrap()],
    ))
    .unwrap();
    assert_eq!(
        meta["training"]["source"],
        format!("kafka://{addr}/history")
    );
    let rows = meta["training"]["rows"].as_u64().unwrap();
    assert!(
        rows > 3800 && rows < 4000,
        "{rows} rows: 4000 read, corrupt ones set aside"
    );
    assert_eq!(
        meta["feature_spec"]["features"].as_array().unwrap().len(),
        7
    );
    // Without a spec, a topic cannot be trained on.
    let err = util::fails(
        "isoflow-train",
        &[
            "fit",
            "--brokers",
            &addr,
            "--topic",
            "history",
            "--out",
            "/tmp/x",
        ],
    );
    assert!(err.contains("--features"), "{err}");
    // A topic that is not there is named, not trained on as empty.
    let err = util::fails(
        "isoflow-train",
        &[
            "fit",
            "--brokers",
            &addr,
            "--topic",
            "no-such-history",
            "--features",
            spec.to_str().unwrap(),
            "--out",
            dir.path().join("absent.isoflow").to_str().unwrap(),
        ],
    );
    assert!(err.contains("'no-such-history' does not exist"), "{err}");
}

#[test]
fn bench_pipeline_measures_consume_throughput_and_alert_latency() {
    let broker = Broker::memory();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fraud.isoflow");
    #[rustfmt::skip]
    let out = ok(
        "isoflow",
        &[
            "bench", "pipeline", "--brokers", &broker.addr(), "--records", "6000",
            "--rate", "2000", "--seconds", "2", "--backend", "cpu",
            "--model", model.to_str().unwrap(),
        ],
    );
    // Every phase reports a positive figure.
    let figure = |label: &str| -> f64 {
        let line = out.lines().find(|l| l.trim_start().starts_with(label));
        let line = line.unwrap_or_else(|| panic!("no '{label}' line in:\n{out}"));
        line[line.find(label).unwrap() + label.len()..]
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no figure after '{label}' in:\n{out}"))
    };
    for label in [
        "produce",
        "raw consume",
        "end to end",
        "through the last batch",
    ] {
        assert!(figure(label) > 0.0, "{label}:\n{out}");
    }
    let latency = out.lines().find(|l| l.contains("produce → alert")).unwrap();
    assert!(latency.contains("p50") && latency.contains("p99"), "{out}");
}

#[test]
fn tabular_rows_replayed_as_json_score_exactly_as_offline() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::memory();
    let addr = broker.addr();
    for topic in ["rows", "rows-alerts", "rows-dlq", "rows-scores"] {
        broker.create_topic(topic, 1);
    }
    let csv = util::data("tabular/mammography.csv");
    let model = dir.path().join("m.isoflow");
    let (csv_s, model_s) = (csv.to_str().unwrap(), model.to_str().unwrap());
    ok(
        "isoflow-train",
        &["fit", "--input", csv_s, "--out", model_s],
    );
    let offline = dir.path().join("offline.csv");
    #[rustfmt::skip]
    ok("isoflow", &["score", "--model", model_s, "--input", csv_s,
                    "--output", offline.to_str().unwrap(), "--backend", "cpu"]);
    let offline: Vec<f32> = std::fs::read_to_string(&offline)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();

    // Each row as a JSON object whose fields carry the CSV column names, in
    // file order on one partition, so a record's offset is its row.
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    let names: Vec<&str> = lines.next().unwrap().split(',').collect();
    let rows: Vec<String> = lines
        .map(|l| {
            let fields: Vec<String> = names
                .iter()
                .zip(l.split(','))
                .map(|(n, v)| format!("\"{n}\":{v}"))
                .collect();
            format!("{{{}}}", fields.join(","))
        })
        .collect();
    assert_eq!(rows.len(), offline.len());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let producer = isoflow::kafka::producer(&addr, &Default::default()).unwrap();
        let mut pending = Vec::new();
        for row in &rows {
            let record = rdkafka::producer::FutureRecord::<(), _>::to("rows").payload(row);
            pending.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        }
        for p in pending {
            p.await.unwrap().unwrap();
        }
    });

    #[rustfmt::skip]
    let service = Service::start_with(
        &["--brokers", &addr, "--input-topic", "rows", "--model", model_s,
          "--alerts-topic", "rows-alerts", "--dlq-topic", "rows-dlq",
          "--scores-topic", "rows-scores", "--group", "replay"],
        &model,
    );
    wait_for("every row scored", Duration::from_secs(60), || {
        service.accounted() as usize >= rows.len()
    });
    let scores = read_at_least(&addr, "rows-scores", rows.len());
    assert_eq!(scores.len(), rows.len());
    for r in &scores {
        let v: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        let row = v["source"]["offset"].as_u64().unwrap() as usize;
        let online = v["score"].as_f64().unwrap() as f32;
        assert_eq!(online, offline[row], "row {row}: online {v} vs offline");
    }
    assert!(read_all(&addr, "rows-dlq").is_empty());
}

/// Produces JSON `values` to `topic`, each with an `id` header `<tag>-<i>`.
async fn produce_tagged(addr: &str, topic: &str, tag: &str, values: &[String]) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = isoflow::kafka::producer(addr, &Default::default()).unwrap();
    for (i, value) in values.iter().enumerate() {
        let id = format!("{tag}-{i}");
        let headers = OwnedHeaders::new().insert(Header {
            key: "id",
            value: Some(&id),
        });
        producer
            .send(
                FutureRecord::to(topic)
                    .key("k")
                    .payload(value)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .expect("produce");
    }
}

/// A live model that reads other fields than the one before it: records
/// parsed for the old fields are scored by the old model, later ones by the
/// new model, and a record only the new fields reject reaches the DLQ with
/// its original headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_reading_other_fields_goes_live_with_the_records_parsed_for_it() {
    let dir = tempfile::tempdir().unwrap();
    // Two one-column models: "ma" reads field a, "mb" field b.
    let mut models = Vec::new();
    for (name, column) in [("ma", "a"), ("mb", "b")] {
        let csv = dir.path().join(format!("{column}.csv"));
        let rows: Vec<String> = (0..256).map(|i| format!("{}", i % 17)).collect();
        std::fs::write(&csv, format!("{column}\n{}\n", rows.join("\n"))).unwrap();
        let model = dir.path().join(format!("{name}.isoflow"));
        let (csv, out) = (csv.display().to_string(), model.display().to_string());
        ok(
            "isoflow-train",
            &[
                "fit", "--input", &csv, "--out", &out, "--name", name, "--seed", "1",
            ],
        );
        models.push(model);
    }
    let mock = Mock::new();
    for topic in [INPUT, "alerts", "dlq", "scores", "swap.swap.state"] {
        mock.create()(topic, 1);
    }
    let mut config = isoflow::config::Config::default();
    config.kafka.brokers = mock.addr.clone();
    config.kafka.group_id = "swap".into();
    config.service.backend = "cpu".into();
    config.pipelines.push(isoflow::config::PipelineConfig {
        scores_topic: "scores".into(),
        batch_max_records: 64,
        batch_max_ms: 20,
        ..isoflow::config::PipelineConfig::new("swap", INPUT, models[0].clone(), ("alerts", "dlq"))
    });
    let registry = std::sync::Arc::new(isoflow::metrics::Metrics::default());
    let handles = std::sync::Arc::new(isoflow::pipeline::Handles::default());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(isoflow::pipeline::run(
        config,
        registry.clone(),
        handles.clone(),
        shutdown.clone(),
    ));
    handles.wait_started(1).await;
    let metrics = registry.pipeline("swap");
    let accounted =
        || metrics.scored.load(std::sync::atomic::Ordering::Relaxed) + metrics.dlq_total();
    let until = |n: u64| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while accounted() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {n}",
                accounted()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };

    let old: Vec<String> = (0..200).map(|i| format!(r#"{{"a":{}}}"#, i % 13)).collect();
    produce_tagged(&mock.addr, INPUT, "old", &old).await;
    until(200).await;
    let mb = isoflow::model::load(&models[1]).unwrap();
    handles.get("swap").unwrap().activate(mb).unwrap();
    let mut new: Vec<String> = (0..200).map(|i| format!(r#"{{"b":{}}}"#, i % 13)).collect();
    // Valid for the old model, not for the new one.
    new.extend((0..5).map(|i| format!(r#"{{"a":{i}}}"#)));
    produce_tagged(&mock.addr, INPUT, "new", &new).await;
    until(405).await;
    shutdown.cancel();
    running.await.unwrap().unwrap();

    let scores = read_all(&mock.addr, "scores");
    let models_by_offset: Vec<(i64, String)> = scores
        .iter()
        .map(|r| {
            let s: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            (
                s["source"]["offset"].as_i64().unwrap(),
                s["model"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut offsets: Vec<i64> = models_by_offset.iter().map(|(o, _)| *o).collect();
    offsets.sort();
    let missing: Vec<i64> = (0..405)
        .filter(|o| offsets.binary_search(o).is_err())
        .collect();
    assert_eq!(
        models_by_offset.len(),
        400,
        "every valid record scored once; missing {missing:?}"
    );
    for (offset, model) in &models_by_offset {
        let want = if *offset < 200 { "ma@" } else { "mb@" };
        assert!(model.starts_with(want), "offset {offset} scored by {model}");
    }
    let dlq = read_all(&mock.addr, "dlq");
    let dead: Vec<(&str, &str)> = dlq
        .iter()
        .map(|r| {
            (
                header(r, "id").expect("original headers kept"),
                header(r, "isoflow.error.reason").unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, &str)> = (200..205)
        .map(|i| (format!("new-{i}"), "missing_field"))
        .collect();
    let expected: Vec<(&str, &str)> = expected.iter().map(|(id, r)| (id.as_str(), *r)).collect();
    assert_eq!(dead, expected);
}

/// Produces one JSON record per `(device, partition, ts)` to `topic`,
/// each to its partition, keyed by its device.
fn produce_readings(addr: &str, topic: &str, readings: &[(&str, i32, f64)]) {
    let records = readings.iter().map(|&(device, partition, ts)| {
        let value = format!(r#"{{"device":"{device}","ts":{ts},"value":1.0}}"#);
        (device.to_owned(), partition, value)
    });
    produce_to(addr, topic, records);
}

/// Produces `(key, partition, value)` records to `topic`, in order.
pub(crate) fn produce_to(
    addr: &str,
    topic: &str,
    records: impl IntoIterator<Item = (String, i32, String)>,
) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let producer: FutureProducer = isoflow::kafka::producer(addr, &Default::default()).unwrap();
        for (key, partition, value) in records {
            producer
                .send(
                    FutureRecord::to(topic)
                        .key(&key)
                        .partition(partition)
                        .payload(&value),
                    Duration::from_secs(10),
                )
                .await
                .expect("produce");
        }
    });
}

/// Partitions move to a second member and back: the member that gets a
/// partition back must not judge its devices by state from before it left
/// (the other member saw them meanwhile). Both devices report every 10 s
/// throughout, so any gap alert (gap_s >= 500) is false: stale state reads
/// 1,010 s since the last reading this member saw of the device it gave up.
#[test]
fn a_partition_given_up_and_back_starts_its_keys_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::memory();
    let addr = broker.addr();
    for (topic, n) in [("readings", 2), ("alerts", 1), ("dlq", 1), ("scores", 2)] {
        broker.create_topic(topic, n);
    }
    // A model whose only rule is a device's silence.
    let mut rows = String::from("device,ts,value\n");
    for i in 0..400 {
        rows += &format!("d{},{},{}\n", i % 4, i * 5, 1.0 + (i % 7) as f64 * 0.01);
    }
    let spec = r#"key_field = "device"
time_field = "ts"
[[feature]]
name = "value"
kind = "field"
[[feature]]
name = "gap_s"
kind = "key_gap"
alert_above = 500.0
"#;
    let model = fit_model(dir.path(), "gap", spec, &rows);
    let extra = "batch_max_records = 50\nbatch_max_ms = 20\n";
    let config = devices_config(dir.path(), &addr, &model, "moves", extra);
    let readings = |from: f64, to: f64| -> Vec<(&'static str, i32, f64)> {
        let mut out = Vec::new();
        let mut t = from;
        while t <= to {
            out.extend([("d0", 0, t), ("d1", 1, t)]);
            t += 10.0;
        }
        out
    };
    // Distinct records scored: a member taking a partition over may score
    // again what the other scored after its last commit.
    let scored = |n: usize| {
        wait_for(
            &format!("{n} records scored"),
            Duration::from_secs(60),
            || {
                let sources: HashSet<(i32, i64)> = read_all(&addr, "scores")
                    .iter()
                    .filter_map(|r| {
                        let v: serde_json::Value =
                            serde_json::from_slice(r.value.as_deref()?).ok()?;
                        let source = &v["source"];
                        Some((
                            source["partition"].as_i64()? as i32,
                            source["offset"].as_i64()?,
                        ))
                    })
                    .collect();
                sources.len() >= n
            },
        )
    };
    let assigned = |s: &Service, n: f64| {
        wait_for(
            &format!("{n} partitions assigned"),
            Duration::from_secs(60),
            || s.metric("isoflow_assigned_partitions") == n,
        )
    };

    let mut first = Service::start(&config);
    assigned(&first, 2.0);
    let mut sent = readings(0.0, 100.0);
    produce_readings(&addr, "readings", &sent);
    scored(sent.len());

    // A second member takes one partition and sees both devices' next
    // readings between them.
    let config2 = dir.path().join("isoflow2.toml");
    std::fs::copy(&config, &config2).unwrap();
    let mut second = Service::start(&config2);
    assigned(&second, 1.0);
    assigned(&first, 1.0);
    let middle = readings(110.0, 1100.0);
    produce_readings(&addr, "readings", &middle);
    sent.extend(middle);
    scored(sent.len());
    assert!(second.accounted() > 0, "{}", second.log_text());
    let released = first.metric("isoflow_state_released_total");
    assert!(released >= 1.0, "released {released}: {}", first.log_text());

    // It leaves; the first member has both partitions again.
    assert!(terminate(&mut second, Duration::from_secs(30)).success());
    assigned(&first, 2.0);
    let last = readings(1110.0, 1200.0);
    produce_readings(&addr, "readings", &last);
    sent.extend(last);
    scored(sent.len());

    let false_gaps: Vec<String> = read_all(&addr, "alerts")
        .iter()
        .filter_map(|r| {
            let v: serde_json::Value = serde_json::from_slice(r.value.as_deref()?).ok()?;
            let reasons = v["reasons"].to_string();
            reasons
                .contains("gap_s")
                .then_some(format!("{} {reasons}", v["key"]))
        })
        .collect();
    assert!(
        false_gaps.is_empty(),
        "gap alerts for devices that never went silent: {false_gaps:?}\n{}",
        first.log_text()
    );
    assert!(
        first
            .log_text()
            .contains("per-key state of partitions given up is released"),
        "{}",
        first.log_text()
    );
    assert!(terminate(&mut first, Duration::from_secs(30)).success());
}

/// `(score, alert)` by source offset on scores topic `topic`, once it
/// covers offsets `0..n`.
fn scores_by_offset(addr: &str, topic: &str, n: usize) -> Vec<(f32, bool)> {
    util::scores_by_offset(&read_at_least(addr, topic, n), n)
}

/// Pipelines that keep learning — a preset's cold start and a trained model
/// with `learn` — score a stream exactly as `isoflow score --learn` does
/// offline, record for record, though the service cuts it into other
/// batches: the online forest regrows on a row schedule of its own.
#[test]
fn learning_pipelines_score_as_isoflow_score_learn() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::memory();
    let addr = broker.addr();
    for topic in [
        "readings",
        "alerts-cold",
        "alerts-trained",
        "dlq",
        "scores-cold",
        "scores-trained",
    ] {
        broker.create_topic(topic, 1);
    }
    let line = |i: usize| {
        let device = if i.is_multiple_of(2) { "a" } else { "b" };
        let burst = device == "a" && (1500..1540).contains(&i);
        let value = if burst { 44.0 } else { 10.0 } + (i * 7 % 11) as f64 * 0.1;
        format!(
            r#"{{"device":"{device}","ts":{},"value":{value}}}"#,
            i as f64
        )
    };
    let n = 2000;
    let stream = dir.path().join("stream.jsonl");
    std::fs::write(&stream, (0..n).map(|i| line(i) + "\n").collect::<String>()).unwrap();
    let train = dir.path().join("train.jsonl");
    std::fs::write(
        &train,
        (0..600).map(|i| line(i + 5000) + "\n").collect::<String>(),
    )
    .unwrap();
    let model = dir.path().join("trained.isoflow");
    #[rustfmt::skip]
    ok("isoflow-train", &["fit", "--preset", "metrics", "--key", "device", "--time", "ts",
        "--fields", "value", "--input", train.to_str().unwrap(), "--out", model.to_str().unwrap()]);
    let offline = |args: &[&str], out: &str| {
        let out = dir.path().join(out);
        let mut all = vec!["score", "--input", stream.to_str().unwrap()];
        all.extend(args);
        all.extend([
            "--learn",
            "--seed",
            "7",
            "--backend",
            "cpu",
            "--output",
            out.to_str().unwrap(),
        ]);
        ok("isoflow", &all);
        scores_of_file(&out)
    };
    #[rustfmt::skip]
    let cold = offline(&["--preset", "metrics", "--key", "device", "--time", "ts", "--fields", "value"], "cold.csv");
    let trained = offline(&["--model", model.to_str().unwrap()], "trained.csv");
    assert!(cold[1500..1560].iter().any(|s| s.1), "the burst alerts");

    let config = dir.path().join("isoflow.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[kafka]
brokers = "{addr}"
group_id = "learn"

[[pipeline]]
name = "cold"
input_topic = "readings"
preset = "metrics"
key = ["device"]
time = "ts"
fields = ["value"]
learn = true
seed = 7
alerts_topic = "alerts-cold"
dlq_topic = "dlq"
scores_topic = "scores-cold"
batch_max_records = 97
batch_max_ms = 20

[[pipeline]]
name = "trained"
input_topic = "readings"
model = "{}"
learn = true
seed = 7
alerts_topic = "alerts-trained"
dlq_topic = "dlq"
scores_topic = "scores-trained"
batch_max_records = 64
batch_max_ms = 20
"#,
            model.display()
        ),
    )
    .unwrap();
    let mut service = Service::start(&config);
    produce_to(
        &addr,
        "readings",
        (0..n).map(|i| (String::new(), 0, line(i))),
    );
    let first_difference = |a: &[(f32, bool)], b: &[(f32, bool)]| {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).position(|(x, y)| x != y)
    };
    let served = scores_by_offset(&addr, "scores-cold", n);
    assert_eq!(first_difference(&served, &cold), None, "cold start");
    let served = scores_by_offset(&addr, "scores-trained", n);
    assert_eq!(
        first_difference(&served, &trained),
        None,
        "trained, learning"
    );
    let alerts = read_all(&addr, "alerts-cold");
    assert!(!alerts.is_empty());
    assert!(terminate(&mut service, Duration::from_secs(30)).success());
}

/// A feedback topic gives the service the labels `isoflow score --feedback`
/// reads from a file: read from its start before the first record, its
/// labels raise the risk of labelled cards and terminals exactly as
/// offline, record for record. Without them the scores differ.
#[test]
fn a_feedback_topic_scores_as_isoflow_score_feedback() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::memory();
    let addr = broker.addr();
    for topic in ["payments", "labels", "alerts", "dlq", "scores"] {
        broker.create_topic(topic, 1);
    }
    // Cards 0..40 on terminals 0..15; cards 3 and 7 are stolen from the
    // middle of the stream on, mostly on terminal 5.
    let payment = |i: usize| {
        let card = i * 7 % 40;
        let stolen = (card == 3 || card == 7) && i >= 1000;
        let terminal = if stolen && !i.is_multiple_of(3) {
            5
        } else {
            i * 11 % 15
        };
        let amount = if stolen {
            180.0 + (i % 9) as f64
        } else {
            20.0 + (i * 13 % 50) as f64
        };
        let ts = 1_700_000_000.0 + i as f64 * 600.0;
        (card, terminal, amount, ts, stolen)
    };
    let line = |(card, terminal, amount, ts, _): (usize, usize, f64, f64, bool)| {
        format!(r#"{{"card":"c{card}","terminal":"t{terminal}","amount":{amount},"ts":{ts}}}"#)
    };
    let n = 2400;
    let stream = dir.path().join("stream.jsonl");
    std::fs::write(
        &stream,
        (0..n).map(|i| line(payment(i)) + "\n").collect::<String>(),
    )
    .unwrap();
    // Labels of the stream's records, known a day after each payment.
    let labels: Vec<String> = (0..n)
        .map(payment)
        .filter(|p| p.4 || p.0.is_multiple_of(5))
        .map(|p| {
            let record = line(p);
            let known = p.3 + 86_400.0;
            format!(
                r#"{},"label":{},"label_ts":{known}}}"#,
                &record[..record.len() - 1],
                u8::from(p.4)
            )
        })
        .collect();
    let feedback = dir.path().join("labels.jsonl");
    std::fs::write(
        &feedback,
        labels.iter().map(|l| l.clone() + "\n").collect::<String>(),
    )
    .unwrap();
    let train = dir.path().join("train.jsonl");
    std::fs::write(
        &train,
        (0..800)
            .map(|i| line(payment(i)) + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let model = dir.path().join("payments.isoflow");
    #[rustfmt::skip]
    ok("isoflow-train", &["fit", "--preset", "transactions", "--key", "card,terminal", "--time", "ts",
        "--fields", "amount", "--input", train.to_str().unwrap(), "--out", model.to_str().unwrap()]);
    let offline = |extra: &[&str], out: &str| {
        let out = dir.path().join(out);
        #[rustfmt::skip]
        let mut args = vec!["score", "--model", model.to_str().unwrap(), "--input", stream.to_str().unwrap(),
            "--backend", "cpu", "--output", out.to_str().unwrap()];
        args.extend(extra);
        ok("isoflow", &args);
        scores_of_file(&out)
    };
    let with_labels = offline(&["--feedback", feedback.to_str().unwrap()], "labelled.csv");
    let without = offline(&[], "unlabelled.csv");
    assert_ne!(with_labels, without, "the labels change scores");

    let count = labels.len() as f64;
    // One record on the topic that is no label: counted, logged, left out.
    let bad = std::iter::once(r#"{"card":"c1","label":1}"#.to_owned());
    produce_to(
        &addr,
        "labels",
        labels.into_iter().chain(bad).map(|l| (String::new(), 0, l)),
    );
    let mut service = Service::start_with(
        &[
            "--brokers",
            &addr,
            "--input-topic",
            "payments",
            "--model",
            model.to_str().unwrap(),
            "--alerts-topic",
            "alerts",
            "--dlq-topic",
            "dlq",
            "--scores-topic",
            "scores",
            "--feedback-topic",
            "labels",
            "--batch-size",
            "128",
            "--linger-ms",
            "20",
        ],
        &dir.path().join("service"),
    );
    produce_to(
        &addr,
        "payments",
        (0..n).map(|i| (String::new(), 0, line(payment(i)))),
    );
    let served = scores_by_offset(&addr, "scores", n);
    let first = served.iter().zip(&with_labels).position(|(a, b)| a != b);
    assert_eq!(
        first,
        None,
        "service and isoflow score --feedback differ: {}",
        service.log_text()
    );
    assert!(
        service.log_text().contains("feedback topic read"),
        "{}",
        service.log_text()
    );
    assert_eq!(service.metric("isoflow_feedback_labels_total"), count);
    assert_eq!(service.metric("isoflow_feedback_refused_total"), 1.0);
    assert!(service
        .log_text()
        .contains("feedback record is not a label"));
    assert!(terminate(&mut service, Duration::from_secs(30)).success());
}
