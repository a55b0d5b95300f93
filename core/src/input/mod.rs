//! Reading records from CSV or JSON lines into the columns a model needs.
//!
//! Only the fields the feature spec names are read; everything else in a
//! record is ignored. Numbers are parsed without per-field allocation and every
//! failure names the row and the column, because "parse error" is useless to
//! someone holding a 600K-row file.

mod flat;
pub mod key;
mod row;

pub use row::{key_of, RowError, RowReader};

use key::{key_hash, KeyHash};
use std::io::{BufRead, Read};

/// Why input could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// I/O failure reading the input.
    #[error("cannot read input: {0}")]
    Io(#[from] std::io::Error),
    /// Malformed CSV.
    #[error("CSV error: {0}")]
    Csv(#[from] csv::Error),
    /// A required column is absent from the CSV header.
    #[error("input has no column '{column}' (needed by the model's feature spec); columns present: {present}")]
    MissingColumn {
        /// Column the spec needs.
        column: String,
        /// Header of the input.
        present: String,
    },
    /// A JSON record lacks a required field.
    #[error("row {row}: field '{field}' is missing")]
    MissingField {
        /// 1-based data row.
        row: usize,
        /// Dotted path the spec needs.
        field: String,
    },
    /// A value is not a number.
    #[error("row {row}, column '{column}': '{value}' is not a number")]
    NotANumber {
        /// 1-based data row.
        row: usize,
        /// Column or dotted path.
        column: String,
        /// The offending text.
        value: String,
    },
    /// A value is NaN or infinite.
    #[error("row {row}, column '{column}': value {value} is not finite")]
    NonFinite {
        /// 1-based data row.
        row: usize,
        /// Column or dotted path.
        column: String,
        /// The value as read.
        value: String,
    },
    /// A line is not a JSON object.
    #[error("row {row}: not a JSON object: {message}")]
    Json {
        /// 1-based data row.
        row: usize,
        /// What the parser said.
        message: String,
    },
}

/// Which fields to read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Wanted {
    /// Numeric fields, in the order their columns appear in [`Columns::numeric`].
    pub numeric: Vec<String>,
    /// Key fields, in the order their columns appear in [`Columns::keys`].
    pub keys: Vec<String>,
    /// Event-time field (epoch seconds), read into [`Columns::time`].
    pub time: Option<String>,
}

/// Key values of one key field, row by row: each row's text, and the hash
/// the per-key state tables look it up by.
///
/// Hashing every row's key where it is read is cheaper than interning the
/// batch's distinct keys first: in a batch of thousands of records most
/// keys of a busy stream (cards, amounts, sources) are distinct anyway, and
/// the interning table cost a hash, a probe and a comparison per row before
/// each distinct key was hashed again for the state tables.
#[derive(Clone, Debug, Default)]
pub struct KeyColumn {
    /// [`key_hash`] of each row's key.
    hashes: Vec<KeyHash>,
    /// The rows' keys, one after another: one buffer instead of a string
    /// per row.
    text: String,
    /// End of each row's key in `text`.
    ends: Vec<u32>,
}

impl KeyColumn {
    /// An empty column with room for `rows` rows.
    fn with_capacity(rows: usize) -> Self {
        Self {
            hashes: Vec::with_capacity(rows),
            text: String::with_capacity(rows * 16),
            ends: Vec::with_capacity(rows),
        }
    }

    /// Rows in the column.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when the column has no rows.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The key of `row`.
    pub fn get(&self, row: usize) -> &str {
        let start = match row {
            0 => 0,
            _ => self.ends[row - 1] as usize,
        };
        &self.text[start..self.ends[row] as usize]
    }

    /// The keys, row by row.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len()).map(|row| self.get(row))
    }

    /// [`key_hash`] of each row's key, row by row.
    pub fn hashes(&self) -> &[KeyHash] {
        &self.hashes
    }

    /// Appends `other`'s rows.
    fn append(&mut self, other: KeyColumn) {
        let base = u32::try_from(self.text.len()).expect("a batch's keys fit in 4 GiB of text");
        self.text.push_str(&other.text);
        self.ends.extend(other.ends.iter().map(|&end| base + end));
        self.hashes.extend(other.hashes);
    }

    /// Empties the column, keeping its buffers.
    fn clear(&mut self) {
        self.hashes.clear();
        self.text.clear();
        self.ends.clear();
    }

    fn push(&mut self, key: &str) {
        self.hashes.push(key_hash(key));
        self.text.push_str(key);
        self.ends
            .push(u32::try_from(self.text.len()).expect("a batch's keys fit in 4 GiB of text"));
    }
}

