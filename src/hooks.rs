//! Running external commands: reload hooks after an install, and DNS-01 hooks.
//!
//! Every command is an argv list (no shell, so no quoting traps), runs in its own process
//! group with a timeout after which the whole group is killed, and has its stdout/stderr
//! captured into the log. Reload hooks get the certificate's facts both as
//! `CERTKEEPER_*` environment variables and as one JSON object on stdin.
//!
//! A hook is untrusted in size as well as time: its output is read to the end (it never
//! blocks on a full pipe) but only the last [`CAPTURE_LIMIT`] bytes of each stream are
//! kept, the rest is counted and reported as dropped; the log gets at most the last few
//! dozen lines of each stream and the error message a few KiB.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tracing::{info, warn};

use crate::config::ReloadSignal;
use crate::fileset::FileSet;

/// The facts a reload hook receives about the certificate just installed.
#[derive(Debug, Clone, Serialize)]
pub struct HookEvent {
    /// Always `"installed"` for reload hooks.
    pub event: &'static str,
    /// Certificate name from the config.
    pub name: String,
    /// Configured names.
    pub domains: Vec<String>,
    /// Leaf + chain file.
    pub cert_path: PathBuf,
    /// Key file.
    pub key_path: PathBuf,
    /// Chain-only file, if configured.
    pub chain_path: Option<PathBuf>,
    /// Combined key + chain file, if configured.
    pub bundle_path: Option<PathBuf>,
    /// Expiry of the new certificate, RFC 3339.
    pub not_after: String,
    /// Serial of the new certificate, hex.
    pub serial: String,
}

impl HookEvent {
    /// The certificate's files as a [`FileSet`].
    pub fn files(&self) -> FileSet {
        FileSet {
            cert: self.cert_path.clone(),
            key: self.key_path.clone(),
            chain: self.chain_path.clone(),
            bundle: self.bundle_path.clone(),
        }
    }

    /// The documented environment variables. Every file variable is always set (empty for
    /// a file that is not configured), so a hook can test `-n "$CERTKEEPER_CHAIN_PATH"`.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("CERTKEEPER_EVENT", self.event.to_string()),
            ("CERTKEEPER_NAME", self.name.clone()),
            ("CERTKEEPER_DOMAINS", self.domains.join(",")),
        ];
        // Unconfigured files become empty paths, so `iter` yields all four roles in order.
        let files = self.files();
        let all = FileSet {
            chain: Some(files.chain.clone().unwrap_or_default()),
            bundle: Some(files.bundle.clone().unwrap_or_default()),
            ..files
        };
        env.extend(
            all.iter()
                .map(|(role, p)| (role.env_var(), p.display().to_string())),
        );
        env.push(("CERTKEEPER_NOT_AFTER", self.not_after.clone()));
        env.push(("CERTKEEPER_SERIAL", self.serial.clone()));
        env
    }
}

/// A hook that did not succeed, with what it printed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The program could not be started.
    #[error("cannot run {argv}: {source}")]
    Spawn {
        /// The command line, for the message.
        argv: String,
        /// The cause.
        source: std::io::Error,
    },
    /// It ran longer than allowed and its process group was killed.
    #[error("{argv} timed out after {secs}s and was killed{tail}")]
    Timeout {
        /// The command line.
        argv: String,
        /// The timeout.
        secs: u64,
        /// Last stderr lines, prefixed.
        tail: String,
    },
    /// The built-in reload signal could not be delivered.
    #[error("reload_signal {signal} to the pid in {pidfile}: {message}")]
    Signal {
        /// The pidfile.
        pidfile: PathBuf,
        /// The signal's name.
        signal: String,
        /// Why it failed.
        message: String,
    },
    /// It exited unsuccessfully.
    #[error("{argv} failed ({status}){tail}")]
    Failed {
        /// The command line.
        argv: String,
        /// Exit status.
        status: String,
        /// Last stderr lines, prefixed.
        tail: String,
    },
}

