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
    let mut h = OwnedHeaders::new_with_capacity(original.len() + 5);
    for (key, value) in original {
        h = h.insert(Header { key, value });
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