/// The wanted fields of every record, column by column.
#[derive(Clone, Debug, Default)]
pub struct Columns {
    /// Number of records read.
    pub rows: usize,
    /// One vector per [`Wanted::numeric`] field.
    pub numeric: Vec<Vec<f64>>,
    /// One column per [`Wanted::keys`] field.
    pub keys: Vec<KeyColumn>,
    /// Event time per record (seconds) when [`Wanted::time`] is set or the
    /// caller supplies one (broker timestamps); otherwise empty.
    pub time: Vec<f64>,
    /// The input partition of each row, when the rows come from a
    /// partitioned topic; otherwise empty (every row then counts as
    /// partition 0). Per-key state remembers it, so a partition's state can
    /// be released when the partition moves to another consumer.
    pub partition: Vec<i32>,
    scratch_numbers: Vec<f64>,
    scratch_keys: Vec<String>,
    scratch_text: String,
    /// The key layout of the records read last (see `flat::Layout`).
    layout: flat::Layout,
}

impl Columns {
    /// Empty columns for `wanted`.
    pub fn new(wanted: &Wanted) -> Self {
        Self::with_capacity(wanted, 0)
    }

    /// Empty columns for `wanted` with room for `rows` rows, so that reading
    /// a batch of known size never grows them.
    pub fn with_capacity(wanted: &Wanted, rows: usize) -> Self {
        Self {
            rows: 0,
            numeric: vec![Vec::with_capacity(rows); wanted.numeric.len()],
            keys: (0..wanted.keys.len())
                .map(|_| KeyColumn::with_capacity(rows))
                .collect(),
            time: Vec::with_capacity(rows),
            ..Default::default()
        }
    }

    /// Empties the columns for reading `wanted`, keeping their buffers: a
    /// batch's columns are hundreds of kilobytes, and fresh ones cost page
    /// faults on every batch.
    pub fn reuse(&mut self, wanted: &Wanted) {
        self.rows = 0;
        self.numeric.resize_with(wanted.numeric.len(), Vec::new);
        self.numeric.iter_mut().for_each(Vec::clear);
        self.keys.resize_with(wanted.keys.len(), KeyColumn::default);
        self.keys.iter_mut().for_each(KeyColumn::clear);
        self.time.clear();
        self.partition.clear();
    }

    /// Appends one JSON record as data row `row` (1-based, for messages).
    /// `fallback_time` is used when [`Wanted::time`] is unset (e.g. the
    /// broker timestamp). On error nothing is appended, so a bad record can
    /// be set aside without disturbing the batch.
    pub fn push_json(
        &mut self,
        wanted: &Wanted,
        record: &serde_json::Value,
        row: usize,
        fallback_time: Option<f64>,
    ) -> Result<(), InputError> {
        if !record.is_object() {
            return Err(InputError::Json {
                row,
                message: "record is not a JSON object".into(),
            });
        }
        self.scratch_numbers.clear();
        self.scratch_keys.clear();
        for name in &wanted.numeric {
            self.scratch_numbers.push(json_number(record, name, row)?);
        }
        for name in &wanted.keys {
            self.scratch_keys.push(json_key(record, name, row)?);
        }
        let time = match &wanted.time {
            Some(field) => Some(json_number(record, field, row)?),
            None => fallback_time,
        };
        for (out, &v) in self.numeric.iter_mut().zip(&self.scratch_numbers) {
            out.push(v);
        }
        for (out, k) in self.keys.iter_mut().zip(&self.scratch_keys) {
            out.push(k);
        }
        if let Some(t) = time {
            self.time.push(t);
        }
        self.rows += 1;
        Ok(())
    }
}