fn show_argv(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if a.contains(' ') || a.is_empty() {
                format!("{a:?}")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// How much of each output stream of a hook is kept: the last 64 KiB. A hook that prints
/// without end costs a constant amount of memory, never the size of its output.
pub const CAPTURE_LIMIT: usize = 64 * 1024;

/// At most this many lines of each stream are copied into the log, each cut to
/// [`LOG_LINE_LIMIT`] bytes, so one hook cannot flood the log either.
const LOG_LINES: usize = 50;
/// Longest part of one output line that is logged.
const LOG_LINE_LIMIT: usize = 1024;
/// At most this many bytes of output are quoted in an error message.
const ERROR_TAIL_LIMIT: usize = 4096;
/// How long output still in the pipes is read after the hook exited, for a background
/// child that keeps them open.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// The last [`CAPTURE_LIMIT`] bytes of one output stream, and how much came before them.
#[derive(Debug, Default)]
struct Tail {
    buf: Vec<u8>,
    total: u64,
}

impl Tail {
    /// Appends `chunk`, keeping at most twice the limit between compactions (amortised
    /// constant work per byte).
    fn push(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        let chunk = &chunk[chunk.len().saturating_sub(CAPTURE_LIMIT)..];
        self.buf.extend_from_slice(chunk);
        if self.buf.len() > 2 * CAPTURE_LIMIT {
            let cut = self.buf.len() - CAPTURE_LIMIT;
            self.buf.drain(..cut);
        }
    }

    /// The kept bytes (at most [`CAPTURE_LIMIT`]) and how many were dropped before them.
    fn finish(mut self) -> Captured {
        let cut = self.buf.len().saturating_sub(CAPTURE_LIMIT);
        self.buf.drain(..cut);
        Captured {
            dropped: self.total - self.buf.len() as u64,
            text: String::from_utf8_lossy(&self.buf).into_owned(),
        }
    }
}

/// What is kept of one stream once the hook is done.
#[derive(Debug, Default)]
struct Captured {
    text: String,
    dropped: u64,
}

/// Reads `r` to its end into `tail`. Never stops reading early: a hook must not block
/// on a full pipe because we stopped listening.
async fn drain<R: tokio::io::AsyncRead + Unpin>(mut r: R, tail: &mut Tail) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => tail.push(&buf[..n]),
        }
    }
}

/// `52428800` as `52,428,800`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The note that says how much of a stream was dropped, if any.
fn dropped_note(stream: &str, c: &Captured) -> Option<String> {
    (c.dropped > 0).then(|| {
        format!(
            "{} bytes of {stream} dropped, last {} KiB kept",
            thousands(c.dropped),
            CAPTURE_LIMIT / 1024
        )
    })
}

/// `s` cut to its last `max` bytes (on a character boundary), marked when cut.
fn last_bytes(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &s[start..])
}

/// The non-empty lines of `s` that the log shows: the last [`LOG_LINES`], each cut.
fn log_lines(s: &str) -> (usize, Vec<String>) {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    let skip = lines.len().saturating_sub(LOG_LINES);
    (
        skip,
        lines[skip..]
            .iter()
            .map(|l| last_bytes(l, LOG_LINE_LIMIT))
            .collect(),
    )
}

