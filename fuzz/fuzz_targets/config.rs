//! The service's TOML configuration: any text is refused with a message or
//! gives a configuration within its stated limits, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = isoflow::config::Config::parse(text, "fuzz.toml") {
        for p in &config.pipelines {
            assert!(p.batch_max_records >= 1 && p.batch_max_ms <= 60_000);
        }
    }
});
