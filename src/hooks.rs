//! Running external commands: reload hooks after an install, and DNS-01 hooks.
//!
//! Every command is an argv list (no shell, so no quoting traps), runs in its own process
//! group with a timeout after which the whole group is killed, and has its stdout/stderr
//! captured into the log. Reload hooks get the certificate's facts both as
//! `CERTKEEPER_*` environment variables and as one JSON object on stdin.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tracing::{info, warn};

use crate::config::ReloadSignal;

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
    /// The documented environment variables.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let p = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        vec![
            ("CERTKEEPER_EVENT", self.event.to_string()),
            ("CERTKEEPER_NAME", self.name.clone()),
            ("CERTKEEPER_DOMAINS", self.domains.join(",")),
            ("CERTKEEPER_CERT_PATH", self.cert_path.display().to_string()),
            ("CERTKEEPER_KEY_PATH", self.key_path.display().to_string()),
            ("CERTKEEPER_CHAIN_PATH", p(&self.chain_path)),
            ("CERTKEEPER_BUNDLE_PATH", p(&self.bundle_path)),
            ("CERTKEEPER_NOT_AFTER", self.not_after.clone()),
            ("CERTKEEPER_SERIAL", self.serial.clone()),
        ]
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

fn tail(stderr: &str, stdout: &str) -> String {
    let src = if stderr.trim().is_empty() {
        stdout
    } else {
        stderr
    };
    let lines: Vec<&str> = src.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let start = lines.len().saturating_sub(3);
    format!(": {}", lines[start..].join(" | "))
}

/// Runs one command with the timeout, environment and stdin given; logs its output under
/// `label` (e.g. `reload` or `dns01`) and the certificate name.
pub async fn run(
    label: &str,
    cert: &str,
    argv: &[String],
    env: &[(&str, String)],
    stdin: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<(), HookError> {
    let shown = show_argv(argv);
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn {
        argv: shown.clone(),
        source,
    })?;
    let pid = child.id();
    // If this future is dropped (a daemon shutting down mid-order), the whole group goes,
    // not just the direct child that `kill_on_drop` covers.
    let mut group = GroupGuard(pid.map(|p| nix::unistd::Pid::from_raw(p as i32)));
    if let (Some(data), Some(mut w)) = (stdin, child.stdin.take()) {
        // A hook that ignores stdin closes it early; that is fine.
        tokio::spawn(async move {
            let _ = w.write_all(&data).await;
        });
    }
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let read_out = tokio::spawn(async move {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v).await;
        v
    });
    let read_err = tokio::spawn(async move {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v).await;
        v
    });
    let status = tokio::time::timeout(timeout, child.wait()).await;
    if status.is_err() {
        // Timed out: kill the whole group, grandchildren included.
        group.kill();
    } else {
        // The hook finished on its own; whatever it started in the background is its
        // business.
        group.0 = None;
    }
    let collect = |h: tokio::task::JoinHandle<Vec<u8>>| async move {
        match tokio::time::timeout(Duration::from_secs(2), h).await {
            Ok(Ok(v)) => String::from_utf8_lossy(&v).into_owned(),
            _ => String::new(),
        }
    };
    let stdout = collect(read_out).await;
    let stderr = collect(read_err).await;
    for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
        info!(cert, hook = %label, "{line}");
    }
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        warn!(cert, hook = %label, "stderr: {line}");
    }
    match status {
        Err(_) => {
            let _ = child.wait().await;
            Err(HookError::Timeout {
                argv: shown,
                secs: timeout.as_secs(),
                tail: tail(&stderr, &stdout),
            })
        }
        Ok(Err(source)) => Err(HookError::Spawn {
            argv: shown,
            source,
        }),
        Ok(Ok(s)) if s.success() => Ok(()),
        Ok(Ok(s)) => Err(HookError::Failed {
            argv: shown,
            status: s.to_string(),
            tail: tail(&stderr, &stdout),
        }),
    }
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
