//! Helpers for the `certkeeper run` tests (`tests/daemon.rs`): a daemon guard
//! that is killed in `Drop` and prints its log when a test fails, log
//! scanning, signals, stopping and restarting Pebble on the same ports,
//! non-panicking certificate checks (the daemon may be mid-install when we
//! look), an HTTP GET and a small Prometheus / OpenMetrics text parser.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{Pebble, Subprocess, TestEnv, normalize_hex, pebble_command, wait_tcp};

// ---------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------

/// A running `certkeeper -c <cfg> -v run`. Killed (SIGKILL) in `Drop` if still
/// running; its stderr is printed when the test panics.
pub struct Daemon {
    proc: Subprocess,
    pub cfg: PathBuf,
    exited: Option<ExitStatus>,
}

impl Daemon {
    /// Start `certkeeper -c <cfg> -v run`; its log goes to `<tmp>/<name>.stderr`.
    pub fn start(env: &TestEnv, name: &str, cfg: &Path) -> Self {
        Self::start_env(env, name, cfg, &[])
    }

    /// [`Self::start`] with extra environment variables (fault injection).
    pub fn start_env(env: &TestEnv, name: &str, cfg: &Path, envs: &[(&str, &str)]) -> Self {
        let proc = env.spawn_env(name, cfg, &["-v", "run"], envs);
        let mut d = Self {
            proc,
            cfg: cfg.to_owned(),
            exited: None,
        };
        // The signal handlers are installed right before this line is logged;
        // a SIGHUP before that would kill the process.
        assert!(
            d.wait_log(Duration::from_secs(20), "daemon started"),
            "daemon {name} did not start"
        );
        d
    }

    pub fn pid(&self) -> u32 {
        self.proc.id()
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        self.proc.stderr()
    }

    /// A position in the log, for [`Self::log_since`].
    pub fn mark(&self) -> usize {
        self.log().len()
    }

    /// The log written after `mark`.
    pub fn log_since(&self, mark: usize) -> String {
        let l = self.log();
        l.get(mark..).unwrap_or_default().to_owned()
    }

    /// Lines after `mark` containing `pat`.
    pub fn count_since(&self, mark: usize, pat: &str) -> usize {
        self.log_since(mark)
            .lines()
            .filter(|l| l.contains(pat))
            .count()
    }

    /// Wait until the log contains `pat`.
    pub fn wait_log(&mut self, timeout: Duration, pat: &str) -> bool {
        self.wait_log_since(0, timeout, pat, 1)
    }

    /// Wait until the log after `mark` has at least `n` lines containing `pat`.
    /// Gives up early if the daemon exits.
    pub fn wait_log_since(&mut self, mark: usize, timeout: Duration, pat: &str, n: usize) -> bool {
        let start = Instant::now();
        loop {
            if self.count_since(mark, pat) >= n {
                return true;
            }
            if start.elapsed() > timeout || !self.is_running() {
                return self.count_since(mark, pat) >= n;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.exited.is_none() && self.proc.is_running()
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid() as i32), sig)
            .unwrap_or_else(|e| panic!("kill -{sig} {}: {e}", self.pid()));
    }

    /// Send `sig` and wait at most `timeout` for the process to exit; returns
    /// its exit status and how long that took.
    pub fn stop_with(&mut self, sig: Signal, timeout: Duration) -> (Option<ExitStatus>, Duration) {
        let t0 = Instant::now();
        self.signal(sig);
        let st = self.proc.wait_timeout(timeout);
        self.exited = st;
        (st, t0.elapsed())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "===== daemon {} (pid {}) log =====\n{}",
                self.proc.name,
                self.pid(),
                self.log()
            );
        }
        // Subprocess's own Drop kills and reaps it.
    }
}

/// Lines of `text` containing `pat`.
pub fn count_lines(text: &str, pat: &str) -> usize {
    text.lines().filter(|l| l.contains(pat)).count()
}

/// Send `sig` to `pid`, ignoring errors (the process may be gone).
pub fn signal_pid(pid: u32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid as i32), sig);
}

