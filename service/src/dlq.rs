//! Dead-letter messages: the original key and value bytes untouched, with the
//! reason and source coordinates in headers, as Kafka Connect's dead-letter
//! queues do. Nothing that cannot be scored is dropped silently.

use rdkafka::message::{Header, OwnedHeaders};

/// Header carrying the reason code: `invalid_json`, `missing_field`,
/// `wrong_type`, `non_finite` or `too_large`.
pub const REASON: &str = "isoflow.error.reason";
/// Header carrying the human-readable message.
pub const MESSAGE: &str = "isoflow.error.message";
/// Header carrying the source topic.
pub const TOPIC: &str = "isoflow.source.topic";
/// Header carrying the source partition.
pub const PARTITION: &str = "isoflow.source.partition";
/// Header carrying the source offset.
pub const OFFSET: &str = "isoflow.source.offset";
/// Header present when the value is a truncated copy: the original's size in
/// bytes (the full record stays at its source coordinates).
pub const TRUNCATED: &str = "isoflow.value.truncated_from";
/// Header present when the record's own headers were left out to fit: their
/// number.
pub const HEADERS_DROPPED: &str = "isoflow.headers.dropped";

/// Reason code of a record whose output the broker or client can never take
/// (too large, unknown topic, not authorised): the record itself, in the DLQ.
pub const UNDELIVERABLE: &str = "undeliverable";

/// Room kept for the message's framing and our own headers when sizing a
/// bounded copy against the producer's `message.max.bytes`.
const FRAMING: usize = 4096;

/// Default of librdkafka's `message.max.bytes`, the largest message the
/// producer accepts.
pub const PRODUCER_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// A DLQ copy of one record that fits the producer's message limit: the
/// original bytes when they fit, else a prefix of the value (and without the
/// original headers when those alone do not fit), saying so in headers.
#[derive(Debug, PartialEq, Eq)]
pub struct BoundedCopy<'a> {
    /// Key bytes.
    pub key: &'a [u8],
    /// Value bytes, possibly a prefix.
    pub value: &'a [u8],
    /// Original size of a truncated value.
    pub truncated_from: Option<usize>,
    /// Whether the record's own headers are kept.
    pub keep_headers: bool,
}

/// Sizes a DLQ copy of (`key`, `value`, headers of `header_bytes` in all) for
/// a producer whose messages may be `limit` bytes.
pub fn bounded<'a>(
    key: &'a [u8],
    value: &'a [u8],
    header_bytes: usize,
    limit: usize,
) -> BoundedCopy<'a> {
    let room = limit.saturating_sub(FRAMING);
    // A key is an id; one larger than a quarter of the room is cut too.
    let key = &key[..key.len().min(room / 4)];
    let keep_headers = key.len() + header_bytes <= room / 2;
    let used = key.len() + if keep_headers { header_bytes } else { 0 };
    let fits = room.saturating_sub(used);
    let truncated_from = (value.len() > fits).then_some(value.len());
    BoundedCopy {
        key,
        value: &value[..value.len().min(fits)],
        truncated_from,
        keep_headers,
    }
}

/// Why a record could not be scored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Reason code (the `isoflow.error.reason` header and the metrics label).
    pub class: &'static str,
    /// Human-readable message.
    pub reason: String,
}

impl Rejection {
    /// Classifies an input error.
    pub fn from_input(e: &crate::input::InputError) -> Self {
        use crate::input::InputError::*;
        let class = match e {
            MissingField { .. } | MissingColumn { .. } => "missing_field",
            // Valid JSON that is not an object, or a value that is not a
            // number: the record is JSON, its types are wrong.
            NotANumber { .. } | Json { .. } => "wrong_type",
            NonFinite { .. } => "non_finite",
            Io(_) | Csv(_) => "invalid_json",
        };
        // Row numbers mean nothing inside a stream batch; the source
        // coordinates travel in headers instead.
        let text = e.to_string();
        let reason = match text.split_once(": ") {
            Some((head, rest)) if head.starts_with("row ") && !head.contains(',') => {
                rest.to_owned()
            }
            _ => match text.split_once(", ") {
                Some((head, rest)) if head.starts_with("row ") => rest.to_owned(),
                _ => text,
            },
        };
        Self { class, reason }
    }
}

