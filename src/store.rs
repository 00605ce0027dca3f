//! Crash-safe installation of a new key + certificate set.
//!
//! 1. **Stage**: the complete, verified set is written under `state_dir/staging/<name>/`,
//!    every file fsynced, and only then a `manifest.json` (itself written atomically). The
//!    manifest's existence is the commit point: without it a staging dir is garbage.
//! 2. **Install**: each target gets a temp file in its own directory, created 0600 and then
//!    set to its final mode and owner (a key is never readable by others, not even for an
//!    instant), fsynced, the old file hard-linked to `<path>.prev`, renamed over the target,
//!    and the directory fsynced. Files already identical to the staged copy are skipped, so
//!    installing again is idempotent.
//! 3. **Roll forward**: if the process dies during (2), the manifest is still there and the
//!    next start installs it again before doing anything else.
//!
//! Nothing is ever removed before its replacement is in place.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::CertConfig;
use crate::state::StateDir;

/// Errors while staging or installing, naming the file involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Filesystem failure on a path.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Owner or group could not be resolved.
    #[error("{0}")]
    Owner(String),
    /// The staged manifest is unreadable.
    #[error("{path}: corrupt staging manifest: {message}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A new set as PEM text, ready to stage.
pub struct NewSet {
    /// The private key (PKCS#8 PEM).
    pub key_pem: String,
    /// Leaf followed by the chain.
    pub fullchain_pem: String,
    /// The chain without the leaf.
    pub chain_pem: String,
}

impl std::fmt::Debug for NewSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSet")
            .field("key_pem", &"***")
            .field("fullchain_pem", &self.fullchain_pem.len())
            .finish()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    target: PathBuf,
    staged: String,
    mode: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    entries: Vec<Entry>,
    uid: Option<u32>,
    gid: Option<u32>,
}

/// Resolves owner/group names to ids; errors name the missing user or group.
pub fn resolve_owner(
    owner: Option<&str>,
    group: Option<&str>,
) -> Result<(Option<u32>, Option<u32>), String> {
    let uid = match owner {
        None => None,
        Some(o) => match o.parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => match nix::unistd::User::from_name(o) {
                Ok(Some(u)) => Some(u.uid.as_raw()),
                _ => return Err(format!("user {o:?} does not exist on this machine")),
            },
        },
    };
    let gid = match group {
        None => None,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => match nix::unistd::Group::from_name(g) {
                Ok(Some(gr)) => Some(gr.gid.as_raw()),
                _ => return Err(format!("group {g:?} does not exist on this machine")),
            },
        },
    };
    Ok((uid, gid))
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes `data` to `path` atomically: temp file in the same directory created with mode
/// 0600, then `mode`/owner applied, fsync, rename, fsync of the directory.
pub fn write_atomic(
    path: &Path,
    data: &[u8],
    mode: u32,
    owner: Option<(Option<u32>, Option<u32>)>,
) -> std::io::Result<()> {
    let dir = parent(path);
    let tmp = dir.join(format!(
        ".{}.certkeeper-tmp.{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        if let Some((uid, gid)) = owner
            && (uid.is_some() || gid.is_some())
        {
            nix::unistd::fchown(
                &f,
                uid.map(nix::unistd::Uid::from_raw),
                gid.map(nix::unistd::Gid::from_raw),
            )
            .map_err(std::io::Error::from)?;
        }
        // Set the exact mode after creation: the umask must not widen or narrow it.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Keeps the current file as `<path>.prev`, atomically, without ever removing `path`.
fn keep_previous(path: &Path) -> std::io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let prev = PathBuf::from(format!("{}.prev", path.display()));
    let tmp = PathBuf::from(format!("{}.prev.certkeeper-tmp", path.display()));
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(path, &tmp).is_err() {
        // Filesystems without hard links: copy, preserving the mode.
        let mode = std::fs::metadata(path)?.permissions().mode();
        let data = std::fs::read(path)?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&data)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &prev)
}

fn manifest_path(state: &StateDir, name: &str) -> PathBuf {
    state.staging_dir(name).join("manifest.json")
}

/// Writes the complete new set into the staging area and commits it with a manifest.
pub fn stage(state: &StateDir, cert: &CertConfig, set: &NewSet) -> Result<(), StoreError> {
    let dir = state.staging_dir(&cert.name);
    // Anything there without a manifest is an abandoned half-staging; with a manifest it
    // would have been rolled forward before we got here.
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io(&dir))?;
    let owner =
        resolve_owner(cert.owner.as_deref(), cert.group.as_deref()).map_err(StoreError::Owner)?;
    let bundle = format!("{}{}", set.key_pem, set.fullchain_pem);
    let mut files: Vec<(&str, &[u8], &Path, u32)> = vec![
        (
            "key.pem",
            set.key_pem.as_bytes(),
            &cert.key_path,
            cert.key_mode,
        ),
        (
            "fullchain.pem",
            set.fullchain_pem.as_bytes(),
            &cert.cert_path,
            cert.cert_mode,
        ),
    ];
    if let Some(p) = &cert.chain_path {
        files.push(("chain.pem", set.chain_pem.as_bytes(), p, cert.cert_mode));
    }
    if let Some(p) = &cert.bundle_path {
        files.push(("bundle.pem", bundle.as_bytes(), p, cert.key_mode));
    }
    let mut entries = Vec::new();
    for (staged, data, target, mode) in files {
        let p = dir.join(staged);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .map_err(io(&p))?;
        f.write_all(data).map_err(io(&p))?;
        f.sync_all().map_err(io(&p))?;
        entries.push(Entry {
            target: target.to_path_buf(),
            staged: staged.to_string(),
            mode,
        });
    }
    fsync_dir(&dir).map_err(io(&dir))?;
    let manifest = Manifest {
        entries,
        uid: owner.0,
        gid: owner.1,
    };
    let mp = manifest_path(state, &cert.name);
    write_atomic(
        &mp,
        &serde_json::to_vec_pretty(&manifest).expect("manifest serializes"),
        0o600,
        None,
    )
    .map_err(io(&mp))
}

