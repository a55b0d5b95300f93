//! The CPU scorer: the GPU kernel's twin, parallel over rows on all cores.

use super::{check_shape, RowScore, ScoreError, Scorer};
use crate::forest::{score_from_mean_path, PackedForest};
use rayon::prelude::*;

/// Rows per work item. Within a block the trees are the outer loop so each
/// tree's nodes stay in cache while every row of the block walks it, and the
/// independent walks overlap in the pipeline.
const BLOCK_ROWS: usize = 256;

/// Scores on all CPU cores with rayon. Allocates nothing per row.
#[derive(Clone, Debug)]
pub struct CpuScorer {
    forest: PackedForest,
}

impl CpuScorer {
    /// A scorer for a packed (hence validated) forest.
    pub fn new(forest: PackedForest) -> Self {
        Self { forest }
    }

    /// Scores rows on the calling thread only (the reference loop).
    pub fn score_block(forest: &PackedForest, rows: &[f32], out: &mut [RowScore]) {
        let dims = forest.dims;
        let mut sums = [0f32; BLOCK_ROWS];
        for (rows, out) in rows
            .chunks(BLOCK_ROWS * dims)
            .zip(out.chunks_mut(BLOCK_ROWS))
        {
            let sums = &mut sums[..out.len()];
            sums.fill(0.0);
            for &root in &forest.roots {
                for (sum, row) in sums.iter_mut().zip(rows.chunks_exact(dims)) {
                    *sum += forest.path_length(root, row);
                }
            }
            let trees = forest.trees() as f32;
            for (o, &sum) in out.iter_mut().zip(sums.iter()) {
                let mean_path = sum / trees;
                *o = RowScore {
                    score: score_from_mean_path(mean_path, forest.normaliser),
                    mean_path,
                };
            }
        }
    }
}

impl Scorer for CpuScorer {
    fn describe(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn dims(&self) -> usize {
        self.forest.dims
    }

    fn score(&mut self, rows: &[f32], out: &mut [RowScore]) -> Result<(), ScoreError> {
        check_shape(self.forest.dims, rows, out)?;
        let dims = self.forest.dims;
        let forest = &self.forest;
        rows.par_chunks(BLOCK_ROWS * dims)
            .zip(out.par_chunks_mut(BLOCK_ROWS))
            .for_each(|(rows, out)| Self::score_block(forest, rows, out));
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