impl Columns {
    /// Appends the rows of `other` (read with the same [`Wanted`]).
    fn append(&mut self, other: Columns) {
        for (out, column) in self.numeric.iter_mut().zip(other.numeric) {
            out.extend(column);
        }
        for (out, column) in self.keys.iter_mut().zip(other.keys) {
            out.append(column);
        }
        self.time.extend(other.time);
        self.partition.extend(other.partition);
        self.rows += other.rows;
    }
}

/// Inputs below this size are parsed on one thread; splitting them costs
/// more than it saves.
const PARALLEL_CSV_BYTES: usize = 1 << 20;

/// Reads a CSV held in memory: the same columns and errors as [`read_csv`],
/// faster. When no quote or carriage return follows the header, every
/// newline ends a record and every comma ends a field, so the body is split
/// plainly, in parts on all cores when it is big. Anything the plain split
/// cannot decide alone (a blank line, a wrong field count, a bad value) is
/// read again by [`read_csv`], whose errors name the row in the whole file.
pub fn read_csv_bytes(data: &[u8], wanted: &Wanted) -> Result<Columns, InputError> {
    use rayon::prelude::*;
    let Some(header_end) = data.iter().position(|&b| b == b'\n').map(|i| i + 1) else {
        return read_csv(data, wanted);
    };
    let (header, body) = data.split_at(header_end);
    if body.contains(&b'"') || body.contains(&b'\r') {
        return read_csv(data, wanted);
    }
    let names = match csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(header)
        .byte_headers()
    {
        Ok(h) => header_names(h),
        Err(_) => return read_csv(data, wanted),
    };
    let Ok(at) = Positions::find(&names, wanted) else {
        return read_csv(data, wanted);
    };
    let parts = if body.len() >= PARALLEL_CSV_BYTES {
        rayon::current_num_threads()
    } else {
        1
    };
    let mut cuts = vec![0];
    for k in 1..parts {
        let from = (body.len() * k / parts).max(*cuts.last().expect("cuts start at 0"));
        if let Some(nl) = body[from..].iter().position(|&b| b == b'\n') {
            cuts.push(from + nl + 1);
        }
    }
    cuts.push(body.len());
    cuts.dedup();
    let pieces: Option<Vec<Columns>> = cuts
        .par_windows(2)
        .map(|w| read_plain(&body[w[0]..w[1]], names.len(), &at, wanted))
        .collect();
    let Some(pieces) = pieces else {
        return read_csv(data, wanted);
    };
    let mut pieces = pieces.into_iter();
    let mut cols = pieces.next().unwrap_or_else(|| Columns::new(wanted));
    for piece in pieces {
        cols.append(piece);
    }
    Ok(cols)
}

/// Where the wanted fields sit in a CSV's columns.
struct Positions {
    numeric: Vec<usize>,
    keys: Vec<usize>,
    time: Option<usize>,
}

impl Positions {
    fn find(names: &[String], wanted: &Wanted) -> Result<Self, InputError> {
        let find = |column: &String| {
            names
                .iter()
                .position(|n| n == column)
                .ok_or_else(|| InputError::MissingColumn {
                    column: column.clone(),
                    present: names.join(","),
                })
        };
        Ok(Self {
            numeric: wanted.numeric.iter().map(find).collect::<Result<_, _>>()?,
            keys: wanted.keys.iter().map(find).collect::<Result<_, _>>()?,
            time: wanted.time.as_ref().map(find).transpose()?,
        })
    }
}

fn header_names(header: &csv::ByteRecord) -> Vec<String> {
    header
        .iter()
        .map(|h| String::from_utf8_lossy(h).trim().to_owned())
        .collect()
}