/// Is there a committed, not yet completed install for this certificate?
pub fn has_staged(state: &StateDir, name: &str) -> bool {
    manifest_path(state, name).exists()
}

/// Debug builds only: die abruptly at a named point, so tests can prove roll-forward.
fn fault_point(name: &str) {
    if cfg!(debug_assertions) && std::env::var("CERTKEEPER_FAULT").as_deref() == Ok(name) {
        eprintln!("certkeeper: CERTKEEPER_FAULT={name}: exiting abruptly");
        std::process::exit(99);
    }
}

/// Installs the staged set into place (see the module docs). Returns false if nothing
/// was staged. The staging dir is left in place: call [`finish`] once the state records
/// that hooks are pending, so a crash in between still leads to hooks running.
pub fn install(state: &StateDir, name: &str) -> Result<bool, StoreError> {
    let mp = manifest_path(state, name);
    let raw = match std::fs::read(&mp) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io(&mp)(e)),
    };
    let manifest: Manifest = serde_json::from_slice(&raw).map_err(|e| StoreError::Manifest {
        path: mp.clone(),
        message: e.to_string(),
    })?;
    let dir = state.staging_dir(name);
    let mut renamed = 0;
    for e in &manifest.entries {
        let staged = dir.join(&e.staged);
        let data = std::fs::read(&staged).map_err(io(&staged))?;
        if std::fs::read(&e.target).ok().as_deref() == Some(&data[..]) {
            continue; // already installed by an interrupted run
        }
        keep_previous(&e.target).map_err(io(&e.target))?;
        write_atomic(&e.target, &data, e.mode, Some((manifest.uid, manifest.gid)))
            .map_err(io(&e.target))?;
        renamed += 1;
        if renamed == 1 {
            fault_point("install-after-first-rename");
        }
    }
    Ok(true)
}

/// Removes the staging area after a completed install.
pub fn finish(state: &StateDir, name: &str) -> Result<(), StoreError> {
    let mp = manifest_path(state, name);
    match std::fs::remove_file(&mp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&mp)(e)),
    }
    let dir = state.staging_dir(name);
    fsync_dir(&dir).map_err(io(&dir))?;
    std::fs::remove_dir_all(&dir).map_err(io(&dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn cfg(dir: &Path) -> CertConfig {
        let src = format!(
            r#"
state_dir = "{d}/state"
[acme]
directory = "https://127.0.0.1:1/dir"
[[cert]]
name = "t"
domains = ["a.example"]
cert_path = "{d}/out/cert.pem"
key_path = "{d}/out/key.pem"
bundle_path = "{d}/out/bundle.pem"
http01_listen = "127.0.0.1:1"
"#,
            d = dir.display()
        );
        Config::from_str_at(&src, Path::new("t.toml"), dir)
            .unwrap()
            .certs
            .remove(0)
    }

    fn set(tag: &str) -> NewSet {
        NewSet {
            key_pem: format!("KEY {tag}\n"),
            fullchain_pem: format!("CERT {tag}\n"),
            chain_pem: String::new(),
        }
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn stage_install_keeps_prev_and_modes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("out")).unwrap();
        let c = cfg(d.path());
        let st = StateDir::create(&d.path().join("state")).unwrap();
        stage(&st, &c, &set("1")).unwrap();
        assert!(has_staged(&st, "t"));
        assert!(install(&st, "t").unwrap());
        finish(&st, "t").unwrap();
        assert!(!has_staged(&st, "t"));
        assert_eq!(std::fs::read_to_string(&c.key_path).unwrap(), "KEY 1\n");
        assert_eq!(mode(&c.key_path), 0o600);
        assert_eq!(mode(&c.cert_path), 0o644);
        assert_eq!(mode(c.bundle_path.as_ref().unwrap()), 0o600);
        assert_eq!(
            std::fs::read_to_string(c.bundle_path.as_ref().unwrap()).unwrap(),
            "KEY 1\nCERT 1\n"
        );

        stage(&st, &c, &set("2")).unwrap();
        install(&st, "t").unwrap();
        finish(&st, "t").unwrap();
        assert_eq!(std::fs::read_to_string(&c.cert_path).unwrap(), "CERT 2\n");
        let prev = format!("{}.prev", c.key_path.display());
        assert_eq!(std::fs::read_to_string(&prev).unwrap(), "KEY 1\n");
        assert_eq!(mode(Path::new(&prev)), 0o600);
        // No temp files left behind.
        let leftovers: Vec<_> = std::fs::read_dir(d.path().join("out"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("certkeeper-tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn reinstall_is_idempotent_and_does_not_clobber_prev() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("out")).unwrap();
        let c = cfg(d.path());
        let st = StateDir::create(&d.path().join("state")).unwrap();
        stage(&st, &c, &set("1")).unwrap();
        install(&st, "t").unwrap();
        finish(&st, "t").unwrap();
        stage(&st, &c, &set("2")).unwrap();
        install(&st, "t").unwrap();
        // A roll-forward after a crash installs the same manifest again.
        install(&st, "t").unwrap();
        let prev = format!("{}.prev", c.cert_path.display());
        assert_eq!(std::fs::read_to_string(prev).unwrap(), "CERT 1\n");
    }

    #[test]
    fn install_without_staging_is_noop() {
        let d = tempfile::tempdir().unwrap();
        let st = StateDir::create(d.path()).unwrap();
        assert!(!install(&st, "nothing").unwrap());
    }
}
