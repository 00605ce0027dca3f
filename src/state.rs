//! What is remembered between runs, under `state_dir`: per-certificate retry state and last
//! outcome (`certs/<name>.json`), per-CA facts learned at run time (`ca/<id>.json`), the ACME
//! account (`accounts/<id>.json`, written by `acme`), the staging area (`staging/<name>/`,
//! owned by `store`) and the lock that keeps one certkeeper per `state_dir`.
//!
//! Each certificate has its own file, so per-certificate tasks never share mutable state.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::fsx::write_atomic;
use crate::policy::{AriWindow, ErrorClass};

/// What a previous run learned about one certificate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CertRecord {
    /// Consecutive failed attempts (0 after a success).
    pub failures: u32,
    /// When the last attempt failed.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_failure_at: Option<OffsetDateTime>,
    /// No new order before this time (the retry ladder), unless forced.
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_attempt_at: Option<OffsetDateTime>,
    /// The last error, for `status`.
    pub last_error: Option<String>,
    /// When a certificate was last installed.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_success_at: Option<OffsetDateTime>,
    /// Short word for the last run's outcome (`renewed`, `not-due`, `failed`, ...).
    pub last_outcome: Option<String>,
    /// Reload hooks have not yet succeeded for the installed set; the next run retries them.
    pub hooks_pending: bool,
    /// The CA's ARI window for the installed certificate.
    pub ari: Option<AriWindow>,
    /// Serial the ARI window belongs to (a new certificate invalidates it).
    pub ari_serial: Option<String>,
    /// When to ask the CA for the ARI window again (its Retry-After).
    #[serde(with = "time::serde::rfc3339::option")]
    pub ari_next_poll: Option<OffsetDateTime>,
    /// An open ARI window for a just-issued certificate is not acted on before this time.
    #[serde(with = "time::serde::rfc3339::option")]
    pub ari_hold_until: Option<OffsetDateTime>,
    /// Successful renewals so far (for metrics).
    pub renewals_ok: u64,
    /// Failed renewal attempts so far (for metrics).
    pub renewals_failed: u64,
    /// Failed reload hook runs so far (for metrics).
    pub hook_failures: u64,
    /// Serial of the set certkeeper installed (or last found intact) at the paths.
    pub installed_serial: Option<String>,
    /// That set has been found missing or invalid since it was installed.
    pub damaged_since_install: bool,
    /// Installed sets found destroyed soon after their install, in a row.
    pub damaged_in_a_row: u32,
    /// The class of `last_error` (transient, rate-limited, permanent, local), which set
    /// the retry ladder's step.
    pub last_error_class: Option<ErrorClass>,
    /// When each successful order of the last 24 h completed, for the circuit breaker
    /// (`max_orders_per_cert`); pruned to 24 h whenever one is added.
    #[serde(with = "rfc3339_list")]
    pub issued_at: Vec<OffsetDateTime>,
    /// The CA's order budget was spent when this certificate was due: no order before
    /// this time. Not a failure: the retry ladder is untouched.
    #[serde(with = "time::serde::rfc3339::option")]
    pub deferred_until: Option<OffsetDateTime>,
    /// The fingerprint (hex) of the file set the last full check accepted: files still
    /// byte-for-byte that set need only their leaf parsed, not the key and the chain,
    /// which is most of the cost of a pass over 10,000 certificates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified_set: Option<String>,
    /// An endpoint in `verify` still served another certificate after the hooks ran
    /// twice: the certificate failed, and the next run re-verifies instead of ordering.
    pub not_served: bool,
    /// The last result of each `verify` endpoint, for `status` and metrics.
    pub endpoints: Vec<EndpointResult>,
    /// The CA directory the next order goes to when it is a fallback (the primary kept
    /// failing this certificate); `None` is the primary. Reset after every success, so
    /// the next renewal starts at the primary again.
    pub ca: Option<String>,
    /// Consecutive failures at that CA (the count `fallback_after_failures` is about).
    pub ca_failures: u32,
    /// The directory of the CA that issued the installed certificate (`None`: the
    /// primary, or not known), so ARI and `replaces` go to that CA and no other.
    pub issuer: Option<String>,
    /// Set when the certificate moved to a fallback CA: the directory it left, and when
    /// (the `ca_fallback` notification's signal). Cleared by the next success.
    pub fallback_from: Option<String>,
    /// When the move in `fallback_from` happened.
    #[serde(with = "time::serde::rfc3339::option")]
    pub fallback_at: Option<OffsetDateTime>,
    /// Fleet mode: the serial of a set this replica ordered alone while etcd was
    /// unavailable (the emergency), not yet published; it is published when etcd is back
    /// if it is newer than the fleet's, so the fleet converges on one set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet_unpublished: Option<String>,
}

