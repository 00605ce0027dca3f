//! ARI (RFC 9773), `replaces`, profiles and EAB against a second real CA:
//! acme2certifier 0.46.3 from a venv (see `tests/common/a2c.rs`). Its
//! certificates live whole days, so ARI windows are steered with
//! `renewalthreshold_pctg` and `renewal_force` instead of short lifetimes.
//! The configs name the built-in HTTP-01 responder ([`http01_defaults`]):
//! acme2certifier does not validate, but the config must be complete.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use serde_json::Value;
use time::OffsetDateTime;

use common::a2c::{A2cEnv, A2cOpts};
use common::*;

/// The single learned-CA-facts file, `state_dir/ca/<id>.json`.
fn ca_state(state_dir: &Path) -> Value {
    let files: Vec<PathBuf> = fs::read_dir(state_dir.join("ca"))
        .expect("state_dir/ca exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(files.len(), 1, "expected one CA state file: {files:?}");
    serde_json::from_slice(&read(&files[0])).unwrap()
}

/// Parse `[start, end]` from status's `ari_window`.
fn status_window(st: &Value) -> (OffsetDateTime, OffsetDateTime) {
    let w = st["ari_window"]
        .as_array()
        .unwrap_or_else(|| panic!("no ari_window in status: {st}"));
    assert_eq!(w.len(), 2, "ari_window is not [start, end]: {st}");
    (
        rfc3339(&w[0], "ari_window[0]"),
        rfc3339(&w[1], "ari_window[1]"),
    )
}

/// Parse the CA's `suggestedWindow`.
fn ca_window(info: &Value) -> (OffsetDateTime, OffsetDateTime) {
    let w = &info["suggestedWindow"];
    (
        rfc3339(&w["start"], "suggestedWindow.start"),
        rfc3339(&w["end"], "suggestedWindow.end"),
    )
}

fn secs_between(a: OffsetDateTime, b: OffsetDateTime) -> i64 {
    (b - a).whole_seconds()
}

/// The ARI window, not the threshold, sets `renew_at`: a random point inside
/// the CA's window when it starts in the future, and status says so.
#[test]
fn ari_window_drives_the_plan() {
    // The window runs from 50% of the 1-day lifetime for 2 hours: always
    // before the default threshold (33% left, minus at most 5% jitter), so
    // the plan is ARI's, not the user's cap.
    let t = A2cEnv::start(A2cOpts {
        renewal_threshold_pctg: 50,
        renewal_window_secs: Some(7200),
        retry_after_secs: 300,
        ..A2cOpts::default()
    });
    let cfg = t.write_config(&format!(
        "{}{}",
        http01_defaults(t.ports.http, ""),
        t.cert_block("www", &["www.example.com"], "")
    ));
    let before = now();
    let out = t.run(&cfg, &["renew"]);
    let after = now();
    assert_eq!(out.code, 0, "{out}");
    let (cert, key) = t.cert_paths("www");
    assert_key_matches(&cert, &key);
    assert!(
        out.stderr.contains("ARI window"),
        "the window of the new certificate was not fetched:\n{out}"
    );

    let st = t.status_of(&cfg, "www");
    assert_eq!(st["rule"], "ari", "{st}");
    assert_eq!(st["state"], "valid", "{st}");
    let reason = st["reason"].as_str().unwrap();
    assert!(reason.contains("ARI"), "reason does not name ARI: {reason}");

    // The window in status is the CA's, as GET <renewalInfo>/<certid> returns it.
    let (info, retry) = t.a2c.renewal_info(&cert);
    let (ca_start, ca_end) = ca_window(&info);
    let (start, end) = status_window(&st);
    assert_eq!((start, end), (ca_start, ca_end), "status {st} vs CA {info}");
    // ... and it is the one the CA was told to give: 2 h from 50% of the lifetime.
    let (nb, na) = (cert_not_before(&cert), cert_not_after(&cert));
    let half = nb + (na - nb) / 2;
    assert!(
        secs_between(half, start).abs() <= 60,
        "window start {start} is not halfway through {nb} .. {na}"
    );
    assert_eq!(secs_between(start, end), 7200, "window {start} .. {end}");
    assert!(
        start > now(),
        "the window should start in the future: {start}"
    );

    let renew_at = rfc3339(&st["renew_at"], "renew_at");
    assert!(
        start <= renew_at && renew_at <= end,
        "renew_at {renew_at} is outside the ARI window {start} .. {end}"
    );

    // The Retry-After of renewalInfo decides the next poll.
    assert_eq!(retry, Some(300), "acme2certifier's Retry-After");
    let poll = rfc3339(&st["ari_next_poll"], "ari_next_poll");
    assert!(
        before + time::Duration::seconds(299) <= poll
            && poll <= after + time::Duration::seconds(301),
        "ari_next_poll {poll} is not the renew run ({before} .. {after}) + 300 s"
    );

    // Not due: a second run changes nothing.
    let pem = read(&cert);
    let out = t.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stderr.contains("not due"), "{out}");
    assert_eq!(read(&cert), pem, "the certificate was replaced");
    let st2 = t.status_of(&cfg, "www");
    assert_eq!(st2["renew_at"], st["renew_at"], "renew_at moved: {st2}");
    assert_eq!(st2["renewals_ok"], 1, "{st2}");
}

