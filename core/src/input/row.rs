//! Reading one JSON record straight into [`Columns`], without building a
//! JSON value.
//!
//! A streaming batch is thousands of small records of which a model reads a
//! handful of top-level fields. Building a `serde_json::Value` per record
//! (a map, a string per key, a value per field) cost more than the features
//! and the forest together. The reader walks the record once, keeps the
//! wanted fields as borrowed text and numbers, and skips the rest while still
//! validating it. Anything it does not handle itself (dotted paths, escaped
//! keys, a wanted value that is an object, any error) is read again by the
//! [`JsonPicker`] path, so values and error messages are exactly those of
//! [`Columns::push_json`].

use super::{json_key, parse_number, Columns, InputError, JsonPicker, Wanted};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use std::borrow::Cow;

/// Distinct fields read without a heap allocation per record.
const INLINE_FIELDS: usize = 12;

/// Why a record could not become a row.
#[derive(Debug)]
pub enum RowError {
    /// The bytes are not JSON.
    NotJson(serde_json::Error),
    /// JSON, but a field is missing, of the wrong type or not finite.
    Input(InputError),
}

/// Reads the fields a [`Wanted`] names from JSON records.
#[derive(Clone, Debug)]
pub struct RowReader {
    wanted: Wanted,
    picker: JsonPicker,
    /// Distinct top-level names the fast path looks for.
    names: Vec<String>,
    numeric: Vec<usize>,
    keys: Vec<usize>,
    time: Option<usize>,
    /// Every wanted path is a plain top-level name: the fast path applies.
    plain: bool,
    /// Tells this reader's names from another's (clones share them).
    id: u64,
}

impl RowReader {
    /// A reader for `wanted`.
    pub fn new(wanted: &Wanted) -> Self {
        let mut names: Vec<String> = Vec::new();
        let mut at = |name: &String| match names.iter().position(|n| n == name) {
            Some(i) => i,
            None => {
                names.push(name.clone());
                names.len() - 1
            }
        };
        let numeric = wanted.numeric.iter().map(&mut at).collect();
        let keys = wanted.keys.iter().map(&mut at).collect();
        let time = wanted.time.as_ref().map(&mut at);
        let plain = !names.iter().any(|n| n.contains('.'));
        static READERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Self {
            id: READERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            wanted: wanted.clone(),
            picker: JsonPicker::new(wanted),
            names,
            numeric,
            keys,
            time,
            plain,
        }
    }

    /// The fields this reader reads.
    pub fn wanted(&self) -> &Wanted {
        &self.wanted
    }

    /// Appends record `text` to `cols` as data row `row` (1-based, for
    /// messages); `fallback_time` as in [`Columns::push_json`]. On error
    /// nothing is appended.
    pub fn push(
        &self,
        cols: &mut Columns,
        text: &[u8],
        row: usize,
        fallback_time: Option<f64>,
    ) -> Result<(), RowError> {
        if self.plain && self.push_fast(cols, text, fallback_time).is_some() {
            return Ok(());
        }
        let record = self.picker.parse(text).map_err(RowError::NotJson)?;
        cols.push_json(&self.wanted, &record, row, fallback_time)
            .map_err(RowError::Input)
    }

