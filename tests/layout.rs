//! The service crate's modules import one another without cycles: each
//! top-level module of `service/src` may use the ones below it, never one
//! that uses it back. Read from the source, outside test modules and
//! comments, so that a new cycle fails here with the lines that make it.

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

#[test]
fn the_service_modules_have_no_import_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("service/src");
    let edges = imports(&src);
    assert!(edges.len() > 20, "read {} modules", edges.len());
    // A cycle through `from`: a path of imports that leads back to it.
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
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}
