//! The CPU scorer: the GPU kernel's twin, parallel over rows on all cores.

use super::{check_shape, RowScore, ScoreError, Scorer};
use crate::forest::{score_from_mean_path, PackedForest, LEAF};
use rayon::prelude::*;
use std::cmp::Ordering::{Equal, Less};

/// Rows per work item. Within a block the trees are the outer loop so each
/// tree's nodes stay in cache while every row of the block walks it.
const BLOCK_ROWS: usize = 256;

/// Rows walked through one tree in lockstep. Their loads are independent,
/// so the CPU overlaps them instead of waiting on each dependent load of a
/// single walk.
const LANES: usize = 8;

/// Deepest tree stored in the implicit layout (2^depth leaves per tree);
/// deeper forests use the linked layout.
const MAX_IMPLICIT_DEPTH: u32 = 12;

/// An internal node of the implicit layout.
#[derive(Clone, Copy, Debug)]
struct Split {
    feature: u32,
    threshold: f32,
}

/// One tree as a complete binary tree of its own depth D in breadth-first
/// order: node `i` has children `2i+1` (x ≤ threshold) and `2i+2`, so a walk
/// is D steps of arithmetic with no child pointers to load. A leaf above
/// depth D is repeated over every position beneath it.
#[derive(Clone, Copy, Debug)]
struct ImplicitTree {
    splits: u32,
    leaves: u32,
    depth: u32,
}

/// The CPU layout of a packed forest.
#[derive(Clone, Debug)]
enum Layout {
    /// Complete trees with implicit children (depth ≤ [`MAX_IMPLICIT_DEPTH`]).
    Implicit {
        splits: Vec<Split>,
        leaves: Vec<f32>,
        trees: Vec<ImplicitTree>,
    },
    /// The packed nodes themselves, for deeper forests.
    Linked,
}

#[derive(Clone, Debug)]
struct CpuForest {
    packed: PackedForest,
    layout: Layout,
}

impl CpuForest {
    fn new(packed: PackedForest) -> Self {
        let layout = if packed.max_depth > MAX_IMPLICIT_DEPTH {
            Layout::Linked
        } else {
            let (mut splits, mut leaves, mut trees) = (Vec::new(), Vec::new(), Vec::new());
            for (&root, &depth) in packed.roots.iter().zip(&packed.depths) {
                let tree = ImplicitTree {
                    splits: splits.len() as u32,
                    leaves: leaves.len() as u32,
                    depth,
                };
                splits.resize(
                    splits.len() + (1 << depth) - 1,
                    Split {
                        feature: 0,
                        threshold: 0.0,
                    },
                );
                leaves.resize(leaves.len() + (1 << depth), 0.0);
                let mut stack = vec![(root, 0usize, 0u32)];
                while let Some((node, pos, level)) = stack.pop() {
                    let n = packed.nodes[node as usize];
                    if level == depth {
                        leaves[tree.leaves as usize + pos - ((1 << depth) - 1)] = n.threshold;
                        continue;
                    }
                    let (left, right) = if n.feature == LEAF {
                        (node, node)
                    } else {
                        splits[tree.splits as usize + pos] = Split {
                            feature: n.feature,
                            threshold: n.threshold,
                        };
                        (n.left, n.right)
                    };
                    stack.push((left, 2 * pos + 1, level + 1));
                    stack.push((right, 2 * pos + 2, level + 1));
                }
                trees.push(tree);
            }
            Layout::Implicit {
                splits,
                leaves,
                trees,
            }
        };
        Self { packed, layout }
    }

    /// Adds each row's path length in every tree, in tree order, to `sums`.
    fn accumulate(&self, rows: &[f32], sums: &mut [f32]) {
        let dims = self.packed.dims;
        match &self.layout {
            Layout::Linked => {
                for &root in &self.packed.roots {
                    for (sum, row) in sums.iter_mut().zip(rows.chunks_exact(dims)) {
                        *sum += self.packed.path_length(root, row);
                    }
                }
            }
            Layout::Implicit {
                splits,
                leaves,
                trees,
            } => {
                for tree in trees {
                    let splits = &splits[tree.splits as usize..][..(1 << tree.depth) - 1];
                    let leaves = &leaves[tree.leaves as usize..][..1 << tree.depth];
                    let walk = |pos: usize, row: &[f32]| {
                        // SAFETY: `pos` stays below `splits.len()` for the
                        // `depth` steps a walk takes (complete tree), and
                        // split features come from a validated forest, so
                        // they index inside a `dims`-wide row.
                        let s = unsafe { *splits.get_unchecked(pos) };
                        let x = unsafe { *row.get_unchecked(s.feature as usize) };
                        // `x <= threshold` goes left, anything else (greater,
                        // or NaN) right, exactly as the GPU kernel branches.
                        let right = !matches!(x.partial_cmp(&s.threshold), Some(Less | Equal));
                        2 * pos + 1 + right as usize
                    };
                    let mut groups = rows.chunks_exact(LANES * dims);
                    let mut group_sums = sums.chunks_exact_mut(LANES);
                    for (group, gsums) in (&mut groups).zip(&mut group_sums) {
                        let mut pos = [0usize; LANES];
                        for _ in 0..tree.depth {
                            for (k, p) in pos.iter_mut().enumerate() {
                                *p = walk(*p, &group[k * dims..(k + 1) * dims]);
                            }
                        }
                        for (sum, &p) in gsums.iter_mut().zip(&pos) {
                            *sum += leaves[p - splits.len()];
                        }
                    }
                    for (row, sum) in groups
                        .remainder()
                        .chunks_exact(dims)
                        .zip(group_sums.into_remainder())
                    {
                        let mut p = 0;
                        for _ in 0..tree.depth {
                            p = walk(p, row);
                        }
                        *sum += leaves[p - splits.len()];
                    }
                }
            }
        }
    }

