//! CLI contracts of `isoflow` and `isoflow-train`: the exact command forms
//! and output formats that users, scripts and benchmarks depend on.

use crate::util;

use util::{data, fails, ok, parse_scores, score_args};

struct Fixture {
    dir: tempfile::TempDir,
    model: String,
}

fn fit(dataset: &str, extra: &[&str]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.isoflow").display().to_string();
    let input = data(&format!("tabular/{dataset}.csv"))
        .display()
        .to_string();
    let mut args = vec!["fit", "--input", &input, "--out", &model, "--seed", "1"];
    args.extend_from_slice(extra);
    ok("isoflow-train", &args);
    Fixture { dir, model }
}

#[test]
fn fit_score_inspect_eval_round_trip() {
    let fx = fit(
        "thyroid",
        &["--name", "thyroid-test", "--contamination", "0.05"],
    );
    let input = data("tabular/thyroid.csv").display().to_string();
    let out_path = fx.dir.path().join("scores.csv").display().to_string();
    ok(
        "isoflow",
        &[
            "score",
            "--model",
            &fx.model,
            "--input",
            &input,
            "--output",
            &out_path,
            "--backend",
            "cpu",
        ],
    );
    let (header, rows) = parse_scores(&std::fs::read_to_string(&out_path).unwrap());
    assert_eq!(header, ["score", "alert"]);
    assert_eq!(rows.len(), 3772, "one output row per input row");
    assert!(rows
        .iter()
        .all(|r| r[0] > 0.0 && r[0] < 1.0 && (r[1] == 0.0 || r[1] == 1.0)));
    // The threshold comes from contamination: about 5% of training rows alert,
    // and every alert scores above every non-alert.
    let alerts = rows.iter().filter(|r| r[1] == 1.0).count();
    assert!((180..=200).contains(&alerts), "{alerts} alerts");
    let min_alert = rows
        .iter()
        .filter(|r| r[1] == 1.0)
        .map(|r| r[0])
        .fold(f64::MAX, f64::min);
    let max_quiet = rows
        .iter()
        .filter(|r| r[1] == 0.0)
        .map(|r| r[0])
        .fold(f64::MIN, f64::max);
    assert!(min_alert >= max_quiet);

    let meta: serde_json::Value =
        serde_json::from_str(&ok("isoflow", &["model", "inspect", &fx.model])).unwrap();
    assert_eq!(meta["name"], "thyroid-test");
    assert_eq!(meta["forest"]["trees"], 100);
    assert_eq!(meta["forest"]["sample_size"], 256);
    assert_eq!(meta["training"]["rows"], 3772);
    assert_eq!(meta["training"]["seed"], 1);
    assert_eq!(
        meta["feature_spec"]["features"].as_array().unwrap().len(),
        6
    );
    assert!(meta["training"]["training_auc"].as_f64().unwrap() > 0.9);
    assert!(meta["training"]["data_fingerprint"]
        .as_str()
        .unwrap()
        .starts_with("fnv1a64:"));

    let eval = ok(
        "isoflow-train",
        &["eval", "--model", &fx.model, "--input", &input],
    );
    let field = |name: &str| -> f64 {
        eval.lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(field("roc_auc") > 0.9, "{eval}");
    assert!(field("pr_auc") > 0.2, "{eval}");
    assert!(field("recall") > 0.5, "{eval}");
    assert_eq!(field("alerts") as usize, alerts);
}

#[test]
fn same_seed_same_model_file() {
    let a = fit("wbc", &[]);
    let b = fit("wbc", &[]);
    let strip = |p: &str| {
        let mut m: serde_json::Value =
            serde_json::from_str(&ok("isoflow", &["model", "inspect", p])).unwrap();
        m["created_at_unix_ms"] = 0.into();
        m
    };
    assert_eq!(strip(&a.model), strip(&b.model));
    let input = data("tabular/wbc.csv").display().to_string();
    let sa = ok("isoflow", &score_args(&a.model, &input, "cpu"));
    let sb = ok("isoflow", &score_args(&b.model, &input, "cpu"));
    assert_eq!(sa, sb);
}

#[test]
fn json_lines_and_stdin_score_like_csv() {
    let fx = fit("wbc", &[]);
    let csv_path = data("tabular/wbc.csv");
    let text = std::fs::read_to_string(&csv_path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    // JSON lines with the columns in reverse order and an extra field.
    let jsonl: String = lines
        .map(|l| {
            let mut fields: Vec<String> = header
                .iter()
                .zip(l.split(','))
                .map(|(h, v)| format!("\"{h}\":{v}"))
                .collect();
            fields.reverse();
            format!("{{\"extra\":\"x\",{}}}\n", fields.join(","))
        })
        .collect();
    let jsonl_path = fx.dir.path().join("wbc.jsonl");
    std::fs::write(&jsonl_path, jsonl).unwrap();
    let from_csv = ok(
        "isoflow",
        &score_args(&fx.model, csv_path.to_str().unwrap(), "cpu"),
    );
    let from_jsonl = ok(
        "isoflow",
        &score_args(&fx.model, jsonl_path.to_str().unwrap(), "cpu"),
    );
    assert_eq!(from_csv, from_jsonl);

    let mut child = std::process::Command::new(util::bin("isoflow"))
        .args([
            "score",
            "--model",
            &fx.model,
            "--input",
            "-",
            "--output",
            "-",
            "--backend",
            "cpu",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), from_csv);
}

#[test]
fn input_errors_name_row_and_column() {
    let fx = fit("wbc", &[]);
    let bad = fx.dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "f0,f1,f2,f3,f4,f5,f6,f7,f8\n1,2,3,4,5,6,7,8,9\n1,2,3,x7,5,6,7,8,9\n",
    )
    .unwrap();
    let err = fails(
        "isoflow",
        &score_args(&fx.model, bad.to_str().unwrap(), "cpu"),
    );
    assert!(
        err.contains("row 2, column 'f3': 'x7' is not a number"),
        "{err}"
    );

    std::fs::write(&bad, "f0,f1,f2\n1,2,3\n").unwrap();
    let err = fails(
        "isoflow",
        &score_args(&fx.model, bad.to_str().unwrap(), "cpu"),
    );
    assert!(err.contains("no column 'f3'"), "{err}");

    let err = fails(
        "isoflow",
        &["score", "--model", &fx.model, "--input", "/nonexistent.csv"],
    );
    assert!(err.contains("/nonexistent.csv"), "{err}");
}

#[test]
fn bad_models_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.isoflow");
    std::fs::write(&junk, b"\x08\x96\x01 this is not a model").unwrap();
    let input = data("tabular/wbc.csv").display().to_string();
    let err = fails(
        "isoflow",
        &[
            "score",
            "--model",
            junk.to_str().unwrap(),
            "--input",
            &input,
        ],
    );
    assert!(err.contains("junk.isoflow"), "{err}");
    assert!(
        err.contains("not an isoflow model") || err.contains("invalid model"),
        "{err}"
    );
    let err = fails("isoflow", &["model", "inspect", "/no/such/model"]);
    assert!(
        err.contains("cannot read model file /no/such/model"),
        "{err}"
    );
}

