//! The fault suite for the CA side: a CA that refuses, hangs, answers errors or garbage,
//! asks us to wait, hands out path-like challenge tokens, or is a real Pebble stopped or
//! killed mid-order, or rejecting most nonces.
//!
//! Most cases use a hostile CA of the tests' own (`common/hostile.rs`): a TLS server in
//! front of a real Pebble that misbehaves on demand and counts every connection and
//! request. Each case checks that `renew` ends in bounded time after a bounded number of
//! requests, that `status --json` names the cause, that the next `renew` backs off without
//! contacting the CA, and that a renewal succeeds once the CA is sane again.

mod common;
#[path = "common/hostile.rs"]
mod hostile_ca;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use hostile_ca::{Hostile, Mode};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// The per-request limit the tests configure (the default is 30 s).
const REQUEST_TIMEOUT: &str = "2s";

/// A Pebble, the hostile CA in front of it, and a config for one certificate through it.
struct Scenario {
    env: TestEnv,
    ca: Hostile,
    cfg: PathBuf,
}

fn acme_extra(order_timeout: &str) -> String {
    format!("request_timeout = \"{REQUEST_TIMEOUT}\"\norder_timeout = \"{order_timeout}\"\n")
}

fn scenario(mode: Mode) -> Scenario {
    scenario_with(mode, "30s", "")
}

fn scenario_with(mode: Mode, order_timeout: &str, defaults_extra: &str) -> Scenario {
    let mut env = TestEnv::with_pebble(PebbleOpts::default());
    let ca = Hostile::start(&env.pebble().ca_pem, env.ports.acme, mode);
    env.directory = ca.directory_url();
    env.acme_extra = acme_extra(order_timeout);
    let cfg = env.write_config(&format!(
        "{}{}",
        env.defaults_http01(defaults_extra),
        env.cert_block("www", &["www.example.com"], "")
    ));
    Scenario { env, ca, cfg }
}

/// Runs `renew` (with `args`) and returns the output and how long it took.
fn renew(env: &TestEnv, cfg: &Path, args: &[&str]) -> (Output, Duration) {
    let mut all = vec!["renew"];
    all.extend_from_slice(args);
    let start = Instant::now();
    let out = env.run(cfg, &all);
    (out, start.elapsed())
}

fn last_error(st: &Value) -> String {
    st["last_error"].as_str().unwrap_or_default().to_owned()
}

impl Scenario {
    /// The failing run: bounded in time and contacts, the cause recorded, a back-off set.
    /// Returns the recorded error.
    fn fails(&self, max_contacts: usize, causes: &[&str]) -> String {
        let before = self.ca.contacts();
        let (out, took) = renew(&self.env, &self.cfg, &[]);
        assert_eq!(out.code, 1, "renew against a broken CA must fail:\n{out}");
        // A guard that it finished, not a timing assertion.
        assert!(
            took < Duration::from_secs(40),
            "renew took {took:?}:\n{out}"
        );
        let contacts = self.ca.contacts() - before;
        assert!(
            contacts <= max_contacts,
            "{contacts} connections+requests, expected at most {max_contacts}: {:?}\n{out}",
            self.ca.log()
        );
        let st = self.env.status_of(&self.cfg, "www");
        let err = last_error(&st);
        for c in causes {
            assert!(err.contains(c), "last_error {err:?} does not name {c:?}");
        }
        let next = rfc3339(&st["next_attempt"], "next_attempt");
        assert!(next > now(), "next_attempt {next} is not in the future");
        eprintln!(
            "figures: {contacts} contact(s), failed after {:.1}s: {err}",
            took.as_secs_f64()
        );
        err
    }

    /// The next run backs off without a single connection to the CA.
    fn backs_off(&self) {
        let before = self.ca.contacts();
        let (out, _) = renew(&self.env, &self.cfg, &[]);
        assert_eq!(out.code, 1, "{out}");
        assert!(out.all().contains("backing off"), "{out}");
        assert_eq!(
            self.ca.contacts(),
            before,
            "the CA was contacted while backing off: {:?}",
            self.ca.log()
        );
    }

    /// Once the CA is sane, a forced renewal gets a certificate and clears the error.
    fn recovers(&self) {
        self.ca.set_mode(Mode::Proxy);
        let (out, _) = renew(&self.env, &self.cfg, &["--force"]);
        assert_eq!(out.code, 0, "renew after the CA recovered:\n{out}");
        let (cert, key) = self.env.cert_paths("www");
        assert_key_matches(&cert, &key);
        self.env.pebble().assert_chain_verifies(&cert);
        let st = self.env.status_of(&self.cfg, "www");
        assert!(st["last_error"].is_null(), "{st}");
    }
}

