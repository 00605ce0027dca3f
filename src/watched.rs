//! Certificates certkeeper watches but does not issue (`[[watch]]`): the certificates of a
//! private PKI or bought ones that no ACME agent renews, which is how estates go dark.
//! Each look expands the patterns again (a new file is seen without a reload), reads every
//! file bounded and as a regular file only, and reports each bad file on its own so one
//! never hides the others. Nothing is ever ordered or written for them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tracing::warn;

use crate::config::{Config, RenewBefore, WatchConfig};
use crate::inventory::{self, CertInfo};

/// At most this many files per watch: a pattern such as `/**` must not make a status
/// call read a whole disk.
pub const MAX_FILES_PER_WATCH: usize = 10_000;

/// One file (or pattern that matched nothing) of a watch, as last read.
#[derive(Debug, Clone)]
pub struct Watched {
    /// The watch's name.
    pub name: String,
    /// The file, or the pattern when it matched nothing or could not be expanded.
    pub source: String,
    /// The leaf's facts, or why there are none (named after the file).
    pub found: Result<CertInfo, String>,
    /// When it enters `warn_before`, when the leaf parsed.
    pub warn_at: Option<OffsetDateTime>,
}

impl Watched {
    /// Within `warn_before` of its not-after (or past it): the `expiring` condition.
    pub fn expiring(&self, now: OffsetDateTime) -> bool {
        self.warn_at.is_some_and(|t| now >= t)
    }
}

/// The moment a certificate enters `warn_before`.
pub fn warn_at(info: &CertInfo, warn_before: RenewBefore) -> OffsetDateTime {
    match warn_before {
        RenewBefore::Fraction(f) => {
            let lifetime = info.lifetime().as_seconds_f64().max(0.0);
            info.not_after - time::Duration::seconds_f64(lifetime * f)
        }
        RenewBefore::Remaining(d) => {
            info.not_after - time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
        }
    }
}

/// Longest wait for one watched endpoint's certificate: a host that hangs costs this
/// and never holds up the others (they are probed at once).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a watched endpoint served when last probed (`state_dir/watched/<name>.json`):
/// `status` reads it without the network.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointSeen {
    /// `host:port` as configured.
    pub addr: String,
    /// When it was probed.
    #[serde(with = "time::serde::rfc3339")]
    pub checked_at: OffsetDateTime,
    /// The served leaf's serial, start and end of validity; `None` with `error`.
    pub serial: Option<String>,
    /// Start of validity.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub not_before: Option<OffsetDateTime>,
    /// End of validity.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub not_after: Option<OffsetDateTime>,
    /// Why no certificate was read.
    pub error: Option<String>,
}

/// Where a watch's endpoint results are kept.
fn seen_file(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("watched").join(format!("{name}.json"))
}

/// Probes every endpoint of every watch at once and records what each served. Failures
/// to record are logged: a watch never fails a pass.
pub async fn probe_endpoints(cfg: &Config, now: OffsetDateTime) {
    for w in cfg.watches.iter().filter(|w| !w.endpoints.is_empty()) {
        let probes = w.endpoints.iter().map(|ep| async move {
            let r = crate::verify::probe(ep, &ep.host, PROBE_TIMEOUT).await;
            if let Err(e) = &r {
                warn!(watch = %w.name, endpoint = %ep.addr, "cannot read the certificate served: {e}");
            }
            EndpointSeen {
                addr: ep.addr.clone(),
                checked_at: now,
                serial: r.as_ref().ok().map(|s| s.serial.clone()),
                not_before: r.as_ref().ok().map(|s| s.not_before),
                not_after: r.as_ref().ok().map(|s| s.not_after),
                error: r.err().map(|e| e.to_string()),
            }
        });
        let seen: Vec<EndpointSeen> = futures_util::future::join_all(probes).await;
        let path = seen_file(&cfg.state_dir, &w.name);
        let body = serde_json::to_vec_pretty(&seen).expect("plain data serializes");
        let written = std::fs::create_dir_all(crate::fsx::parent(&path))
            .and_then(|()| crate::fsx::write_atomic(&path, &body, 0o644, None));
        if let Err(e) = written {
            warn!(watch = %w.name, "cannot record {}: {e}", path.display());
        }
    }
}

/// The endpoints of one watch as last probed (a row saying "not probed yet" for one
/// with no record, so a configured endpoint is never silently absent).
fn endpoint_rows(w: &WatchConfig, state_dir: &Path) -> Vec<Watched> {
    let seen: Vec<EndpointSeen> =
        crate::fsx::read_regular(&seen_file(state_dir, &w.name), crate::fsx::PEM_LIMIT, false)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
    w.endpoints
        .iter()
        .map(|ep| {
            let s = seen.iter().find(|s| s.addr == ep.addr);
            let found = match s {
                None => Err(format!(
                    "{}: not probed yet (renew or run probes it)",
                    ep.addr
                )),
                Some(EndpointSeen { error: Some(e), .. }) => Err(format!("{}: {e}", ep.addr)),
                Some(s) => Ok(CertInfo {
                    not_before: s.not_before.unwrap_or(s.checked_at),
                    not_after: s.not_after.unwrap_or(s.checked_at),
                    serial: s.serial.clone().unwrap_or_default(),
                    sans: Vec::new(),
                    leaf_der: Vec::new(),
                    chain_len: 1,
                }),
            };
            Watched {
                name: w.name.clone(),
                source: ep.addr.clone(),
                warn_at: found.as_ref().ok().map(|i| warn_at(i, w.warn_before)),
                found,
            }
        })
        .collect()
}