/// A model of a few megabytes that would expand to gigabytes for scoring is
/// refused by its size, before anything is laid out: by `isoflow score` and
/// by `isoflow model put` (which checks before uploading; PutModel refuses it
/// too, see grpc.rs), with memory staying flat.
#[test]
fn model_bombs_are_refused_by_size_with_flat_memory() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("one.jsonl");
    std::fs::write(&input, "{\"amount\": 12.5, \"card_id\": \"c1\"}\n").unwrap();
    let input = input.to_str().unwrap();
    for (trees, limit) in [
        (20_000, "the limit is 10000"),
        (1_100, "the limit is 4194304"),
    ] {
        let bomb = dir.path().join(format!("bomb-{trees}.isoflow"));
        std::fs::write(&bomb, util::chain_forest_model(trees, 12)).unwrap();
        let bomb = bomb.to_str().unwrap();
        let (out, peak) =
            util::run_measured("isoflow", &["score", "--model", bomb, "--input", input]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{trees} trees scored: {err}");
        assert!(err.contains(bomb) && err.contains(limit), "{err}");
        assert!(
            peak < 150 << 20,
            "{trees} trees: peak RSS {} MB",
            peak >> 20
        );
        let err = fails("isoflow", &["model", "put", bomb, "--grpc", "127.0.0.1:9"]);
        assert!(err.contains(limit), "{err}");
    }
}