/// What one `verify` endpoint served the last time it was probed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointResult {
    /// The endpoint as configured (`host:port`).
    pub addr: String,
    /// live, stale or unreachable.
    pub result: EndpointState,
    /// Serial of the served leaf, if one was read.
    pub served_serial: Option<String>,
    /// Expiry of the served leaf, if one was read.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub served_not_after: Option<OffsetDateTime>,
    /// When it was probed.
    #[serde(with = "time::serde::rfc3339")]
    pub checked_at: OffsetDateTime,
    /// Why it was unreachable (or what stale means), for operators.
    pub error: Option<String>,
}

/// The outcome of verifying one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointState {
    /// Serves the installed certificate.
    Live,
    /// Serves another certificate.
    Stale,
    /// No leaf could be read (connect, STARTTLS, TLS or timeout).
    Unreachable,
}

impl EndpointState {
    /// The lower-case name used in logs, JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Stale => "stale",
            Self::Unreachable => "unreachable",
        }
    }
}

impl CertRecord {
    /// The cached ARI window, if it belongs to the certificate with this serial (a new
    /// certificate's window must be fetched anew).
    pub fn ari_for(&self, serial: Option<&str>) -> Option<AriWindow> {
        match (&self.ari, &self.ari_serial) {
            (Some(w), Some(s)) if Some(s.as_str()) == serial => Some(*w),
            _ => None,
        }
    }
}

/// Facts learned about a CA at run time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CaRecord {
    /// The directory URL, for humans reading the file.
    pub directory: String,
    /// The CA accepted an order with `replaces` but did not honour it; never send it again.
    pub replaces_unsupported: bool,
    /// The CA's directory offers `renewalInfo`.
    pub ari_supported: Option<bool>,
    /// When `ari_supported` was last learned (a CA without ARI is asked again daily).
    #[serde(with = "time::serde::rfc3339::option")]
    pub ari_checked_at: Option<OffsetDateTime>,
    /// The CA's Retry-After that reached beyond the run that saw it: no request goes to
    /// this CA before then, across runs and certificates.
    #[serde(with = "time::serde::rfc3339::option")]
    pub retry_after_until: Option<OffsetDateTime>,
    /// When each new order counted against `acme.max_new_orders` was sent, pruned to the
    /// budget's window, so the budget holds across runs and concurrent certificates.
    #[serde(with = "rfc3339_list")]
    pub new_orders: Vec<OffsetDateTime>,
}

/// Lists of timestamps in the state files as RFC 3339 strings, like every other time.
mod rfc3339_list {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use time::OffsetDateTime;

