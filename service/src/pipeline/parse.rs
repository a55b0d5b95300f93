//! Turning records into feature columns. The collecting thread parses each
//! record as it arrives ([`Parsing`]), so the next batch is collected and
//! parsed while this one is scored and published.

use crate::dlq::Rejection;
use crate::features::FeaturePipeline;
use crate::input::{Columns, RowError, RowReader, Wanted};
use crate::kafka::{RecordBatch, RecordRef};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How records are parsed: the collecting thread replaces the reader when a
/// new live model reads other fields.
#[derive(Clone)]
pub(super) struct Parser {
    /// Reader for the live model's fields.
    pub(super) reader: Arc<RowReader>,
    /// Larger messages are rejected as `too_large`.
    pub(super) max_bytes: usize,
}

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
    /// [`RecordBatch::next_offsets`] of the records: where the collector
    /// resumes, and what a commit of the batch stores.
    pub(super) next_offsets: std::collections::BTreeMap<i32, i64>,
    /// When the batch was complete, and how long parsing took (estimated).
    pub(super) flushed_at: Instant,
    pub(super) parse_time: Duration,
    /// Partitions given up or gained before these records came: their
    /// per-key state is released or restored before they are scored.
    pub(super) moves: super::changelog::StateMoves,
}

impl Parser {
    /// Follows the live model: when `live` changed since last seen and the
    /// new model reads other fields, reads those from now on.
    pub(super) fn follow(&mut self, live: &mut LiveModel) {
        if !live.has_changed().unwrap_or(false) {
            return;
        }
        let wanted = FeaturePipeline::wanted_for(&live.borrow_and_update());
        if self.reader.wanted() != &wanted {
            self.reader = Arc::new(RowReader::new(&wanted));
        }
    }
}

/// The live model as the pipeline's handle publishes it.
pub(super) type LiveModel = tokio::sync::watch::Receiver<Arc<crate::model::pb::Model>>;

impl ParsedBatch {
    /// This batch as read for `wanted`: itself when it was, else parsed
    /// again. The pipeline lets a model that reads other fields go live
    /// only with the first batch parsed for it, so this is a fallback
    /// (several such models deployed within one batch): a record that only
    /// the new fields reject reaches the DLQ without its original headers.
    pub(super) fn for_fields(self, wanted: &Wanted, max_bytes: usize) -> ParsedBatch {
        if self.reader.wanted() == wanted {
            return self;
        }
        let parser = Parser {
            reader: Arc::new(RowReader::new(wanted)),
            max_bytes,
        };
        let (parse_time, moves) = (self.parse_time, self.moves);
        let mut again = parse(&parser, self.records, self.flushed_at);
        again.parse_time += parse_time;
        again.moves = moves;
        again
    }
}

/// Parses `records` (a batch completed at `flushed_at`) with `parser`.
pub(super) fn parse(parser: &Parser, records: RecordBatch, flushed_at: Instant) -> ParsedBatch {
    let mut parsing = Parsing::new(parser, records.len(), None);
    for i in 0..records.len() {
        parsing.push(&records, i);
    }
    parsing.finish(records, flushed_at)
}

/// Records between two timed parses: timing every record would cost more
/// clock readings than the parsing itself is worth.
const TIME_EVERY: u32 = 32;

/// One batch being parsed, record by record, as it is collected.
pub(super) struct Parsing {
    reader: Arc<RowReader>,
    max_bytes: usize,
    columns: Columns,
    accepted: Vec<usize>,
    rejected: Vec<(usize, Rejection)>,
    /// Estimated parsing time: every [`TIME_EVERY`]th record is timed.
    spent: Duration,
    untimed: u32,
}

impl Parsing {
    /// A batch of up to about `records` records parsed with `parser`, into
    /// `spare` columns of an earlier batch when there are some.
    pub(super) fn new(parser: &Parser, records: usize, spare: Option<Columns>) -> Self {
        let wanted = parser.reader.wanted();
        let columns = match spare {
            Some(mut columns) => {
                columns.reuse(wanted);
                columns
            }
            None => Columns::with_capacity(wanted, records),
        };
        Self {
            reader: parser.reader.clone(),
            max_bytes: parser.max_bytes,
            columns,
            accepted: Vec::with_capacity(records),
            rejected: Vec::new(),
            spent: Duration::ZERO,
            untimed: 0,
        }
    }

