//! What is on disk: reads a certificate's PEM files and says whether they form a usable set
//! (parses, key matches the leaf, names covered, time-valid), and extracts the facts the
//! policy and the hooks need (validity window, serial, ARI identifier).
//!
//! The same checks verify a freshly issued set before it is installed, so "what we accept
//! from the CA" and "what we consider valid on disk" can never drift apart. This module
//! does no I/O beyond reading files, and never decides *when* to renew (see `policy`).

use std::path::{Path, PathBuf};

use ::time::OffsetDateTime;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::fileset::FileSet;

/// Facts about a parsed leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Serial number, lower-case hex, no separators.
    pub serial: String,
    /// DNS names in the SAN extension.
    pub sans: Vec<String>,
    /// The leaf in DER, for ARI's certificate identifier.
    pub leaf_der: Vec<u8>,
    /// Number of certificates in the file (leaf + chain).
    pub chain_len: usize,
}

impl CertInfo {
    /// Total lifetime of the certificate.
    pub fn lifetime(&self) -> ::time::Duration {
        self.not_after - self.not_before
    }
}

/// The state of one certificate's files on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnDisk {
    /// A file of the set does not exist.
    Missing(String),
    /// Files exist but do not form a usable set; the reason says why.
    Invalid {
        /// Why the set can't be used.
        reason: String,
        /// The leaf's facts, when the leaf itself parsed (e.g. key mismatch, names missing).
        info: Option<Box<CertInfo>>,
    },
    /// A usable set (it may still be expired or due; that is the policy's call).
    Present(CertInfo),
}

impl OnDisk {
    /// The leaf's facts, if the leaf parsed.
    pub fn info(&self) -> Option<&CertInfo> {
        match self {
            Self::Present(i) => Some(i),
            Self::Invalid { info, .. } => info.as_deref(),
            Self::Missing(_) => None,
        }
    }
}

/// Why PEM text (or the leaf in it) cannot be used. The messages name no file: a caller
/// that read one says which (see [`PemFileError`]).
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// The text is not well-formed PEM.
    #[error("not valid PEM: {0}")]
    NotPem(rustls_pki_types::pem::Error),
    /// Well-formed, but without a single certificate.
    #[error("contains no PEM CERTIFICATE block")]
    NoCertificate,
    /// Well-formed, but without a private key.
    #[error("contains no PEM private key")]
    NoKey,
    /// A private key block that does not decode.
    #[error("not a valid PEM private key: {0}")]
    BadKey(rustls_pki_types::pem::Error),
    /// No certificate to take the leaf from.
    #[error("empty certificate chain")]
    EmptyChain,
    /// The leaf is not a parseable X.509 certificate.
    #[error("leaf certificate does not parse: {0}")]
    LeafParse(x509_parser::nom::Err<x509_parser::error::X509Error>),
}

/// Why a PEM file cannot be used: unreadable, or its content fails (naming the file).
#[derive(Debug, thiserror::Error)]
pub enum PemFileError {
    /// Missing, not a regular file, too large or unreadable (the message names the path).
    #[error(transparent)]
    Read(#[from] crate::fsx::ReadError),
    /// Read, but the content is not usable.
    #[error("{}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong with its content.
        source: PemError,
    },
}

/// Reads every certificate in a PEM file, with an error that names the file.
/// Bounded and regular files only, so a FIFO or a huge file given as `ca_bundle` fails
/// with a message instead of hanging.
pub fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemFileError> {
    let data = crate::fsx::read_regular(path, crate::fsx::PEM_LIMIT, true)?;
    parse_pem_certs(&data).map_err(|source| PemFileError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// The system's root certificates plus those of `bundle` (the CA's `ca_bundle`, a
/// webhook receiver's), for every HTTPS client certkeeper makes. `key` names the config
/// key in errors (`acme.ca_bundle: ...`). The store may be empty: the caller decides.
pub fn trust_roots(bundle: Option<&Path>, key: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    if let Some(bundle) = bundle {
        let certs = read_pem_certs(bundle).map_err(|e| format!("{key}: {e}"))?;
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("{key} {}: {e}", bundle.display()))?;
        }
    }
    Ok(roots)
}

/// Parses all `CERTIFICATE` blocks in PEM text.
pub fn parse_pem_certs(data: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(data).collect();
    let certs = certs.map_err(PemError::NotPem)?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate);
    }
    Ok(certs)
}

