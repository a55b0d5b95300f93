//! Detection quality of the shipped models on generated streams they were
//! not trained on (training uses seed 7): every injected anomaly type is
//! caught at recall ≥ 0.9 while at most 1% of normal records alert.
//! Scored offline with `isoflow score`; `tests/streaming.rs` shows the
//! service's online scores equal these.

use crate::util;

use std::collections::BTreeMap;
use util::{ok, score_args};

/// Recall per anomaly type and the share of normal records that alerted.
fn detection(scenario: &str, seed: u64) -> (BTreeMap<String, (usize, usize)>, f64) {
    let dir = tempfile::tempdir().unwrap();
    let stream = dir.path().join("stream.jsonl").display().to_string();
    let truth = dir.path().join("truth.csv").display().to_string();
    let seed = seed.to_string();
    #[rustfmt::skip]
    ok("isoflow", &[
        "gen", "--scenario", scenario, "--count", "20000", "--seed", &seed,
        "--out", &stream, "--truth", &truth,
    ]);
    let model = format!("{}/models/{scenario}.isoflow", env!("CARGO_MANIFEST_DIR"));
    let scores = ok("isoflow", &score_args(&model, &stream, "cpu"));
    let mut lines = scores.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let alert = header.iter().position(|&c| c == "alert").unwrap();
    let truth = std::fs::read_to_string(&truth).unwrap();
    let (mut per_type, mut normal, mut false_alerts) = (BTreeMap::new(), 0, 0);
    let mut rows = 0;
    for (row, label) in lines.zip(truth.lines().skip(1)) {
        rows += 1;
        let alerted = row.split(',').nth(alert) == Some("1");
        let fields: Vec<&str> = label.split(',').collect();
        let (is_anomaly, kind) = (fields[1] == "1", fields[2]);
        if is_anomaly {
            let e: &mut (usize, usize) = per_type.entry(kind.to_owned()).or_default();
            e.0 += 1;
            e.1 += alerted as usize;
        } else {
            normal += 1;
            false_alerts += alerted as usize;
        }
    }
    assert_eq!(rows, 20_000, "one score per record");
    (per_type, false_alerts as f64 / normal as f64)
}

fn assert_detects(scenario: &str, kinds: &[&str]) {
    for seed in [21, 22] {
        let (per_type, false_rate) = detection(scenario, seed);
        let seen: Vec<&str> = per_type.keys().map(String::as_str).collect();
        assert_eq!(seen, kinds, "{scenario} seed {seed}: anomaly types");
        for (kind, (n, caught)) in &per_type {
            let recall = *caught as f64 / *n as f64;
            assert!(
                recall >= 0.9,
                "{scenario} seed {seed}: {kind} recall {recall:.3} ({caught}/{n})"
            );
        }
        assert!(
            false_rate <= 0.01,
            "{scenario} seed {seed}: {:.2}% of normal records alerted",
            100.0 * false_rate
        );
    }
}

#[test]
fn fraud_model_catches_stolen_cards_duplicates_and_bursts() {
    assert_detects("fraud", &["burst", "duplicate", "stolen_card"]);
}

#[test]
fn iot_model_catches_drifting_and_silent_devices() {
    assert_detects("iot", &["drift", "silent"]);
}

#[test]
fn security_model_catches_brute_force_ddos_and_deny_storms() {
    assert_detects("security", &["ddos", "fw_deny_storm", "ssh_bruteforce"]);
}
