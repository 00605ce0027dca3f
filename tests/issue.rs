//! Issuance against a real Pebble: HTTP-01 (built-in responder and webroot),
//! DNS-01 through the shipped hook (with a wildcard), short-lived
//! certificates crossing their threshold, 50% nonce rejection and EAB.

mod common;

use std::fs;
use std::process::Command;
use std::thread;
use std::time::Duration;

use common::*;

/// The harness itself: Pebble answers, its roots can be fetched, challtestsrv
/// serves TXT records set through its API, and the static server serves files.
#[test]
fn harness_starts_pebble_and_challtestsrv() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let pebble = env.pebble();

    let out = Command::new("curl")
        .args(["-sf", "--cacert"])
        .arg(&pebble.ca_pem)
        .arg(pebble.directory_url())
        .output()
        .unwrap();
    assert!(out.status.success());
    let dir: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(dir["newOrder"].as_str().unwrap().starts_with("https://"));

    let (root, inter) = pebble.fetch_roots();
    assert_eq!(pem_blocks(&fs::read_to_string(root).unwrap()).len(), 1);
    assert_eq!(pem_blocks(&fs::read_to_string(inter).unwrap()).len(), 1);

    let name = "_acme-challenge.harness.example.com.";
    assert_eq!(txt_answer_count(pebble.ports.dns, name), 0);
    let set = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "curl -sf -X POST -d '{{\"host\":\"{name}\",\"value\":\"abc\"}}' {}/set-txt",
            pebble.challtestsrv_url()
        ))
        .status()
        .unwrap();
    assert!(set.success());
    assert_eq!(txt_answer_count(pebble.ports.dns, name), 1);

    let webroot = env.path("webroot");
    fs::create_dir_all(webroot.join("a")).unwrap();
    fs::write(webroot.join("a/b"), "hello").unwrap();
    let srv = StaticServer::start(&webroot, env.ports.http);
    let got = Command::new("curl")
        .arg("-sf")
        .arg(format!("http://127.0.0.1:{}/a/b", env.ports.http))
        .output()
        .unwrap();
    assert_eq!(got.stdout, b"hello");
    assert_eq!(srv.ok_hits("/a/"), 1);
}

/// HTTP-01 through the built-in responder: issue, verify everything about the
/// installed set, a second pass does nothing, and `status --json` agrees.
#[test]
fn http01_builtin_responder_issues_once() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let cfg = env.write_config(&format!(
        "{}{}",
        env.defaults_http01(""),
        env.cert_block("www", &["www.example.com", "example.com"], "")
    ));
    let (cert, key) = env.cert_paths("www");

    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "first renew:\n{out}");
    assert!(cert.exists() && key.exists(), "files not installed:\n{out}");
    assert_eq!(mode(&key), 0o600, "key mode");
    assert_eq!(mode(&cert), 0o644, "cert mode");
    assert_key_matches(&cert, &key);
    let sans = cert_sans(&cert);
    for d in ["www.example.com", "example.com"] {
        assert!(sans.contains(&d.to_owned()), "SANs {sans:?} miss {d}");
    }
    env.pebble().assert_chain_verifies(&cert);
    assert!(
        !env.path("certs/www.pem.prev").exists(),
        "a first issuance has nothing to keep as .prev"
    );

    let cert_before = read(&cert);
    let key_before = read(&key);
    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "second renew:\n{out}");
    assert_eq!(read(&cert), cert_before, "second renew changed the cert");
    assert_eq!(read(&key), key_before, "second renew changed the key");

    let st = env.status_of(&cfg, "www");
    assert_eq!(st["state"], "valid", "{st}");
    let not_after = rfc3339(&st["not_after"], "not_after");
    assert_eq!(not_after, cert_not_after(&cert), "status not_after");
    let renew_at = rfc3339(&st["renew_at"], "renew_at");
    let not_before = cert_not_before(&cert);
    let lifetime = not_after - not_before;
    // default renew_before = 33%: renew when 33% is left, jitter only earlier
    assert!(
        renew_at <= not_after - lifetime * 0.33 + Duration::from_secs(2),
        "renew_at {renew_at} is later than the 33% threshold (not_after {not_after})"
    );
    assert!(
        renew_at >= not_before + lifetime * 0.5,
        "renew_at {renew_at} is far earlier than the 33% threshold"
    );
    assert!(renew_at > now(), "a fresh cert is not due yet: {st}");
    assert!(st["last_error"].is_null(), "last_error: {st}");
    let domains: Vec<String> = st["domains"]
        .as_array()
        .unwrap_or_else(|| panic!("domains is not an array: {st}"))
        .iter()
        .map(|d| d.as_str().unwrap().to_owned())
        .collect();
    assert!(domains.contains(&"www.example.com".to_owned()), "{st}");
    assert!(domains.contains(&"example.com".to_owned()), "{st}");
    assert_eq!(
        normalize_hex(
            st["serial"]
                .as_str()
                .unwrap_or_else(|| panic!("serial: {st}"))
        ),
        cert_serial(&cert)
    );
    assert!(st["reason"].as_str().is_some_and(|r| !r.is_empty()), "{st}");

    // the human table names the certificate too
    let out = env.run(&cfg, &["status"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("www"), "{out}");
    assert!(out.stdout.contains("www.example.com"), "{out}");
}

