//! Corrupt values, of the kinds a real topic receives: bytes that are not
//! JSON, JSON cut short, JSON of the wrong shape, and objects whose numbers
//! are missing or cannot be used. Each one must end in the DLQ.

use super::sim::Rng;

/// Garbage that reaches JSON topics in practice: an HTML error page, a log
/// line, a CSV row, binary framing read as text.
const NOT_JSON: [&str; 4] = [
    "<html><body>503 Service Unavailable</body></html>",
    "WARN producer retry 3/5: broker not available",
    "1767225600,card-0001,23.50,DE",
    "\u{0}\u{1}\u{2}\u{3}avro\u{7f}\r\n\u{10}",
];

/// How a valid record is spoiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Damage {
    NotJson,
    Truncated,
    Array,
    MissingField,
    NonNumeric,
    NanString,
    Overflow,
}

const DAMAGES: [Damage; 7] = [
    Damage::NotJson,
    Damage::Truncated,
    Damage::Array,
    Damage::MissingField,
    Damage::NonNumeric,
    Damage::NanString,
    Damage::Overflow,
];

/// Spoils `valid`, a flat JSON object as the scenarios write it (no nesting,
/// no commas or quotes inside strings).
pub(crate) fn corrupt(valid: &[u8], rng: &mut Rng) -> Vec<u8> {
    damage(valid, DAMAGES[rng.below(DAMAGES.len())], rng)
}

fn damage(valid: &[u8], how: Damage, rng: &mut Rng) -> Vec<u8> {
    match how {
        Damage::NotJson => NOT_JSON[rng.below(NOT_JSON.len())].as_bytes().to_vec(),
        // Any proper prefix of an object lacks its closing brace.
        Damage::Truncated => valid[..rng.between(1, valid.len() - 2)].to_vec(),
        Damage::Array => {
            let mut out = Vec::with_capacity(valid.len() + 2);
            out.push(b'[');
            out.extend_from_slice(valid);
            out.push(b']');
            out
        }
        Damage::MissingField => edit_number(valid, rng, None),
        Damage::NonNumeric => edit_number(valid, rng, Some("\"abc\"")),
        Damage::NanString => edit_number(valid, rng, Some("\"NaN\"")),
        // Valid JSON grammar, but out of f64 range: serde_json refuses it.
        Damage::Overflow => edit_number(valid, rng, Some("1e999")),
    }
}

/// Numeric fields no shipped model reads (a service ignores fields its model
/// does not use, so spoiling one leaves the record scoreable, not corrupt),
/// and "ts" (event time may come from Kafka instead).
const UNSCORED: [&str; 3] = ["\"ts\"", "\"dst_port\"", "\"seq\""];

/// Removes one numeric field a model reads, or replaces its value with
/// `replacement`, so the record cannot be scored.
fn edit_number(valid: &[u8], rng: &mut Rng, replacement: Option<&str>) -> Vec<u8> {
    // The scenarios only write ASCII.
    let text = std::str::from_utf8(valid).expect("scenario records are ASCII");
    let inner = &text[1..text.len() - 1];
    let fields: Vec<&str> = inner.split(',').collect();
    let numeric: Vec<usize> = fields
        .iter()
        .enumerate()
        .filter(|(_, field)| {
            let (name, value) = field.split_once(':').unwrap_or((field, ""));
            !UNSCORED.contains(&name) && !value.starts_with('"')
        })
        .map(|(i, _)| i)
        .collect();
    let target = numeric[rng.below(numeric.len())];
    let mut out = String::with_capacity(valid.len() + 8);
    out.push('{');
    let mut first = true;
    for (i, field) in fields.iter().enumerate() {
        let edited;
        let field = if i == target {
            match replacement {
                None => continue,
                Some(value) => {
                    let name = field.split_once(':').map_or(*field, |(name, _)| name);
                    edited = format!("{name}:{value}");
                    edited.as_str()
                }
            }
        } else {
            field
        };
        if !first {
            out.push(',');
        }
        out.push_str(field);
        first = false;
    }
    out.push('}');
    out.into_bytes()
}

/// Test support: does `value` fail as a record with these numeric fields?
#[cfg(test)]
pub(crate) fn is_unusable(value: &[u8], numeric_fields: &[&str]) -> bool {
    let Ok(object) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(value)
    else {
        return true;
    };
    numeric_fields.iter().any(|name| {
        !object
            .get(*name)
            .and_then(serde_json::Value::as_f64)
            .is_some_and(f64::is_finite)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &[u8] = br#"{"id":"iot-00000001","ts":1767225600.000,"device":"dev-001","temperature":41.20,"vibration":0.310,"battery":3.910}"#;
    const NUMERIC: [&str; 3] = ["temperature", "vibration", "battery"];

    #[test]
    fn gen_every_damage_makes_the_record_unusable() {
        assert!(!is_unusable(VALID, &NUMERIC));
        let mut rng = Rng::new(3, 0);
        for how in DAMAGES {
            for _ in 0..50 {
                let spoiled = damage(VALID, how, &mut rng);
                assert!(
                    is_unusable(&spoiled, &NUMERIC),
                    "{how:?} left a usable record: {}",
                    String::from_utf8_lossy(&spoiled)
                );
            }
        }
    }

    #[test]
    fn gen_field_edits_keep_the_id_and_key() {
        let mut rng = Rng::new(4, 0);
        for how in [
            Damage::MissingField,
            Damage::NonNumeric,
            Damage::NanString,
            Damage::Overflow,
        ] {
            let spoiled = String::from_utf8(damage(VALID, how, &mut rng)).unwrap();
            assert!(spoiled
                .starts_with(r#"{"id":"iot-00000001","ts":1767225600.000,"device":"dev-001""#));
        }
        let missing = String::from_utf8(damage(VALID, Damage::MissingField, &mut rng)).unwrap();
        assert_eq!(missing.matches(':').count(), 5, "{missing}");
    }
}
