//! How the crates are layered, checked from the source and the lock file.
//!
//! - Within `isoflow-core` and within the service crate, modules import one
//!   another without cycles: each top-level module may use the ones below
//!   it, never one that uses it back. Read outside test modules and
//!   comments, so that a new cycle fails here with the lines that make it.
//! - The detector crate links neither Kafka nor gRPC (nor wgpu without its
//!   `gpu` feature), and the trainer links neither gRPC nor wgpu.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → modules it names as `crate::<module>`, with where.
fn imports(src: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut files = vec![src.to_path_buf()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = path.strip_prefix(src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let top = top.trim_end_matches(".rs").to_owned();
        if top == "lib" || top == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let body = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        for (n, line) in body.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for (i, _) in line.match_indices("crate::") {
                let name: String = line[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != top {
                    edges
                        .entry(top.clone())
                        .or_default()
                        .entry(name)
                        .or_insert_with(|| format!("{}:{}", rel.display(), n + 1));
                }
            }
        }
    }
    edges
}

/// The import cycles among `src`'s top-level modules, each as the path of
/// imports that leads back to where it starts.
fn cycles(src: &Path) -> Vec<String> {
    let edges = imports(src);
    assert!(
        edges.len() > 8,
        "read {} modules of {}",
        edges.len(),
        src.display()
    );
    let mut cycles = Vec::new();
    for from in edges.keys() {
        let mut seen = BTreeSet::new();
        let mut stack = vec![(from.clone(), vec![from.clone()])];
        while let Some((at, path)) = stack.pop() {
            for (next, place) in edges.get(&at).into_iter().flatten() {
                let mut longer = path.clone();
                longer.push(format!("{next} ({place})"));
                if next == from {
                    cycles.push(longer.join(" -> "));
                } else if seen.insert(next.clone()) {
                    stack.push((next.clone(), longer));
                }
            }
        }
    }
    cycles
}

#[test]
fn modules_have_no_import_cycles() {
    for krate in ["core", "service"] {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(krate)
            .join("src");
        let cycles = cycles(&src);
        assert!(
            cycles.is_empty(),
            "import cycles in {krate}:\n{}",
            cycles.join("\n")
        );
    }
}

/// The packages `package` links (normal dependencies, on this machine's
/// target, with the given features), by name.
fn linked(package: &str, features: &[&str]) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    command.current_dir(env!("CARGO_MANIFEST_DIR")).args([
        "tree", "--locked", "-e", "normal", "--prefix", "none", "-p", package,
    ]);
    if !features.is_empty() {
        command.args(["--features", &features.join(",")]);
    }
    let out = command.output().expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn the_detector_links_no_kafka_or_grpc_and_the_trainer_no_grpc_or_gpu() {
    let core = linked("isoflow-core", &[]);
    assert!(
        core.contains("prost"),
        "read no dependency of isoflow-core: {core:?}"
    );
    for absent in ["rdkafka", "tonic", "tokio", "wgpu"] {
        assert!(!core.contains(absent), "isoflow-core links {absent}");
    }
    let gpu = linked("isoflow-core", &["gpu"]);
    assert!(gpu.contains("wgpu"), "the gpu feature adds wgpu: {gpu:?}");
    for absent in ["rdkafka", "tonic"] {
        assert!(
            !gpu.contains(absent),
            "isoflow-core with gpu links {absent}"
        );
    }
    let train = linked("isoflow-train", &[]);
    assert!(
        train.contains("isoflow-core") && train.contains("rdkafka"),
        "{train:?}"
    );
    for absent in ["isoflow", "tonic", "wgpu"] {
        assert!(!train.contains(absent), "isoflow-train links {absent}");
    }
}
