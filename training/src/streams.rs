//! `isoflow-train eval --truth`: a stream's detection figures against a
//! truth file of the shared format (`line,label,kind,split`, one row per
//! stream line), on its `test` lines only.
//!
//! Printed: ROC AUC and average precision of the score; the alert flag's
//! F1, FAR and MAR with counts pooled over the lines (SKAB's "binary"
//! leaderboard metric: F1 = TP / (TP + (FN + FP) / 2)); and at a 1% alert
//! rate (score at or above the k-th largest test score, k = ⌈0.01 n⌉) the
//! precision and the recall per anomaly kind.

use crate::eval::{average_precision, roc_auc};
use crate::TrainError;
use std::collections::BTreeMap;

/// One truth row.
#[derive(Clone, Debug, PartialEq)]
pub struct Truth {
    /// 1 for an anomalous line.
    pub label: bool,
    /// Anomaly kind, `normal` otherwise.
    pub kind: String,
    /// `train` or `test`.
    pub test: bool,
}

/// Reads a truth CSV (`line,label,kind,split`; `.gz` too).
pub fn read_truth(path: &str) -> Result<Vec<Truth>, TrainError> {
    let bad = |m: String| TrainError::Data(format!("truth file {path}: {m}"));
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let text = if path.ends_with(".gz") {
        return Err(bad(
            "is gzip-compressed: decompress it first (gunzip -k)".into()
        ));
    } else {
        String::from_utf8(bytes).map_err(|e| bad(e.to_string()))?
    };
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| bad(format!("no '{name}' column (header: {})", header.join(","))))
    };
    let (line, label, kind, split) = (col("line")?, col("label")?, col("kind")?, col("split")?);
    let mut out = Vec::new();
    for (i, row) in lines.enumerate() {
        let f: Vec<&str> = row.split(',').collect();
        let get = |c: usize| f.get(c).copied().unwrap_or_default().trim();
        if get(line).parse::<usize>().ok() != Some(i) {
            return Err(bad(format!(
                "row {} has line '{}': rows must be numbered 0, 1, ... in order",
                i + 1,
                get(line)
            )));
        }
        out.push(Truth {
            label: get(label) == "1",
            kind: get(kind).to_owned(),
            test: get(split) == "test",
        });
    }
    Ok(out)
}

/// A stream's figures on its test lines.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamReport {
    /// Test lines.
    pub lines: usize,
    /// Anomalous test lines.
    pub anomalies: usize,
    /// ROC AUC of the score.
    pub roc_auc: f64,
    /// Average precision of the score.
    pub average_precision: f64,
    /// Pooled counts of the alert flag: TP, FP, TN, FN.
    pub counts: [usize; 4],
    /// F1 = TP / (TP + (FN + FP) / 2).
    pub f1: f64,
    /// False alarm rate, % of normal lines alerted.
    pub far: f64,
    /// Missed alarm rate, % of anomalous lines not alerted.
    pub mar: f64,
    /// Precision at a 1% alert rate.
    pub precision_at_1pct: f64,
    /// Recall per anomaly kind at a 1% alert rate.
    pub recall_at_1pct: BTreeMap<String, f64>,
}

/// Figures of `scores` and `alerts` (one per stream line) on the test lines.
pub fn evaluate(
    scores: &[f64],
    alerts: &[bool],
    truth: &[Truth],
) -> Result<StreamReport, TrainError> {
    if scores.len() != truth.len() {
        return Err(TrainError::Data(format!(
            "{} scored lines but {} truth rows",
            scores.len(),
            truth.len()
        )));
    }
    let test: Vec<usize> = (0..truth.len()).filter(|&i| truth[i].test).collect();
    if test.is_empty() {
        return Err(TrainError::Data("the truth file has no test lines".into()));
    }
    let s: Vec<f64> = test.iter().map(|&i| scores[i]).collect();
    let y: Vec<bool> = test.iter().map(|&i| truth[i].label).collect();
    let mut c = [0usize; 4];
    for &i in &test {
        let idx = match (alerts[i], truth[i].label) {
            (true, true) => 0,
            (true, false) => 1,
            (false, false) => 2,
            (false, true) => 3,
        };
        c[idx] += 1;
    }
    let [tp, fp, tn, fn_] = c.map(|v| v as f64);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let k = (0.01 * s.len() as f64).ceil() as usize;
    let mut sorted = s.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let cut = sorted[k.clamp(1, sorted.len()) - 1];
    let top: Vec<bool> = s.iter().map(|&v| v >= cut).collect();
    let alerted = top.iter().filter(|&&t| t).count();
    let hits = top.iter().zip(&y).filter(|(&t, &l)| t && l).count();
    let mut per_kind: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (j, &i) in test.iter().enumerate() {
        if truth[i].label {
            let e = per_kind.entry(truth[i].kind.clone()).or_default();
            e.0 += 1;
            e.1 += usize::from(top[j]);
        }
    }
    Ok(StreamReport {
        lines: test.len(),
        anomalies: y.iter().filter(|&&l| l).count(),
        roc_auc: roc_auc(&s, &y).unwrap_or(f64::NAN),
        average_precision: average_precision(&s, &y).unwrap_or(f64::NAN),
        counts: c,
        f1: ratio(tp, tp + (fn_ + fp) / 2.0),
        far: 100.0 * ratio(fp, fp + tn),
        mar: 100.0 * ratio(fn_, fn_ + tp),
        precision_at_1pct: ratio(hits as f64, alerted as f64),
        recall_at_1pct: per_kind
            .into_iter()
            .map(|(k, (n, hit))| (k, hit as f64 / n as f64))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(label: bool, kind: &str, test: bool) -> Truth {
        Truth {
            label,
            kind: kind.into(),
            test,
        }
    }

    #[test]
    fn test_lines_only_and_skab_f1() {
        let truth = vec![
            t(true, "spike", false),
            t(false, "normal", true),
            t(true, "spike", true),
            t(true, "dip", true),
            t(false, "normal", true),
        ];
        let scores = [9.0, 0.1, 0.9, 0.2, 0.3];
        let alerts = [true, false, true, false, true];
        let r = evaluate(&scores, &alerts, &truth).unwrap();
        assert_eq!(r.lines, 4);
        assert_eq!(r.counts, [1, 1, 1, 1]);
        assert!((r.f1 - 0.5).abs() < 1e-12);
        assert!((r.far - 50.0).abs() < 1e-12 && (r.mar - 50.0).abs() < 1e-12);
        assert!((r.roc_auc - 0.75).abs() < 1e-12, "{}", r.roc_auc);
        // 1% of 4 lines is the single top score, the spike.
        assert_eq!(r.recall_at_1pct["spike"], 1.0);
        assert_eq!(r.recall_at_1pct["dip"], 0.0);
        assert_eq!(r.precision_at_1pct, 1.0);
    }
}
