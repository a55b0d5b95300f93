//! CSV input (`isoflow score --input file.csv`): any bytes give columns or
//! an error, never a panic.
#![no_main]

use isoflow::input::{read_csv_bytes, Wanted};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let wanted = Wanted {
        numeric: vec!["amount".into(), "n".into()],
        keys: vec!["card".into()],
        time: Some("ts".into()),
    };
    if let Ok(columns) = read_csv_bytes(data, &wanted) {
        assert!(columns.numeric.iter().all(|c| c.len() == columns.rows));
        assert!(columns.keys.iter().all(|k| k.len() == columns.rows));
    }
});
