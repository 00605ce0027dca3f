//! Installation safety and hooks against a real Pebble: hook environment and
//! stdin, failing hooks retried without re-ordering, a crash in the middle of
//! an install, garbage on disk, `--force`/`NAME` selection and the lock.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;

/// A reload hook sees the documented environment and the same facts as one
/// JSON object on stdin.
#[test]
fn reload_hook_gets_env_and_stdin() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let rec = env.path("rec");
    fs::create_dir_all(&rec).unwrap();
    let hook = env.write_script(
        "record-hook",
        &format!(
            "env | grep '^CERTKEEPER_' > '{r}/env.txt'\ncat > '{r}/stdin.json'\necho ran >> '{r}/count'",
            r = rec.display()
        ),
    );
    let chain = env.path("certs/hooked.chain.pem");
    let cfg = env.write_config(&format!(
        "{}{}",
        env.defaults_http01(""),
        env.cert_block(
            "hooked",
            &["hook.example.com", "alt.hook.example.com"],
            &format!(
                "chain_path = {}\nreload = [[{}]]",
                toml_str(&chain),
                toml_str(&hook)
            )
        )
    ));
    let (cert, key) = env.cert_paths("hooked");

    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "renew:\n{out}");
    assert_key_matches(&cert, &key);
    assert_eq!(lines(&rec.join("count")).len(), 1, "hook ran once");

    // the chain file holds the chain alone: the full chain minus the leaf
    let full = pem_blocks(&fs::read_to_string(&cert).unwrap());
    let chain_blocks = pem_blocks(&fs::read_to_string(&chain).unwrap());
    assert_eq!(chain_blocks, full[1..].to_vec(), "chain_path contents");

    let vars: BTreeMap<String, String> = lines(&rec.join("env.txt"))
        .into_iter()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let var = |k: &str| {
        vars.get(k)
            .unwrap_or_else(|| panic!("hook env lacks {k}: {vars:?}"))
            .clone()
    };
    assert_eq!(var("CERTKEEPER_NAME"), "hooked");
    let mut domains: Vec<String> = var("CERTKEEPER_DOMAINS")
        .split(',')
        .map(str::to_owned)
        .collect();
    domains.sort();
    assert_eq!(domains, ["alt.hook.example.com", "hook.example.com"]);
    assert_eq!(var("CERTKEEPER_CERT_PATH"), cert.to_str().unwrap());
    assert_eq!(var("CERTKEEPER_KEY_PATH"), key.to_str().unwrap());
    assert_eq!(var("CERTKEEPER_CHAIN_PATH"), chain.to_str().unwrap());
    let not_after = var("CERTKEEPER_NOT_AFTER");
    assert_eq!(
        rfc3339(
            &serde_json::Value::String(not_after.clone()),
            "CERTKEEPER_NOT_AFTER"
        ),
        cert_not_after(&cert)
    );
    let serial = cert_serial(&cert);
    assert_eq!(normalize_hex(&var("CERTKEEPER_SERIAL")), serial);

    let stdin_text = fs::read_to_string(rec.join("stdin.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(stdin_text.trim())
        .unwrap_or_else(|e| panic!("hook stdin is not one JSON object ({e}): {stdin_text:?}"));
    assert!(json.is_object(), "hook stdin is not an object: {json}");
    let strings = json_strings(&json);
    for want in [
        "hooked",
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
        chain.to_str().unwrap(),
    ] {
        assert!(
            strings.iter().any(|s| s == want),
            "stdin lacks {want}: {json}"
        );
    }
    for d in ["hook.example.com", "alt.hook.example.com"] {
        assert!(
            strings.iter().any(|s| s.split(',').any(|x| x == d)),
            "stdin lacks domain {d}: {json}"
        );
    }
    assert!(
        strings.iter().any(|s| normalize_hex(s) == serial),
        "stdin lacks the serial {serial}: {json}"
    );
    assert!(
        strings.iter().any(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .is_ok_and(|t| t == cert_not_after(&cert))
        }),
        "stdin lacks not_after: {json}"
    );
}

