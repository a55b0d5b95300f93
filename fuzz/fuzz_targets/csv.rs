//! CSV input (`isoflow score --input file.csv`): any bytes give columns or
//! an error, never a panic.
#![no_main]

use isoflow::input::read_csv_bytes;
use libfuzzer_sys::fuzz_target;

#[path = "fields.rs"]
mod fields;

fuzz_target!(|data: &[u8]| {
    let wanted = fields::wanted();
    if let Ok(columns) = read_csv_bytes(data, &wanted) {
        assert!(columns.numeric.iter().all(|c| c.len() == columns.rows));
        assert!(columns.keys.iter().all(|k| k.len() == columns.rows));
    }
});