/// Nothing listens where the CA should be.
#[test]
fn connection_refused() {
    let s = scenario(Mode::Refuse);
    // The connect is tried 3 times in the run (transient), each refused before any byte.
    s.fails(0, &["cannot reach the ACME server", &s.ca.directory_url()]);
    s.backs_off();
    s.recovers();
}

/// The CA accepts the TCP connection and never says anything (no TLS handshake).
#[test]
fn accepts_and_never_answers() {
    let s = scenario(Mode::Silent);
    s.fails(1, &["timed out after 2s", "no answer to GET", "/dir"]);
    s.backs_off();
    s.recovers();
}

/// The CA completes the TLS handshake, reads the request and never answers.
#[test]
fn tls_handshake_then_no_reply() {
    let s = scenario(Mode::NoReply);
    s.fails(
        2,
        &[
            "fetch directory: timed out after 2s",
            "acme.request_timeout",
        ],
    );
    assert_eq!(s.ca.requests(), 1, "{:?}", s.ca.log());
    s.backs_off();
    s.recovers();
}

/// A 500 with a `serverInternal` problem at the directory: the status and the problem are
/// shown (it used to read "missing field newNonce"), and it is retried as transient.
#[test]
fn server_error_with_problem_document() {
    let s = scenario(Mode::Answer {
        status: 500,
        headers: vec![("Content-Type".into(), "application/problem+json".into())],
        body: r#"{"type":"urn:ietf:params:acme:error:serverInternal","detail":"the database is on fire","status":500}"#.into(),
    });
    // 1 + 2 in-run retries, one connection and one request each.
    let err = s.fails(
        6,
        &[
            "fetch directory",
            "HTTP 500",
            "serverInternal",
            "the database is on fire",
        ],
    );
    assert!(!err.contains("missing field"), "{err}");
    assert_eq!(s.ca.requests(), 3, "{:?}", s.ca.log());
    s.backs_off();
    s.recovers();
}

/// A directory that is not JSON at all: the step, URL, status and a short excerpt.
#[test]
fn garbage_instead_of_json() {
    let junk = format!(
        "<html><body>Welcome to nginx!{}</body></html>",
        " ".repeat(100_000)
    );
    let s = scenario(Mode::Answer {
        status: 200,
        headers: vec![("Content-Type".into(), "text/html".into())],
        body: junk,
    });
    let err = s.fails(
        2,
        &[
            "fetch directory: unexpected answer",
            "HTTP 200",
            "/dir",
            "Welcome to nginx",
        ],
    );
    assert!(
        err.len() < 800,
        "the excerpt is not bounded: {} bytes",
        err.len()
    );
    s.backs_off();
    s.recovers();
}

/// A directory answer larger than the 4 MiB read limit: cut off and reported, not held.
#[test]
fn oversized_answer() {
    let s = scenario(Mode::Answer {
        status: 200,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: format!("{{\"newNonce\": \"{}\"}}", "x".repeat(5 << 20)),
    });
    s.fails(2, &["fetch directory", "larger than 4194304 bytes", "/dir"]);
    s.backs_off();
    s.recovers();
}

/// `rateLimited` with Retry-After: 7200 at the directory: honoured across runs, even by
/// `--force`, until the time has passed.
#[test]
fn rate_limited_with_retry_after() {
    let s = scenario(Mode::Answer {
        status: 503,
        headers: vec![
            ("Content-Type".into(), "application/problem+json".into()),
            ("Retry-After".into(), "7200".into()),
        ],
        body: r#"{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many requests"}"#
            .into(),
    });
    s.fails(2, &["rateLimited", "too many requests", "HTTP 503"]);
    let st = s.env.status_of(&s.cfg, "www");
    let next = rfc3339(&st["next_attempt"], "next_attempt");
    assert!(
        next > now() + time::Duration::seconds(7000),
        "next_attempt {next} ignores Retry-After: 7200"
    );
    s.backs_off();
    // Even a forced run does not contact a CA that asked us to wait.
    let (out, _) = renew(&s.env, &s.cfg, &["--force"]);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.all().contains("asked us to wait until"), "{out}");
    assert_eq!(s.ca.requests(), 1, "{:?}", s.ca.log());
    let err = last_error(&s.env.status_of(&s.cfg, "www"));
    assert!(err.contains("asked us to wait until"), "{err}");
    // Two hours pass (the stored hold is moved into the past).
    let ca_file = only_file(&s.env.state_dir().join("ca"));
    let mut rec: Value = serde_json::from_slice(&fs::read(&ca_file).unwrap()).unwrap();
    assert!(rec["retry_after_until"].is_string(), "{rec}");
    rec["retry_after_until"] = Value::String("2000-01-01T00:00:00Z".into());
    fs::write(&ca_file, serde_json::to_vec(&rec).unwrap()).unwrap();
    s.recovers();
}