#[test]
fn bad_arguments_say_what_was_expected() {
    let err = fails("isoflow", &["score", "--input", "x.csv"]);
    assert!(err.contains("--model"), "{err}");
    let err = fails(
        "isoflow",
        &["score", "--model", "m", "--input", "x", "--backend", "tpu"],
    );
    assert!(err.contains("expected auto, gpu or cpu"), "{err}");
    let input = data("tabular/wbc.csv").display().to_string();
    let err = fails(
        "isoflow-train",
        &[
            "fit",
            "--input",
            &input,
            "--out",
            "/tmp/x",
            "--contamination",
            "0.9",
        ],
    );
    assert!(err.contains("--contamination must be in (0, 0.5]"), "{err}");
    let err = fails(
        "isoflow-train",
        &[
            "fit", "--input", &input, "--out", "/tmp/x", "--trees", "many",
        ],
    );
    assert!(err.contains("--trees"), "{err}");
    // `isoflow run` without a config: the flags must describe a pipeline.
    let err = fails("isoflow", &["run", "--brokers", "127.0.0.1:1"]);
    assert!(err.contains("--input-topic"), "{err}");
    let err = fails(
        "isoflow",
        &["run", "--brokers", "127.0.0.1:1", "--input-topic", "tx"],
    );
    assert!(
        err.contains("also needs --model (or --preset), --alerts-topic and --dlq-topic"),
        "{err}"
    );
    #[rustfmt::skip]
    let err = fails(
        "isoflow",
        &["run", "--input-topic", "tx", "--model", "m", "--alerts-topic", "a", "--dlq-topic", "d"],
    );
    assert!(err.contains("--brokers"), "{err}");
}

#[test]
fn report_writes_json_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let fx = fit("thyroid", &["--report", report.to_str().unwrap()]);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json")).unwrap())
            .unwrap();
    assert!(json["evaluation"]["roc_auc"].as_f64().unwrap() > 0.85);
    assert_eq!(json["forest"]["trees"], 100);
    for png in ["score_histogram.png", "roc_curve.png"] {
        let bytes = std::fs::read(report.join(png)).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{png} is a PNG");
        assert!(bytes.len() > 5_000, "{png} has content");
    }
    drop(fx);
}

/// README's first command: `isoflow demo` needs nothing installed. It
/// scores every generated record on its in-process cluster and ends with a
/// report that must hold the bars: every corrupt record in the DLQ, recall
/// of at least 0.9 for each anomaly type, at most 1% false alerts. 400,000
/// records are more than the embedded cluster keeps of its one-partition
/// topic (5 MB): the demo must not produce far ahead of its pipelines.
#[test]
fn demo_scores_every_record_on_its_embedded_cluster_and_reports_detection() {
    let out = ok(
        "isoflow",
        &["demo", "--backend", "cpu", "--count", "400000"],
    );
    assert!(out.contains("400000/400000 records"), "{out}");
    // The rows under a table's header, each split into its columns.
    let table = |header: &str| -> Vec<Vec<String>> {
        out.split(header)
            .nth(1)
            .unwrap_or_else(|| panic!("no `{header}` table in:\n{out}"))
            .lines()
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
            .collect()
    };
    let kinds = table("\nanomaly type");
    let names: Vec<&str> = kinds.iter().map(|r| r[0].as_str()).collect();
    for kind in [
        "burst",
        "corrupt",
        "ddos",
        "drift",
        "duplicate",
        "fw_deny_storm",
        "gap",
        "silent",
        "ssh_bruteforce",
        "stolen_card",
    ] {
        assert!(names.contains(&kind), "no row for {kind}:\n{out}");
    }
    for row in &kinds {
        let (records, detected): (u64, u64) = (row[1].parse().unwrap(), row[2].parse().unwrap());
        assert!(records > 0, "{row:?}");
        if row[0] == "corrupt" {
            assert_eq!(detected, records, "every corrupt record reaches the DLQ");
        } else {
            assert!(detected as f64 >= 0.9 * records as f64, "recall of {row:?}");
        }
    }
    let scenarios = table("\nscenario");
    assert_eq!(scenarios.len(), 4, "{out}");
    for row in &scenarios {
        let false_share: f64 = row[5].trim_end_matches('%').parse().unwrap();
        assert!(false_share <= 1.0, "false alerts of {row:?}");
    }
}

