//! The certificate-chain reader on arbitrary bytes: PEM parsing, then the leaf's
//! facts (validity, serial, SANs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(chain) = certkeeper::inventory::parse_pem_certs(data) {
        let _ = certkeeper::inventory::cert_info(&chain);
    }
});
