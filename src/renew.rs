//! One renewal pass (`certkeeper renew`) and the read-only views built on the same facts
//! (`status`, `--dry-run`).
//!
//! Order of work: take the lock, roll forward any interrupted install, then handle every
//! certificate in its own task: read the disk, consult ARI (only when its cached answer is
//! stale), decide, respect the retry ladder, order, verify, stage, install, run hooks, and
//! record the outcome. Certificates share nothing mutable but the ACME account and the lock,
//! so one failing or slow certificate never stops the others.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::acme::{Acme, AcmeError, AriLookup, OrderRequest};
use crate::challenge::Responders;
use crate::config::{CertConfig, Config};
use crate::hooks::{HookEvent, run_reload_hooks};
use crate::inventory::{CertInfo, OnDisk};
use crate::policy::{self, AriWindow, CertState, Decision};
use crate::state::{CaRecord, CertRecord, StateDir, StateError};
use crate::store::{self, NewSet};
use crate::timefmt::{format_duration, rfc3339};
use crate::{inventory, keys};

/// How many orders run at once.
pub const MAX_CONCURRENT: usize = 4;
/// ARI is re-checked at least this often, whatever Retry-After says (Let's Encrypt asks
/// for twice a day).
pub const ARI_MAX_POLL: Duration = Duration::from_secs(12 * 3600);
/// ...and never more often than this.
pub const ARI_MIN_POLL: Duration = Duration::from_secs(60);

/// What the user asked `renew` to do.
#[derive(Debug, Clone, Default)]
pub struct RenewOptions {
    /// Renew even what is not due, ignoring the retry ladder.
    pub force: bool,
    /// Decide and print, but order and write nothing.
    pub dry_run: bool,
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

/// A per-certificate random source that is stable across runs (so `status` and the next
/// timer run agree on `renew_at`) but differs between hosts and certificates (so a fleet
/// spreads its load on the CA).
pub fn jitter_rng(name: &str, serial: Option<&str>) -> JitterRng {
    // SHA-256 rather than `DefaultHasher`, whose output may change between Rust releases
    // (an upgrade would silently move every `renew_at`). Fields are length-prefixed so
    // ("ab", "c") and ("a", "bc") differ.
    let host = hostname::get().unwrap_or_default();
    jitter_rng_on(host.as_encoded_bytes(), name, serial)
}

/// [`jitter_rng`] for a given host name (tests pin its output).
fn jitter_rng_on(host: &[u8], name: &str, serial: Option<&str>) -> JitterRng {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for field in [host, name.as_bytes(), serial.unwrap_or("").as_bytes()] {
        ctx.update(&(field.len() as u64).to_be_bytes());
        ctx.update(field);
    }
    ctx.update(&[u8::from(serial.is_some())]);
    let digest = ctx.finish();
    let mut seed = [0u8; 32];
    seed.copy_from_slice(digest.as_ref());
    JitterRng { seed, counter: 0 }
}

/// A random source whose output is fixed by its seed forever: block `i` is
/// SHA-256(seed || i). `rand`'s `StdRng` documents that its algorithm may change between
/// versions, which would move every certificate's `renew_at` on an upgrade.
#[derive(Debug, Clone)]
pub struct JitterRng {
    seed: [u8; 32],
    counter: u64,
}

impl rand::RngCore for JitterRng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(32) {
            let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
            ctx.update(&self.seed);
            ctx.update(&self.counter.to_be_bytes());
            self.counter += 1;
            let block = ctx.finish();
            chunk.copy_from_slice(&block.as_ref()[..chunk.len()]);
        }
    }
}

/// The ARI window cached for the installed certificate, if it belongs to that serial.
fn cached_ari(rec: &CertRecord, disk: &OnDisk) -> Option<AriWindow> {
    let serial = disk.info().map(|i| i.serial.as_str());
    match (&rec.ari, &rec.ari_serial) {
        (Some(w), Some(s)) if Some(s.as_str()) == serial => Some(*w),
        _ => None,
    }
}

/// The decision for a certificate from what is on disk and what was remembered.
pub fn evaluate(cert: &CertConfig, rec: &CertRecord, now: OffsetDateTime) -> (OnDisk, Decision) {
    let disk = inventory::inspect(cert, now);
    let ari = cached_ari(rec, &disk);
    let decision = decide(cert, &disk, ari.as_ref(), rec, now);
    (disk, decision)
}

/// The policy decision, except that an open ARI window for a certificate we have only just
/// installed is held until the next ARI poll: a CA that says "renew now" for every new
/// certificate would otherwise make us renew in a tight loop.
fn decide(
    cert: &CertConfig,
    disk: &OnDisk,
    ari: Option<&AriWindow>,
    rec: &CertRecord,
    now: OffsetDateTime,
) -> Decision {
    let mut rng = jitter_rng(&cert.name, disk.info().map(|i| i.serial.as_str()));
    let held = match (ari, rec.ari_hold_until) {
        (Some(w), Some(until)) if w.start <= now && until > now => Some((w.start, until)),
        _ => None,
    };
    let ari = if held.is_some() { None } else { ari };
    let mut d = policy::decide(disk, cert.renew_before, ari, now, &mut rng);
    if let Some((start, until)) = held
        && !d.due
        && until <= d.renew_at
    {
        d.renew_at = until;
        d.rule = policy::Rule::Ari;
        d.reason = format!(
            "ARI: the CA's renewal window opened at {}, already when this certificate was issued; not renewing before the next ARI poll at {}",
            rfc3339(start),
            rfc3339(until)
        );
    }
    d
}

/// What a long-lived process keeps between certificate passes: the config, the state
/// directory, the HTTP-01 responders and the ACME account. `renew` builds one per run; the
/// daemon keeps one until the config changes.
pub struct Runner {
    /// The configuration in force.
    pub cfg: Arc<Config>,
    /// The state directory.
    pub state: StateDir,
    /// Built-in HTTP-01 responders (kept running once started).
    pub responders: Responders,
    acme: tokio::sync::Mutex<AcmeCache>,
    /// At most `MAX_CONCURRENT` orders at once, so a fleet of certificates does not hit
    /// the CA all at the same moment. Shared with the runner that replaces this one on a
    /// config reload, so tasks still running under the old config count too.
    orders: Arc<Semaphore>,
}

enum AcmeCache {
    Empty,
    Ready(Arc<Acme>),
    /// A failed connect is shared for a short while, so a pass over many certificates
    /// against a down CA costs one attempt, not one per certificate.
    Failed(String, std::time::Instant),
}

/// How long a failed connection attempt is reused before trying again.
const CONNECT_FAILURE_TTL: Duration = Duration::from_secs(30);

/// The result of one certificate's pass, and when it next needs attention.
#[derive(Debug, Clone)]
pub struct CertResult {
    /// What happened.
    pub outcome: Outcome,
    /// When to look at this certificate again (renewal time, retry time or ARI poll).
    pub next_wake: OffsetDateTime,
    /// A new set was installed (so file events from this pass are our own).
    pub installed: bool,
    /// What the certificate's files held when this pass last read or wrote them: the
    /// daemon compares a later file event against it, so only a real change wakes it.
    pub fingerprint: Option<Fingerprint>,
}