    /// The fast path; `None` leaves the record to the picker, which also
    /// words every error.
    fn push_fast(&self, cols: &mut Columns, text: &[u8], fallback_time: Option<f64>) -> Option<()> {
        // On the stack for the usual handful of fields: an allocation per
        // record shows in the profile.
        let mut inline: [Field; INLINE_FIELDS];
        let mut spilled: Vec<Field>;
        let fields: &mut [Field] = if self.names.len() <= INLINE_FIELDS {
            inline = std::array::from_fn(|_| Field::Absent);
            &mut inline[..self.names.len()]
        } else {
            spilled = vec![Field::Absent; self.names.len()];
            &mut spilled
        };
        let scanned = super::flat::scan(text, (self.id, &self.names), fields, &mut cols.layout);
        if scanned.is_none() {
            // Nested values, escapes: serde_json, still without a value.
            fields.fill(Field::Absent);
            let mut de = serde_json::Deserializer::from_slice(text);
            Fields {
                names: &self.names,
                out: fields,
            }
            .deserialize(&mut de)
            .ok()?;
            de.end().ok()?;
        }
        let number = |i: usize| match &fields[i] {
            Field::Number(n) | Field::Literal(n, _) => n.as_f64(),
            Field::Str(s) => parse_number(s.as_bytes(), 0, "").ok(),
            Field::Absent => None,
        };
        cols.scratch_numbers.clear();
        for &i in &self.numeric {
            cols.scratch_numbers.push(number(i)?);
        }
        let time = match self.time {
            Some(i) => Some(number(i)?),
            None => fallback_time,
        };
        for &i in &self.keys {
            if matches!(fields[i], Field::Absent) {
                return None;
            }
        }
        for (out, &v) in cols.numeric.iter_mut().zip(&cols.scratch_numbers) {
            out.push(v);
        }
        let mut text = std::mem::take(&mut cols.scratch_text);
        for (out, &i) in cols.keys.iter_mut().zip(&self.keys) {
            match &fields[i] {
                Field::Str(s) => out.push(s),
                Field::Literal(_, text) if super::flat::prints_as_itself(text.as_bytes()) => {
                    out.push(text)
                }
                // A number keys by its JSON text, as `json_key` does.
                Field::Number(n) | Field::Literal(n, _) => {
                    use std::fmt::Write;
                    text.clear();
                    write!(text, "{n}").expect("writing to a String");
                    out.push(&text);
                }
                Field::Absent => unreachable!("checked above"),
            }
        }
        cols.scratch_text = text;
        if let Some(t) = time {
            cols.time.push(t);
        }
        cols.rows += 1;
        Some(())
    }
}

/// A wanted field as the fast path found it. `null` counts as absent, as in
/// [`super::json_number`] and [`json_key`].
#[derive(Clone, Debug)]
pub(super) enum Field<'a> {
    Absent,
    Number(serde_json::Number),
    /// A number and its literal as the record has it: a key takes the
    /// literal as it stands when it is the text the number prints as (see
    /// `flat::prints_as_itself`), checked only for keys.
    Literal(serde_json::Number, &'a str),
    Str(Cow<'a, str>),
}

/// Visits a record's top-level object, keeping the named fields.
struct Fields<'n, 'o, 'a> {
    names: &'n [String],
    out: &'o mut [Field<'a>],
}

impl<'de> DeserializeSeed<'de> for Fields<'_, '_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Fields<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Borrowed keys: an escaped key fails here and the picker takes over.
        while let Some(key) = map.next_key::<&'de str>()? {
            match self.names.iter().position(|n| n == key) {
                // A repeated key: the last one wins, as in a parsed map.
                Some(i) => self.out[i] = map.next_value::<Field<'de>>()?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

impl<'de> serde::Deserialize<'de> for Field<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FieldVisitor)
    }
}

