//! The daemon's schedule under `tokio::time::pause()`, in-process, as mini-redis tests its
//! server: hours of retry ladder run in well under a second of real time, because the
//! daemon and the pass take their wall clock from the injected [`TokioClock`], which moves
//! with the paused runtime clock.
//!
//! The CA is a loopback port with nothing listening (connection refused at once), so no
//! real network wait is involved and nothing here depends on real time passing.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use certkeeper::clock::{Clock, TokioClock};
use certkeeper::config::Config;
use certkeeper::state::StateDir;
use time::OffsetDateTime;

fn config(dir: &Path, ca_port: u16, http_port: u16) -> (std::path::PathBuf, Config) {
    let src = format!(
        r#"state_dir = "{d}/state"
[acme]
directory = "https://127.0.0.1:{ca_port}/dir"
[[cert]]
name = "t"
domains = ["a.example"]
cert_path = "{d}/out/c.pem"
key_path = "{d}/out/k.pem"
http01_listen = "127.0.0.1:{http_port}"
"#,
        d = dir.display()
    );
    let path = dir.join("certkeeper.toml");
    std::fs::create_dir_all(dir.join("out")).unwrap();
    std::fs::write(&path, &src).unwrap();
    let cfg = Config::from_file(&path).unwrap();
    (path, cfg)
}

/// A dead CA at start-up: the daemon tries at once, then exactly at each step of the
/// ladder (1 min, 10 min, 100 min), and after the fourth failure waits a day. Three
/// paused hours must show four failures, recorded at the injected clock's times (a pass
/// reading the system clock would record times within a second of the start), and the
/// next attempt a day after the last failure.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn dead_ca_backs_off_along_the_ladder_in_paused_time() {
    certkeeper::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    // Reserved, never listened on: connection refused.
    let (port, _lease) = common::reserve_ports(2, None);
    let (path, cfg) = config(dir.path(), port, port + 1);
    let start = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let clock = Arc::new(TokioClock::starting_at(start));
    let hours = 3;
    let shutdown = tokio::time::sleep(Duration::from_secs(hours * 3600));
    let real = std::time::Instant::now();
    certkeeper::daemon::run(path, cfg, shutdown, clock.clone())
        .await
        .expect("daemon runs and stops");
    let real = real.elapsed();
    assert!(clock.now() - start >= time::Duration::hours(hours as i64));

    let rec = StateDir::open_readonly(&dir.path().join("state"))
        .load("t")
        .unwrap();
    assert_eq!(rec.failures, 4, "{rec:?}");
    assert_eq!(rec.renewals_failed, 4, "{rec:?}");
    let last = rec.last_failure_at.expect("last failure recorded");
    // Attempts at ~0, 60, 660 and 6660 s (each plus the in-run retries of a few seconds).
    let elapsed = (last - start).whole_seconds();
    assert!(
        (6660..6660 + 120).contains(&elapsed),
        "fourth failure {elapsed} s after start"
    );
    assert_eq!(
        rec.next_attempt_at.expect("next attempt") - last,
        time::Duration::days(1)
    );
    assert_eq!(
        rec.last_error_class,
        Some(certkeeper::policy::ErrorClass::Transient),
        "{:?}",
        rec.last_error
    );
    eprintln!(
        "FIGURE paused daemon: {hours} h of schedule in {:.2} s real time",
        real.as_secs_f64()
    );
}
