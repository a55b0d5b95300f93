//! End to end: the gRPC API of two `isoflow run` replicas on a real tansu
//! broker, driven by a tonic client generated from `proto/`.
//!
//! One test walks the whole story so the broker and the services start once:
//! health and reflection, auth refusals, put (replicated to the other replica
//! within a second), activate (alerts then carry the new version, also on the
//! other replica), WatchAlerts, shadow in GetStatus, delete refused while
//! active, Score by model and by pipeline, oversize requests refused; then a
//! Python client generated from `proto/` with grpcio-tools (skipped, saying
//! so, when `python3 -c "import grpc, grpc_tools"` fails; set
//! `ISOFLOW_REQUIRE_PYTHON_GRPC=1` to make that a failure).

use crate::util;

use isoflow::pb;
use isoflow::pb::model_service_client::ModelServiceClient;
use isoflow::pb::scoring_service_client::ScoringServiceClient;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Code;

const TOKEN: &str = "test-token-1234";

/// One `isoflow run` process, stopped on drop.
struct Replica {
    child: Child,
    /// The API's port: it listens on port 0, and the system picks one.
    port: util::LoggedPort,
}

impl Replica {
    fn start(dir: &Path, name: &str, brokers: &str) -> Replica {
        Self::start_with(dir, name, brokers, ("127.0.0.1", "", Some(TOKEN)))
    }

    /// [`Self::start`] listening on `host`, with `extra` lines in its
    /// `[grpc]` table and `token` in `ISOFLOW_GRPC_TOKEN`.
    fn start_with(
        dir: &Path,
        name: &str,
        brokers: &str,
        (host, extra, token): (&str, &str, Option<&str>),
    ) -> Replica {
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fraud.isoflow");
        let pipeline = format!(
            r#"
[[pipeline]]
name = "fraud"
input_topic = "tx"
model = "{}"
alerts_topic = "alerts"
dlq_topic = "dlq"
shadow_scores_topic = "shadow-scores"
batch_max_records = 500
batch_max_ms = 50
"#,
            model.display()
        );
        Self::start_pipelines(dir, name, brokers, (host, extra, token), &pipeline)
    }

