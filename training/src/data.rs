//! Loading training data: numeric CSV columns, or any input replayed through
//! a feature spec with the service's own feature pipeline.

use crate::TrainError;
use isoflow_core::features::{CpuZEngine, FeaturePipeline, DEFAULT_SLOT_CAPACITY};
use isoflow_core::input::{self, Wanted};
use isoflow_core::model::pb;

/// A training matrix.
#[derive(Clone, Debug)]
pub struct TrainingData {
    /// Feature spec the matrix was built with.
    pub spec: pb::FeatureSpec,
    /// Row-major `rows × dims` f32 values.
    pub matrix: Vec<f32>,
    /// Rows.
    pub rows: usize,
    /// Labels, when a label column was present.
    pub labels: Option<Vec<bool>>,
    /// Columns skipped because they were not numeric.
    pub skipped: Vec<String>,
    /// Records set aside because they could not be read (JSON lines input).
    pub rejected: Vec<String>,
}

impl TrainingData {
    /// Feature columns.
    pub fn dims(&self) -> usize {
        self.spec.features.len()
    }

    /// FNV-1a digest of shape and values, so a model records what it saw.
    pub fn fingerprint(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h ^= b as u64;
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        eat(&(self.rows as u64).to_le_bytes());
        eat(&(self.dims() as u64).to_le_bytes());
        for x in &self.matrix {
            eat(&x.to_bits().to_le_bytes());
        }
        format!("fnv1a64:{h:016x}")
    }
}

/// Reads a CSV and uses every numeric column not in `ignore` as a feature.
/// A column named `label` (when it is in `ignore`, the default) becomes the
/// labels: nonzero is anomalous.
pub fn load_numeric_csv(
    path: &str,
    ignore: &[String],
    label: &str,
) -> Result<TrainingData, TrainError> {
    let file = std::fs::File::open(path)
        .map_err(|e| TrainError::Data(format!("cannot open {path}: {e}")))?;
    let mut csv = csv::Reader::from_reader(std::io::BufReader::with_capacity(1 << 20, file));
    let header: Vec<String> = csv
        .headers()
        .map_err(|e| TrainError::Data(format!("{path}: {e}")))?
        .iter()
        .map(|h| h.trim().to_owned())
        .collect();
    let mut columns: Vec<Option<Vec<f64>>> = vec![Some(Vec::new()); header.len()];
    let mut record = csv::ByteRecord::new();
    let mut rows = 0;
    while csv
        .read_byte_record(&mut record)
        .map_err(|e| TrainError::Data(format!("{path}: {e}")))?
    {
        rows += 1;
        for (i, col) in columns.iter_mut().enumerate() {
            if let Some(values) = col {
                match input::parse_number(record.get(i).unwrap_or_default(), rows, &header[i]) {
                    Ok(v) => values.push(v),
                    Err(_) => *col = None,
                }
            }
        }
    }
    let label_at = header.iter().position(|h| h == label);
    let labels = match label_at {
        Some(i) => Some(
            columns[i]
                .as_ref()
                .ok_or_else(|| {
                    TrainError::Data(format!("{path}: label column '{label}' is not numeric"))
                })?
                .iter()
                .map(|&v| v != 0.0)
                .collect(),
        ),
        None => None,
    };
    let mut names = Vec::new();
    let mut skipped = Vec::new();
    let mut kept = Vec::new();
    for (i, name) in header.iter().enumerate() {
        if ignore.iter().any(|x| x == name) || Some(i) == label_at {
            continue;
        }
        match columns[i].take() {
            Some(values) => {
                names.push(name.clone());
                kept.push(values);
            }
            None => skipped.push(name.clone()),
        }
    }
    if names.is_empty() {
        return Err(TrainError::Data(format!(
            "{path}: no numeric feature columns (header: {}; ignored: {})",
            header.join(","),
            ignore.join(",")
        )));
    }
    let dims = names.len();
    let mut matrix = vec![0f32; rows * dims];
    for (j, values) in kept.iter().enumerate() {
        for (r, &v) in values.iter().enumerate() {
            matrix[r * dims + j] = v as f32;
        }
    }
    Ok(TrainingData {
        spec: isoflow_core::features::spec::fields_spec(&names),
        matrix,
        rows,
        labels,
        skipped,
        rejected: Vec::new(),
    })
}

/// Replays `path` (CSV or JSON lines) through the feature pipeline of `spec`
/// in record order, exactly as the service would see it.
pub fn load_with_spec(
    path: &str,
    spec: pb::FeatureSpec,
    label: &str,
) -> Result<TrainingData, TrainError> {
    let mut pipeline = FeaturePipeline::new(&spec, DEFAULT_SLOT_CAPACITY);
    let (columns, rejected) = if input::Format::detect(path, None) == input::Format::JsonLines {
        let file = std::fs::File::open(path)
            .map_err(|e| TrainError::Data(format!("cannot open {path}: {e}")))?;
        input::read_jsonl_lenient(std::io::BufReader::new(file), pipeline.wanted())?
    } else {
        (input::read_path(path, pipeline.wanted())?, Vec::new())
    };
    let skipped: Vec<String> = rejected.iter().map(|e| e.to_string()).collect();
    let batch = pipeline.compute(&columns, &mut CpuZEngine::default())?;
    let labels = match input::read_path(
        path,
        &Wanted {
            numeric: vec![label.to_owned()],
            keys: vec![],
            time: None,
        },
    ) {
        Ok(c) => Some(c.numeric[0].iter().map(|&v| v != 0.0).collect()),
        Err(_) => None,
    };
    Ok(TrainingData {
        spec,
        matrix: batch.matrix,
        rows: batch.rows,
        labels,
        skipped: Vec::new(),
        rejected: skipped,
    })
}