/// Reads every file of one watch, and its endpoints as last probed. Blocking (file reads
/// only, each bounded).
pub fn look(w: &WatchConfig, state_dir: &Path) -> Vec<Watched> {
    let mut out = endpoint_rows(w, state_dir);
    for pattern in &w.paths {
        let row = |source: String, found: Result<CertInfo, String>| Watched {
            name: w.name.clone(),
            warn_at: found.as_ref().ok().map(|i| warn_at(i, w.warn_before)),
            source,
            found,
        };
        let files = match expand(pattern) {
            Ok(f) => f,
            Err(e) => {
                out.push(row(pattern.clone(), Err(e)));
                continue;
            }
        };
        for file in files {
            if out.len() >= MAX_FILES_PER_WATCH {
                out.push(row(
                    pattern.clone(),
                    Err(format!(
                        "more than {MAX_FILES_PER_WATCH} files match; the rest are not watched"
                    )),
                ));
                return out;
            }
            let found = read_leaf(&file);
            out.push(row(file.display().to_string(), found));
        }
    }
    out
}

/// The files a pattern names now, sorted; an error when it names none, so a watch
/// whose files were moved away does not go quiet.
fn expand(pattern: &str) -> Result<Vec<std::path::PathBuf>, String> {
    let paths = glob::glob(pattern).map_err(|e| format!("{pattern}: not a valid pattern: {e}"))?;
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for p in paths.take(MAX_FILES_PER_WATCH + 1) {
        match p {
            Ok(p) if p.is_dir() => {}
            Ok(p) => files.push(p),
            Err(e) => errors.push(format!("{}: {}", e.path().display(), e.error())),
        }
    }
    if files.is_empty() {
        return Err(match errors.first() {
            Some(e) => format!("{pattern}: no certificate file can be read: {e}"),
            None if glob::Pattern::escape(pattern) == pattern => {
                format!("{pattern}: no such file")
            }
            None => format!("{pattern}: no file matches"),
        });
    }
    files.sort();
    Ok(files)
}

/// The first certificate of a PEM file (bounded, regular files only, so a FIFO or a huge
/// file is an error and not a hang).
fn read_leaf(path: &Path) -> Result<CertInfo, String> {
    let certs = inventory::read_pem_certs(path).map_err(|e| e.to_string())?;
    inventory::cert_info(&certs).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use time::macros::datetime;

    fn info(nb: OffsetDateTime, na: OffsetDateTime) -> CertInfo {
        CertInfo {
            not_before: nb,
            not_after: na,
            serial: "01".into(),
            sans: vec![],
            leaf_der: vec![],
            chain_len: 1,
        }
    }

    #[test]
    fn warn_at_is_a_share_of_the_lifetime_or_a_fixed_time_before_expiry() {
        let i = info(
            datetime!(2026-01-01 0:00 UTC),
            datetime!(2026-01-31 0:00 UTC),
        );
        assert_eq!(
            warn_at(&i, RenewBefore::Fraction(0.5)),
            datetime!(2026-01-16 0:00 UTC)
        );
        assert_eq!(
            warn_at(&i, RenewBefore::Remaining(Duration::from_secs(86400))),
            datetime!(2026-01-30 0:00 UTC)
        );
        let w = Watched {
            name: "w".into(),
            source: "f".into(),
            warn_at: Some(warn_at(&i, RenewBefore::Fraction(0.5))),
            found: Ok(i),
        };
        assert!(!w.expiring(datetime!(2026-01-15 23:59 UTC)));
        assert!(w.expiring(datetime!(2026-01-16 0:00 UTC)));
    }

    #[test]
    fn every_bad_file_is_its_own_row_and_a_missing_pattern_says_so() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.pem"), "not a certificate").unwrap();
        std::fs::write(d.path().join("b.pem"), "").unwrap();
        nix::unistd::mkfifo(&d.path().join("c.pem"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let w = WatchConfig {
            name: "pki".into(),
            paths: vec![
                format!("{}/*.pem", d.path().display()),
                format!("{}/nothing-*.crt", d.path().display()),
                format!("{}/gone.crt", d.path().display()),
            ],
            warn_before: RenewBefore::Fraction(0.25),
            endpoints: Vec::new(),
            loc: Default::default(),
        };
        let rows = look(&w, d.path());
        let shown: Vec<(String, String)> = rows
            .iter()
            .map(|r| {
                let s = r.source.rsplit('/').next().unwrap().to_string();
                (s, r.found.as_ref().err().cloned().unwrap_or_default())
            })
            .collect();
        assert_eq!(shown.len(), 5, "{shown:?}");
        assert_eq!(shown[0].0, "a.pem");
        assert!(shown[0].1.contains("a.pem"), "{shown:?}");
        assert_eq!(shown[1].0, "b.pem");
        assert!(!shown[1].1.is_empty(), "{shown:?}");
        assert_eq!(shown[2].0, "c.pem");
        assert!(
            shown[2].1.contains("c.pem"),
            "a FIFO is an error, not a hang: {shown:?}"
        );
        assert!(shown[3].1.ends_with("no file matches"), "{shown:?}");
        assert!(shown[4].1.ends_with("gone.crt: no such file"), "{shown:?}");
        assert!(rows.iter().all(|r| r.name == "pki" && r.warn_at.is_none()));
    }
}