/// SHA-256 over a certificate's file set (each file's presence and contents, in a fixed
/// order); see [`CertResult::fingerprint`].
pub type Fingerprint = [u8; 32];

/// The fingerprint of contents as they are (None for an absent or unreadable file).
pub fn fingerprint_of<'a>(contents: impl IntoIterator<Item = Option<&'a [u8]>>) -> Fingerprint {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for c in contents {
        match c {
            Some(data) => {
                ctx.update(&[1]);
                ctx.update(&(data.len() as u64).to_be_bytes());
                ctx.update(data);
            }
            None => ctx.update(&[0]),
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Reads a certificate's files and fingerprints them. Blocking: call off the async workers.
pub fn fingerprint_files(cert: &CertConfig) -> Fingerprint {
    // Same order as `set_fingerprint`: cert, key, chain, bundle. A file that is not a
    // regular file or is over the size limit counts as absent.
    let data: Vec<Option<Vec<u8>>> = cert
        .files()
        .iter()
        .map(|(_, p)| crate::fsx::read_regular(p, crate::fsx::PEM_LIMIT, true).ok())
        .collect();
    fingerprint_of(data.iter().map(|d| d.as_deref()))
}

/// Reads the disk for one pass, off the async workers: the fingerprint first, then the
/// inspection, so a change between the two reads can only cause an extra re-check.
async fn read_disk(cert: &CertConfig, now: OffsetDateTime) -> (OnDisk, Option<Fingerprint>) {
    let c = cert.clone();
    let read = tokio::task::spawn_blocking(move || {
        let fp = fingerprint_files(&c);
        (inventory::inspect(&c, now), Some(fp))
    });
    match read.await {
        Ok(r) => r,
        Err(e) => (
            OnDisk::Invalid {
                reason: format!("reading the files failed: {e}"),
                info: None,
            },
            None,
        ),
    }
}

/// A failed pass for this certificate.
fn failed(cert: &CertConfig, summary: String, next_wake: OffsetDateTime) -> CertResult {
    CertResult {
        outcome: Outcome {
            name: cert.name.clone(),
            ok: false,
            summary,
        },
        next_wake,
        installed: false,
        fingerprint: None,
    }
}

/// Tracks whether the set we installed is still there. When it keeps being destroyed soon
/// after each install (another program, or a second certkeeper, writes the same paths),
/// re-ordering would only feed the conflict and burn the CA's duplicate-certificate limit
/// (5 a week), so after [`MAX_DAMAGED_IN_A_ROW`] times this returns the error to report.
fn note_damage(rec: &mut CertRecord, disk: &OnDisk, now: OffsetDateTime) -> Option<String> {
    if let OnDisk::Present(info) = disk {
        rec.damaged_in_a_row = 0;
        rec.damaged_since_install = false;
        rec.installed_serial = Some(info.serial.clone());
        return None;
    }
    let ours = rec.installed_serial.clone()?;
    if !rec.damaged_since_install {
        rec.damaged_since_install = true;
        let recent = rec.last_success_at.is_some_and(|t| now - t < DAMAGE_WINDOW);
        rec.damaged_in_a_row = if recent { rec.damaged_in_a_row + 1 } else { 1 };
    }
    if rec.damaged_in_a_row < MAX_DAMAGED_IN_A_ROW {
        return None;
    }
    let what = match disk {
        OnDisk::Missing(r) | OnDisk::Invalid { reason: r, .. } => r.as_str(),
        OnDisk::Present(_) => "",
    };
    Some(format!(
        "the set installed at {} (serial {ours}) was destroyed soon after its install, {} times in a row (now: {what}); another program or another certkeeper writes these files. Not ordering again: fix the conflict, then run `certkeeper renew --force`",
        rec.last_success_at
            .map(rfc3339)
            .unwrap_or_else(|| "?".into()),
        rec.damaged_in_a_row,
    ))
}

/// The outcome of an order, written pessimistically before the order is sent: "failed,
/// back off". If the process dies mid-order, the next run backs off instead of ordering
/// again; if the record cannot be written (a full disk), no order is sent at all, since its
/// failure could not be recorded either. A cancelled task (graceful shutdown) puts the
/// record back: the operator stopping us is no failure of the CA's.
struct Reservation {
    state: StateDir,
    name: String,
    original: CertRecord,
    reserved: CertRecord,
    settled: bool,
    /// Set by the install job once it starts; from then on its record stands.
    installing: Arc<std::sync::Mutex<bool>>,
}

impl Reservation {
    fn take(state: &StateDir, name: &str, rec: &CertRecord) -> Result<Self, StateError> {
        let now = OffsetDateTime::now_utc();
        let mut reserved = rec.clone();
        reserved.failures += 1;
        reserved.last_failure_at = Some(now);
        reserved.next_attempt_at = Some(policy::next_attempt(
            reserved.failures,
            now,
            policy::ErrorClass::Transient,
            None,
        ));
        reserved.last_outcome = Some("interrupted".into());
        reserved.last_error = Some(format!(
            "the order started at {} was interrupted before its outcome was recorded",
            rfc3339(now)
        ));
        state.save(name, &reserved)?;
        Ok(Self {
            state: state.clone(),
            name: name.to_string(),
            original: rec.clone(),
            reserved,
            settled: false,
            installing: Arc::default(),
        })
    }

    /// The order finished (either way); the caller records the real outcome.
    fn settle(mut self) {
        self.settled = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // Only undo our own reservation, and never once an install has started: its
        // record stands. The lock orders this against the install job's start.
        let installing = self.installing.lock().unwrap_or_else(|p| p.into_inner());
        if !*installing && self.state.load(&self.name).ok().as_ref() == Some(&self.reserved) {
            let _ = self.state.save(&self.name, &self.original);
        }
    }
}

impl Runner {
    /// A runner over a validated config and an opened state directory.
    pub fn new(cfg: Arc<Config>, state: StateDir, responders: Responders) -> Self {
        Self {
            cfg,
            state,
            responders,
            acme: tokio::sync::Mutex::new(AcmeCache::Empty),
            orders: Arc::new(Semaphore::new(MAX_CONCURRENT)),
        }
    }

    /// The runner for a reloaded config: a fresh ACME connection, but the same order slots
    /// and CA-record lock, so old and new tasks together stay within the limits.
    pub fn reconfigured(&self, cfg: Arc<Config>) -> Self {
        Self {
            cfg,
            state: self.state.clone(),
            responders: self.responders.clone(),
            acme: tokio::sync::Mutex::new(AcmeCache::Empty),
            orders: self.orders.clone(),
        }
    }

    /// Updates the record of a CA (see [`StateDir::update_ca`]); a failed save is logged,
    /// since the facts are only a cache.
    fn update_ca(&self, directory: &str, change: impl FnOnce(&mut CaRecord)) {
        if let Err(e) = self.state.update_ca(directory, change) {
            warn!("cannot record what was learned about the CA: {e}");
        }
    }

    /// Drops the account the CA no longer knows (kept as `<file>.lost` for inspection), so
    /// the next connection creates a new one.
    async fn forget_account(&self) {
        let mut cache = self.acme.lock().await;
        *cache = AcmeCache::Empty;
        let path = self.state.account_file(&self.cfg.acme.directory);
        let lost = path.with_extension("json.lost");
        if let Err(e) = std::fs::rename(&path, &lost) {
            warn!("cannot set aside {}: {e}", path.display());
        }
    }

    /// The ACME account, connecting (and creating it) on first use.
    async fn acme(&self) -> Result<Arc<Acme>, String> {
        let mut cache = self.acme.lock().await;
        match &*cache {
            AcmeCache::Ready(a) => return Ok(a.clone()),
            AcmeCache::Failed(e, at)
                if at.elapsed() < crate::fault::scaled(CONNECT_FAILURE_TTL) =>
            {
                return Err(e.clone());
            }
            _ => {}
        }
        match Acme::connect(&self.cfg.acme, &self.state).await {
            Ok(a) => {
                let a = Arc::new(a);
                *cache = AcmeCache::Ready(a.clone());
                Ok(a)
            }
            Err(e) => {
                let e = e.to_string();
                *cache = AcmeCache::Failed(e.clone(), std::time::Instant::now());
                Err(e)
            }
        }
    }
}

/// Completes an install of this certificate that a crash interrupted; must run before
/// anything else touches the certificate's files. The completed set counts as the success
/// it was, and its hooks are marked pending so they run for it. A failure here belongs to
/// this certificate alone. Returns whether there was anything to complete.
pub fn roll_forward(state: &StateDir, name: &str, rec: &mut CertRecord) -> Result<bool, String> {
    if !store::has_staged(state, name) {
        return Ok(false);
    }
    warn!(cert = %name, "completing an install that was interrupted");
    let fail = |e: String| format!("an interrupted install could not be completed: {e}");
    store::install(state, name).map_err(|e| fail(e.to_string()))?;
    let now = OffsetDateTime::now_utc();
    rec.hooks_pending = true;
    mark_installed(rec, now, None);
    state.save(name, rec).map_err(|e| fail(e.to_string()))?;
    store::finish(state, name).map_err(|e| fail(e.to_string()))?;
    Ok(true)
}

/// Records a completed install: the ladder is reset and the new set is the one we guard.
fn mark_installed(rec: &mut CertRecord, now: OffsetDateTime, serial: Option<&str>) {
    rec.failures = 0;
    rec.next_attempt_at = None;
    rec.last_error = None;
    rec.last_success_at = Some(now);
    rec.last_outcome = Some("renewed".into());
    rec.renewals_ok += 1;
    rec.installed_serial = serial.map(str::to_string);
    rec.damaged_since_install = false;
}

/// Records a certificate task that panicked as a failure on the retry ladder, so a bug
/// that panics every time cannot turn into an order loop. Returns the next attempt time.
pub fn record_panic(state: &StateDir, name: &str, what: &str) -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    let mut rec = state.load(name).unwrap_or_default();
    rec.failures += 1;
    rec.renewals_failed += 1;
    rec.last_failure_at = Some(now);
    let next = policy::next_attempt(rec.failures, now, policy::ErrorClass::Transient, None);
    rec.next_attempt_at = Some(next);
    rec.last_error = Some(format!(
        "internal error: the certificate task panicked: {what}"
    ));
    rec.last_outcome = Some("failed".into());
    if let Err(e) = state.save(name, &rec) {
        error!(cert = %name, "cannot record state: {e}");
    }
    next
}

/// Runs one renewal pass over the selected certificates.
pub async fn renew(cfg: Arc<Config>, opts: RenewOptions) -> Result<Vec<Outcome>, RunError> {
    let selected: Vec<CertConfig> = cfg
        .select(&opts.names)
        .map_err(RunError::Usage)?
        .into_iter()
        .cloned()
        .collect();
    if opts.dry_run {
        return Ok(dry_run(&cfg, &selected));
    }
    let state = StateDir::create(&cfg.state_dir)?;
    let _lock = state.lock("certkeeper renew")?;
    // Certificates not selected still get their interrupted installs completed, so no
    // half-installed set is left behind; the selected ones do it in their own task.
    for cert in cfg
        .certs
        .iter()
        .filter(|c| !selected.iter().any(|s| s.name == c.name))
    {
        let mut rec = state.load(&cert.name).unwrap_or_default();
        if let Err(e) = roll_forward(&state, &cert.name, &mut rec) {
            error!(cert = %cert.name, "{e}");
        }
    }
    let runner = Arc::new(Runner::new(cfg.clone(), state, Responders::default()));
    let force = opts.force;
    let mut tasks = tokio::task::JoinSet::new();
    let mut ids = std::collections::HashMap::new();
    for (i, cert) in selected.into_iter().enumerate() {
        let runner = runner.clone();
        let span = info_span!("cert", cert = %cert.name);
        let name = cert.name.clone();
        let handle = tasks
            .spawn(async move { (i, runner.process(&cert, force).await.outcome) }.instrument(span));
        ids.insert(handle.id(), (i, name));
    }
    let mut out = Vec::new();
    while let Some(r) = tasks.join_next_with_id().await {
        match r {
            Ok((_, v)) => out.push(v),
            Err(e) => {
                let Some((i, name)) = ids.get(&e.id()).cloned() else {
                    error!("a certificate task failed: {e}");
                    continue;
                };
                let what = e.to_string();
                error!(cert = %name, "certificate task panicked: {what}");
                let next = record_panic(&runner.state, &name, &what);
                out.push((
                    i,
                    Outcome {
                        name,
                        ok: false,
                        summary: format!(
                            "internal error (the task panicked: {what}); next attempt {}",
                            rfc3339(next)
                        ),
                    },
                ));
            }
        }
    }
    out.sort_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, o)| o).collect())
}