/// A 503 with Retry-After at newNonce (the directory is fine): the step and status are
/// named, and the wait is honoured like the directory's.
#[test]
fn new_nonce_unavailable_with_retry_after() {
    let s = scenario(Mode::Proxy);
    s.ca.set_mode_for(
        Mode::Answer {
            status: 503,
            headers: vec![("Retry-After".into(), "3600".into())],
            body: String::new(),
        },
        Some("nonce"),
    );
    s.fails(4, &["new nonce", "HTTP 503", "HEAD", "nonce-plz"]);
    let next = rfc3339(&s.env.status_of(&s.cfg, "www")["next_attempt"], "next");
    assert!(next > now() + time::Duration::seconds(3500), "{next}");
    s.backs_off();
    let ca_file = only_file(&s.env.state_dir().join("ca"));
    let mut rec: Value = serde_json::from_slice(&fs::read(&ca_file).unwrap()).unwrap();
    rec["retry_after_until"] = Value::String("2000-01-01T00:00:00Z".into());
    fs::write(&ca_file, serde_json::to_vec(&rec).unwrap()).unwrap();
    s.recovers();
}

/// A `ca_bundle` that does not hold the CA's root: said so (naming the bundle and the
/// directory), and not retried within the run.
#[test]
fn ca_bundle_that_does_not_match() {
    let s = scenario(Mode::Proxy);
    let other = s.env.root().join("other-ca");
    fs::create_dir_all(&other).unwrap();
    write_tls_certs(&other);
    let bundle = other.join("ca.pem");
    let good = fs::read_to_string(&s.cfg).unwrap();
    fs::write(
        &s.cfg,
        good.replace(&toml_str(s.env.ca_bundle()), &toml_str(&bundle)),
    )
    .unwrap();
    let err = s.fails(
        1,
        &[
            "is not trusted by acme.ca_bundle",
            &bundle.display().to_string(),
            &s.ca.directory_url(),
        ],
    );
    assert!(!err.contains("cannot reach"), "{err}");
    s.backs_off();
    fs::write(&s.cfg, good).unwrap();
    s.recovers();
}

/// The directory is fine, but the authorization hands out a token that is a path (an
/// absolute one, and one climbing out of the webroot). Nothing is written outside the
/// webroot and the order fails with an error naming the CA.
#[test]
fn challenge_token_that_is_a_path() {
    let base = tempfile::tempdir().unwrap();
    let webroot = base.path().join("site/webroot");
    let outside = base.path().join("outside");
    fs::create_dir_all(&webroot).unwrap();
    fs::create_dir_all(&outside).unwrap();
    let victim = outside.join("victim.txt");
    // From <webroot>/.well-known/acme-challenge/ this climbs to <base>/escaped-victim.txt.
    let climbing = "../../../../escaped-victim.txt";
    let mut env = TestEnv::with_pebble(PebbleOpts::default());
    let ca = Hostile::start(&env.pebble().ca_pem, env.ports.acme, Mode::Proxy);
    env.directory = ca.directory_url();
    env.acme_extra = acme_extra("30s");
    let cfg = env.write_config(&format!(
        "[defaults]\nchallenge = \"http-01\"\nhttp01_webroot = {}\n\n{}",
        toml_str(&webroot),
        env.cert_block("www", &["www.example.com"], "")
    ));
    let s = Scenario { env, ca, cfg };
    for token in [victim.display().to_string(), climbing.to_owned()] {
        s.ca.set_mode(Mode::EvilToken(token.clone()));
        let before = s.ca.requests();
        let (out, took) = renew(&s.env, &s.cfg, &["--force"]);
        assert_eq!(out.code, 1, "{out}");
        let err = last_error(&s.env.status_of(&s.cfg, "www"));
        assert!(
            err.contains(&s.ca.directory_url()) && err.contains("token"),
            "the error must name the CA and the token: {err}"
        );
        let requests = s.ca.requests() - before;
        assert!(requests <= 12, "{requests} requests: {:?}", s.ca.log());
        eprintln!(
            "figures: token {token:?}: {requests} requests, failed after {:.1}s: {err}",
            took.as_secs_f64()
        );
    }
    assert!(!victim.exists(), "{} was written", victim.display());
    assert!(!base.path().join("escaped-victim.txt").exists());
    let written: Vec<_> = snapshot(base.path())
        .into_keys()
        .filter(|p| !p.starts_with(&webroot))
        .collect();
    assert!(
        written.is_empty(),
        "files written outside the webroot: {written:?}"
    );
    s.recovers_webroot(&webroot);
}