/// Splits quote-free CSV lines at newlines and commas. `None` where the
/// csv reader must decide: a blank line, a line without `fields` fields, or
/// a value that is not a finite number.
fn read_plain(body: &[u8], fields: usize, at: &Positions, wanted: &Wanted) -> Option<Columns> {
    let number = |text: &[u8]| {
        fast_float2::parse::<f64, _>(text.trim_ascii())
            .ok()
            .filter(|v| v.is_finite())
    };
    let mut cols = Columns::new(wanted);
    let body = body.strip_suffix(b"\n").unwrap_or(body);
    if body.is_empty() {
        return Some(cols);
    }
    let mut cells: Vec<&[u8]> = Vec::with_capacity(fields);
    for line in body.split(|&b| b == b'\n') {
        cells.clear();
        cells.extend(line.split(|&b| b == b','));
        if line.is_empty() || cells.len() != fields {
            return None;
        }
        for (&i, out) in at.numeric.iter().zip(&mut cols.numeric) {
            out.push(number(cells[i])?);
        }
        for (&i, out) in at.keys.iter().zip(&mut cols.keys) {
            out.push(&String::from_utf8_lossy(cells[i]));
        }
        if let Some(i) = at.time {
            cols.time.push(number(cells[i])?);
        }
        cols.rows += 1;
    }
    Some(cols)
}

/// Parses a decimal number, naming row and column on failure.
pub fn parse_number(text: &[u8], row: usize, column: &str) -> Result<f64, InputError> {
    let trimmed = text.trim_ascii();
    let value: f64 = fast_float2::parse(trimmed).map_err(|_| InputError::NotANumber {
        row,
        column: column.to_owned(),
        value: String::from_utf8_lossy(text).into_owned(),
    })?;
    if !value.is_finite() {
        return Err(InputError::NonFinite {
            row,
            column: column.to_owned(),
            value: String::from_utf8_lossy(trimmed).into_owned(),
        });
    }
    Ok(value)
}

/// Reads a CSV with a header row.
pub fn read_csv(reader: impl Read, wanted: &Wanted) -> Result<Columns, InputError> {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(reader);
    let names = header_names(csv.byte_headers()?);
    let Positions {
        numeric: numeric_at,
        keys: keys_at,
        time: time_at,
    } = Positions::find(&names, wanted)?;
    let mut cols = Columns::new(wanted);
    let mut record = csv::ByteRecord::new();
    while csv.read_byte_record(&mut record)? {
        let row = cols.rows + 1;
        for ((&at, name), out) in numeric_at
            .iter()
            .zip(&wanted.numeric)
            .zip(&mut cols.numeric)
        {
            out.push(parse_number(record.get(at).unwrap_or_default(), row, name)?);
        }
        for (&at, out) in keys_at.iter().zip(&mut cols.keys) {
            out.push(&String::from_utf8_lossy(record.get(at).unwrap_or_default()));
        }
        if let (Some(at), Some(name)) = (time_at, &wanted.time) {
            cols.time
                .push(parse_number(record.get(at).unwrap_or_default(), row, name)?);
        }
        cols.rows += 1;
    }
    Ok(cols)
}

/// Parses JSON records keeping only what a [`Wanted`] reads.
///
/// Most of a record's cost is allocating values nobody reads; the picker
/// keeps the top-level keys that are a wanted path or the first segment of a
/// dotted one and skips the rest unparsed, so [`lookup`] on the result finds
/// exactly what it finds on the whole record. Anything unusual (not an
/// object, escaped keys, invalid JSON) is parsed whole, so results and error
/// messages never differ from `serde_json::from_slice`.
#[derive(Clone, Debug, Default)]
pub struct JsonPicker {
    paths: Vec<String>,
}

impl JsonPicker {
    /// A picker for the fields `wanted` reads.
    pub fn new(wanted: &Wanted) -> Self {
        Self {
            paths: wanted
                .numeric
                .iter()
                .chain(&wanted.keys)
                .chain(&wanted.time)
                .cloned()
                .collect(),
        }
    }

    /// Also keeps `path` (e.g. the entity key field); empty adds nothing.
    pub fn with_path(mut self, path: &str) -> Self {
        if !path.is_empty() {
            self.paths.push(path.to_owned());
        }
        self
    }

    fn keeps(&self, key: &str) -> bool {
        self.paths.iter().any(|p| {
            p == key
                || (p.len() > key.len() && p.starts_with(key) && p.as_bytes()[key.len()] == b'.')
        })
    }

