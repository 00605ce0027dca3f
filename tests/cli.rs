//! The command line: config errors with file:line, where the config is read
//! from, `--dry-run`, an unreachable CA and the retry backoff.

mod common;

use std::path::Path;

use common::*;

/// One bad config: its text, the line the error is on and the key it names.
struct BadConfig {
    what: &'static str,
    text: String,
    line: usize,
    key: Option<&'static str>,
}

fn bad_configs(env: &TestEnv) -> Vec<BadConfig> {
    let state = toml_str(env.state_dir());
    let (cert, key) = env.cert_paths("www");
    let (cert, key) = (toml_str(cert), toml_str(key));
    vec![
        BadConfig {
            what: "malformed TOML",
            text: format!(
                "state_dir = {state}\n\n[acme]\ndirectory = \"https://127.0.0.1:1/dir\n\n[[cert]]\nname = \"www\"\n"
            ),
            line: 4,
            key: None,
        },
        BadConfig {
            what: "unknown key",
            text: format!(
                "state_dir = {state}\n\n[acme]\ndirectory = \"https://127.0.0.1:1/dir\"\n\n[[cert]]\nname = \"www\"\ndomains = [\"example.com\"]\ncert_path = {cert}\nkey_path = {key}\ncolour = \"blue\"\n"
            ),
            line: 11,
            key: Some("colour"),
        },
        BadConfig {
            what: "wrong type",
            text: format!(
                "state_dir = {state}\n\n[acme]\ndirectory = \"https://127.0.0.1:1/dir\"\n\n[[cert]]\nname = \"www\"\ndomains = \"example.com\"\ncert_path = {cert}\nkey_path = {key}\n"
            ),
            line: 8,
            key: Some("domains"),
        },
        BadConfig {
            what: "unknown key in [defaults]",
            text: format!(
                "state_dir = {state}\n\n[acme]\ndirectory = \"https://127.0.0.1:1/dir\"\n\n[defaults]\nrenew_before = \"33%\"\nrenew_befor = \"10%\"\n\n[[cert]]\nname = \"www\"\ndomains = [\"example.com\"]\ncert_path = {cert}\nkey_path = {key}\n"
            ),
            line: 8,
            key: Some("renew_befor"),
        },
    ]
}

/// Malformed TOML, an unknown key and a wrong type: `check` and `renew` exit
/// 2 and name the file, the line and the key.
#[test]
fn config_errors_name_file_line_and_key() {
    let env = TestEnv::new();
    for (i, bad) in bad_configs(&env).into_iter().enumerate() {
        let file = format!("bad{i}.toml");
        let cfg = env.write_raw_config(&file, &bad.text);
        let at = format!("{file}:{}", bad.line);

        let out = env.run(&cfg, &["check"]);
        assert_eq!(out.code, 2, "check, {}:\n{out}", bad.what);
        assert!(
            out.all().contains(&at),
            "check, {}: no {at}:\n{out}",
            bad.what
        );
        if let Some(k) = bad.key {
            assert!(
                out.all().contains(k),
                "check, {}: no key {k}:\n{out}",
                bad.what
            );
        }

        let out = env.run(&cfg, &["renew"]);
        assert_eq!(out.code, 2, "renew, {}:\n{out}", bad.what);
        assert!(
            out.stderr.contains(&at),
            "renew, {}: no {at}:\n{out}",
            bad.what
        );
        if let Some(k) = bad.key {
            assert!(
                out.stderr.contains(k),
                "renew, {}: no key {k}:\n{out}",
                bad.what
            );
        }
        assert!(!env.state_dir().exists(), "a bad config created state_dir");
    }
}