/// Short-lived certificates: a pass issues, the next does nothing, and a pass
/// after the threshold renews and keeps the previous set as `.prev`.
#[test]
fn short_lived_cert_renews_after_threshold() {
    let env = TestEnv::with_pebble(PebbleOpts {
        validity_secs: 20,
        ..PebbleOpts::default()
    });
    let cfg = env.write_config(&format!(
        "{}{}",
        env.defaults_http01("renew_before = \"50%\""),
        env.cert_block("short", &["short.example.com"], "")
    ));
    let (cert, key) = env.cert_paths("short");

    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "first renew:\n{out}");
    let cert1 = read(&cert);
    let key1 = read(&key);
    let serial1 = cert_serial(&cert);

    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "second renew:\n{out}");
    assert_eq!(
        read(&cert),
        cert1,
        "second pass renewed a cert that is not due"
    );

    let st = env.status_of(&cfg, "short");
    assert_eq!(st["state"], "valid", "{st}");
    let not_after = rfc3339(&st["not_after"], "not_after");
    let not_before = cert_not_before(&cert);
    let threshold = not_after - (not_after - not_before) / 2;
    let renew_at = rfc3339(&st["renew_at"], "renew_at");
    assert!(
        renew_at <= threshold + Duration::from_secs(1),
        "renew_at {renew_at} after the 50% threshold {threshold}"
    );
    assert!(
        renew_at >= threshold - Duration::from_secs(3),
        "renew_at {renew_at} too far before the 50% threshold {threshold}"
    );

    let wake = renew_at.max(threshold) + Duration::from_millis(700);
    let wait = wake - now();
    if wait.is_positive() {
        thread::sleep(wait.unsigned_abs());
    }
    let st = env.status_of(&cfg, "short");
    assert_eq!(st["state"], "due", "past the threshold: {st}");

    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "third renew:\n{out}");
    assert_ne!(read(&cert), cert1, "third pass did not renew");
    assert_ne!(cert_serial(&cert), serial1);
    assert_key_matches(&cert, &key);
    assert_eq!(read(&env.path("certs/short.pem.prev")), cert1, "cert .prev");
    assert_eq!(read(&env.path("certs/short.key.prev")), key1, "key .prev");
    let st = env.status_of(&cfg, "short");
    assert_eq!(st["state"], "valid", "{st}");
}

/// HTTP-01 through a webroot served by the test's own static server; the
/// challenge files are removed afterwards.
#[test]
fn http01_webroot() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let webroot = env.path("webroot");
    fs::create_dir_all(&webroot).unwrap();
    let srv = StaticServer::start(&webroot, env.ports.http);
    let cfg = env.write_config(&format!(
        "[defaults]\nchallenge = \"http-01\"\nhttp01_webroot = {}\n\n{}",
        toml_str(&webroot),
        env.cert_block("web", &["web.example.com", "static.example.com"], "")
    ));
    let (cert, key) = env.cert_paths("web");

    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "renew:\n{out}");
    assert_key_matches(&cert, &key);
    let sans = cert_sans(&cert);
    assert!(sans.contains(&"web.example.com".to_owned()), "{sans:?}");
    assert!(sans.contains(&"static.example.com".to_owned()), "{sans:?}");
    env.pebble().assert_chain_verifies(&cert);
    assert!(
        srv.ok_hits("/.well-known/acme-challenge/") >= 2,
        "the validator did not fetch both challenges from the webroot: {:?}",
        srv.hits.lock().unwrap()
    );
    let challenge_dir = webroot.join(".well-known/acme-challenge");
    let left: Vec<_> = fs::read_dir(&challenge_dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "challenge files left behind: {left:?}");
}

