//! Isolation-forest training (Liu, Ting & Zhou 2008, as in scikit-learn).
//!
//! Each tree draws ψ rows without replacement, then splits recursively on a
//! random non-constant feature at a uniform threshold between the node's min
//! and max, up to depth ⌈log₂ ψ⌉. Trees are grown in parallel, each from its
//! own ChaCha stream derived from (seed, tree index), so a seed gives the same
//! forest on any number of threads.
//!
//! Data are cast to f32 (as scikit-learn does) and thresholds are stored as the
//! largest f32 not above the drawn f64 value, so `x <= threshold` in f32 sends
//! every f32 input the same way the f64 comparison would.

use crate::TrainError;
use isoflow_core::forest::PackedForest;
use isoflow_core::grow;
use isoflow_core::model::pb;
use isoflow_core::score::{cpu::CpuScorer, RowScore, Scorer};
use linfa::dataset::{DatasetBase, Records};
use linfa::traits::{Fit, PredictInplace};
use ndarray::{Array1, Array2, ArrayView2};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Hyper-parameters of an isolation forest.
#[derive(Clone, Debug, PartialEq)]
pub struct IsolationForestParams {
    /// Number of trees.
    pub trees: usize,
    /// ψ: rows drawn per tree (capped at the number of rows).
    pub sample_size: usize,
    /// Seed for reproducible forests.
    pub seed: u64,
}

impl Default for IsolationForestParams {
    fn default() -> Self {
        Self {
            trees: 100,
            sample_size: 256,
            seed: 0,
        }
    }
}

/// A fitted forest: the model-format trees plus a packed copy for scoring.
#[derive(Clone, Debug)]
pub struct IsolationForest {
    /// Trees in model-file form.
    pub forest: pb::Forest,
    packed: PackedForest,
}

impl IsolationForest {
    /// Scores row-major f32 rows (`dims` columns) on all cores.
    pub fn score_rows(&self, rows: &[f32]) -> Vec<RowScore> {
        let mut out = vec![RowScore::default(); rows.len() / self.packed.dims.max(1)];
        CpuScorer::new(self.packed.clone())
            .score(rows, &mut out)
            .expect("rows shaped by the caller match the forest");
        out
    }

    /// The packed forest used for scoring.
    pub fn packed(&self) -> &PackedForest {
        &self.packed
    }
}

impl IsolationForestParams {
    /// Checks the parameters against the data's shape.
    fn check(&self, rows: usize, dims: usize) -> Result<(), TrainError> {
        if self.trees == 0 {
            return Err(TrainError::Params("--trees must be at least 1".into()));
        }
        if self.sample_size < 2 {
            return Err(TrainError::Params(format!(
                "--sample-size must be at least 2, got {}",
                self.sample_size
            )));
        }
        use isoflow_core::model::{MAX_EXPANDED_LEAVES, MAX_TREES};
        if self.trees > MAX_TREES {
            return Err(TrainError::Params(format!(
                "--trees {}: a model holds at most {MAX_TREES} trees",
                self.trees
            )));
        }
        // Trees grow to depth ⌈log₂ ψ⌉; those no deeper than the complete
        // layout's limit are expanded for scoring, which bounds their number.
        let depth = self.sample_size.next_power_of_two().trailing_zeros();
        if depth <= isoflow_core::forest::IMPLICIT_MAX_DEPTH
            && self.trees << depth > MAX_EXPANDED_LEAVES
        {
            return Err(TrainError::Params(format!(
                "--trees {} with --sample-size {}: trees of depth up to {depth} expand to \
                 {} leaves for scoring; the limit is {MAX_EXPANDED_LEAVES}",
                self.trees,
                self.sample_size,
                self.trees << depth
            )));
        }
        if rows < 2 {
            return Err(TrainError::Data(format!(
                "need at least 2 rows to train, got {rows}"
            )));
        }
        if dims == 0 {
            return Err(TrainError::Data("no feature columns to train on".into()));
        }
        Ok(())
    }

    /// Fits on a row-major f32 matrix (`rows × dims`).
    pub fn fit_rows(&self, data: &[f32], dims: usize) -> Result<IsolationForest, TrainError> {
        self.fit_rows_with_progress(data, dims, &|| {})
    }

    /// [`Self::fit_rows`], calling `on_tree` as each tree finishes.
    pub fn fit_rows_with_progress(
        &self,
        data: &[f32],
        dims: usize,
        on_tree: &(dyn Fn() + Sync),
    ) -> Result<IsolationForest, TrainError> {
        let rows = data.len().checked_div(dims).unwrap_or(0);
        self.check(rows, dims)?;
        let psi = self.sample_size.min(rows);
        let max_depth = grow::max_depth(psi);
        let trees: Vec<pb::Tree> = (0..self.trees)
            .into_par_iter()
            .map(|t| {
                let mut rng = ChaCha8Rng::seed_from_u64(grow::tree_seed(self.seed, t as u64));
                let tree = grow::grow_tree(data, rows, dims, psi, max_depth, &mut rng);
                on_tree();
                tree
            })
            .collect();
        let forest = pb::Forest {
            sample_size: psi as u32,
            trees,
        };
        let packed = PackedForest::from_model(&placeholder_model(&forest, dims))?;
        Ok(IsolationForest { forest, packed })
    }

