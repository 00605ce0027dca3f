//! The whole set check (key parses and matches the leaf, names covered, chain in
//! order, validity) on an arbitrary key file and chain file.
//!
//! Input layout: 2 bytes big-endian length `n`, then `n` bytes of key file, then the
//! chain file (the rest). `fuzz/make-corpus.sh` writes seeds in this layout.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let n = usize::from(u16::from_be_bytes([data[0], data[1]]));
    let rest = &data[2..];
    let (key, chain) = rest.split_at(n.min(rest.len()));
    let domains = vec!["fuzz.example".to_string(), "*.fuzz.example".to_string()];
    // A fixed "now" keeps a crash reproducible; 2027-01-15, inside the seeds' validity.
    let now = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("valid");
    let _ = certkeeper::inventory::verify_set(key, chain, &domains, now);
});
