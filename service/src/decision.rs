//! The alert decision: forest score against the model threshold, or any
//! z-feature's |z| against its own threshold.

/// True when a record alerts. `z` holds the record's |z| per z-feature and
/// `z_alert` the per-feature thresholds (0 disables that rule).
#[inline]
pub fn is_alert(score: f32, threshold: f64, z: &[f32], z_alert: &[f32]) -> bool {
    score as f64 >= threshold
        || z.iter()
            .zip(z_alert)
            .any(|(&z, &limit)| limit > 0.0 && z >= limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forest_or_z_rule() {
        assert!(is_alert(0.7, 0.6, &[], &[]));
        assert!(is_alert(0.6, 0.6, &[], &[]));
        assert!(!is_alert(0.5, 0.6, &[9.0], &[0.0]));
        assert!(is_alert(0.5, 0.6, &[9.0], &[6.0]));
        assert!(is_alert(0.5, 0.6, &[f32::INFINITY], &[6.0]));
    }
}
