//! Training reports: `report.json` plus PNG plots (score histogram; ROC curve
//! when labels exist), drawn with plotters.

use crate::eval::{roc_curve, Evaluation};
use crate::TrainError;
use plotters::prelude::*;
use std::path::Path;

fn plot_err(e: impl std::fmt::Display) -> TrainError {
    TrainError::Report(e.to_string())
}

/// Writes `report.json`, `score_histogram.png` and, with labels, `roc_curve.png` into `dir`.
pub fn write(
    dir: &Path,
    summary: &serde_json::Value,
    scores: &[f64],
    threshold: f64,
    labels: Option<&[bool]>,
    evaluation: Option<&Evaluation>,
) -> Result<Vec<String>, TrainError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| TrainError::Report(format!("cannot create {}: {e}", dir.display())))?;
    let mut json = summary.clone();
    json["evaluation"] = serde_json::to_value(evaluation).expect("evaluation serializes");
    let report = dir.join("report.json");
    std::fs::write(
        &report,
        serde_json::to_string_pretty(&json).expect("JSON serializes"),
    )
    .map_err(|e| TrainError::Report(format!("cannot write {}: {e}", report.display())))?;
    let mut written = vec![report.display().to_string()];
    let hist = dir.join("score_histogram.png");
    histogram(&hist, scores, threshold, labels)?;
    written.push(hist.display().to_string());
    if let Some(labels) = labels {
        if labels.iter().any(|&l| l) && labels.iter().any(|&l| !l) {
            let roc = dir.join("roc_curve.png");
            roc_plot(
                &roc,
                scores,
                labels,
                evaluation.map_or(f64::NAN, |e| e.roc_auc),
            )?;
            written.push(roc.display().to_string());
        }
    }
    Ok(written)
}

const BINS: usize = 50;

fn histogram(
    path: &Path,
    scores: &[f64],
    threshold: f64,
    labels: Option<&[bool]>,
) -> Result<(), TrainError> {
    let lo = scores
        .iter()
        .cloned()
        .fold(f64::INFINITY, f64::min)
        .min(threshold);
    let hi = scores
        .iter()
        .cloned()
        .fold(f64::NEG_INFINITY, f64::max)
        .max(threshold);
    let width = ((hi - lo) / BINS as f64).max(1e-9);
    let bin = |s: f64| (((s - lo) / width) as usize).min(BINS - 1);
    let mut normal = vec![0u32; BINS];
    let mut anomalous = vec![0u32; BINS];
    for (i, &s) in scores.iter().enumerate() {
        if labels.is_some_and(|l| l[i]) {
            anomalous[bin(s)] += 1;
        } else {
            normal[bin(s)] += 1;
        }
    }
    let top = normal
        .iter()
        .zip(&anomalous)
        .map(|(a, b)| a.max(b))
        .max()
        .copied()
        .unwrap_or(1)
        .max(1);
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Anomaly score distribution", ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(lo..hi, (0.5f64..top as f64 * 1.5).log_scale())
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("score")
        .y_desc("rows (log)")
        .draw()
        .map_err(plot_err)?;
    let bars = |counts: &[u32], color: RGBColor| {
        counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(move |(i, &c)| {
                let x0 = lo + i as f64 * width;
                Rectangle::new([(x0, 0.5), (x0 + width, c as f64)], color.mix(0.6).filled())
            })
            .collect::<Vec<_>>()
    };
    let normal_label = if labels.is_some() {
        "normal"
    } else {
        "all rows"
    };
    chart
        .draw_series(bars(&normal, BLUE))
        .map_err(plot_err)?
        .label(normal_label)
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], BLUE.filled()));
    if labels.is_some() {
        chart
            .draw_series(bars(&anomalous, RED))
            .map_err(plot_err)?
            .label("labelled anomaly")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], RED.filled()));
    }
    chart
        .draw_series(LineSeries::new(
            [(threshold, 0.5), (threshold, top as f64 * 1.5)],
            BLACK.stroke_width(2),
        ))
        .map_err(plot_err)?
        .label(format!("threshold {threshold:.4}"))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 12, y)], BLACK));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)
}

fn roc_plot(path: &Path, scores: &[f64], labels: &[bool], auc: f64) -> Result<(), TrainError> {
    let curve = roc_curve(scores, labels);
    let root = BitMapBackend::new(path, (600, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("ROC curve (AUC {auc:.4})"), ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..1f64, 0f64..1f64)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("false positive rate")
        .y_desc("true positive rate")
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.3)))
        .map_err(plot_err)?;
    chart
        .draw_series(LineSeries::new(curve, RED.stroke_width(2)))
        .map_err(plot_err)?;
    root.present().map_err(plot_err)
}
