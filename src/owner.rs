//! Ownership markers: which `state_dir` manages a certificate's files.
//!
//! Two certkeepers with different `state_dir`s hold different locks, so nothing else stops
//! them from both managing `/etc/tls/www.pem`: each would order and overwrite the other's
//! set on every run. Before ordering, each managed file is claimed with a marker next to it:
//!
//! `<dir>/.<file name>.certkeeper-owner`, JSON `{"state_dir": "/var/lib/certkeeper",
//! "cert": "www", "file": "www.pem"}`, mode 0644 (no secrets).
//!
//! One marker per managed file, not one per directory, so two state_dirs that legitimately
//! share a directory never read-modify-write the same marker (their locks differ, so such
//! an update could lose the other's entry). The first claim is exclusive: the marker is
//! written to a temp file and hard-linked into place, which fails if another process
//! claimed it first. Rewrites of our own marker (a renamed certificate) go through
//! temp + rename. `state_dir` is stored canonicalised, so two spellings of one
//! directory are the same owner.
//!
//! Markers are written only for files that exist: before ordering for an installed set,
//! and right after the first install for a new one, so a certificate that fails on its
//! first run leaves nothing behind. A marker binds while its file exists or its
//! state_dir's lock is held; one whose file is gone and whose owner is not running is
//! stale and taken over. Left open: two state_dirs both issuing the same never-installed
//! certificate in the same minute both install once; the next run of the later one is
//! refused.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsx;

use crate::config::CertConfig;

/// Suffix of marker files; `inventory`-style scans of a directory can skip these.
pub const MARKER_SUFFIX: &str = ".certkeeper-owner";

/// Markers are tiny; anything bigger is not ours and is not read further.
const MAX_MARKER_BYTES: u64 = 16 * 1024;

/// What a marker says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// The owning state directory, canonical.
    pub state_dir: PathBuf,
    /// The certificate name in the owner's config (informational).
    pub cert: String,
    /// The managed file's name (informational, for humans listing the directory).
    pub file: String,
}

/// Why a certificate may not be handled by this state directory.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    /// Another state directory manages this file.
    #[error(
        "{key} {file} is managed by another certkeeper with state_dir {other} (marker {marker}, certificate {other_cert:?}); two state_dirs must not manage the same files: remove this certificate from one config, or delete the marker if {other} is no longer used"
    )]
    OwnedByOther {
        /// The config key (`cert_path`, ...).
        key: &'static str,
        /// The managed file.
        file: PathBuf,
        /// The marker naming the other owner.
        marker: PathBuf,
        /// The other state directory.
        other: PathBuf,
        /// The certificate name in the other config.
        other_cert: String,
    },
    /// A marker that is not a small JSON file we wrote; left alone.
    #[error(
        "{marker}: unreadable ownership marker ({message}); inspect and delete it to let this state_dir claim {file}"
    )]
    Corrupt {
        /// The marker.
        marker: PathBuf,
        /// The managed file it guards.
        file: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// Filesystem problem, with the path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The marker path for a managed file: `<dir>/.<name>.certkeeper-owner`.
pub fn marker_path(file: &Path) -> PathBuf {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    file.with_file_name(format!(".{name}{MARKER_SUFFIX}"))
}

/// `state_root` as stored in markers: canonical when it exists, else its parent resolved.
pub fn canonical_state_dir(state_root: &Path) -> PathBuf {
    std::fs::canonicalize(state_root).unwrap_or_else(|_| {
        crate::config::canonical_file(state_root, &mut std::collections::HashMap::new())
    })
}

/// Reads a marker: `None` when there is none.
pub fn read_marker(marker: &Path, file: &Path) -> Result<Option<Marker>, OwnerError> {
    let corrupt = |message: String| OwnerError::Corrupt {
        marker: marker.to_path_buf(),
        file: file.to_path_buf(),
        message,
    };
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(marker)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(corrupt("it is a symlink".into()));
        }
        Err(e) => {
            return Err(OwnerError::Io {
                path: marker.to_path_buf(),
                source: e,
            });
        }
    };
    let meta = f.metadata().map_err(|e| OwnerError::Io {
        path: marker.to_path_buf(),
        source: e,
    })?;
    if !meta.is_file() {
        return Err(corrupt("it is not a regular file".into()));
    }
    let mut data = Vec::new();
    f.take(MAX_MARKER_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(|e| OwnerError::Io {
            path: marker.to_path_buf(),
            source: e,
        })?;
    if data.len() as u64 > MAX_MARKER_BYTES {
        return Err(corrupt(format!("larger than {MAX_MARKER_BYTES} bytes")));
    }
    serde_json::from_slice(&data)
        .map(Some)
        .map_err(|e| corrupt(e.to_string()))
}

