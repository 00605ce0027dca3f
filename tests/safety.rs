//! Installation safety and hooks against a real Pebble: hook environment and
//! stdin, failing hooks retried without re-ordering, a crash in the middle of
//! an install, garbage on disk, `--force`/`NAME` selection and the lock.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

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
    assert_eq!(out.code, 99, "the fault point did not fire:\n{out}");
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

/// A cert file that is not PEM shows as invalid and is replaced; the garbage
/// is kept as `.prev`.
#[test]
fn garbage_cert_is_invalid_and_reissued() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let cfg = env.write_config(&format!(
        "{}{}",
        env.defaults_http01(""),
        env.cert_block("junk", &["junk.example.com"], "")
    ));
    let (cert, key) = env.cert_paths("junk");
    let garbage = b"this is not a certificate\n\x00\x01\x02".to_vec();
    fs::write(&cert, &garbage).unwrap();
    let key_text = rcgen::KeyPair::generate().unwrap().serialize_pem();
    fs::write(&key, &key_text).unwrap();
    fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    let st = env.status_of(&cfg, "junk");
    assert_eq!(st["state"], "invalid", "{st}");
    assert!(st["not_after"].is_null(), "{st}");
    assert!(st["reason"].as_str().is_some_and(|r| !r.is_empty()), "{st}");

    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "renew over garbage:\n{out}");
    assert_key_matches(&cert, &key);
    assert_eq!(
        read(&env.path("certs/junk.pem.prev")),
        garbage,
        "garbage lost"
    );
    assert_eq!(
        read(&env.path("certs/junk.key.prev")),
        key_text.as_bytes(),
        "old key lost"
    );
    assert_eq!(env.status_of(&cfg, "junk")["state"], "valid");
}

/// `--force` renews what is not due; `renew NAME` touches only that cert.
#[test]
fn force_and_named_selection() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let cfg = env.write_config(&format!(
        "{}{}{}",
        env.defaults_http01(""),
        env.cert_block("alpha", &["alpha.example.com"], ""),
        env.cert_block("beta", &["beta.example.com"], "")
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
            "if [ \"$2\" = set ]; then touch '{}'; sleep 3; fi\nexec '{}' \"$@\"",
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
        out.code != 0 && out.code != 99,
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
