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

/// `layout = "symlink"` against Pebble: plain files migrate to links behind `.live` even
/// when the process dies right after the first rename (the roll-forward completes it),
/// the old plain set stays reachable as `.prev`, and a reader opening `.live` once per
/// pair sees no mixed key/certificate across 100 real renewals.
#[test]
fn symlink_layout_migrates_rolls_forward_and_swaps_the_pair_atomically() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let body = |layout: &str| {
        format!(
            "{}{}",
            env.defaults_http01(&format!("layout = \"{layout}\"")),
            env.cert_block("sw", &["sw.example.com"], ""),
        )
    };
    let cfg = env.write_config(&body("plain"));
    let (cert, key) = env.cert_paths("sw");
    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "renew:\n{out}");
    let plain_key = key_text(&key);

    let cfg = env.write_config(&body("symlink"));
    let out = env.run_env(
        &cfg,
        &["renew", "--force"],
        &[("CERTKEEPER_FAULT", "install-after-first-rename")],
    );
    assert_eq!(out.code, -1, "the fault point must fire (SIGKILL):\n{out}");
    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "roll-forward:\n{out}");
    assert_key_matches(&cert, &key);
    assert_ne!(key_text(&key), plain_key);
    assert_eq!(
        fs::read_link(&cert).unwrap(),
        std::path::Path::new(".sw.live/fullchain.pem")
    );
    assert_eq!(key_text(&env.path("certs/sw.key.prev")), plain_key);
    let row = env.status_of(&cfg, "sw");
    assert_eq!(row["state"], "valid", "{row}");

    // Real renewals under a reader that opens `.live` once per pair.
    let live = env.path("certs/.sw.live");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (mut reads, mut mismatches) = (0u64, 0u64);
    let renewals = 100;
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            // Distinct (key, cert) pairs seen, with how often: checked with openssl after.
            let mut pairs: std::collections::HashMap<(Vec<u8>, Vec<u8>), u64> =
                std::collections::HashMap::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // /proc/self/fd/N/<file> resolves relative to the directory opened once.
                let Ok(dir) = fs::File::open(&live) else {
                    continue;
                };
                use std::os::fd::AsRawFd;
                let base = format!("/proc/self/fd/{}", dir.as_raw_fd());
                if let (Ok(k), Ok(c)) = (
                    fs::read(format!("{base}/key.pem")),
                    fs::read(format!("{base}/fullchain.pem")),
                ) {
                    *pairs.entry((k, c)).or_default() += 1;
                }
            }
            pairs
        });
        for i in 0..renewals {
            let out = env.run(&cfg, &["renew", "--force"]);
            assert_eq!(out.code, 0, "renewal {i}:\n{out}");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let pairs = reader.join().unwrap();
        let (k, c) = (env.path("pair.key"), env.path("pair.pem"));
        for ((kb, cb), n) in pairs {
            fs::write(&k, kb).unwrap();
            fs::write(&c, cb).unwrap();
            reads += n;
            if !key_matches(&c, &k) {
                mismatches += n;
            }
        }
    });
    eprintln!(
        "symlink layout, {renewals} real renewals: {mismatches} mismatches in {reads} reads via .live"
    );
    assert!(reads > 0);
    assert_eq!(mismatches, 0);
    assert_key_matches(&cert, &key);
    let mut versions: Vec<String> = fs::read_dir(env.path("certs/.certkeeper/sw"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    versions.sort();
    assert_eq!(versions.len(), 2, "current and previous only: {versions:?}");
}