/// The part of the output quoted in an error message: the last 3 lines of stderr (or
/// stdout when stderr is empty), at most [`ERROR_TAIL_LIMIT`] bytes, plus what was dropped.
fn tail(stderr: &Captured, stdout: &Captured) -> String {
    let src = if stderr.text.trim().is_empty() {
        &stdout.text
    } else {
        &stderr.text
    };
    let lines: Vec<&str> = src.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(3);
    let mut msg = String::new();
    if !lines.is_empty() {
        msg = format!(
            ": {}",
            last_bytes(&lines[start..].join(" | "), ERROR_TAIL_LIMIT)
        );
    }
    let notes: Vec<String> = [
        dropped_note("stdout", stdout),
        dropped_note("stderr", stderr),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !notes.is_empty() {
        msg.push_str(&format!(" ({})", notes.join("; ")));
    }
    msg
}

/// Copies the kept output into the log, bounded (see [`LOG_LINES`]).
fn log_output(label: &str, cert: &str, stdout: &Captured, stderr: &Captured) {
    for (stream, c) in [("stdout", stdout), ("stderr", stderr)] {
        let (skipped, lines) = log_lines(&c.text);
        if skipped > 0 || c.dropped > 0 {
            warn!(
                cert,
                hook = %label,
                "{stream}: output truncated ({} bytes dropped, {skipped} more lines not logged; the last {} lines follow)",
                thousands(c.dropped),
                lines.len()
            );
        }
        for line in lines {
            if stream == "stdout" {
                info!(cert, hook = %label, "{line}");
            } else {
                warn!(cert, hook = %label, "stderr: {line}");
            }
        }
    }
}

/// Runs one command with the timeout, environment and stdin given; logs its output under
/// `label` (e.g. `reload` or `dns01`) and the certificate name.
///
/// Bounded in every direction: stdin is written concurrently with waiting (a hook that
/// never reads it cannot block us) and closed after the data; stdout and stderr are read
/// to their end while the hook runs but only their last [`CAPTURE_LIMIT`] bytes are kept;
/// after `timeout` the whole process group is killed.
pub async fn run(
    label: &str,
    cert: &str,
    argv: &[String],
    env: &[(&str, String)],
    stdin: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<(), HookError> {
    let shown = show_argv(argv);
    let mut child = spawn(argv, env, stdin.is_some()).map_err(|source| HookError::Spawn {
        argv: shown.clone(),
        source,
    })?;
    let (status, stdout, stderr) = supervise(&mut child, stdin, timeout).await;
    log_output(label, cert, &stdout, &stderr);
    match status {
        None => {
            let _ = child.wait().await;
            Err(HookError::Timeout {
                argv: shown,
                secs: timeout.as_secs(),
                tail: tail(&stderr, &stdout),
            })
        }
        Some(Err(source)) => Err(HookError::Spawn {
            argv: shown,
            source,
        }),
        Some(Ok(s)) if s.success() => Ok(()),
        Some(Ok(s)) => Err(HookError::Failed {
            argv: shown,
            status: s.to_string(),
            tail: tail(&stderr, &stdout),
        }),
    }
}

/// Starts the command in its own process group with piped output (and stdin if given).
fn spawn(argv: &[String], env: &[(&str, String)], stdin: bool) -> std::io::Result<Child> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    cmd.spawn()
}

/// The exit status (`None` when the timeout struck first and the group was killed) and
/// the kept output of both streams.
type Supervised = (
    Option<std::io::Result<std::process::ExitStatus>>,
    Captured,
    Captured,
);

/// Feeds stdin, drains both streams and waits for the child, all at once, until it exits
/// or `timeout` passes (then its whole process group is killed). Output still in the
/// pipes is read for at most [`DRAIN_GRACE`] after the exit.
async fn supervise(child: &mut Child, stdin: Option<Vec<u8>>, timeout: Duration) -> Supervised {
    // If this future is dropped (a daemon shutting down mid-order), the whole group goes,
    // not just the direct child that `kill_on_drop` covers.
    let mut group = GroupGuard(child.id().map(|p| nix::unistd::Pid::from_raw(p as i32)));
    let writer = child.stdin.take();
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    let mut out_tail = Tail::default();
    let mut err_tail = Tail::default();
    let status = {
        let feed = async move {
            if let (Some(data), Some(mut w)) = (stdin, writer) {
                // A hook that ignores stdin closes it early (EPIPE); that is fine. Dropping
                // `w` closes the pipe, so a hook reading to the end sees EOF.
                let _ = w.write_all(&data).await;
            }
        };
        let io = async {
            tokio::join!(feed, drain(out, &mut out_tail), drain(err, &mut err_tail));
        };
        tokio::pin!(io);
        let mut io_done = false;
        let status = {
            let wait = child.wait();
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(wait, deadline);
            loop {
                tokio::select! {
                    s = &mut wait => break Some(s),
                    _ = &mut io, if !io_done => io_done = true,
                    _ = &mut deadline => break None,
                }
            }
        };
        if status.is_none() {
            // Timed out: kill the whole group, grandchildren included.
            group.kill();
        } else {
            // The hook finished on its own; whatever it started in the background is its
            // business, but not our pipes for longer than the grace period.
            group.0 = None;
        }
        if !io_done {
            let _ = tokio::time::timeout(DRAIN_GRACE, &mut io).await;
        }
        status
    };
    (status, out_tail.finish(), err_tail.finish())
}

/// Kills a hook's process group when dropped while armed.
struct GroupGuard(Option<nix::unistd::Pid>);

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pg) = self.0.take() {
            let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs every reload hook of a certificate in order; stops at the first failure so that a
/// later hook never runs against a server that failed to take the new files.
pub async fn run_reload_hooks(
    hooks: &[Vec<String>],
    signal: Option<&ReloadSignal>,
    event: &HookEvent,
    timeout: Duration,
) -> Result<(), HookError> {
    let env = event.env();
    let json = serde_json::to_vec(event).expect("event serializes");
    for argv in hooks {
        info!(cert = %event.name, hook = %show_argv(argv), "running reload hook");
        run(
            "reload",
            &event.name,
            argv,
            &env,
            Some(json.clone()),
            timeout,
        )
        .await?;
    }
    if let Some(rs) = signal {
        send_signal(rs)?;
        info!(cert = %event.name, pidfile = %rs.pidfile.display(), signal = %rs.signal, "sent reload signal");
    }
    Ok(())
}

/// Sends the configured signal to the process whose pid is in the pidfile.
pub fn send_signal(rs: &ReloadSignal) -> Result<(), HookError> {
    let fail = |message: String| HookError::Signal {
        pidfile: rs.pidfile.clone(),
        signal: rs.signal.to_string(),
        message,
    };
    let text = std::fs::read_to_string(&rs.pidfile).map_err(|e| fail(e.to_string()))?;
    let pid: i32 = text
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .filter(|p| *p > 1)
        .ok_or_else(|| fail(format!("no valid pid in {:?}", text.trim())))?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), rs.signal)
        .map_err(|e| fail(format!("pid {pid}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn env_and_stdin_reach_the_hook() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let script = format!(
            "echo \"$CERTKEEPER_NAME|$CERTKEEPER_DOMAINS\" > {0}; cat >> {0}",
            out.display()
        );
        let ev = HookEvent {
            event: "installed",
            name: "www".into(),
            domains: vec!["a.example".into(), "b.example".into()],
            cert_path: "/c".into(),
            key_path: "/k".into(),
            chain_path: None,
            bundle_path: None,
            not_after: "2026-01-01T00:00:00Z".into(),
            serial: "0a".into(),
        };
        run_reload_hooks(
            &[argv(&["sh", "-c", &script])],
            None,
            &ev,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let got = std::fs::read_to_string(out).unwrap();
        assert!(got.starts_with("www|a.example,b.example\n"), "{got}");
        let json: serde_json::Value = serde_json::from_str(got.lines().nth(1).unwrap()).unwrap();
        assert_eq!(json["serial"], "0a");
        assert_eq!(json["domains"][1], "b.example");
    }

    /// Every file variable is set, in the documented order, empty when not configured.
    #[test]
    fn env_names_every_file_and_leaves_unconfigured_ones_empty() {
        let ev = HookEvent {
            event: "installed",
            name: "www".into(),
            domains: vec!["a.example".into()],
            cert_path: "/c".into(),
            key_path: "/k".into(),
            chain_path: None,
            bundle_path: Some("/b".into()),
            not_after: "2026-01-01T00:00:00Z".into(),
            serial: "0a".into(),
        };
        let env = ev.env();
        let got: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            got,
            [
                ("CERTKEEPER_EVENT", "installed"),
                ("CERTKEEPER_NAME", "www"),
                ("CERTKEEPER_DOMAINS", "a.example"),
                ("CERTKEEPER_CERT_PATH", "/c"),
                ("CERTKEEPER_KEY_PATH", "/k"),
                ("CERTKEEPER_CHAIN_PATH", ""),
                ("CERTKEEPER_BUNDLE_PATH", "/b"),
                ("CERTKEEPER_NOT_AFTER", "2026-01-01T00:00:00Z"),
                ("CERTKEEPER_SERIAL", "0a"),
            ]
        );
    }

    #[tokio::test]
    async fn failure_carries_stderr() {
        let e = run(
            "reload",
            "t",
            &argv(&["sh", "-c", "echo nope >&2; exit 3"]),
            &[],
            None,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("nope") && e.contains('3'), "{e}");
    }

    #[tokio::test]
    async fn timeout_kills_the_process_group() {
        let d = tempfile::tempdir().unwrap();
        let marker = d.path().join("survived");
        // The grandchild would write the marker after 2s if it were not killed with the group.
        let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let start = std::time::Instant::now();
        let e = run(
            "reload",
            "t",
            &argv(&["sh", "-c", &script]),
            &[],
            None,
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, HookError::Timeout { .. }), "{e}");
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!marker.exists(), "grandchild survived the timeout");
    }

    #[test]
    fn reload_signal_reaches_the_pidfile_process() {
        let d = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pidfile = d.path().join("pid");
        std::fs::write(&pidfile, format!("{}\n", child.id())).unwrap();
        let rs = ReloadSignal {
            pidfile: pidfile.clone(),
            signal: nix::sys::signal::Signal::SIGTERM,
        };
        send_signal(&rs).unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(15));
        std::fs::write(&pidfile, "garbage").unwrap();
        let e = send_signal(&rs).unwrap_err().to_string();
        assert!(e.contains("no valid pid"), "{e}");
    }

    #[tokio::test]
    async fn cancelled_hook_takes_its_group_with_it() {
        let d = tempfile::tempdir().unwrap();
        let marker = d.path().join("survived");
        let script = format!("(sleep 1; touch {}) & sleep 30", marker.display());
        let argv = argv(&["sh", "-c", &script]);
        let run = run("dns01", "t", &argv, &[], None, Duration::from_secs(60));
        // Drop the future mid-run, as an aborted daemon task does.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), run)
                .await
                .is_err()
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            !marker.exists(),
            "the hook's background child outlived the cancellation"
        );
    }

    #[test]
    fn tail_keeps_the_last_64_kib_and_counts_the_rest() {
        let mut t = Tail::default();
        let chunk: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut all = Vec::new();
        while all.len() < 50_000_000 {
            t.push(&chunk);
            all.extend_from_slice(&chunk);
            assert!(t.buf.len() <= 2 * CAPTURE_LIMIT + chunk.len());
        }
        // one chunk bigger than the limit on its own
        let big = vec![b'z'; 3 * CAPTURE_LIMIT];
        t.push(&big);
        all.extend_from_slice(&big);
        let total = all.len() as u64;
        let kept = t.buf[t.buf.len().saturating_sub(CAPTURE_LIMIT)..].to_vec();
        let c = t.finish();
        assert_eq!(c.text.len(), CAPTURE_LIMIT);
        assert_eq!(c.dropped, total - CAPTURE_LIMIT as u64);
        assert_eq!(kept, all[all.len() - CAPTURE_LIMIT..]);
        let mut small = Tail::default();
        small.push(b"hello\n");
        let c = small.finish();
        assert_eq!((c.text.as_str(), c.dropped), ("hello\n", 0));
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(52_428_800), "52,428,800");
    }

    /// 50 MB on each stream: the hook is not blocked (it finishes and fails on its own
    /// exit code, not by the timeout), and the error says exactly how much was dropped
    /// while quoting only a bounded tail.
    #[tokio::test]
    async fn fifty_megabytes_of_output_are_dropped_and_counted() {
        let script = "head -c 50000000 /dev/zero | tr '\\0' x; \
                      head -c 50000000 /dev/zero | tr '\\0' y >&2; exit 4";
        let e = run(
            "reload",
            "t",
            &argv(&["sh", "-c", script]),
            &[],
            None,
            Duration::from_secs(60),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, HookError::Failed { .. }), "{e}");
        let msg = e.to_string();
        let dropped = thousands(50_000_000 - CAPTURE_LIMIT as u64);
        assert!(
            msg.contains(&format!(
                "{dropped} bytes of stdout dropped, last 64 KiB kept"
            )) && msg.contains(&format!("{dropped} bytes of stderr dropped")),
            "{}",
            last_bytes(&msg, 600)
        );
        assert!(msg.contains("yyyy") && msg.contains('4'), "{}", &msg[..200]);
        assert!(msg.len() < ERROR_TAIL_LIMIT + 1024, "{} bytes", msg.len());
    }

    /// The log shows a bounded number of lines of a hook's output, the last ones.
    #[test]
    fn log_lines_are_bounded() {
        let text: String = (0..10_000).map(|i| format!("line {i}\n")).collect();
        let (skipped, lines) = log_lines(&text);
        assert_eq!(skipped, 10_000 - LOG_LINES);
        assert_eq!(lines.len(), LOG_LINES);
        assert_eq!(lines.last().unwrap(), "line 9999");
        let long = "q".repeat(100_000);
        let (_, lines) = log_lines(&long);
        assert!(lines[0].len() <= LOG_LINE_LIMIT + 3, "{}", lines[0].len());
    }

    /// A JSON event bigger than a pipe buffer, given to a hook that never reads stdin,
    /// does not block the run; one that reads to the end gets all of it and then EOF.
    #[tokio::test]
    async fn large_stdin_never_blocks() {
        let data = vec![b'j'; 1 << 20];
        let start = std::time::Instant::now();
        run(
            "reload",
            "t",
            &argv(&["sh", "-c", "exit 0"]),
            &[],
            Some(data.clone()),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        assert!(start.elapsed() < Duration::from_secs(20));

        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("count");
        let script = format!("wc -c > {}", out.display());
        run(
            "reload",
            "t",
            &argv(&["sh", "-c", &script]),
            &[],
            Some(data),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        let n: usize = std::fs::read_to_string(&out)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(n, 1 << 20);
    }

    /// A hook that reads stdin and then never exits is bounded by the timeout.
    #[tokio::test]
    async fn hook_stuck_after_reading_stdin_times_out() {
        let start = std::time::Instant::now();
        let e = run(
            "reload",
            "t",
            &argv(&["sh", "-c", "cat > /dev/null; exec sleep 1000"]),
            &[],
            Some(vec![b'{'; 200_000]),
            Duration::from_millis(500),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, HookError::Timeout { .. }), "{e}");
        assert!(start.elapsed() < Duration::from_secs(20));
    }

    /// A hook that exits but leaves a background child holding its stdout: the run ends
    /// after the grace period instead of waiting for that child.
    #[tokio::test]
    async fn background_child_holding_the_pipes_does_not_block() {
        let start = std::time::Instant::now();
        run(
            "reload",
            "t",
            &argv(&["sh", "-c", "sleep 30 & echo started"]),
            &[],
            None,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        assert!(start.elapsed() < Duration::from_secs(20));
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let e = run(
            "reload",
            "t",
            &argv(&["/nonexistent/hook"]),
            &[],
            None,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("/nonexistent/hook"), "{e}");
    }
}
