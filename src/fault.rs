//! Fault injection for the crash-consistency tests, compiled into debug builds only.
//!
//! `CERTKEEPER_FAULT=<point>` makes the process kill itself with SIGKILL the first time it
//! reaches that named point; `<point>@N` waits for the N-th time (1-based), so a test can
//! stop an install at every rename in turn. `panic:<point>` panics there instead, to prove
//! that a panicking certificate task is reported as a failure. Release builds ignore the
//! variable entirely: `cfg!(debug_assertions)` folds every call away.

use std::sync::atomic::{AtomicU32, Ordering};

/// How often each point has been reached in this process (one counter serves all points,
/// since only the point named in the environment is counted).
static HITS: AtomicU32 = AtomicU32::new(0);

/// The environment variable the tests set.
pub const ENV: &str = "CERTKEEPER_FAULT";

/// Marks a named point in the code where a crash is worth testing.
pub fn point(name: &str) {
    if !cfg!(debug_assertions) {
        return;
    }
    let Ok(spec) = std::env::var(ENV) else {
        return;
    };
    let (panic, spec) = match spec.strip_prefix("panic:") {
        Some(rest) => (true, rest),
        None => (false, spec.as_str()),
    };
    let (want, nth) = match spec.split_once('@') {
        Some((p, n)) => (p, n.parse::<u32>().unwrap_or(1)),
        None => (spec, 1),
    };
    if want != name {
        return;
    }
    let hit = HITS.fetch_add(1, Ordering::SeqCst) + 1;
    if hit != nth {
        return;
    }
    if panic {
        panic!("{ENV}: injected panic at {name}");
    }
    eprintln!("certkeeper: {ENV}={name}@{nth}: killing itself with SIGKILL");
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    // raise() only returns if the signal could not be sent.
    std::process::abort();
}

/// `CERTKEEPER_FAULT_TIME_SCALE=N` (debug builds only) divides the retry ladder's delays,
/// the ARI minimum poll, the reuse of a failed CA connection and the hook retry by N, so a
/// test can watch a back-off or a poll end without waiting minutes. Release builds always
/// use the real times.
pub fn scaled(d: std::time::Duration) -> std::time::Duration {
    if !cfg!(debug_assertions) {
        return d;
    }
    match std::env::var("CERTKEEPER_FAULT_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        Some(n) if n > 1 => d / n,
        _ => d,
    }
}