fn dry_run(cfg: &Config, certs: &[CertConfig]) -> Vec<Outcome> {
    let state = StateDir::open_readonly(&cfg.state_dir);
    let now = OffsetDateTime::now_utc();
    certs
        .iter()
        .map(|cert| {
            let rec = state.load(&cert.name).unwrap_or_default();
            let (_, d) = evaluate(cert, &rec, now);
            let mut line = if d.due {
                format!("{}: due, would renew now: {}", cert.name, d.reason)
            } else {
                format!(
                    "{}: not due, renew at {}: {}",
                    cert.name,
                    rfc3339(d.renew_at),
                    d.reason
                )
            };
            if d.due
                && let Some(next) = rec.next_attempt_at.filter(|t| *t > now)
            {
                line.push_str(&format!(
                    " (backing off until {} after {} failures)",
                    rfc3339(next),
                    rec.failures
                ));
            }
            println!("{line}");
            Outcome {
                name: cert.name.clone(),
                ok: true,
                summary: line,
            }
        })
        .collect()
}

/// How soon a failed reload hook is retried by a long-running process.
pub const HOOK_RETRY: Duration = Duration::from_secs(300);

/// How many times in a row the set we installed may be found destroyed (missing or
/// invalid) soon after its install before we stop re-ordering and report the conflict.
pub const MAX_DAMAGED_IN_A_ROW: u32 = 2;
/// "Soon after its install": damage found later than this counts as a one-off.
pub const DAMAGE_WINDOW: time::Duration = time::Duration::days(1);