/// `-` is standard output for `gen --out` as for `score --output`, and a
/// reader that stops early (`| head`) ends the command quietly: what it
/// wanted was written.
#[test]
fn standard_output_is_dash_and_a_reader_may_stop_early() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(util::bin("isoflow"))
        .args(["gen", "--scenario", "fraud", "--count", "5", "--out", "-"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record per line"))
        .collect();
    assert_eq!(lines.len(), 5);
    assert!(!dir.path().join("-").exists(), "no file named `-`");

    let input = dir.path().join("f.jsonl").display().to_string();
    ok(
        "isoflow",
        &[
            "gen",
            "--scenario",
            "fraud",
            "--count",
            "200000",
            "--out",
            &input,
        ],
    );
    let mut score = std::process::Command::new(util::bin("isoflow"))
        .args(score_args("models/fraud.isoflow", &input, "cpu"))
        .args(["--output", "-"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(score.stdout.take().unwrap()),
        &mut head,
    )
    .unwrap();
    assert!(head.starts_with("score,alert"), "{head}");
    // The reader is gone: the rest of the scores meet a closed pipe.
    let done = score.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
}

/// A NAB series of the repository as `{"series","ts","value"}` records (ts:
/// five minutes a point), written whole and as its first 15%.
fn nab_records(dir: &std::path::Path) -> (String, String, usize) {
    let text =
        std::fs::read_to_string(data("nab/realAWSCloudwatch/ec2_cpu_utilization_24ae8d.csv"))
            .unwrap();
    let lines: Vec<String> = text
        .lines()
        .skip(1)
        .enumerate()
        .map(|(i, l)| {
            let value = l.split(',').nth(1).unwrap();
            format!(
                "{{\"series\":\"ec2\",\"ts\":{},\"value\":{value}}}",
                1_400_000_000 + 300 * i
            )
        })
        .collect();
    let all = dir.join("all.jsonl");
    let train = dir.join("train.jsonl");
    std::fs::write(&all, lines.join("\n") + "\n").unwrap();
    std::fs::write(&train, lines[..lines.len() * 15 / 100].join("\n") + "\n").unwrap();
    (
        all.display().to_string(),
        train.display().to_string(),
        lines.len(),
    )
}

fn score_column(path: &str) -> Vec<f64> {
    let (header, rows) = parse_scores(&std::fs::read_to_string(path).unwrap());
    assert_eq!(header[..2], ["score", "alert"]);
    rows.iter().map(|r| r[0]).collect()
}

/// `isoflow-train fit --preset ... --spec-out`, `isoflow score` with and
/// without `--learn`, and the cold start `isoflow score --preset ... --learn`:
/// one output row per record, the same scores on a rerun, and a spec file
/// that fits the same features.
#[test]
fn preset_fit_learn_and_cold_start_follow_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let (all, train, n) = nab_records(dir.path());
    let model = dir.path().join("m.isoflow").display().to_string();
    let spec = dir.path().join("spec.toml").display().to_string();
    #[rustfmt::skip]
    let fitted = ok("isoflow-train", &["fit", "--preset", "metrics", "--key", "series", "--time", "ts",
        "--fields", "value", "--input", &train, "--out", &model, "--seed", "2", "--spec-out", &spec]);
    assert!(
        fitted.contains("features: value,value_spread,value_d1"),
        "{fitted}"
    );
    let spec_text = std::fs::read_to_string(&spec).unwrap();
    assert!(spec_text.contains("kind = \"key_spread\""), "{spec_text}");
    let refit = dir.path().join("refit.isoflow").display().to_string();
    ok(
        "isoflow-train",
        &[
            "fit",
            "--input",
            &train,
            "--features",
            &spec,
            "--out",
            &refit,
        ],
    );
    let out = |name: &str| dir.path().join(name).display().to_string();
    let score = |extra: &[&str], output: &str| {
        let mut args = vec![
            "score",
            "--input",
            &all,
            "--output",
            output,
            "--backend",
            "cpu",
        ];
        args.extend_from_slice(extra);
        ok("isoflow", &args);
        score_column(output)
    };
    let fixed = score(&["--model", &model], &out("fixed.csv"));
    let learnt = score(&["--model", &model, "--learn"], &out("learn1.csv"));
    let again = score(&["--model", &model, "--learn"], &out("learn2.csv"));
    assert_eq!(fixed.len(), n);
    assert_eq!(
        learnt, again,
        "learning is deterministic for a seed and stream"
    );
    assert_ne!(fixed, learnt, "learning changes the forest");
    let other_seed = score(
        &["--model", &model, "--learn", "--seed", "9"],
        &out("learn3.csv"),
    );
    assert_ne!(learnt, other_seed);
    // Before the first update both score with the trained forest.
    assert_eq!(fixed[..256], learnt[..256]);
    #[rustfmt::skip]
    let cold_args = ["--preset", "metrics", "--key", "series", "--time", "ts", "--fields", "value", "--learn", "--seed", "3"];
    let cold = score(&cold_args, &out("cold.csv"));
    assert_eq!(cold.len(), n);
    assert!(
        cold[..128].iter().all(|&s| s == 0.0),
        "warm-up rows score 0"
    );
    assert!(cold[128..].iter().any(|&s| s > 0.0));
    assert_eq!(cold, score(&cold_args, &out("cold2.csv")));
    // Without --fields a preset takes every numeric field but the key and time.
    #[rustfmt::skip]
    let found = score(&["--preset", "metrics", "--key", "series", "--time", "ts", "--learn", "--seed", "3"], &out("cold3.csv"));
    assert_eq!(cold, found);
}

#[test]
fn a_preset_without_a_model_must_learn_and_bad_presets_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (all, train, _) = nab_records(dir.path());
    let err = fails(
        "isoflow",
        &[
            "score", "--preset", "metrics", "--key", "series", "--input", &all,
        ],
    );
    assert!(err.contains("--learn"), "{err}");
    let model = dir.path().join("m.isoflow").display().to_string();
    #[rustfmt::skip]
    let err = fails("isoflow-train", &["fit", "--preset", "logs", "--key", "series", "--input", &train, "--out", &model]);
    assert!(err.contains("expected metrics or transactions"), "{err}");
    #[rustfmt::skip]
    let err = fails("isoflow-train", &["fit", "--preset", "metrics", "--key", "series", "--fields", "series,value", "--input", &train, "--out", &model]);
    assert!(err.contains("'series' is also a key"), "{err}");
}