/// Checks that no other state directory owns any of `cert`'s files, writing nothing (for
/// `check`, `status` and `--dry-run`).
pub fn check(state_root: &Path, cert: &CertConfig) -> Result<(), OwnerError> {
    let me = canonical_state_dir(state_root);
    let files = cert.files();
    for (role, file) in files.iter() {
        let key = role.config_key();
        let marker = marker_path(file);
        if let Some(m) = read_marker(&marker, file)? {
            other_owner(&me, key, file, &marker, m)?;
        }
    }
    Ok(())
}

fn other_owner(
    me: &Path,
    key: &'static str,
    file: &Path,
    marker: &Path,
    m: Marker,
) -> Result<(), OwnerError> {
    if m.state_dir == me || is_stale(&m, file) {
        return Ok(());
    }
    Err(OwnerError::OwnedByOther {
        key,
        file: file.to_path_buf(),
        marker: marker.to_path_buf(),
        other: m.state_dir,
        other_cert: m.cert,
    })
}

/// A claim by another state_dir that never installed the file and is not running now
/// (its lock is free) protects nothing: typically a first attempt under a state_dir the
/// operator has since replaced. It may be taken over. Anything we cannot inspect binds.
fn is_stale(m: &Marker, file: &Path) -> bool {
    if std::fs::symlink_metadata(file).is_ok() {
        return false;
    }
    let lock = m.state_dir.join("lock");
    let f = match std::fs::File::open(&lock) {
        Ok(f) => f,
        Err(e) => return e.kind() == std::io::ErrorKind::NotFound,
    };
    use nix::fcntl::{Flock, FlockArg};
    // Dropping the Flock releases it at once; we only probe.
    Flock::lock(f, FlockArg::LockSharedNonblock).is_ok()
}

/// Claims every existing file of `cert` for `state_root`, or fails naming the other owner.
/// Call it under the state lock before ordering, and again after installing (files that
/// did not exist before are claimed then). All files are checked before any marker is
/// written, so a refused certificate leaves no new marker behind.
pub fn claim(state_root: &Path, cert: &CertConfig) -> Result<(), OwnerError> {
    claim_as(&canonical_state_dir(state_root), cert)
}