impl Runner {
    /// Handles one certificate: complete an interrupted install, decide, respect the
    /// back-off, order, install, reload, and record. Returns what happened and when the
    /// certificate next needs attention.
    pub async fn process(&self, cert: &CertConfig, force: bool) -> CertResult {
        let now = OffsetDateTime::now_utc();
        let mut rec = match self.state.load(&cert.name) {
            Ok(r) => r,
            Err(e) => {
                error!("{e}");
                return failed(cert, e.to_string(), now + policy::backoff_delay(1));
            }
        };
        let (state, name) = (self.state.clone(), cert.name.clone());
        let rolled = tokio::task::spawn_blocking(move || {
            let r = roll_forward(&state, &name, &mut rec);
            (r, rec)
        })
        .await;
        let rolled = match rolled {
            Ok((Ok(rolled), r)) => {
                rec = r;
                rolled
            }
            Ok((Err(e), mut r)) => {
                error!("{e}");
                r.last_error = Some(e.clone());
                r.last_outcome = Some("install-failed".into());
                if let Err(se) = self.state.save(&cert.name, &r) {
                    error!("cannot record state: {se}");
                }
                return failed(cert, e, now + policy::backoff_delay(1));
            }
            Err(e) => return failed(cert, e.to_string(), now + policy::backoff_delay(1)),
        };
        // A certificate whose files another state_dir owns is refused, never ordered.
        if let Err(e) = self.claim(cert).await {
            error!("{e}");
            rec.last_error = Some(e.clone());
            rec.last_outcome = Some("conflict".into());
            if let Err(se) = self.state.save(&cert.name, &rec) {
                error!("cannot record state: {se}");
            }
            return failed(cert, e, now + policy::backoff_delay(1));
        }
        let (disk, fingerprint) = read_disk(cert, now).await;
        self.repair_modes(cert).await;
        if let OnDisk::Invalid { reason, .. } = &disk {
            warn!("installed files are not usable: {reason}");
        }
        if rolled && let Some(info) = disk.info() {
            rec.installed_serial = Some(info.serial.clone());
        }
        let damaged = note_damage(&mut rec, &disk, now);
        let ari = self.refresh_ari(cert, &disk, &mut rec, now).await;
        let decision = decide(cert, &disk, ari.as_ref(), &rec, now);
        let mut result = if !decision.due && !force {
            self.not_due(cert, &disk, &decision, &mut rec, now).await
        } else if let Some(next) = rec.next_attempt_at.filter(|t| *t > now && !force) {
            let msg = format!(
                "due ({}), but backing off after {} failed attempt(s) until {}; last error: {} (use --force to try now)",
                decision.reason,
                rec.failures,
                rfc3339(next),
                rec.last_error.as_deref().unwrap_or("unknown")
            );
            error!("{msg}");
            failed(cert, msg, next)
        } else if let Some(msg) = damaged.filter(|_| !force) {
            error!("{msg}");
            let next = now + policy::backoff_delay(rec.failures.max(1));
            rec.last_error = Some(msg.clone());
            rec.last_outcome = Some("conflict".into());
            failed(cert, msg, next)
        } else {
            self.renew_now(cert, &disk, &decision, &mut rec, force, now)
                .await
        };
        result.fingerprint = result.fingerprint.or(fingerprint);
        if let Err(e) = self.state.save(&cert.name, &rec) {
            error!("cannot record state: {e}");
            return failed(cert, e.to_string(), now + policy::backoff_delay(1));
        }
        result
    }

    /// Claims this certificate's existing files for our state_dir with the owner markers
    /// next to them (see [`crate::owner`]), off the async workers.
    async fn claim(&self, cert: &CertConfig) -> Result<(), String> {
        let (root, c) = (self.state.root().to_path_buf(), cert.clone());
        tokio::task::spawn_blocking(move || {
            crate::owner::claim(&root, &c).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()))
    }

    /// A key or bundle readable by others is rewritten with `key_mode` (a fresh copy
    /// through the store, so another name sharing the inode is not changed behind its
    /// owner's back). Failures are logged: the files still work, the next pass tries again.
    async fn repair_modes(&self, cert: &CertConfig) {
        let (state, c) = (self.state.clone(), cert.clone());
        let fixed = tokio::task::spawn_blocking(move || {
            if inventory::mode_warnings(&c).is_empty() {
                return Ok(Vec::new());
            }
            store::repair_modes(&state, &c)
        })
        .await;
        match fixed {
            Ok(Ok(paths)) => {
                for p in paths {
                    warn!(
                        "{} was readable by others; rewritten with mode {:04o}",
                        p.display(),
                        cert.key_mode
                    );
                }
            }
            Ok(Err(e)) => error!("cannot repair the mode of a private key file: {e}"),
            Err(e) => error!("cannot repair the mode of a private key file: {e}"),
        }
    }

    /// Not due: nothing to order, but reload hooks still owed for the installed set run.
    async fn not_due(
        &self,
        cert: &CertConfig,
        disk: &OnDisk,
        decision: &Decision,
        rec: &mut CertRecord,
        now: OffsetDateTime,
    ) -> CertResult {
        info!(
            renew_at = %rfc3339(decision.renew_at),
            "not due: {}",
            decision.reason
        );
        rec.last_outcome = Some("not-due".into());
        let mut outcome = Outcome {
            name: cert.name.clone(),
            ok: true,
            summary: format!("not due (renew at {})", rfc3339(decision.renew_at)),
        };
        if rec.hooks_pending
            && let Some(info) = disk.info()
        {
            outcome = run_hooks(cert, info, rec, "hooks retried").await;
        }
        CertResult {
            next_wake: self.next_wake(rec, decision.renew_at, now),
            outcome,
            installed: false,
            fingerprint: None,
        }
    }