/// Label feedback raises a compromised terminal's later payments, and only
/// once its labels are known: every score before the first label's
/// `label_ts` is the same with and without feedback.
#[test]
fn feedback_is_used_only_once_known() {
    let dir = tempfile::tempdir().unwrap();
    let day = 86_400u64;
    let mut records = Vec::new();
    let mut feedback = Vec::new();
    for i in 0..6000u64 {
        let ts = i * 400; // about 28 days
        let card = i % 97;
        let terminal = i % 13;
        let amount = 20 + (i * 37 % 61);
        let fraud = terminal == 5 && ts >= 10 * day;
        let r =
            format!("{{\"card\":{card},\"terminal\":{terminal},\"ts\":{ts},\"amount\":{amount}}}");
        feedback.push(format!(
            "{{\"card\":{card},\"terminal\":{terminal},\"ts\":{ts},\"amount\":{amount},\"label\":{},\"label_ts\":{}}}",
            u8::from(fraud),
            ts + 7 * day
        ));
        records.push((r, ts, terminal));
    }
    let all = dir.path().join("all.jsonl");
    let train = dir.path().join("train.jsonl");
    let fb = dir.path().join("feedback.jsonl");
    let text: Vec<&str> = records.iter().map(|(r, _, _)| r.as_str()).collect();
    std::fs::write(&all, text.join("\n") + "\n").unwrap();
    std::fs::write(&train, text[..2000].join("\n") + "\n").unwrap();
    std::fs::write(&fb, feedback.join("\n") + "\n").unwrap();
    let (all, train, fb) = (
        all.display().to_string(),
        train.display().to_string(),
        fb.display().to_string(),
    );
    let model = dir.path().join("m.isoflow").display().to_string();
    #[rustfmt::skip]
    ok("isoflow-train", &["fit", "--preset", "transactions", "--key", "card,terminal", "--time", "ts",
        "--fields", "amount", "--input", &train, "--out", &model]);
    let out = |n: &str| dir.path().join(n).display().to_string();
    #[rustfmt::skip]
    ok("isoflow", &["score", "--model", &model, "--input", &all, "--output", &out("plain.csv"), "--backend", "cpu"]);
    #[rustfmt::skip]
    ok("isoflow", &["score", "--model", &model, "--input", &all, "--output", &out("fb.csv"), "--backend", "cpu",
        "--feedback", &fb]);
    let (plain, with) = (
        score_column(&out("plain.csv")),
        score_column(&out("fb.csv")),
    );
    let first_known = 10 * day + 7 * day;
    let mut raised = 0;
    let mut later = 0;
    for (i, (_, ts, terminal)) in records.iter().enumerate() {
        if *ts < first_known {
            assert_eq!(
                plain[i], with[i],
                "record {i} at {ts} saw a label from its future"
            );
        } else if *terminal == 5 {
            later += 1;
            raised += usize::from(with[i] > plain[i] + 0.1);
        }
    }
    assert!(
        later > 50 && raised * 10 >= later * 9,
        "{raised} of {later} raised"
    );
}