    #[derive(Serialize, Deserialize)]
    #[serde(transparent)]
    struct Stamp(#[serde(with = "time::serde::rfc3339")] OffsetDateTime);

    pub(super) fn serialize<S: Serializer>(v: &[OffsetDateTime], s: S) -> Result<S::Ok, S::Error> {
        v.iter().map(|t| Stamp(*t)).collect::<Vec<_>>().serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<OffsetDateTime>, D::Error> {
        Ok(Vec::<Stamp>::deserialize(d)?
            .into_iter()
            .map(|s| s.0)
            .collect())
    }
}

/// Errors reading or writing the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Filesystem problem, with the path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A state file that does not parse; it is left in place for inspection.
    #[error("{path}: corrupt state file: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        message: String,
    },
    /// Another certkeeper holds the lock.
    #[error(
        "another certkeeper is running with state_dir {state_dir} (lock {lock} held by {holder}); wait for it to finish"
    )]
    Locked {
        /// The state directory.
        state_dir: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// What the holder wrote: pid and command.
        holder: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A short stable identifier for a CA directory URL, used in file names.
pub fn directory_id(directory: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, directory.as_bytes());
    let host: String = directory
        .trim_start_matches("https://")
        .split(['/', ':'])
        .next()
        .unwrap_or("ca")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
        .collect();
    let hex: String = digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{host}-{hex}")
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
    /// Serialises read-modify-write of the per-CA records, which concurrent certificate
    /// tasks and the ACME client all update; shared by every clone.
    ca_lock: std::sync::Arc<std::sync::Mutex<()>>,
}

