//! Regression tests for the renewal pass's hardening defects, against a real
//! Pebble: one certificate's broken roll-forward stays its own, a full
//! `state_dir` or certificate directory stops orders instead of repeating them,
//! a panicking certificate task is a failure (in `renew` and in the daemon), a
//! set that keeps being destroyed after each install is reported rather than
//! re-ordered forever, a real file change during a daemon pass is not taken for
//! the echo of our own install, and two `renew`s plus a daemon on one
//! `state_dir` make exactly one order per certificate.
//!
//! Disks are filled for real: a small tmpfs that the test mounts (the tests run
//! as root, as CI does) and `RLIMIT_FSIZE` through `ulimit -f`. Faults are
//! injected with the debug build's `CERTKEEPER_FAULT` (see `src/fault.rs`).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::daemon::*;
use common::*;

/// A tmpfs of `size` mounted on `dir` for the life of the value.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(
            st.success(),
            "mounting a tmpfs on {} failed ({st}); these tests need root, as CI has",
            dir.display()
        );
        Self(dir.to_path_buf())
    }

    /// Fills the filesystem until a write fails with ENOSPC.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let p = self.0.join("filler");
        let mut f = fs::File::create(&p).unwrap();
        let chunk = vec![0u8; 4096];
        loop {
            if f.write_all(&chunk).and_then(|_| f.sync_all()).is_err() {
                break;
            }
        }
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn two_certs(env: &TestEnv, extra: &str) -> PathBuf {
    env.write_config(&format!(
        "{}{}{}",
        env.defaults_http01(extra),
        env.cert_block("f", &["f.example.com"], ""),
        env.cert_block("g", &["g.example.com"], ""),
    ))
}

/// Names and sizes of the files under `root`, with a digest of their contents, so a
/// failed comparison prints something readable.
fn files_digest(root: &Path) -> std::collections::BTreeMap<PathBuf, (usize, u64)> {
    use std::hash::{Hash, Hasher};
    snapshot(root)
        .into_iter()
        .map(|(p, data)| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            data.hash(&mut h);
            (p, (data.len(), h.finish()))
        })
        .collect()
}

fn temp_files(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("certkeeper-tmp"))
        .collect()
}

/// Defect 5: `f`'s interrupted install cannot be completed (its cert path
/// became a directory); `g` is still evaluated on its own, and `f`'s error is
/// reported for `f` alone.
#[test]
fn one_certs_broken_roll_forward_does_not_block_the_others() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let cfg = two_certs(&env, "");
    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "first issuance:\n{out}");
    let (fcert, _) = env.cert_paths("f");
    let (gcert, gkey) = env.cert_paths("g");
    let g_serial = cert_serial(&gcert);

    // Die after f's new set is installed but before it is recorded: the staged
    // set stays for the next run to roll forward.
    let out = env.run_env(
        &cfg,
        &["renew", "--force", "f"],
        &[("CERTKEEPER_FAULT", "installed-before-record")],
    );
    assert_eq!(out.code, -1, "the fault point did not fire:\n{out}");
    assert!(env.state_dir().join("staging/f/manifest.json").exists());
    fs::remove_file(&fcert).unwrap();
    fs::create_dir(&fcert).unwrap();

    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 1, "f's failure must fail the run:\n{out}");
    let f = env.status_of(&cfg, "f");
    let g = env.status_of(&cfg, "g");
    let ferr = f["last_error"].as_str().unwrap_or_default();
    assert!(
        ferr.contains("interrupted install") && ferr.contains("f.pem"),
        "f's error should name the roll-forward and the path: {f}"
    );
    assert_eq!(g["last_outcome"], "not-due", "g was not evaluated: {g}");
    assert!(
        g["last_error"].is_null(),
        "g carries someone else's error: {g}"
    );
    assert_eq!(cert_serial(&gcert), g_serial);
    assert_key_matches(&gcert, &gkey);

    // Once the directory is out of the way, f's staged set is installed without
    // a new order.
    fs::remove_dir(&fcert).unwrap();
    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "roll-forward after the fix:\n{out}");
    assert!(
        !out.all().contains("renewing"),
        "a new order was made:\n{out}"
    );
    assert_key_matches(&fcert, &env.cert_paths("f").1);
}