    /// Parses record `i` of `records`, the next one; true when it was
    /// rejected (the caller then keeps its headers for the DLQ).
    pub(super) fn push(&mut self, records: &RecordBatch, i: usize) -> bool {
        let record = records.get(i);
        let timed = self.untimed == 0;
        self.untimed = (self.untimed + 1) % TIME_EVERY;
        let started = timed.then(Instant::now);
        let rejection = parse_one(
            &self.reader,
            &mut self.columns,
            record,
            i + 1,
            self.max_bytes,
        );
        if let Some(started) = started {
            self.spent += started.elapsed() * TIME_EVERY;
        }
        match rejection {
            None => {
                self.accepted.push(i);
                self.columns.partition.push(record.partition);
                false
            }
            Some(rejection) => {
                self.rejected.push((i, rejection));
                true
            }
        }
    }

    /// The parsed batch of `records`, every one of them pushed, completed at
    /// `flushed_at`.
    pub(super) fn finish(self, records: RecordBatch, flushed_at: Instant) -> ParsedBatch {
        debug_assert_eq!(self.accepted.len() + self.rejected.len(), records.len());
        ParsedBatch {
            next_offsets: records.next_offsets(),
            records,
            columns: self.columns,
            accepted: self.accepted,
            rejected: self.rejected,
            reader: self.reader,
            flushed_at,
            parse_time: self.spent,
            moves: Default::default(),
        }
    }
}

/// Appends one record to `cols` as row `row`; `None` when it became a row,
/// else why not.
fn parse_one(
    reader: &RowReader,
    cols: &mut Columns,
    record: RecordRef,
    row: usize,
    max_bytes: usize,
) -> Option<Rejection> {
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
    match reader.push(cols, value, row, broker_time) {
        Ok(()) => None,
        Err(RowError::NotJson(e)) => Some(Rejection {
            class: "invalid_json",
            reason: format!("not JSON: {e}"),
        }),
        Err(RowError::Input(e)) => Some(Rejection::from_input(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{OwnedMessage, Timestamp};

    fn batch(values: &[&[u8]]) -> RecordBatch {
        let mut batch = RecordBatch::with_capacity(values.len(), 0);
        for (i, v) in values.iter().enumerate() {
            batch.push(&OwnedMessage::new(
                Some(v.to_vec()),
                Some(b"k".to_vec()),
                "in".into(),
                Timestamp::CreateTime(1_000 * (i as i64 + 1)),
                0,
                i as i64,
                None,
            ));
        }
        batch
    }

    #[test]
    fn rows_in_order_and_every_rejection_with_its_reason() {
        let wanted = Wanted {
            numeric: vec!["x".into()],
            keys: vec!["k".into()],
            time: None,
        };
        let parser = Parser {
            reader: Arc::new(RowReader::new(&wanted)),
            max_bytes: 40,
        };
        let records = batch(&[
            br#"{"x":1.5,"k":"a"}"#,
            br#"{"x":1.5,"k":"a""#,
            br#"{"x":2,"k":"b","pad":"..............................."}"#,
            br#"{"k":"c"}"#,
            br#"{"x":"1e999","k":"d"}"#,
            br#"{"x":[1],"k":"e"}"#,
            br#"{"x":-3,"k":"a"}"#,
        ]);
        let parsed = parse(&parser, records, Instant::now());
        assert_eq!(parsed.accepted, vec![0, 6]);
        let classes: Vec<(usize, &str)> =
            parsed.rejected.iter().map(|(i, r)| (*i, r.class)).collect();
        assert_eq!(
            classes,
            vec![
                (1, "invalid_json"),
                (2, "too_large"),
                (3, "missing_field"),
                (4, "non_finite"),
                (5, "wrong_type")
            ]
        );
        assert_eq!(parsed.columns.numeric[0], vec![1.5, -3.0]);
        assert_eq!(
            parsed.columns.keys[0].iter().collect::<Vec<_>>(),
            vec!["a", "a"]
        );
        // Without an event-time field, rows carry the broker timestamps.
        assert_eq!(parsed.columns.time, vec![1.0, 7.0]);

        // A live model that reads other fields: the batch is read again.
        let other = Wanted {
            numeric: vec![],
            keys: vec!["k".into()],
            time: None,
        };
        let again = parsed.for_fields(&other, 40);
        assert_eq!(again.reader.wanted(), &other);
        assert_eq!(again.accepted, vec![0, 3, 4, 5, 6]);
        assert_eq!(
            again.columns.keys[0].iter().collect::<Vec<_>>(),
            vec!["a", "c", "d", "e", "a"]
        );
        let same = again.for_fields(&other, 40);
        assert_eq!(same.accepted.len(), 5);
    }
}