/// A failing reload hook makes the run exit 1 and is retried on the next run
/// without ordering a new certificate; a hook that succeeded is not re-run.
#[test]
fn failing_hook_is_retried_without_reordering() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let count = env.path("flaky.count");
    let marker = env.path("flaky.marker");
    let flaky = env.write_script(
        "flaky-hook",
        &format!(
            "echo ran >> '{c}'\nif [ -e '{m}' ]; then exit 0; fi\ntouch '{m}'\necho 'flaky hook fails the first time' >&2\nexit 1",
            c = count.display(),
            m = marker.display()
        ),
    );
    let cfg = env.write_config(&format!(
        "{}{}{}",
        env.defaults_http01(""),
        env.cert_block(
            "flaky",
            &["flaky.example.com"],
            &format!("reload = [[{}]]", toml_str(&flaky))
        ),
        env.cert_block("broken", &["broken.example.com"], "reload = [[\"false\"]]")
    ));
    let (fcert, fkey) = env.cert_paths("flaky");
    let (bcert, bkey) = env.cert_paths("broken");

    let out = env.run(&cfg, &["renew"]);
    assert_eq!(
        out.code, 1,
        "a failing hook must make the exit code 1:\n{out}"
    );
    assert!(out.stderr.contains("broken"), "failure not named:\n{out}");
    // both certificates were still issued and installed
    assert_key_matches(&fcert, &fkey);
    assert_key_matches(&bcert, &bkey);
    assert_eq!(lines(&count).len(), 1);
    let fbytes = read(&fcert);
    let bbytes = read(&bcert);
    let st = env.status_of(&cfg, "broken");
    assert!(
        st["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "status does not record the hook failure: {st}"
    );

    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 1, "broken's hook still fails:\n{out}");
    assert_eq!(
        lines(&count).len(),
        2,
        "flaky's hook was not retried:\n{out}"
    );
    assert_eq!(read(&fcert), fbytes, "the hook retry re-ordered flaky");
    assert_eq!(read(&bcert), bbytes, "the hook retry re-ordered broken");
    assert!(!env.path("certs/flaky.pem.prev").exists());
    let st = env.status_of(&cfg, "flaky");
    assert!(st["last_error"].is_null(), "flaky recovered: {st}");

    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 1, "{out}");
    assert_eq!(lines(&count).len(), 2, "a hook that succeeded ran again");
    assert_eq!(read(&fcert), fbytes);
}

/// The process dies right after the first rename of a renewal; the next run
/// completes the install (roll forward), then runs the reload hook once.
#[test]
fn crash_mid_install_rolls_forward() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let count = env.path("reload.count");
    let hook = env.write_script("reload-hook", &format!("echo ran >> '{}'", count.display()));
    let cfg = env.write_config(&format!(
        "{}{}",
        env.defaults_http01(""),
        env.cert_block(
            "crashy",
            &["crashy.example.com"],
            &format!("reload = [[{}]]", toml_str(&hook))
        )
    ));
    let (cert, key) = env.cert_paths("crashy");

    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "first issuance:\n{out}");
    assert_eq!(lines(&count).len(), 1);
    let cert0 = read(&cert);
    let key0 = read(&key);

    let out = env.run_env(
        &cfg,
        &["renew", "--force"],
        &[("CERTKEEPER_FAULT", "install-after-first-rename")],
    );
    assert_eq!(
        out.code, -1,
        "the fault point did not fire (SIGKILL):\n{out}"
    );
    assert_eq!(lines(&count).len(), 1, "reload ran on a half-installed set");
    let cert_mid = read(&cert);
    let key_mid = read(&key);
    let cert_moved = cert_mid != cert0;
    let key_moved = key_mid != key0;
    assert!(
        cert_moved ^ key_moved,
        "exactly one of key/cert should be new after the first rename (cert new: {cert_moved}, key new: {key_moved})"
    );
    assert!(
        !key_matches(&cert, &key),
        "after the first rename the key and cert should not match yet"
    );

    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "roll-forward run:\n{out}");
    assert_key_matches(&cert, &key);
    assert_ne!(read(&cert), cert0, "rolled back instead of forward");
    assert_ne!(read(&key), key0, "rolled back instead of forward");
    if cert_moved {
        assert_eq!(read(&cert), cert_mid, "the staged cert was replaced");
    } else {
        assert_eq!(read(&key), key_mid, "the staged key was replaced");
    }
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&cert), 0o644);
    assert_eq!(
        lines(&count).len(),
        2,
        "reload must run once after completion"
    );
    assert_eq!(
        read(&env.path("certs/crashy.pem.prev")),
        cert0,
        "cert .prev"
    );
    assert_eq!(read(&env.path("certs/crashy.key.prev")), key0, "key .prev");
    env.pebble().assert_chain_verifies(&cert);

    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(lines(&count).len(), 2, "nothing left to do, no reload");
}

