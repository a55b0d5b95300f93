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
