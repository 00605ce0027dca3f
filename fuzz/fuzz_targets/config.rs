//! The config parser and validator on arbitrary text: it must return a config or
//! errors, never panic. The base directory does not exist, so relative paths in the
//! input resolve to nothing.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("/nonexistent-certkeeper-fuzz/certkeeper.toml");
    let base = Path::new("/nonexistent-certkeeper-fuzz");
    match certkeeper::config::Config::from_str_at(text, file, base) {
        Ok(cfg) => {
            let _ = format!("{cfg:?}");
        }
        Err(errs) => {
            // Rendering the errors (line/column arithmetic) must not panic either.
            let _ = errs.to_string();
        }
    }
});