/// The Retry-After on renewalInfo sets when the window is fetched next.
#[test]
fn retry_after_sets_next_poll() {
    let t = A2cEnv::start(A2cOpts {
        retry_after_secs: 7200,
        ..A2cOpts::default()
    });
    let cfg = t.write_config(&format!(
        "{}{}",
        http01_defaults(t.ports.http, ""),
        t.cert_block("www", &["www.example.com"], "")
    ));
    let before = now();
    let out = t.run(&cfg, &["renew"]);
    let after = now();
    assert_eq!(out.code, 0, "{out}");
    let (_, retry) = t.a2c.renewal_info(&t.cert_paths("www").0);
    assert_eq!(retry, Some(7200), "acme2certifier's Retry-After");

    let st = t.status_of(&cfg, "www");
    let poll = rfc3339(&st["ari_next_poll"], "ari_next_poll");
    let issued = rfc3339(&st["last_success"], "last_success");
    assert!(before - time::Duration::seconds(1) <= issued && issued <= after);
    assert!(
        (secs_between(issued, poll) - 7200).abs() <= 2,
        "ari_next_poll {poll} is not issuance {issued} + 7200 s"
    );
}

/// Wait until `t` (wall clock) has passed.
fn sleep_until(t: OffsetDateTime) {
    let d = t - now();
    if d.is_positive() {
        thread::sleep(Duration::try_from(d).unwrap());
    }
}

