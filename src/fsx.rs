//! File primitives that are safe against what may be planted in a managed directory:
//! bounded reads that refuse FIFOs, devices and directories (a FIFO at `cert_path` must not
//! hang `status`, `renew` or the daemon), and atomic writes through unique temp files that
//! never follow a symlink and that a later run can recognise and remove after a crash.
//!
//! A leaf module: it knows nothing about certificates or configuration.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Cap for certificate, key, chain and bundle files: real ones are a few KiB.
pub const PEM_LIMIT: u64 = 1024 * 1024;

/// Cap for certkeeper's own JSON state files.
pub const STATE_LIMIT: u64 = 16 * 1024 * 1024;

/// The marker in every temp file name certkeeper creates; `.<file>.certkeeper-tmp.<pid>.<rnd>`.
pub const TEMP_MARKER: &str = ".certkeeper-tmp.";

/// Why a bounded read failed, naming the path.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Nothing at the path (or a dangling symlink).
    #[error("{} does not exist", path.display())]
    NotFound {
        /// The path.
        path: PathBuf,
    },
    /// Something that is not a regular file: reading it could block forever or never end.
    #[error("{} is {what}, not a regular file", path.display())]
    NotRegular {
        /// The path.
        path: PathBuf,
        /// "a FIFO", "a directory", ...
        what: &'static str,
    },
    /// Larger than any legitimate file of its kind.
    #[error("{} is larger than {}", path.display(), human(*limit))]
    TooLarge {
        /// The path.
        path: PathBuf,
        /// The cap that was exceeded.
        limit: u64,
    },
    /// Any other failure.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl ReadError {
    /// Whether the file simply does not exist (callers often treat that as "missing").
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }
}

fn human(limit: u64) -> String {
    if limit >= 1024 * 1024 && limit % (1024 * 1024) == 0 {
        format!("{} MiB", limit / (1024 * 1024))
    } else {
        format!("{limit} bytes")
    }
}

/// Describes a non-regular file type for error messages.
pub fn kind_of(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_symlink() {
        "a symlink"
    } else if ft.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// If something exists at `path` (following symlinks) and is not a regular file, says what
/// it is. Lets writers refuse to replace a FIFO or device they did not create.
pub fn non_regular(path: &Path) -> Option<&'static str> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => Some(kind_of(m.file_type())),
        _ => None,
    }
}

