//! Per-key state that survives restarts and crashes: each pipeline's
//! changelog topic, read back when its partitions are assigned. Against
//! tansu, or Apache Kafka with `ISOFLOW_BROKER=kafka`.

use crate::streaming::{produce_to, read_all, terminate};
use crate::util::{devices_config, fit_model, ok, scores_of_file, wait_for, Broker, Service};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Devices of the restart and crash tests, two to a partition of the two.
const DEVICES: usize = 4;

/// A model of a device's readings: the value, its z-score against the
/// device's own baseline (30 readings of warm-up), the device's silence
/// (alerting past 500 s), its reading rate and its previous value.
fn device_model(dir: &Path) -> PathBuf {
    let mut rows = String::from("device,ts,value\n");
    for i in 0..600 {
        rows += &format!("d{},{},{}\n", i % DEVICES, (i / DEVICES) * 10, value(i));
    }
    fit_model(
        dir,
        "devices",
        r#"key_field = "device"
time_field = "ts"
[[feature]]
name = "value"
kind = "field"
[[feature]]
name = "value_z"
kind = "key_zscore"
source = "value"
alpha = 0.05
warmup = 30
alert_z = 8.0
[[feature]]
name = "gap_s"
kind = "key_gap"
alert_above = 500.0
[[feature]]
name = "rate_60"
kind = "key_rate"
window_s = 60.0
[[feature]]
name = "previous"
kind = "key_lag"
source = "value"
lag = 1
"#,
        &rows,
    )
}

/// The value of reading `i`: near 10, never the same twice in a row.
fn value(i: usize) -> f64 {
    10.0 + (i * 37 % 23) as f64 * 0.05
}

/// A device's partition of `partitions`.
fn partition_of(device: usize, partitions: usize) -> i32 {
    (device % partitions) as i32
}

/// The service's configuration: one pipeline over `readings` (two
/// partitions), every score to `scores`, checkpoints every 200 ms.
fn config(dir: &Path, addr: &str, model: &Path, group: &str) -> PathBuf {
    let extra = "batch_max_records = 40\nbatch_max_ms = 20\ncheckpoint_ms = 200\n";
    devices_config(dir, addr, model, group, extra)
}

/// A broker with the pipeline's topics, the input and scores of
/// `partitions` partitions.
fn broker(partitions: u32) -> Broker {
    let broker = Broker::memory();
    for (topic, n) in [
        ("readings", partitions),
        ("alerts", 1),
        ("dlq", 1),
        ("scores", partitions),
    ] {
        broker.create_topic(topic, n);
    }
    broker
}

/// `{"device", "ts", "value"}` records to their devices' partitions of
/// `partitions`.
fn produce(addr: &str, readings: &[(usize, f64, f64)], partitions: usize) {
    let records = readings.iter().map(|&(device, ts, value)| {
        let line = format!(r#"{{"device":"d{device}","ts":{ts},"value":{value}}}"#);
        (format!("d{device}"), partition_of(device, partitions), line)
    });
    produce_to(addr, "readings", records);
}

/// `total` readings of `devices` devices, every 397th a spike.
fn stream(total: usize, devices: usize) -> Vec<(usize, f64, f64)> {
    (0..total)
        .map(|i| {
            let v = if i % 397 == 0 { 30.0 } else { value(i) };
            (i % devices, ((i / devices) * 10) as f64, v)
        })
        .collect()
}

/// `isoflow score`'s scores of `readings` in one uninterrupted pass, by
/// (partition, offset) as [`produce`] places them on a fresh topic: each
/// record's place in its partition is its offset.
fn offline(
    dir: &Path,
    model: &Path,
    readings: &[(usize, f64, f64)],
    partitions: usize,
) -> HashMap<(i32, i64), (f32, bool)> {
    let input = dir.join("readings.jsonl");
    let mut lines = String::new();
    let mut at = Vec::new();
    let mut next = vec![0i64; partitions];
    for &(device, ts, v) in readings {
        lines += &format!("{{\"device\":\"d{device}\",\"ts\":{ts},\"value\":{v}}}\n");
        let p = partition_of(device, partitions);
        at.push((p, next[p as usize]));
        next[p as usize] += 1;
    }
    std::fs::write(&input, lines).unwrap();
    let out = dir.join("offline.csv");
    #[rustfmt::skip]
    ok("isoflow", &["score", "--model", model.to_str().unwrap(), "--input", input.to_str().unwrap(),
        "--backend", "cpu", "--output", out.to_str().unwrap()]);
    at.into_iter().zip(scores_of_file(&out)).collect()
}

/// Asserts that every record was scored, each time as `offline` scores it.
fn assert_scored_as(
    got: &HashMap<(i32, i64), Vec<(f32, bool)>>,
    offline: &HashMap<(i32, i64), (f32, bool)>,
    log: &str,
) {
    let keys: HashSet<&(i32, i64)> = got.keys().collect();
    assert_eq!(keys, offline.keys().collect(), "every record scored");
    let mut differ = Vec::new();
    for (at, each) in got {
        for scored in each {
            if *scored != offline[at] {
                differ.push((*at, *scored, offline[at]));
            }
        }
    }
    differ.sort_by_key(|d| d.0);
    assert!(
        differ.is_empty(),
        "{} scores differ from an uninterrupted pass, first {:?}\n{log}",
        differ.len(),
        &differ[..differ.len().min(5)]
    );
    let replayed = got.values().filter(|v| v.len() > 1).count();
    eprintln!("records scored more than once (replayed after a checkpoint): {replayed}");
}

/// Score messages by their record's (partition, offset): each score and
/// alert decision, every time the record was scored.
fn scores(addr: &str) -> HashMap<(i32, i64), Vec<(f32, bool)>> {
    let mut out: HashMap<(i32, i64), Vec<(f32, bool)>> = HashMap::new();
    for r in read_all(addr, "scores") {
        let v: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        let source = &v["source"];
        let at = (
            source["partition"].as_i64().unwrap() as i32,
            source["offset"].as_i64().unwrap(),
        );
        let scored = (
            v["score"].as_f64().unwrap() as f32,
            v["alert"].as_bool().unwrap(),
        );
        out.entry(at).or_default().push(scored);
    }
    out
}

/// Waits until `n` distinct records were scored.
fn wait_scored(addr: &str, n: usize) {
    wait_for(
        &format!("{n} records scored"),
        Duration::from_secs(90),
        || scores(addr).len() >= n,
    );
}

/// Alerts of the model's rules (not of its forest score) by device, with
/// their reasons.
fn alerts(addr: &str) -> Vec<(String, String)> {
    read_all(addr, "alerts")
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            (
                v["key"].as_str().unwrap().to_owned(),
                v["reasons"].to_string(),
            )
        })
        .filter(|(_, reasons)| reasons.contains("gap_s") || reasons.contains("value_z"))
        .collect()
}