/// Defect 6 and the disk-full scenario for `state_dir`: with the state on a
/// full tmpfs, four timer runs make no order at all (before the fix each run
/// ordered and failed to record it), the old files stay, and once there is
/// space again the next run renews.
#[test]
fn full_state_dir_refuses_to_order_and_recovers() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let tmpfs = Tmpfs::mount(&env.state_dir(), "256k");
    let cfg = two_certs(&env, "");
    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "first issuance:\n{out}");
    let (fcert, fkey) = env.cert_paths("f");
    // A garbage certificate makes f due on every run.
    fs::write(&fcert, b"garbage\n").unwrap();
    let fkey0 = read(&fkey);
    let filler = tmpfs.fill();

    for run in 1..=4 {
        let out = env.run(&cfg, &["renew"]);
        assert_eq!(out.code, 1, "run {run} with a full state_dir:\n{out}");
        let all = out.all();
        assert!(
            all.contains("not ordering: the outcome could not be recorded"),
            "run {run}: no clear refusal:\n{out}"
        );
        assert!(
            !all.contains("installed new certificate") && !all.contains("renewal failed"),
            "run {run} ordered anyway:\n{out}"
        );
        assert_eq!(read(&fcert), b"garbage\n", "run {run} touched the files");
        assert_eq!(read(&fkey), fkey0);
    }
    fs::remove_file(filler).unwrap();
    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "renew once space is back:\n{out}");
    assert_key_matches(&fcert, &fkey);
    drop(tmpfs);
}

/// The disk-full scenario for the certificate directory, on a tmpfs and with
/// `RLIMIT_FSIZE`: a clear error naming the file, the old set intact, no temp
/// file left, the failure recorded, and success once space is back.
#[test]
fn full_cert_dir_keeps_the_old_set_and_recovers() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let certs = env.path("certs");
    // Room for the set, its `.prev` copies, the owner markers and one install's temps
    // (4 KiB pages each), so that only the filler can make it full.
    let tmpfs = Tmpfs::mount(&certs, "256k");
    let cfg = env.write_config(&format!(
        "{}{}",
        env.defaults_http01(""),
        env.cert_block(
            "f",
            &["f.example.com"],
            &format!(
                "chain_path = {}\nbundle_path = {}",
                toml_str(certs.join("f.chain")),
                toml_str(certs.join("f.bundle"))
            )
        ),
    ));
    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "first issuance:\n{out}");
    let (fcert, fkey) = env.cert_paths("f");
    let before = files_digest(&certs);
    let fcert0 = read(&fcert);
    let filler = tmpfs.fill();

    let out = env.run(&cfg, &["renew", "--force"]);
    assert_eq!(out.code, 1, "renew into a full directory:\n{out}");
    assert!(
        out.all().contains("No space left on device"),
        "the cause is not named:\n{out}"
    );
    let mut after = files_digest(&certs);
    after.remove(&filler);
    assert_eq!(after, before, "the installed set changed");
    assert!(temp_files(&certs).is_empty(), "{:?}", temp_files(&certs));
    let f = env.status_of(&cfg, "f");
    assert!(
        f["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("No space left"),
        "{f}"
    );

    // RLIMIT_FSIZE: every write beyond 2 KiB fails with EFBIG (SIGXFSZ ignored).
    fs::remove_file(&filler).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"trap '' XFSZ; ulimit -f 4; exec "$0" -c "$1" renew --force"#)
        .arg(BIN)
        .arg(&cfg)
        .env_remove("CERTKEEPER_FAULT");
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    assert_eq!(out.code, 1, "renew under RLIMIT_FSIZE:\n{out}");
    assert!(
        out.all().contains("File too large"),
        "the cause is not named:\n{out}"
    );
    assert_eq!(files_digest(&certs), before, "the installed set changed");
    assert!(temp_files(&certs).is_empty(), "{:?}", temp_files(&certs));

    let out = env.run(&cfg, &["renew", "--force"]);
    assert_eq!(out.code, 0, "renew once space is back:\n{out}");
    assert_key_matches(&fcert, &fkey);
    assert_ne!(read(&fcert), fcert0);
    drop(tmpfs);
}

