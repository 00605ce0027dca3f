//! `certkeeper run` against a real Pebble: renewals of short-lived
//! certificates on its own, reactions to files being deleted, corrupted or
//! replaced, config reloads (SIGHUP, invalid configs), a graceful stop in the
//! middle of an order, back-off while the CA is down and recovery when it comes
//! back, `/metrics` and `/healthz`, and `reload_signal`.
//!
//! Every daemon runs with `-v` so that each ACME request is a log line the
//! tests can count. Daemons are killed in `Drop` and print their log when a
//! test fails. Measured figures are printed with `eprintln!` (see them with
//! `cargo test --test daemon -- --nocapture`).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use common::daemon::*;
use common::*;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Write `<work>/<file>`: `top` (top-level keys such as `metrics_listen`),
/// then the standard `state_dir` + `[acme]` head, then `body`.
fn write_cfg(env: &TestEnv, file: &str, top: &str, body: &str) -> PathBuf {
    env.write_raw_config(file, &format!("{top}\n{}\n{body}", env.config_head()))
}

/// A config with the built-in HTTP-01 responder and one `[[cert]]` per name
/// (`<name>.example.com`).
fn http01_cfg(env: &TestEnv, defaults_extra: &str, names: &[&str]) -> PathBuf {
    let mut body = env.defaults_http01(defaults_extra);
    for n in names {
        body.push_str(&env.cert_block(n, &[&format!("{n}.example.com")], ""));
    }
    write_cfg(env, "certkeeper.toml", "", &body)
}

/// Start a daemon on `cfg` and wait until `name`'s set is installed and the
/// daemon has looked at it again after its own install (and found it not due).
fn start_and_issue(env: &TestEnv, cfg: &Path, name: &str) -> (Daemon, String) {
    start_and_issue_env(env, cfg, name, &[])
}

/// [`start_and_issue`] with extra environment for the daemon.
fn start_and_issue_env(
    env: &TestEnv,
    cfg: &Path,
    name: &str,
    envs: &[(&str, &str)],
) -> (Daemon, String) {
    let mut d = Daemon::start_env(env, "daemon", cfg, envs);
    let (cert, key) = env.cert_paths(name);
    let (serial, took) = wait_new_set(&cert, &key, None, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{name} was not issued at startup"));
    assert!(
        d.wait_log(Duration::from_secs(10), "scheduled"),
        "the daemon did not schedule the next renewal after its first install"
    );
    // The echo of its own install arrives within the debounce; let it pass
    // (it is either recognised as ours or re-evaluated as not due).
    let settled = |l: &str| l.contains("our own install") || l.contains("not due");
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) && !d.log().lines().any(settled) {
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "{name}: issued {:.2}s after the daemon started",
        took.as_secs_f64()
    );
    (d, serial)
}

/// The `status --json` entry for `name` agrees with the files on disk (serial,
/// not_after, state). The daemon may be installing while we look, so the disk
/// is read before and after `status` and a torn look is retried.
fn status_matches_disk(env: &TestEnv, cfg: &Path, name: &str) -> Result<Value, String> {
    let (cert, key) = env.cert_paths(name);
    let mut last = String::new();
    for _ in 0..10 {
        let before = valid_set(&cert, &key);
        let row = env.status_of(cfg, name);
        let after = valid_set(&cert, &key);
        let Some(serial) = before.filter(|b| Some(b) == after.as_ref()) else {
            last = "files changed (or were mid-install) while status ran".into();
            thread::sleep(Duration::from_millis(100));
            continue;
        };
        let st_serial = row["serial"].as_str().map(normalize_hex);
        if st_serial.as_deref() != Some(serial.as_str()) {
            return Err(format!(
                "status serial {st_serial:?} != installed {serial}: {row}"
            ));
        }
        let na = rfc3339(&row["not_after"], "not_after");
        if na != cert_not_after(&cert) {
            return Err(format!(
                "status not_after {na} != installed {}: {row}",
                cert_not_after(&cert)
            ));
        }
        if !matches!(row["state"].as_str(), Some("valid" | "due")) {
            return Err(format!("status state is not valid/due: {row}"));
        }
        return Ok(row);
    }
    Err(last)
}

// ---------------------------------------------------------------------------
// 1. Short-lived certificates are renewed by the daemon on its own
// ---------------------------------------------------------------------------

