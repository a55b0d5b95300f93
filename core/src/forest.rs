//! Isolation-forest maths and the packed node layout every scorer walks.
//!
//! The model stores trees as parallel arrays; scoring wants one flat array of
//! 16-byte nodes with absolute child indices and each leaf's whole path-length
//! contribution precomputed, so the CPU loop and the WGSL kernel do the same
//! few operations in the same order and agree to the last bit of a sum.

use crate::model::{self, pb, ModelError};
use bytemuck::{Pod, Zeroable};

/// Euler–Mascheroni constant, for the harmonic-number estimate H(i) ≈ ln i + γ.
pub const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;

/// `feature` value marking a leaf in a [`PackedNode`].
pub const LEAF: u32 = u32::MAX;

/// c(n) = 2H(n−1) − 2(n−1)/n: the average path length of an unsuccessful
/// search in a binary search tree of n points (Liu, Ting & Zhou 2008), with
/// H(i) estimated as ln i + γ and c(2) = 1, c(n ≤ 1) = 0 as in scikit-learn.
pub fn average_path_length(n: f64) -> f64 {
    if n <= 1.0 {
        0.0
    } else if n <= 2.0 {
        1.0
    } else {
        2.0 * ((n - 1.0).ln() + EULER_GAMMA) - 2.0 * (n - 1.0) / n
    }
}

/// Path length credited to a point that stops in a leaf at `depth` holding
/// `leaf_size` training samples: the edges walked plus c(leaf_size) for the
/// subtree that was never grown.
pub fn leaf_path_length(depth: usize, leaf_size: u32) -> f64 {
    depth as f64 + average_path_length(leaf_size as f64)
}

/// Anomaly score 2^(−E[h(x)] / c(ψ)) from the mean path length. Near 1 is
/// anomalous, well under 0.5 is normal; equal to scikit-learn's
/// `-score_samples`.
#[inline]
pub fn score_from_mean_path(mean_path: f32, normaliser: f32) -> f32 {
    (-mean_path / normaliser).exp2()
}

/// One node, laid out identically in Rust and in `shaders/iforest.wgsl`.
///
/// Internal node: go to `left` when `x[feature] <= threshold`, else `right`.
/// Leaf (`feature == LEAF`): `threshold` holds the leaf's path length.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct PackedNode {
    /// Feature column, or [`LEAF`].
    pub feature: u32,
    /// Split threshold, or the leaf's path length.
    pub threshold: f32,
    /// Absolute index of the left child.
    pub left: u32,
    /// Absolute index of the right child.
    pub right: u32,
}

/// A validated forest flattened for scoring.
#[derive(Clone, Debug)]
pub struct PackedForest {
    /// All nodes of all trees.
    pub nodes: Vec<PackedNode>,
    /// Index of each tree's root in `nodes`.
    pub roots: Vec<u32>,
    /// Feature columns a row must have.
    pub dims: usize,
    /// c(ψ), the path-length normaliser.
    pub normaliser: f32,
    /// Deepest leaf over all trees (bounds the kernel's walk).
    pub max_depth: u32,
    /// Deepest leaf of each tree, in tree order.
    pub depths: Vec<u32>,
}

impl PackedForest {
    /// Validates `model` and packs its forest.
    pub fn from_model(model: &pb::Model) -> Result<Self, ModelError> {
        model::validate(model)?;
        let dims = model.feature_spec.as_ref().map_or(0, |s| s.features.len());
        let forest = model.forest.as_ref().expect("validated model has a forest");
        Ok(Self::pack(forest, dims))
    }