/// Scalars only: objects, arrays and booleans fail, leaving the record to
/// the picker.
struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Field<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a number, a string or null")
    }

    fn visit_u64<E>(self, v: u64) -> Result<Field<'de>, E> {
        Ok(Field::Number(v.into()))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Field<'de>, E> {
        Ok(Field::Number(v.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Field<'de>, E> {
        serde_json::Number::from_f64(v)
            .map(Field::Number)
            .ok_or_else(|| E::custom("not finite"))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Field<'de>, E> {
        Ok(Field::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Field<'de>, E> {
        Ok(Field::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Field<'de>, E> {
        Ok(Field::Str(Cow::Owned(v)))
    }

    fn visit_unit<E>(self) -> Result<Field<'de>, E> {
        Ok(Field::Absent)
    }
}

/// The entity key of a record: the string at `path` (other scalars as JSON
/// text), read without keeping the rest.
pub fn key_of(text: &[u8], path: &str) -> Option<String> {
    let wanted = Wanted {
        keys: vec![path.to_owned()],
        ..Wanted::default()
    };
    let record = JsonPicker::new(&wanted).parse(text).ok()?;
    json_key(&record, path, 0).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted() -> Wanted {
        Wanted {
            numeric: vec!["amount".into(), "risk".into()],
            keys: vec!["card".into(), "amount".into()],
            time: Some("ts".into()),
        }
    }

    /// Every record through the reader and through the parsed-value path:
    /// the same columns, or the same error.
    fn same_as_parsed(records: &[&str]) {
        let w = wanted();
        let reader = RowReader::new(&w);
        let (mut fast, mut slow) = (Columns::new(&w), Columns::new(&w));
        for (i, text) in records.iter().enumerate() {
            let got = reader.push(&mut fast, text.as_bytes(), i + 1, None);
            let want = match serde_json::from_str::<serde_json::Value>(text) {
                Ok(v) => slow.push_json(&w, &v, i + 1, None).map_err(RowError::Input),
                Err(e) => Err(RowError::NotJson(e)),
            };
            match (got, want) {
                (Ok(()), Ok(())) => {}
                (Err(RowError::Input(a)), Err(RowError::Input(b))) => {
                    assert_eq!(a.to_string(), b.to_string(), "{text}")
                }
                (Err(RowError::NotJson(a)), Err(RowError::NotJson(b))) => {
                    assert_eq!(a.to_string(), b.to_string(), "{text}")
                }
                (a, b) => panic!("{text}: reader {a:?}, parsed {b:?}"),
            }
        }
        assert_eq!(fast.rows, slow.rows);
        assert_eq!(fast.numeric, slow.numeric);
        assert_eq!(fast.time, slow.time);
        for (a, b) in fast.keys.iter().zip(&slow.keys) {
            assert_eq!(a.hashes(), b.hashes());
            assert!(a.iter().eq(b.iter()));
        }
    }

    #[test]
    fn reads_what_the_parsed_record_gives() {
        same_as_parsed(&[
            r#"{"ts":1.5,"card":"c1","amount":12.5,"risk":0.1,"other":{"x":[1,2,{"y":null}]}}"#,
            r#"{"amount":7,"card":"c\u00e9","risk":"0.25","ts":2,"flag":true}"#,
            r#"{"amount":-3e2,"card":42,"risk":1,"ts":3}"#,
            r#"{"amount":1,"amount":2,"card":"dup","risk":0,"ts":4}"#,
            r#"{"am\u006funt":5,"card":"esc","risk":0,"ts":5}"#,
            r#"{"amount":18446744073709551615,"card":"big","risk":0,"ts":6}"#,
        ]);
    }

    #[test]
    fn fails_as_the_parsed_record_fails() {
        same_as_parsed(&[
            r#"{"ts":1,"card":"c1","risk":0.1}"#,
            r#"{"ts":1,"card":null,"amount":1,"risk":0.1}"#,
            r#"{"ts":1,"card":"c","amount":"NaN","risk":0.1}"#,
            r#"{"ts":1,"card":"c","amount":"12x","risk":0.1}"#,
            r#"{"ts":1,"card":"c","amount":true,"risk":0.1}"#,
            r#"{"ts":1,"card":["c"],"amount":1,"risk":0.1}"#,
            r#"{"ts":1,"card":"c","amount":1,"risk":0.1} trailing"#,
            r#"[1,2,3]"#,
            r#"{"ts":1,"card":"c","amount":1e999,"risk":0.1}"#,
            "not json",
            r#"{"ts":1,"card":"c","amount":1,"risk":0.1,"x":[}"#,
        ]);
    }

    #[test]
    fn dotted_paths_take_the_picker() {
        let w = Wanted {
            numeric: vec!["v.x".into()],
            keys: vec!["dev".into()],
            time: None,
        };
        let reader = RowReader::new(&w);
        let mut cols = Columns::new(&w);
        reader
            .push(&mut cols, br#"{"v":{"x":1.5},"dev":"d1"}"#, 1, Some(9.0))
            .unwrap();
        assert_eq!(cols.numeric[0], vec![1.5]);
        assert_eq!(cols.time, vec![9.0]);
        assert_eq!(
            key_of(br#"{"v":{"x":1.5},"dev":"d1"}"#, "dev").unwrap(),
            "d1"
        );
    }
}