    fn score_block(&self, rows: &[f32], out: &mut [RowScore]) {
        let dims = self.packed.dims;
        let mut sums = [0f32; BLOCK_ROWS];
        for (rows, out) in rows
            .chunks(BLOCK_ROWS * dims)
            .zip(out.chunks_mut(BLOCK_ROWS))
        {
            let sums = &mut sums[..out.len()];
            sums.fill(0.0);
            self.accumulate(rows, sums);
            let trees = self.packed.trees() as f32;
            for (o, &sum) in out.iter_mut().zip(sums.iter()) {
                let mean_path = sum / trees;
                *o = RowScore {
                    score: score_from_mean_path(mean_path, self.packed.normaliser),
                    mean_path,
                };
            }
        }
    }
}

/// Scores on all CPU cores with rayon. Allocates nothing per row.
///
/// Same arithmetic as `shaders/iforest.wgsl` (per row, leaf path lengths
/// summed in tree order in f32, one division, one `exp2`), so the two agree
/// to rounding of `exp2`.
#[derive(Clone, Debug)]
pub struct CpuScorer {
    forest: CpuForest,
}

impl CpuScorer {
    /// A scorer for a packed (hence validated) forest.
    pub fn new(forest: PackedForest) -> Self {
        Self {
            forest: CpuForest::new(forest),
        }
    }
}

impl Scorer for CpuScorer {
    fn describe(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn dims(&self) -> usize {
        self.forest.packed.dims
    }

    fn score(&mut self, rows: &[f32], out: &mut [RowScore]) -> Result<(), ScoreError> {
        check_shape(self.forest.packed.dims, rows, out)?;
        let dims = self.forest.packed.dims;
        let forest = &self.forest;
        rows.par_chunks(BLOCK_ROWS * dims)
            .zip(out.par_chunks_mut(BLOCK_ROWS))
            .for_each(|(rows, out)| forest.score_block(rows, out));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::spec::fields_spec;
    use crate::forest::average_path_length;
    use crate::model::pb;

    /// Two hand-built trees over features (a, b), ψ = 8.
    /// Tree 0: a <= 0.5 → leaf(4) at depth 1; else b <= 2 → leaf(1) / leaf(3) at depth 2.
    /// Tree 1: b <= 1 → leaf(2) at depth 1; else leaf(6) at depth 1.
    fn model() -> pb::Model {
        pb::Model {
            feature_spec: Some(fields_spec(&["a".into(), "b".into()])),
            forest: Some(pb::Forest {
                sample_size: 8,
                trees: vec![
                    pb::Tree {
                        feature: vec![0, 0, 1, 0, 0],
                        threshold: vec![0.5, 0.0, 2.0, 0.0, 0.0],
                        left: vec![1, 0, 3, 0, 0],
                        right: vec![2, 0, 4, 0, 0],
                        leaf_size: vec![0, 4, 0, 1, 3],
                    },
                    pb::Tree {
                        feature: vec![1, 0, 0],
                        threshold: vec![1.0, 0.0, 0.0],
                        left: vec![1, 0, 0],
                        right: vec![2, 0, 0],
                        leaf_size: vec![0, 2, 6],
                    },
                ],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn scores_agree_with_hand_computation() {
        let forest = PackedForest::from_model(&model()).unwrap();
        let c = average_path_length;
        let rows = [0.0f32, 0.0, 1.0, 1.5, 1.0, 5.0];
        // Row (0,0): tree0 → leaf(4) depth 1; tree1 → leaf(2) depth 1.
        // Row (1,1.5): tree0 → b<=2 → leaf(1) depth 2; tree1 → leaf(6) depth 1.
        // Row (1,5): tree0 → leaf(3) depth 2; tree1 → leaf(6) depth 1.
        let paths = [
            ((1.0 + c(4.0)) + (1.0 + c(2.0))) / 2.0,
            ((2.0 + c(1.0)) + (1.0 + c(6.0))) / 2.0,
            ((2.0 + c(3.0)) + (1.0 + c(6.0))) / 2.0,
        ];
        let mut out = vec![RowScore::default(); 3];
        CpuScorer::new(forest).score(&rows, &mut out).unwrap();
        for (o, &p) in out.iter().zip(&paths) {
            let want = 2f64.powf(-p / c(8.0));
            assert!((o.mean_path as f64 - p).abs() < 1e-6, "{o:?} vs path {p}");
            assert!(
                (o.score as f64 - want).abs() < 1e-6,
                "{o:?} vs score {want}"
            );
        }
    }

    #[test]
    fn wrong_shape_is_an_error() {
        let forest = PackedForest::from_model(&model()).unwrap();
        let mut out = vec![RowScore::default(); 2];
        let err = CpuScorer::new(forest)
            .score(&[1.0, 2.0, 3.0], &mut out)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("not a whole number of 2-feature rows"),
            "{err}"
        );
    }
}