    /// Due (or forced) and not backing off: reserve the outcome, order, install, reload.
    async fn renew_now(
        &self,
        cert: &CertConfig,
        disk: &OnDisk,
        decision: &Decision,
        rec: &mut CertRecord,
        force: bool,
        now: OffsetDateTime,
    ) -> CertResult {
        if force && !decision.due {
            info!(
                "renewing (forced; otherwise due at {})",
                rfc3339(decision.renew_at)
            );
        } else {
            info!("renewing: {}", decision.reason);
        }
        let permit = self
            .orders
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore is never closed");
        // A FIFO or directory where a file must go would make the install fail after the
        // CA issued: check first and spend no order on it.
        if let Err(e) = store::preflight(cert) {
            let msg = format!("not ordering: {e}");
            error!("{msg}");
            rec.last_error = Some(msg.clone());
            rec.last_outcome = Some("failed".into());
            return failed(cert, msg, now + policy::backoff_delay(rec.failures.max(1)));
        }
        let reservation = match Reservation::take(&self.state, &cert.name, rec) {
            Ok(r) => r,
            Err(e) => {
                let msg = format!(
                    "not ordering: the outcome could not be recorded in the state directory ({e}); an order whose failure cannot be recorded would be repeated on every run"
                );
                error!("{msg}");
                rec.last_error = Some(msg.clone());
                return failed(cert, msg, now + policy::backoff_delay(1));
            }
        };
        crate::fault::point("before-order");
        let obtained = self.obtain(cert, disk, rec, &reservation.installing).await;
        drop(permit);
        reservation.settle();
        match obtained {
            Ok((info, fingerprint)) => {
                let mut r = self.installed(cert, info, rec).await;
                r.fingerprint = Some(fingerprint);
                r
            }
            Err(failure) => {
                let at = OffsetDateTime::now_utc();
                rec.failures += 1;
                rec.renewals_failed += 1;
                rec.last_failure_at = Some(at);
                let next = policy::next_attempt(
                    rec.failures,
                    at,
                    policy::ErrorClass::Transient,
                    failure.retry_after,
                );
                rec.next_attempt_at = Some(next);
                rec.last_error = Some(failure.message.clone());
                rec.last_outcome = Some("failed".into());
                error!(
                    next_attempt = %rfc3339(next),
                    "renewal failed: {}",
                    failure.message
                );
                failed(cert, failure.message, next)
            }
        }
    }

    /// After a successful install: the new certificate's ARI window, then the hooks.
    async fn installed(
        &self,
        cert: &CertConfig,
        info: CertInfo,
        rec: &mut CertRecord,
    ) -> CertResult {
        info!(
            not_after = %rfc3339(info.not_after),
            serial = %info.serial,
            "installed new certificate"
        );
        // The ARI window of the new certificate (free when the CA has no ARI).
        let now = OffsetDateTime::now_utc();
        let disk = OnDisk::Present(info.clone());
        let ari = self.refresh_ari(cert, &disk, rec, now).await;
        rec.ari_hold_until = match ari {
            Some(w) if w.start <= now => {
                let until = rec
                    .ari_next_poll
                    .unwrap_or(now + crate::fault::scaled(ARI_MIN_POLL));
                warn!(
                    "the CA's ARI window for the certificate it just issued is already open; not renewing again before {}",
                    rfc3339(until)
                );
                Some(until)
            }
            _ => None,
        };
        // Files installed for the first time are claimed now.
        if let Err(e) = self.claim(cert).await {
            warn!("{e}");
        }
        let outcome = run_hooks(cert, &info, rec, "renewed").await;
        let next = decide(cert, &disk, ari.as_ref(), rec, now).renew_at;
        CertResult {
            next_wake: self.next_wake(rec, next, now),
            outcome,
            installed: true,
            fingerprint: None,
        }
    }

    /// The earliest of: the renewal time, the next ARI poll, a hook retry.
    fn next_wake(
        &self,
        rec: &CertRecord,
        renew_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> OffsetDateTime {
        let mut t = renew_at;
        if let Some(p) = rec.ari_next_poll {
            t = t.min(p);
        }
        if rec.hooks_pending {
            t = t.min(now + crate::fault::scaled(HOOK_RETRY));
        }
        t
    }
}

async fn run_hooks(
    cert: &CertConfig,
    info: &CertInfo,
    rec: &mut CertRecord,
    done: &str,
) -> Outcome {
    let event = HookEvent {
        event: "installed",
        name: cert.name.clone(),
        domains: cert.domains.clone(),
        cert_path: cert.cert_path.clone(),
        key_path: cert.key_path.clone(),
        chain_path: cert.chain_path.clone(),
        bundle_path: cert.bundle_path.clone(),
        not_after: rfc3339(info.not_after),
        serial: info.serial.clone(),
    };
    crate::fault::point("before-hooks");
    let ran = run_reload_hooks(
        &cert.reload,
        cert.reload_signal.as_ref(),
        &event,
        cert.hook_timeout,
    )
    .await;
    crate::fault::point("after-hooks");
    match ran {
        Ok(()) => {
            rec.hooks_pending = false;
            if done == "hooks retried" {
                rec.last_error = None;
                info!("reload hooks succeeded on retry");
            }
            Outcome {
                name: cert.name.clone(),
                ok: true,
                summary: format!("{done}; expires {}", rfc3339(info.not_after)),
            }
        }
        Err(e) => {
            rec.hooks_pending = true;
            rec.hook_failures += 1;
            let msg = format!("reload hook failed (will be retried next run): {e}");
            error!("{msg}");
            rec.last_error = Some(msg.clone());
            rec.last_outcome = Some("hook-failed".into());
            Outcome {
                name: cert.name.clone(),
                ok: false,
                summary: msg,
            }
        }
    }
}

/// Why an order failed, with the CA's Retry-After for the ladder.
struct Failure {
    message: String,
    retry_after: Option<OffsetDateTime>,
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self {
            message,
            retry_after: None,
        }
    }
}

impl From<AcmeError> for Failure {
    fn from(e: AcmeError) -> Self {
        Self {
            retry_after: e.retry_after(),
            message: e.to_string(),
        }
    }
}

impl Runner {
    /// Asks the CA for the ARI window when the cached one is stale; failures fall back to the
    /// cached window or the threshold, never fail the certificate.
    async fn refresh_ari(
        &self,
        cert: &CertConfig,
        disk: &OnDisk,
        rec: &mut CertRecord,
        now: OffsetDateTime,
    ) -> Option<AriWindow> {
        let info = disk.info()?;
        let cached = cached_ari(rec, disk);
        let fresh = rec.ari_next_poll.is_some_and(|t| t > now);
        if fresh && rec.ari_serial.as_deref() == Some(info.serial.as_str()) {
            return cached;
        }
        let ca = self.state.load_ca(&self.cfg.acme.directory).ok()?;
        if ca.ari_supported == Some(false)
            && ca
                .ari_checked_at
                .is_some_and(|t| now - t < time::Duration::days(1))
        {
            return None;
        }
        let acme = match self.acme().await {
            Ok(a) => a,
            Err(e) => {
                warn!("cannot check ARI, using the threshold: {e}");
                return cached;
            }
        };
        match acme.renewal_info(&info.leaf_der).await {
            Ok(AriLookup::Window(w, retry)) => {
                let retry = retry.clamp(crate::fault::scaled(ARI_MIN_POLL), ARI_MAX_POLL);
                rec.ari = Some(w);
                rec.ari_serial = Some(info.serial.clone());
                rec.ari_next_poll = Some(now + retry);
                if ca.ari_supported != Some(true) {
                    self.update_ca(&self.cfg.acme.directory, |c| {
                        c.ari_supported = Some(true);
                        c.ari_checked_at = Some(now);
                    });
                }
                info!(
                    cert = %cert.name,
                    window_start = %rfc3339(w.start),
                    window_end = %rfc3339(w.end),
                    next_poll = %format_duration(retry),
                    "ARI window"
                );
                Some(w)
            }
            Ok(AriLookup::Unsupported) => {
                if ca.ari_supported == Some(false) {
                    debug!("the CA still does not offer ARI");
                } else {
                    info!("the CA does not offer ARI; using the renew_before threshold");
                }
                self.update_ca(&self.cfg.acme.directory, |c| {
                    c.ari_supported = Some(false);
                    c.ari_checked_at = Some(now);
                });
                None
            }
            Ok(AriLookup::NoIdentifier) => {
                // Not the CA's fault: remember for this certificate only, and don't ask
                // again before the usual re-check.
                rec.ari = None;
                rec.ari_serial = Some(info.serial.clone());
                rec.ari_next_poll = Some(now + ARI_MAX_POLL);
                debug!("certificate has no Authority Key Identifier; no ARI for it");
                None
            }
            Err(e) => {
                warn!("ARI lookup failed, using the cached window or threshold: {e}");
                cached
            }
        }
    }

