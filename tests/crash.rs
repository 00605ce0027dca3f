//! Crash consistency at every step of a renewal, against a real Pebble.
//!
//! A certificate with key, cert, chain and bundle files is renewed again and
//! again, and each renewal is killed with SIGKILL: first at every named fault
//! point of the debug build (`CERTKEEPER_FAULT`, see `src/fault.rs`: before the
//! order, after staging, after each `.prev` link and each rename, between the
//! install and its record, before and after the hooks), then at random moments
//! (`CERTKEEPER_CRASH_RUNS`, default 260, kills spread over the measured length
//! of a renewal). After every kill the next plain `renew` must leave:
//! - a key that matches the cert, a chain and a bundle that belong to it;
//! - no empty or truncated file, and no temp file;
//! - `.prev` files holding the previous set whenever the set changed;
//! - a staged set installed without a new order;
//! - the reload hook's last run made on the final set (hooks are at least once).
//!
//! The figures (runs, kills, failures, roll-forwards) are printed as FIGURE
//! lines; `RELIABILITY.md` quotes them.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rand::Rng;

use common::*;

struct Files {
    cert: PathBuf,
    key: PathBuf,
    chain: PathBuf,
    bundle: PathBuf,
}

impl Files {
    fn all(&self) -> [&Path; 4] {
        [&self.cert, &self.key, &self.chain, &self.bundle]
    }

    fn contents(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        self.all()
            .into_iter()
            .map(|p| (p.to_path_buf(), read(p)))
            .collect()
    }
}

fn sha(data: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Everything a reader of the files must be able to rely on after a crash and
/// the next run. Returns a description of the first violation.
fn check_set(f: &Files) -> Result<(), String> {
    for p in f.all() {
        let data = fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if data.is_empty() {
            return Err(format!("{} is empty", p.display()));
        }
    }
    if !key_matches(&f.cert, &f.key) {
        return Err("the key does not match the cert".into());
    }
    let cert = String::from_utf8(read(&f.cert)).unwrap();
    let blocks = pem_blocks(&cert);
    if blocks.len() < 2 {
        return Err(format!("the cert file has {} PEM blocks", blocks.len()));
    }
    let chain = String::from_utf8(read(&f.chain)).unwrap();
    if pem_blocks(&chain) != blocks[1..] {
        return Err("the chain file is not the cert file's chain".into());
    }
    let key = String::from_utf8(read(&f.key)).unwrap();
    let bundle = String::from_utf8(read(&f.bundle)).unwrap();
    if bundle != format!("{key}{cert}") {
        return Err("the bundle is not key + cert".into());
    }
    let dir = f.cert.parent().unwrap();
    let temps: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("certkeeper-tmp"))
        .collect();
    if !temps.is_empty() {
        return Err(format!("temp files left behind: {temps:?}"));
    }
    Ok(())
}

/// `.prev` of each file holds what the file held before the set changed.
fn check_prev(before: &BTreeMap<PathBuf, Vec<u8>>, f: &Files) -> Result<(), String> {
    for (p, old) in before {
        if read(p) == *old {
            continue;
        }
        let prev = PathBuf::from(format!("{}.prev", p.display()));
        if fs::read(&prev).ok().as_ref() != Some(old) {
            return Err(format!(
                "{} is not the previous {}",
                prev.display(),
                p.display()
            ));
        }
    }
    let _ = f;
    Ok(())
}