/// The timestamp that starts a certkeeper log line.
fn log_time(line: &str) -> OffsetDateTime {
    let ts = line.split_whitespace().next().unwrap_or_default();
    rfc3339(&Value::String(ts.to_owned()), "log line timestamp")
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// `CERTKEEPER_FAULT_TIME_SCALE` for [`renewal_force_renews_at_next_poll_in_renew_and_run`]:
/// certkeeper's 60 s minimum ARI poll becomes 20 s, the CA's Retry-After.
const ARI_TIME_SCALE: (&str, &str) = ("CERTKEEPER_FAULT_TIME_SCALE", "3");

/// `renewal_force` on the CA side ("renew now" for every certificate) makes
/// `renew` renew once the cached window is due for a poll, and makes a running
/// daemon renew at its next ARI poll, without any file event. The CA's
/// Retry-After is 20 s, certkeeper's minimum poll under [`ARI_TIME_SCALE`] (60 s
/// without it), so the test waits for one real poll of 20 s.
#[test]
fn renewal_force_renews_at_next_poll_in_renew_and_run() {
    let mut t = A2cEnv::start(A2cOpts {
        renewal_window_secs: Some(7200), // ARI wins over the threshold, as above
        retry_after_secs: 20,
        ..A2cOpts::default()
    });
    // One-shot: its own state dir and HTTP-01 port.
    let cfg = t.write_config(&format!(
        "{}{}",
        http01_defaults(t.ports.http, ""),
        t.cert_block("oneshot", &["oneshot.example.com"], "")
    ));
    // Daemon: another state dir (it holds its lock) and another HTTP-01 port
    // (its responder stays up).
    let daemon_cfg = t.write_raw_config(
        "daemon.toml",
        &format!(
            "{}\n{}{}",
            t.config_head_in(&t.path("daemon-state"), ""),
            http01_defaults(t.ports.tls, ""),
            t.cert_block("daemon", &["daemon.example.com"], "")
        ),
    );

    let out = t.run_env(&cfg, &["renew"], &[ARI_TIME_SCALE]);
    assert_eq!(out.code, 0, "{out}");
    let (cert, _) = t.cert_paths("oneshot");
    let serial1 = cert_serial(&cert);
    let st = t.status_of(&cfg, "oneshot");
    assert_eq!(st["state"], "valid", "{st}");
    let poll = rfc3339(&st["ari_next_poll"], "ari_next_poll");

    let mut daemon = t.spawn_env("daemon", &daemon_cfg, &["run"], &[ARI_TIME_SCALE]);
    let (dcert, dkey) = t.cert_paths("daemon");
    // (Polling the daemon's log is cheaper than running status every 20 ms.)
    let issued = wait_for(Duration::from_secs(30), || {
        daemon.stderr().contains("ARI window")
    });
    if !issued {
        daemon.dump();
        panic!("the daemon did not issue its certificate and fetch its ARI window");
    }
    let dserial1 = cert_serial(&dcert);
    let dst = t.status_of(&daemon_cfg, "daemon");
    assert_eq!(dst["rule"], "ari", "{dst}");
    let dpoll = rfc3339(&dst["ari_next_poll"], "ari_next_poll");

    t.a2c.restart(|o| o.renewal_force = true);
    let (ca_start, _) = ca_window(&t.a2c.renewal_info(&cert).0);
    assert!(
        ca_start <= now(),
        "renewal_force: the window should be open"
    );

    // Until the next poll the cached window stands: nothing to do.
    assert!(
        now() < poll,
        "setup took too long: the poll at {poll} passed"
    );
    let out = t.run_env(&cfg, &["renew"], &[ARI_TIME_SCALE]);
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stderr.contains("not due"), "{out}");
    assert_eq!(cert_serial(&cert), serial1);

    // After it, the CA's "renew now" is seen and acted on.
    sleep_until(poll + time::Duration::seconds(1));
    let out = t.run_env(&cfg, &["renew"], &[ARI_TIME_SCALE]);
    assert_eq!(out.code, 0, "{out}");
    assert_ne!(cert_serial(&cert), serial1, "renew did not renew:\n{out}");
    assert!(
        out.stderr
            .contains("renewing: ARI: the CA's renewal window opened"),
        "renew did not renew because of the ARI window:\n{out}"
    );
    let st = t.status_of(&cfg, "oneshot");
    assert_eq!(st["rule"], "ari", "{st}");
    let reason = st["reason"].as_str().unwrap();
    assert!(
        reason.contains("ARI") && reason.contains("window opened"),
        "status reason: {reason}"
    );

    // The daemon renews on its own at its next poll.
    let renewed = wait_for(Duration::from_secs(45), || {
        count(&daemon.stderr(), "installed new certificate") >= 2
    });
    if !renewed || cert_serial(&dcert) == dserial1 {
        daemon.dump();
        panic!("the daemon did not renew after its ARI poll at {dpoll}");
    }
    // When it renewed, by its own log: at the poll, not before, not much later.
    let log = daemon.stderr();
    let lines: Vec<&str> = log.lines().collect();
    let ari_line = lines
        .iter()
        .position(|l| l.contains("renewing: ARI: the CA's renewal window opened"))
        .unwrap_or_else(|| panic!("the daemon's renewal was not ARI-driven:\n{log}"));
    let at = log_time(lines[ari_line]);
    assert!(
        dpoll - time::Duration::seconds(1) <= at && at <= dpoll + time::Duration::seconds(10),
        "the daemon renewed at {at}, not at its ARI poll at {dpoll}:\n{log}"
    );
    assert!(
        !lines[..ari_line]
            .iter()
            .any(|l| l.contains("watched file changed")),
        "a file event, not the ARI poll, woke the daemon:\n{log}"
    );
    // Let it settle, then stop it: SIGTERM gives exit 0.
    thread::sleep(Duration::from_secs(5));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = daemon.wait_timeout(Duration::from_secs(10));
    let log = daemon.stderr();
    if status.is_none_or(|s| s.code() != Some(0)) {
        daemon.dump();
        panic!("the daemon did not exit 0 on SIGTERM: {status:?}");
    }
    assert_key_matches(&dcert, &dkey);
    // One ARI-driven renewal, not a loop: the new certificate's window is
    // "renew now" as well, but it was just issued and its next poll is 60 s away.
    let issued = count(&log, "installed new certificate");
    if issued != 2 {
        daemon.dump();
        panic!(
            "the daemon installed {issued} certificates (1 at start + 1 for ARI expected) in the \
             ~5 s after the ARI renewal: it loops on a CA whose window is always open"
        );
    }
}