/// Parses the first private key in PEM text (PKCS#8, SEC1 or PKCS#1).
pub fn parse_pem_key(data: &[u8]) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(data).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => PemError::NoKey,
        e => PemError::BadKey(e),
    })
}

/// The raw public key bytes of a private key, for matching against a certificate.
fn key_public_raw(key: &PrivateKeyDer<'_>) -> Result<Vec<u8>, String> {
    let kp = rcgen::KeyPair::try_from(key)
        .map_err(|e| format!("unsupported or corrupt private key: {e}"))?;
    Ok(kp.public_key_raw().to_vec())
}

/// Parses a leaf DER into [`CertInfo`].
pub fn cert_info(chain: &[CertificateDer<'_>]) -> Result<CertInfo, PemError> {
    let leaf = chain.first().ok_or(PemError::EmptyChain)?;
    let (_, x) = X509Certificate::from_der(leaf.as_ref()).map_err(PemError::LeafParse)?;
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = x.subject_alternative_name() {
        for n in &ext.value.general_names {
            if let GeneralName::DNSName(d) = n {
                sans.push(d.to_ascii_lowercase());
            }
        }
    }
    let serial = x
        .tbs_certificate
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    Ok(CertInfo {
        not_before: x.validity().not_before.to_datetime(),
        not_after: x.validity().not_after.to_datetime(),
        serial,
        sans,
        leaf_der: leaf.as_ref().to_vec(),
        chain_len: chain.len(),
    })
}

/// Checks that each certificate in the chain was issued by the next one (by name and
/// signature), so a server never gets a scrambled chain.
fn check_chain_order(chain: &[CertificateDer<'_>]) -> Result<(), String> {
    let parsed: Vec<X509Certificate<'_>> = chain
        .iter()
        .enumerate()
        .map(|(i, c)| {
            X509Certificate::from_der(c.as_ref())
                .map(|(_, x)| x)
                .map_err(|e| format!("certificate {} of the chain does not parse: {e}", i + 1))
        })
        .collect::<Result<_, _>>()?;
    for (i, pair) in parsed.windows(2).enumerate() {
        if pair[0].issuer() != pair[1].subject() {
            return Err(format!(
                "chain order is wrong (issuer mismatch): certificate {} is issued by \"{}\" but certificate {} is \"{}\"",
                i + 1,
                pair[0].issuer(),
                i + 2,
                pair[1].subject()
            ));
        }
    }
    Ok(())
}

/// Does `sans` cover every configured name (exact match; a wildcard SAN covers a configured
/// wildcard of the same form only, since that is what was ordered)?
pub fn missing_names<'a>(domains: &'a [String], sans: &[String]) -> Vec<&'a str> {
    domains
        .iter()
        .filter(|d| !sans.iter().any(|s| s == *d))
        .map(String::as_str)
        .collect()
}

/// Why a set is unusable, and whether the key file (rather than the certificate) is at fault.
type SetFault = (String, Option<Box<CertInfo>>, bool);

/// Checks what a set contains, whatever the time: key parses and matches the leaf, names
/// are covered, chain parses and is in order.
fn verify_contents(
    key_pem: &[u8],
    chain_pem: &[u8],
    domains: &[String],
) -> Result<CertInfo, SetFault> {
    let chain =
        parse_pem_certs(chain_pem).map_err(|e| (format!("certificate {e}"), None, false))?;
    let info = cert_info(&chain).map_err(|e| (e.to_string(), None, false))?;
    let fail = |m: String, key: bool| (m, Some(Box::new(info.clone())), key);
    let key = parse_pem_key(key_pem).map_err(|e| fail(format!("key {e}"), true))?;
    let key_pub = key_public_raw(&key).map_err(|e| fail(e, true))?;
    let (_, leaf) = X509Certificate::from_der(&info.leaf_der)
        .map_err(|e| fail(format!("leaf does not parse: {e}"), false))?;
    if leaf.public_key().subject_public_key.data.as_ref() != key_pub.as_slice() {
        // A scrambled chain puts an issuer first; saying "key does not match" would send
        // the operator after the wrong file.
        if let Some(i) = chain.iter().skip(1).position(|c| {
            X509Certificate::from_der(c.as_ref()).is_ok_and(|(_, x)| {
                x.public_key().subject_public_key.data.as_ref() == key_pub.as_slice()
            })
        }) {
            return Err(fail(
                format!(
                    "chain order is wrong: the leaf (the certificate matching the key) is certificate {} of the file, it must come first",
                    i + 2
                ),
                false,
            ));
        }
        check_chain_order(&chain).map_err(|e| fail(e, false))?;
        return Err(fail(
            "the private key does not match the certificate's public key".into(),
            true,
        ));
    }
    let missing = missing_names(domains, &info.sans);
    if !missing.is_empty() {
        return Err(fail(
            format!(
                "certificate does not cover {} (it has: {})",
                missing.join(", "),
                info.sans.join(", ")
            ),
            false,
        ));
    }
    check_chain_order(&chain).map_err(|e| fail(e, false))?;
    Ok(info)
}