/// `--config` wins, then `CERTKEEPER_CONFIG`, then the default path; `check`
/// passes on a good config; usage errors exit 2.
#[test]
fn config_sources_and_usage() {
    let env = TestEnv::new();
    let cfg = env.write_config(&format!(
        "{}{}",
        env.defaults_http01(""),
        env.cert_block("www", &["www.example.com"], "")
    ));

    let out = env.run(&cfg, &["check"]);
    assert_eq!(out.code, 0, "check on a good config:\n{out}");

    let out = env.run_no_config(&["check"], &[("CERTKEEPER_CONFIG", cfg.to_str().unwrap())]);
    assert_eq!(out.code, 0, "check via CERTKEEPER_CONFIG:\n{out}");

    // --config wins over the environment
    let missing = env.path("does-not-exist.toml");
    let out = env.run_env(
        &missing,
        &["check"],
        &[("CERTKEEPER_CONFIG", cfg.to_str().unwrap())],
    );
    assert_eq!(
        out.code, 2,
        "--config must win over CERTKEEPER_CONFIG:\n{out}"
    );
    assert!(out.all().contains("does-not-exist.toml"), "{out}");

    let default = Path::new("/etc/certkeeper/certkeeper.toml");
    if !default.exists() {
        let out = env.run_no_config(&["check"], &[]);
        assert_eq!(out.code, 2, "no config anywhere:\n{out}");
        assert!(
            out.all().contains("/etc/certkeeper/certkeeper.toml"),
            "the error does not name the default path:\n{out}"
        );
    }

    let out = env.run(&cfg, &["frobnicate"]);
    assert_eq!(out.code, 2, "unknown subcommand:\n{out}");
    let out = env.run(&cfg, &["renew", "--no-such-flag"]);
    assert_eq!(out.code, 2, "unknown flag:\n{out}");

    let out = env.run_no_config(&["--help"], &[]);
    assert_eq!(out.code, 0, "{out}");
    for sub in ["renew", "status", "check"] {
        assert!(out.stdout.contains(sub), "--help lacks {sub}:\n{out}");
    }
}

/// `--dry-run` decides and explains, but orders nothing and writes nothing.
#[test]
fn dry_run_writes_nothing() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let cfg = env.write_config(&format!(
        "{}{}{}",
        env.defaults_http01(""),
        env.cert_block("alpha-cert", &["alpha.example.com"], ""),
        env.cert_block("bravo-cert", &["bravo.example.com"], "")
    ));
    let (pcert, pkey) = env.cert_paths("alpha-cert");
    let (acert, akey) = env.cert_paths("bravo-cert");

    for e in env.status_json(&cfg) {
        assert_eq!(e["state"], "missing", "{e}");
        assert!(e["not_after"].is_null(), "{e}");
    }

    // on a fresh machine: nothing at all appears
    let before = snapshot(&env.path(""));
    let out = env.run(&cfg, &["renew", "--dry-run"]);
    assert_eq!(out.code, 0, "dry run:\n{out}");
    let after = snapshot(&env.path(""));
    let created: Vec<_> = after
        .keys()
        .filter(|p| !before.contains_key(*p) && !is_lock_file(p))
        .collect();
    assert!(created.is_empty(), "--dry-run created {created:?}");
    assert!(!pcert.exists() && !pkey.exists());

    // one cert issued, the other still missing
    let out = env.run(&cfg, &["renew", "alpha-cert"]);
    assert_eq!(out.code, 0, "{out}");
    assert_key_matches(&pcert, &pkey);

    let before = snapshot(&env.path(""));
    let out = env.run(&cfg, &["renew", "--dry-run"]);
    assert_eq!(out.code, 0, "dry run:\n{out}");
    let after = snapshot(&env.path(""));
    for (p, content) in &after {
        if is_lock_file(p) {
            continue;
        }
        match before.get(p) {
            None => panic!("--dry-run created {}", p.display()),
            Some(old) if old != content && !p.starts_with(env.state_dir()) => {
                panic!("--dry-run modified {}", p.display())
            }
            Some(old) if old != content => panic!("--dry-run modified state {}", p.display()),
            _ => {}
        }
    }
    assert!(
        !acert.exists() && !akey.exists(),
        "--dry-run issued bravo-cert"
    );

    let all = out.all();
    let line_for = |name: &str| {
        all.lines()
            .find(|l| l.contains(name) && l.contains("due"))
            .unwrap_or_else(|| panic!("no decision line for {name}:\n{out}"))
            .to_owned()
    };
    let present = line_for("alpha-cert");
    assert!(
        present.contains("not due"),
        "alpha-cert is not due: {present}"
    );
    let absent = line_for("bravo-cert");
    assert!(!absent.contains("not due"), "bravo-cert is due: {absent}");
    let absent_lc = absent.to_lowercase();
    assert!(
        ["missing", "not found", "no such", "does not exist"]
            .iter()
            .any(|w| absent_lc.contains(w)),
        "the reason for bravo-cert does not say its files are missing: {absent}"
    );
}