/// acme2certifier ignores `replaces` and instant-acme reports a mismatch: the
/// agent orders again without it, succeeds, and never sends it to that CA again.
#[test]
fn ignored_replaces_is_retried_without_and_remembered() {
    let t = A2cEnv::start(A2cOpts::default());
    let cfg = t.write_config(&format!(
        "{}{}",
        http01_defaults(t.ports.http, ""),
        t.cert_block("www", &["www.example.com"], "")
    ));
    let (cert, key) = t.cert_paths("www");
    let out = t.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "{out}");
    let serial1 = cert_serial(&cert);
    // It learned that the CA offers ARI, so the next order carries `replaces`.
    let ca = ca_state(&t.state_dir());
    assert_eq!(ca["ari_supported"], true, "{ca}");
    assert_eq!(ca["replaces_unsupported"], false, "{ca}");

    let out = t.run(&cfg, &["renew", "--force"]);
    assert_eq!(out.code, 0, "{out}");
    let serial2 = cert_serial(&cert);
    assert_ne!(serial2, serial1, "not renewed:\n{out}");
    assert_key_matches(&cert, &key);
    assert!(
        out.stderr.contains("replaces field mismatch"),
        "the first order should carry `replaces` and hit the mismatch:\n{out}"
    );
    assert!(
        out.stderr.contains("ordering again without it"),
        "no retry without `replaces`:\n{out}"
    );
    assert_eq!(
        count(&out.stderr, "certificate issued"),
        1,
        "expected exactly one issued order:\n{out}"
    );
    let ca = ca_state(&t.state_dir());
    assert_eq!(ca["replaces_unsupported"], true, "{ca}");
    let st = t.status_of(&cfg, "www");
    assert_eq!(st["last_error"], Value::Null, "{st}");
    assert_eq!(st["failures"], 0, "{st}");

    let out = t.run(&cfg, &["renew", "--force"]);
    assert_eq!(out.code, 0, "{out}");
    assert_ne!(cert_serial(&cert), serial2, "not renewed:\n{out}");
    assert!(
        !out.stderr.contains("mismatch") && !out.stderr.contains("replaces"),
        "`replaces` was tried again:\n{out}"
    );
}