fn not_yet_valid(info: &CertInfo, now: OffsetDateTime) -> Option<String> {
    (now < info.not_before).then(|| {
        format!(
            "certificate is not valid yet (not before {})",
            crate::timefmt::rfc3339(info.not_before)
        )
    })
}

/// Verifies a complete set: key parses and matches the leaf, names are covered, chain
/// parses and is in order, and `now` is inside the validity window.
pub fn verify_set(
    key_pem: &[u8],
    chain_pem: &[u8],
    domains: &[String],
    now: OffsetDateTime,
) -> Result<CertInfo, (String, Option<Box<CertInfo>>)> {
    let info = verify_contents(key_pem, chain_pem, domains).map_err(|(m, i, _)| (m, i))?;
    if let Some(m) = not_yet_valid(&info, now) {
        return Err((m, Some(Box::new(info))));
    }
    if now >= info.not_after {
        let m = format!(
            "certificate expired at {}",
            crate::timefmt::rfc3339(info.not_after)
        );
        return Err((m, Some(Box::new(info))));
    }
    Ok(info)
}

/// Reads a certificate's installed files and classifies them against the configured
/// `domains`. Expiry is not "invalid" here: an expired but otherwise intact set is
/// `Present`, and the policy reports it as expired.
pub fn inspect(files: &FileSet, domains: &[String], now: OffsetDateTime) -> OnDisk {
    // Bounded, regular files only (symlinks followed: certbot live/, Kubernetes ..data), so
    // a FIFO or device at a path is reported instead of hanging the run.
    inspect_read(files, domains, now, false, &|p| {
        crate::fsx::read_regular(p, crate::fsx::PEM_LIMIT, true)
    })
}

/// The leaf's facts only, for a set already verified in full whose bytes have not changed
/// since: the key and the rest of the chain are not parsed again.
fn inspect_leaf(cert: &Path, chain_pem: &[u8], now: OffsetDateTime) -> OnDisk {
    let invalid = |reason: String| OnDisk::Invalid {
        reason: format!("{}: {reason}", cert.display()),
        info: None,
    };
    let Some(first) = CertificateDer::pem_slice_iter(chain_pem).next() else {
        return invalid("certificate contains no PEM certificate".into());
    };
    let leaf = match first {
        Ok(l) => l,
        Err(e) => return invalid(format!("certificate {}", PemError::NotPem(e))),
    };
    let mut info = match cert_info(std::slice::from_ref(&leaf)) {
        Ok(i) => i,
        Err(e) => return invalid(e.to_string()),
    };
    info.chain_len = chain_pem
        .windows(27)
        .filter(|w| w == b"-----BEGIN CERTIFICATE-----")
        .count();
    match not_yet_valid(&info, now) {
        Some(m) => OnDisk::Invalid {
            reason: format!("{}: {m}", cert.display()),
            info: Some(Box::new(info)),
        },
        None => OnDisk::Present(info),
    }
}

