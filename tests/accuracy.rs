//! Isolation-forest accuracy against scikit-learn on tabular outlier sets:
//! same trees (100), same ψ (256, capped at the row count), fit on all rows,
//! score all rows, ROC AUC averaged over seeds, compared with the 5-seed
//! means of scikit-learn in `REFERENCE.csv`. The repository's nine sets
//! (`tests/data/tabular`) always run; all eighteen of `../shared/data` run
//! when it is beside the clone. `ACC_SEEDS` sets our seed count.

use crate::util;

use isoflow_train::data::load_numeric_csv;
use isoflow_train::eval::roc_auc;
use isoflow_train::iforest::IsolationForestParams;
use std::path::{Path, PathBuf};

/// (dataset, sklearn mean AUC, sklearn std)
fn reference(dir: &Path) -> Vec<(String, f64, f64)> {
    let text = std::fs::read_to_string(dir.join("REFERENCE.csv")).expect("REFERENCE.csv");
    text.lines()
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            (
                f[0].to_owned(),
                f[4].parse().unwrap(),
                f[5].parse().unwrap(),
            )
        })
        .collect()
}

fn mean_auc(dir: &Path, name: &str) -> f64 {
    let path = dir.join(format!("{name}.csv"));
    let data = load_numeric_csv(path.to_str().unwrap(), &["label".into()], "label").unwrap();
    let labels = data.labels.clone().expect("label column");
    let seeds: u64 = std::env::var("ACC_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let aucs: Vec<f64> = (0..seeds)
        .map(|seed| {
            let forest = IsolationForestParams {
                trees: 100,
                sample_size: 256,
                seed,
            }
            .fit_rows(&data.matrix, data.dims())
            .unwrap();
            let scores: Vec<f64> = forest
                .score_rows(&data.matrix)
                .iter()
                .map(|s| s.score as f64)
                .collect();
            roc_auc(&scores, &labels).unwrap()
        })
        .collect();
    aucs.iter().sum::<f64>() / aucs.len() as f64
}

fn check(dir: PathBuf) {
    let mut failures = Vec::new();
    for (name, sklearn, std) in reference(&dir) {
        let ours = mean_auc(&dir, &name);
        // Our mean is over 20 seeds; the reference is a 5-seed mean whose own
        // sampling noise (std/√5) is real: scikit-learn 1.9.1 over 40 seeds
        // gives letter 0.6338 and vowels 0.7516, not the 5-seed 0.6435 and
        // 0.7714. So the bar is 0.01 plus two standard errors of the reference.
        let tolerance = 0.01 + 2.0 * std / 5f64.sqrt();
        println!(
            "{name:12} ours {ours:.4} sklearn {sklearn:.4} diff {:+.4} tol {tolerance:.4}",
            ours - sklearn
        );
        if ours < sklearn - tolerance || ours > sklearn + 0.05 {
            failures.push(format!("{name}: {ours:.4} vs {sklearn:.4}"));
        }
    }
    assert!(failures.is_empty(), "AUC off scikit-learn: {failures:?}");
}

#[test]
fn mean_auc_matches_scikit_learn_on_the_repository_sets() {
    check(util::data("tabular"));
}

#[test]
fn mean_auc_matches_scikit_learn_on_every_shared_set() {
    if let Some(dir) = util::shared_data("tabular") {
        check(dir);
    }
}