/// 30-second certificates with renew_before = "50%": the daemon issues at
/// startup and renews at least twice with no outside action, runs the reload
/// hook exactly once per install, never renews early or in a loop, and
/// `status --json` agrees with the installed files throughout.
#[test]
fn short_lived_certificates_are_renewed_on_schedule() {
    let env = TestEnv::with_pebble(PebbleOpts {
        validity_secs: 30,
        ..PebbleOpts::default()
    });
    let hook_log = env.path("hook.log");
    let hook = env.write_script(
        "reload-hook",
        &format!("echo \"$CERTKEEPER_SERIAL\" >> '{}'", hook_log.display()),
    );
    let cfg = http01_cfg(
        &env,
        &format!("renew_before = \"50%\"\nreload = [[{}]]", toml_str(&hook)),
        &["short"],
    );
    let (cert, _key) = env.cert_paths("short");

    let mut d = Daemon::start(&env, "daemon", &cfg);
    let start = Instant::now();
    let mut seen: Vec<(String, f64)> = Vec::new();
    let mut rows = Vec::new();
    while start.elapsed() < Duration::from_secs(75) {
        assert!(d.is_running(), "the daemon exited");
        for s in lines(&hook_log) {
            let s = normalize_hex(&s);
            if !seen.iter().any(|(x, _)| *x == s) {
                seen.push((s, start.elapsed().as_secs_f64()));
                let row = status_matches_disk(&env, &cfg, "short")
                    .unwrap_or_else(|e| panic!("status --json vs disk: {e}"));
                rows.push(row);
            }
        }
        if seen.len() >= 3 {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    eprintln!("serials seen by the reload hook (serial, seconds after start): {seen:?}");
    assert!(
        seen.len() >= 3,
        "expected the initial certificate and 2 renewals within 75 s, the hook saw {seen:?}"
    );

    // The hook ran exactly once per install: no serial twice, one hook run per
    // "installed new certificate" line.
    let all = lines(&hook_log);
    let mut dedup = all.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(
        dedup.len(),
        all.len(),
        "hook ran twice for one serial: {all:?}"
    );
    assert!(d.wait_log_since(
        0,
        Duration::from_secs(5),
        "installed new certificate",
        all.len()
    ));
    assert_eq!(
        count_lines(&d.log(), "installed new certificate"),
        lines(&hook_log).len(),
        "installs vs hook runs"
    );
    assert_eq!(count_lines(&d.log(), "renewal failed"), 0);

    // Renewals come at the threshold (50% of 30 s minus up to 5% jitter), not
    // early and not in a loop.
    for w in seen.windows(2) {
        let gap = w[1].1 - w[0].1;
        assert!(
            (11.0..=20.0).contains(&gap),
            "renewal {} came {gap:.1}s after the previous install (expected ~13.5-15s): {seen:?}",
            w[1].0
        );
    }

    // The renewal time status reports for the installed certificate.
    let row = status_matches_disk(&env, &cfg, "short").unwrap();
    let nb = cert_not_before(&cert);
    let na = cert_not_after(&cert);
    let life = (na - nb).as_seconds_f64();
    let renew_at = rfc3339(&row["renew_at"], "renew_at");
    let off = (renew_at - nb).as_seconds_f64();
    assert_eq!(row["rule"], "fraction", "{row}");
    assert!(
        off >= 0.45 * life - 2.0 && off <= 0.5 * life + 1.0,
        "renew_at is {off:.1}s into a {life:.0}s lifetime: {row}"
    );
    eprintln!(
        "status rows checked against the disk: {}; lifetime {life:.0}s",
        rows.len() + 1
    );
}

// ---------------------------------------------------------------------------
// 2-4. Someone else deletes, corrupts or replaces the files
// ---------------------------------------------------------------------------

/// Deleting the installed certificate gets it re-issued within seconds, and
/// the daemon's own install does not wake it into a loop.
#[test]
fn deleted_cert_is_reissued_within_seconds() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let cfg = http01_cfg(&env, "", &["www"]);
    let (cert, key) = env.cert_paths("www");
    let (mut d, old) = start_and_issue(&env, &cfg, "www");

    let t0 = Instant::now();
    fs::remove_file(&cert).unwrap();
    let (new, _) = wait_new_set(&cert, &key, Some(&old), Duration::from_secs(10))
        .unwrap_or_else(|| panic!("not re-issued within 10 s of the deletion"));
    let took = t0.elapsed();
    eprintln!(
        "FIGURE deletion -> reinstalled certificate: {:.3}s (serial {old} -> {new})",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(10));
    env.pebble().assert_chain_verifies(&cert);
    assert!(d.log().contains("watched file changed, re-evaluating"));

    // Exactly two installs, and they stay two: no loop on our own events.
    assert!(d.wait_log_since(0, Duration::from_secs(5), "installed new certificate", 2));
    thread::sleep(Duration::from_secs(3));
    assert_eq!(count_lines(&d.log(), "installed new certificate"), 2);
    assert!(d.is_running());
    status_matches_disk(&env, &cfg, "www").unwrap();
}

/// Garbage in place of the certificate gets a new, valid set; the garbage is
/// kept as `.prev`.
#[test]
fn garbage_cert_is_reissued() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let cfg = http01_cfg(&env, "", &["www"]);
    let (cert, key) = env.cert_paths("www");
    let (mut d, old) = start_and_issue(&env, &cfg, "www");

    let garbage = b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n";
    let t0 = Instant::now();
    fs::write(&cert, garbage).unwrap(); // in place, as a careless tool would
    let (new, _) = wait_new_set(&cert, &key, Some(&old), Duration::from_secs(10))
        .unwrap_or_else(|| panic!("garbage not replaced within 10 s"));
    eprintln!(
        "FIGURE garbage -> reinstalled certificate: {:.3}s",
        t0.elapsed().as_secs_f64()
    );
    assert_ne!(new, old);
    assert_key_matches(&cert, &key);
    env.pebble().assert_chain_verifies(&cert);
    assert_eq!(
        cert_sans(&cert),
        vec!["www.example.com".to_string()],
        "names of the new certificate"
    );
    let prev = cert.with_extension("pem.prev");
    assert_eq!(
        read(&prev),
        garbage,
        "the garbage is kept as {}",
        prev.display()
    );
    assert!(d.wait_log(Duration::from_secs(5), "installed files are not usable"));
    assert!(d.is_running());
}