/// Restarted, the service scores each partition's next record with the
/// state it had: a device silent across the restart raises a gap alert
/// (an empty state would read its gap as 0), and a spike of a device seen
/// 60 times before is judged by its z-score at once (an empty state would
/// be in warm-up for 30 more readings). A device that kept reporting has
/// no alert.
#[test]
fn a_restarted_service_goes_on_with_the_state_it_had() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(2);
    let addr = broker.addr();
    let model = device_model(dir.path());
    let config = config(dir.path(), &addr, &model, "restart");
    // The changelog's first message is not its seeds, as when the topic
    // was made again under a process that went on writing: the service
    // still agrees on seeds, and says what it passed over.
    broker.create_topic("restart.devices.state", 2);
    produce_to(
        &addr,
        "restart.devices.state",
        [("k-stale".to_string(), 0, "x".to_string())],
    );

    let mut first = Service::start(&config);
    let mut before = Vec::new();
    for i in 0..60 * DEVICES {
        before.push((i % DEVICES, ((i / DEVICES) * 10) as f64, value(i)));
    }
    produce(&addr, &before, 2);
    wait_scored(&addr, before.len());
    assert!(terminate(&mut first, Duration::from_secs(30)).success());
    let log = first.log_text();
    assert!(log.contains("per-key state read back"), "{log}");
    assert!(log.contains("came before its seeds"), "{log}");
    assert!(
        alerts(&addr).is_empty(),
        "a steady stream alerts: {:?}",
        alerts(&addr)
    );

    let mut second = Service::start(&config);
    // d0 reports on time; d1 was silent 1,500 s; d2 spikes; d3 reports
    // on time.
    let after = [
        (0, 600.0, value(0)),
        (1, 2090.0, value(1)),
        (2, 600.0, 60.0),
        (3, 600.0, value(3)),
    ];
    produce(&addr, &after, 2);
    wait_scored(&addr, before.len() + after.len());
    let log = second.log_text();
    let restored = second.metric("isoflow_state_restored_keys_total");
    // Four tables (z, gap, rate, lag) of four devices.
    assert!(restored >= 16.0, "{restored} keys restored\n{log}");
    assert!(terminate(&mut second, Duration::from_secs(30)).success());
    let got = alerts(&addr);
    let of = |device: &str| -> Vec<&String> {
        got.iter()
            .filter(|(k, _)| k == device)
            .map(|(_, r)| r)
            .collect()
    };
    assert!(
        of("d1").iter().any(|r| r.contains("gap_s")),
        "no gap alert for the device silent across the restart: {got:?}\n{log}"
    );
    assert!(
        of("d2").iter().any(|r| r.contains("value_z")),
        "the spike was not judged by its z-score: {got:?}\n{log}"
    );
    assert!(of("d0").is_empty() && of("d3").is_empty(), "{got:?}");
}