/// Defect 11: a certificate task that panics makes `renew` exit 1 (it exited 0)
/// and is recorded on the retry ladder; the other certificate is unaffected.
#[test]
fn panicking_certificate_task_fails_the_run() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let cfg = two_certs(&env, "");
    let out = env.run_env(
        &cfg,
        &["renew"],
        &[("CERTKEEPER_FAULT", "panic:before-order@1")],
    );
    assert_eq!(out.code, 1, "a panicked task must fail the run:\n{out}");
    assert!(out.all().contains("panicked"), "{out}");
    let rows = env.status_json(&cfg);
    let failed: Vec<_> = rows
        .iter()
        .filter(|r| {
            r["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("internal error"))
        })
        .collect();
    assert_eq!(failed.len(), 1, "{rows:?}");
    assert!(
        !failed[0]["next_attempt"].is_null(),
        "not on the ladder: {rows:?}"
    );
    let ok: Vec<_> = rows.iter().filter(|r| r["state"] == "valid").collect();
    assert_eq!(
        ok.len(),
        1,
        "the other certificate should be issued: {rows:?}"
    );
}

/// Defect 4 (second half): a set that is destroyed again right after each
/// install is re-ordered once, then reported as a conflict instead of being
/// re-ordered on every run.
#[test]
fn set_destroyed_after_every_install_is_reported_not_reordered() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let cfg = two_certs(&env, "");
    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "first issuance:\n{out}");
    let (fcert, _) = env.cert_paths("f");
    let clobber = || fs::write(&fcert, b"another writer's file\n").unwrap();

    clobber();
    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "the first loss is repaired:\n{out}");
    assert!(out.all().contains("installed new certificate"), "{out}");

    clobber();
    for run in 1..=3 {
        let out = env.run(&cfg, &["renew"]);
        assert_eq!(
            out.code, 1,
            "run {run}: the conflict must be reported:\n{out}"
        );
        assert!(
            out.all().contains("destroyed soon after its install"),
            "run {run}:\n{out}"
        );
        assert!(
            !out.all().contains("installed new certificate"),
            "run {run} re-ordered:\n{out}"
        );
    }
    let f = env.status_of(&cfg, "f");
    assert_eq!(f["last_outcome"], "conflict", "{f}");
    // The operator fixes the conflict and forces one renewal.
    let out = env.run(&cfg, &["renew", "--force", "f"]);
    assert_eq!(out.code, 0, "{out}");
    assert_key_matches(&fcert, &env.cert_paths("f").1);
}

/// Defect 11: in the daemon, a certificate whose task panicked is scheduled
/// again (on the retry ladder, shortened here) instead of never again.
#[test]
fn daemon_reschedules_a_panicked_certificate() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let cfg = env.write_config(&format!(
        "{}{}",
        env.defaults_http01(""),
        env.cert_block("p", &["p.example.com"], "")
    ));
    let mut d = Daemon::start_env(
        &env,
        "daemon",
        &cfg,
        &[
            ("CERTKEEPER_FAULT", "panic:before-order@1"),
            ("CERTKEEPER_FAULT_TIME_SCALE", "60"),
        ],
    );
    assert!(d.wait_log(Duration::from_secs(20), "panicked"), "no panic");
    let (cert, key) = env.cert_paths("p");
    assert!(
        wait_new_set(&cert, &key, None, Duration::from_secs(20)).is_some(),
        "the panicked certificate was never retried"
    );
    assert!(d.is_running());
}

/// Defect 11: a real change to a certificate file that lands while the daemon's
/// pass is still running (here: during a slow reload hook, right after the
/// install) is noticed, not mistaken for the echo of our own install.
#[test]
fn daemon_notices_a_real_change_during_its_own_pass() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let started = env.path("hook.started");
    let hook = env.write_script(
        "slow-hook",
        &format!("touch '{}'; sleep 2", started.display()),
    );
    let cfg = env.write_config(&format!(
        "{}{}",
        env.defaults_http01(""),
        env.cert_block(
            "w",
            &["w.example.com"],
            &format!("reload = [[{}]]", toml_str(&hook))
        )
    ));
    let _d = Daemon::start(&env, "daemon", &cfg);
    assert!(
        wait_for(Duration::from_secs(30), || started.exists()),
        "the hook never started"
    );
    let (cert, key) = env.cert_paths("w");
    let first = cert_serial(&cert);
    // While the hook (and so the pass) is still running, someone breaks the file.
    replace_atomically(&cert, b"garbage written during the pass\n");
    let fixed = wait_new_set(&cert, &key, Some(&first), Duration::from_secs(20));
    assert!(
        fixed.is_some(),
        "the change during the pass was taken for our own install; the file is still {:?}",
        String::from_utf8_lossy(&read(&cert))
    );
}

