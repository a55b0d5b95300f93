//! Unary `Score` over gRPC on loopback: latency of 1-record calls (p50/p99)
//! and throughput of 10K-record calls (records/s), CPU scorer, in-process
//! server with the shipped fraud model and generated fraud records.
//!
//! `cargo bench --bench grpc_score`; `ISOFLOW_BENCH_QUICK=1` shrinks the
//! number of calls.

/// The allocator the `isoflow` binaries run with, so the figures are theirs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use isoflow::pb;
use isoflow::pb::scoring_service_client::ScoringServiceClient;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn main() {
    let quick = std::env::var_os("ISOFLOW_BENCH_QUICK").is_some();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(quick));
}

async fn run(quick: bool) {
    let dir = tempfile::tempdir().unwrap();
    let model_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fraud.isoflow");
    let model = isoflow::model::load(&model_path).unwrap();
    let handles = Arc::new(isoflow::pipeline::Handles::default());
    let registry = isoflow::registry::ModelRegistry::open(
        dir.path().into(),
        &isoflow::kafka::Cluster::default(),
        "",
        handles,
    )
    .await
    .unwrap();
    registry.seed(&model);
    // Bound here, then served: the port is ours before the client needs it.
    let listener = isoflow::api::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = isoflow::config::GrpcConfig::default();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            isoflow::api::serve(
                listener,
                &config,
                registry,
                isoflow::engine::Engine::Cpu,
                shutdown,
            )
            .await
            .unwrap()
        }
    });
    let records: Vec<Vec<u8>> = isoflow::synthetic::generate(&isoflow::synthetic::GenOptions {
        scenario: isoflow::synthetic::Scenario::Fraud,
        count: 10_000,
        seed: 3,
        corrupt_rate: 0.0,
        start_ts: 1_767_225_600.0,
    })
    .unwrap()
    .into_iter()
    .map(|r| r.value)
    .collect();
    let address = format!("http://127.0.0.1:{port}");
    let channel = loop {
        match tonic::transport::Channel::from_shared(address.clone())
            .unwrap()
            .initial_stream_window_size(isoflow::api::WINDOW)
            .initial_connection_window_size(isoflow::api::WINDOW)
            .tcp_nodelay(true)
            .connect()
            .await
        {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut client = ScoringServiceClient::new(channel).max_decoding_message_size(usize::MAX);
    let model_id = format!("{}@{}", model.name, model.version);
    let request = |records: Vec<Vec<u8>>| pb::ScoreRequest {
        model: model_id.clone(),
        records,
        ..Default::default()
    };

    let (warm, calls) = if quick { (50, 500) } else { (500, 5000) };
    let one = vec![records[0].clone()];
    let mut latencies = Vec::with_capacity(calls);
    for i in 0..warm + calls {
        let r = request(one.clone());
        let t = Instant::now();
        client.score(r).await.unwrap();
        if i >= warm {
            latencies.push(t.elapsed());
        }
    }
    latencies.sort();
    println!(
        "Score 1 record:    p50 {:>8.3} ms  p99 {:>8.3} ms  ({calls} calls)",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );

    let (warm, calls) = if quick { (2, 10) } else { (5, 50) };
    let mut latencies = Vec::with_capacity(calls);
    for i in 0..warm + calls {
        let r = request(records.clone());
        let t = Instant::now();
        let response = client.score(r).await.unwrap().into_inner();
        assert_eq!(response.results.len(), records.len());
        if i >= warm {
            latencies.push(t.elapsed());
        }
    }
    let total: Duration = latencies.iter().sum();
    latencies.sort();
    println!(
        "Score 10K records: p50 {:>8.3} ms  p99 {:>8.3} ms  {:.0} records/s ({calls} calls)",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        (records.len() * calls) as f64 / total.as_secs_f64()
    );
    shutdown.cancel();
    let _ = server.await;
}
