//! Consumed records: [`Record`], one message owned, and [`RecordBatch`], a
//! batch of messages whose keys, values and headers share one buffer.

use rdkafka::message::Message;

/// One consumed message, owned.
#[derive(Clone, Debug)]
pub struct Record {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Message key.
    pub key: Option<Vec<u8>>,
    /// Message value.
    pub value: Option<Vec<u8>>,
    /// Headers as (name, value).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Broker/producer timestamp, milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}

/// A message's headers as (name, value); none costs no allocation.
fn copy_headers(m: &impl Message) -> Vec<(String, Vec<u8>)> {
    use rdkafka::message::Headers;
    m.headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default()
}

impl Record {
    /// Copies a consumed message.
    pub fn from_message(m: &impl Message) -> Record {
        let headers = copy_headers(m);
        Record {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: m.timestamp().to_millis(),
        }
    }
}

/// Consumed records in one buffer: the keys, values and headers of a whole
/// batch in one allocation, instead of several allocations (and frees) per
/// record.
#[derive(Debug, Default)]
pub struct RecordBatch {
    bytes: Vec<u8>,
    meta: Vec<Meta>,
    headers: Vec<HeaderAt>,
}

#[derive(Debug)]
struct Meta {
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    key: Option<std::ops::Range<usize>>,
    value: Option<std::ops::Range<usize>>,
    /// This record's entries of `RecordBatch::headers`.
    headers: std::ops::Range<usize>,
}

/// One header of one record: name and value, as ranges of the batch's bytes.
#[derive(Clone, Debug)]
struct HeaderAt {
    name: std::ops::Range<usize>,
    value: Option<std::ops::Range<usize>>,
}

/// One record of a [`RecordBatch`].
#[derive(Clone, Copy, Debug)]
pub struct RecordRef<'a> {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Message key.
    pub key: Option<&'a [u8]>,
    /// Message value.
    pub value: Option<&'a [u8]>,
    /// Message headers, in order.
    pub headers: RecordHeaders<'a>,
    /// Broker/producer timestamp, milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}

/// The headers of one record of a [`RecordBatch`].
#[derive(Clone, Copy, Debug)]
pub struct RecordHeaders<'a> {
    bytes: &'a [u8],
    headers: &'a [HeaderAt],
}

impl<'a> RecordHeaders<'a> {
    /// Headers held.
    pub fn len(&self) -> usize {
        self.headers.len()
    }

    /// True when the record has no header.
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
    }

    /// Each header as (name, value); a header without a value gives `None`.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&'a str, Option<&'a [u8]>)> + 'a {
        let bytes = self.bytes;
        self.headers.iter().map(move |h| {
            // Names were copied from `&str`s, whole.
            let name = std::str::from_utf8(&bytes[h.name.clone()]).unwrap_or_default();
            (name, h.value.clone().map(|v| &bytes[v]))
        })
    }
}

impl RecordBatch {
    /// An empty batch with room for `records` records of `bytes` bytes of
    /// keys and values in all.
    pub fn with_capacity(records: usize, bytes: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bytes),
            meta: Vec::with_capacity(records),
            headers: Vec::new(),
        }
    }

    /// Empties the batch, keeping its buffers for the next one.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.meta.clear();
        self.headers.clear();
    }

    /// Bytes of keys, values and headers held.
    pub fn bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Copies a consumed message in, headers included.
    pub fn push(&mut self, m: &impl Message) {
        self.push_bare(m);
        self.keep_headers(m);
    }

    /// Copies a consumed message's key and value in, without its headers:
    /// reading headers costs the client an allocation per header, and
    /// only a record that goes to the DLQ needs them
    /// ([`Self::keep_headers`]).
    pub fn push_bare(&mut self, m: &impl Message) {
        let coordinates = (m.partition(), m.offset(), m.timestamp().to_millis());
        self.push_parts(coordinates, m.key(), m.payload());
    }

    /// Copies a record in from its parts: (partition, offset, timestamp in
    /// ms), key and value; no headers.
    pub fn push_parts(
        &mut self,
        (partition, offset, timestamp_ms): (i32, i64, Option<i64>),
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) {
        let key = key.map(|k| copy_into(&mut self.bytes, k));
        let value = value.map(|v| copy_into(&mut self.bytes, v));
        let at = self.headers.len();
        self.meta.push(Meta {
            partition,
            offset,
            timestamp_ms,
            key,
            value,
            headers: at..at,
        });
    }

    /// Copies `m`'s headers onto the last record, which must be `m`, pushed
    /// with [`Self::push_bare`].
    pub fn keep_headers(&mut self, m: &impl Message) {
        use rdkafka::message::Headers;
        if let Some(headers) = m.headers() {
            self.keep_header_list(headers.iter().map(|h| (h.key, h.value)));
        }
    }

    /// Copies `headers`, (name, value) in order, onto the last record.
    pub fn keep_header_list<'h>(
        &mut self,
        headers: impl IntoIterator<Item = (&'h str, Option<&'h [u8]>)>,
    ) {
        let last = self.meta.last_mut().expect("a record to keep headers for");
        debug_assert!(last.headers.end == self.headers.len());
        for (name, value) in headers {
            let name = copy_into(&mut self.bytes, name.as_bytes());
            let value = value.map(|v| copy_into(&mut self.bytes, v));
            self.headers.push(HeaderAt { name, value });
        }
        last.headers.end = self.headers.len();
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.meta.len()
    }

    /// True when no record is held.
    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }

    /// Record `i`.
    pub fn get(&self, i: usize) -> RecordRef<'_> {
        let m = &self.meta[i];
        let part = |r: &Option<std::ops::Range<usize>>| r.clone().map(|r| &self.bytes[r]);
        RecordRef {
            partition: m.partition,
            offset: m.offset,
            key: part(&m.key),
            value: part(&m.value),
            headers: RecordHeaders {
                bytes: &self.bytes,
                headers: &self.headers[m.headers.clone()],
            },
            timestamp_ms: m.timestamp_ms,
        }
    }

    /// Per partition, the offset after the batch's last record there: what
    /// a commit of the batch stores, and where a replay of it ends. The
    /// last, not the highest: the collector hands a partition's records
    /// over in rising offsets but after an offset reset, where the new,
    /// lower offsets are the ones to commit.
    pub fn next_offsets(&self) -> std::collections::BTreeMap<i32, i64> {
        // Records come in runs of one partition: one map entry per run.
        let mut next = std::collections::BTreeMap::new();
        for run in self.meta.chunk_by(|a, b| a.partition == b.partition) {
            let last = run.last().expect("runs are not empty");
            next.insert(last.partition, last.offset + 1);
        }
        next
    }

    /// Every record, in order.
    pub fn iter(&self) -> impl Iterator<Item = RecordRef<'_>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