/// A profile the CA lists is sent (and recorded by the CA); an unknown one
/// fails the certificate with an error naming it and the offered ones, and
/// writes no files.
#[test]
fn profiles_known_is_sent_unknown_fails_clearly() {
    let t = A2cEnv::start(A2cOpts::default());
    let dir = t.a2c.directory();
    assert!(dir["meta"]["profiles"]["shortlived"].is_string(), "{dir}");
    let cfg = t.write_config(&format!(
        "{}{}{}",
        http01_defaults(t.ports.http, "profile = \"shortlived\""),
        t.cert_block("short", &["short.example.com"], ""),
        t.cert_block("bad", &["bad.example.com"], "profile = \"nope\"")
    ));

    let out = t.run(&cfg, &["renew", "short"]);
    assert_eq!(out.code, 0, "{out}");
    let (cert, key) = t.cert_paths("short");
    assert_key_matches(&cert, &key);
    let profiles = t.a2c.sql("SELECT profile FROM orders");
    assert_eq!(
        profiles.lines().collect::<Vec<_>>(),
        ["shortlived"],
        "the CA's orders"
    );

    let (bad_cert, bad_key) = t.cert_paths("bad");
    let before = snapshot(&t.path("certs"));
    let out = t.run(&cfg, &["renew", "bad"]);
    assert_eq!(out.code, 1, "{out}");
    let all = out.all();
    for word in ["bad", "\"nope\"", "shortlived", "classic"] {
        assert!(all.contains(word), "the error should name {word}:\n{out}");
    }
    assert!(!bad_cert.exists() && !bad_key.exists());
    assert_eq!(snapshot(&t.path("certs")), before, "files were written");
    let st = t.status_of(&cfg, "bad");
    let err = st["last_error"].as_str().unwrap_or_default();
    assert!(err.contains("nope"), "status last_error: {st}");
    let profiles = t.a2c.sql("SELECT profile FROM orders");
    assert!(
        !profiles.contains("nope"),
        "the CA got an order: {profiles}"
    );
}

/// EAB against acme2certifier's JSON key file: the right key issues, a wrong
/// key fails without writing anything.
#[test]
fn eab_account_binding() {
    use base64::Engine as _;
    let hmac = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 32]);
    let wrong = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([8u8; 32]);
    let t = A2cEnv::start(A2cOpts {
        eab_keys: Some(vec![("kid-1".into(), hmac.clone())]),
        ..A2cOpts::default()
    });
    assert_eq!(t.a2c.directory()["meta"]["externalAccountRequired"], true);

    let body = |name: &str| {
        format!(
            "{}{}",
            http01_defaults(t.ports.http, ""),
            t.cert_block(name, &[&format!("{name}.example.com")], "")
        )
    };
    let eab = |key: &str| format!("eab_kid = \"kid-1\"\neab_hmac_key = \"{key}\"\n");
    let bad_cfg = t.write_raw_config(
        "bad.toml",
        &format!(
            "{}\n{}",
            t.config_head_in(&t.path("bad-state"), &eab(&wrong)),
            body("bad")
        ),
    );
    let out = t.run(&bad_cfg, &["renew"]);
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stderr.contains("create account")
            && out
                .stderr
                .contains("urn:ietf:params:acme:error:unauthorized"),
        "the error should name the account step and the CA's refusal:\n{out}"
    );
    assert!(!t.cert_paths("bad").0.exists(), "a certificate was written");
    assert!(
        !out.all().contains(&wrong),
        "the HMAC key was logged:\n{out}"
    );

    let cfg = t.write_raw_config(
        "good.toml",
        &format!(
            "{}\n{}",
            t.config_head_in(&t.path("good-state"), &eab(&hmac)),
            body("good")
        ),
    );
    let out = t.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "{out}");
    let (cert, key) = t.cert_paths("good");
    assert_key_matches(&cert, &key);
    assert!(
        !out.all().contains(&hmac),
        "the HMAC key was logged:\n{out}"
    );
}
