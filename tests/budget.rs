//! The limits on orders against a real Pebble: the per-CA order budget
//! (`acme.max_new_orders`) defers what it cannot afford and resumes across runs, and
//! the per-certificate circuit breaker (`max_orders_per_cert`) refuses even
//! `renew --force`.

mod common;

use std::fs;
use std::thread;

use common::*;

/// A budget of 2 orders per 15 s with 3 certificates due: the first run issues 2 and
/// defers the third (exit 0, outcome and `status --json` say so, with the time); a second
/// process right after still defers it (the spent budget is read from the state, not
/// reset per process) and orders nothing; once the window has passed, the next run
/// issues the third.
#[test]
fn budget_defers_and_resumes_across_runs() {
    let mut env = TestEnv::with_pebble(PebbleOpts::default());
    env.acme_extra = "max_new_orders = \"2/15s\"".into();
    let names = ["a", "b", "c"];
    let mut body = env.defaults_http01("");
    for n in names {
        body.push_str(&env.cert_block(n, &[&format!("{n}.example.com")], ""));
    }
    let cfg = env.write_config(&body);

    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "a deferral is not a failure:\n{out}");
    let issued: Vec<_> = names
        .iter()
        .filter(|n| env.cert_paths(n).0.exists())
        .collect();
    assert_eq!(
        issued.len(),
        2,
        "the budget allows exactly 2 orders:\n{out}"
    );
    let deferred = *names
        .iter()
        .find(|n| !env.cert_paths(n).0.exists())
        .unwrap();
    assert!(
        out.stderr.contains(
            "deferred: the CA's order budget (2 per 15s) is spent; next order allowed at "
        ),
        "{out}"
    );
    let st = env.status_of(&cfg, deferred);
    assert_eq!(st["state"], "deferred", "{st}");
    assert_eq!(st["hold"], "deferred", "{st}");
    assert_eq!(st["last_outcome"], "deferred", "{st}");
    assert_eq!(
        st["failures"], 0,
        "a deferral is not on the retry ladder: {st}"
    );
    let until = rfc3339(&st["hold_until"], "hold_until");
    assert!(
        st["hold_reason"]
            .as_str()
            .is_some_and(|r| r.contains("2 per 15s")),
        "{st}"
    );
    for n in &issued {
        assert_eq!(env.status_of(&cfg, n)["state"], "valid");
    }
    let serials: Vec<_> = issued
        .iter()
        .map(|n| cert_serial(&env.cert_paths(n).0))
        .collect();

    // A new process: the budget spent by the first one still holds.
    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(!env.cert_paths(deferred).0.exists(), "overspent:\n{out}");
    assert!(
        out.stderr.contains("deferred: the CA's order budget"),
        "{out}"
    );
    let st = env.status_of(&cfg, deferred);
    assert_eq!(rfc3339(&st["hold_until"], "hold_until"), until, "{st}");

    let wait = until + std::time::Duration::from_millis(500) - now();
    if wait.is_positive() {
        thread::sleep(wait.unsigned_abs());
    }
    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "{out}");
    let (cert, key) = env.cert_paths(deferred);
    assert!(cert.exists(), "not issued after the window:\n{out}");
    assert_key_matches(&cert, &key);
    env.pebble().assert_chain_verifies(&cert);
    let st = env.status_of(&cfg, deferred);
    assert_eq!(st["state"], "valid", "{st}");
    assert!(st["hold"].is_null(), "{st}");
    for (n, s) in issued.iter().zip(&serials) {
        assert_eq!(&cert_serial(&env.cert_paths(n).0), s, "{n} was re-ordered");
    }
}

/// max_orders_per_cert = 2: the first run issues, `renew --force` renews once, and the
/// next `renew --force` is refused by the breaker (exit 1, with the count and the time it
/// reopens) without an order: the serial changed only twice. With the files deleted the
/// certificate is due, and still not ordered: `status` shows state `breaker`.
#[test]
fn breaker_trips_and_refuses_force() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let cfg = env.write_config(&format!(
        "{}{}",
        env.defaults_http01(""),
        env.cert_block("loop", &["loop.example.com"], "max_orders_per_cert = 2")
    ));
    let (cert, key) = env.cert_paths("loop");

    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "{out}");
    let serial1 = cert_serial(&cert);
    let out = env.run(&cfg, &["renew", "--force"]);
    assert_eq!(out.code, 0, "{out}");
    let serial2 = cert_serial(&cert);
    assert_ne!(serial1, serial2, "the forced renewal did not order");

    let out = env.run(&cfg, &["renew", "--force"]);
    assert_eq!(out.code, 1, "the breaker must refuse --force:\n{out}");
    assert!(
        out.stderr.contains(
            "renew --force refused by the circuit breaker: 2 certificates issued for loop in the last 24h (max_orders_per_cert = 2); next order allowed at "
        ),
        "{out}"
    );
    assert_eq!(
        cert_serial(&cert),
        serial2,
        "the breaker let an order through"
    );
    let st = env.status_of(&cfg, "loop");
    assert_eq!(st["hold"], "breaker", "{st}");
    assert_eq!(
        st["state"], "valid",
        "not due, so the state stays valid: {st}"
    );
    assert_eq!(
        st["failures"], 0,
        "the breaker is not on the retry ladder: {st}"
    );
    let reopens = rfc3339(&st["hold_until"], "hold_until");
    assert!(
        reopens > now() + std::time::Duration::from_secs(23 * 3600),
        "{st}"
    );

    // Whatever the files say: with the set gone it is due, and still not ordered.
    fs::remove_file(&cert).unwrap();
    fs::remove_file(&key).unwrap();
    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stderr
            .contains("circuit breaker: 2 certificates issued for loop in the last 24h"),
        "{out}"
    );
    assert!(!cert.exists(), "the breaker let an order through:\n{out}");
    let st = env.status_of(&cfg, "loop");
    assert_eq!(st["state"], "breaker", "{st}");
    let out = env.run(&cfg, &["status"]);
    assert!(out.stdout.contains("breaker until "), "{out}");
}
