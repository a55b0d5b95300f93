//! Structural checks on a decoded model.

use super::pb::{self, feature::Kind};
use std::collections::HashSet;

/// Deepest tree a model may hold. Scorers walk at most this many levels, so a
/// validated model can never loop in a kernel. ψ = 2³² would need depth 32.
pub const MAX_TREE_DEPTH: usize = 32;

/// Most trees a model may hold.
pub const MAX_TREES: usize = 10_000;

/// Most nodes a model may hold over all its trees (the linked layout takes
/// 16 bytes a node).
pub const MAX_NODES: usize = 1 << 22;

/// Most leaves the complete-tree layout of a forest may take, summed over its
/// trees: a forest no deeper than [`IMPLICIT_MAX_DEPTH`] is
/// expanded to complete trees for scoring (2^depth leaves and 2^depth − 1
/// splits a tree, about 13 bytes a leaf, once for the scorer and once for
/// attribution). 2²² leaves bound each copy to about 55 MB, whatever the
/// file's size: a few kilobytes of chain trees would otherwise expand to
/// gigabytes.
pub const MAX_EXPANDED_LEAVES: usize = 1 << 22;

/// Deepest forest laid out as complete trees for scoring (the implicit
/// layout): memory grows as 2^depth per tree, so deeper forests keep the
/// linked layout.
pub const IMPLICIT_MAX_DEPTH: u32 = 12;

/// The most records back a lag feature may look.
pub const MAX_LAG: u32 = 16;