/// Reads a regular file of at most `limit` bytes. `follow` says whether `path` itself may
/// be a symlink (cert/key paths may be: certbot `live/`, Kubernetes `..data`); the final
/// target must be a regular file either way. Opening is non-blocking, so a FIFO is detected
/// by `fstat` instead of hanging in `open` or `read`.
pub fn read_regular(path: &Path, limit: u64, follow: bool) -> Result<Vec<u8>, ReadError> {
    let mut flags = libc_flags::O_NONBLOCK | libc_flags::O_CLOEXEC;
    if !follow {
        flags |= libc_flags::O_NOFOLLOW;
    }
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ReadError::NotFound {
                path: path.to_path_buf(),
            },
            // O_NOFOLLOW on a symlink fails with ELOOP.
            _ if source.raw_os_error() == Some(libc_flags::ELOOP) && !follow => {
                ReadError::NotRegular {
                    path: path.to_path_buf(),
                    what: "a symlink",
                }
            }
            _ => ReadError::Io {
                path: path.to_path_buf(),
                source,
            },
        })?;
    let meta = f.metadata().map_err(|source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular {
            path: path.to_path_buf(),
            what: kind_of(meta.file_type()),
        });
    }
    if meta.len() > limit {
        return Err(ReadError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    // The file may grow between fstat and read: read one byte past the cap to notice.
    f.take(limit + 1)
        .read_to_end(&mut data)
        .map_err(|source| ReadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if data.len() as u64 > limit {
        return Err(ReadError::TooLarge {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(data)
}

/// Flags not exposed by std, with their Linux values (nix re-exports libc, but its `OFlag`
/// bits are the same numbers; this keeps the intent readable).
mod libc_flags {
    pub(super) const O_NONBLOCK: i32 = nix::libc::O_NONBLOCK;
    pub(super) const O_CLOEXEC: i32 = nix::libc::O_CLOEXEC;
    pub(super) const O_NOFOLLOW: i32 = nix::libc::O_NOFOLLOW;
    pub(super) const ELOOP: i32 = nix::libc::ELOOP;
}

/// Makes a directory entry change durable.
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The directory a path lives in (`.` for a bare file name).
pub fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh temp name for `path`: `.<file>.certkeeper-tmp.<pid>.<random>`. Unique per call,
/// so concurrent writers (threads or processes) never share one; the pid lets a later run
/// tell an abandoned temp from one still being written.
fn temp_name(path: &Path) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let r: u32 = rand::random();
    parent(path).join(format!(
        ".{}{}{}.{:x}{:08x}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        TEMP_MARKER,
        std::process::id(),
        n,
        r
    ))
}

/// Writes `data` to `path` atomically: a unique temp file in the same directory created
/// 0600 with `O_EXCL|O_NOFOLLOW` (never through a planted symlink, never readable by
/// others), then owner and exact `mode` applied, fsync, rename over `path`, fsync of the
/// directory. A symlink at `path` is replaced, not followed. On error the temp is removed.
pub fn write_atomic(
    path: &Path,
    data: &[u8],
    mode: u32,
    owner: Option<(Option<u32>, Option<u32>)>,
) -> std::io::Result<()> {
    prepare(path, data, mode, owner)?.commit()
}

/// New content for `path`, complete and fsynced in a temp file beside it, not yet in
/// place. Preparing every file of a set before committing any lets a set be replaced by
/// renames alone: if space runs out, it runs out before anything changed. Dropped
/// uncommitted, the temp file is removed.
#[derive(Debug)]
pub struct Prepared {
    tmp: PathBuf,
    path: PathBuf,
    committed: bool,
}

/// Writes the temp file for [`Prepared`] (see [`write_atomic`] for how it is created).
pub fn prepare(
    path: &Path,
    data: &[u8],
    mode: u32,
    owner: Option<(Option<u32>, Option<u32>)>,
) -> std::io::Result<Prepared> {
    let (tmp, mut f) = {
        let mut tries = 0;
        loop {
            let tmp = temp_name(path);
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc_flags::O_NOFOLLOW | libc_flags::O_CLOEXEC)
                .open(&tmp)
            {
                Ok(f) => break (tmp, f),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 8 => {
                    tries += 1;
                }
                Err(e) => return Err(e),
            }
        }
    };
    let prepared = Prepared {
        tmp,
        path: path.to_path_buf(),
        committed: false,
    };
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
    Ok(prepared)
}

impl Prepared {
    /// Puts the new content at the path only if nothing is there yet (a hard link, which
    /// fails if the name exists): false when someone else got there first. Fsyncs the
    /// directory.
    pub fn link_new(self) -> std::io::Result<bool> {
        match std::fs::hard_link(&self.tmp, &self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(e),
        }
        fsync_dir(parent(&self.path))?;
        Ok(true)
    }

    /// Renames the new content over the path and fsyncs the directory.
    pub fn commit(mut self) -> std::io::Result<()> {
        std::fs::rename(&self.tmp, &self.path)?;
        self.committed = true;
        fsync_dir(parent(&self.path))
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Points the symlink `link` at `target` atomically: a fresh link under a unique temp name,
/// renamed over `link` (replacing a link, never following it), then the directory fsynced.
/// Readers resolving `link` see the old target or the new one, never nothing.
pub fn symlink_atomic(target: &Path, link: &Path) -> std::io::Result<()> {
    let mut tries = 0;
    let tmp = loop {
        let tmp = temp_name(link);
        match std::os::unix::fs::symlink(target, &tmp) {
            Ok(()) => break tmp,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 8 => tries += 1,
            Err(e) => return Err(e),
        }
    };
    let result = std::fs::rename(&tmp, link).and_then(|()| fsync_dir(parent(link)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

/// Removes certkeeper's abandoned temp files for `file_name` in `dir` (a SIGKILL or a full
/// disk leaves them; a bundle's temp holds the private key). Returns what was removed.
///
/// Recognised: `.<file>.certkeeper-tmp.<pid>[.<random>]` (current and older naming) and
/// `<file>.prev.certkeeper-tmp` (older `.prev` naming). A temp is removed only when its
/// pid is not a live process, so a concurrent writer (another thread or a certkeeper with
/// another state_dir writing the same directory) is never disturbed; pid reuse can only
/// keep a stale temp a little longer, never remove a live one. The old pid-less `.prev`
/// name has no owner to ask and is removed outright: only a certkeeper ever created it, and
/// callers hold the state lock. Only regular files and symlinks are removed, never what a
/// symlink points to.
pub fn remove_stale_temps(dir: &Path, file_name: &str) -> std::io::Result<Vec<PathBuf>> {
    let legacy_prev = format!("{file_name}.prev.certkeeper-tmp");
    remove_stale_temps_where(dir, &|f| f == file_name, Some(&legacy_prev))
}

/// [`remove_stale_temps`] for the temps of every file whose name `target` accepts, in one
/// listing of `dir`: a directory holding 10,000 certificates is read once, not once per
/// file written into it.
pub fn remove_stale_temps_where(
    dir: &Path,
    target: &dyn Fn(&str) -> bool,
    legacy_prev: Option<&str>,
) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let ours = name
            .strip_prefix('.')
            .and_then(|n| n.split_once(TEMP_MARKER))
            .filter(|(file, _)| target(file));
        let stale = if Some(name) == legacy_prev {
            true
        } else if let Some((_, rest)) = ours {
            let pid = rest.split('.').next().unwrap_or("");
            match pid.parse::<i32>() {
                Ok(pid) => !pid_alive(pid),
                Err(_) => false, // not our pattern
            }
        } else {
            false
        };
        if !stale {
            continue;
        }
        let Ok(ft) = entry.file_type() else { continue };
        // Temp symlinks (the `symlink` layout's) are removed as links, never followed.
        if !ft.is_file() && !ft.is_symlink() {
            continue;
        }
        let p = entry.path();
        match std::fs::remove_file(&p) {
            Ok(()) => removed.push(p),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if !removed.is_empty() {
        fsync_dir(dir)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn mkfifo(p: &Path) {
        nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }

    #[test]
    fn fifo_is_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cert.pem");
        mkfifo(&p);
        let t = Instant::now();
        let e = read_regular(&p, PEM_LIMIT, true).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(10));
        let m = e.to_string();
        assert!(m.contains("is a FIFO") && m.contains("cert.pem"), "{m}");
        // A symlink to the FIFO is followed, and still refused.
        let l = d.path().join("link.pem");
        std::os::unix::fs::symlink(&p, &l).unwrap();
        assert!(
            read_regular(&l, PEM_LIMIT, true)
                .unwrap_err()
                .to_string()
                .contains("is a FIFO")
        );
    }

    #[test]
    fn directory_large_file_symlink_and_missing() {
        let d = tempfile::tempdir().unwrap();
        let e = read_regular(d.path(), PEM_LIMIT, true).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        let big = d.path().join("big.pem");
        std::fs::write(&big, vec![b'a'; PEM_LIMIT as usize + 1]).unwrap();
        let e = read_regular(&big, PEM_LIMIT, true).unwrap_err();
        assert!(e.to_string().contains("larger than 1 MiB"), "{e}");
        let ok = d.path().join("ok.pem");
        std::fs::write(&ok, b"hello").unwrap();
        assert_eq!(read_regular(&ok, PEM_LIMIT, true).unwrap(), b"hello");
        let l = d.path().join("l");
        std::os::unix::fs::symlink(&ok, &l).unwrap();
        assert_eq!(read_regular(&l, PEM_LIMIT, true).unwrap(), b"hello");
        let e = read_regular(&l, PEM_LIMIT, false).unwrap_err();
        assert!(e.to_string().contains("is a symlink"), "{e}");
        assert!(
            read_regular(&d.path().join("nope"), PEM_LIMIT, true)
                .unwrap_err()
                .is_not_found()
        );
    }

    #[test]
    fn write_atomic_replaces_a_planted_symlink_instead_of_following_it() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside.txt");
        std::fs::write(&outside, b"precious").unwrap();
        let target = d.path().join("target");
        std::os::unix::fs::symlink(&outside, &target).unwrap();
        write_atomic(&target, b"new", 0o644, None).unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"precious");
        assert!(std::fs::symlink_metadata(&target).unwrap().is_file());
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
    }

    /// Four threads writing the same path 200 times each: with a per-pid temp name most of
    /// these failed (the threads removed and renamed each other's temp).
    #[test]
    fn concurrent_writers_to_one_path_all_succeed() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("same.json");
        let failures = std::sync::atomic::AtomicUsize::new(0);
        let writes = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..4 {
                let (target, failures, writes) = (&target, &failures, &writes);
                s.spawn(move || {
                    for i in 0..200 {
                        let body = format!("thread {t} write {i}");
                        writes.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = write_atomic(target, body.as_bytes(), 0o600, None) {
                            eprintln!("write failed: {e}");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        eprintln!(
            "concurrent write_atomic: {} writes, {} failures",
            writes.load(Ordering::Relaxed),
            failures.load(Ordering::Relaxed)
        );
        assert_eq!(writes.load(Ordering::Relaxed), 800);
        assert_eq!(failures.load(Ordering::Relaxed), 0);
        let text = std::fs::read_to_string(&target).unwrap();
        assert!(text.starts_with("thread "), "{text}");
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != "same.json")
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn stale_temps_of_dead_pids_are_removed_live_ones_and_others_kept() {
        let d = tempfile::tempdir().unwrap();
        // A pid that is certainly dead: a child we started and reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let me = std::process::id();
        let files = [
            format!(".bundle.pem.certkeeper-tmp.{dead}"), // older naming
            format!(".bundle.pem.certkeeper-tmp.{dead}.ab12"), // current naming
            "key.pem.prev.certkeeper-tmp".to_string(),    // older .prev naming
            format!(".bundle.pem.certkeeper-tmp.{me}.cd34"), // a live writer
            format!(".other.pem.certkeeper-tmp.{dead}.ef56"), // another target
            ".bundle.pem.certkeeper-tmp.notapid".to_string(), // not our pattern
            "bundle.pem".to_string(),
        ];
        for f in &files {
            std::fs::write(d.path().join(f), b"x").unwrap();
        }
        let mut removed = remove_stale_temps(d.path(), "bundle.pem").unwrap();
        removed.extend(remove_stale_temps(d.path(), "key.pem").unwrap());
        let mut names: Vec<String> = removed
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut want = vec![files[0].clone(), files[1].clone(), files[2].clone()];
        want.sort();
        assert_eq!(names, want);
        for f in &files[3..] {
            assert!(d.path().join(f).exists(), "{f} was removed");
        }
    }
}
