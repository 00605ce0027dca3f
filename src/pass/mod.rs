//! One renewal pass (`certkeeper renew`, and each certificate's turn in `certkeeper run`).
//!
//! Order of work: take the lock, roll forward any interrupted install, then handle every
//! certificate in its own task ([`Runner::process`], in [`cert`]): read the disk, consult
//! ARI (only when its cached answer is stale), decide, respect the retry ladder, order,
//! verify, stage, install, run hooks, and record the outcome. Certificates share nothing
//! mutable but the ACME account, the order slots and the lock, so one failing or slow
//! certificate never stops the others.
//!
//! The pass prints nothing: what it did comes back as [`Outcome`]s, and the read-only
//! views (`status`, `--dry-run`, metrics) live in [`crate::report`].

mod ari;
mod budget;
mod cert;
mod disk;
mod failure;
mod fingerprint;
mod fleet;
mod order;
mod record;
mod reload;
mod runner;
mod verify;

use std::sync::Arc;
use std::time::Duration;

use tracing::{Instrument, error, info_span};

use crate::challenge::Responders;
use crate::clock::SharedClock;
use crate::config::{CertConfig, Config};
use crate::state::{StateDir, StateError};
use crate::timefmt::rfc3339;

pub use ari::{ARI_MAX_POLL, ARI_MIN_POLL, ari_min_poll};
pub use disk::{DiskLook, look_at_files};
pub use failure::PassError;
pub use fingerprint::{Fingerprint, fingerprint_files, fingerprint_of};
pub use record::{DAMAGE_WINDOW, MAX_DAMAGED_IN_A_ROW, record_panic, roll_forward};
pub use runner::{CertResult, Runner};

/// How many certificates are looked at at once. Each look reads a few small files off
/// the async workers; more in flight would only hold more memory at 10,000 certificates.
pub const MAX_LOOKS: usize = 64;
pub use verify::VERIFY_EVERY;
/// How soon a failed reload hook is retried by a long-running process.
pub const HOOK_RETRY: Duration = Duration::from_secs(300);

/// What the user asked `renew` to do.
#[derive(Debug, Clone, Default)]
pub struct RenewOptions {
    /// Renew even what is not due, ignoring the retry ladder.
    pub force: bool,
    /// Only these certificates (all if empty).
    pub names: Vec<String>,
}

/// The result of one certificate's pass.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Certificate name.
    pub name: String,
    /// False if the certificate or one of its hooks failed (exit code 1).
    pub ok: bool,
    /// One line for the operator.
    pub summary: String,
}

/// Errors that stop the whole pass before any certificate is handled.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Usage problem (exit 2), e.g. an unknown certificate name.
    #[error("{0}")]
    Usage(String),
    /// The state directory is unusable or locked (exit 1).
    #[error(transparent)]
    State(#[from] StateError),
}

/// Runs one renewal pass over the selected certificates.
pub async fn renew(
    cfg: Arc<Config>,
    opts: RenewOptions,
    clock: SharedClock,
) -> Result<Vec<Outcome>, RunError> {
    let selected: Vec<CertConfig> = cfg
        .select(&opts.names)
        .map_err(RunError::Usage)?
        .into_iter()
        .cloned()
        .collect();
    let state = StateDir::create(&cfg.state_dir)?;
    let _lock = state.lock("certkeeper renew")?;
    roll_forward_unselected(&cfg, &state, &selected, &clock);
    let responders = Responders::default();
    let fleet = fleet_of(&cfg, &responders)?;
    if let Some(f) = &fleet
        && let Err(e) = f.prime().await
    {
        tracing::warn!("fleet: {e}; installed files stay as they are");
    }
    let runner = Arc::new(Runner::new(cfg.clone(), state, responders, clock).with_fleet(fleet));
    Ok(run_all(runner, selected, opts.force).await)
}

/// The fleet connection when `[cluster]` is configured; its responders then also serve
/// (and publish to) the fleet's HTTP-01 tokens.
pub fn fleet_of(
    cfg: &Config,
    responders: &Responders,
) -> Result<Option<Arc<crate::fleet::Fleet>>, RunError> {
    let Some(c) = &cfg.cluster else {
        return Ok(None);
    };
    let fleet = crate::fleet::Fleet::new(c).map_err(|e| RunError::Usage(e.to_string()))?;
    responders.set_shared(Arc::new(fleet.clone()));
    Ok(Some(fleet))
}

/// Certificates not selected still get their interrupted installs completed, so no
/// half-installed set is left behind; the selected ones do it in their own task.
fn roll_forward_unselected(
    cfg: &Config,
    state: &StateDir,
    selected: &[CertConfig],
    clock: &SharedClock,
) {
    let chosen: std::collections::HashSet<&str> =
        selected.iter().map(|c| c.name.as_str()).collect();
    for cert in cfg
        .certs
        .iter()
        .filter(|c| !chosen.contains(c.name.as_str()))
    {
        let mut rec = state.load(&cert.name).unwrap_or_default();
        if let Err(e) = roll_forward(state, &cert.name, &mut rec, clock.now()) {
            error!(cert = %cert.name, "{e}");
        }
    }
}

/// Runs every certificate in its own task and collects the outcomes in config order. A
/// panicking task is recorded as a failure on the ladder, never lost.
async fn run_all(runner: Arc<Runner>, certs: Vec<CertConfig>, force: bool) -> Vec<Outcome> {
    let mut tasks = tokio::task::JoinSet::new();
    let mut ids = std::collections::HashMap::new();
    let looks = Arc::new(tokio::sync::Semaphore::new(MAX_LOOKS));
    let mut out = Vec::new();
    for (i, cert) in certs.into_iter().enumerate() {
        let slot = looks.clone().acquire_owned().await.expect("never closed");
        // Collect what finished meanwhile, so 10,000 outcomes don't wait in the set.
        while let Some(r) = tasks.try_join_next_with_id() {
            collect(&runner, &ids, r, &mut out);
        }
        let runner = runner.clone();
        let span = info_span!("cert", cert = %cert.name);
        let name = cert.name.clone();
        let task = async move { (i, runner.process_in(&cert, force, Some(slot)).await.outcome) };
        let handle = tasks.spawn(task.instrument(span));
        ids.insert(handle.id(), (i, name));
    }
    while let Some(r) = tasks.join_next_with_id().await {
        collect(&runner, &ids, r, &mut out);
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, o)| o).collect()
}

/// One finished certificate task's outcome; a panic is recorded on the ladder.
fn collect(
    runner: &Runner,
    ids: &std::collections::HashMap<tokio::task::Id, (usize, String)>,
    r: Result<(tokio::task::Id, (usize, Outcome)), tokio::task::JoinError>,
    out: &mut Vec<(usize, Outcome)>,
) {
    {
        match r {
            Ok((_, v)) => out.push(v),
            Err(e) => {
                let Some((i, name)) = ids.get(&e.id()).cloned() else {
                    error!("a certificate task failed: {e}");
                    return;
                };
                out.push((i, panicked(runner, name, &e.to_string())));
            }
        }
    }
}

/// The outcome of a certificate task that panicked, after recording it.
fn panicked(runner: &Runner, name: String, what: &str) -> Outcome {
    error!(cert = %name, "certificate task panicked: {what}");
    let next = record_panic(&runner.state, &name, what, runner.clock.now());
    Outcome {
        name,
        ok: false,
        summary: format!(
            "internal error (the task panicked: {what}); next attempt {}",
            rfc3339(next)
        ),
    }
}