impl Scenario {
    /// Recovery for the webroot case: Pebble fetches the challenge from a static server
    /// over the webroot.
    fn recovers_webroot(&self, webroot: &Path) {
        let _server = StaticServer::start(webroot, self.env.ports.http);
        self.recovers();
    }
}

/// Each answer takes 1.5 s (within the 2 s request timeout), so the order as a whole runs
/// into `order_timeout`.
#[test]
fn slow_ca_hits_the_order_timeout() {
    let s = scenario_with(Mode::Proxy, "4s", "");
    // Account creation is quick; every authorization/challenge/finalize/cert answer is slow.
    s.ca.set_mode_for(Mode::Delay(Duration::from_millis(1500)), Some("Z/"));
    s.fails(30, &["timed out after 4s", "acme.order_timeout"]);
    s.backs_off();
    s.recovers();
}

// ---------------------------------------------------------------------------
// A real Pebble stopped or killed mid-order
// ---------------------------------------------------------------------------

/// The pid of the Pebble serving `env` (found by its working directory).
fn pebble_pid(env: &TestEnv) -> u32 {
    let dir = env
        .pebble()
        .ca_pem
        .parent()
        .unwrap()
        .canonicalize()
        .unwrap();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim() == "pebble" && fs::read_link(e.path().join("cwd")).ok() == Some(dir.clone())
        {
            return pid;
        }
    }
    panic!("no pebble running in {}", dir.display());
}

/// A DNS-01 config whose hook, when `<work>/signal-pebble` holds `SIG PID`, first sends
/// that signal: the order is then created and the CA stops mid-order.
fn dns01_with_signal_hook(env: &TestEnv) -> (PathBuf, PathBuf) {
    let trigger = env.path("signal-pebble");
    let hook = env.write_script(
        "dns-hook",
        &format!(
            "if [ \"$1\" = set ] && [ -f {t} ]; then\n  kill -$(cut -d' ' -f1 {t}) $(cut -d' ' -f2 {t})\n  rm -f {t}\nfi\nexec {h} {u} \"$@\"",
            t = trigger.display(),
            h = DNS_HOOK,
            u = env.pebble().challtestsrv_url()
        ),
    );
    let cfg = env.write_config(&format!(
        "[defaults]\nchallenge = \"dns-01\"\ndns01_hook = [{}]\n\n{}",
        toml_str(&hook),
        env.cert_block("www", &["www.example.com"], "")
    ));
    (cfg, trigger)
}

/// Pebble is stopped (SIGSTOP) after the order was created: the next request times out,
/// the error is recorded, and after SIGCONT a forced renewal succeeds.
#[test]
fn pebble_stopped_mid_order() {
    let mut env = TestEnv::with_pebble(PebbleOpts::default());
    env.acme_extra = acme_extra("30s");
    let (cfg, trigger) = dns01_with_signal_hook(&env);
    let pid = pebble_pid(&env);
    fs::write(&trigger, format!("STOP {pid}")).unwrap();
    let (out, took) = renew(&env, &cfg, &[]);
    let resume = || kill(Pid::from_raw(pid as i32), Signal::SIGCONT).unwrap();
    if out.code != 1 {
        resume();
        panic!("renew against a stopped Pebble must fail:\n{out}");
    }
    assert!(!trigger.exists(), "the hook did not stop Pebble:\n{out}");
    let st = env.status_of(&cfg, "www");
    let err = last_error(&st);
    eprintln!(
        "figures: stopped pebble, failed after {:.1}s: {err}",
        took.as_secs_f64()
    );
    assert!(
        err.contains("timed out after 2s") && err.contains("acme.request_timeout"),
        "{err}"
    );
    assert!(rfc3339(&st["next_attempt"], "next_attempt") > now());
    let (out, _) = renew(&env, &cfg, &[]);
    assert!(out.all().contains("backing off"), "{out}");
    resume();
    let (out, _) = renew(&env, &cfg, &["--force"]);
    assert_eq!(out.code, 0, "renew after SIGCONT:\n{out}");
    let (cert, key) = env.cert_paths("www");
    assert_key_matches(&cert, &key);
    assert!(env.status_of(&cfg, "www")["last_error"].is_null());
}