/// Why a model was refused.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file could not be read.
    #[error("cannot read model file {path}: {source}")]
    Read {
        /// Path given.
        path: String,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// The file could not be written.
    #[error("cannot write model file {path}: {source}")]
    Write {
        /// Path given.
        path: String,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// A problem with a model read from a file, with the file named.
    #[error("model file {path}: {source}")]
    InFile {
        /// Path given.
        path: String,
        /// The problem.
        source: Box<ModelError>,
    },
    /// The bytes are not a protobuf `isoflow.v1.Model`.
    #[error("not an isoflow model (protobuf decode failed: {0})")]
    Decode(String),
    /// A model-level problem: missing parts, bad threshold, bad feature spec.
    #[error("invalid model: {0}")]
    Invalid(String),
    /// A problem located in one tree.
    #[error("invalid model: tree {tree}: {problem}")]
    Tree {
        /// Index of the tree.
        tree: usize,
        /// What is wrong, naming the node.
        problem: String,
    },
}

fn invalid(msg: impl Into<String>) -> ModelError {
    ModelError::Invalid(msg.into())
}

/// Checks everything a scorer relies on: a non-empty feature spec with unique
/// names and sane parameters; a forest whose trees are well-formed binary
/// trees (every child index in range, every node reached exactly once from the
/// root, so no cycles and no sharing), no deeper than [`MAX_TREE_DEPTH`], with
/// finite thresholds, feature indices inside the spec and non-empty leaves; a
/// finite alert threshold; and a size within [`MAX_TREES`], [`MAX_NODES`] and
/// [`MAX_EXPANDED_LEAVES`], checked before anything is laid out.
pub fn validate(model: &pb::Model) -> Result<(), ModelError> {
    let spec = model
        .feature_spec
        .as_ref()
        .ok_or_else(|| invalid("no feature spec"))?;
    validate_spec(spec)?;
    let forest = model.forest.as_ref().ok_or_else(|| invalid("no forest"))?;
    if forest.trees.is_empty() {
        return Err(invalid("forest has no trees"));
    }
    if forest.sample_size == 0 {
        return Err(invalid(
            "forest sample_size is 0; it must be the ψ the trees were grown from",
        ));
    }
    if !model.threshold.is_finite() {
        return Err(invalid(format!(
            "alert threshold {} is not finite",
            model.threshold
        )));
    }
    if forest.trees.len() > MAX_TREES {
        return Err(invalid(format!(
            "forest has {} trees; the limit is {MAX_TREES}",
            forest.trees.len()
        )));
    }
    let nodes: usize = forest.trees.iter().map(|t| t.feature.len()).sum();
    if nodes > MAX_NODES {
        return Err(invalid(format!(
            "forest has {nodes} nodes; the limit is {MAX_NODES}"
        )));
    }
    let (mut deepest, mut expanded) = (0, 0usize);
    for (i, tree) in forest.trees.iter().enumerate() {
        let depth = validate_tree(tree, spec.features.len())
            .map_err(|problem| ModelError::Tree { tree: i, problem })?;
        deepest = deepest.max(depth);
        expanded = expanded.saturating_add(1usize << depth.min(usize::BITS as usize - 2));
    }
    if deepest <= IMPLICIT_MAX_DEPTH as usize && expanded > MAX_EXPANDED_LEAVES {
        return Err(invalid(format!(
            "forest would expand to {expanded} leaves as complete trees for scoring; \
             the limit is {MAX_EXPANDED_LEAVES} (fewer or shallower trees)"
        )));
    }
    Ok(())
}

/// Checks a feature spec on its own: unique non-empty names, sane parameters.
pub fn validate_spec(spec: &pb::FeatureSpec) -> Result<(), ModelError> {
    if spec.features.is_empty() {
        return Err(invalid("feature spec lists no features"));
    }
    let mut names = HashSet::new();
    for (i, f) in spec.features.iter().enumerate() {
        if f.name.is_empty() {
            return Err(invalid(format!("feature {i} has an empty name")));
        }
        if !names.insert(f.name.as_str()) {
            return Err(invalid(format!("feature name '{}' appears twice", f.name)));
        }
        match &f.kind {
            None => return Err(invalid(format!("feature '{}' has no kind", f.name))),
            Some(Kind::Field(field)) if field.source.is_empty() => {
                return Err(invalid(format!(
                    "feature '{}' has an empty source field",
                    f.name
                )))
            }
            Some(Kind::KeyZscore(z)) => {
                if z.source.is_empty() {
                    return Err(invalid(format!(
                        "feature '{}' has an empty source field",
                        f.name
                    )));
                }
                if !(z.alpha > 0.0 && z.alpha < 1.0) {
                    return Err(invalid(format!(
                        "key_zscore feature '{}': alpha {} is outside (0, 1)",
                        f.name, z.alpha
                    )));
                }
                if !z.alert_z.is_finite() || z.alert_z < 0.0 {
                    return Err(invalid(format!(
                        "key_zscore feature '{}': alert_z {} must be finite and >= 0",
                        f.name, z.alert_z
                    )));
                }
            }
            Some(Kind::Field(_)) | Some(Kind::KeyGap(_)) => {}
            Some(Kind::KeyRate(pb::KeyRateFeature { window_s, .. })) => {
                check_window(&f.name, *window_s)?
            }
            Some(Kind::KeyDeviation(d)) => {
                check_source(&f.name, &d.source)?;
                check_unit(&f.name, "alpha", d.alpha, false)?;
                check_unit(&f.name, "fast_alpha", d.fast_alpha, true)?;
                if !(d.robust_z.is_finite() && d.robust_z >= 0.0) {
                    return Err(invalid(format!(
                        "key_deviation feature '{}': robust_z {} must be finite and >= 0",
                        f.name, d.robust_z
                    )));
                }
                if d.bucket_s != 0.0 || d.season_s != 0.0 {
                    let ok = d.bucket_s.is_finite()
                        && d.season_s.is_finite()
                        && d.bucket_s > 0.0
                        && d.season_s >= d.bucket_s
                        && d.season_s / d.bucket_s <= MAX_SEASON_BUCKETS;
                    if !ok {
                        return Err(invalid(format!(
                            "key_deviation feature '{}': bucket_s {} and season_s {} must be positive, with season_s / bucket_s between 1 and {MAX_SEASON_BUCKETS}",
                            f.name, d.bucket_s, d.season_s
                        )));
                    }
                }
            }
            Some(Kind::KeySpread(x)) => {
                check_source(&f.name, &x.source)?;
                check_unit(&f.name, "alpha", x.alpha, false)?;
            }
            Some(Kind::KeyLag(l)) => {
                check_source(&f.name, &l.source)?;
                if l.lag == 0 || l.lag > MAX_LAG {
                    return Err(invalid(format!(
                        "key_lag feature '{}': lag {} must be 1 to {}",
                        f.name, l.lag, MAX_LAG
                    )));
                }
            }
            Some(Kind::KeyWindow(w)) => {
                check_source(&f.name, &w.source)?;
                check_window(&f.name, w.window_s)?;
            }
            Some(Kind::KeyLabelRisk(r)) => {
                check_window(&f.name, r.window_s)?;
                if !(r.prior.is_finite() && r.prior >= 0.0) {
                    return Err(invalid(format!(
                        "key_label_risk feature '{}': prior {} must be finite and >= 0",
                        f.name, r.prior
                    )));
                }
            }
            Some(Kind::KeyRepeat(r)) => {
                check_window(&f.name, r.window_s)?;
                if r.fields.is_empty() {
                    return Err(invalid(format!(
                        "key_repeat feature '{}' lists no fields to compare",
                        f.name
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The most seasonal buckets one deviation feature may keep per key (hours
/// of a week are 168).
pub const MAX_SEASON_BUCKETS: f64 = 1024.0;

fn check_source(name: &str, source: &str) -> Result<(), ModelError> {
    if source.is_empty() {
        return Err(invalid(format!(
            "feature '{name}' has an empty source field"
        )));
    }
    Ok(())
}

/// A weight in (0, 1), or 0 where `zero_ok` (the option is off).
fn check_unit(name: &str, what: &str, v: f64, zero_ok: bool) -> Result<(), ModelError> {
    if (zero_ok && v == 0.0) || (v > 0.0 && v < 1.0) {
        return Ok(());
    }
    Err(invalid(format!(
        "feature '{name}': {what} {v} is outside (0, 1)"
    )))
}

fn check_window(name: &str, window_s: f64) -> Result<(), ModelError> {
    if window_s.is_finite() && window_s > 0.0 {
        Ok(())
    } else {
        Err(invalid(format!(
            "feature '{name}': window_s {window_s} must be a positive number of seconds"
        )))
    }
}

/// Checks one tree; returns its depth.
fn validate_tree(tree: &pb::Tree, num_features: usize) -> Result<usize, String> {
    let n = tree.feature.len();
    if n == 0 {
        return Err("has no nodes".into());
    }
    for (name, len) in [
        ("threshold", tree.threshold.len()),
        ("left", tree.left.len()),
        ("right", tree.right.len()),
        ("leaf_size", tree.leaf_size.len()),
    ] {
        if len != n {
            return Err(format!(
                "node arrays disagree: feature has {n} entries, {name} has {len}"
            ));
        }
    }
    // Walk from the root; each node must be reached exactly once.
    let mut seen = vec![false; n];
    let mut stack = vec![(0usize, 0usize)];
    seen[0] = true;
    let mut reached = 1;
    let mut deepest = 0;
    while let Some((node, depth)) = stack.pop() {
        let (left, right) = (tree.left[node] as usize, tree.right[node] as usize);
        if left == 0 && right == 0 {
            deepest = deepest.max(depth);
            if tree.leaf_size[node] == 0 {
                return Err(format!("leaf node {node} has leaf_size 0"));
            }
            continue;
        }
        if depth + 1 > MAX_TREE_DEPTH {
            return Err(format!(
                "depth exceeds the limit of {MAX_TREE_DEPTH} at node {node}"
            ));
        }
        let feature = tree.feature[node] as usize;
        if feature >= num_features {
            return Err(format!(
                "node {node} splits on feature index {feature}, but the feature spec has {num_features} features"
            ));
        }
        if !tree.threshold[node].is_finite() {
            return Err(format!(
                "node {node} has non-finite threshold {}",
                tree.threshold[node]
            ));
        }
        for child in [left, right] {
            if child >= n {
                return Err(format!(
                    "node {node} has child index {child} out of range (tree has {n} nodes)"
                ));
            }
            if child == 0 || seen[child] {
                return Err(format!(
                    "node {node} points to node {child}, which is already in the tree (cycle or shared node)"
                ));
            }
            seen[child] = true;
            reached += 1;
            stack.push((child, depth + 1));
        }
    }
    if reached != n {
        let orphan = seen.iter().position(|s| !s).unwrap_or(0);
        return Err(format!("node {orphan} is not reachable from the root"));
    }
    Ok(deepest)
}

/// Depth of a tree (edges from the root to the deepest leaf). Assumes the tree
/// is valid; stops at [`MAX_TREE_DEPTH`] + 1 otherwise.
pub(crate) fn tree_depth(tree: &pb::Tree) -> usize {
    let mut max = 0;
    let mut stack = vec![(0usize, 0usize)];
    while let Some((node, depth)) = stack.pop() {
        max = max.max(depth);
        if depth > MAX_TREE_DEPTH || node >= tree.left.len() {
            continue;
        }
        let (l, r) = (tree.left[node] as usize, tree.right[node] as usize);
        if l != 0 || r != 0 {
            stack.push((l, depth + 1));
            stack.push((r, depth + 1));
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::spec::fields_spec;
    use prost::Message;

    /// Root splits f0 at 0.5; left is a leaf, right splits f1 into two leaves.
    fn model() -> pb::Model {
        pb::Model {
            name: "t".into(),
            version: 1,
            feature_spec: Some(fields_spec(&["a".into(), "b".into()])),
            forest: Some(pb::Forest {
                sample_size: 8,
                trees: vec![pb::Tree {
                    feature: vec![0, 0, 1, 0, 0],
                    threshold: vec![0.5, 0.0, 2.0, 0.0, 0.0],
                    left: vec![1, 0, 3, 0, 0],
                    right: vec![2, 0, 4, 0, 0],
                    leaf_size: vec![0, 4, 0, 2, 2],
                }],
            }),
            threshold: 0.6,
            ..Default::default()
        }
    }

    fn refused(edit: impl FnOnce(&mut pb::Model)) -> String {
        let mut m = model();
        edit(&mut m);
        validate(&m)
            .expect_err("model should be refused")
            .to_string()
    }

    fn tree(m: &mut pb::Model) -> &mut pb::Tree {
        &mut m.forest.as_mut().unwrap().trees[0]
    }

    #[test]
    fn valid_model_round_trips() {
        let m = model();
        validate(&m).unwrap();
        let bytes = m.encode_to_vec();
        assert_eq!(crate::model::decode(&bytes).unwrap(), m);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.isoflow");
        crate::model::save(&m, &path).unwrap();
        assert_eq!(crate::model::load(&path).unwrap(), m);
    }

    #[test]
    fn garbage_bytes_are_not_a_model() {
        let err = crate::model::decode(b"\xff\xff\xff\xff not protobuf")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an isoflow model"), "{err}");
    }

    #[test]
    fn child_index_out_of_range() {
        let e = refused(|m| tree(m).right[2] = 9);
        assert_eq!(
            e,
            "invalid model: tree 0: node 2 has child index 9 out of range (tree has 5 nodes)"
        );
    }

    #[test]
    fn cycles_and_shared_nodes() {
        let e = refused(|m| tree(m).left[2] = 0);
        assert!(e.contains("cycle or shared node"), "{e}");
        let e = refused(|m| tree(m).left[2] = 1);
        assert!(e.contains("node 2 points to node 1"), "{e}");
    }

    #[test]
    fn unreachable_nodes() {
        let e = refused(|m| {
            let t = tree(m);
            for v in [&mut t.feature, &mut t.left, &mut t.right] {
                v.push(0);
            }
            t.threshold.push(0.0);
            t.leaf_size.push(1);
        });
        assert!(e.contains("node 5 is not reachable"), "{e}");
    }

    #[test]
    fn depth_over_limit() {
        let e = refused(|m| {
            // A chain of MAX_TREE_DEPTH + 1 splits.
            let t = tree(m);
            *t = pb::Tree::default();
            let splits = MAX_TREE_DEPTH + 1;
            for i in 0..splits {
                let (l, r) = (2 * i + 1, 2 * i + 2);
                t.feature.push(0);
                t.threshold.push(0.0);
                t.left.push(l as u32);
                t.right.push(r as u32);
                t.leaf_size.push(0);
                // Left child is a leaf; right child is the next split.
                t.feature.push(0);
                t.threshold.push(0.0);
                t.left.push(0);
                t.right.push(0);
                t.leaf_size.push(1);
            }
            // Fix indices: node order is split, leaf, split, leaf, ...
            let n = t.feature.len();
            for i in 0..splits {
                let node = 2 * i;
                t.left[node] = (node + 1) as u32;
                t.right[node] = if node + 2 < n { (node + 2) as u32 } else { 0 };
            }
            let last = 2 * (splits - 1);
            t.feature.push(0);
            t.threshold.push(0.0);
            t.left.push(0);
            t.right.push(0);
            t.leaf_size.push(1);
            t.right[last] = (t.feature.len() - 1) as u32;
        });
        assert!(e.contains("depth exceeds the limit of 32"), "{e}");
    }

    #[test]
    fn non_finite_threshold() {
        let e = refused(|m| tree(m).threshold[2] = f32::NAN);
        assert_eq!(
            e,
            "invalid model: tree 0: node 2 has non-finite threshold NaN"
        );
        let e = refused(|m| m.threshold = f64::INFINITY);
        assert!(e.contains("alert threshold inf is not finite"), "{e}");
    }

    #[test]
    fn feature_spec_forest_mismatch() {
        let e = refused(|m| tree(m).feature[2] = 2);
        assert!(
            e.contains("splits on feature index 2, but the feature spec has 2 features"),
            "{e}"
        );
        let e = refused(|m| m.feature_spec = None);
        assert_eq!(e, "invalid model: no feature spec");
        let e = refused(|m| m.feature_spec.as_mut().unwrap().features[1].name = "a".into());
        assert!(e.contains("'a' appears twice"), "{e}");
    }

    #[test]
    fn malformed_arrays_and_leaves() {
        let e = refused(|m| {
            tree(m).threshold.pop();
        });
        assert!(e.contains("threshold has 4"), "{e}");
        let e = refused(|m| tree(m).leaf_size[1] = 0);
        assert!(e.contains("leaf node 1 has leaf_size 0"), "{e}");
        let e = refused(|m| m.forest.as_mut().unwrap().trees.clear());
        assert!(e.contains("no trees"), "{e}");
        let e = refused(|m| m.forest.as_mut().unwrap().sample_size = 0);
        assert!(e.contains("sample_size is 0"), "{e}");
    }
}