    /// Parses one record: an object holding the kept keys, or whatever
    /// `serde_json::from_slice` makes of anything else.
    pub fn parse(&self, text: &[u8]) -> Result<serde_json::Value, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_slice(text);
        let picked = serde::de::DeserializeSeed::deserialize(self, &mut de).and_then(|m| {
            de.end()?;
            Ok(m)
        });
        match picked {
            Ok(map) => Ok(serde_json::Value::Object(map)),
            Err(_) => serde_json::from_slice(text),
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for &JsonPicker {
    type Value = serde_json::Map<String, serde_json::Value>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for &JsonPicker {
    type Value = serde_json::Map<String, serde_json::Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = serde_json::Map::new();
        // Borrowed keys: an escaped key fails here and the record is
        // parsed whole instead.
        while let Some(key) = map.next_key::<&'de str>()? {
            if self.keeps(key) {
                out.insert(key.to_owned(), map.next_value()?);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(out)
    }
}

/// Looks up a dotted path (`a.b.c`) in a JSON object.
pub fn lookup<'v>(value: &'v serde_json::Value, path: &str) -> Option<&'v serde_json::Value> {
    if let Some(v) = value.get(path) {
        return Some(v);
    }
    path.split('.').try_fold(value, |v, part| v.get(part))
}

/// Reads the numeric value at `path` of one JSON record.
pub fn json_number(record: &serde_json::Value, path: &str, row: usize) -> Result<f64, InputError> {
    match lookup(record, path) {
        None | Some(serde_json::Value::Null) => Err(InputError::MissingField {
            row,
            field: path.to_owned(),
        }),
        Some(serde_json::Value::Number(n)) => n.as_f64().ok_or_else(|| InputError::NotANumber {
            row,
            column: path.to_owned(),
            value: n.to_string(),
        }),
        Some(serde_json::Value::String(s)) => parse_number(s.as_bytes(), row, path),
        Some(other) => Err(InputError::NotANumber {
            row,
            column: path.to_owned(),
            value: other.to_string(),
        }),
    }
}

/// Reads the key at `path` of one JSON record (strings as is, other scalars as JSON text).
pub fn json_key(record: &serde_json::Value, path: &str, row: usize) -> Result<String, InputError> {
    match lookup(record, path) {
        None | Some(serde_json::Value::Null) => Err(InputError::MissingField {
            row,
            field: path.to_owned(),
        }),
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(other) => Ok(other.to_string()),
    }
}

/// Reads JSON lines (one object per line; blank lines are skipped).
pub fn read_jsonl(reader: impl BufRead, wanted: &Wanted) -> Result<Columns, InputError> {
    let mut cols = Columns::new(wanted);
    let rows = RowReader::new(wanted);
    for line in reader.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let row = cols.rows + 1;
        rows.push(&mut cols, line.as_bytes(), row, None)
            .map_err(|e| match e {
                RowError::NotJson(e) => InputError::Json {
                    row,
                    message: e.to_string(),
                },
                RowError::Input(e) => e,
            })?;
    }
    Ok(cols)
}

/// Reads JSON lines, setting aside records that cannot be read (the same
/// records the service would dead-letter) instead of failing on them.
pub fn read_jsonl_lenient(
    reader: impl BufRead,
    wanted: &Wanted,
) -> Result<(Columns, Vec<InputError>), InputError> {
    let mut cols = Columns::new(wanted);
    let mut rejected = Vec::new();
    for (line_no, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let row = line_no + 1;
        match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(record) => {
                if let Err(e) = cols.push_json(wanted, &record, row, None) {
                    rejected.push(e);
                }
            }
            Err(e) => rejected.push(InputError::Json {
                row,
                message: e.to_string(),
            }),
        }
    }
    Ok((cols, rejected))
}

/// Input formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated values with a header.
    Csv,
    /// One JSON object per line.
    JsonLines,
}

impl Format {
    /// Guesses the format from a path's extension (`.jsonl`, `.json`, `.ndjson`
    /// are JSON lines) or, for `-` (stdin), from the first non-blank byte.
    pub fn detect(path: &str, first_byte: Option<u8>) -> Format {
        let lower = path.to_ascii_lowercase();
        let json_ext = [".jsonl", ".ndjson", ".json"]
            .iter()
            .any(|e| lower.ends_with(e));
        if json_ext || (path == "-" && first_byte == Some(b'{')) {
            Format::JsonLines
        } else {
            Format::Csv
        }
    }
}