    /// Orders, verifies, stages and installs a new set. Nothing on disk changes unless the
    /// new set passed verification.
    async fn obtain(
        &self,
        cert: &CertConfig,
        disk: &OnDisk,
        rec: &mut CertRecord,
        installing: &Arc<std::sync::Mutex<bool>>,
    ) -> Result<(CertInfo, Fingerprint), Failure> {
        // A CA that asked us to wait (stored by `acme`) sets the next attempt.
        let acme = self.acme().await.map_err(|message| Failure {
            message,
            retry_after: crate::acme::ca_hold(&self.state, &self.cfg.acme.directory),
        })?;
        // Key generation is CPU-heavy (RSA-4096 takes seconds): off the async workers, so
        // the HTTP-01 responder and the other certificates keep going.
        let (kind, domains) = (cert.key_type, cert.domains.clone());
        let (key, csr) = tokio::task::spawn_blocking(move || {
            let key = keys::generate(kind).map_err(|e| e.to_string())?;
            let csr = keys::csr_der(&key, &domains).map_err(|e| e.to_string())?;
            Ok::<_, String>((key, csr))
        })
        .await
        .map_err(|e| Failure::from(format!("key generation failed: {e}")))??;
        let ca = self
            .state
            .load_ca(acme.directory())
            .map_err(|e| e.to_string())?;
        let replaces = match disk.info() {
            Some(info) if ca.ari_supported == Some(true) && !ca.replaces_unsupported => {
                Some(info.leaf_der.as_slice())
            }
            _ => None,
        };
        let req = OrderRequest {
            cert,
            csr_der: &csr,
            replaces,
        };
        let chain = match acme.order(&req, &self.responders).await {
            Ok(c) => c,
            Err(e) if e.is_account_gone() => {
                warn!("{e}; creating a new account and ordering again");
                self.forget_account().await;
                let acme = self.acme().await?;
                acme.order(&req, &self.responders).await?
            }
            Err(AcmeError::ReplacesIgnored { message, .. }) => {
                warn!(
                    "the CA ignored `replaces` ({message}); ordering again without it and not sending it to this CA again"
                );
                self.update_ca(acme.directory(), |c| c.replaces_unsupported = true);
                let req = OrderRequest {
                    replaces: None,
                    ..req
                };
                acme.order(&req, &self.responders).await?
            }
            Err(
                e @ AcmeError::Problem {
                    step: "new order", ..
                },
            ) if replaces.is_some() => {
                warn!("the CA rejected the order with `replaces` ({e}); ordering again without it");
                let req = OrderRequest {
                    replaces: None,
                    ..req
                };
                acme.order(&req, &self.responders).await?
            }
            Err(e) => return Err(e.into()),
        };
        let key_pem = key.serialize_pem();
        let now = OffsetDateTime::now_utc();
        let info = inventory::verify_set(key_pem.as_bytes(), chain.as_bytes(), &cert.domains, now)
            .map_err(|(e, _)| {
                format!("the CA's certificate failed verification, nothing installed: {e}")
            })?;
        let chain_pem = chain
            .match_indices("-----BEGIN CERTIFICATE-----")
            .nth(1)
            .map(|(i, _)| chain[i..].to_string())
            .unwrap_or_default();
        let set = NewSet {
            key_pem,
            fullchain_pem: chain,
            chain_pem,
        };
        let fingerprint = set_fingerprint(cert, &set);
        // Stage, install, record and finish run as one piece on a blocking thread: fsyncs
        // stay off the async workers, and a cancelled task (graceful shutdown) cannot stop
        // an install half-way, since a started blocking job always runs to its end.
        let (state, c, mut r, serial) = (
            self.state.clone(),
            cert.clone(),
            rec.clone(),
            info.serial.clone(),
        );
        let installing = installing.clone();
        let done = tokio::task::spawn_blocking(move || {
            *installing.lock().unwrap_or_else(|p| p.into_inner()) = true;
            let res = install_set(&state, &c, &set, &mut r, &serial);
            (res, r)
        })
        .await
        .map_err(|e| Failure::from(format!("install failed: {e}")))?;
        *rec = done.1;
        done.0?;
        Ok((info, fingerprint))
    }
}

/// Stages and installs a verified set, records it (hooks pending), then clears the
/// staging area. Blocking. A crash anywhere in here is completed by [`roll_forward`].
fn install_set(
    state: &StateDir,
    cert: &CertConfig,
    set: &NewSet,
    rec: &mut CertRecord,
    serial: &str,
) -> Result<(), Failure> {
    let err = |e: store::StoreError| Failure::from(format!("install failed: {e}"));
    store::stage(state, cert, set).map_err(err)?;
    crate::fault::point("staged");
    store::install(state, &cert.name).map_err(err)?;
    crate::fault::point("installed-before-record");
    rec.hooks_pending = true;
    mark_installed(rec, OffsetDateTime::now_utc(), Some(serial));
    state
        .save(&cert.name, rec)
        .map_err(|e| Failure::from(e.to_string()))?;
    crate::fault::point("recorded-before-finish");
    store::finish(state, &cert.name).map_err(err)?;
    crate::fault::point("finished");
    Ok(())
}

/// The fingerprint the installed files will have: the same bytes the store writes, so the
/// daemon recognises the echo of this install without reading the files back.
fn set_fingerprint(cert: &CertConfig, set: &NewSet) -> Fingerprint {
    let bundle = format!("{}{}", set.key_pem, set.fullchain_pem);
    let mut contents = vec![
        Some(set.fullchain_pem.as_bytes()),
        Some(set.key_pem.as_bytes()),
    ];
    if cert.chain_path.is_some() {
        contents.push(Some(set.chain_pem.as_bytes()));
    }
    if cert.bundle_path.is_some() {
        contents.push(Some(bundle.as_bytes()));
    }
    fingerprint_of(contents)
}