/// Concurrency scenario: two `renew` processes and a daemon started together
/// on one `state_dir` make exactly one order per due certificate.
#[test]
fn two_renews_and_a_daemon_order_each_certificate_once() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let names = ["c1", "c2", "c3"];
    let mut body = env.defaults_http01("");
    for n in names {
        body.push_str(&env.cert_block(n, &[&format!("{n}.example.com")], ""));
    }
    let cfg = env.write_config(&body);
    let mut a = env.spawn("renew-a", &cfg, &["-v", "renew"]);
    let mut b = env.spawn("renew-b", &cfg, &["-v", "renew"]);
    let mut d = env.spawn("daemon", &cfg, &["-v", "run"]);
    for p in [&mut a, &mut b] {
        assert!(
            p.wait_timeout(Duration::from_secs(60)).is_some(),
            "renew hung"
        );
    }
    for n in names {
        let (cert, key) = env.cert_paths(n);
        assert!(
            wait_new_set(&cert, &key, None, Duration::from_secs(30)).is_some(),
            "{n} was never issued"
        );
    }
    // Give a daemon that holds the lock time for any (wrong) second order.
    std::thread::sleep(Duration::from_secs(2));
    let logs = [a.stderr(), b.stderr(), d.stderr()];
    let installs: usize = logs
        .iter()
        .map(|l| count_lines(l, "installed new certificate"))
        .sum();
    assert_eq!(installs, names.len(), "orders per certificate:\n{logs:#?}");
    let locked = logs
        .iter()
        .filter(|l| l.contains("another certkeeper is running"))
        .count();
    assert_eq!(
        locked, 2,
        "exactly two of the three must have been refused:\n{logs:#?}"
    );
    let _ = d.is_running();
}

/// File-safety scenario: while 15 renewals run, a reader lists the certificate
/// directory in a tight loop; no file that holds a private key (the key, the
/// bundle, their `.prev` copies, temp files) is ever seen readable by group or
/// others, and neither is the ACME account key in the state directory.
#[test]
fn private_keys_are_never_readable_by_others_even_for_an_instant() {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let env = TestEnv::with_pebble(PebbleOpts {
        nonce_reject: Some(0),
        ..PebbleOpts::default()
    });
    let certs = env.path("certs");
    let cfg = env.write_config(&format!(
        "{}{}",
        env.defaults_http01(""),
        env.cert_block(
            "k",
            &["k.example.com"],
            &format!("bundle_path = {}", toml_str(certs.join("k.bundle")))
        ),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let looks = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let dirs = [certs.clone(), env.state_dir().join("accounts")];
    let reader = {
        let (stop, seen, looks) = (stop.clone(), seen.clone(), looks.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for d in &dirs {
                    let Ok(rd) = fs::read_dir(d) else { continue };
                    for e in rd.flatten() {
                        let Ok(md) = e.metadata() else { continue };
                        looks.fetch_add(1, Ordering::Relaxed);
                        let mode = md.permissions().mode() & 0o777;
                        if mode & 0o077 == 0 || !md.is_file() {
                            continue;
                        }
                        let holds_key = fs::read(e.path())
                            .map(|d| String::from_utf8_lossy(&d).contains("PRIVATE KEY"))
                            .unwrap_or(false)
                            || {
                                // The key file and its copies, even before anything is
                                // written to them (owner markers hold no key).
                                let n = e.file_name().to_string_lossy().into_owned();
                                n.contains("key") && !n.contains("certkeeper-owner")
                            };
                        if holds_key {
                            seen.lock()
                                .unwrap()
                                .push(format!("{} mode {mode:o}", e.path().display()));
                        }
                    }
                }
            }
        })
    };
    let mut runs = 0;
    for _ in 0..15 {
        let out = env.run(&cfg, &["renew", "--force"]);
        assert_eq!(out.code, 0, "{out}");
        runs += 1;
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let seen = seen.lock().unwrap();
    eprintln!(
        "FIGURE key modes: {runs} renewals, {} file looks, {} key files readable by others",
        looks.load(Ordering::Relaxed),
        seen.len()
    );
    assert!(seen.is_empty(), "{seen:#?}");
}

/// File-safety scenario: symlinks planted where certkeeper writes (`.prev`
/// files, the webroot's token directory) never redirect a write outside the
/// configured paths.
#[test]
fn planted_symlinks_never_redirect_a_write() {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let cfg = two_certs(&env, "");
    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "{out}");
    let outside = env.root().join("outside");
    fs::create_dir_all(&outside).unwrap();
    let (fcert, fkey) = env.cert_paths("f");
    let mut victims = Vec::new();
    for p in [&fcert, &fkey] {
        let victim = outside.join(format!(
            "victim-{}",
            p.file_name().unwrap().to_string_lossy()
        ));
        fs::write(&victim, b"precious\n").unwrap();
        let prev = PathBuf::from(format!("{}.prev", p.display()));
        let _ = fs::remove_file(&prev);
        std::os::unix::fs::symlink(&victim, &prev).unwrap();
        victims.push(victim);
    }
    let out = env.run(&cfg, &["renew", "--force", "f"]);
    assert_eq!(out.code, 0, "{out}");
    for v in &victims {
        assert_eq!(
            read(v),
            b"precious\n",
            "{} was written through a symlink",
            v.display()
        );
    }
    assert_key_matches(&fcert, &fkey);
}

