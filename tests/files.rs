//! File safety against a real Pebble: a FIFO planted at `cert_path` neither hangs `status`
//! nor `renew` and is never replaced; temp files a SIGKILL left (holding the key) are
//! removed by the next install; a world-readable key's `.prev` gets `key_mode`.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Instant;

use common::*;

fn mkfifo(p: &std::path::Path) {
    let out = std::process::Command::new("mkfifo")
        .arg(p)
        .status()
        .unwrap();
    assert!(out.success(), "mkfifo {}", p.display());
}

/// A FIFO at `cert_path` used to block `status` and `renew` in `read()` forever (and the
/// daemon then ignored SIGTERM). Both now finish, name the FIFO, and the FIFO is still a
/// FIFO afterwards: certkeeper did not write it, so it refuses to replace it.
#[test]
fn fifo_at_cert_path_neither_hangs_nor_is_replaced() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let cfg = env.write_config(&format!(
        "{}{}{}",
        env.defaults_http01(""),
        env.cert_block("fifo", &["fifo.example.com"], ""),
        env.cert_block("fine", &["fine.example.com"], ""),
    ));
    let (cert, key) = env.cert_paths("fifo");
    mkfifo(&cert);

    let t = Instant::now();
    let out = env.run(&cfg, &["status"]);
    let status_time = t.elapsed();
    assert!(out.all().contains("is a FIFO"), "status:\n{out}");
    assert!(
        out.all().contains(&*cert.to_string_lossy()),
        "status:\n{out}"
    );

    let t = Instant::now();
    let out = env.run(&cfg, &["renew"]);
    let renew_time = t.elapsed();
    eprintln!(
        "FIFO at cert_path: status finished in {:.2}s, renew in {:.2}s",
        status_time.as_secs_f64(),
        renew_time.as_secs_f64()
    );
    assert_eq!(
        out.code, 1,
        "renew must report the failed certificate:\n{out}"
    );
    assert!(out.all().contains("is a FIFO"), "renew:\n{out}");
    assert!(
        fs::symlink_metadata(&cert).unwrap().file_type().is_fifo(),
        "the FIFO was replaced"
    );
    assert!(!key.exists(), "a key was installed without its certificate");
    // The other certificate is not held hostage.
    let (fine_cert, fine_key) = env.cert_paths("fine");
    assert_key_matches(&fine_cert, &fine_key);
    let row = env.status_of(&cfg, "fifo");
    assert_eq!(row["state"], "invalid", "{row}");
    let err = row["last_error"].as_str().unwrap_or_default();
    assert!(err.contains("is a FIFO") && err.contains("fifo"), "{row}");
}

/// A SIGKILL between creating and renaming a temp left `.<file>.certkeeper-tmp.<pid>`
/// (0600, holding the private key) and a full disk left `<key>.prev.certkeeper-tmp`; the
/// next install removes them. A world-readable key's `.prev` copy gets `key_mode`.
#[test]
fn stale_temps_are_removed_and_prev_gets_key_mode() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let bundle = env.path("certs/c2.bundle");
    let cfg = env.write_config(&format!(
        "{}{}",
        env.defaults_http01(""),
        env.cert_block(
            "c2",
            &["c2.example.com"],
            &format!("bundle_path = {}", toml_str(&bundle))
        ),
    ));
    let (cert, key) = env.cert_paths("c2");
    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "renew:\n{out}");

    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let dir = cert.parent().unwrap();
    let left = [
        dir.join(format!(".c2.bundle.certkeeper-tmp.{dead}")),
        dir.join(format!(".c2.key.certkeeper-tmp.{dead}.5eed")),
        dir.join("c2.key.prev.certkeeper-tmp"),
    ];
    for p in &left {
        fs::write(p, key_text(&key)).unwrap();
        fs::set_permissions(p, fs::Permissions::from_mode(0o600)).unwrap();
    }
    for p in [&key, &bundle] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o644)).unwrap();
    }
    let old_key = key_text(&key);

    let out = env.run(&cfg, &["renew", "--force"]);
    assert_eq!(out.code, 0, "renew --force:\n{out}");
    assert_key_matches(&cert, &key);
    for p in &left {
        assert!(!p.exists(), "{} left behind", p.display());
    }
    let key_prev = env.path("certs/c2.key.prev");
    assert_eq!(key_text(&key_prev), old_key);
    for p in [&key, &bundle, &key_prev, &env.path("certs/c2.bundle.prev")] {
        assert_eq!(mode(p), 0o600, "{}", p.display());
    }
}