/// Bad files on disk: a cert that is not PEM, an expired cert, a cert that
/// is not valid yet and a key that doesn't match. Each shows up in `status`,
/// is replaced by `renew`, and the old files are kept as `.prev`.
#[test]
fn bad_files_on_disk_are_replaced() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let names = ["junk", "expired", "future", "mismatch"];
    let mut body = env.defaults_http01("");
    for n in names {
        body.push_str(&env.cert_block(n, &[&format!("{n}.example.com")], ""));
    }
    let cfg = env.write_config(&body);
    let day = Duration::from_secs(86400);
    let mut old = Vec::new();
    for n in names {
        let domain = format!("{n}.example.com");
        let domain = domain.as_str();
        let (cert_pem, key_pem) = match n {
            "junk" => (
                "this is not a certificate\n\u{1}\u{2}".to_owned(),
                self_signed(&[domain], now() - day, now() + 30 * day).1,
            ),
            "expired" => self_signed(&[domain], now() - 3 * day, now() - day),
            "future" => self_signed(&[domain], now() + day, now() + 30 * day),
            _ => {
                let (cert, _) = self_signed(&[domain], now() - day, now() + 30 * day);
                (
                    cert,
                    self_signed(&[domain], now() - day, now() + 30 * day).1,
                )
            }
        };
        let (cert, key) = env.cert_paths(n);
        fs::write(&cert, &cert_pem).unwrap();
        fs::write(&key, &key_pem).unwrap();
        fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        old.push((n, cert_pem, key_pem));
    }

    let status = env.status_json(&cfg);
    let state = |n: &str| {
        status
            .iter()
            .find(|e| e["name"] == n)
            .unwrap_or_else(|| panic!("no status for {n}"))
            .clone()
    };
    assert_eq!(state("junk")["state"], "invalid", "{}", state("junk"));
    assert!(state("junk")["not_after"].is_null(), "{}", state("junk"));
    assert_eq!(state("expired")["state"], "expired", "{}", state("expired"));
    assert_eq!(
        state("mismatch")["state"],
        "invalid",
        "{}",
        state("mismatch")
    );
    let future = state("future")["state"].clone();
    assert!(
        future == "invalid" || future == "due",
        "a not-yet-valid cert must not count as fine: {}",
        state("future")
    );
    for n in names {
        let e = state(n);
        assert!(e["reason"].as_str().is_some_and(|r| !r.is_empty()), "{e}");
    }

    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "renew over bad files:\n{out}");
    for (n, cert_pem, key_pem) in &old {
        let (cert, key) = env.cert_paths(n);
        assert_key_matches(&cert, &key);
        assert_eq!(cert_sans(&cert), [format!("{n}.example.com")]);
        env.pebble().assert_chain_verifies(&cert);
        assert_eq!(
            read(&env.path(&format!("certs/{n}.pem.prev"))),
            cert_pem.as_bytes(),
            "{n}: old cert lost"
        );
        assert_eq!(
            read(&env.path(&format!("certs/{n}.key.prev"))),
            key_pem.as_bytes(),
            "{n}: old key lost"
        );
        assert_eq!(env.status_of(&cfg, n)["state"], "valid");
    }
}

