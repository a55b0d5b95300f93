//! Structural checks on a decoded model.

use super::pb::{self, feature::Kind};
use std::collections::HashSet;

/// Deepest tree a model may hold. Scorers walk at most this many levels, so a
/// validated model can never loop in a kernel. ψ = 2³² would need depth 32.
pub const MAX_TREE_DEPTH: usize = 32;

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
/// finite alert threshold.
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
    for (i, tree) in forest.trees.iter().enumerate() {
        validate_tree(tree, spec.features.len())
            .map_err(|problem| ModelError::Tree { tree: i, problem })?;
    }
    Ok(())
}

fn validate_spec(spec: &pb::FeatureSpec) -> Result<(), ModelError> {
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
            Some(Kind::Field(_)) => {}
        }
    }
    Ok(())
}

fn validate_tree(tree: &pb::Tree, num_features: usize) -> Result<(), String> {
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
    while let Some((node, depth)) = stack.pop() {
        let (left, right) = (tree.left[node] as usize, tree.right[node] as usize);
        if left == 0 && right == 0 {
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
    Ok(())
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