/// [`inspect`] over contents the caller already read (the pass reads each file once, for
/// its fingerprint and for this).
/// `verified` says the caller knows these exact bytes passed the full check before (see
/// `CertRecord::verified_set`): then only the leaf is parsed.
pub fn inspect_read(
    files: &FileSet,
    domains: &[String],
    now: OffsetDateTime,
    verified: bool,
    read_file: &dyn Fn(&Path) -> Result<Vec<u8>, crate::fsx::ReadError>,
) -> OnDisk {
    let read = |p: &Path| match read_file(p) {
        Ok(d) => Ok(d),
        Err(e) if e.is_not_found() => Err(OnDisk::Missing(e.to_string())),
        Err(e) => Err(OnDisk::Invalid {
            reason: e.to_string(),
            info: None,
        }),
    };
    let chain_pem = match read(&files.cert) {
        Ok(d) => d,
        Err(s) => return s,
    };
    if verified {
        return inspect_leaf(&files.cert, &chain_pem, now);
    }
    let key_pem = match read(&files.key) {
        Ok(d) => d,
        Err(s) => return s,
    };
    let invalid = |file: &Path, reason: String, info| OnDisk::Invalid {
        reason: format!("{}: {reason}", file.display()),
        info,
    };
    match verify_contents(&key_pem, &chain_pem, domains) {
        Ok(info) => match not_yet_valid(&info, now) {
            Some(m) => invalid(&files.cert, m, Some(Box::new(info))),
            None => OnDisk::Present(info),
        },
        Err((reason, info, key_file)) => {
            let file = if key_file { &files.key } else { &files.cert };
            invalid(file, reason, info)
        }
    }
}

/// Whether `mode` grants anything `expected` does not (e.g. 0644 for a 0600 key). A
/// stricter mode (0400) is fine.
pub fn mode_too_open(mode: u32, expected: u32) -> bool {
    mode & 0o7777 & !expected != 0
}

/// The mode of a file holding the private key, as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMode {
    /// The config key naming the file: `key_path` or `bundle_path`.
    pub setting: &'static str,
    /// The file.
    pub path: std::path::PathBuf,
    /// Its permission bits (symlinks followed).
    pub mode: u32,
    /// The configured `key_mode`.
    pub expected: u32,
}

impl SecretMode {
    /// A warning for `status`/`check` when the file is more open than configured: a
    /// world-readable key is a leaked key, and certkeeper did not necessarily write it.
    pub fn warning(&self) -> Option<String> {
        if !mode_too_open(self.mode, self.expected) {
            return None;
        }
        let who = if self.mode & 0o004 != 0 {
            "readable by others"
        } else if self.mode & 0o040 != 0 {
            "readable by its group"
        } else {
            "more open than configured"
        };
        Some(format!(
            "{} {} is mode {:04o}, {who}; expected {:04o}",
            self.setting,
            self.path.display(),
            self.mode & 0o7777,
            self.expected
        ))
    }
}

/// The modes of the files holding the key ([`crate::fileset::Role::secret`]) that exist, against the
/// configured `key_mode` (a missing file is reported by [`inspect`], not here).
pub fn secret_modes(files: &FileSet, key_mode: u32) -> Vec<SecretMode> {
    use std::os::unix::fs::PermissionsExt;
    files
        .iter()
        .filter(|(role, _)| role.secret())
        .filter_map(|(role, p)| {
            let m = std::fs::metadata(p).ok()?;
            Some(SecretMode {
                setting: role.config_key(),
                path: p.to_path_buf(),
                mode: m.permissions().mode() & 0o7777,
                expected: key_mode,
            })
        })
        .collect()
}

