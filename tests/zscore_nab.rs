//! The `z_<name>` column of `isoflow score` against the EWMA Gaussian score
//! defined step by step in `tests/data/README.md` (alpha 0.02, warm-up 100),
//! on the repository's NAB series (`tests/data/nab`) on each backend, and on
//! all 29 of `../shared/data/nab` on the CPU when that is beside the clone.
//!
//! Tolerance: state is kept in f32 with values shifted by the key's first
//! value (in f64), so |z_f32 − z_f64| ≤ 1e-4·max(1, |z_f64|) (measured:
//! 2.0e-5 on CPU and lavapipe); an infinite reference z must be infinite here too.

use crate::util;

use std::path::{Path, PathBuf};
use util::{data, ok, parse_scores, score_args};

const SPEC: &str = r#"
[[feature]]
name = "value"
kind = "key_zscore"
source = "value"
alpha = 0.02
warmup = 100
"#;

fn reference(xs: &[f64]) -> Vec<f64> {
    let alpha = 0.02;
    let mut mean = xs[0];
    let mut var = 0.0f64;
    let mut out = vec![0.0];
    for (t, &x) in xs.iter().enumerate().skip(1) {
        let d = x - mean;
        let mut score = if t < 100 { 0.0 } else { d.abs() / var.sqrt() };
        if score.is_nan() {
            score = 0.0;
        }
        out.push(score);
        let incr = alpha * d;
        mean += incr;
        var = (1.0 - alpha) * (var + d * incr);
    }
    out
}

fn series(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for category in [
        "artificialWithAnomaly",
        "realAWSCloudwatch",
        "realAdExchange",
    ] {
        for entry in std::fs::read_dir(root.join(category)).unwrap() {
            files.push(entry.unwrap().path());
        }
    }
    files.sort();
    files
}

fn check_backend(root: &Path, backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.toml");
    std::fs::write(&spec, SPEC).unwrap();
    let mut worst = 0f64;
    for path in series(root) {
        let model = dir.path().join("m.isoflow");
        let input = path.to_str().unwrap();
        ok(
            "isoflow-train",
            &[
                "fit",
                "--input",
                input,
                "--out",
                model.to_str().unwrap(),
                "--features",
                spec.to_str().unwrap(),
            ],
        );
        let out = ok(
            "isoflow",
            &score_args(model.to_str().unwrap(), input, backend),
        );
        let (header, rows) = parse_scores(&out);
        assert_eq!(header, ["score", "alert", "z_value"]);
        let text = std::fs::read_to_string(&path).unwrap();
        let xs: Vec<f64> = text
            .lines()
            .skip(1)
            .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
            .collect();
        let want = reference(&xs);
        assert_eq!(rows.len(), want.len());
        for (t, (row, &w)) in rows.iter().zip(&want).enumerate() {
            let got = row[2];
            if w.is_infinite() {
                assert!(got.is_infinite(), "{input} t={t}: want inf, got {got}");
                continue;
            }
            let err = (got - w).abs() / w.abs().max(1.0);
            worst = worst.max(err);
            assert!(err <= 1e-4, "{input} t={t}: z {got} vs reference {w}");
        }
    }
    println!("{backend}: worst relative z error {worst:.2e}");
}

#[test]
fn z_column_matches_ewma_definition_cpu() {
    check_backend(&data("nab"), "cpu");
}

#[test]
fn z_column_matches_ewma_definition_gpu() {
    check_backend(&data("nab"), "gpu");
}

#[test]
fn z_column_matches_ewma_definition_on_every_shared_series() {
    if let Some(root) = util::shared_data("nab") {
        check_backend(&root, "cpu");
    }
}