/// Appends `part` to `bytes`; where it landed.
fn copy_into(bytes: &mut Vec<u8>, part: &[u8]) -> std::ops::Range<usize> {
    let start = bytes.len();
    bytes.extend_from_slice(part);
    start..bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

    fn message(
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        value: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> OwnedMessage {
        OwnedMessage::new(
            Some(value.to_vec()),
            key.map(<[u8]>::to_vec),
            "in".into(),
            Timestamp::CreateTime(1_000 + offset),
            partition,
            offset,
            headers,
        )
    }

    #[test]
    fn a_batch_keeps_each_records_parts_and_headers_apart() {
        let mut batch = RecordBatch::default();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "id",
                value: Some("r-1"),
            })
            .insert(Header {
                key: "empty",
                value: None::<&[u8]>,
            });
        for round in 0..2 {
            batch.push(&message(
                3,
                7,
                Some(b"card-1"),
                b"{\"a\":1}",
                Some(headers.clone()),
            ));
            batch.push(&message(0, 9, None, b"{}", None));
            batch.push(&message(3, 8, Some(b""), b"x", Some(OwnedHeaders::new())));
            assert_eq!(batch.len(), 3, "round {round}");

            let first = batch.get(0);
            assert_eq!((first.partition, first.offset), (3, 7));
            assert_eq!(first.key, Some(&b"card-1"[..]));
            assert_eq!(first.value, Some(&b"{\"a\":1}"[..]));
            assert_eq!(first.timestamp_ms, Some(1_007));
            let h: Vec<_> = first.headers.iter().collect();
            assert_eq!(h, vec![("id", Some(&b"r-1"[..])), ("empty", None)]);

            let second = batch.get(1);
            assert_eq!((second.key, second.value), (None, Some(&b"{}"[..])));
            assert!(second.headers.is_empty());
            let third = batch.get(2);
            assert_eq!((third.key, third.value), (Some(&b""[..]), Some(&b"x"[..])));
            assert_eq!(third.headers.len(), 0);

            // A recycled batch starts empty and fills the same way.
            batch.clear();
            assert!(batch.is_empty() && batch.bytes() == 0);
        }
    }

    #[test]
    fn headers_are_kept_only_where_asked() {
        let headers = OwnedHeaders::new().insert(Header {
            key: "id",
            value: Some("r-2"),
        });
        let with = message(0, 1, None, b"{}", Some(headers));
        let mut batch = RecordBatch::default();
        batch.push_bare(&with);
        batch.push_bare(&with);
        batch.keep_headers(&with);
        batch.push_bare(&with);
        assert!(batch.get(0).headers.is_empty());
        let kept: Vec<_> = batch.get(1).headers.iter().collect();
        assert_eq!(kept, vec![("id", Some(&b"r-2"[..]))]);
        assert!(batch.get(2).headers.is_empty());
        assert_eq!(batch.get(2).value, Some(&b"{}"[..]));
    }

    #[test]
    fn next_offsets_is_one_past_the_last_offset_per_partition() {
        let mut batch = RecordBatch::default();
        // Partition 0 was reset to 1 after 3.
        for (partition, offset) in [(1, 5), (1, 6), (0, 2), (1, 7), (0, 3), (2, 0), (0, 1)] {
            batch.push(&message(partition, offset, None, b"{}", None));
        }
        let next: Vec<_> = batch.next_offsets().into_iter().collect();
        assert_eq!(next, vec![(0, 2), (1, 8), (2, 1)]);
        assert!(RecordBatch::default().next_offsets().is_empty());
    }
}