/// Another valid set for the same names, put in place by someone else: the
/// daemon re-plans from it (status and its schedule follow the new
/// certificate) without ordering, and leaves the files alone.
#[test]
fn valid_replacement_is_replanned_without_ordering() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let cfg = http01_cfg(&env, "", &["www"]);
    let (cert, key) = env.cert_paths("www");

    // A second, independent certkeeper (own state, DNS-01 because the daemon
    // holds the HTTP-01 port) gets another certificate for the same name.
    let other_dir = env.path("other");
    fs::create_dir_all(&other_dir).unwrap();
    let (ocert, okey) = (other_dir.join("www.pem"), other_dir.join("www.key"));
    let other_cfg = env.write_raw_config(
        "other.toml",
        &format!(
            "{}\n[defaults]\nchallenge = \"dns-01\"\ndns01_hook = [{}, {}]\n\n\
             [[cert]]\nname = \"www\"\ndomains = [\"www.example.com\"]\ncert_path = {}\nkey_path = {}\n",
            env.config_head_in(&env.path("state2"), ""),
            toml_str(DNS_HOOK),
            toml_str(env.pebble().challtestsrv_url()),
            toml_str(&ocert),
            toml_str(&okey),
        ),
    );
    let out = env.run(&other_cfg, &["renew", "--force"]);
    assert_eq!(out.code, 0, "second certkeeper:\n{out}");

    let (mut d, old) = start_and_issue(&env, &cfg, "www");
    let new_serial = cert_serial(&ocert);
    assert_ne!(new_serial, old);
    let (cert_bytes, key_bytes) = (read(&ocert), read(&okey));

    let mark = d.mark();
    replace_atomically(&key, &key_bytes);
    replace_atomically(&cert, &cert_bytes);
    assert!(
        d.wait_log_since(mark, Duration::from_secs(10), "watched file changed", 1),
        "the replacement was not noticed"
    );
    assert!(
        d.wait_log_since(mark, Duration::from_secs(10), "not due", 1),
        "no re-evaluation after the replacement"
    );
    // Give a wrongly triggered order time to show up in the log.
    thread::sleep(Duration::from_secs(2));
    let after = d.log_since(mark);
    for bad in [
        "renewing",
        "ACME request",
        "installed new certificate",
        "not usable",
    ] {
        assert_eq!(
            count_lines(&after, bad),
            0,
            "{bad:?} after a valid replacement:\n{after}"
        );
    }
    assert_eq!(
        read(&cert),
        cert_bytes,
        "the replacement certificate was touched"
    );
    assert_eq!(read(&key), key_bytes, "the replacement key was touched");

    // The new plan: status describes the replacement, and the daemon scheduled
    // its next look at that certificate's renewal time.
    let row = status_matches_disk(&env, &cfg, "www").unwrap();
    assert_eq!(
        row["serial"].as_str().map(normalize_hex),
        Some(new_serial.clone())
    );
    let renew_at = row["renew_at"].as_str().unwrap();
    assert!(
        after
            .lines()
            .any(|l| l.contains("scheduled") && l.contains(renew_at)),
        "no \"scheduled ... next={renew_at}\" line after the replacement:\n{after}"
    );
    assert!(d.is_running());
}

// ---------------------------------------------------------------------------
// 5. Config reloads
// ---------------------------------------------------------------------------

