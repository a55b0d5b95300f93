//! Turning a batch of records into feature columns, on all cores. It runs on
//! the collecting thread, so the next batch is parsed while this one is
//! scored and published.

use crate::dlq::Rejection;
use crate::input::{Columns, RowError, RowReader};
use crate::kafka::RecordBatch;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Records per parsing task: small enough to spread a batch over the cores,
/// big enough that merging the parts costs little.
const PARSE_CHUNK: usize = 1024;

/// How records are parsed; the pipeline replaces the reader when a new live
/// model reads other fields.
#[derive(Clone)]
pub(super) struct Parser {
    /// Reader for the live model's fields.
    pub(super) reader: Arc<RowReader>,
    /// Larger messages are rejected as `too_large`.
    pub(super) max_bytes: usize,
}

/// The parser the collecting thread uses for its next batch.
pub(super) type SharedParser = Arc<Mutex<Parser>>;

/// A batch as handed to the pipeline.
pub(super) struct ParsedBatch {
    /// The records, in consumed order.
    pub(super) records: RecordBatch,
    /// Feature columns of the accepted records, in order.
    pub(super) columns: Columns,
    /// Indices of the records that became rows, in order.
    pub(super) accepted: Vec<usize>,
    /// Indices of the records that could not, and why.
    pub(super) rejected: Vec<(usize, Rejection)>,
    /// The reader the columns were made with.
    pub(super) reader: Arc<RowReader>,
    /// When the batch was complete, and how long parsing took.
    pub(super) flushed_at: Instant,
    pub(super) parse_time: Duration,
}

/// Parses `records` (a batch completed at `flushed_at`) with `parser`.
pub(super) fn parse(parser: &Parser, records: RecordBatch, flushed_at: Instant) -> ParsedBatch {
    use rayon::prelude::*;
    let reader = parser.reader.clone();
    let n = records.len();
    let parts: Vec<(Columns, Vec<Option<Rejection>>)> = (0..n.div_ceil(PARSE_CHUNK))
        .into_par_iter()
        .map(|c| {
            let chunk = c * PARSE_CHUNK..n.min((c + 1) * PARSE_CHUNK);
            parse_chunk(&reader, &records, chunk, parser.max_bytes)
        })
        .collect();
    let mut columns = Columns::with_capacity(reader.wanted(), n);
    let mut accepted: Vec<usize> = Vec::with_capacity(records.len());
    let mut rejected: Vec<(usize, Rejection)> = Vec::new();
    for (c, (part, outcomes)) in parts.into_iter().enumerate() {
        columns.append(part);
        for (j, outcome) in outcomes.into_iter().enumerate() {
            let i = c * PARSE_CHUNK + j;
            match outcome {
                None => accepted.push(i),
                Some(rejection) => rejected.push((i, rejection)),
            }
        }
    }
    ParsedBatch {
        records,
        columns,
        accepted,
        rejected,
        reader,
        flushed_at,
        parse_time: flushed_at.elapsed(),
    }
}

/// Parses records `chunk` of a batch into columns of its own; per record, `None`
/// when it became a row, else why not.
fn parse_chunk(
    reader: &RowReader,
    records: &RecordBatch,
    chunk: std::ops::Range<usize>,
    max_bytes: usize,
) -> (Columns, Vec<Option<Rejection>>) {
    let mut cols = Columns::with_capacity(reader.wanted(), chunk.len());
    let outcomes = chunk
        .enumerate()
        .map(|(j, i)| {
            let record = records.get(i);
            let value = record.value.unwrap_or_default();
            if value.len() > max_bytes {
                return Some(Rejection {
                    class: "too_large",
                    reason: format!(
                        "message of {} bytes exceeds max_message_bytes {max_bytes}",
                        value.len()
                    ),
                });
            }
            let broker_time = record.timestamp_ms.map(|ms| ms as f64 / 1e3);
            match reader.push(&mut cols, value, j + 1, broker_time) {
                Ok(()) => None,
                Err(RowError::NotJson(e)) => Some(Rejection {
                    class: "invalid_json",
                    reason: format!("not JSON: {e}"),
                }),
                Err(RowError::Input(e)) => Some(Rejection::from_input(&e)),
            }
        })
        .collect();
    (cols, outcomes)
}
