//! Config safety end to end: managed files aliased through `..` or a symlinked directory,
//! IP literals in `domains`, `strict_modes`, and two `state_dir`s managing the same files
//! (against a real Pebble).

mod common;

use std::fs;

use common::*;

/// Two certificates, the second writing `second_cert` as its cert_path.
fn aliased_config(env: &TestEnv, second_cert: &str) -> std::path::PathBuf {
    let body = format!(
        "{}\n{}{}",
        env.defaults_http01(""),
        env.cert_block("a", &["a.example.com"], ""),
        env.cert_block("b", &["b.example.com"], "").replace(
            &format!("cert_path = {}", toml_str(env.cert_paths("b").0)),
            &format!("cert_path = {}", toml_str(second_cert)),
        ),
    );
    assert!(body.contains(second_cert), "{body}");
    env.write_config(&body)
}

fn assert_alias_refused(env: &TestEnv, cfg: &std::path::Path, written: &str) {
    let (a_cert, _) = env.cert_paths("a");
    for args in [&["check"][..], &["renew"][..]] {
        let out = env.run(cfg, args);
        assert_eq!(out.code, 2, "{args:?}:\n{out}");
        let all = out.all();
        assert!(all.contains("cert[b].cert_path"), "{all}");
        assert!(
            all.contains(&format!("cert[a].cert_path = {}", a_cert.display())),
            "{all}"
        );
        assert!(all.contains(written), "{all}");
        assert!(all.contains("same file"), "{all}");
        assert!(all.contains("certkeeper.toml:"), "{all}");
    }
    assert!(!a_cert.exists(), "nothing may be written");
    assert!(
        !env.state_dir().join("lock").exists(),
        "renew must not start"
    );
}

/// `certs/../certs/a.pem` is `certs/a.pem`: both `check` and `renew` refuse with exit 2.
#[test]
fn dotdot_alias_is_refused_by_check_and_renew() {
    let env = TestEnv::new();
    let written = format!("{}/../certs/a.pem", env.path("certs").display());
    let cfg = aliased_config(&env, &written);
    assert_alias_refused(&env, &cfg, &written);
}

/// A symlink to the certificate directory is the same directory.
#[test]
fn symlinked_directory_alias_is_refused_by_check_and_renew() {
    let env = TestEnv::new();
    env.cert_paths("a");
    std::os::unix::fs::symlink(env.path("certs"), env.path("certs-link")).unwrap();
    let written = format!("{}/a.pem", env.path("certs-link").display());
    let cfg = aliased_config(&env, &written);
    assert_alias_refused(&env, &cfg, &written);
}

/// IP literals would pass as DNS names and fail at the CA; they are refused up front.
#[test]
fn ip_literal_in_domains_is_refused() {
    let env = TestEnv::new();
    for ip in ["127.0.0.1", "::1"] {
        let cfg = env.write_config(&format!(
            "{}\n{}",
            env.defaults_http01(""),
            env.cert_block("a", &["a.example.com", ip], "")
        ));
        let out = env.run(&cfg, &["check"]);
        assert_eq!(out.code, 2, "{out}");
        assert!(
            out.all()
                .contains("IP address identifiers (RFC 8738) are not supported"),
            "{out}"
        );
        assert!(out.all().contains("cert[a].domains"), "{out}");
    }
}

/// As root (these tests run as root) with `strict_modes = true`, a world-writable
/// certificate directory stops `check` and `renew` with exit 2, naming path, mode and key.
#[test]
fn strict_modes_refuses_world_writable_cert_dir() {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: strict_modes only applies when running as root");
        return;
    }
    let env = TestEnv::new();
    let body = format!(
        "{}\n{}",
        env.defaults_http01(""),
        env.cert_block("a", &["a.example.com"], "")
    );
    let cfg = env.write_raw_config(
        "certkeeper.toml",
        &format!("strict_modes = true\n{}\n{body}", env.config_head()),
    );
    let certs = env.path("certs");
    fs::set_permissions(&certs, fs::Permissions::from_mode(0o777)).unwrap();
    for args in [&["check"][..], &["renew"][..]] {
        let out = env.run(&cfg, args);
        assert_eq!(out.code, 2, "{args:?}:\n{out}");
        let all = out.all();
        assert!(
            all.contains(&format!("strict_modes: {} is mode 0777", certs.display())),
            "{all}"
        );
        assert!(all.contains("cert[a].cert_path"), "{all}");
        assert!(all.contains("owned by root"), "{all}");
    }
    assert!(
        !env.state_dir().join("lock").exists(),
        "renew must not start"
    );
}

/// Two configs with different state_dirs and the same certificate paths: the first renews
/// and claims the files; the second is refused (exit 1) naming the first state_dir, and
/// the installed certificate is untouched.
#[test]
fn second_state_dir_for_the_same_files_is_refused() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let body = format!(
        "{}\n{}",
        env.defaults_http01(""),
        env.cert_block("www", &["www.example.com"], "")
    );
    let cfg1 = env.write_config_named("one.toml", &body);
    let state2 = env.path("state2");
    let cfg2 = env.write_raw_config(
        "two.toml",
        &format!("{}\n{body}", env.config_head_in(&state2, &env.acme_extra)),
    );

    let out = env.run(&cfg1, &["renew"]);
    assert_eq!(out.code, 0, "{out}");
    let (cert, key) = env.cert_paths("www");
    let serial = cert_serial(&cert);
    let before = (read(&cert), read(&key));
    let marker = env.path("certs/.www.pem.certkeeper-owner");
    let m: serde_json::Value = serde_json::from_slice(&read(&marker)).unwrap();
    let state1 = fs::canonicalize(env.state_dir()).unwrap();
    assert_eq!(m["state_dir"], state1.to_str().unwrap(), "{m}");

    let out = env.run(&cfg2, &["renew", "--force"]);
    assert_eq!(out.code, 1, "{out}");
    let all = out.all();
    assert!(all.contains(&state1.display().to_string()), "{all}");
    assert!(all.contains("another certkeeper"), "{all}");
    assert!(all.contains(&cert.display().to_string()), "{all}");
    assert_eq!(cert_serial(&cert), serial);
    assert_eq!((read(&cert), read(&key)), before);

    // `check` of the second config reports the conflict without writing anything.
    let out = env.run(&cfg2, &["check"]);
    assert_eq!(out.code, 2, "{out}");
    assert!(out.all().contains(&state1.display().to_string()), "{out}");
    assert!(out.all().contains("cert[www].cert_path"), "{out}");

    // The owner itself still renews.
    let out = env.run(&cfg1, &["renew", "--force"]);
    assert_eq!(out.code, 0, "{out}");
    assert_ne!(cert_serial(&cert), serial);
}