/// Defect 9: a key already on disk with mode 0644 is flagged by `check` and
/// `status`, and the next `renew` (nothing due) rewrites it with `key_mode`.
#[test]
fn world_readable_key_is_flagged_and_repaired() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let cfg = two_certs(&env, "");
    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "{out}");
    let (fcert, fkey) = env.cert_paths("f");
    let key0 = read(&fkey);
    fs::set_permissions(&fkey, fs::Permissions::from_mode(0o644)).unwrap();

    let out = env.run(&cfg, &["check"]);
    assert!(
        out.stdout.contains("readable by others") && out.stdout.contains("f.key"),
        "check does not warn:\n{out}"
    );
    let f = env.status_of(&cfg, "f");
    assert!(
        f["warnings"].to_string().contains("readable by others"),
        "status does not warn: {f}"
    );
    let out = env.run(&cfg, &["renew"]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(mode(&fkey), 0o600, "the key mode was not repaired");
    assert_eq!(read(&fkey), key0, "the key itself must not change");
    assert_key_matches(&fcert, &fkey);
    let f = env.status_of(&cfg, "f");
    assert_eq!(f["warnings"], serde_json::json!([]), "{f}");
}

/// A `ca_bundle` that is `/dev/zero` or a FIFO makes `check` fail at once with a
/// clear error, instead of exhausting memory or hanging (found by review of the
/// fuzzing work).
#[test]
fn ca_bundle_that_is_a_device_or_fifo_does_not_hang_check() {
    let env = TestEnv::new();
    let fifo = env.path("bundle.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for bundle in [PathBuf::from("/dev/zero"), fifo] {
        let cfg = env.write_raw_config(
            "c.toml",
            &format!(
                "state_dir = {}\n[acme]\ndirectory = {}\nca_bundle = {}\n{}{}",
                toml_str(env.state_dir()),
                toml_str(&env.directory),
                toml_str(&bundle),
                env.defaults_http01(""),
                env.cert_block("b", &["b.example.com"], "")
            ),
        );
        let out = env.run(&cfg, &["check"]);
        assert_eq!(out.code, 2, "{}: {out}", bundle.display());
        assert!(
            out.stdout.contains("acme.ca_bundle") && out.stdout.contains("not a regular file"),
            "{}: {out}",
            bundle.display()
        );
    }
}

/// Defect 3, daemon side: with a FIFO at `cert_path` the daemon neither hangs in
/// its pass nor ignores SIGTERM, and the FIFO is left in place.
#[test]
fn daemon_with_a_fifo_at_cert_path_still_stops_on_sigterm() {
    use std::os::unix::fs::FileTypeExt;
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let cfg = env.write_config(&format!(
        "{}{}",
        env.defaults_http01(""),
        env.cert_block("q", &["q.example.com"], "")
    ));
    let (cert, _) = env.cert_paths("q");
    nix::unistd::mkfifo(&cert, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let mut d = Daemon::start(&env, "daemon", &cfg);
    assert!(
        d.wait_log(Duration::from_secs(20), "is a FIFO"),
        "the pass did not report the FIFO"
    );
    let (status, _) = d.stop_with(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10));
    let status = status.expect("the daemon ignored SIGTERM");
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(fs::symlink_metadata(&cert).unwrap().file_type().is_fifo());
}