    /// [`Self::start_with`], running the `[[pipeline]]` tables `pipelines`.
    fn start_pipelines(
        dir: &Path,
        name: &str,
        brokers: &str,
        (host, extra, token): (&str, &str, Option<&str>),
        pipelines: &str,
    ) -> Replica {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"[kafka]
brokers = "{brokers}"
group_id = "grpc-{name}"

[service]
backend = "cpu"

[grpc]
listen = "{host}:0"
models_dir = "{}"
registry_topic = "isoflow.models"
max_request_bytes = 1048576
{extra}
{pipelines}"#,
                dir.join(format!("{name}-models")).display(),
            ),
        )
        .unwrap();
        let log_path = dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = Command::new(util::bin("isoflow"));
        command.args(["run", "--config"]).arg(&config);
        match token {
            Some(token) => command.env("ISOFLOW_GRPC_TOKEN", token),
            None => command.env_remove("ISOFLOW_GRPC_TOKEN"),
        };
        let child = command
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("isoflow run starts");
        Replica {
            child,
            port: util::LoggedPort::new(log_path, "serving gRPC"),
        }
    }

    /// The API's address, once the replica has logged the port it bound.
    fn address(&self) -> String {
        let port = self.port.wait(Duration::from_secs(60));
        format!("http://127.0.0.1:{port}")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn channel(address: &str) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        match Channel::from_shared(address.to_owned())
            .unwrap()
            .connect()
            .await
        {
            Ok(c) => return c,
            Err(e) => {
                assert!(Instant::now() < deadline, "{address} never served: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn authed<T>(message: T) -> tonic::Request<T> {
    with_token(message, TOKEN)
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// Puts the shipped fraud model as the next version of its name.
async fn put_fraud(models: &mut ModelServiceClient<Channel>) -> pb::PutModelResponse {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fraud.isoflow");
    models
        .put_model(authed(pb::PutModelRequest {
            source: Some(pb::put_model_request::Source::ModelBytes(
                std::fs::read(file).unwrap(),
            )),
            name: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
}

async fn status(client: &mut ScoringServiceClient<Channel>) -> pb::PipelineStatus {
    status_of(client, "fraud").await
}

/// The status of pipeline `name`.
async fn status_of(client: &mut ScoringServiceClient<Channel>, name: &str) -> pb::PipelineStatus {
    client
        .get_status(authed(pb::GetStatusRequest {}))
        .await
        .unwrap()
        .into_inner()
        .pipelines
        .into_iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("pipeline {name} in status"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_api_end_to_end_on_two_replicas() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let broker = util::Broker::memory();
    let brokers = broker.addr();
    isoflow::kafka::create_topics(&brokers, &["tx", "alerts", "dlq", "shadow-scores"], 2)
        .await
        .unwrap();
    let a = Replica::start(dir.path(), "a", &brokers);
    let b = Replica::start(dir.path(), "b", &brokers);
    let (ca, cb) = (channel(&a.address()).await, channel(&b.address()).await);

    // Health is open and SERVING; everything else needs the token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(ca.clone());
    let served = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "isoflow.v1.ModelService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        served.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let mut models_a = ModelServiceClient::new(ca.clone());
    let models_b = ModelServiceClient::new(cb.clone());
    let mut scoring_a = ScoringServiceClient::new(ca.clone());
    let scoring_b = ScoringServiceClient::new(cb.clone());
    let missing = models_a
        .list_models(pb::ListModelsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated, "{missing:?}");
    let wrong = scoring_a
        .get_status(with_token(pb::GetStatusRequest {}, "nope"))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");

    // Reflection lists the services (with the token).
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(ca.clone());
    let ask = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let mut answers = reflection
        .server_reflection_info(authed(tokio_stream::once(ask)))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().expect("one answer");
    let Some(
        tonic_reflection::pb::v1::server_reflection_response::MessageResponse::ListServicesResponse(
            list,
        ),
    ) = answer.message_response
    else {
        panic!("unexpected reflection answer {answer:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "isoflow.v1.ModelService",
        "isoflow.v1.ScoringService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }

    // Put: a bad model is INVALID_ARGUMENT; a good one gets the next version,
    // and the other replica sees it within a second.
    let bad = models_a
        .put_model(authed(pb::PutModelRequest {
            source: Some(pb::put_model_request::Source::ModelBytes(vec![1, 2, 3])),
            name: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    // A model bomb (chain trees that expand to gigabytes) is refused by its
    // size before the registry topic sees it.
    let bomb = models_a
        .put_model(authed(pb::PutModelRequest {
            source: Some(pb::put_model_request::Source::ModelBytes(
                util::chain_forest_model(1_100, 12),
            )),
            name: "bomb".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(bomb.code(), Code::InvalidArgument, "{bomb:?}");
    assert!(bomb.message().contains("the limit is"), "{bomb:?}");
    let base = status(&mut scoring_a).await.live_model;
    let base_version: u32 = base.rsplit_once('@').unwrap().1.parse().unwrap();
    let bytes =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fraud.isoflow")).unwrap();
    let put = models_a
        .put_model(authed(pb::PutModelRequest {
            source: Some(pb::put_model_request::Source::ModelBytes(bytes.clone())),
            name: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(put.name, "fraud");
    assert_eq!(put.version, base_version + 1);
    let new_id = format!("fraud@{}", put.version);
    let took = wait_for("put replicated to b", Duration::from_secs(1), || {
        let mut c = models_b.clone();
        async move {
            c.get_model(authed(pb::GetModelRequest {
                name: "fraud".into(),
                version: put.version,
                include_model: false,
            }))
            .await
            .is_ok()
        }
    })
    .await;
    eprintln!("put replicated in {took:?}");

    // Activate live on a: b's pipeline follows within a second.
    let activated = models_a
        .activate_model(authed(pb::ActivateModelRequest {
            name: "fraud".into(),
            version: put.version,
            pipeline: "fraud".into(),
            mode: pb::Mode::Live as i32,
            clear: false,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(activated.model, new_id);
    assert_eq!(activated.previous, base);
    let took = wait_for("activation replicated to b", Duration::from_secs(1), || {
        let mut c = scoring_b.clone();
        let want = new_id.clone();
        async move { status(&mut c).await.live_model == want }
    })
    .await;
    eprintln!("activation replicated in {took:?}");
    let unknown = models_a
        .activate_model(authed(pb::ActivateModelRequest {
            name: "fraud".into(),
            version: 999,
            pipeline: "fraud".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

    // Records produced now are scored by the new version: alert ids carry it.
    let mut watch = scoring_a
        .watch_alerts(authed(pb::WatchAlertsRequest {
            pipeline: "fraud".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    util::ok(
        "isoflow",
        &[
            "gen",
            "--brokers",
            &brokers,
            "--scenario",
            "fraud",
            "--count",
            "3000",
            "--seed",
            "5",
            "--topic",
            "tx",
        ],
    );
    let watched = tokio::time::timeout(Duration::from_secs(20), watch.message())
        .await
        .expect("an alert is streamed")
        .unwrap()
        .expect("stream open");
    assert_eq!(watched.model, new_id);
    assert!(
        watched.alert_id.ends_with(&format!("/{new_id}")),
        "{watched:?}"
    );
    wait_for("records scored", Duration::from_secs(20), || {
        let mut c = scoring_a.clone();
        async move { status(&mut c).await.scored >= 3000 }
    })
    .await;
    // The fraud model keeps per-card and per-tuple state: some of its
    // capacity is taken, none of it overrun.
    let fill = status(&mut scoring_a.clone()).await.state_fill;
    assert!(fill > 0.0 && fill <= 1.0, "state fill {fill}");
    let alert_brokers = brokers.clone();
    let alerts = tokio::task::spawn_blocking(move || {
        isoflow::kafka::read_topic(&alert_brokers, "alerts", 100_000, Duration::from_secs(2))
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!alerts.is_empty(), "no alerts published");
    for r in &alerts {
        let v: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        let id = v["alert_id"].as_str().unwrap();
        assert!(
            id.ends_with(&format!("/{new_id}")),
            "alert {id} not from {new_id}"
        );
    }

    // Shadow: the old version scores alongside, visible in GetStatus.
    models_a
        .activate_model(authed(pb::ActivateModelRequest {
            name: "fraud".into(),
            version: base_version,
            pipeline: "fraud".into(),
            mode: pb::Mode::Shadow as i32,
            clear: false,
        }))
        .await
        .unwrap();
    let s = status(&mut scoring_a).await;
    assert_eq!(s.shadow_model, base);
    assert_eq!(s.live_model, new_id);
    assert!(s.live_alert_rate > 0.0, "{s:?}");
    // Its scores of new records go to the shadow scores topic, marked.
    #[rustfmt::skip]
    util::ok("isoflow", &["gen", "--brokers", &brokers, "--scenario", "fraud",
                          "--count", "1000", "--seed", "6", "--topic", "tx"]);
    let shadow_brokers = brokers.clone();
    let shadow_scores = tokio::task::spawn_blocking(move || {
        let mut read = Vec::new();
        for _ in 0..20 {
            read = isoflow::kafka::read_topic(
                &shadow_brokers,
                "shadow-scores",
                100_000,
                Duration::from_secs(2),
            )
            .unwrap();
            if read.len() >= 1000 {
                break;
            }
        }
        read
    })
    .await
    .unwrap();
    assert!(
        shadow_scores.len() >= 1000,
        "{} shadow scores",
        shadow_scores.len()
    );
    for r in &shadow_scores {
        let v: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        assert_eq!(v["model"], base.as_str(), "{v}");
        assert_eq!(v["shadow"], true, "{v}");
        assert!(v["score"].is_f64() && v["source"]["offset"].is_i64(), "{v}");
    }

    // Delete refused while live or shadow; unknown is NOT_FOUND.
    for version in [put.version, base_version] {
        let refused = models_a
            .delete_model(authed(pb::DeleteModelRequest {
                name: "fraud".into(),
                version,
            }))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    }
    let gone = models_a
        .delete_model(authed(pb::DeleteModelRequest {
            name: "fraud".into(),
            version: 77,
        }))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");

    // Score by model, by pipeline, and by neither (the only pipeline's live
    // model); the answer names the version.
    let records: Vec<Vec<u8>> = alerts
        .iter()
        .take(5)
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            serde_json::to_vec(&v["record"]).unwrap()
        })
        .collect();
    for (model, pipeline) in [(new_id.as_str(), ""), ("", "fraud"), ("", "")] {
        let scored = scoring_a
            .score(authed(pb::ScoreRequest {
                model: model.into(),
                pipeline: pipeline.into(),
                records: records.clone(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(scored.model, new_id);
        assert_eq!(scored.results.len(), records.len());
        assert!(scored
            .results
            .iter()
            .all(|r| r.score > 0.0 && r.score <= 1.0));
    }
    let malformed = scoring_a
        .score(authed(pb::ScoreRequest {
            model: new_id.clone(),
            json_records: vec!["{not json".into()],
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument, "{malformed:?}");
    let huge = scoring_a
        .score(authed(pb::ScoreRequest {
            model: new_id.clone(),
            records: vec![vec![b' '; 2 << 20]],
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(huge.code(), Code::ResourceExhausted, "{huge:?}");
    // Still up.
    assert_eq!(status(&mut scoring_a).await.live_model, new_id);

    // The CLI client: JSON lines, and the same records as CSV, score alike.
    let jsonl = dir.path().join("remote.jsonl");
    #[rustfmt::skip]
    util::ok("isoflow", &["gen", "--scenario", "fraud", "--count", "300", "--seed", "9",
                          "--out", jsonl.to_str().unwrap()]);
    let objects: Vec<serde_json::Map<String, serde_json::Value>> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let columns: Vec<String> = objects[0].keys().cloned().collect();
    let mut csv = columns.join(",") + "\n";
    for o in &objects {
        let row: Vec<String> = columns
            .iter()
            .map(|c| match &o[c] {
                serde_json::Value::String(t) => t.clone(),
                other => other.to_string(),
            })
            .collect();
        csv += &(row.join(",") + "\n");
    }
    let csv_path = dir.path().join("remote.csv");
    std::fs::write(&csv_path, csv).unwrap();
    let remote_score = |input: &Path, out: &str| {
        let out = dir.path().join(out);
        #[rustfmt::skip]
        util::ok("isoflow", &["score", "--grpc", &a.address(), "--token", TOKEN, "--pipeline", "fraud",
                              "--input", input.to_str().unwrap(), "--output", out.to_str().unwrap()]);
        std::fs::read_to_string(out).unwrap()
    };
    let from_jsonl = remote_score(&jsonl, "remote-jsonl.out");
    assert_eq!(from_jsonl.lines().count(), 301, "{from_jsonl}");
    assert_eq!(remote_score(&csv_path, "remote-csv.out"), from_jsonl);

    python_client(dir.path(), &b.address(), &brokers);
    eprintln!("grpc end to end in {:?}", started.elapsed());
    drop((a, b));
}

/// Generates Python stubs from `proto/` and runs `tests/grpc_client.py`.
fn python_client(dir: &Path, address: &str, brokers: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let available = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        assert!(
            std::env::var_os("ISOFLOW_REQUIRE_PYTHON_GRPC").is_none(),
            "python3 with grpcio and grpcio-tools is required: pip install grpcio grpcio-tools"
        );
        eprintln!("SKIPPED the Python client check: pip install grpcio grpcio-tools to run it");
        return;
    }
    let stubs = dir.join("py");
    std::fs::create_dir_all(&stubs).unwrap();
    let out = Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(root.join("proto"))
        .arg(format!("--python_out={}", stubs.display()))
        .arg(format!("--grpc_python_out={}", stubs.display()))
        .arg(root.join("proto/isoflow/v1/model.proto"))
        .arg(root.join("proto/isoflow/v1/api.proto"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "grpc_tools.protoc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("python3")
        .arg(root.join("tests/grpc_client.py"))
        .arg(&stubs)
        .arg(address.trim_start_matches("http://"))
        .arg(TOKEN)
        .arg(root.join("models/fraud.isoflow"))
        .arg(util::bin("isoflow"))
        .arg(brokers)
        .arg("tx")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "Python client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
}

/// A restarted replica scores with the model its registry replay
/// activates, from the very first record: scored with the config's model
/// first, replayed records would get other alert ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_scores_with_the_replayed_model_from_the_first_record() {
    let dir = tempfile::tempdir().unwrap();
    let broker = util::Broker::memory();
    let brokers = broker.addr();
    isoflow::kafka::create_topics(&brokers, &["tx", "alerts", "dlq", "shadow-scores"], 1)
        .await
        .unwrap();
    let new_id = {
        let a = Replica::start(dir.path(), "a", &brokers);
        let channel = channel(&a.address()).await;
        let mut models = ModelServiceClient::new(channel.clone());
        let put = put_fraud(&mut models).await;
        models
            .activate_model(authed(pb::ActivateModelRequest {
                name: "fraud".into(),
                version: put.version,
                pipeline: "fraud".into(),
                mode: pb::Mode::Live as i32,
                clear: false,
            }))
            .await
            .unwrap();
        format!("fraud@{}", put.version)
    };
    // Stopped; records wait for the restart.
    util::ok(
        "isoflow",
        &[
            "gen",
            "--brokers",
            &brokers,
            "--topic",
            "tx",
            "--scenario",
            "fraud",
            "--count",
            "3000",
            "--seed",
            "31",
        ],
    );
    let a = Replica::start(dir.path(), "a", &brokers);
    let scoring = ScoringServiceClient::new(channel(&a.address()).await);
    wait_for("every record scored", Duration::from_secs(60), || {
        let mut c = scoring.clone();
        async move { status(&mut c).await.scored >= 3000 }
    })
    .await;
    let alerts =
        isoflow::kafka::read_topic(&brokers, "alerts", usize::MAX, Duration::from_secs(3)).unwrap();
    assert!(alerts.len() > 10, "{} alerts", alerts.len());
    let models: std::collections::BTreeSet<String> = alerts
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            v["model"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(models, [new_id].into(), "models of the restart's alerts");
}

/// A model deleted while a replica was away, and since compacted out of the
/// registry topic with its tombstone, stays deleted when the replica comes
/// back with its cache folder: the topic is the truth. (A broker that lost
/// its storage leaves the topic as such a compaction would.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_gone_from_the_registry_topic_does_not_come_back_from_its_cache() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = util::Broker::memory();
    let brokers = broker.addr();
    let topics = ["tx", "alerts", "dlq", "shadow-scores"];
    isoflow::kafka::create_topics(&brokers, &topics, 1)
        .await
        .unwrap();
    let versions = |mut models: ModelServiceClient<Channel>| async move {
        let list = models
            .list_models(authed(pb::ListModelsRequest {
                name: "fraud".into(),
            }))
            .await
            .unwrap()
            .into_inner();
        list.models.iter().map(|m| m.version).collect::<Vec<_>>()
    };
    let put_version = {
        let a = Replica::start(dir.path(), "a", &brokers);
        let mut models = ModelServiceClient::new(channel(&a.address()).await);
        let put = put_fraud(&mut models).await;
        assert!(versions(models).await.contains(&put.version));
        put.version
    };
    broker.restart_empty();
    isoflow::kafka::create_topics(&brokers, &topics, 1)
        .await
        .unwrap();
    let a = Replica::start(dir.path(), "a", &brokers);
    let models = ModelServiceClient::new(channel(&a.address()).await);
    wait_for("the cached copy forgotten", Duration::from_secs(30), || {
        let models = models.clone();
        async move { !versions(models).await.contains(&put_version) }
    })
    .await;
    let cached = std::fs::read_dir(dir.path().join("a-models"))
        .unwrap()
        .count();
    assert_eq!(cached, 0, "no file left in the cache folder");
}

/// `Score` calls beyond `grpc.max_concurrent_scores` are refused at once
/// (RESOURCE_EXHAUSTED, naming the setting) rather than piling onto the
/// threads the pipelines score on; and a server with no token on an
/// address other hosts reach says so in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn score_calls_are_bounded_and_an_open_server_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let broker = util::Broker::memory();
    let brokers = broker.addr();
    isoflow::kafka::create_topics(&brokers, &["tx", "alerts", "dlq", "shadow-scores"], 1)
        .await
        .unwrap();
    let lines = dir.path().join("records.jsonl");
    let out = lines.to_str().unwrap();
    let gen = [
        "gen",
        "--scenario",
        "fraud",
        "--count",
        "5000",
        "--out",
        out,
    ];
    util::ok("isoflow", &gen);
    let records: Vec<Vec<u8>> = std::fs::read_to_string(&lines)
        .unwrap()
        .lines()
        .map(|l| l.as_bytes().to_vec())
        .collect();
    let extra = "max_concurrent_scores = 1";
    let a = Replica::start_with(dir.path(), "a", &brokers, ("0.0.0.0", extra, None));
    let client =
        ScoringServiceClient::new(channel(&a.address()).await).max_decoding_message_size(64 << 20);
    let calls = (0..8).map(|_| {
        let mut c = client.clone();
        let records = records.clone();
        async move {
            c.score(pb::ScoreRequest {
                records,
                ..Default::default()
            })
            .await
        }
    });
    let results = futures::future::join_all(calls).await;
    let refused: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        results.iter().any(Result::is_ok),
        "one call scores: {results:?}"
    );
    assert!(!refused.is_empty(), "some calls overlap the first");
    for status in refused {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("max_concurrent_scores"),
            "{status:?}"
        );
    }
    let log = std::fs::read_to_string(dir.path().join("a.log")).unwrap();
    assert!(log.contains("gRPC serves without a token"), "{log}");
}

/// One detector behind every door: the same records scored by a pipeline
/// (its scores topic), by the gRPC `Score` call and by `isoflow score` get
/// the same score and decision, record for record. The model is a trained
/// `metrics` preset, whose per-key score smoothing and keyed features make
/// any path that skips a step of the sequence differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_score_and_the_cli_give_the_same_scores() {
    let dir = tempfile::tempdir().unwrap();
    let broker = util::Broker::memory();
    let brokers = broker.addr();
    isoflow::kafka::create_topics(&brokers, &["readings", "alerts", "dlq", "scores"], 1)
        .await
        .unwrap();
    // Two devices; device b runs hot for a while.
    let reading = |i: usize| {
        let device = if i.is_multiple_of(2) { "a" } else { "b" };
        let hot = device == "b" && (700..760).contains(&i);
        let value = if hot { 31.5 } else { 20.0 } + (i * 7 % 13) as f64 * 0.25;
        (device, i as f64 * 5.0, value)
    };
    let csv = |range: std::ops::Range<usize>| {
        let mut text = String::from("device,ts,value\n");
        for (device, ts, value) in range.map(reading) {
            text += &format!("{device},{ts},{value}\n");
        }
        text
    };
    let (train, test) = (dir.path().join("train.csv"), dir.path().join("test.csv"));
    std::fs::write(&train, csv(0..600)).unwrap();
    std::fs::write(&test, csv(600..1000)).unwrap();
    let model = dir.path().join("metrics.isoflow");
    #[rustfmt::skip]
    util::ok("isoflow-train", &["fit", "--preset", "metrics", "--key", "device", "--time", "ts",
        "--fields", "value", "--input", train.to_str().unwrap(), "--out", model.to_str().unwrap(),
        "--name", "metrics"]);
    let offline = dir.path().join("offline.csv");
    #[rustfmt::skip]
    util::ok("isoflow", &["score", "--model", model.to_str().unwrap(), "--input",
        test.to_str().unwrap(), "--output", offline.to_str().unwrap(), "--backend", "cpu"]);
    let offline = util::scores_of_file(&offline);
    assert_eq!(offline.len(), 400);
    assert!(offline.iter().any(|s| s.1), "the hot spell alerts");

    let pipeline = format!(
        r#"
[[pipeline]]
name = "metrics"
input_topic = "readings"
model = "{}"
alerts_topic = "alerts"
dlq_topic = "dlq"
scores_topic = "scores"
batch_max_records = 64
batch_max_ms = 20
"#,
        model.display()
    );
    let replica = Replica::start_pipelines(
        dir.path(),
        "a",
        &brokers,
        ("127.0.0.1", "", Some(TOKEN)),
        &pipeline,
    );
    let records: Vec<String> = (600..1000)
        .map(reading)
        .map(|(device, ts, value)| format!(r#"{{"device":"{device}","ts":{ts},"value":{value}}}"#))
        .collect();
    let producer = isoflow::kafka::producer(&brokers, &Default::default()).unwrap();
    for record in &records {
        producer
            .send(
                rdkafka::producer::FutureRecord::<(), _>::to("readings").payload(record),
                Duration::from_secs(10),
            )
            .await
            .expect("produce");
    }
    let mut scoring = ScoringServiceClient::new(channel(&replica.address()).await);
    wait_for("every record scored", Duration::from_secs(60), || {
        let mut c = scoring.clone();
        async move { status_of(&mut c, "metrics").await.scored >= 400 }
    })
    .await;
    let scores =
        isoflow::kafka::read_topic(&brokers, "scores", usize::MAX, Duration::from_secs(3)).unwrap();
    let piped = util::scores_by_offset(&scores, 400);

    let response = scoring
        .score(authed(pb::ScoreRequest {
            pipeline: "metrics".into(),
            json_records: records,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let served: Vec<(f32, bool)> = response
        .results
        .iter()
        .map(|r| (r.score, r.alert))
        .collect();
    let first_difference =
        |a: &[(f32, bool)], b: &[(f32, bool)]| a.iter().zip(b).position(|(x, y)| x != y);
    assert_eq!(
        first_difference(&piped, &offline),
        None,
        "pipeline and isoflow score differ"
    );
    assert_eq!(
        first_difference(&served, &offline),
        None,
        "Score and isoflow score differ"
    );
    assert_eq!(served.len(), 400);
}
