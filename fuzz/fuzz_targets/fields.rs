//! The fields the record and CSV targets read, as their seeds in
//! `fuzz/corpus/` name them.

use isoflow::input::Wanted;

/// Two numeric fields, a key and an event time.
pub fn wanted() -> Wanted {
    Wanted {
        numeric: vec!["amount".into(), "n".into()],
        keys: vec!["card".into()],
        time: Some("ts".into()),
    }
}