/// Reads `path` (or stdin for `-`) in the detected format.
pub fn read_path(path: &str, wanted: &Wanted) -> Result<Columns, InputError> {
    if path != "-" {
        // Files are read whole so a CSV can be parsed on all cores.
        let data = std::fs::read(path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{path}: {e}")))?;
        let first = data.iter().copied().find(|b| !b.is_ascii_whitespace());
        return match Format::detect(path, first) {
            Format::Csv => read_csv_bytes(&data, wanted),
            Format::JsonLines => read_jsonl(data.as_slice(), wanted),
        };
    }
    let mut reader = std::io::BufReader::with_capacity(1 << 20, std::io::stdin().lock());
    let first = reader
        .fill_buf()?
        .iter()
        .copied()
        .find(|b| !b.is_ascii_whitespace());
    match Format::detect(path, first) {
        Format::Csv => read_csv(reader, wanted),
        Format::JsonLines => read_jsonl(reader, wanted),
    }
}

/// The numeric top-level fields of the first record of a JSON-lines file
/// (or the columns of a CSV header whose first row is numeric), in record
/// order, leaving out `keys` and `time`: what a preset reads when no
/// `--fields` are given.
pub fn numeric_fields_of_first_record(
    path: &str,
    keys: &[String],
    time: &str,
) -> Result<Vec<String>, InputError> {
    use std::io::BufRead as _;
    let not_here = |what: &str| -> InputError {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_owned()).into()
    };
    if path == "-" {
        return Err(not_here(
            "standard input cannot be read twice to find its numeric fields: give --fields",
        ));
    }
    let file = std::fs::File::open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{path}: {e}")))?;
    let mut lines = std::io::BufReader::new(file).lines();
    let skip = |name: &str| keys.iter().any(|k| k == name) || name == time;
    let first = lines.next().transpose()?.unwrap_or_default();
    let fields: Vec<String> =
        if Format::detect(path, first.trim_start().bytes().next()) == Format::Csv {
            let row = lines.next().transpose()?.unwrap_or_default();
            first
                .split(',')
                .zip(row.split(','))
                .filter(|(name, value)| !skip(name) && value.trim().parse::<f64>().is_ok())
                .map(|(name, _)| name.trim().to_owned())
                .collect()
        } else {
            let record: serde_json::Value =
                serde_json::from_str(&first).map_err(|e| InputError::Json {
                    row: 1,
                    message: e.to_string(),
                })?;
            record
                .as_object()
                .map(|o| {
                    o.iter()
                        .filter(|(name, v)| v.is_number() && !skip(name))
                        .map(|(name, _)| name.clone())
                        .collect()
                })
                .unwrap_or_default()
        };
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(numeric: &[&str], keys: &[&str]) -> Wanted {
        Wanted {
            numeric: numeric.iter().map(|s| s.to_string()).collect(),
            keys: keys.iter().map(|s| s.to_string()).collect(),
            time: None,
        }
    }

    #[test]
    fn csv_reads_wanted_columns_in_spec_order() {
        let data = "b,a,k,extra\n1,2,x,zzz\n3.5,-4e2,y,q\n5,6,x,\n";
        let cols = read_csv(data.as_bytes(), &wanted(&["a", "b"], &["k"])).unwrap();
        assert_eq!(cols.rows, 3);
        assert_eq!(cols.numeric[0], vec![2.0, -400.0, 6.0]);
        assert_eq!(cols.numeric[1], vec![1.0, 3.5, 5.0]);
        assert_eq!(cols.keys[0].iter().collect::<Vec<_>>(), vec!["x", "y", "x"]);
        assert_eq!(cols.keys[0].hashes()[0], cols.keys[0].hashes()[2]);
        assert_ne!(cols.keys[0].hashes()[0], cols.keys[0].hashes()[1]);
    }

    /// Reused columns read like fresh ones, for the same fields or others.
    #[test]
    fn reused_columns_read_like_fresh_ones() {
        let data = "b,a,k,j\n1,2,x,p\n3.5,-4e2,y,q\n";
        let first = wanted(&["a", "b"], &["k", "j"]);
        let mut reused = read_csv(data.as_bytes(), &first).unwrap();
        for next in [
            first.clone(),
            wanted(&["b"], &["j"]),
            wanted(&["a", "b"], &["k", "j"]),
        ] {
            reused.reuse(&next);
            let record = serde_json::json!({"a": 5, "b": 6, "k": "z", "j": "r"});
            reused.push_json(&next, &record, 1, None).unwrap();
            let mut fresh = Columns::new(&next);
            fresh.push_json(&next, &record, 1, None).unwrap();
            assert_eq!(reused.rows, 1);
            assert_eq!(reused.numeric, fresh.numeric);
            assert_eq!(reused.time, fresh.time);
            assert_eq!(reused.keys.len(), fresh.keys.len());
            for (r, f) in reused.keys.iter().zip(&fresh.keys) {
                assert!(r.iter().eq(f.iter()));
                assert_eq!(r.hashes(), f.hashes());
            }
        }
    }

    #[test]
    fn csv_errors_name_row_and_column() {
        let err = read_csv("a,b\n1,2\n3,oops\n".as_bytes(), &wanted(&["a", "b"], &[])).unwrap_err();
        assert_eq!(err.to_string(), "row 2, column 'b': 'oops' is not a number");
        let err = read_csv("a,b\n1,2\n".as_bytes(), &wanted(&["c"], &[])).unwrap_err();
        assert!(err.to_string().contains("no column 'c'"), "{err}");
        assert!(err.to_string().contains("a,b"), "{err}");
        let err = read_csv("a\n1\nNaN\n".as_bytes(), &wanted(&["a"], &[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "row 2, column 'a': value NaN is not finite"
        );
    }

    #[test]
    fn jsonl_reads_dotted_paths_and_reports_missing_fields() {
        let data = "{\"v\":{\"x\":1.5},\"dev\":\"d1\"}\n\n{\"v\":{\"x\":2},\"dev\":7}\n";
        let cols = read_jsonl(data.as_bytes(), &wanted(&["v.x"], &["dev"])).unwrap();
        assert_eq!(cols.numeric[0], vec![1.5, 2.0]);
        assert_eq!(cols.keys[0].iter().collect::<Vec<_>>(), vec!["d1", "7"]);
        let err = read_jsonl("{\"y\":1}\n".as_bytes(), &wanted(&["v.x"], &[])).unwrap_err();
        assert_eq!(err.to_string(), "row 1: field 'v.x' is missing");
        let err = read_jsonl("{\"v\":\"abc\"}\n".as_bytes(), &wanted(&["v"], &[])).unwrap_err();
        assert!(err.to_string().contains("'abc' is not a number"), "{err}");
        let err = read_jsonl("not json\n".as_bytes(), &wanted(&["v"], &[])).unwrap_err();
        assert!(
            err.to_string().starts_with("row 1: not a JSON object"),
            "{err}"
        );
    }

    #[test]
    fn csv_parsed_in_parts_equals_csv_parsed_whole() {
        let mut data = String::from("k,a,b\n");
        let mut i = 0u64;
        while data.len() < 3 * PARALLEL_CSV_BYTES {
            let key = ["x", "y", "z", "w"][(i * 7 % 4) as usize];
            data.push_str(&format!("{key}{},{},{}.5\n", i % 13, i, i % 1000));
            i += 1;
        }
        let want = wanted(&["b", "a"], &["k"]);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let parts = pool
            .install(|| read_csv_bytes(data.as_bytes(), &want))
            .unwrap();
        let whole = read_csv(data.as_bytes(), &want).unwrap();
        assert_eq!(parts.rows, i as usize);
        assert_eq!(parts.rows, whole.rows);
        assert_eq!(parts.numeric, whole.numeric);
        assert!(parts.keys[0].iter().eq(whole.keys[0].iter()));
        assert_eq!(parts.keys[0].hashes(), whole.keys[0].hashes());
        // An error late in the file names its row in the whole file.
        let bad = format!("{data}x1,2,oops\n");
        let err = pool
            .install(|| read_csv_bytes(bad.as_bytes(), &want))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("row {}, column 'b': 'oops' is not a number", i + 1)
        );
    }

    #[test]
    fn picked_records_read_like_whole_records() {
        let want = Wanted {
            numeric: vec!["a".into(), "v.x".into(), "m.n".into()],
            keys: vec!["k".into()],
            time: Some("t".into()),
        };
        let picker = JsonPicker::new(&want);
        let texts = [
            r#"{"a":1,"v":{"x":2.5,"y":[1,2]},"k":"dev","t":10,"junk":{"deep":[{"z":1}]},"m.n":3}"#,
            r#"{"a":"4","v":{"x":"5"},"k":7,"t":1.5,"m":{"n":6}}"#,
            r#"{"a":1,"a":2,"v":{"x":1},"k":"x","t":0,"m.n":1}"#,
            r#"{"a":1,"v":3,"k":"x","t":0,"m.n":1}"#,
            r#"{"a":null,"v":{"x":1},"k":"x","t":0,"m.n":1}"#,
            r#"{"a":true,"v":{"x":1},"k":{"o":1},"t":0,"m.n":1}"#,
            r#"{"a":1,"v":{"x":1},"k":"x","t":0,"m.n":1}"#,
            r#"[1,2]"#,
            r#"{"a":1,"#,
            r#"{"a":1} trailing"#,
        ];
        for text in texts {
            let whole = serde_json::from_slice::<serde_json::Value>(text.as_bytes());
            let picked = picker.parse(text.as_bytes());
            match (&whole, &picked) {
                (Ok(whole), Ok(picked)) => {
                    let (mut a, mut b) = (Columns::new(&want), Columns::new(&want));
                    let ra = a
                        .push_json(&want, whole, 1, None)
                        .map_err(|e| e.to_string());
                    let rb = b
                        .push_json(&want, picked, 1, None)
                        .map_err(|e| e.to_string());
                    assert_eq!(ra, rb, "{text}");
                    assert_eq!((&a.numeric, &a.time), (&b.numeric, &b.time), "{text}");
                    assert_eq!(
                        a.keys
                            .iter()
                            .map(|k| k.iter().collect())
                            .collect::<Vec<Vec<_>>>(),
                        b.keys
                            .iter()
                            .map(|k| k.iter().collect())
                            .collect::<Vec<Vec<_>>>(),
                        "{text}"
                    );
                }
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{text}"),
                _ => panic!("{text}: {whole:?} vs {picked:?}"),
            }
        }
        // Unread fields are not kept.
        let picked = picker.parse(texts[0].as_bytes()).unwrap();
        assert!(picked.get("junk").is_none());
    }

    #[test]
    fn plain_split_reads_like_the_csv_reader() {
        let want = wanted(&["b", "a"], &["k"]);
        let texts = [
            "k,a,b\nx,1,2\ny, 3 ,4.5\n",
            "k,a,b\nx,1,2\ny,3,4",
            "\"k\",\"a\",b\nx,1,2\n",
            "k,a,b\r\nx,1,2\r\ny,3,4\r\n",
            "k,a,b\nx,1,2\n\ny,3,4\n",
            "k,a,b\nx,1,2\ny,3\n",
            "k,a,b\nx,1,2,9\n",
            "k,a,b\nx,1,oops\n",
            "k,a,b\nx,1,inf\n",
            "k,a,b\n\"x,y\",1,2\n",
            "k,a,b\n",
            "k,a,b",
            "k,a\nx,1\n",
            "",
        ];
        let show = |r: Result<Columns, InputError>| {
            r.map(|c| {
                (
                    c.rows,
                    c.numeric,
                    c.keys[0].iter().map(str::to_owned).collect::<Vec<_>>(),
                    c.keys[0].hashes().to_vec(),
                )
            })
            .map_err(|e| e.to_string())
        };
        for text in texts {
            assert_eq!(
                show(read_csv_bytes(text.as_bytes(), &want)),
                show(read_csv(text.as_bytes(), &want)),
                "{text:?}"
            );
        }
    }

    #[test]
    fn format_detection() {
        assert_eq!(Format::detect("a.jsonl", None), Format::JsonLines);
        assert_eq!(Format::detect("a.csv", Some(b'{')), Format::Csv);
        assert_eq!(Format::detect("-", Some(b'{')), Format::JsonLines);
        assert_eq!(Format::detect("-", Some(b'a')), Format::Csv);
    }
}