/// DNS-01 through the shipped hook against challtestsrv, with a wildcard.
#[test]
fn dns01_hook_with_wildcard() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    assert!(
        std::path::Path::new(DNS_HOOK).exists(),
        "{DNS_HOOK} is missing"
    );
    let cfg = env.write_config(&format!(
        "[defaults]\nchallenge = \"dns-01\"\ndns01_hook = [{}, {}]\n\n{}",
        toml_str(DNS_HOOK),
        toml_str(env.pebble().challtestsrv_url()),
        env.cert_block(
            "wild",
            &["wild.example.com", "*.wild.example.com", "dns.example.com"],
            ""
        )
    ));
    let (cert, key) = env.cert_paths("wild");

    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "renew:\n{out}");
    assert_key_matches(&cert, &key);
    let sans = cert_sans(&cert);
    for d in ["wild.example.com", "*.wild.example.com", "dns.example.com"] {
        assert!(sans.contains(&d.to_owned()), "SANs {sans:?} miss {d}");
    }
    env.pebble().assert_chain_verifies(&cert);
    let dns = env.ports.dns;
    assert_eq!(
        txt_answer_count(dns, "_acme-challenge.wild.example.com."),
        0,
        "TXT record not cleared"
    );
    assert_eq!(
        txt_answer_count(dns, "_acme-challenge.dns.example.com."),
        0,
        "TXT record not cleared"
    );
}

/// Pebble rejecting half of all good nonces: issuance still succeeds.
#[test]
fn survives_fifty_percent_nonce_rejection() {
    let env = TestEnv::with_pebble(PebbleOpts {
        nonce_reject: Some(50),
        ..PebbleOpts::default()
    });
    let cfg = env.write_config(&format!(
        "{}{}{}",
        env.defaults_http01(""),
        env.cert_block("n1", &["n1.example.com"], ""),
        env.cert_block("n2", &["n2.example.com", "n2b.example.com"], "")
    ));
    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "renew at 50% nonce rejection:\n{out}");
    for n in ["n1", "n2"] {
        let (cert, key) = env.cert_paths(n);
        assert_key_matches(&cert, &key);
    }
    let (c1, _) = env.cert_paths("n1");
    let before = read(&c1);
    let out = env.run(&cfg, &["renew", "--force"]);
    assert_eq!(out.code, 0, "forced renew at 50% nonce rejection:\n{out}");
    assert_ne!(read(&c1), before, "--force did not renew");
    for n in ["n1", "n2"] {
        let (cert, key) = env.cert_paths(n);
        assert_key_matches(&cert, &key);
    }
}

const EAB_KID: &str = "kid-1";
const EAB_HMAC: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";

/// External Account Binding: without it the CA's problem is reported (exit
/// 1); with it issuance works; the HMAC key never shows up in any output.
#[test]
fn eab_required() {
    let env = TestEnv::with_pebble(PebbleOpts {
        eab_keys: Some(vec![(EAB_KID.into(), EAB_HMAC.into())]),
        ..PebbleOpts::default()
    });
    let body = format!(
        "{}{}",
        env.defaults_http01(""),
        env.cert_block("bound-www", &["eab.example.com"], "")
    );
    let no_eab = env.write_raw_config(
        "no-eab.toml",
        &format!(
            "{}\n{body}",
            env.config_head_in(&env.path("state-no-eab"), "")
        ),
    );
    let out = env.run(&no_eab, &["renew"]);
    assert_eq!(out.code, 1, "renew without EAB:\n{out}");
    assert!(
        out.stderr.contains("externalAccountRequired"),
        "the error does not name the ACME problem:\n{out}"
    );
    assert!(
        out.stderr.contains("bound-www"),
        "the error does not name the certificate:\n{out}"
    );
    let (cert, key) = env.cert_paths("bound-www");
    assert!(!cert.exists() && !key.exists());

    let with_eab = env.write_raw_config(
        "eab.toml",
        &format!(
            "{}\n{body}",
            env.config_head_in(
                &env.state_dir(),
                &format!(
                    "eab_kid = {}\neab_hmac_key = {}\n",
                    toml_str(EAB_KID),
                    toml_str(EAB_HMAC)
                )
            )
        ),
    );
    let mut outputs = vec![];
    let out = env.run(&with_eab, &["renew"]);
    assert_eq!(out.code, 0, "renew with EAB:\n{out}");
    assert_key_matches(&cert, &key);
    outputs.push(out);
    let before = read(&cert);
    let out = env.run(&with_eab, &["-v", "renew", "--force"]);
    assert_eq!(out.code, 0, "verbose forced renew with EAB:\n{out}");
    assert_ne!(read(&cert), before);
    outputs.push(out);
    for args in [
        &["-v", "--log-format", "json", "renew", "--force"][..],
        &["-v", "status"],
        &["-v", "status", "--json"],
        &["-v", "check"],
    ] {
        let out = env.run(&with_eab, args);
        assert_eq!(out.code, 0, "{args:?}:\n{out}");
        outputs.push(out);
    }
    for out in &outputs {
        assert!(
            !out.all().contains(EAB_HMAC),
            "the EAB HMAC key leaked into the output:\n{out}"
        );
    }
}