/// One row of `status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusRow {
    /// Certificate name.
    pub name: String,
    /// Configured names.
    pub domains: Vec<String>,
    /// Expiry of the installed certificate.
    pub not_after: Option<String>,
    /// Seconds until expiry (negative if expired).
    pub remaining_seconds: Option<i64>,
    /// When renewal is scheduled.
    pub renew_at: String,
    /// Why `renew_at` is what it is.
    pub reason: String,
    /// Which rule set it.
    pub rule: policy::Rule,
    /// valid, due, missing, invalid, expired.
    pub state: CertState,
    /// Serial of the installed certificate.
    pub serial: Option<String>,
    /// Last recorded error.
    pub last_error: Option<String>,
    /// Last run's outcome.
    pub last_outcome: Option<String>,
    /// When a certificate was last installed.
    pub last_success: Option<String>,
    /// Consecutive failures.
    pub failures: u32,
    /// Retry ladder: no order before this.
    pub next_attempt: Option<String>,
    /// Reload hooks still owed for the installed set.
    pub hooks_pending: bool,
    /// When the last attempt failed.
    pub last_failure: Option<String>,
    /// Successful renewals recorded in the state.
    pub renewals_ok: u64,
    /// Failed renewal attempts recorded in the state.
    pub renewals_failed: u64,
    /// Failed reload hook runs recorded in the state.
    pub hook_failures: u64,
    /// The CA's ARI window for the installed certificate, if known: [start, end].
    pub ari_window: Option<[String; 2]>,
    /// When the ARI window will be fetched again.
    pub ari_next_poll: Option<String>,
    /// Problems with the files that do not stop renewal, e.g. a key readable by others.
    pub warnings: Vec<String>,
    /// Unix timestamps of the above, for metrics.
    #[serde(skip)]
    pub times: RowTimes,
}

/// The row's times as Unix seconds, for metrics.
#[derive(Debug, Clone, Default)]
pub struct RowTimes {
    /// not_after.
    pub not_after: Option<i64>,
    /// renew_at.
    pub renew_at: i64,
    /// Last success.
    pub last_success: Option<i64>,
    /// Last failure.
    pub last_failure: Option<i64>,
}

/// Builds the status rows; reads files and state only, never the network.
pub fn status(cfg: &Config, now: OffsetDateTime) -> Vec<StatusRow> {
    let state = StateDir::open_readonly(&cfg.state_dir);
    cfg.certs
        .iter()
        .map(|cert| {
            let (rec, rec_err) = match state.load(&cert.name) {
                Ok(r) => (r, None),
                Err(e) => (CertRecord::default(), Some(e.to_string())),
            };
            let (disk, d) = evaluate(cert, &rec, now);
            let info = disk.info();
            let ari_window = cached_ari(&rec, &disk).map(|w| [rfc3339(w.start), rfc3339(w.end)]);
            StatusRow {
                name: cert.name.clone(),
                domains: cert.domains.clone(),
                not_after: info.map(|i| rfc3339(i.not_after)),
                remaining_seconds: info.map(|i| (i.not_after - now).whole_seconds()),
                renew_at: rfc3339(d.renew_at),
                reason: d.reason,
                rule: d.rule,
                state: d.state,
                serial: info.map(|i| i.serial.clone()),
                last_error: rec_err.or(rec.last_error),
                last_outcome: rec.last_outcome,
                last_success: rec.last_success_at.map(rfc3339),
                failures: rec.failures,
                next_attempt: rec.next_attempt_at.filter(|t| *t > now).map(rfc3339),
                hooks_pending: rec.hooks_pending,
                last_failure: rec.last_failure_at.map(rfc3339),
                renewals_ok: rec.renewals_ok,
                renewals_failed: rec.renewals_failed,
                hook_failures: rec.hook_failures,
                ari_window,
                ari_next_poll: rec.ari_next_poll.map(rfc3339),
                warnings: inventory::mode_warnings(cert),
                times: RowTimes {
                    not_after: info.map(|i| i.not_after.unix_timestamp()),
                    renew_at: d.renew_at.unix_timestamp(),
                    last_success: rec.last_success_at.map(|t| t.unix_timestamp()),
                    last_failure: rec.last_failure_at.map(|t| t.unix_timestamp()),
                },
            }
        })
        .collect()
}