// ---------------------------------------------------------------------------
// Pebble: stop and start again on the same ports (a new CA instance)
// ---------------------------------------------------------------------------

impl Pebble {
    /// Kill the ACME server (challtestsrv keeps running): the CA is down.
    pub fn stop_ca(&mut self) {
        let _ = self.pebble.child.kill();
        let _ = self.pebble.child.wait();
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.ports.acme)).is_ok() {
            assert!(start.elapsed() < Duration::from_secs(10), "pebble still up");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start Pebble again with the same config and HTTPS certificate. Pebble
    /// keeps everything in memory, so this is a new CA: new roots, and the
    /// accounts created before are unknown to it.
    pub fn restart_ca(&mut self, log_name: &str) {
        let cmd = pebble_command(&self.dir, self.ports);
        // Replacing the guard drops (kills, reaps) the already dead old one.
        self.pebble = Subprocess::spawn(log_name, cmd, &self.dir);
        let start = Instant::now();
        loop {
            let ok = Command::new("curl")
                .args(["-sf", "--max-time", "5", "--cacert"])
                .arg(&self.ca_pem)
                .arg(self.directory_url())
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                break;
            }
            if !self.pebble.is_running() || start.elapsed() > Duration::from_secs(20) {
                self.pebble.dump();
                panic!("pebble did not restart on {:?}", self.ports);
            }
            thread::sleep(Duration::from_millis(50));
        }
        assert!(
            wait_tcp(self.ports.mgmt, Duration::from_secs(10)),
            "pebble management port after restart"
        );
    }
}

// ---------------------------------------------------------------------------
// Certificates, without panicking on missing or half-replaced files
// ---------------------------------------------------------------------------

fn try_openssl(args: &[&str], path: &Path) -> Option<String> {
    let out = Command::new("openssl")
        .args(args)
        .arg("-in")
        .arg(path)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8(out.stdout).ok()
}

/// The normalized serial of the leaf in `cert`, if it parses.
pub fn try_serial(cert: &Path) -> Option<String> {
    let s = try_openssl(&["x509", "-noout", "-serial"], cert)?;
    Some(normalize_hex(s.trim().trim_start_matches("serial=")))
}

/// If `cert` and `key` form a matching set, the leaf's serial.
pub fn valid_set(cert: &Path, key: &Path) -> Option<String> {
    let c = try_openssl(&["x509", "-noout", "-pubkey"], cert)?;
    let k = try_openssl(&["pkey", "-pubout"], key)?;
    if c != k {
        return None;
    }
    try_serial(cert)
}

/// Wait until `cert`/`key` form a matching set whose serial is not `old`;
/// returns the serial and how long it took.
pub fn wait_new_set(
    cert: &Path,
    key: &Path,
    old: Option<&str>,
    timeout: Duration,
) -> Option<(String, Duration)> {
    let start = Instant::now();
    loop {
        if let Some(s) = valid_set(cert, key)
            && Some(s.as_str()) != old
        {
            return Some((s, start.elapsed()));
        }
        if start.elapsed() > timeout {
            return None;
        }
        thread::sleep(Duration::from_millis(25));
    }
}

/// Replace `path` with `data` the way a well-behaved tool does: write a temp
/// file in the same directory, then rename it into place.
pub fn replace_atomically(path: &Path, data: &[u8]) {
    let tmp = path.with_extension("test-tmp");
    fs::write(&tmp, data).unwrap();
    fs::rename(&tmp, path).unwrap();
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/// A GET through curl: (status code, content type, body).
pub fn http_get(url: &str) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-o", "-", "-D", "/dev/stderr"])
        .arg(url)
        .output()
        .expect("curl");
    let head = String::from_utf8_lossy(&out.stderr).into_owned();
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let ctype = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    (
        status,
        ctype,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

// ---------------------------------------------------------------------------
// Prometheus / OpenMetrics text
// ---------------------------------------------------------------------------

/// One series: metric name and sorted labels.
pub type SeriesKey = (String, BTreeMap<String, String>);

/// A parsed exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    /// `# TYPE` per family.
    pub types: BTreeMap<String, String>,
    /// `# HELP` per family.
    pub help: BTreeMap<String, String>,
    /// Every sample.
    pub samples: BTreeMap<SeriesKey, f64>,
}

impl Exposition {
    /// The value of `name{labels}`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let l: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples.get(&(name.to_owned(), l)).copied()
    }
}