/// `--force` renews what is not due; `renew NAME` touches only that cert.
#[test]
fn force_and_named_selection() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let cfg = env.write_config(&format!(
        "{}{}{}",
        env.defaults_http01(""),
        env.cert_block("alpha", &["alpha.example.com"], ""),
        env.cert_block("beta", &["beta.example.com"], "renew_before = \"10m\"")
    ));
    let (a, ak) = env.cert_paths("alpha");
    let (b, bk) = env.cert_paths("beta");

    let out = env.run(&cfg, &["renew", "alpha"]);
    assert_eq!(out.code, 0, "{out}");
    assert_key_matches(&a, &ak);
    assert!(!b.exists() && !bk.exists(), "renew alpha touched beta");
    let a1 = read(&a);

    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "{out}");
    assert_key_matches(&b, &bk);
    assert_eq!(read(&a), a1, "alpha was not due");
    let b1 = read(&b);

    // a per-certificate duration threshold: renew 10 minutes before expiry
    let st = env.status_of(&cfg, "beta");
    let not_after = rfc3339(&st["not_after"], "not_after");
    let renew_at = rfc3339(&st["renew_at"], "renew_at");
    let threshold = not_after - Duration::from_secs(600);
    assert!(
        renew_at <= threshold + Duration::from_secs(1)
            && renew_at >= threshold - Duration::from_secs(360),
        "renew_before = 10m but renew_at = {renew_at}, not_after = {not_after}"
    );

    let out = env.run(&cfg, &["renew", "--force", "beta"]);
    assert_eq!(out.code, 0, "{out}");
    assert_ne!(read(&b), b1, "--force beta did not renew beta");
    assert_key_matches(&b, &bk);
    assert_eq!(read(&a), a1, "--force beta touched alpha");

    let out = env.run(&cfg, &["renew", "no-such-cert"]);
    assert_eq!(out.code, 2, "an unknown NAME is a usage error:\n{out}");
    assert!(out.stderr.contains("no-such-cert"), "{out}");
}

/// A second instance on the same state_dir fails and names the holder.
#[test]
fn second_instance_names_lock_holder() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    assert!(Path::new(DNS_HOOK).exists(), "{DNS_HOOK} is missing");
    let marker = env.path("hook-started");
    let slow = env.write_script(
        "slow-dns-hook",
        &format!(
            "if [ \"$2\" = set ]; then touch '{}'; sleep 5; fi\nexec '{}' \"$@\"",
            marker.display(),
            DNS_HOOK
        ),
    );
    let cfg = env.write_config(&format!(
        "[defaults]\nchallenge = \"dns-01\"\ndns01_hook = [{}, {}]\n\n{}",
        toml_str(&slow),
        toml_str(env.pebble().challtestsrv_url()),
        env.cert_block("locked", &["locked.example.com"], "")
    ));

    let mut first = env.spawn("first-renew", &cfg, &["renew"]);
    let holder = first.id();
    assert!(
        wait_for(Duration::from_secs(30), || marker.exists()
            || !first.is_running())
            && marker.exists(),
        "the first instance never reached its DNS hook:\n{}",
        first.stderr()
    );
    let out = env.run(&cfg, &["renew"]);
    assert!(
        out.code != 0 && out.code != -1,
        "second instance ran:\n{out}"
    );
    assert!(
        out.stderr.to_lowercase().contains("lock"),
        "the error does not mention the lock:\n{out}"
    );
    assert!(
        out.stderr.contains(&holder.to_string()),
        "the error does not name the holder's pid {holder}:\n{out}"
    );
    let status = first.wait_timeout(Duration::from_secs(60));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "the first instance failed:\n{}",
        first.stderr()
    );
    let (cert, key) = env.cert_paths("locked");
    assert_key_matches(&cert, &key);
}

