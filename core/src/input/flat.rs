//! A scanner for the common shape of a streamed record: one flat JSON
//! object of numbers, plain strings, booleans and nulls.
//!
//! It finds the wanted top-level fields in one pass without a general JSON
//! parser. It gives up (returns `None`) on anything it does not handle
//! itself: nested values, escaped strings, control characters, invalid
//! UTF-8 in a wanted string, any syntax error. The caller then reads the
//! record with serde_json, which decides; so the scanner only ever accepts
//! records serde_json accepts, with the same values (numbers are parsed
//! correctly rounded on both paths, see the workspace's serde_json features).

use super::row::Field;
use std::borrow::Cow;

/// The keys of the last record scanned with one set of names, in order,
/// each with the name it is, if wanted. The records of a stream mostly share
/// one layout, so each key of the next record is first compared with the
/// key in its place here: one comparison instead of a scan for its end and
/// a search among the names.
#[derive(Clone, Debug, Default)]
pub(super) struct Layout {
    /// The id of the reader whose names the indices refer to (0: none).
    reader: u64,
    /// Each key as it appeared, quotes included, and its name's index.
    keys: Vec<(Key, Option<usize>)>,
}

/// A key's bytes, quotes included; up to 16 of them also as two words, so
/// that a comparison is two loads and two masks rather than a call.
#[derive(Clone, Debug, Default)]
struct Key {
    bytes: Vec<u8>,
    words: [u64; 2],
    masks: [u64; 2],
}

impl Key {
    fn new(bytes: &[u8]) -> Self {
        let mut padded = [0u8; 16];
        let mut mask = [0u8; 16];
        let n = bytes.len().min(16);
        padded[..n].copy_from_slice(&bytes[..n]);
        mask[..n].fill(0xff);
        Self {
            bytes: bytes.to_vec(),
            words: [word(&padded[..8]), word(&padded[8..])],
            masks: [word(&mask[..8]), word(&mask[8..])],
        }
    }

    /// True when `rest` starts with this key.
    #[inline]
    fn starts(&self, rest: &[u8]) -> bool {
        match rest.get(..16) {
            Some(head) if self.bytes.len() <= 16 => {
                (word(&head[..8]) ^ self.words[0]) & self.masks[0] == 0
                    && (word(&head[8..]) ^ self.words[1]) & self.masks[1] == 0
            }
            _ => rest.starts_with(&self.bytes),
        }
    }
}

impl Layout {
    /// The key at the start of `rest` if it is the one last seen in place
    /// `ordinal`: its length, quotes included, and its name's index.
    #[inline]
    fn expect(&self, ordinal: usize, rest: &[u8]) -> Option<(usize, Option<usize>)> {
        let (key, index) = self.keys.get(ordinal)?;
        key.starts(rest).then_some((key.bytes.len(), *index))
    }

    fn learn(&mut self, ordinal: usize, key: &[u8], index: Option<usize>) {
        let entry = (Key::new(key), index);
        if ordinal < self.keys.len() {
            self.keys[ordinal] = entry;
        } else {
            self.keys.push(entry);
        }
    }
}

