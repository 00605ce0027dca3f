//! One read of a certificate's files for a pass or a report: each file is read once, for
//! its fingerprint and its inspection, and a set whose bytes match the one last verified
//! in full (`CertRecord::verified_set`) only has its leaf parsed.

use time::OffsetDateTime;

use super::Fingerprint;
use super::fingerprint::{fingerprint_read, read_files};
use crate::config::CertConfig;
use crate::inventory::{self, OnDisk};

/// What one read of a certificate's files found.
#[derive(Debug)]
pub struct DiskLook {
    /// The set as the policy sees it.
    pub disk: OnDisk,
    /// What the files held, for the daemon's change detection.
    pub fingerprint: Fingerprint,
    /// A key or bundle is readable by others (to be repaired).
    pub loose_modes: bool,
    /// The fingerprint (hex) to remember as verified: the set passed the full check.
    pub verified: Option<String>,
}

/// Reads and inspects a certificate's files. Blocking: call off the async workers.
/// `verified` is the record's `verified_set`.
pub fn look_at_files(cert: &CertConfig, verified: Option<&str>, now: OffsetDateTime) -> DiskLook {
    let reads = read_files(cert);
    let fingerprint = fingerprint_read(&reads);
    let hex = hex(&fingerprint);
    let known = verified == Some(hex.as_str());
    let files = cert.files();
    let loose_modes = !inventory::mode_warnings(&files, cert.key_mode).is_empty();
    // What was fingerprinted is what is inspected (an error is read again, so its
    // message is fresh and owned).
    let read = |p: &std::path::Path| match reads.iter().find(|(q, _)| q == p) {
        Some((_, Ok(data))) => Ok(data.clone()),
        _ => crate::fsx::read_regular(p, crate::fsx::PEM_LIMIT, true),
    };
    let disk = inventory::inspect_read(&files, &cert.domains, now, known, &read);
    let verified = matches!(disk, OnDisk::Present(_)).then_some(hex);
    DiskLook {
        disk,
        fingerprint,
        loose_modes,
        verified,
    }
}

fn hex(fp: &Fingerprint) -> String {
    fp.iter().map(|b| format!("{b:02x}")).collect()
}