/// A reload hook that outlives `hook_timeout` is killed together with its
/// process group, and the run fails.
#[test]
fn hook_timeout_kills_process_group() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let pidfile = env.path("grandchild.pid");
    let hook = env.write_script(
        "hanging-hook",
        &format!("sleep 60 &\necho $! > '{}'\nsleep 60", pidfile.display()),
    );
    let cfg = env.write_config(&format!(
        "{}{}",
        env.defaults_http01("hook_timeout = \"1s\""),
        env.cert_block(
            "slowhook",
            &["slowhook.example.com"],
            &format!("reload = [[{}]]", toml_str(&hook))
        )
    ));
    let start = std::time::Instant::now();
    let out = env.run(&cfg, &["renew"]);
    let took = start.elapsed();
    assert_eq!(out.code, 1, "a timed-out hook is a failure:\n{out}");
    assert!(
        took < Duration::from_secs(30),
        "took {took:?}: the timeout did not fire"
    );
    assert!(
        out.stderr.to_lowercase().contains("time"),
        "the error does not say the hook timed out:\n{out}"
    );
    let (cert, key) = env.cert_paths("slowhook");
    assert_key_matches(&cert, &key);
    let pid: u32 = fs::read_to_string(&pidfile)
        .expect("the hook did not start")
        .trim()
        .parse()
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(3), || !pid_alive(pid)),
        "the hook's background child {pid} survived the timeout"
    );
}

/// Validation fails (a DNS hook that publishes the wrong value, a webroot
/// nobody serves): the run fails and the challenges are still cleaned up.
#[test]
fn challenges_cleaned_up_on_failure() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    assert!(Path::new(DNS_HOOK).exists(), "{DNS_HOOK} is missing");
    let calls = env.path("dns-calls");
    let lying = env.write_script(
        "lying-dns-hook",
        &format!(
            "echo \"$2 $3\" >> '{calls}'\nif [ \"$2\" = set ]; then exec '{hook}' \"$1\" set \"$3\" wrong-value; fi\nexec '{hook}' \"$@\"",
            calls = calls.display(),
            hook = DNS_HOOK
        ),
    );
    let webroot = env.path("webroot");
    fs::create_dir_all(&webroot).unwrap();
    let cfg = env.write_config(&format!(
        "{}{}{}",
        env.defaults_http01(""),
        env.cert_block(
            "dnsfail",
            &["dnsfail.example.com"],
            &format!(
                "challenge = \"dns-01\"\ndns01_hook = [{}, {}]",
                toml_str(&lying),
                toml_str(env.pebble().challtestsrv_url())
            )
        ),
        env.cert_block(
            "webfail",
            &["webfail.example.com"],
            &format!("http01_webroot = {}", toml_str(&webroot))
        )
    ));
    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("dnsfail"), "{out}");
    assert!(out.stderr.contains("webfail"), "{out}");

    let record = "_acme-challenge.dnsfail.example.com.";
    let log = lines(&calls);
    assert!(
        log.iter().any(|l| l == &format!("set {record}")),
        "the DNS hook was never asked to set the record: {log:?}"
    );
    assert!(
        log.iter().any(|l| l == &format!("clear {record}")),
        "the DNS record was not cleared after the failure: {log:?}"
    );
    assert_eq!(txt_answer_count(env.ports.dns, record), 0);

    let challenge_dir = webroot.join(".well-known/acme-challenge");
    let left: Vec<_> = fs::read_dir(&challenge_dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "challenge files left behind: {left:?}");
    for name in ["dnsfail", "webfail"] {
        let (cert, key) = env.cert_paths(name);
        assert!(!cert.exists() && !key.exists(), "{name} installed anyway");
    }
}