/// Fills `out[i]` with the value of top-level field `names[i]` of `text`
/// (the last one if repeated; [`Field::Absent`] for `null` or none).
/// `layout` remembers the record's keys for the next record read with the
/// names of reader `reader`.
pub(super) fn scan<'a>(
    text: &'a [u8],
    (reader, names): (u64, &[String]),
    out: &mut [Field<'a>],
    layout: &mut Layout,
) -> Option<()> {
    if layout.reader != reader {
        *layout = Layout {
            reader,
            keys: Vec::new(),
        };
    }
    // JSON is UTF-8 throughout, unwanted keys and values included: a record
    // with invalid bytes anywhere is serde_json's to refuse. Records are
    // mostly ASCII, which is one cheap pass to tell.
    if !text.is_ascii() && std::str::from_utf8(text).is_err() {
        return None;
    }
    let mut s = Scanner { text, at: 0 };
    s.ws();
    s.byte(b'{')?;
    s.ws();
    if s.peek()? == b'}' {
        s.at += 1;
    } else {
        for ordinal in 0.. {
            let index = match layout.expect(ordinal, &text[s.at..]) {
                Some((len, index)) => {
                    s.at += len;
                    index
                }
                None => {
                    let start = s.at;
                    let key = s.string()?;
                    let index = names.iter().position(|n| n.as_bytes() == key);
                    layout.learn(ordinal, &text[start..s.at], index);
                    index
                }
            };
            s.ws();
            s.byte(b':')?;
            s.ws();
            match index {
                Some(i) => out[i] = s.value()?,
                None => s.skip_value()?,
            }
            s.ws();
            match s.next()? {
                b',' => s.ws(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    s.ws();
    (s.at == text.len()).then_some(())
}

/// True when `literal`, a number in JSON's grammar, is the very text
/// serde_json prints for the number it reads, so a key made of it needs no
/// formatting. Conservative: an integer of at most 18 digits other than
/// `-0`, or a plain decimal of at most 15 significant digits, not ending in
/// a zero, between 10⁻⁴ and 10¹⁵. Such a decimal is the shortest text that
/// reads back as its double (two decimals of 15 digits never share one),
/// and numbers in that range print without an exponent.
pub(super) fn prints_as_itself(literal: &[u8]) -> bool {
    let digits = literal.strip_prefix(b"-").unwrap_or(literal);
    let Some(point) = digits.iter().position(|&b| b == b'.') else {
        return digits.len() <= 18
            && literal != b"-0"
            && !digits.iter().any(|&b| matches!(b, b'e' | b'E'));
    };
    let (whole, fraction) = (&digits[..point], &digits[point + 1..]);
    if fraction.is_empty()
        || fraction.ends_with(b"0")
        || fraction.iter().any(|&b| !b.is_ascii_digit())
    {
        return false;
    }
    if whole == b"0" {
        let zeros = fraction.iter().take_while(|&&b| b == b'0').count();
        zeros <= 3 && fraction.len() - zeros <= 15
    } else {
        whole.len() + fraction.len() <= 15
    }
}

/// Powers of ten a double holds exactly.
const EXACT_POWERS: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The value of a decimal literal `[-]digits.digits` (no exponent) whose
/// digits, point removed, make an integer m ≤ 2⁵³: m / 10^k, both exact,
/// so the one division rounds correctly (Clinger's fast path), as the
/// general parser would. `None` for anything else. Most amounts, rates and
/// timestamps in records are such literals.
#[inline]
fn plain_decimal(literal: &[u8]) -> Option<f64> {
    let (negative, digits) = match literal.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, literal),
    };
    if digits.len() > 20 {
        return None;
    }
    let point = digits.iter().position(|&b| b == b'.')?;
    let mut m = 0u64;
    for &d in &digits[..point] {
        m = m * 10 + u64::from(d.wrapping_sub(b'0'));
    }
    for &d in &digits[point + 1..] {
        if !d.is_ascii_digit() {
            return None;
        }
        m = m * 10 + u64::from(d - b'0');
    }
    if m > 1 << 53 {
        return None;
    }
    let v = m as f64 / EXACT_POWERS[digits.len() - point - 1];
    Some(if negative { -v } else { v })
}

/// The eight bytes `b` as one little-endian word.
#[inline]
fn word(b: &[u8]) -> u64 {
    u64::from_le_bytes(b.try_into().expect("eight bytes"))
}

/// The first byte of `s` that ends a plain string: a quote, a backslash or
/// a control character. Eight bytes at a time: keys and values are mostly
/// a word or two long, and a byte at a time this loop was a sixth of
/// parsing.
#[inline]
fn string_end(s: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // High bit set in each byte of `x` below `n` (n ≤ 0x80). Borrows can
    // also mark bytes above the first such byte, never below it, so the
    // lowest mark is exact.
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGH;
    let mut words = s.chunks_exact(8);
    for (i, eight) in (&mut words).enumerate() {
        let w = word(eight);
        let marks = below(w ^ (ONES * u64::from(b'"')), 1)
            | below(w ^ (ONES * u64::from(b'\\')), 1)
            | below(w, 0x20);
        if marks != 0 {
            return Some(i * 8 + (marks.trailing_zeros() / 8) as usize);
        }
    }
    let tail = words.remainder();
    let at = s.len() - tail.len();
    tail.iter().position(|&b| ends_string(b)).map(|p| at + p)
}

/// A byte that ends a plain string: a quote, a backslash (an escape the
/// scanner leaves to serde_json) or a control character.
fn ends_string(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20
}

struct Scanner<'a> {
    text: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn byte(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// The raw bytes of a string without escapes or control characters.
    fn string(&mut self) -> Option<&'a [u8]> {
        self.byte(b'"')?;
        let rest = &self.text[self.at..];
        let end = string_end(rest)?;
        if rest[end] != b'"' {
            return None;
        }
        self.at += end + 1;
        Some(&rest[..end])
    }

    /// A wanted value: a number, a string or null.
    fn value(&mut self) -> Option<Field<'a>> {
        match self.peek()? {
            b'"' => {
                let raw = self.string()?;
                let text = if raw.is_ascii() {
                    // SAFETY: ASCII is valid UTF-8; the check is cheaper than
                    // full validation for the short strings records carry.
                    unsafe { std::str::from_utf8_unchecked(raw) }
                } else {
                    std::str::from_utf8(raw).ok()?
                };
                Some(Field::Str(Cow::Borrowed(text)))
            }
            b'n' => self.literal(b"null").map(|()| Field::Absent),
            _ => {
                let start = self.at;
                let n = self.number()?;
                // SAFETY: a number literal is ASCII.
                let text = unsafe { std::str::from_utf8_unchecked(&self.text[start..self.at]) };
                Some(Field::Literal(n, text))
            }
        }
    }

    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            // Unchecked UTF-8 in a skipped string is what serde_json allows too.
            b'"' => self.string().map(drop),
            b'n' => self.literal(b"null"),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            // Skipped numbers are checked, not converted.
            _ => self.number_extent().map(drop),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at + word.len();
        (self.text.get(self.at..end)? == word).then(|| self.at = end)
    }

    /// A number in JSON's grammar, as serde_json represents it: an unsigned
    /// or negative integer when it fits 64 bits, else a double.
    fn number(&mut self) -> Option<serde_json::Number> {
        let start = self.at;
        let (negative, integer) = self.number_extent()?;
        let text = &self.text[start..self.at];
        if integer {
            let digits = &text[usize::from(negative)..];
            let parsed = if text == b"-0" {
                // serde_json reads a negative zero as a double.
                serde_json::Number::from_f64(-0.0)
            } else if digits.len() <= 19 {
                // At most 19 digits fit a u64 without overflow.
                let magnitude = digits
                    .iter()
                    .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
                if negative {
                    0i64.checked_sub_unsigned(magnitude)
                        .map(serde_json::Number::from)
                } else {
                    Some(serde_json::Number::from(magnitude))
                }
            } else {
                // Longer integers may still fit (u64 up to 20 digits) or
                // overflow to a double: serde_json decides.
                None
            };
            return parsed;
        }
        let v = match plain_decimal(text) {
            Some(v) => v,
            None => fast_float2::parse(text).ok()?,
        };
        serde_json::Number::from_f64(v)
    }

    /// Steps over a number in JSON's grammar; whether it is negative, and
    /// whether it is an integer (no fraction, no exponent).
    fn number_extent(&mut self) -> Option<(bool, bool)> {
        let negative = self.peek()? == b'-';
        if negative {
            self.at += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            self.at += 1;
            integer = false;
            self.digit()?;
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            integer = false;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.digit()?;
            self.digits();
        }
        Some((negative, integer))
    }

    fn digit(&mut self) -> Option<()> {
        self.next()?.is_ascii_digit().then_some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scanner's numbers against serde_json's, over literals of every
    /// shape: where the scanner answers, it answers what serde_json reads.
    #[test]
    fn numbers_read_as_serde_json_reads_them() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut literals: Vec<String> = [
            "0",
            "-0",
            "1",
            "-1",
            "0.1",
            "1e5",
            "1E-5",
            "-2.5e+3",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "9007199254740993",
            "0.30000000000000004",
            "2.2250738585072011e-308",
            "1.7976931348623157e308",
            "4.9e-324",
            "123456789012345678901234567890.5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for _ in 0..20_000 {
            let digits = 1 + next() % 20;
            let mut s: String = (0..digits)
                .map(|_| char::from(b'0' + (next() % 10) as u8))
                .collect();
            if next() % 2 == 0 {
                let at = 1 + (next() as usize) % s.len();
                s.insert(at.min(s.len()), '.');
                if s.ends_with('.') {
                    s.push('5');
                }
            }
            if next() % 3 == 0 {
                s.push_str(&format!("e{}", (next() % 700) as i64 - 350));
            }
            literals.push(s);
        }
        // Plain decimals of every length, magnitude and trailing digit,
        // where the literal is most often kept as its own text.
        for _ in 0..40_000 {
            let whole: String = match next() % 4 {
                0 => "0".into(),
                _ => (0..1 + next() % 17)
                    .map(|i| char::from(b'0' + (next() % 9) as u8 + u8::from(i == 0)))
                    .collect(),
            };
            let zeros = if whole == "0" { next() % 7 } else { 0 };
            let fraction: String = (0..zeros)
                .map(|_| '0')
                .chain((0..1 + next() % 17).map(|_| char::from(b'0' + (next() % 10) as u8)))
                .collect();
            let sign = if next() % 5 == 0 { "-" } else { "" };
            literals.push(format!("{sign}{whole}.{fraction}"));
        }
        let mut decimals = 0;
        for lit in &literals {
            let text = format!(r#"{{"x":{lit}}}"#);
            let mut out = [Field::Absent];
            let scanned = scan(
                text.as_bytes(),
                (1, &["x".to_string()]),
                &mut out,
                &mut Layout::default(),
            );
            let parsed: Result<serde_json::Value, _> = serde_json::from_str(&text);
            match (scanned, parsed) {
                (Some(()), Ok(v)) => {
                    let (Field::Number(n) | Field::Literal(n, _)) = &out[0] else {
                        panic!("{lit}: not a number")
                    };
                    assert_eq!(Some(n), v["x"].as_number(), "{lit}");
                    assert_eq!(n.to_string(), v["x"].to_string(), "{lit}");
                    // A literal kept as its own text prints as that text.
                    if let Field::Literal(_, text) = &out[0] {
                        if !prints_as_itself(text.as_bytes()) {
                            continue;
                        }
                        assert_eq!(*text, v["x"].to_string(), "{lit}");
                        decimals += 1;
                    }
                }
                (Some(()), Err(e)) => {
                    panic!("{lit}: scanner accepted what serde_json refuses: {e}")
                }
                (None, _) => {}
            }
        }
        assert!(decimals > 20_000, "{decimals} literals kept as text");
    }

    /// The word-at-a-time search finds what a byte-at-a-time one finds.
    #[test]
    fn string_end_matches_a_plain_search() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let alphabet = b"ab\"\\\x00\x1f \x7f\x80\xff\xc3\xa9";
        for len in 0..40 {
            for _ in 0..500 {
                let s: Vec<u8> = (0..len)
                    .map(|_| {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        // Mostly plain letters, now and then a special byte.
                        if rng.is_multiple_of(16) {
                            alphabet[(rng >> 8) as usize % alphabet.len()]
                        } else {
                            b'a' + (rng >> 8) as u8 % 26
                        }
                    })
                    .collect();
                let plain = s.iter().position(|&b| ends_string(b));
                assert_eq!(string_end(&s), plain, "{s:?}");
            }
        }
    }

    /// Keys checked against the last record's layout read exactly what a
    /// fresh scan reads, whatever the next record's keys and order.
    #[test]
    fn a_learnt_layout_never_misreads_the_next_record() {
        let names = ["a".to_string(), "bb".to_string()];
        let records: [&[u8]; 7] = [
            br#"{"a":1,"bb":"x","c":2}"#,
            br#"{"a":1.5,"bb":"y","c":3}"#,
            br#"{"bb":"z","a":2}"#,
            br#"{"ab":9,"a":3,"bb":"w"}"#,
            br#"{"a" : 4 ,"bbb":"v","bb":"u"}"#,
            br#"{"a":5}"#,
            br#"{"a\u0062":1}"#,
        ];
        let read = |text: &[u8], layout: &mut Layout| {
            let mut out = [Field::Absent, Field::Absent];
            scan(text, (7, &names), &mut out, layout).map(|()| format!("{out:?}"))
        };
        let mut layout = Layout::default();
        for text in records.iter().chain(records.iter().rev()) {
            assert_eq!(
                read(text, &mut layout),
                read(text, &mut Layout::default()),
                "{}",
                String::from_utf8_lossy(text)
            );
        }
        // Another reader's names: what was learnt for the first is dropped.
        let mut out = [Field::Absent];
        scan(
            br#"{"a":1,"bb":"x"}"#,
            (8, &["bb".to_string()]),
            &mut out,
            &mut layout,
        )
        .unwrap();
        assert!(matches!(&out[0], Field::Str(s) if s == "x"));
    }

    #[test]
    fn gives_up_on_what_it_does_not_handle() {
        let names = ["a".to_string()];
        for text in [
            r#"{"a":1,"b":{"c":2}}"#,
            r#"{"a":1,"b":[1]}"#,
            r#"{"a":"x\"y"}"#,
            r#"{"a\u0062":1}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":+1}"#,
            r#"{"a":1,}"#,
            r#"{"a":1} x"#,
            r#"{"a":tru}"#,
            r#"{"a":true}"#,
            "{\"a\":\"tab\there\"}",
            r#"[1]"#,
            r#"{"a":1"#,
            "",
        ] {
            let mut out = [Field::Absent];
            assert!(
                scan(
                    text.as_bytes(),
                    (1, &names),
                    &mut out,
                    &mut Layout::default()
                )
                .is_none(),
                "{text}"
            );
        }
        // Invalid UTF-8 where the scanner does not look (found by fuzzing):
        // serde_json refuses such a record, so the scanner must not take it.
        for text in [
            &b"{\"a\":1,\"b\x8d\":2}"[..],
            b"{\"a\":1,\"b\":\"\xff\"}",
            b"{\"\xc3\":1,\"a\":2}",
        ] {
            let mut out = [Field::Absent];
            let scanned = scan(text, (1, &names), &mut out, &mut Layout::default());
            assert!(scanned.is_none(), "{text:?}");
        }
        let mut out = [Field::Absent];
        scan(
            b" { \"b\" : null , \"a\" : \"v\" , \"a\":2 } ",
            (1, &names),
            &mut out,
            &mut Layout::default(),
        )
        .unwrap();
        assert!(matches!(&out[0], Field::Literal(n, "2") if n.as_u64() == Some(2)));
        let mut out = [Field::Absent];
        let escaped = br#"{"a":null,"t":true,"f":false,"s":"\u00e9"}"#;
        assert!(
            scan(escaped, (1, &names), &mut out, &mut Layout::default()).is_none(),
            "an escaped string, even skipped, is left to serde_json"
        );
    }
}