    /// Packs a forest that has already been validated against `dims`
    /// features, or that this crate grew itself ([`crate::grow`]).
    pub(crate) fn pack(forest: &pb::Forest, dims: usize) -> Self {
        let total: usize = forest.trees.iter().map(|t| t.feature.len()).sum();
        let mut nodes = Vec::with_capacity(total);
        let mut roots = Vec::with_capacity(forest.trees.len());
        let mut depths = Vec::with_capacity(forest.trees.len());
        for tree in &forest.trees {
            let offset = nodes.len() as u32;
            roots.push(offset);
            let mut depth = vec![0usize; tree.feature.len()];
            // Parents may follow children in a valid file, so depths are
            // assigned by a walk from the root, not by index order.
            let mut stack = vec![0usize];
            while let Some(i) = stack.pop() {
                let (l, r) = (tree.left[i] as usize, tree.right[i] as usize);
                if l != 0 || r != 0 {
                    depth[l] = depth[i] + 1;
                    depth[r] = depth[i] + 1;
                    stack.push(l);
                    stack.push(r);
                }
            }
            let mut tree_depth = 0u32;
            for (i, &node_depth) in depth.iter().enumerate() {
                let (l, r) = (tree.left[i], tree.right[i]);
                nodes.push(if l == 0 && r == 0 {
                    tree_depth = tree_depth.max(node_depth as u32);
                    PackedNode {
                        feature: LEAF,
                        threshold: leaf_path_length(node_depth, tree.leaf_size[i]) as f32,
                        left: 0,
                        right: 0,
                    }
                } else {
                    PackedNode {
                        feature: tree.feature[i],
                        threshold: tree.threshold[i],
                        left: offset + l,
                        right: offset + r,
                    }
                });
            }
            depths.push(tree_depth);
        }
        Self {
            nodes,
            roots,
            dims,
            normaliser: average_path_length(forest.sample_size as f64) as f32,
            max_depth: depths.iter().copied().max().unwrap_or(0),
            depths,
        }
    }

    /// Number of trees.
    pub fn trees(&self) -> usize {
        self.roots.len()
    }

    /// Path length of `row` in the tree rooted at `root`.
    #[inline]
    pub fn path_length(&self, root: u32, row: &[f32]) -> f32 {
        let mut node = self.nodes[root as usize];
        while node.feature != LEAF {
            let next = if row[node.feature as usize] <= node.threshold {
                node.left
            } else {
                node.right
            };
            node = self.nodes[next as usize];
        }
        node.threshold
    }
}

impl PackedForest {
    /// Per-feature share of the record's isolation, summing to 1.
    ///
    /// Method (path attribution): in every tree, each split on the record's
    /// path credits its feature with 1/h, where h is that tree's path length
    /// for the record. Splits that isolate the record quickly (short h)
    /// weigh more; features never split on the path get nothing.
    pub fn attribution(&self, row: &[f32]) -> Vec<f32> {
        self.attribution_rows(row)
    }

    /// [`Self::attribution`] of each row of `rows` (rows of `dims` values,
    /// one after another), as rows of shares in the same layout.
    pub fn attribution_rows(&self, rows: &[f32]) -> Vec<f32> {
        let mut credit = self.credit_rows(rows);
        normalize_shares(&mut credit, self.dims);
        credit
    }

    /// Each row's credit per feature before normalisation. In every tree a
    /// feature gets (splits on it along the path) × 1/h, added in tree
    /// order: the CPU scorer's vector walk adds the same products in the
    /// same order, so the two agree bit for bit.
    pub fn credit_rows(&self, rows: &[f32]) -> Vec<f32> {
        let dims = self.dims;
        let mut credit = vec![0f32; rows.len()];
        let mut path = Vec::with_capacity(self.max_depth as usize + 1);
        let mut counts = vec![0u32; dims];
        // Tree by tree: a tree stays in cache for every row, where a row at
        // a time walks the whole forest out of cache again for each row.
        for &root in &self.roots {
            for (row, credit) in rows.chunks_exact(dims).zip(credit.chunks_exact_mut(dims)) {
                path.clear();
                let mut node = self.nodes[root as usize];
                while node.feature != LEAF {
                    path.push(node.feature as usize);
                    counts[node.feature as usize] += 1;
                    let next = if row[node.feature as usize] <= node.threshold {
                        node.left
                    } else {
                        node.right
                    };
                    node = self.nodes[next as usize];
                }
                let weight = 1.0 / node.threshold.max(1.0);
                // Each feature's count × 1/h once, at its first split on
                // the path; its later splits add 0 × 1/h, which changes
                // nothing (credit is never −0), and no branch is taken.
                for &f in &path {
                    credit[f] += std::mem::take(&mut counts[f]) as f32 * weight;
                }
            }
        }
        credit
    }
}