/// Pebble is killed after the order was created; a new Pebble (a fresh CA that does not
/// know our account) comes up on the same ports and a forced renewal succeeds.
#[test]
fn pebble_killed_mid_order() {
    let mut env = TestEnv::with_pebble(PebbleOpts::default());
    env.acme_extra = acme_extra("30s");
    let (cfg, trigger) = dns01_with_signal_hook(&env);
    let pid = pebble_pid(&env);
    fs::write(&trigger, format!("KILL {pid}")).unwrap();
    let (out, took) = renew(&env, &cfg, &[]);
    assert_eq!(out.code, 1, "{out}");
    assert!(!trigger.exists(), "the hook did not kill Pebble:\n{out}");
    let st = env.status_of(&cfg, "www");
    let err = last_error(&st);
    eprintln!(
        "figures: killed pebble, failed after {:.1}s: {err}",
        took.as_secs_f64()
    );
    assert!(err.contains("cannot reach the ACME server"), "{err}");
    assert!(rfc3339(&st["next_attempt"], "next_attempt") > now());
    let (out, _) = renew(&env, &cfg, &[]);
    assert!(out.all().contains("backing off"), "{out}");

    let dir = env.pebble().ca_pem.parent().unwrap().to_owned();
    let mut cmd = std::process::Command::new("pebble");
    cmd.arg("-config")
        .arg(dir.join("pebble.json"))
        .arg("-dnsserver")
        .arg(format!("127.0.0.1:{}", env.ports.dns))
        .current_dir(&dir)
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env_remove("PEBBLE_WFE_NONCEREJECT");
    let _pebble = Subprocess::spawn("pebble-restarted", cmd, &dir);
    assert!(
        wait_for(Duration::from_secs(20), || std::net::TcpStream::connect((
            "127.0.0.1",
            env.ports.acme
        ))
        .is_ok()),
        "restarted pebble did not listen"
    );
    let (out, _) = renew(&env, &cfg, &["--force"]);
    assert_eq!(out.code, 0, "renew after Pebble came back:\n{out}");
    let (cert, key) = env.cert_paths("www");
    assert_key_matches(&cert, &key);
}

// ---------------------------------------------------------------------------
// badNonce storms
// ---------------------------------------------------------------------------

fn nonce_storm(percent: u32) {
    let env = TestEnv::with_pebble(PebbleOpts {
        nonce_reject: Some(percent),
        ..PebbleOpts::default()
    });
    let blocks: String = (0..20)
        .map(|i| env.cert_block(&format!("c{i}"), &[&format!("c{i}.example.com")], ""))
        .collect();
    let cfg = env.write_config(&format!("{}{blocks}", env.defaults_http01("")));
    let start = Instant::now();
    let out = env.run_env(
        &cfg,
        &["renew"],
        &[("CERTKEEPER_LOG", "warn,certkeeper=debug")],
    );
    let took = start.elapsed();
    let requests = out.stderr.matches("ACME request").count();
    let nonce_retries = out.stderr.matches("badNonce, retrying the step").count();
    let most = out
        .stderr
        .lines()
        .filter(|l| l.contains("badNonce, retrying the step"))
        .filter_map(|l| l.rsplit("attempt=").next()?.trim().parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    eprintln!(
        "figures: badNonce {percent}%: 20 certificates in {:.1}s, {requests} requests, {nonce_retries} step retries, at most {most} for one step",
        took.as_secs_f64()
    );
    let failed: Vec<_> = env
        .status_json(&cfg)
        .into_iter()
        .filter(|s| !s["last_error"].is_null())
        .map(|s| format!("{}: {}", s["name"], s["last_error"]))
        .collect();
    assert!(
        failed.is_empty(),
        "failures at {percent}% badNonce: {failed:#?}"
    );
    assert_eq!(out.code, 0, "{}", out.stdout);
    for i in 0..20 {
        let (cert, key) = env.cert_paths(&format!("c{i}"));
        assert_key_matches(&cert, &key);
    }
}

/// Pebble rejecting half the nonces: 20 certificates in one run, no failure.
#[test]
fn nonce_storm_50_percent() {
    nonce_storm(50);
}

/// Pebble rejecting 90% of nonces: 20 certificates in one run, no failure.
#[test]
fn nonce_storm_90_percent() {
    nonce_storm(90);
}

fn only_file(dir: &Path) -> PathBuf {
    let files: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.into_iter().next().unwrap()
}