/// [`claim`] with the state directory already in its canonical form, so a pass over many
/// certificates resolves it once. Every marker is read once: all are checked before any
/// is written, so a refused certificate claims nothing.
pub fn claim_as(me: &Path, cert: &CertConfig) -> Result<(), OwnerError> {
    let files = cert.files();
    let mut found = Vec::new();
    for (role, file) in files.iter() {
        let marker = marker_path(file);
        let m = read_marker(&marker, file)?;
        if let Some(m) = &m {
            other_owner(me, role.config_key(), file, &marker, m.clone())?;
        }
        found.push((role.config_key(), file, marker, m));
    }
    for (key, file, marker, m) in found {
        let want = Marker {
            state_dir: me.to_path_buf(),
            cert: cert.name.clone(),
            file: file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        if m.as_ref() == Some(&want) {
            continue;
        }
        if std::fs::symlink_metadata(file).is_err() {
            // Not installed yet: a certificate that then fails leaves nothing behind. The
            // caller claims again after installing.
            continue;
        }
        if m.is_some() {
            // Ours under another certificate name, or a stale one: rewrite.
            write_marker(&marker, &want, false)?;
        } else if !write_marker(&marker, &want, true)? {
            // Lost a race with another claimer: whoever won decides.
            if let Some(m) = read_marker(&marker, file)? {
                other_owner(me, key, file, &marker, m)?;
            }
        }
    }
    Ok(())
}

/// Removes stale marker temps in `dir`, the first time this process writes a marker there.
fn sweep_marker_temps(dir: &Path) {
    static SWEPT: std::sync::Mutex<Option<std::collections::HashSet<PathBuf>>> =
        std::sync::Mutex::new(None);
    let first = SWEPT
        .lock()
        .map(|mut s| {
            s.get_or_insert_with(Default::default)
                .insert(dir.to_path_buf())
        })
        .unwrap_or(true);
    if first {
        let _ = fsx::remove_stale_temps_where(dir, &|f| f.ends_with(MARKER_SUFFIX), None);
    }
}

/// Writes a marker via a temp file; `exclusive` links it into place (false if one appeared
/// meanwhile), otherwise renames over ours.
fn write_marker(marker: &Path, m: &Marker, exclusive: bool) -> Result<bool, OwnerError> {
    let err = |source| OwnerError::Io {
        path: marker.to_path_buf(),
        source,
    };
    // Temp files an interrupted claim left (the same naming as every other atomic write):
    // swept once per directory and process, for all markers there, since listing a
    // directory of 10,000 certificates for each marker made a first pass quadratic.
    sweep_marker_temps(fsx::parent(marker));
    let mut data = serde_json::to_vec_pretty(m).expect("marker serializes");
    data.push(b'\n');
    // Mode 0644 whatever the umask: the marker holds no secret and others may read it.
    let prepared = fsx::prepare(marker, &data, 0o644, None).map_err(err)?;
    if exclusive {
        prepared.link_new().map_err(err)
    } else {
        prepared.commit().map(|()| true).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn cert(dir: &Path, name: &str, chain: bool) -> CertConfig {
        let chain = if chain {
            "chain_path = \"out/chain.pem\"\n"
        } else {
            ""
        };
        let src = format!(
            "[acme]\ndirectory = \"letsencrypt\"\n[defaults]\nhttp01_listen = \"[::]:80\"\n[[cert]]\nname = \"{name}\"\ndomains = [\"a.example\"]\ncert_path = \"out/a.pem\"\nkey_path = \"out/a.key\"\n{chain}"
        );
        Config::from_str_at(&src, Path::new("t.toml"), dir)
            .unwrap()
            .certs
            .remove(0)
    }

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("out")).unwrap();
        let s1 = d.path().join("state1");
        let s2 = d.path().join("state2");
        std::fs::create_dir(&s1).unwrap();
        std::fs::create_dir(&s2).unwrap();
        (d, s1, s2)
    }

    #[test]
    fn first_claim_writes_markers_and_second_state_dir_is_refused() {
        let (d, s1, s2) = setup();
        let c = cert(d.path(), "www", false);
        claim(&s1, &c).unwrap();
        assert!(
            !marker_path(&c.cert_path).exists(),
            "nothing installed, nothing claimed"
        );
        std::fs::write(&c.cert_path, "CERT").unwrap();
        std::fs::write(&c.key_path, "KEY").unwrap();
        claim(&s1, &c).unwrap();
        let marker = d.path().join("out/.a.pem.certkeeper-owner");
        let m = read_marker(&marker, &c.cert_path).unwrap().unwrap();
        assert_eq!(m.state_dir, std::fs::canonicalize(&s1).unwrap());
        assert_eq!(m.cert, "www");
        assert_eq!(m.file, "a.pem");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&marker).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        assert!(d.path().join("out/.a.key.certkeeper-owner").exists());

        // Claiming again from the same state_dir (another spelling) is fine.
        claim(&d.path().join("state1/../state1"), &c).unwrap();
        check(&s1, &c).unwrap();

        for e in [check(&s2, &c).unwrap_err(), claim(&s2, &c).unwrap_err()] {
            let msg = e.to_string();
            assert!(msg.contains(&m.state_dir.display().to_string()), "{msg}");
            assert!(msg.contains("cert_path") && msg.contains("a.pem"), "{msg}");
            assert!(matches!(e, OwnerError::OwnedByOther { .. }));
        }
        // The refused claim changed nothing.
        assert_eq!(read_marker(&marker, &c.cert_path).unwrap().unwrap(), m);
        // No temp files left behind.
        let names: Vec<_> = std::fs::read_dir(d.path().join("out"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp.")), "{names:?}");
    }

    #[test]
    fn refused_claim_writes_no_marker_for_the_files_it_does_not_own_yet() {
        let (d, s1, s2) = setup();
        let c1 = cert(d.path(), "www", false);
        std::fs::write(&c1.cert_path, "CERT").unwrap();
        claim(&s1, &c1).unwrap();
        std::fs::write(d.path().join("out/chain.pem"), "CHAIN").unwrap();
        // The second config also has a chain file nobody owns yet: it must not be claimed.
        let c2 = cert(d.path(), "www", true);
        assert!(claim(&s2, &c2).is_err());
        assert!(!d.path().join("out/.chain.pem.certkeeper-owner").exists());
    }

    #[test]
    fn renamed_certificate_updates_its_own_marker() {
        let (d, s1, _) = setup();
        std::fs::write(d.path().join("out/a.pem"), "CERT").unwrap();
        claim(&s1, &cert(d.path(), "old", false)).unwrap();
        claim(&s1, &cert(d.path(), "new", false)).unwrap();
        let c = cert(d.path(), "new", false);
        let m = read_marker(&marker_path(&c.cert_path), &c.cert_path)
            .unwrap()
            .unwrap();
        assert_eq!(m.cert, "new");
    }

    #[test]
    fn corrupt_or_symlinked_marker_is_an_error_and_left_alone() {
        let (d, s1, _) = setup();
        let c = cert(d.path(), "www", false);
        std::fs::write(&c.cert_path, "CERT").unwrap();
        let marker = marker_path(&c.cert_path);
        std::fs::write(&marker, b"not json").unwrap();
        let e = claim(&s1, &c).unwrap_err().to_string();
        assert!(e.contains("unreadable ownership marker"), "{e}");
        assert_eq!(std::fs::read(&marker).unwrap(), b"not json");

        std::fs::remove_file(&marker).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &marker).unwrap();
        let e = claim(&s1, &c).unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
        assert!(std::fs::symlink_metadata(&marker).unwrap().is_symlink());
    }

    #[test]
    fn missing_directory_is_skipped() {
        let d = tempfile::tempdir().unwrap();
        let s1 = d.path().join("state");
        std::fs::create_dir(&s1).unwrap();
        claim(&s1, &cert(d.path(), "www", false)).unwrap();
        assert!(!d.path().join("out").exists());
    }

    #[test]
    fn marker_whose_file_is_gone_binds_only_while_its_owner_runs() {
        let (d, s1, s2) = setup();
        let c = cert(d.path(), "www", false);
        let state1 = crate::state::StateDir::create(&s1).unwrap();
        std::fs::write(&c.cert_path, "CERT").unwrap();
        claim(&s1, &c).unwrap();
        std::fs::remove_file(&c.cert_path).unwrap();
        // state1 is mid-run (lock held): still binding.
        let held = state1.lock("certkeeper renew").unwrap();
        let e = check(&s2, &c).unwrap_err().to_string();
        assert!(e.contains("state1"), "{e}");
        drop(held);
        // state1 is not running and the file is gone: stale, state2 takes over.
        std::fs::write(&c.cert_path, "CERT 2").unwrap();
        let e = claim(&s2, &c).unwrap_err().to_string();
        assert!(e.contains("state1"), "file exists again: binding: {e}");
        std::fs::remove_file(&c.cert_path).unwrap();
        check(&s2, &c).unwrap();
    }
}