/// SIGHUP after adding a `[[cert]]` issues it; an invalid config is logged and
/// the old one stays in force (a deleted cert is still re-issued under it);
/// removing a `[[cert]]` forgets it and leaves its files alone.
#[test]
fn sighup_reload_adds_certs_and_survives_invalid_config() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let cfg = http01_cfg(&env, "", &["a"]);
    let (mut d, _) = start_and_issue(&env, &cfg, "a");
    let (acert, akey) = env.cert_paths("a");
    let (bcert, bkey) = env.cert_paths("b");
    let a_serial = valid_set(&acert, &akey).unwrap();

    // Add b, then SIGHUP.
    let mark = d.mark();
    http01_cfg(&env, "", &["a", "b"]);
    d.signal(Signal::SIGHUP);
    let (b_serial, took) = wait_new_set(&bcert, &bkey, None, Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the added certificate b was not issued"));
    eprintln!("b issued {:.2}s after SIGHUP", took.as_secs_f64());
    let log = d.log_since(mark);
    assert!(log.contains("SIGHUP: reloading the config"), "{log}");
    assert!(log.contains("config reloaded"), "{log}");
    env.pebble().assert_chain_verifies(&bcert);
    assert_eq!(valid_set(&acert, &akey).as_deref(), Some(a_serial.as_str()));

    // An invalid config (an unknown key) + SIGHUP: logged, old config kept.
    let mark = d.mark();
    let good = fs::read_to_string(&cfg).unwrap();
    fs::write(&cfg, format!("no_such_key = 1\n{good}")).unwrap();
    d.signal(Signal::SIGHUP);
    assert!(
        d.wait_log_since(
            mark,
            Duration::from_secs(10),
            "config reload failed, keeping the old config",
            1
        ),
        "no error logged for the invalid config:\n{}",
        d.log_since(mark)
    );
    assert!(d.log_since(mark).contains("no_such_key"));
    thread::sleep(Duration::from_millis(500));
    assert!(d.is_running(), "the daemon died on an invalid config");

    // The old config (with b) is still in force.
    fs::remove_file(&bcert).unwrap();
    let (b2, took) = wait_new_set(&bcert, &bkey, Some(&b_serial), Duration::from_secs(10))
        .unwrap_or_else(|| panic!("b not re-issued under the old config"));
    eprintln!(
        "b re-issued under the old config {:.2}s after deletion",
        took.as_secs_f64()
    );
    assert_ne!(b2, b_serial);
    assert_eq!(valid_set(&acert, &akey).as_deref(), Some(a_serial.as_str()));

    // A valid config without b: b is forgotten, its files stay.
    let mark = d.mark();
    http01_cfg(&env, "", &["a"]);
    d.signal(Signal::SIGHUP);
    assert!(d.wait_log_since(mark, Duration::from_secs(10), "config reloaded", 1));
    assert!(
        d.log_since(mark).contains("removed=b"),
        "{}",
        d.log_since(mark)
    );
    assert!(
        bcert.exists() && bkey.exists(),
        "files of a removed cert were deleted"
    );
    let mark = d.mark();
    fs::remove_file(&bcert).unwrap();
    thread::sleep(Duration::from_secs(3));
    assert!(!bcert.exists(), "a removed certificate was issued again");
    assert_eq!(d.count_since(mark, "renewing"), 0, "{}", d.log_since(mark));
    assert!(d.is_running());
}

// ---------------------------------------------------------------------------
// 6. SIGTERM in the middle of an order
// ---------------------------------------------------------------------------

/// SIGTERM while the DNS-01 hook is still working (the order is surely in
/// flight): exit 0 within a few seconds, the files are the old, consistent set,
/// nothing is left staged, the TXT record is cleared, and the next `renew`
/// converges.
#[test]
fn sigterm_during_order_exits_cleanly_and_next_run_converges() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let url = env.pebble().challtestsrv_url();
    let flag = env.path("slow");
    let set_done = env.path("set-done");
    let sleep_pid = env.path("sleep.pid");
    // Publish the record for real, then (while `slow` exists) stall.
    let hook = env.write_script(
        "slow-dns-hook",
        &format!(
            "'{real}' '{url}' \"$@\" || exit 1\n\
             if [ \"$1\" = set ] && [ -e '{flag}' ]; then\n\
               sleep 30 &\n\
               echo $! > '{sleep_pid}'\n\
               touch '{set_done}'\n\
               wait\n\
             fi",
            real = DNS_HOOK,
            flag = flag.display(),
            sleep_pid = sleep_pid.display(),
            set_done = set_done.display(),
        ),
    );
    fs::write(&flag, "").unwrap();
    let body = format!(
        "[defaults]\nchallenge = \"dns-01\"\ndns01_hook = [{}]\n\n{}",
        toml_str(&hook),
        env.cert_block("slow", &["slow.example.com"], "")
    );
    let cfg = write_cfg(&env, "certkeeper.toml", "", &body);

    // A set that is valid but due (most of its lifetime is gone): the daemon
    // orders at startup, and until it installs these files must stay as they are.
    let (cert, key) = env.cert_paths("slow");
    let (c, k) = self_signed(
        &["slow.example.com"],
        now() - time::Duration::seconds(3000),
        now() + time::Duration::seconds(600),
    );
    fs::write(&cert, &c).unwrap();
    fs::write(&key, &k).unwrap();
    let old_serial = valid_set(&cert, &key).unwrap();

    let mut d = Daemon::start(&env, "daemon", &cfg);
    assert!(
        wait_for(Duration::from_secs(30), || set_done.exists()),
        "the DNS-01 hook never ran `set`"
    );
    let record = "_acme-challenge.slow.example.com.";
    assert_eq!(
        txt_answer_count(env.pebble().ports.dns, record),
        1,
        "record published"
    );

    let (status, took) = d.stop_with(Signal::SIGTERM, Duration::from_secs(15));
    let status = status.unwrap_or_else(|| panic!("still running 15 s after SIGTERM"));
    eprintln!(
        "FIGURE SIGTERM with an order in flight -> exit: {:.2}s ({status})",
        took.as_secs_f64()
    );
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    assert!(took < Duration::from_secs(6), "took {took:?} to stop");
    let log = d.log();
    assert!(log.contains("SIGTERM received"), "{log}");

    // The files: the old, consistent set, byte for byte; nothing half-staged.
    assert_eq!(read(&cert), c.as_bytes());
    assert_eq!(read(&key), k.as_bytes());
    assert_eq!(valid_set(&cert, &key).as_deref(), Some(old_serial.as_str()));
    let staging = env.state_dir().join("staging").join("slow");
    assert!(
        !staging.exists() || fs::read_dir(&staging).unwrap().next().is_none(),
        "leftover staging at {}",
        staging.display()
    );
    assert_eq!(
        txt_answer_count(env.pebble().ports.dns, record),
        0,
        "the TXT record was not cleared on shutdown"
    );
    // Report (not assert) whether the hook's own child outlived the daemon.
    if let Ok(p) = fs::read_to_string(&sleep_pid)
        && let Ok(pid) = p.trim().parse::<u32>()
    {
        let alive = pid_alive(pid);
        eprintln!(
            "NOTE the DNS hook's child (sleep, pid {pid}) alive after the daemon exited: {alive}"
        );
        if alive {
            signal_pid(pid, Signal::SIGKILL);
        }
    }

    // The next run converges.
    fs::remove_file(&flag).unwrap();
    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "renew after the interrupted daemon:\n{out}");
    let new_serial = valid_set(&cert, &key).expect("a matching set after renew");
    assert_ne!(new_serial, old_serial);
    env.pebble().assert_chain_verifies(&cert);
    assert_eq!(txt_answer_count(env.pebble().ports.dns, record), 0);
}

