//! Detection metrics: ROC AUC, PR AUC, and precision/recall at a threshold.

use linfa::dataset::Pr;
use linfa::prelude::BinaryClassification;
use serde::Serialize;

/// Metrics of scores against labels.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Evaluation {
    /// Rows evaluated.
    pub rows: usize,
    /// Rows labelled anomalous.
    pub positives: usize,
    /// Area under the ROC curve (Mann–Whitney, average ranks for ties).
    pub roc_auc: f64,
    /// Area under the precision–recall curve (average precision).
    pub pr_auc: f64,
    /// Threshold the decision used.
    pub threshold: f64,
    /// Share of alerts that are labelled anomalies.
    pub precision: f64,
    /// Share of labelled anomalies that alert.
    pub recall: f64,
    /// Rows at or above the threshold.
    pub alerts: usize,
}

/// ROC AUC by the Mann–Whitney statistic: scores ranked ascending, ties
/// sharing their average rank. `None` when only one class is present.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let p = labels.iter().filter(|&&l| l).count();
    let n = labels.len() - p;
    if p == 0 || n == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += order[i..=j].iter().filter(|&&k| labels[k]).count() as f64 * avg_rank;
        i = j + 1;
    }
    Some((rank_sum - (p * (p + 1)) as f64 / 2.0) / (p as f64 * n as f64))
}

/// Average precision: Σ (Rₖ − Rₖ₋₁) Pₖ over distinct score thresholds, high to low.
pub fn average_precision(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let p = labels.iter().filter(|&&l| l).count();
    if p == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut seen, mut ap, mut last_recall) = (0usize, 0usize, 0.0, 0.0);
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        tp += order[i..=j].iter().filter(|&&k| labels[k]).count();
        seen += j - i + 1;
        let recall = tp as f64 / p as f64;
        ap += (recall - last_recall) * tp as f64 / seen as f64;
        last_recall = recall;
        i = j + 1;
    }
    Some(ap)
}

/// ROC curve points (false-positive rate, true-positive rate) from linfa's
/// ROC, ordered from the strictest threshold to the loosest.
pub fn roc_curve(scores: &[f64], labels: &[bool]) -> Vec<(f64, f64)> {
    let lo = scores.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let span = if hi > lo { hi - lo } else { 1.0 };
    // linfa wants probabilities in [0, 1]: rescale, which keeps the order.
    let probs: Vec<Pr> = scores
        .iter()
        .map(|&s| Pr::new(((s - lo) / span) as f32))
        .collect();
    let Ok(roc) = probs.as_slice().roc(labels) else {
        return Vec::new();
    };
    // linfa accumulates from the lowest score: (share of positives, share of
    // negatives) at or below each threshold. The complement is the ROC point.
    let mut curve: Vec<(f64, f64)> = roc
        .get_curve()
        .iter()
        .map(|&(tp, fp)| (1.0 - fp as f64, 1.0 - tp as f64))
        .collect();
    curve.reverse();
    // The loosest threshold (everything flagged) is implicit in linfa's curve.
    if curve.last() != Some(&(1.0, 1.0)) {
        curve.push((1.0, 1.0));
    }
    curve
}

/// Full evaluation at `threshold` (alert when score ≥ threshold).
pub fn evaluate(scores: &[f64], labels: &[bool], threshold: f64) -> Evaluation {
    let alerts = scores.iter().filter(|&&s| s >= threshold).count();
    let tp = scores
        .iter()
        .zip(labels)
        .filter(|(&s, &l)| l && s >= threshold)
        .count();
    let positives = labels.iter().filter(|&&l| l).count();
    Evaluation {
        rows: scores.len(),
        positives,
        roc_auc: roc_auc(scores, labels).unwrap_or(f64::NAN),
        pr_auc: average_precision(scores, labels).unwrap_or(f64::NAN),
        threshold,
        precision: if alerts == 0 {
            0.0
        } else {
            tp as f64 / alerts as f64
        },
        recall: if positives == 0 {
            0.0
        } else {
            tp as f64 / positives as f64
        },
        alerts,
    }
}

/// Score at or above which the top `contamination` share of `scores` lies:
/// the (1 − contamination) percentile with linear interpolation, as
/// scikit-learn sets `offset_`.
pub fn contamination_threshold(scores: &[f64], contamination: f64) -> f64 {
    let mut sorted = scores.to_vec();
    sorted.sort_by(f64::total_cmp);
    let pos = (1.0 - contamination) * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_with_ties_uses_average_ranks() {
        assert_eq!(
            roc_auc(&[0.1, 0.2, 0.3, 0.4], &[false, false, true, true]),
            Some(1.0)
        );
        assert_eq!(
            roc_auc(&[0.4, 0.3, 0.2, 0.1], &[false, false, true, true]),
            Some(0.0)
        );
        assert_eq!(roc_auc(&[0.5, 0.5], &[false, true]), Some(0.5));
        // P = 1 at rank 2.5 among {0.1, 0.5, 0.5, 0.9}: (2.5 - 1) / 3.
        let auc = roc_auc(&[0.1, 0.5, 0.5, 0.9], &[false, true, false, false]).unwrap();
        assert!((auc - 0.5).abs() < 1e-12);
        assert_eq!(roc_auc(&[0.1], &[true]), None);
    }

    #[test]
    fn average_precision_known_values() {
        // Ranking: + - + -  → AP = 0.5·1 + 0.5·(2/3)
        let ap = average_precision(&[0.9, 0.8, 0.7, 0.6], &[true, false, true, false]).unwrap();
        assert!((ap - (0.5 + 1.0 / 3.0)).abs() < 1e-12);
    }

    #[test]
    fn linfa_curve_area_matches_rank_auc() {
        let scores: Vec<f64> = (0..200)
            .map(|i| ((i * 37) % 101) as f64 / 100.0 + i as f64 * 1e-4)
            .collect();
        // Labels follow the score loosely: overlapping classes, AUC well inside (0.5, 1).
        let labels: Vec<bool> = (0..200)
            .map(|i| (((i * 37) % 101) + (i * 53) % 41) > 95)
            .collect();
        let curve = roc_curve(&scores, &labels);
        let area: f64 = curve
            .windows(2)
            .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
            .sum();
        let auc = roc_auc(&scores, &labels).unwrap();
        assert!(auc > 0.6 && auc < 0.99, "{auc}");
        assert!((area - auc).abs() < 1e-3, "{area} vs {auc}");
        assert_eq!(curve.first(), Some(&(0.0, 0.0)));
        assert_eq!(curve.last(), Some(&(1.0, 1.0)));
    }

    #[test]
    fn threshold_and_precision_recall() {
        let scores: Vec<f64> = (0..100).map(|i| i as f64).collect();
        let t = contamination_threshold(&scores, 0.1);
        assert!((t - 89.1).abs() < 1e-9);
        let labels: Vec<bool> = (0..100).map(|i| i >= 95).collect();
        let e = evaluate(&scores, &labels, t);
        assert_eq!(e.alerts, 10);
        assert_eq!(e.precision, 0.5);
        assert_eq!(e.recall, 1.0);
    }
}