/// Warnings for key/bundle files more open than `key_mode`, for `status` and `check`.
pub fn mode_warnings(files: &FileSet, key_mode: u32) -> Vec<String> {
    secret_modes(files, key_mode)
        .iter()
        .filter_map(SecretMode::warning)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::time::Duration;
    use rcgen::{CertificateParams, KeyPair};

    fn make(names: &[&str], days: i64) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, names[0].to_string());
        let now = OffsetDateTime::now_utc();
        p.not_before = now - Duration::hours(1);
        p.not_after = now + Duration::days(days);
        let c = p.self_signed(&key).unwrap();
        (key.serialize_pem(), c.pem())
    }

    fn doms(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn good_set_verifies() {
        let (k, c) = make(&["a.example", "b.example"], 10);
        let info = verify_set(
            k.as_bytes(),
            c.as_bytes(),
            &doms(&["a.example", "b.example"]),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        assert_eq!(info.sans, doms(&["a.example", "b.example"]));
        assert_eq!(info.chain_len, 1);
        assert!(!info.serial.is_empty());
    }

    #[test]
    fn mismatched_key_is_rejected() {
        let (_, c) = make(&["a.example"], 10);
        let (k2, _) = make(&["a.example"], 10);
        let (e, info) = verify_set(
            k2.as_bytes(),
            c.as_bytes(),
            &doms(&["a.example"]),
            OffsetDateTime::now_utc(),
        )
        .unwrap_err();
        assert!(e.contains("does not match"), "{e}");
        assert!(info.is_some());
    }

    #[test]
    fn missing_name_is_rejected() {
        let (k, c) = make(&["a.example"], 10);
        let (e, _) = verify_set(
            k.as_bytes(),
            c.as_bytes(),
            &doms(&["a.example", "c.example"]),
            OffsetDateTime::now_utc(),
        )
        .unwrap_err();
        assert!(e.contains("c.example"), "{e}");
    }

    #[test]
    fn expired_and_not_yet_valid() {
        let (k, c) = make(&["a.example"], 1);
        let later = OffsetDateTime::now_utc() + Duration::days(2);
        let (e, _) =
            verify_set(k.as_bytes(), c.as_bytes(), &doms(&["a.example"]), later).unwrap_err();
        assert!(e.contains("expired"), "{e}");
        let earlier = OffsetDateTime::now_utc() - Duration::days(2);
        let (e, _) =
            verify_set(k.as_bytes(), c.as_bytes(), &doms(&["a.example"]), earlier).unwrap_err();
        assert!(e.contains("not valid yet"), "{e}");
    }

    #[test]
    fn garbage_is_not_pem() {
        let (k, _) = make(&["a.example"], 1);
        let (e, info) = verify_set(
            k.as_bytes(),
            b"hello world\n",
            &doms(&["a.example"]),
            OffsetDateTime::now_utc(),
        )
        .unwrap_err();
        assert!(e.contains("no PEM CERTIFICATE"), "{e}");
        assert!(info.is_none());
        assert!(
            parse_pem_key(b"nope")
                .unwrap_err()
                .to_string()
                .contains("no PEM private key")
        );
    }

    /// A CA and a leaf it issued, as (leaf key PEM, leaf PEM, CA PEM).
    fn issued(names: &[&str]) -> (String, String, String) {
        let ca_key = KeyPair::generate().unwrap();
        let mut cp = CertificateParams::new(Vec::<String>::new()).unwrap();
        cp.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        cp.distinguished_name = rcgen::DistinguishedName::new();
        cp.distinguished_name
            .push(rcgen::DnType::CommonName, "test CA");
        let ca = cp.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(cp, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, names[0].to_string());
        let leaf = p.signed_by(&key, &issuer).unwrap();
        (key.serialize_pem(), leaf.pem(), ca.pem())
    }

    /// The files of a certificate `a.example` in `dir` (cert.pem, key.pem, and a bundle if
    /// given).
    fn cert_files(dir: &Path, bundle: Option<PathBuf>) -> FileSet {
        FileSet {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            chain: None,
            bundle,
        }
    }

    /// The configured names of the certificate [`cert_files`] describes.
    fn names() -> Vec<String> {
        doms(&["a.example"])
    }

    /// Issuer first, leaf second used to be reported as "key does not match" on key_path.
    #[test]
    fn scrambled_chain_is_reported_as_chain_order_on_the_cert_file() {
        let d = tempfile::tempdir().unwrap();
        let c = cert_files(d.path(), None);
        let (k, leaf, ca) = issued(&["a.example"]);
        std::fs::write(&c.key, &k).unwrap();
        std::fs::write(&c.cert, format!("{leaf}{ca}")).unwrap();
        assert!(matches!(
            inspect(&c, &names(), OffsetDateTime::now_utc()),
            OnDisk::Present(_)
        ));
        std::fs::write(&c.cert, format!("{ca}{leaf}")).unwrap();
        let OnDisk::Invalid { reason, .. } = inspect(&c, &names(), OffsetDateTime::now_utc())
        else {
            panic!("scrambled chain accepted")
        };
        assert!(reason.contains("chain order is wrong"), "{reason}");
        assert!(reason.contains("leaf"), "{reason}");
        assert!(!reason.contains("does not match"), "{reason}");
        assert!(
            reason.starts_with(&c.cert.display().to_string()),
            "{reason}"
        );
        // A genuinely foreign key is still a key mismatch on key_path.
        let (other, _) = make(&["a.example"], 1);
        std::fs::write(&c.cert, format!("{leaf}{ca}")).unwrap();
        std::fs::write(&c.key, other).unwrap();
        let OnDisk::Invalid { reason, .. } = inspect(&c, &names(), OffsetDateTime::now_utc())
        else {
            panic!("foreign key accepted")
        };
        assert!(
            reason.starts_with(&c.key.display().to_string()) && reason.contains("does not match"),
            "{reason}"
        );
    }

    #[test]
    fn fifo_or_directory_at_a_path_is_invalid_and_named() {
        let d = tempfile::tempdir().unwrap();
        let c = cert_files(d.path(), None);
        let (k, _) = make(&["a.example"], 1);
        std::fs::write(&c.key, k).unwrap();
        nix::unistd::mkfifo(&c.cert, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let OnDisk::Invalid { reason, .. } = inspect(&c, &names(), OffsetDateTime::now_utc())
        else {
            panic!("FIFO accepted")
        };
        assert!(
            reason.contains("is a FIFO") && reason.contains("cert.pem"),
            "{reason}"
        );
        std::fs::remove_file(&c.cert).unwrap();
        std::fs::create_dir(&c.cert).unwrap();
        let OnDisk::Invalid { reason, .. } = inspect(&c, &names(), OffsetDateTime::now_utc())
        else {
            panic!("directory accepted")
        };
        assert!(reason.contains("is a directory"), "{reason}");
        std::fs::remove_dir(&c.cert).unwrap();
        std::fs::write(&c.cert, vec![b'x'; 2 * 1024 * 1024]).unwrap();
        let OnDisk::Invalid { reason, .. } = inspect(&c, &names(), OffsetDateTime::now_utc())
        else {
            panic!("huge file accepted")
        };
        assert!(reason.contains("larger than 1 MiB"), "{reason}");
        let e = read_pem_certs(&c.cert).unwrap_err().to_string();
        assert!(e.contains("larger than 1 MiB"), "{e}");
    }

    #[test]
    fn world_readable_key_and_bundle_are_flagged() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let bundle = d.path().join("bundle.pem");
        let c = cert_files(d.path(), Some(bundle.clone()));
        for (p, m) in [(&c.key, 0o644), (&bundle, 0o640)] {
            std::fs::write(p, b"x").unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        }
        let w = mode_warnings(&c, 0o600);
        assert_eq!(
            w,
            vec![
                format!(
                    "key_path {} is mode 0644, readable by others; expected 0600",
                    c.key.display()
                ),
                format!(
                    "bundle_path {} is mode 0640, readable by its group; expected 0600",
                    bundle.display()
                ),
            ]
        );
        let modes = secret_modes(&c, 0o600);
        assert_eq!(modes[0].mode, 0o644);
        for p in [&c.key, &bundle] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o400)).unwrap();
        }
        assert!(mode_warnings(&c, 0o600).is_empty());
        assert!(mode_too_open(0o644, 0o600));
        assert!(!mode_too_open(0o640, 0o640));
        assert!(mode_too_open(0o4600, 0o600));
    }

    /// The typed errors keep the messages the `String` errors had: the file first when
    /// one was read, then the cause.
    #[test]
    fn pem_errors_name_the_file_and_the_cause() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ca.pem");
        std::fs::write(&p, "hello\n").unwrap();
        let e = read_pem_certs(&p).unwrap_err();
        assert!(matches!(
            e,
            PemFileError::Parse {
                source: PemError::NoCertificate,
                ..
            }
        ));
        assert_eq!(
            e.to_string(),
            format!("{}: contains no PEM CERTIFICATE block", p.display())
        );
        let missing = d.path().join("nope.pem");
        let e = read_pem_certs(&missing).unwrap_err();
        assert!(
            matches!(&e, PemFileError::Read(r) if r.is_not_found()),
            "{e}"
        );
        assert!(e.to_string().contains("nope.pem"), "{e}");
        assert_eq!(
            cert_info(&[]).unwrap_err().to_string(),
            "empty certificate chain"
        );
        let (k, _) = make(&["a.example"], 1);
        let e = parse_pem_key(&k.as_bytes()[..k.len() / 2]).unwrap_err();
        assert!(
            e.to_string().starts_with("not a valid PEM private key: "),
            "{e}"
        );
    }

    #[test]
    fn chain_order_is_checked() {
        let (_, a) = make(&["a.example"], 1);
        let (_, b) = make(&["b.example"], 1);
        let chain = parse_pem_certs(format!("{a}{b}").as_bytes()).unwrap();
        assert!(
            check_chain_order(&chain)
                .unwrap_err()
                .contains("chain order is wrong")
        );
        assert!(check_chain_order(&chain[..1]).is_ok());
    }
}