// ---------------------------------------------------------------------------
// 7. The CA goes down, then comes back as a new instance
// ---------------------------------------------------------------------------

/// `CERTKEEPER_FAULT_TIME_SCALE` for the CA-outage tests: the ladder's 1-minute first
/// step becomes [`STEP`] (and the 10-minute second one 150 s, the 30 s reuse of a failed
/// connection 7.5 s), so a test sees the daemon wait out a real back-off step in
/// seconds instead of a minute. Every window of these tests is this fraction of the
/// original.
const TIME_SCALE: (&str, &str) = ("CERTKEEPER_FAULT_TIME_SCALE", "4");

/// The ladder's first step under [`TIME_SCALE`] (60 s / 4).
const STEP: Duration = Duration::from_secs(15);

/// The ERROR and WARN lines of a log.
fn problems(log: &str) -> String {
    log.lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Wait (until `deadline` after `t0`) for `cert`/`key` to hold a matching set
/// other than `old`; returns its serial and how long after `t0` it appeared.
fn wait_recovery(
    cert: &Path,
    key: &Path,
    old: Option<&str>,
    t0: Instant,
    deadline: Duration,
) -> Option<(String, Duration)> {
    let left = deadline.saturating_sub(t0.elapsed());
    wait_new_set(cert, key, old, left).map(|(s, _)| (s, t0.elapsed()))
}

/// The daemon starts while the CA is down, with no account and no
/// certificate. It makes a handful of ACME requests (its in-run retries), then
/// waits out the ladder's first step (1 minute, [`STEP`] under [`TIME_SCALE`]),
/// and a file event during the back-off re-evaluates without contacting the CA.
/// When Pebble comes up, the daemon recovers on its own at the ladder's next
/// step, not before.
#[test]
fn ca_down_at_startup_backs_off_then_recovers() {
    let mut env = TestEnv::with_pebble(PebbleOpts::default());
    env.pebble.as_mut().unwrap().stop_ca();
    let cfg = http01_cfg(&env, "", &["a"]);
    let (cert, key) = env.cert_paths("a");

    let t0 = Instant::now();
    let mut d = Daemon::start_env(&env, "daemon", &cfg, &[TIME_SCALE]);
    assert!(
        d.wait_log_since(0, Duration::from_secs(20), "renewal failed", 1),
        "no failure reported while the CA is down"
    );
    let t_fail = Instant::now();
    // A file event during the back-off: re-evaluated, but the CA is not called.
    let mark_ev = d.mark();
    fs::write(&cert, b"garbage while the CA is down\n").unwrap();
    assert!(
        d.wait_log_since(mark_ev, Duration::from_secs(5), "backing off", 1),
        "a file event during the back-off was not re-evaluated:\n{}",
        d.log_since(mark_ev)
    );

    // A quarter of the way into the back-off step (as 20 s of the minute were).
    thread::sleep((STEP / 4).saturating_sub(t_fail.elapsed()));
    let reqs = count_lines(&d.log(), "ACME request");
    let failed = count_lines(&d.log(), "ACME request failed");
    eprintln!(
        "FIGURE CA down at startup, {:.0}s: {reqs} ACME requests ({failed} failed), \
         {} after the file event",
        t0.elapsed().as_secs_f64(),
        d.count_since(mark_ev, "ACME request")
    );
    assert!(
        (1..=10).contains(&reqs),
        "{reqs} ACME requests in {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(
        d.count_since(mark_ev, "ACME request"),
        0,
        "a file event during the back-off contacted the CA:\n{}",
        d.log_since(mark_ev)
    );
    let row = env.status_of(&cfg, "a");
    assert_eq!(row["failures"], 1, "{row}");
    let step = (rfc3339(&row["next_attempt"], "next_attempt")
        - rfc3339(&row["last_failure"], "last_failure"))
    .whole_seconds();
    // The ladder's first step, to the second (the timestamps are whole seconds).
    let want = STEP.as_secs() as i64;
    assert!(
        (want - 1..=want + 1).contains(&step),
        "first ladder step {step}s, not {want}s: {row}"
    );

    let mark = d.mark();
    env.pebble.as_mut().unwrap().restart_ca("pebble2");
    let up = t0.elapsed();
    // Recovery comes at the first step; the second would be 10x later.
    let got = wait_recovery(&cert, &key, None, t_fail, STEP + Duration::from_secs(30));
    eprintln!(
        "FIGURE CA back {:.0}s after startup; daemon recovered: {:?}",
        up.as_secs_f64(),
        got.as_ref().map(|(s, t)| (s, t.as_secs_f64()))
    );
    let (_, at) = got.unwrap_or_else(|| {
        panic!(
            "no recovery within {:?} of the failure; status {}\nerrors since the CA came back:\n{}",
            STEP + Duration::from_secs(30),
            env.status_of(&cfg, "a"),
            problems(&d.log_since(mark))
        )
    });
    // It waited for the ladder: not before the first step after the failure.
    assert!(
        at >= STEP - Duration::from_secs(1),
        "recovered {at:?} after the failure, before the ladder's {STEP:?} step"
    );
    env.pebble().assert_chain_verifies(&cert);
    assert!(d.is_running());
    let row = env.status_of(&cfg, "a");
    assert_eq!(row["failures"], 0, "{row}");
    assert!(row["next_attempt"].is_null(), "{row}");
}

/// The daemon had issued (its account exists on the CA), then the CA goes
/// down and the certificate is deleted: a handful of requests, then the
/// ladder's first step (1 minute, [`STEP`] under [`TIME_SCALE`]). The
/// CA then restarts on the same ports as a new instance that does not know the
/// account (what happens when a CA loses or deactivates an account). The
/// daemon must recover on its own at the ladder's next step.
#[test]
fn ca_restart_with_lost_account_recovers_without_daemon_restart() {
    let mut env = TestEnv::with_pebble(PebbleOpts::default());
    let cfg = http01_cfg(&env, "", &["a"]);
    let (cert, key) = env.cert_paths("a");
    let (mut d, old) = start_and_issue_env(&env, &cfg, "a", &[TIME_SCALE]);

    env.pebble.as_mut().unwrap().stop_ca();
    let t0 = Instant::now();
    let mark = d.mark();
    fs::remove_file(&cert).unwrap();
    assert!(
        d.wait_log_since(mark, Duration::from_secs(20), "renewal failed", 1),
        "no failure reported while the CA is down:\n{}",
        d.log_since(mark)
    );
    let t_fail = Instant::now();
    thread::sleep((STEP / 4).saturating_sub(t_fail.elapsed()));
    let reqs = d.count_since(mark, "ACME request");
    eprintln!(
        "FIGURE CA down for {:.0}s after the deletion: {reqs} ACME requests ({} failed)",
        t0.elapsed().as_secs_f64(),
        d.count_since(mark, "ACME request failed")
    );
    assert!(
        (1..=10).contains(&reqs),
        "{reqs} ACME requests in {:.0} s",
        t0.elapsed().as_secs_f64()
    );

    let mark = d.mark();
    env.pebble.as_mut().unwrap().restart_ca("pebble2");
    // Recovery comes at the first step; the second would be 10x later.
    let got = wait_recovery(
        &cert,
        &key,
        Some(&old),
        t_fail,
        STEP + Duration::from_secs(30),
    );
    eprintln!(
        "FIGURE CA restarted (account lost); daemon recovered: {:?}",
        got.as_ref().map(|(s, t)| (s, t.as_secs_f64()))
    );
    assert!(
        got.is_some(),
        "no recovery within {:?} of the failure; status {}\nerrors since the CA came back:\n{}",
        STEP + Duration::from_secs(30),
        env.status_of(&cfg, "a"),
        problems(&d.log_since(mark))
    );
    env.pebble().assert_chain_verifies(&cert);
    assert!(d.count_since(mark, "ACME request") <= 40);
    assert!(d.is_running());
}

// ---------------------------------------------------------------------------
// 8. /metrics and /healthz; renew --metrics-file
// ---------------------------------------------------------------------------

fn unix(v: &Value, what: &str) -> f64 {
    rfc3339(v, what).unix_timestamp() as f64
}

/// Check an exposition against `status --json`, per certificate.
fn metrics_match_status(m: &Exposition, rows: &[Value], skip_renew_at_for: &[&str]) {
    const P: &str = "certkeeper_certificate_";
    for f in [
        "not_after_timestamp_seconds",
        "renew_at_timestamp_seconds",
        "last_success_timestamp_seconds",
        "last_failure_timestamp_seconds",
        "valid",
        "state",
    ] {
        assert_eq!(
            m.types.get(&format!("{P}{f}")).map(String::as_str),
            Some("gauge"),
            "{f}"
        );
        assert!(m.help.contains_key(&format!("{P}{f}")), "no HELP for {f}");
    }
    for f in ["renewals", "hook_failures"] {
        assert_eq!(
            m.types.get(&format!("{P}{f}")).map(String::as_str),
            Some("counter"),
            "{f}"
        );
    }
    for row in rows {
        let name = row["name"].as_str().unwrap();
        let l = [("name", name)];
        let get = |f: &str| m.get(&format!("{P}{f}"), &l);
        match row["not_after"].is_null() {
            true => assert_eq!(get("not_after_timestamp_seconds"), None, "{name}"),
            false => assert_eq!(
                get("not_after_timestamp_seconds"),
                Some(unix(&row["not_after"], "not_after")),
                "{name} not_after"
            ),
        }
        if !skip_renew_at_for.contains(&name) {
            assert_eq!(
                get("renew_at_timestamp_seconds"),
                Some(unix(&row["renew_at"], "renew_at")),
                "{name} renew_at"
            );
        }
        for (f, k) in [
            ("last_success_timestamp_seconds", "last_success"),
            ("last_failure_timestamp_seconds", "last_failure"),
        ] {
            let want = (!row[k].is_null()).then(|| unix(&row[k], k));
            assert_eq!(get(f), want, "{name} {f}");
        }
        let state = row["state"].as_str().unwrap();
        let valid = f64::from(u8::from(matches!(state, "valid" | "due")));
        assert_eq!(get("valid"), Some(valid), "{name} valid");
        for s in ["valid", "due", "missing", "invalid", "expired"] {
            assert_eq!(
                m.get(&format!("{P}state"), &[("name", name), ("state", s)]),
                Some(f64::from(u8::from(s == state))),
                "{name} state={s}"
            );
        }
        for (result, k) in [("success", "renewals_ok"), ("failure", "renewals_failed")] {
            assert_eq!(
                m.get(
                    &format!("{P}renewals_total"),
                    &[("name", name), ("result", result)]
                ),
                row[k].as_f64(),
                "{name} renewals {result}"
            );
        }
        assert_eq!(get("hook_failures_total"), row["hook_failures"].as_f64());
    }
}

/// `/metrics` parses as Prometheus text and agrees with `status --json` for a
/// valid certificate and one the CA refuses; `/healthz` answers 200; after the
/// daemon stops, `renew --metrics-file` writes the same series.
#[test]
fn metrics_endpoint_matches_status_and_textfile() {
    let env = TestEnv::with_pebble(PebbleOpts {
        blocklist: vec!["bad.example.com".into()],
        ..PebbleOpts::default()
    });
    // Pebble never listens on its TLS-ALPN validation port: free for metrics.
    let metrics_addr = format!("127.0.0.1:{}", env.ports.tls);
    let mut body = env.defaults_http01("");
    body.push_str(&env.cert_block("good", &["good.example.com"], ""));
    body.push_str(&env.cert_block("bad", &["bad.example.com"], ""));
    let cfg = write_cfg(
        &env,
        "certkeeper.toml",
        &format!("metrics_listen = \"{metrics_addr}\""),
        &body,
    );
    let (mut d, _) = start_and_issue(&env, &cfg, "good");
    assert!(d.wait_log(Duration::from_secs(20), "rejectedIdentifier"));
    assert!(wait_for(Duration::from_secs(10), || {
        env.status_of(&cfg, "bad")["last_outcome"] == "failed"
    }));

    let (code, _, text) = http_get(&format!("http://{metrics_addr}/healthz"));
    assert_eq!(code, 200, "/healthz: {text}");

    let (code, ctype, text) = http_get(&format!("http://{metrics_addr}/metrics"));
    assert_eq!(code, 200, "/metrics: {text}");
    assert!(
        ctype.starts_with("application/openmetrics-text") || ctype.starts_with("text/plain"),
        "content type {ctype:?}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    let live = parse_prometheus(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let rows = env.status_json(&cfg);
    assert_eq!(rows.len(), 2);
    // A missing certificate is due "now", a moving target: skip its renew_at.
    metrics_match_status(&live, &rows, &["bad"]);
    let m = |f: &str, n: &str| live.get(&format!("certkeeper_certificate_{f}"), &[("name", n)]);
    assert_eq!(m("valid", "good"), Some(1.0));
    assert_eq!(m("valid", "bad"), Some(0.0));
    assert!(m("renew_at_timestamp_seconds", "bad").unwrap() <= now().unix_timestamp() as f64);
    let (code, _, _) = http_get(&format!("http://{metrics_addr}/nope"));
    assert_eq!(code, 404);

    // Stop the daemon, then the timer mode's textfile.
    let (st, _) = d.stop_with(Signal::SIGTERM, Duration::from_secs(10));
    assert_eq!(st.and_then(|s| s.code()), Some(0));
    let mf = env.path("metrics/certkeeper.prom");
    fs::create_dir_all(mf.parent().unwrap()).unwrap();
    let out = env.run(&cfg, &["renew", "--metrics-file", mf.to_str().unwrap()]);
    // "bad" is still in its back-off: exit 1 by design.
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("backing off"), "{out}");
    let file = fs::read_to_string(&mf).expect("metrics file written");
    assert_eq!(mode(&mf), 0o644);
    let written = parse_prometheus(&file).unwrap_or_else(|e| panic!("{e}\n{file}"));
    let keys = |e: &Exposition| e.samples.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        keys(&written),
        keys(&live),
        "series of the textfile vs /metrics"
    );
    let rows = env.status_json(&cfg);
    metrics_match_status(&written, &rows, &["bad"]);
    for (k, v) in &live.samples {
        if k.0.contains("renew_at") && k.1.get("name").map(String::as_str) == Some("bad") {
            continue;
        }
        assert_eq!(written.samples.get(k), Some(v), "{k:?}");
    }
}