impl StateDir {
    /// Opens the state directory, creating it (mode 0700) if needed.
    pub fn create(root: &Path) -> Result<Self, StateError> {
        for sub in ["", "certs", "ca", "accounts", "staging"] {
            let p = root.join(sub);
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&p)
                .map_err(io(&p))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
            ca_lock: Default::default(),
        })
    }

    /// Opens without creating anything (for `status` and `--dry-run`, which write nothing).
    pub fn open_readonly(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            ca_lock: Default::default(),
        }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn cert_file(&self, name: &str) -> PathBuf {
        self.root.join("certs").join(format!("{name}.json"))
    }

    /// Where a certificate's new set is staged before installation.
    pub fn staging_dir(&self, name: &str) -> PathBuf {
        self.root.join("staging").join(name)
    }

    /// Where the ACME account for a directory is stored.
    pub fn account_file(&self, directory: &str) -> PathBuf {
        self.root
            .join("accounts")
            .join(format!("{}.json", directory_id(directory)))
    }

    fn ca_file(&self, directory: &str) -> PathBuf {
        self.root
            .join("ca")
            .join(format!("{}.json", directory_id(directory)))
    }

    fn load_json<T: for<'de> Deserialize<'de> + Default>(
        &self,
        path: &Path,
    ) -> Result<T, StateError> {
        // Bounded and regular files only: a FIFO planted here must not hang a run.
        match crate::fsx::read_regular(path, crate::fsx::STATE_LIMIT, false) {
            Ok(d) => serde_json::from_slice(&d).map_err(|e| StateError::Corrupt {
                path: path.to_path_buf(),
                message: e.to_string(),
            }),
            Err(e) if e.is_not_found() => Ok(T::default()),
            Err(crate::fsx::ReadError::Io { source, .. }) => Err(io(path)(source)),
            Err(e) => Err(StateError::Corrupt {
                path: path.to_path_buf(),
                message: e.to_string(),
            }),
        }
    }

    fn save_json<T: Serialize>(&self, path: &Path, v: &T) -> Result<(), StateError> {
        let data = serde_json::to_vec_pretty(v).expect("state serializes");
        write_atomic(path, &data, 0o600, None).map_err(io(path))
    }

    /// A certificate's record (default if none yet).
    pub fn load(&self, name: &str) -> Result<CertRecord, StateError> {
        self.load_json(&self.cert_file(name))
    }

    /// Saves a certificate's record atomically.
    pub fn save(&self, name: &str, rec: &CertRecord) -> Result<(), StateError> {
        self.save_json(&self.cert_file(name), rec)
    }

    /// What we learned about a CA.
    pub fn load_ca(&self, directory: &str) -> Result<CaRecord, StateError> {
        let mut r: CaRecord = self.load_json(&self.ca_file(directory))?;
        r.directory = directory.to_string();
        Ok(r)
    }

    /// Saves what we learned about a CA.
    pub fn save_ca(&self, rec: &CaRecord) -> Result<(), StateError> {
        self.save_json(&self.ca_file(&rec.directory), rec)
    }

    /// Updates a CA's record under the lock: load, change, save, so concurrent updates
    /// never lose each other's facts. A corrupt record is replaced (it is only a cache of
    /// what the CA told us) with a warning. Returns the record as changed.
    pub fn update_ca(
        &self,
        directory: &str,
        change: impl FnOnce(&mut CaRecord),
    ) -> Result<CaRecord, StateError> {
        let _guard = self.ca_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut ca = self.load_ca(directory).unwrap_or_else(|e| {
            tracing::warn!("{e}; starting a new record for this CA");
            CaRecord {
                directory: directory.to_string(),
                ..CaRecord::default()
            }
        });
        change(&mut ca);
        self.save_ca(&ca)?;
        Ok(ca)
    }

    /// Whether two handles share one CA-record lock (they do when one is a clone).
    pub fn shares_ca_lock(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.ca_lock, &other.ca_lock)
    }

    /// Takes the exclusive lock for this state directory, or says who holds it.
    pub fn lock(&self, what: &str) -> Result<Lock, StateError> {
        let path = self.root.join("lock");
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        use nix::fcntl::{Flock, FlockArg};
        match Flock::lock(
            f.try_clone().map_err(io(&path))?,
            FlockArg::LockExclusiveNonblock,
        ) {
            Ok(lock) => {
                let me = format!(
                    "pid {} ({what}, since {})",
                    std::process::id(),
                    crate::timefmt::rfc3339(OffsetDateTime::now_utc())
                );
                // One positioned write, then trim: the file never goes through an empty state
                // while we hold it. A reader may still see the line of a holder that died
                // without clearing it; `read_holder` discards lines whose pid is gone.
                use std::os::unix::fs::FileExt;
                let _ = lock.write_all_at(me.as_bytes(), 0);
                let _ = lock.set_len(me.len() as u64);
                let _ = lock.sync_all();
                Ok(Lock { _file: lock })
            }
            Err((_, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => Err(StateError::Locked {
                state_dir: self.root.clone(),
                lock: path,
                holder: read_holder(&mut f),
            }),
            Err((_, errno)) => Err(io(&path)(std::io::Error::from(errno))),
        }
    }
}

/// Held for the life of a run; the kernel releases it if the process dies.
#[derive(Debug)]
pub struct Lock {
    _file: nix::fcntl::Flock<File>,
}

impl Drop for Lock {
    /// Clears the holder line before the flock is released (fields drop after this), so
    /// the next contender never reads our pid once we are gone.
    fn drop(&mut self) {
        let _ = self._file.set_len(0);
    }
}

/// How long a contender waits for a just-started holder to write its line. The holder
/// writes it right after flock succeeds, so this is a few milliseconds in practice.
const HOLDER_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// Describes the lock's holder for a contender that lost the flock. The line is trusted
/// only if its pid is alive: between another process's flock and its write the file may be
/// empty (first use) or still hold the line of a holder that was killed.
fn read_holder(f: &mut File) -> String {
    let deadline = std::time::Instant::now() + HOLDER_GRACE;
    loop {
        let mut line = String::new();
        let _ = f.rewind();
        let _ = f.read_to_string(&mut line);
        let line = line.trim().to_string();
        if holder_pid(&line).is_some_and(pid_alive) {
            return line;
        }
        if std::time::Instant::now() >= deadline {
            return "another process that has not yet written its pid (it has just started)".into();
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn holder_pid(line: &str) -> Option<i32> {
    line.strip_prefix("pid ")?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn pid_alive(pid: i32) -> bool {
    use nix::errno::Errno;
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) | Err(Errno::EPERM) => true,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_default() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::create(dir.path()).unwrap();
        assert_eq!(s.load("www").unwrap(), CertRecord::default());
        let rec = CertRecord {
            failures: 2,
            last_error: Some("boom".into()),
            next_attempt_at: Some(OffsetDateTime::UNIX_EPOCH),
            hooks_pending: true,
            ..Default::default()
        };
        s.save("www", &rec).unwrap();
        assert_eq!(s.load("www").unwrap(), rec);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("certs/www.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn endpoint_results_round_trip_and_old_records_load() {
        let old: CertRecord =
            serde_json::from_str(r#"{"failures":1,"hooks_pending":true}"#).unwrap();
        assert!(!old.not_served && old.endpoints.is_empty());
        assert_eq!(old.failures, 1);
        let rec = CertRecord {
            not_served: true,
            endpoints: vec![EndpointResult {
                addr: "127.0.0.1:443".into(),
                result: EndpointState::Stale,
                served_serial: Some("0b".into()),
                served_not_after: Some(OffsetDateTime::UNIX_EPOCH),
                checked_at: OffsetDateTime::UNIX_EPOCH,
                error: Some("serves serial 0b, installed 0a".into()),
            }],
            ..Default::default()
        };
        let text = serde_json::to_string(&rec).unwrap();
        assert!(text.contains(r#""result":"stale""#), "{text}");
        assert_eq!(serde_json::from_str::<CertRecord>(&text).unwrap(), rec);
    }

    #[test]
    fn corrupt_record_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::create(dir.path()).unwrap();
        std::fs::write(dir.path().join("certs/www.json"), b"{not json").unwrap();
        let e = s.load("www").unwrap_err().to_string();
        assert!(e.contains("www.json") && e.contains("corrupt"), "{e}");
    }

    #[test]
    fn second_lock_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::create(dir.path()).unwrap();
        let _held = s.lock("renew").unwrap();
        let e = s.lock("renew").unwrap_err().to_string();
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        assert!(e.contains("renew"), "{e}");
    }

    #[test]
    fn directory_ids_differ_per_url() {
        let a = directory_id("https://127.0.0.1:14000/dir");
        let b = directory_id("https://127.0.0.1:14001/dir");
        assert_ne!(a, b);
        assert!(a.starts_with("127.0.0.1-"));
    }

    /// Holds the flock on the lock file the way a just-started certkeeper does between
    /// flock and writing its line, with `content` in the file.
    fn hold_raw(dir: &Path, content: &str) -> nix::fcntl::Flock<File> {
        let path = dir.join("lock");
        std::fs::write(&path, content).unwrap();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap()
    }

    #[test]
    fn holder_without_a_line_is_described_as_just_started() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::create(dir.path()).unwrap();
        let _raw = hold_raw(dir.path(), "");
        let e = s.lock("renew").unwrap_err().to_string();
        assert!(e.contains("has not yet written its pid"), "{e}");
        assert!(!e.contains("unknown"), "{e}");
    }

    #[test]
    fn stale_line_of_a_dead_holder_is_not_blamed() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::create(dir.path()).unwrap();
        // A pid above the kernel's maximum (4194304) can never be alive.
        let _raw = hold_raw(dir.path(), "pid 999999999 (certkeeper renew, since then)");
        let e = s.lock("renew").unwrap_err().to_string();
        assert!(!e.contains("999999999"), "{e}");
        assert!(e.contains("has not yet written its pid"), "{e}");
    }

    #[test]
    fn released_lock_leaves_no_holder_line() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::create(dir.path()).unwrap();
        let held = s.lock("certkeeper renew").unwrap();
        let text = std::fs::read_to_string(dir.path().join("lock")).unwrap();
        assert!(
            text.starts_with(&format!("pid {} (certkeeper renew", std::process::id())),
            "{text}"
        );
        drop(held);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("lock")).unwrap(),
            ""
        );
        // And a longer previous line is fully replaced, not left as a tail.
        std::fs::write(dir.path().join("lock"), "x".repeat(500)).unwrap();
        let _held = s.lock("r").unwrap();
        let text = std::fs::read_to_string(dir.path().join("lock")).unwrap();
        assert!(!text.contains('x') && text.starts_with("pid "), "{text}");
    }
}