/// Turns rows of per-feature credit (rows of `dims`) into shares summing
/// to 1; a row with no credit stays all zeros.
pub fn normalize_shares(credit: &mut [f32], dims: usize) {
    for credit in credit.chunks_exact_mut(dims.max(1)) {
        let total: f32 = credit.iter().sum();
        if total > 0.0 {
            credit.iter_mut().for_each(|c| *c /= total);
        }
    }
}

/// Deepest forest laid out as an [`ImplicitForest`] (a limit of the
/// model format, which validation checks against).
pub use crate::model::IMPLICIT_MAX_DEPTH;

/// An internal node of an [`ImplicitForest`]: `x[feature] <= threshold`
/// goes to child `2i+1`, anything else (greater, or NaN) to `2i+2`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Split {
    /// Feature column.
    pub feature: u32,
    /// Split threshold.
    pub threshold: f32,
}

/// Where one tree of an [`ImplicitForest`] lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImplicitTree {
    /// Index of the tree's first split in [`ImplicitForest::splits`].
    pub splits: u32,
    /// Index of the tree's first leaf in [`ImplicitForest::leaves`].
    pub leaves: u32,
    /// The tree's depth D: `2^D − 1` splits and `2^D` leaves.
    pub depth: u32,
}

/// Every tree as a complete binary tree of its own depth D in breadth-first
/// order: node `i` has children `2i+1` and `2i+2`, so a walk is D steps of
/// arithmetic with no child pointers to load, and every walk of a tree takes
/// the same number of steps (no divergence between SIMD lanes or GPU
/// invocations). A leaf above depth D is repeated over every position beneath
/// it; the splits above those copies are never decisive.
#[derive(Clone, Debug, Default)]
pub struct ImplicitForest {
    /// All trees' splits.
    pub splits: Vec<Split>,
    /// All trees' leaf path lengths.
    pub leaves: Vec<f32>,
    /// Per tree, in tree order.
    pub trees: Vec<ImplicitTree>,
    /// Per split, whether it is one of the tree's own: false for the
    /// never-decisive splits above a leaf's copies, which no path crosses
    /// in the tree itself (attribution leaves them out).
    pub real: Vec<bool>,
}

impl ImplicitForest {
    /// Lays out `packed`; memory grows as 2^depth per tree, so callers bound
    /// the depth first (by [`IMPLICIT_MAX_DEPTH`]).
    pub fn new(packed: &PackedForest) -> Self {
        let mut f = Self::default();
        for (&root, &depth) in packed.roots.iter().zip(&packed.depths) {
            let tree = ImplicitTree {
                splits: f.splits.len() as u32,
                leaves: f.leaves.len() as u32,
                depth,
            };
            f.splits
                .resize(f.splits.len() + (1 << depth) - 1, Split::default());
            f.real.resize(f.splits.len(), false);
            f.leaves.resize(f.leaves.len() + (1 << depth), 0.0);
            let mut stack = vec![(root, 0usize, 0u32)];
            while let Some((node, pos, level)) = stack.pop() {
                let n = packed.nodes[node as usize];
                if level == depth {
                    f.leaves[tree.leaves as usize + pos - ((1 << depth) - 1)] = n.threshold;
                    continue;
                }
                let (left, right) = if n.feature == LEAF {
                    (node, node)
                } else {
                    f.splits[tree.splits as usize + pos] = Split {
                        feature: n.feature,
                        threshold: n.threshold,
                    };
                    f.real[tree.splits as usize + pos] = true;
                    (n.left, n.right)
                };
                stack.push((left, 2 * pos + 1, level + 1));
                stack.push((right, 2 * pos + 2, level + 1));
            }
            f.trees.push(tree);
        }
        f
    }

