//! `isoflow score --backend gpu` against `--backend cpu`, whole process, on
//! every tabular set of `tests/data`: every score within 1e-5 and identical alerts
//! (away from the threshold). Runs on whatever adapter is present (Mesa
//! lavapipe in CI); no adapter is a failure, not a skip.

mod util;

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
