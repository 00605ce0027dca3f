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
    // The in-run retries' 2 s + 4 s are not what this test is about.
    let out = env.run_env(&cfg, &["renew"], &[("CERTKEEPER_FAULT_TIME_SCALE", "20")]);
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
    let out = env.run_env(
        &cfg,
        &["--log-format", "json", "renew"],
        &[("CERTKEEPER_FAULT_TIME_SCALE", "20")],
    );
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

/// One entry of [`listing`]: file type, size, mtime (ns since the epoch) and mode.
type Entry = (&'static str, u64, i128, u32);

/// Every path under `root` (and `root` itself), with what `lstat` says of it: nothing is
/// skipped, so a created, removed, rewritten (even with the same bytes) or re-moded
/// file or directory, lock files included, changes the listing.
fn listing(root: &Path) -> std::collections::BTreeMap<std::path::PathBuf, Entry> {
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(p) = stack.pop() {
        let md =
            std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
        let kind = if md.is_dir() {
            "dir"
        } else if md.is_symlink() {
            "symlink"
        } else if md.is_file() {
            "file"
        } else {
            "other"
        };
        let mtime = i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec());
        out.insert(p.clone(), (kind, md.len(), mtime, md.mode()));
        if md.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out
}

/// The paths whose listing entries differ between `before` and `after`.
fn listing_diff(
    before: &std::collections::BTreeMap<std::path::PathBuf, Entry>,
    after: &std::collections::BTreeMap<std::path::PathBuf, Entry>,
) -> Vec<String> {
    let mut keys: Vec<_> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| format!("{}: {:?} -> {:?}", k.display(), before.get(k), after.get(k)))
        .collect()
}

/// `renew --dry-run` with a `state_dir` that does not exist: it still does not exist
/// afterwards (nor its missing parent), and nothing else changed anywhere in the
/// test's tree. No CA is needed: a dry run only plans.
#[test]
fn dry_run_does_not_create_a_missing_state_dir() {
    let env = TestEnv::new();
    let parent = env.path("absent");
    let state_dir = parent.join("state");
    let cfg = env.write_raw_config(
        "certkeeper.toml",
        &format!(
            "{}\n{}{}",
            env.config_head_in(&state_dir, ""),
            env.defaults_http01(""),
            env.cert_block("dry", &["dry.example.com"], "")
        ),
    );
    let before = listing(env.root());
    let out = env.run(&cfg, &["renew", "--dry-run"]);
    assert_eq!(out.code, 0, "dry run:\n{out}");
    assert!(
        out.all().contains("dry: due"),
        "no decision for the certificate:\n{out}"
    );
    assert!(
        !parent.exists(),
        "--dry-run created {} (state_dir {}):\n{out}",
        parent.display(),
        state_dir.display()
    );
    let diff = listing_diff(&before, &listing(env.root()));
    assert!(diff.is_empty(), "--dry-run changed:\n{}", diff.join("\n"));
}

/// `renew --dry-run` with a real, populated `state_dir`: the recursive listing of the
/// work tree (config, certificates, state) (names, sizes, mtimes, modes; the lock file included) is identical before
/// and after. And while another process holds the state lock (an flock this test takes
/// on the very file `renew` locks, which a real `renew` then proves by refusing to run),
/// the dry run still finishes promptly with exit 0 and changes nothing either.
#[test]
fn dry_run_leaves_an_existing_state_dir_untouched_even_while_it_is_locked() {
    use std::os::fd::AsRawFd;
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let cfg = env.write_config(&format!(
        "{}{}{}",
        env.defaults_http01(""),
        env.cert_block("have", &["have.example.com"], ""),
        env.cert_block("want", &["want.example.com"], "")
    ));
    let out = env.run(&cfg, &["renew", "have"]);
    assert_eq!(out.code, 0, "{out}");
    let lock_path = env.state_dir().join("lock");
    assert!(
        lock_path.is_file(),
        "renew left no {}: the lock file this test takes is not the real one",
        lock_path.display()
    );

    let before = listing(&env.path(""));
    let out = env.run(&cfg, &["renew", "--dry-run"]);
    assert_eq!(out.code, 0, "dry run:\n{out}");
    assert!(out.all().contains("have: not due"), "{out}");
    assert!(out.all().contains("want: due"), "{out}");
    let diff = listing_diff(&before, &listing(&env.path("")));
    assert!(diff.is_empty(), "--dry-run changed:\n{}", diff.join("\n"));

    // Another process holds the state lock.
    let held = std::fs::File::open(&lock_path).unwrap();
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0, "cannot flock {}", lock_path.display());
    let out = env.run(&cfg, &["renew", "want"]);
    assert_ne!(
        out.code, 0,
        "renew ran although the state lock is held:\n{out}"
    );
    assert!(
        out.all().contains("another certkeeper is running"),
        "renew does not name the held lock:\n{out}"
    );
    let before = listing(&env.path(""));
    let mut dry = env.spawn("dry-run-locked", &cfg, &["renew", "--dry-run"]);
    let status = dry.wait_timeout(std::time::Duration::from_secs(20));
    let Some(status) = status else {
        dry.dump();
        panic!("--dry-run did not finish within 20 s while the state lock was held");
    };
    assert!(
        status.success(),
        "--dry-run failed while the state lock was held ({status}):\n{}",
        dry.stderr()
    );
    assert!(dry.stdout().contains("want: due"), "{}", dry.stdout());
    let diff = listing_diff(&before, &listing(&env.path("")));
    assert!(diff.is_empty(), "--dry-run changed:\n{}", diff.join("\n"));
    drop(held);
}
