//! Shared helpers for the end-to-end tests: locating the built binaries and
//! the shared data, running commands.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// Path of a workspace binary, next to the test executable's `deps/` folder.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run the tests with `cargo test --workspace` so the binaries are built",
        path.display()
    );
    path
}

/// The shared data folder.
pub fn data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(rel)
}

/// Runs a binary with arguments and returns its output.
pub fn run(name: &str, args: &[&str]) -> Output {
    Command::new(bin(name)).args(args).output().expect("spawn")
}

/// Runs and asserts success, returning stdout.
pub fn ok(name: &str, args: &[&str]) -> String {
    let out = run(name, args);
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Runs, asserts failure, and returns stderr.
pub fn fails(name: &str, args: &[&str]) -> String {
    let out = run(name, args);
    assert!(
        !out.status.success(),
        "{name} {args:?} unexpectedly succeeded"
    );
    String::from_utf8(out.stderr).expect("utf-8 stderr")
}

/// Parses `score,alert[,z...]` output into rows of f64.
pub fn parse_scores(text: &str) -> (Vec<String>, Vec<Vec<f64>>) {
    let mut lines = text.lines();
    let header = lines
        .next()
        .expect("header")
        .split(',')
        .map(str::to_owned)
        .collect();
    let rows = lines
        .map(|l| {
            l.split(',')
                .map(|v| v.parse::<f64>().expect("number"))
                .collect()
        })
        .collect();
    (header, rows)
}
