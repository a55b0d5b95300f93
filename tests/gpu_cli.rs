//! `isoflow score --backend gpu` against `--backend cpu`, whole process, on
//! every tabular set of `tests/data`: every score within 1e-5 and identical alerts
//! (away from the threshold). Runs on whatever adapter is present (Mesa
//! lavapipe in CI); no adapter is a failure, not a skip.

use crate::util;

use util::{data, ok, parse_scores, score_args};

#[test]
fn gpu_scores_equal_cpu_scores_on_every_tabular_set() {
    let dir = tempfile::tempdir().unwrap();
    let reference = std::fs::read_to_string(data("tabular/REFERENCE.csv")).unwrap();
    let mut worst = 0f64;
    for name in reference
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_owned())
    {
        let input = data(&format!("tabular/{name}.csv")).display().to_string();
        let model = dir
            .path()
            .join(format!("{name}.isoflow"))
            .display()
            .to_string();
        ok(
            "isoflow-train",
            &["fit", "--input", &input, "--out", &model, "--seed", "3"],
        );
        let threshold: f64 = serde_json::from_str::<serde_json::Value>(&ok(
            "isoflow",
            &["model", "inspect", &model],
        ))
        .unwrap()["threshold"]
            .as_f64()
            .unwrap();
        let cpu = parse_scores(&ok("isoflow", &score_args(&model, &input, "cpu"))).1;
        let gpu = parse_scores(&ok("isoflow", &score_args(&model, &input, "gpu"))).1;
        assert_eq!(cpu.len(), gpu.len(), "{name}: row counts");
        for (row, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
            let diff = (c[0] - g[0]).abs();
            worst = worst.max(diff);
            assert!(diff <= 1e-5, "{name} row {row}: cpu {} gpu {}", c[0], g[0]);
            if (c[0] - threshold).abs() > 1e-5 {
                assert_eq!(c[1], g[1], "{name} row {row}: alert differs");
            }
        }
    }
    println!("worst |cpu − gpu| score difference: {worst:.3e}");
}

#[test]
fn gpu_backend_without_adapter_is_a_clear_error() {
    // WGPU_BACKEND=metal hides every adapter on Linux, as on a machine without drivers.
    let model_dir = tempfile::tempdir().unwrap();
    let model = model_dir.path().join("m.isoflow").display().to_string();
    let input = data("tabular/wbc.csv").display().to_string();
    ok(
        "isoflow-train",
        &["fit", "--input", &input, "--out", &model],
    );
    let out = std::process::Command::new(util::bin("isoflow"))
        .args(score_args(&model, &input, "gpu"))
        .env("WGPU_BACKEND", "metal")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no usable GPU adapter"), "{err}");
    assert!(err.contains("mesa-vulkan-drivers"), "{err}");
    // auto falls back to the CPU and still scores every row.
    let out = std::process::Command::new(util::bin("isoflow"))
        .args(score_args(&model, &input, "auto"))
        .env("WGPU_BACKEND", "metal")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 224);
    assert!(String::from_utf8_lossy(&out.stderr).contains("scoring on the CPU"));
}

/// A forest that keeps learning scores alike on both backends: the same
/// regrown trees reach the GPU at the same rows (cold start and a trained
/// preset model, on a NAB series as records).
#[test]
fn learning_scores_equal_on_gpu_and_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        std::fs::read_to_string(data("nab/realAdExchange/exchange-2_cpc_results.csv")).unwrap();
    let lines: Vec<String> = text
        .lines()
        .skip(1)
        .enumerate()
        .map(|(i, l)| {
            let value = l.split(',').nth(1).unwrap();
            format!("{{\"series\":\"x\",\"ts\":{},\"value\":{value}}}", 3600 * i)
        })
        .collect();
    let all = dir.path().join("all.jsonl").display().to_string();
    let train = dir.path().join("train.jsonl").display().to_string();
    std::fs::write(&all, lines.join("\n") + "\n").unwrap();
    std::fs::write(&train, lines[..400].join("\n") + "\n").unwrap();
    let model = dir.path().join("m.isoflow").display().to_string();
    #[rustfmt::skip]
    ok("isoflow-train", &["fit", "--preset", "metrics", "--key", "series", "--time", "ts",
        "--fields", "value", "--input", &train, "--out", &model]);
    #[rustfmt::skip]
    let cold = ["score", "--preset", "metrics", "--key", "series", "--time", "ts", "--fields", "value",
        "--learn", "--input", &all, "--backend"];
    let trained = [
        "score",
        "--model",
        &model,
        "--learn",
        "--input",
        &all,
        "--backend",
    ];
    for args in [&cold[..], &trained[..]] {
        let run = |backend: &str| {
            let mut a = args.to_vec();
            a.push(backend);
            parse_scores(&ok("isoflow", &a)).1
        };
        let (cpu, gpu) = (run("cpu"), run("gpu"));
        assert_eq!(cpu.len(), lines.len());
        assert_eq!(cpu.len(), gpu.len());
        for (row, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
            assert!(
                (c[0] - g[0]).abs() <= 1e-5,
                "row {row}: cpu {} gpu {}",
                c[0],
                g[0]
            );
            assert_eq!(c[1], g[1], "row {row}: alert differs");
        }
    }
}