/// Other key types, and a haproxy-style bundle (key + full chain in one file,
/// not readable by others).
#[test]
fn key_types_and_bundle() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let bundle = env.path("certs/rsa.bundle.pem");
    let cfg = env.write_config(&format!(
        "{}{}{}",
        env.defaults_http01(""),
        env.cert_block("p384", &["p384.example.com"], "key_type = \"ecdsa-p384\""),
        env.cert_block(
            "rsa",
            &["rsa.example.com"],
            &format!(
                "key_type = \"rsa-2048\"\nbundle_path = {}",
                toml_str(&bundle)
            )
        )
    ));
    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "renew:\n{out}");

    let (p384, p384_key) = env.cert_paths("p384");
    assert_key_matches(&p384, &p384_key);
    let text = key_text(&p384_key);
    assert!(
        text.contains("P-384") || text.contains("secp384r1"),
        "not a P-384 key:\n{text}"
    );

    let (rsa, rsa_key) = env.cert_paths("rsa");
    assert_key_matches(&rsa, &rsa_key);
    let text = key_text(&rsa_key);
    assert!(text.contains("(2048 bit"), "not an RSA-2048 key:\n{text}");
    assert_eq!(mode(&rsa_key), 0o600);

    assert_eq!(
        mode(&bundle) & 0o077,
        0,
        "the bundle holds a private key but is readable by others"
    );
    let bundle_blocks = pem_blocks(&fs::read_to_string(&bundle).unwrap());
    let key_blocks = pem_blocks(&fs::read_to_string(&rsa_key).unwrap());
    let chain_blocks = pem_blocks(&fs::read_to_string(&rsa).unwrap());
    for b in key_blocks.iter().chain(&chain_blocks) {
        assert!(bundle_blocks.contains(b), "the bundle lacks a block:\n{b}");
    }
    assert_eq!(
        bundle_blocks.len(),
        key_blocks.len() + chain_blocks.len(),
        "the bundle holds something else besides key + full chain"
    );
}

/// A CA that rejects an order: exit 1, the message names the certificate and
/// the ACME problem type; the other certificate is still issued.
#[test]
fn rejected_order_names_problem_and_others_proceed() {
    let env = TestEnv::with_pebble(PebbleOpts {
        blocklist: vec!["blocked.example.com".into()],
        ..PebbleOpts::default()
    });
    let cfg = env.write_config(&format!(
        "{}{}{}",
        env.defaults_http01(""),
        env.cert_block("refused", &["blocked.example.com"], ""),
        env.cert_block("accepted", &["accepted.example.com"], "")
    ));
    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stderr
            .lines()
            .any(|l| l.contains("refused") && l.contains("rejectedIdentifier")),
        "no error line names both the certificate and the problem type:\n{out}"
    );
    let (cert, key) = env.cert_paths("accepted");
    assert_key_matches(&cert, &key);
    let (cert, key) = env.cert_paths("refused");
    assert!(!cert.exists() && !key.exists());
    let st = env.status_of(&cfg, "refused");
    assert!(
        st["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("rejectedIdentifier")),
        "status does not show the problem: {st}"
    );
    assert_eq!(env.status_of(&cfg, "accepted")["state"], "valid");
}
