//! The alert decision: the forest score against the model threshold, or any
//! feature rule (|z|, rate, gap, repeat) against its own limit.

use crate::features::Rule;
use crate::score::RowScore;

/// True when a record alerts. `features` is the record's feature vector.
#[inline]
pub fn is_alert(score: f32, threshold: f64, features: &[f32], rules: &[Rule]) -> bool {
    score as f64 >= threshold || rules.iter().any(|r| features[r.column] >= r.limit)
}

/// Decisions for a batch: `matrix` holds the rows' feature vectors.
pub fn decide(scores: &[RowScore], matrix: &[f32], threshold: f64, rules: &[Rule]) -> Vec<bool> {
    if scores.is_empty() {
        return Vec::new();
    }
    let dims = matrix.len() / scores.len();
    scores
        .iter()
        .zip(matrix.chunks_exact(dims.max(1)))
        .map(|(s, row)| is_alert(s.score, threshold, row, rules))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forest_or_rule() {
        let rule = |limit| {
            vec![Rule {
                name: "z".into(),
                column: 1,
                limit,
            }]
        };
        assert!(is_alert(0.7, 0.6, &[0.0, 0.0], &[]));
        assert!(is_alert(0.6, 0.6, &[0.0, 0.0], &[]));
        assert!(!is_alert(0.5, 0.6, &[0.0, 9.0], &[]));
        assert!(is_alert(0.5, 0.6, &[0.0, 9.0], &rule(6.0)));
        assert!(!is_alert(0.5, 0.6, &[9.0, 5.9], &rule(6.0)));
        assert!(is_alert(0.5, 0.6, &[0.0, f32::INFINITY], &rule(6.0)));
    }
}