/// Headers of a DLQ message: the original headers, then ours.
pub fn headers<'a>(
    original: impl ExactSizeIterator<Item = (&'a str, Option<&'a [u8]>)>,
    rejection: &Rejection,
    topic: &str,
    partition: i32,
    offset: i64,
) -> OwnedHeaders {
    headers_of_copy(original, rejection, (topic, partition, offset), None, true)
}

/// [`headers`] of a [`BoundedCopy`]: the original headers only when it keeps
/// them, and the headers saying what was cut.
pub fn headers_of_copy<'a>(
    original: impl ExactSizeIterator<Item = (&'a str, Option<&'a [u8]>)>,
    rejection: &Rejection,
    (topic, partition, offset): (&str, i32, i64),
    truncated_from: Option<usize>,
    keep_headers: bool,
) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(original.len() + 7);
    let dropped = if keep_headers { 0 } else { original.len() };
    if keep_headers {
        for (key, value) in original {
            h = h.insert(Header { key, value });
        }
    }
    let cut = [
        truncated_from.map(|n| (TRUNCATED, n.to_string())),
        (dropped > 0).then(|| (HEADERS_DROPPED, dropped.to_string())),
    ];
    for (key, value) in cut.iter().flatten() {
        h = h.insert(Header {
            key,
            value: Some(value.as_str()),
        });
    }
    let partition = partition.to_string();
    let offset = offset.to_string();
    for (k, v) in [
        (REASON, rejection.class),
        (MESSAGE, rejection.reason.as_str()),
        (TOPIC, topic),
        (PARTITION, partition.as_str()),
        (OFFSET, offset.as_str()),
    ] {
        h = h.insert(Header {
            key: k,
            value: Some(v),
        });
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::InputError;

    #[test]
    fn copies_fit_the_producer_limit_and_say_what_was_cut() {
        let value = vec![b'x'; 2_000_000];
        let small = bounded(b"k", b"{}", 10, PRODUCER_MESSAGE_MAX_BYTES);
        assert_eq!(
            (small.value, small.truncated_from, small.keep_headers),
            (&b"{}"[..], None, true)
        );
        let big = bounded(b"k", &value, 10, PRODUCER_MESSAGE_MAX_BYTES);
        assert_eq!(big.truncated_from, Some(2_000_000));
        assert!(big.keep_headers);
        assert!(big.key.len() + big.value.len() + 10 + FRAMING <= PRODUCER_MESSAGE_MAX_BYTES);
        assert!(big.value.len() > 900_000);
        let heavy = bounded(b"k", &value, 800_000, PRODUCER_MESSAGE_MAX_BYTES);
        assert!(!heavy.keep_headers);
        assert!(heavy.value.len() > 900_000);
    }

    #[test]
    fn reasons_drop_batch_row_numbers() {
        let e = InputError::MissingField {
            row: 3,
            field: "amount".into(),
        };
        assert_eq!(
            Rejection::from_input(&e),
            Rejection {
                class: "missing_field",
                reason: "field 'amount' is missing".into()
            }
        );
        let e = InputError::NotANumber {
            row: 3,
            column: "amount".into(),
            value: "abc".into(),
        };
        assert_eq!(
            Rejection::from_input(&e),
            Rejection {
                class: "wrong_type",
                reason: "column 'amount': 'abc' is not a number".into()
            }
        );
        let e = InputError::NonFinite {
            row: 9,
            column: "t".into(),
            value: "NaN".into(),
        };
        assert_eq!(Rejection::from_input(&e).class, "non_finite");
    }
}