/// The hook appends the SHA-256 of the cert file it saw; its last line must be
/// the cert now in place.
fn check_hooks(hook_log: &Path, f: &Files) -> Result<(), String> {
    let lines = lines(hook_log);
    let last = lines.last().ok_or("the hook never ran")?;
    let now = sha(&read(&f.cert));
    if *last != now {
        return Err(format!(
            "the last hook run saw cert {last}, but {now} is installed"
        ));
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    runs: u32,
    kills: u32,
    roll_forwards: u32,
    backed_off: u32,
    failures: Vec<String>,
}

struct Rig {
    env: TestEnv,
    cfg: PathBuf,
    files: Files,
    hook_log: PathBuf,
}

impl Rig {
    fn new() -> Self {
        let env = TestEnv::with_pebble(PebbleOpts {
            nonce_reject: Some(0),
            ..PebbleOpts::default()
        });
        let (cert, key) = env.cert_paths("c");
        let dir = cert.parent().unwrap().to_path_buf();
        let files = Files {
            cert: cert.clone(),
            key,
            chain: dir.join("c.chain"),
            bundle: dir.join("c.bundle"),
        };
        let hook_log = env.path("hook.log");
        let hook = env.write_script(
            "hook",
            &format!(
                "sha256sum < '{}' | cut -d' ' -f1 >> '{}'",
                cert.display(),
                hook_log.display()
            ),
        );
        let cfg = env.write_config(&format!(
            "{}{}",
            env.defaults_http01(""),
            env.cert_block(
                "c",
                &["c.example.com"],
                &format!(
                    "chain_path = {}\nbundle_path = {}\nreload = [[{}]]",
                    toml_str(&files.chain),
                    toml_str(&files.bundle),
                    toml_str(&hook)
                )
            )
        ));
        Self {
            env,
            cfg,
            files,
            hook_log,
        }
    }

    fn staged(&self) -> bool {
        self.env
            .state_dir()
            .join("staging/c/manifest.json")
            .exists()
    }

    /// One crashed renewal and the run after it; violations go into the tally.
    fn round(&self, t: &mut Tally, label: &str, crash: impl FnOnce(&Self) -> bool) {
        t.runs += 1;
        let before = self.files.contents();
        let killed = crash(self);
        if killed {
            t.kills += 1;
        }
        let staged = self.staged();
        let staged_set = staged.then(|| {
            let dir = self.env.state_dir().join("staging/c");
            fs::read(dir.join("fullchain.pem")).ok()
        });
        let out = self.env.run(&self.cfg, &["renew"]);
        let mut problems = Vec::new();
        if staged {
            t.roll_forwards += 1;
            if out.all().contains("renewing") {
                problems.push("a staged set was ordered again instead of installed".to_string());
            }
            if let Some(Some(staged_cert)) = staged_set
                && read(&self.files.cert) != staged_cert
            {
                problems.push("the staged cert is not the one installed".into());
            }
        }
        if out.code != 0 {
            // Killed mid-order: the reserved outcome backs off; the old set stands.
            if out.all().contains("backing off") && self.files.contents() == before {
                t.backed_off += 1;
            } else {
                problems.push(format!("the run after the crash failed:\n{out}"));
            }
        }
        for r in [
            check_set(&self.files),
            check_prev(&before, &self.files),
            check_hooks(&self.hook_log, &self.files),
        ] {
            if let Err(e) = r {
                problems.push(e);
            }
        }
        if !problems.is_empty() {
            t.failures.push(format!(
                "{label} (killed: {killed}): {}",
                problems.join("; ")
            ));
        }
    }
}

fn crash_at_point(rig: &Rig, point: &str) -> bool {
    let out = rig.env.run_env(
        &rig.cfg,
        &["renew", "--force"],
        &[("CERTKEEPER_FAULT", point)],
    );
    out.code == -1
}

fn crash_after(rig: &Rig, delay: Duration) -> bool {
    let mut p = rig.env.spawn("renew", &rig.cfg, &["renew", "--force"]);
    std::thread::sleep(delay);
    let killed = kill(Pid::from_raw(p.id() as i32), Signal::SIGKILL).is_ok()
        && p.wait_timeout(Duration::from_secs(30))
            .is_some_and(|s| std::os::unix::process::ExitStatusExt::signal(&s) == Some(9));
    if !killed {
        let _ = p.wait_timeout(Duration::from_secs(30));
    }
    killed
}

/// The named points of one renewal, in order; `@N` is the N-th time a point is
/// reached. Of the four files only three change on a renewal: Pebble's chain file stays
/// the same, and an identical file is not rewritten.
const POINTS: &[&str] = &[
    "before-order",
    "staged",
    "install-prev@1",
    "install-rename@1",
    "install-prev@2",
    "install-rename@2",
    "install-prev@3",
    "install-rename@3",
    "installed-before-record",
    "recorded-before-finish",
    "finished",
    "before-hooks",
    "after-hooks",
];

#[test]
fn sigkill_at_every_step_and_at_random_moments_loses_nothing() {
    let rig = Rig::new();
    let out = rig.env.run(&rig.cfg, &["renew"]);
    assert_eq!(out.code, 0, "first issuance:\n{out}");
    check_set(&rig.files).unwrap();

    let mut t = Tally::default();
    let mut fired = 0;
    for point in POINTS {
        let mut hit = false;
        rig.round(&mut t, point, |r| {
            hit = crash_at_point(r, point);
            hit
        });
        fired += u32::from(hit);
        if !hit {
            t.failures.push(format!("fault point {point} never fired"));
        }
    }

    // How long one renewal takes, to spread the random kills over it.
    let t0 = Instant::now();
    let out = rig.env.run(&rig.cfg, &["renew", "--force"]);
    assert_eq!(out.code, 0, "{out}");
    let full = t0.elapsed();
    let runs: u32 = std::env::var("CERTKEEPER_CRASH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(260);
    let mut rng = rand::rng();
    for i in 0..runs {
        let delay = full.mul_f64(rng.random_range(0.02..0.95));
        rig.round(&mut t, &format!("random kill {i} after {delay:?}"), |r| {
            crash_after(r, delay)
        });
    }
    eprintln!(
        "FIGURE crash: {} rounds ({} named points, {fired} fired; {runs} random within {:.0} ms), {} kills, {} roll-forwards, {} backed off, {} failures",
        t.runs,
        POINTS.len(),
        full.as_secs_f64() * 1000.0,
        t.kills,
        t.roll_forwards,
        t.backed_off,
        t.failures.len()
    );
    assert!(
        t.failures.is_empty(),
        "{} of {} rounds broke a promise:\n{}",
        t.failures.len(),
        t.runs,
        t.failures.join("\n")
    );
    assert!(t.kills >= t.runs / 2, "too few kills landed: {}", t.kills);
}