/// A stream scored by a service killed with -9 mid-stream and started
/// again gets, record for record, the scores `isoflow score` gives it in
/// one uninterrupted pass: records the restored state already covers are
/// not applied twice, and records replayed after the last checkpoint meet
/// the state they met the first time. Every record is scored.
#[test]
fn scores_are_the_same_across_a_kill_9_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(2);
    let addr = broker.addr();
    let model = device_model(dir.path());
    let config = config(dir.path(), &addr, &model, "crash");
    let total = 12_000;
    let readings = stream(total, DEVICES);
    let offline = offline(dir.path(), &model, &readings, 2);

    // A first part, checkpointed; the rest arrives while the service runs,
    // and it is killed in the middle of it.
    let first_part = total / 6;
    produce(&addr, &readings[..first_part], 2);
    {
        let mut first = Service::start(&config);
        let scored = |n: usize| {
            let first = &first;
            move || first.metric("isoflow_records_scored_total") as usize >= n
        };
        wait_for(
            "the first part scored",
            Duration::from_secs(90),
            scored(first_part),
        );
        std::thread::sleep(Duration::from_millis(500));
        let rest = readings[first_part..].to_vec();
        let producing = {
            let addr = addr.clone();
            std::thread::spawn(move || produce(&addr, &rest, 2))
        };
        wait_for(
            "some of the rest scored",
            Duration::from_secs(90),
            scored(first_part + 500),
        );
        first.child.kill().unwrap(); // SIGKILL: no drain, no last checkpoint
        first.child.wait().unwrap();
        producing.join().unwrap();
    }
    let before_restart = scores(&addr).len();
    assert!(before_restart < total, "killed after the last record");
    let mut second = Service::start(&config);
    wait_scored(&addr, total);
    let log = second.log_text();
    assert!(terminate(&mut second, Duration::from_secs(30)).success());
    assert!(log.contains("per-key state read back"), "{log}");
    assert_scored_as(&scores(&addr), &offline, &log);
}

/// One stream scored by a group whose members come and go gets the scores
/// of one uninterrupted pass, record for record: three processes share
/// four partitions; one is killed with -9, one is stopped with SIGTERM and
/// started again, and a fourth joins later. Each part of the stream
/// arrives after one such change, so partitions and their state move
/// while records wait for them.
#[test]
fn a_group_whose_members_crash_restart_and_join_scores_as_one_pass() {
    const PARTITIONS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(PARTITIONS as u32);
    if !broker.is_kafka() {
        // With tansu 0.6, after a member was killed with -9 the survivors
        // had not scored the next records of its partitions 90 s later
        // (seen, cause not known); the Apache Kafka pass of
        // scripts/test.sh runs this test.
        eprintln!("skipped on tansu: run with ISOFLOW_BROKER=kafka");
        return;
    }
    let addr = broker.addr();
    let model = device_model(dir.path());
    let config = config(dir.path(), &addr, &model, "group");
    let total = 8000;
    let readings = stream(total, 2 * PARTITIONS);
    let offline = offline(dir.path(), &model, &readings, PARTITIONS);
    let parts: Vec<&[(usize, f64, f64)]> = readings.chunks(total / 4).collect();
    let assigned = |members: &[&Service], n: f64| {
        wait_for(
            &format!("{n} partitions assigned over the group"),
            Duration::from_secs(90),
            || {
                members
                    .iter()
                    .map(|s| s.metric("isoflow_assigned_partitions"))
                    .sum::<f64>()
                    == n
            },
        )
    };
    let mut sent = 0;
    let mut part = |i: usize| {
        produce(&addr, parts[i], PARTITIONS);
        sent += parts[i].len();
        wait_scored(&addr, sent);
    };

    let mut a = Service::start(&config);
    let mut b = Service::start(&config);
    let mut c = Service::start(&config);
    assigned(&[&a, &b, &c], 4.0);
    part(0);
    a.child.kill().unwrap(); // SIGKILL: its partitions wait for the session timeout
    a.child.wait().unwrap();
    part(1);
    assert!(terminate(&mut b, Duration::from_secs(30)).success());
    let mut b2 = Service::start(&config);
    part(2);
    let mut d = Service::start(&config);
    wait_for(
        "the fourth member gets a partition",
        Duration::from_secs(90),
        || d.metric("isoflow_assigned_partitions") > 0.0,
    );
    part(3);
    let logs: String = [&c, &b2, &d].iter().map(|s| s.log_text()).collect();
    for s in [&mut c, &mut b2, &mut d] {
        assert!(terminate(s, Duration::from_secs(30)).success());
    }
    assert!(logs.contains("per-key state read back"), "{logs}");
    assert_scored_as(&scores(&addr), &offline, &logs);
}
