//! One read of a certificate's files for a pass or a report: each file is read once, for
//! its fingerprint and its inspection, and a set whose bytes match the one last verified
//! in full (`CertRecord::verified_set`) only has its leaf parsed.

use time::OffsetDateTime;

use super::Fingerprint;
use super::fingerprint::{fingerprint_read, read_files};
use crate::config::CertConfig;
use crate::inventory::{self, OnDisk};

/// What one read of a certificate's files found.
#[derive(Debug, Clone)]
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

/// A file's identity and version as `stat` sees it: (device, inode, mtime in ns, size).
/// Any write, rename-over or symlink swap changes one of them.
pub(super) type Stamp = (u64, u64, i128, u64);

/// The stamps of a certificate's files (None for one that cannot be stat'ed). Blocking.
pub(super) fn stamps(cert: &CertConfig) -> Vec<Option<Stamp>> {
    use std::os::unix::fs::MetadataExt;
    cert.files()
        .iter()
        .map(|(_, p)| {
            std::fs::metadata(p).ok().map(|m| {
                let mtime = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
                (m.dev(), m.ino(), mtime, m.size())
            })
        })
        .collect()
}

/// A long-running process's memory of the files it read: a set whose stamps have not
/// changed is not read or parsed again. Only intact sets are kept, since they stay intact
/// as time passes (expiry is the policy's call), while "not valid yet" does not.
#[derive(Default)]
pub(super) struct DiskCache(std::sync::Mutex<std::collections::HashMap<String, Cached>>);

/// One certificate's cached look and the stamps it was taken at.
type Cached = (Vec<Option<Stamp>>, DiskLook);

impl DiskCache {
    /// The cached look for `cert` if its files are unchanged, else a fresh one (cached
    /// when intact). Blocking.
    pub(super) fn look(
        &self,
        cert: &CertConfig,
        verified: Option<&str>,
        now: OffsetDateTime,
    ) -> DiskLook {
        let now_stamps = stamps(cert);
        let hit = self.0.lock().ok().and_then(|m| {
            m.get(&cert.name)
                .filter(|(s, _)| *s == now_stamps)
                .map(|(_, d)| d.clone())
        });
        if let Some(mut d) = hit {
            d.loose_modes = !inventory::mode_warnings(&cert.files(), cert.key_mode).is_empty();
            return d;
        }
        let d = look_at_files(cert, verified, now);
        if let Ok(mut m) = self.0.lock() {
            if matches!(d.disk, OnDisk::Present(_)) {
                m.insert(cert.name.clone(), (now_stamps, d.clone()));
            } else {
                m.remove(&cert.name);
            }
        }
        d
    }
}