fn valid_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn valid_label_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// `{a="x",b="y"}` (without the braces) into a map; handles `\\`, `\"`, `\n`.
fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .ok_or_else(|| format!("label without =\": {rest:?}"))?;
        if !valid_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, ch)) = chars.next() {
            match ch {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => return Err(format!("bad escape {other:?} in {s:?}")),
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.ok_or_else(|| format!("unterminated label value in {s:?}"))?;
        if out.insert(name.to_owned(), value).is_some() {
            return Err(format!("duplicate label {name:?}"));
        }
        rest = &after[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.is_empty() {
            return Err(format!("junk after label value: {rest:?}"));
        }
    }
    Ok(out)
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|e| format!("bad value {s:?}: {e}")),
    }
}

/// Parse Prometheus text format / OpenMetrics text: `# HELP`, `# TYPE`,
/// `# UNIT` and `# EOF` comments and `name{labels} value [timestamp]` samples.
/// Checks that every sample belongs to a family with a `# TYPE` (counter
/// samples end in `_total`), that no series repeats, and that `# EOF`, when
/// present, is the last line.
pub fn parse_prometheus(text: &str) -> Result<Exposition, String> {
    let mut e = Exposition::default();
    let mut saw_eof = false;
    for (n, line) in text.lines().enumerate() {
        let at = |m: String| format!("line {}: {m}: {line:?}", n + 1);
        if saw_eof {
            return Err(at("content after # EOF".into()));
        }
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            let c = c.trim_start();
            if c == "EOF" {
                saw_eof = true;
                continue;
            }
            let mut parts = c.splitn(3, ' ');
            let kw = parts.next().unwrap_or("");
            let name = parts.next().unwrap_or("");
            let rest = parts.next().unwrap_or("");
            match kw {
                "HELP" | "TYPE" | "UNIT" if !valid_metric_name(name) => {
                    return Err(at(format!("bad metric name {name:?}")));
                }
                "HELP" => {
                    e.help.insert(name.into(), rest.into());
                }
                "TYPE" => {
                    let known = [
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "untyped",
                        "unknown",
                        "info",
                        "stateset",
                        "gaugehistogram",
                    ];
                    if !known.contains(&rest) {
                        return Err(at(format!("unknown type {rest:?}")));
                    }
                    if e.types.insert(name.into(), rest.into()).is_some() {
                        return Err(at("second # TYPE for a family".into()));
                    }
                }
                _ => {} // other comments are allowed in the Prometheus format
            }
            continue;
        }
        let (series, tail) = match line.find('{') {
            Some(i) => {
                let close = line[i..]
                    .rfind('}')
                    .ok_or_else(|| at("no closing }".into()))?
                    + i;
                (&line[..close + 1], line[close + 1..].trim_start())
            }
            None => line.split_once(' ').ok_or_else(|| at("no value".into()))?,
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, parse_labels(&l[..l.len() - 1]).map_err(at)?),
            None => (series, BTreeMap::new()),
        };
        if !valid_metric_name(name) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let mut fields = tail.split_whitespace();
        let value = parse_value(fields.next().ok_or_else(|| at("no value".into()))?).map_err(at)?;
        if let Some(ts) = fields.next() {
            ts.parse::<f64>()
                .map_err(|_| at(format!("bad timestamp {ts:?}")))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        let family_typed = e.types.contains_key(name)
            || ["_total", "_created", "_count", "_sum", "_bucket", "_info"]
                .iter()
                .any(|s| {
                    name.strip_suffix(s)
                        .is_some_and(|f| e.types.contains_key(f))
                });
        if !family_typed {
            return Err(at(format!("sample {name} has no # TYPE before it")));
        }
        if e.samples.insert((name.into(), labels), value).is_some() {
            return Err(at("duplicate series".into()));
        }
    }
    Ok(e)
}