#[test]
fn prometheus_parser_accepts_and_rejects() {
    let good = "# HELP a_seconds Help text with spaces\n# TYPE a_seconds gauge\n\
                a_seconds{name=\"x\",q=\"a\\\"b\"} 17\n# TYPE c counter\nc_total{name=\"x\"} 3\n# EOF\n";
    let e = parse_prometheus(good).unwrap();
    let want: BTreeMap<String, String> = [("name", "x"), ("q", "a\"b")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(e.samples.get(&("a_seconds".to_string(), want)), Some(&17.0));
    assert_eq!(e.get("c_total", &[("name", "x")]), Some(3.0));
    for bad in [
        "x 1\n",                                        // no TYPE
        "# TYPE x gauge\nx{name=\"a} 1\n",              // unterminated label
        "# TYPE x gauge\nx{name=\"a\"}\n",              // no value
        "# TYPE x gauge\nx 1\n# EOF\nx 2\n",            // after EOF
        "# TYPE x gauge\nx{a=\"1\"} 1\nx{a=\"1\"} 2\n", // duplicate series
        "# TYPE x gauge\nx{a=\"1\"} one\n",             // bad value
        "# TYPE x sometype\nx 1\n",                     // unknown type
    ] {
        assert!(parse_prometheus(bad).is_err(), "accepted {bad:?}");
    }
}

// ---------------------------------------------------------------------------
// 9. reload_signal
// ---------------------------------------------------------------------------

/// `reload_signal = { pidfile, signal = "USR1" }`: after issuance the process
/// named in the pidfile gets exactly that signal.
#[test]
fn reload_signal_reaches_pidfile_process() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let pidfile = env.path("server.pid");
    let got = env.path("signals");
    let server = env.write_script(
        "fake-server",
        &format!(
            "trap 'echo USR1 >> \"{got}\"' USR1\n\
             trap 'echo HUP >> \"{got}\"' HUP\n\
             echo $$ > '{pid}.tmp' && mv '{pid}.tmp' '{pid}'\n\
             while :; do sleep 0.1; done",
            got = got.display(),
            pid = pidfile.display()
        ),
    );
    let _server = Subprocess::spawn(
        "fake-server",
        std::process::Command::new(&server),
        env.root(),
    );
    assert!(wait_for(Duration::from_secs(10), || pidfile.exists()));
    let server_pid: u32 = fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let cfg = http01_cfg(
        &env,
        &format!(
            "reload_signal = {{ pidfile = {}, signal = \"USR1\" }}",
            toml_str(&pidfile)
        ),
        &["www"],
    );
    let (mut d, _) = start_and_issue(&env, &cfg, "www");
    assert!(
        wait_for(Duration::from_secs(5), || lines(&got).len() == 1),
        "the pidfile's process got {:?}",
        lines(&got)
    );
    assert!(d.wait_log(Duration::from_secs(5), "sent reload signal"));
    assert_eq!(lines(&got), vec!["USR1".to_string()]);
    assert!(pid_alive(server_pid));
    let row = env.status_of(&cfg, "www");
    assert_eq!(row["hooks_pending"], false, "{row}");

    // Again for a re-issue after deletion: one more USR1, still no HUP.
    let (cert, key) = env.cert_paths("www");
    let old = valid_set(&cert, &key).unwrap();
    fs::remove_file(&cert).unwrap();
    wait_new_set(&cert, &key, Some(&old), Duration::from_secs(10)).expect("re-issued");
    assert!(
        wait_for(Duration::from_secs(5), || lines(&got).len() == 2),
        "{:?}",
        lines(&got)
    );
    assert_eq!(lines(&got), vec!["USR1".to_string(), "USR1".to_string()]);
}