/// Renders the status table for humans.
pub fn status_table(rows: &[StatusRow]) -> String {
    let remaining = |r: &StatusRow| match r.remaining_seconds {
        Some(s) if s >= 0 => format_duration(Duration::from_secs(s as u64)),
        Some(s) => format!("-{}", format_duration(Duration::from_secs((-s) as u64))),
        None => "-".into(),
    };
    let header = [
        "NAME",
        "DOMAINS",
        "NOT AFTER",
        "REMAINING",
        "RENEW AT",
        "STATE",
        "REASON",
        "LAST ERROR",
    ];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        let mut err = r.last_error.clone().unwrap_or_else(|| "-".into());
        if let Some(n) = &r.next_attempt {
            err = format!("{err} (next attempt {n})");
        }
        table.push(vec![
            r.name.clone(),
            r.domains.join(","),
            r.not_after.clone().unwrap_or_else(|| "-".into()),
            remaining(r),
            r.renew_at.clone(),
            r.state.as_str().to_string(),
            r.reason.clone(),
            err,
        ]);
    }
    let widths: Vec<usize> = (0..header.len() - 1)
        .map(|c| {
            table
                .iter()
                .map(|row| row[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &table {
        for (c, cell) in row.iter().enumerate() {
            if c + 1 < row.len() {
                out.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            } else {
                out.push_str(cell);
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, RngCore};

    /// The jitter must not move when Rust or `rand` is upgraded: these values are pinned.
    #[test]
    fn jitter_is_stable_across_releases() {
        let mut a = jitter_rng_on(b"host-a", "www", Some("01ab"));
        let first = a.next_u64();
        let mut again = jitter_rng_on(b"host-a", "www", Some("01ab"));
        assert_eq!(first, again.next_u64());
        assert_eq!(
            first, 0x69cd_c22d_e8dd_80cb,
            "pinned value changed: {first:#x}"
        );
        // Field boundaries matter, and so do host, name and serial.
        let others = [
            jitter_rng_on(b"host-b", "www", Some("01ab")).next_u64(),
            jitter_rng_on(b"host-a", "api", Some("01ab")).next_u64(),
            jitter_rng_on(b"host-a", "www", Some("01ac")).next_u64(),
            jitter_rng_on(b"host-a", "www", None).next_u64(),
            jitter_rng_on(b"host-aw", "ww", Some("01ab")).next_u64(),
        ];
        for o in others {
            assert_ne!(o, first);
        }
        let x: f64 = jitter_rng_on(b"h", "n", None).random();
        assert!((0.0..1.0).contains(&x));
    }

    fn info(serial: &str) -> CertInfo {
        CertInfo {
            not_before: OffsetDateTime::UNIX_EPOCH,
            not_after: OffsetDateTime::UNIX_EPOCH + time::Duration::days(90),
            serial: serial.into(),
            sans: vec!["a.example".into()],
            leaf_der: vec![],
            chain_len: 1,
        }
    }

    #[test]
    fn a_set_destroyed_after_every_install_is_reported_not_reordered() {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(10);
        let gone = OnDisk::Missing("x does not exist".into());
        let mut rec = CertRecord::default();
        // Never installed by us: a missing file is simply due, never a conflict.
        assert_eq!(note_damage(&mut rec, &gone, now), None);
        assert_eq!(rec.damaged_in_a_row, 0);

        mark_installed(&mut rec, now, Some("aa"));
        // First time our set is gone: one re-order is allowed (someone deleted it).
        assert_eq!(note_damage(&mut rec, &gone, now), None);
        // Seen again on later passes (e.g. the CA is down): still counted once.
        assert_eq!(note_damage(&mut rec, &gone, now), None);
        assert_eq!(rec.damaged_in_a_row, 1);

        mark_installed(&mut rec, now, Some("bb"));
        let bad = OnDisk::Invalid {
            reason: "out/a.crt: names missing".into(),
            info: None,
        };
        let msg = note_damage(&mut rec, &bad, now).expect("second time in a row is reported");
        assert!(
            msg.contains("2 times in a row") && msg.contains("names missing"),
            "{msg}"
        );
        assert!(msg.contains("serial bb"), "{msg}");

        // Our set found intact resets the count.
        mark_installed(&mut rec, now, Some("cc"));
        assert_eq!(
            note_damage(&mut rec, &OnDisk::Present(info("cc")), now),
            None
        );
        assert_eq!(rec.damaged_in_a_row, 0);
        assert_eq!(note_damage(&mut rec, &gone, now), None);

        // Damage found long after the install is a one-off, not a conflict.
        let mut rec = CertRecord::default();
        mark_installed(&mut rec, now, Some("aa"));
        let _ = note_damage(&mut rec, &gone, now);
        mark_installed(&mut rec, now, Some("bb"));
        assert_eq!(
            note_damage(&mut rec, &gone, now + time::Duration::days(3)),
            None
        );
    }

    #[test]
    fn reservation_records_a_failure_before_the_order_and_undoes_it_on_cancel() {
        let dir = tempfile::tempdir().unwrap();
        let st = StateDir::create(dir.path()).unwrap();
        let rec = CertRecord {
            renewals_ok: 3,
            ..Default::default()
        };
        st.save("www", &rec).unwrap();

        // Taken and never settled (the process dies here): a failure with a back-off.
        let r = Reservation::take(&st, "www", &rec).unwrap();
        let on_disk = st.load("www").unwrap();
        assert_eq!(on_disk.failures, 1);
        assert!(on_disk.next_attempt_at.is_some());
        assert!(
            on_disk
                .last_error
                .as_deref()
                .unwrap()
                .contains("interrupted")
        );
        std::mem::forget(r);
        assert_eq!(st.load("www").unwrap().failures, 1);

        // Dropped unsettled (a cancelled task): the record is put back.
        st.save("www", &rec).unwrap();
        drop(Reservation::take(&st, "www", &rec).unwrap());
        assert_eq!(st.load("www").unwrap(), rec);

        // Dropped after an install was recorded: that record stands.
        let r = Reservation::take(&st, "www", &rec).unwrap();
        let mut done = rec.clone();
        mark_installed(&mut done, OffsetDateTime::now_utc(), Some("aa"));
        st.save("www", &done).unwrap();
        drop(r);
        assert_eq!(st.load("www").unwrap(), done);
    }

    #[test]
    fn reservation_fails_when_the_state_cannot_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let st = StateDir::create(dir.path()).unwrap();
        // A directory where the record file should be: the save fails like a full disk.
        std::fs::create_dir(dir.path().join("certs/www.json")).unwrap();
        assert!(Reservation::take(&st, "www", &CertRecord::default()).is_err());
    }

    fn runner(dir: &std::path::Path) -> Runner {
        let src = format!(
            "state_dir = \"{d}/state\"\n[acme]\ndirectory = \"https://127.0.0.1:1/dir\"\n[[cert]]\nname = \"t\"\ndomains = [\"a.example\"]\ncert_path = \"{d}/c.pem\"\nkey_path = \"{d}/k.pem\"\nhttp01_listen = \"127.0.0.1:1\"\n",
            d = dir.display()
        );
        let cfg = Config::from_str_at(&src, std::path::Path::new("t.toml"), dir).unwrap();
        let st = StateDir::create(&dir.join("state")).unwrap();
        Runner::new(Arc::new(cfg), st, Responders::default())
    }

    /// Defect 11: a config reload must not hand out a second set of order slots while
    /// tasks of the old config still hold the first.
    #[test]
    fn a_reconfigured_runner_shares_order_slots_and_the_ca_lock() {
        let dir = tempfile::tempdir().unwrap();
        let r = runner(dir.path());
        let r2 = r.reconfigured(r.cfg.clone());
        assert!(Arc::ptr_eq(&r.orders, &r2.orders));
        assert!(r.state.shares_ca_lock(&r2.state));
        let _held = r.orders.try_acquire_many(MAX_CONCURRENT as u32).unwrap();
        assert!(
            r2.orders.try_acquire().is_err(),
            "the new runner got its own slots"
        );
    }

    /// Defect 11: concurrent certificate tasks updating the shared per-CA record must not
    /// lose each other's facts (load-modify-save without a lock did).
    #[test]
    fn concurrent_ca_record_updates_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let r = runner(dir.path());
        let directory = r.cfg.acme.directory.clone();
        std::thread::scope(|s| {
            for t in 0..4 {
                let (r, directory) = (&r, directory.clone());
                s.spawn(move || {
                    for i in 0..50 {
                        if t == 0 && i == 25 {
                            r.update_ca(&directory, |c| c.replaces_unsupported = true);
                        } else {
                            r.update_ca(&directory, |c| {
                                c.ari_checked_at = Some(OffsetDateTime::now_utc());
                            });
                        }
                    }
                });
            }
        });
        let ca = r.state.load_ca(&directory).unwrap();
        assert!(ca.replaces_unsupported, "a concurrent update was lost");
        assert!(ca.ari_checked_at.is_some());
    }

    #[test]
    fn fingerprints_tell_contents_and_absence_apart() {
        let a = fingerprint_of([Some(&b"x"[..]), None]);
        assert_eq!(a, fingerprint_of([Some(&b"x"[..]), None]));
        assert_ne!(a, fingerprint_of([Some(&b"x"[..]), Some(&b""[..])]));
        assert_ne!(a, fingerprint_of([None, Some(&b"x"[..])]));
        assert_ne!(
            fingerprint_of([Some(&b"ab"[..]), Some(&b"c"[..])]),
            fingerprint_of([Some(&b"a"[..]), Some(&b"bc"[..])])
        );
    }
}