    /// Each tree's splits, leaves and depth, in tree order.
    pub fn iter(&self) -> impl Iterator<Item = (&[Split], &[f32], u32)> + '_ {
        self.trees.iter().map(|t| {
            (
                &self.splits[t.splits as usize..][..(1 << t.depth) - 1],
                &self.leaves[t.leaves as usize..][..1 << t.depth],
                t.depth,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn average_path_length_matches_definition() {
        assert_eq!(average_path_length(0.0), 0.0);
        assert_eq!(average_path_length(1.0), 0.0);
        assert_eq!(average_path_length(2.0), 1.0);
        // c(3) = 2(ln 2 + γ) − 4/3
        let c3 = 2.0 * (2f64.ln() + EULER_GAMMA) - 4.0 / 3.0;
        assert!((average_path_length(3.0) - c3).abs() < 1e-15);
        // c(256) as printed by scikit-learn's _average_path_length([256]).
        assert!((average_path_length(256.0) - 10.244_770_920_119_917).abs() < 1e-12);
        // Exact harmonic numbers converge to the estimate for large n.
        let n = 100_000.0;
        let h: f64 = (1..100_000).map(|i| 1.0 / i as f64).sum();
        let exact = 2.0 * h - 2.0 * (n - 1.0) / n;
        assert!((average_path_length(n) - exact).abs() < 1e-4);
    }

    #[test]
    fn leaf_path_length_adds_unbuilt_subtree() {
        assert_eq!(leaf_path_length(3, 1), 3.0);
        assert_eq!(leaf_path_length(2, 2), 3.0);
        assert!((leaf_path_length(1, 3) - (1.0 + average_path_length(3.0))).abs() < 1e-15);
    }

    #[test]
    fn attribution_credits_the_isolating_feature() {
        use crate::features::spec::fields_spec;
        // Root splits feature 1; its right child is a leaf (quick isolation),
        // the left side splits feature 0.
        let model = pb::Model {
            feature_spec: Some(fields_spec(&["a".into(), "b".into()])),
            forest: Some(pb::Forest {
                sample_size: 4,
                trees: vec![pb::Tree {
                    feature: vec![1, 0, 0, 0, 0],
                    threshold: vec![10.0, 0.5, 0.0, 0.0, 0.0],
                    left: vec![1, 3, 0, 0, 0],
                    right: vec![2, 4, 0, 0, 0],
                    leaf_size: vec![0, 0, 1, 1, 2],
                }],
            }),
            ..Default::default()
        };
        let forest = PackedForest::from_model(&model).unwrap();
        assert_eq!(forest.attribution(&[0.0, 99.0]), vec![0.0, 1.0]);
        let shares = forest.attribution(&[0.0, 1.0]);
        assert_eq!(shares, vec![0.5, 0.5]);
        // Rows together give each row's own shares.
        let rows = [0.0, 1.0, 0.0, 99.0, 1.0, 1.0];
        assert_eq!(
            forest.attribution_rows(&rows),
            vec![0.5, 0.5, 0.0, 1.0, 0.5, 0.5]
        );
    }

    #[test]
    fn score_is_half_at_average_depth() {
        let c = average_path_length(256.0) as f32;
        assert!((score_from_mean_path(c, c) - 0.5).abs() < 1e-7);
        assert_eq!(score_from_mean_path(0.0, c), 1.0);
        assert!(score_from_mean_path(2.0 * c, c) < 0.26);
    }
}
