//! The private-key reader on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = certkeeper::inventory::parse_pem_key(data);
});