/// `isoflow-train eval --truth` prints the stream figures of the test lines.
#[test]
fn eval_with_truth_prints_stream_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let (all, train, n) = nab_records(dir.path());
    let model = dir.path().join("m.isoflow").display().to_string();
    #[rustfmt::skip]
    ok("isoflow-train", &["fit", "--preset", "metrics", "--key", "series", "--time", "ts",
        "--fields", "value", "--input", &train, "--out", &model]);
    // Anomalous: the last 300 points; the first 15% are train.
    let mut truth = String::from("line,label,kind,split\n");
    for i in 0..n {
        let label = u8::from(i >= n - 300);
        let kind = if label == 1 { "late" } else { "normal" };
        let split = if i < n * 15 / 100 { "train" } else { "test" };
        truth.push_str(&format!("{i},{label},{kind},{split}\n"));
    }
    let truth_path = dir.path().join("truth.csv").display().to_string();
    std::fs::write(&truth_path, truth).unwrap();
    let text = ok(
        "isoflow-train",
        &[
            "eval",
            "--model",
            &model,
            "--input",
            &all,
            "--truth",
            &truth_path,
        ],
    );
    for field in [
        "test lines",
        "roc_auc",
        "avg_precision",
        "f1",
        "far_percent",
        "mar_percent",
        "recall@1%      late",
    ] {
        assert!(text.contains(field), "{field} missing in\n{text}");
    }
    let lines: usize = text
        .lines()
        .find(|l| l.starts_with("test lines"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(lines, n - n * 15 / 100);
}