fn is_lock_file(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.contains("lock"))
}

/// An unreachable CA: exit 1, the error names the certificate, status
/// records the error.
#[test]
fn unreachable_ca_names_certificate() {
    let env = TestEnv::new(); // directory points at a closed port
    let cfg = env.write_config(&format!(
        "{}{}",
        env.defaults_http01(""),
        env.cert_block("unreachable-www", &["www.example.com"], "")
    ));
    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stderr.contains("unreachable-www"),
        "the error does not name the certificate:\n{out}"
    );
    assert!(
        !out.stderr.contains('\x1b'),
        "human logs to a pipe carry ANSI escapes:\n{out}"
    );
    let (cert, key) = env.cert_paths("unreachable-www");
    assert!(!cert.exists() && !key.exists());
    let st = env.status_of(&cfg, "unreachable-www");
    assert_eq!(st["state"], "missing", "{st}");
    assert!(
        st["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "status does not show the last error: {st}"
    );
}

/// `--log-format json` writes JSON log lines to stderr.
#[test]
fn json_log_format() {
    let env = TestEnv::new();
    let cfg = env.write_config(&format!(
        "{}{}",
        env.defaults_http01(""),
        env.cert_block("jsonlog", &["www.example.com"], "")
    ));
    let out = env.run(&cfg, &["--log-format", "json", "renew"]);
    assert_eq!(out.code, 1, "{out}");
    let json_lines: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(serde_json::Value::is_object)
        .collect();
    assert!(!json_lines.is_empty(), "no JSON log lines:\n{out}");
    assert!(
        json_lines.iter().any(|v| v.to_string().contains("jsonlog")),
        "no JSON log line names the certificate:\n{out}"
    );
}

/// After a failure the next run backs off without contacting the CA;
/// `--force` overrides the backoff.
#[test]
fn backoff_after_failure() {
    let env = TestEnv::new();
    let ca = DeadCa::start(env.ports.acme);
    let cfg = env.write_config(&format!(
        "{}{}",
        env.defaults_http01(""),
        env.cert_block("backoff-www", &["www.example.com"], "")
    ));

    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 1, "{out}");
    let contacts = ca.count();
    assert!(contacts > 0, "the first run never contacted the CA:\n{out}");

    let out = env.run(&cfg, &["renew"]);
    assert_eq!(
        out.code, 1,
        "a run that backs off still reports failure:\n{out}"
    );
    assert_eq!(
        ca.count(),
        contacts,
        "the second run contacted the CA:\n{out}"
    );
    let lc = out.stderr.to_lowercase();
    assert!(
        lc.contains("backoff-www")
            && [
                "back off",
                "backoff",
                "backing off",
                "next attempt",
                "retry at"
            ]
            .iter()
            .any(|w| lc.replace("backoff-www", "").contains(w)),
        "the second run does not say it is backing off:\n{out}"
    );

    let out = env.run(&cfg, &["renew", "--force"]);
    assert_eq!(out.code, 1, "{out}");
    assert!(
        ca.count() > contacts,
        "--force did not try the CA again:\n{out}"
    );
}