    /// Fits on an ndarray view (any float layout; cast to f32).
    pub fn fit_array(&self, data: ArrayView2<f64>) -> Result<IsolationForest, TrainError> {
        let dims = data.ncols();
        let flat: Vec<f32> = data
            .rows()
            .into_iter()
            .flat_map(|r| r.into_iter().map(|&x| x as f32))
            .collect();
        self.fit_rows(&flat, dims)
    }
}

/// A model wrapper so a bare forest can be validated and packed.
fn placeholder_model(forest: &pb::Forest, dims: usize) -> pb::Model {
    let names: Vec<String> = (0..dims).map(|i| format!("f{i}")).collect();
    pb::Model {
        feature_spec: Some(isoflow_core::features::spec::fields_spec(&names)),
        forest: Some(forest.clone()),
        ..Default::default()
    }
}

impl<T> Fit<Array2<f64>, T, TrainError> for IsolationForestParams {
    type Object = IsolationForest;

    /// Fits on the dataset's records; targets, if any, are ignored (the
    /// method is unsupervised).
    fn fit(&self, dataset: &DatasetBase<Array2<f64>, T>) -> Result<IsolationForest, TrainError> {
        let records = dataset.records();
        if records.nsamples() == 0 {
            return Err(TrainError::Data("dataset has no records".into()));
        }
        self.fit_array(records.view())
    }
}

impl PredictInplace<Array2<f64>, Array1<f64>> for IsolationForest {
    /// Writes the anomaly score (scikit-learn's `-score_samples`) of each row.
    fn predict_inplace(&self, x: &Array2<f64>, y: &mut Array1<f64>) {
        let flat: Vec<f32> = x
            .rows()
            .into_iter()
            .flat_map(|r| r.into_iter().map(|&v| v as f32))
            .collect();
        for (out, s) in y.iter_mut().zip(self.score_rows(&flat)) {
            *out = s.score as f64;
        }
    }

    fn default_target(&self, x: &Array2<f64>) -> Array1<f64> {
        Array1::zeros(x.nrows())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use linfa::traits::Predict;
    use linfa::Dataset;
    use rand::Rng;

    fn blob(rows: usize) -> Array2<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        Array2::from_shape_fn((rows, 3), |_| rng.gen::<f64>())
    }

    #[test]
    fn deterministic_per_seed_and_depth_bounded() {
        let data = blob(1000);
        let p = IsolationForestParams {
            trees: 20,
            sample_size: 64,
            seed: 3,
        };
        let a = p.fit_array(data.view()).unwrap();
        let b = p.fit_array(data.view()).unwrap();
        assert_eq!(a.forest, b.forest);
        let c = IsolationForestParams {
            seed: 4,
            ..p.clone()
        }
        .fit_array(data.view())
        .unwrap();
        assert_ne!(a.forest, c.forest);
        assert_eq!(a.forest.sample_size, 64);
        assert!(a.packed().max_depth <= 6);
        // Leaves hold every sampled row exactly once.
        for t in &a.forest.trees {
            assert_eq!(t.leaf_size.iter().sum::<u32>(), 64);
        }
    }

    #[test]
    fn forests_too_large_to_score_are_refused_before_growing() {
        let data = blob(100);
        for (trees, sample_size, says) in [
            (10_001, 256, "at most 10000 trees"),
            (1_100, 4096, "the limit is 4194304"),
        ] {
            let p = IsolationForestParams {
                trees,
                sample_size,
                seed: 0,
            };
            let e = p.fit_array(data.view()).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn outlier_scores_higher_through_linfa_traits() {
        let mut data = blob(500);
        data.row_mut(0).fill(10.0);
        let dataset = Dataset::from(data.clone());
        let model = IsolationForestParams::default().fit(&dataset).unwrap();
        let scores: Array1<f64> = model.predict(&data);
        let max_other = scores.iter().skip(1).cloned().fold(f64::MIN, f64::max);
        assert!(scores[0] > max_other, "{} vs {max_other}", scores[0]);
        assert!(scores[0] > 0.6);
    }

    #[test]
    fn sample_size_caps_at_rows_and_constant_data_gives_leaves() {
        let data = Array2::from_elem((10, 2), 1.0);
        let model = IsolationForestParams::default()
            .fit_array(data.view())
            .unwrap();
        assert_eq!(model.forest.sample_size, 10);
        assert!(model
            .forest
            .trees
            .iter()
            .all(|t| t.feature.len() == 1 && t.leaf_size[0] == 10));
        let bad = IsolationForestParams {
            trees: 0,
            ..Default::default()
        }
        .fit_array(data.view());
        assert!(bad.unwrap_err().to_string().contains("--trees"));
    }
}
