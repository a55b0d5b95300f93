//! Streamed records: the flat scanner (with its key-layout cache, over
//! several records) must agree exactly with the general JSON path on what
//! it accepts and the values it reads, and neither may panic.
#![no_main]

use isoflow::input::{Columns, JsonPicker, RowReader};
use libfuzzer_sys::fuzz_target;

#[path = "fields.rs"]
mod fields;

fuzz_target!(|data: &[u8]| {
    let wanted = fields::wanted();
    let reader = RowReader::new(&wanted);
    let picker = JsonPicker::new(&wanted);
    let mut fast = Columns::new(&wanted);
    let mut slow = Columns::new(&wanted);
    for (row, record) in data.split(|&b| b == b'\n').enumerate() {
        let got = reader.push(&mut fast, record, row + 1, None);
        let want = picker
            .parse(record)
            .map_err(|_| ())
            .and_then(|v| slow.push_json(&wanted, &v, row + 1, None).map_err(|_| ()));
        assert_eq!(got.is_ok(), want.is_ok(), "accepted alike: {record:?}");
        if got.is_ok() {
            fast.rows += 1;
            slow.rows += 1;
        }
    }
    let bits = |c: &Columns| -> Vec<Vec<u64>> {
        let mut out: Vec<Vec<u64>> = c
            .numeric
            .iter()
            .map(|col| col.iter().map(|v| v.to_bits()).collect())
            .collect();
        out.push(c.time.iter().map(|v| v.to_bits()).collect());
        out
    };
    assert_eq!(bits(&fast), bits(&slow), "same numbers: {data:?}");
    let keys = |c: &Columns| -> Vec<Vec<String>> {
        c.keys
            .iter()
            .map(|k| k.iter().map(str::to_owned).collect())
            .collect()
    };
    assert_eq!(keys(&fast), keys(&slow), "same keys: {data:?}");
});
