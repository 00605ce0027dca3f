//! Fault scenario "bad hooks", against the real Pebble: a reload hook that hangs (with a
//! grandchild), exits non-zero, floods 50 MB of output, or reads stdin and then never
//! exits. In each case the hook belongs to one certificate while a second certificate
//! with a good hook sits in the same config, and we check that:
//! - the run exits 1 and the bad certificate is still installed, with `hooks_pending`
//!   true in `status --json`;
//! - the good certificate is renewed and its hook ran once;
//! - the next run retries the bad hook without ordering again (same serial, same bytes);
//! - certkeeper's own peak RSS and log size stay bounded, and the run ends in bounded time.
//!
//! Peak RSS is the `ru_maxrss` that `wait4` reports for the certkeeper process itself (not
//! its hooks: they are its children, not ours, and `ru_maxrss` of a process covers only
//! that process).

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// A certkeeper run, with its peak resident set size.
struct Measured {
    out: Output,
    /// `ru_maxrss` of the certkeeper process, KiB.
    max_rss_kib: i64,
    took: Duration,
}

/// Runs `certkeeper -c <cfg> <args>` like `TestEnv::run`, reaping it with `wait4` to read
/// its own peak RSS.
fn run_measured(env: &TestEnv, cfg: &Path, args: &[&str]) -> Measured {
    let mut cmd = Command::new(BIN);
    cmd.arg("-c")
        .arg(cfg)
        .args(args)
        .current_dir(env.path(""))
        .env_remove("CERTKEEPER_CONFIG")
        .env_remove("CERTKEEPER_FAULT")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    // Reaped by `wait4` below (which `Child::wait` cannot do: it drops the rusage).
    #[allow(clippy::zombie_processes)]
    let mut child = cmd.spawn().expect("spawn certkeeper");
    let pid = child.id() as libc::pid_t;
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let h_out = thread::spawn(move || {
        let mut b = Vec::new();
        let _ = so.read_to_end(&mut b);
        b
    });
    let h_err = thread::spawn(move || {
        let mut b = Vec::new();
        let _ = se.read_to_end(&mut b);
        b
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 fills it in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our own unreaped child; both pointers are valid for writes.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(r >= 0, "wait4: {}", std::io::Error::last_os_error());
        if r == pid {
            break;
        }
        if start.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            // SAFETY: as above.
            unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
            panic!("certkeeper {args:?} did not finish within {RUN_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let took = start.elapsed();
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    let out = Output {
        code,
        stdout: String::from_utf8_lossy(&h_out.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&h_err.join().unwrap()).into_owned(),
    };
    Measured {
        out,
        max_rss_kib: usage.ru_maxrss,
        took,
    }
}

/// `out` shortened for a failure message (a flood's log would drown the report).
fn short(out: &Output) -> String {
    let cut = |s: &str| {
        if s.len() > 8000 {
            format!("[{} bytes, last 8000]\n{}", s.len(), &s[s.len() - 8000..])
        } else {
            s.to_string()
        }
    };
    format!(
        "exit code {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.code,
        cut(&out.stdout),
        cut(&out.stderr)
    )
}

/// Bounds every case shares: certkeeper's peak RSS and the size of its log.
const MAX_RSS_KIB: i64 = 60 * 1024;
const MAX_LOG_BYTES: usize = 1024 * 1024;
/// A generous "it finished" guard for one run (the bad hook's timeout is 2 s).
const RUN_GUARD: Duration = Duration::from_secs(60);

/// What one scenario measured, printed for the record.
struct Figures {
    first: Measured,
    second: Measured,
}

/// Sets up a bad certificate whose reload hook runs `bad_body` (after appending to
/// `bad.count`), and a good one with a hook that only counts; runs `renew` twice and
/// checks everything the module doc lists. `$WORK` in `bad_body` is the work directory.
fn scenario(case: &str, bad_body: &str) -> (TestEnv, Figures) {
    let env = TestEnv::with_pebble(PebbleOpts::default());
    let work = env.path("");
    let bad_count = env.path("bad.count");
    let good_count = env.path("good.count");
    let bad = env.write_script(
        "bad-hook",
        &format!(
            "WORK='{}'\necho ran >> '{}'\n{bad_body}",
            work.display(),
            bad_count.display()
        ),
    );
    let good = env.write_script(
        "good-hook",
        &format!("cat > /dev/null\necho ran >> '{}'", good_count.display()),
    );
    let cfg = env.write_config(&format!(
        "{}{}{}",
        env.defaults_http01("hook_timeout = \"2s\""),
        env.cert_block(
            "bad",
            &["bad.example.com"],
            &format!("reload = [[{}]]", toml_str(&bad))
        ),
        env.cert_block(
            "good",
            &["good.example.com"],
            &format!("reload = [[{}]]", toml_str(&good))
        ),
    ));
    let (bcert, bkey) = env.cert_paths("bad");
    let (gcert, gkey) = env.cert_paths("good");

    let first = run_measured(&env, &cfg, &["renew"]);
    let out = &first.out;
    assert_eq!(
        out.code,
        1,
        "[{case}] a bad hook must fail the run:\n{}",
        short(out)
    );
    assert!(
        first.took < RUN_GUARD,
        "[{case}] first run took {:?}",
        first.took
    );
    assert!(
        out.stderr.contains("bad") && out.stderr.contains("reload hook failed"),
        "[{case}] the failure does not name the certificate and the hook:\n{}",
        short(out)
    );
    assert_key_matches(&bcert, &bkey);
    assert_key_matches(&gcert, &gkey);
    env.pebble().assert_chain_verifies(&gcert);
    assert_eq!(lines(&bad_count).len(), 1, "[{case}] bad hook runs");
    assert_eq!(
        lines(&good_count).len(),
        1,
        "[{case}] the good hook did not run once"
    );
    let st = env.status_of(&cfg, "bad");
    assert_eq!(st["hooks_pending"], true, "[{case}] {st}");
    let st = env.status_of(&cfg, "good");
    assert_eq!(st["hooks_pending"], false, "[{case}] {st}");
    let serial = cert_serial(&bcert);
    let bbytes = read(&bcert);
    let gbytes = read(&gcert);

    let second = run_measured(&env, &cfg, &["renew"]);
    let out = &second.out;
    assert_eq!(
        out.code,
        1,
        "[{case}] the hook still fails:\n{}",
        short(out)
    );
    assert!(
        second.took < RUN_GUARD,
        "[{case}] second run took {:?}",
        second.took
    );
    assert_eq!(
        lines(&bad_count).len(),
        2,
        "[{case}] the bad hook was not retried:\n{}",
        short(out)
    );
    assert_eq!(
        cert_serial(&bcert),
        serial,
        "[{case}] the retry ordered again"
    );
    assert_eq!(read(&bcert), bbytes, "[{case}] the retry reinstalled");
    assert_eq!(read(&gcert), gbytes, "[{case}] the good cert changed");
    assert_eq!(
        lines(&good_count).len(),
        1,
        "[{case}] the good hook ran again"
    );
    let st = env.status_of(&cfg, "bad");
    assert_eq!(st["hooks_pending"], true, "[{case}] {st}");

    for m in [&first, &second] {
        assert!(
            m.max_rss_kib < MAX_RSS_KIB,
            "[{case}] certkeeper peak RSS {} KiB",
            m.max_rss_kib
        );
        assert!(
            m.out.stderr.len() + m.out.stdout.len() < MAX_LOG_BYTES,
            "[{case}] log of {} bytes",
            m.out.stderr.len() + m.out.stdout.len()
        );
    }
    eprintln!(
        "[{case}] run 1: {:.2}s, max RSS {} KiB, log {} bytes; run 2: {:.2}s, max RSS {} KiB, log {} bytes",
        first.took.as_secs_f64(),
        first.max_rss_kib,
        first.out.stderr.len() + first.out.stdout.len(),
        second.took.as_secs_f64(),
        second.max_rss_kib,
        second.out.stderr.len() + second.out.stdout.len(),
    );
    (env, Figures { first, second })
}

/// Pids written by the hook into `file`, one a line.
fn pids(file: &Path) -> Vec<u32> {
    lines(file)
        .iter()
        .map(|l| l.trim().parse().expect("a pid"))
        .collect()
}

/// Hangs with a grandchild: the hook and its background child are both killed after
/// `hook_timeout`.
#[test]
fn hanging_hook_with_grandchild_is_killed() {
    let (env, f) = scenario(
        "hang",
        "echo $$ >> \"$WORK/hang.pids\"\nsleep 1000 &\necho $! >> \"$WORK/hang.pids\"\nsleep 1000",
    );
    let all = pids(&env.path("hang.pids"));
    assert_eq!(all.len(), 4, "two runs, hook + grandchild each: {all:?}");
    for pid in all {
        assert!(
            wait_for(Duration::from_secs(5), || !pid_alive(pid)),
            "pid {pid} of the hung hook survived the timeout"
        );
    }
    for m in [&f.first, &f.second] {
        assert!(
            m.out.stderr.contains("timed out after 2s"),
            "the error does not say it timed out:\n{}",
            short(&m.out)
        );
    }
}

/// Exits non-zero: its stderr and status are in the error.
#[test]
fn failing_hook_is_reported_and_retried() {
    let (_env, f) = scenario("exit", "echo 'the server refused the new key' >&2\nexit 3");
    for m in [&f.first, &f.second] {
        assert!(
            m.out.stderr.contains("the server refused the new key")
                && m.out.stderr.contains("exit status: 3"),
            "{}",
            short(&m.out)
        );
    }
}

/// Writes 50 MB on stdout and 50 MB on stderr: certkeeper keeps the last 64 KiB of each,
/// says how much it dropped, and its RSS and log stay small.
#[test]
fn flooding_hook_keeps_memory_and_log_bounded() {
    let (_env, f) = scenario(
        "flood",
        "yes 'flooding stdout' | head -c 50000000\n\
         yes 'flooding stderr' | head -c 50000000 >&2\nexit 1",
    );
    for m in [&f.first, &f.second] {
        assert!(
            m.out
                .stderr
                .contains("49,934,464 bytes of stdout dropped, last 64 KiB kept")
                && m.out.stderr.contains("49,934,464 bytes of stderr dropped"),
            "the drop is not reported:\n{}",
            short(&m.out)
        );
        assert!(
            m.out.stderr.contains("flooding stderr"),
            "{}",
            short(&m.out)
        );
    }
}

/// Reads its stdin to the end, then never exits: stdin was closed after the event
/// (so `cat` returned with the whole JSON), and the timeout ends it.
#[test]
fn hook_reading_stdin_then_hanging_times_out() {
    let (env, f) = scenario(
        "stdin",
        "cat > \"$WORK/stdin.json\"\necho eof >> \"$WORK/stdin.eof\"\nexec sleep 1000",
    );
    assert_eq!(lines(&env.path("stdin.eof")).len(), 2, "cat never saw EOF");
    let json: serde_json::Value =
        serde_json::from_slice(&read(&env.path("stdin.json"))).expect("whole JSON on stdin");
    assert_eq!(json["name"], "bad");
    for m in [&f.first, &f.second] {
        assert!(
            m.out.stderr.contains("timed out after 2s"),
            "{}",
            short(&m.out)
        );
    }
}
