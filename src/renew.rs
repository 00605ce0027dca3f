//! One renewal pass (`certkeeper renew`) and the read-only views built on the same facts
//! (`status`, `--dry-run`).
//!
//! Order of work: take the lock, roll forward any interrupted install, then handle every
//! certificate in its own task: read the disk, consult ARI (only when its cached answer is
//! stale), decide, respect the retry ladder, order, verify, stage, install, run hooks, and
//! record the outcome. Certificates share nothing mutable but the ACME account and the lock,
//! so one failing or slow certificate never stops the others.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::acme::{Acme, AcmeError, AriLookup, OrderRequest};
use crate::challenge::Responders;
use crate::config::{CertConfig, Config, format_duration};
use crate::hooks::{HookEvent, run_reload_hooks};
use crate::inventory::{CertInfo, OnDisk};
use crate::policy::{self, AriWindow, CertState, Decision};
use crate::state::{CertRecord, StateDir, StateError};
use crate::store::{self, NewSet};
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
pub fn jitter_rng(name: &str, serial: Option<&str>) -> StdRng {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    hostname::get().unwrap_or_default().hash(&mut h);
    name.hash(&mut h);
    serial.hash(&mut h);
    StdRng::seed_from_u64(h.finish())
}

/// RFC 3339 in UTC, second precision: how every time is shown.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
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
    /// the CA all at the same moment.
    orders: Semaphore,
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
}

impl Runner {
    /// A runner over a validated config and an opened state directory.
    pub fn new(cfg: Arc<Config>, state: StateDir, responders: Responders) -> Self {
        Self {
            cfg,
            state,
            responders,
            acme: tokio::sync::Mutex::new(AcmeCache::Empty),
            orders: Semaphore::new(MAX_CONCURRENT),
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
            AcmeCache::Failed(e, at) if at.elapsed() < CONNECT_FAILURE_TTL => {
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

/// Completes installs that a crash interrupted; must run before anything else touches the
/// certificate's files. Marks hooks as pending so they run for the completed set.
pub fn roll_forward(state: &StateDir, cfg: &Config) -> Result<(), String> {
    for cert in &cfg.certs {
        if !store::has_staged(state, &cert.name) {
            continue;
        }
        warn!(cert = %cert.name, "completing an install that was interrupted");
        store::install(state, &cert.name).map_err(|e| format!("{}: {e}", cert.name))?;
        let mut rec = state.load(&cert.name).map_err(|e| e.to_string())?;
        rec.hooks_pending = true;
        state.save(&cert.name, &rec).map_err(|e| e.to_string())?;
        store::finish(state, &cert.name).map_err(|e| format!("{}: {e}", cert.name))?;
    }
    Ok(())
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
    // A certificate whose files another state_dir owns is refused, never ordered.
    let mut refused = Vec::new();
    let selected: Vec<CertConfig> = selected
        .into_iter()
        .filter(|c| match crate::owner::claim(state.root(), c) {
            Ok(()) => true,
            Err(e) => {
                error!(cert = %c.name, "{e}");
                refused.push(Outcome {
                    name: c.name.clone(),
                    ok: false,
                    summary: e.to_string(),
                });
                false
            }
        })
        .collect();
    let claimed = selected.clone();
    let state_root = state.root().to_path_buf();
    if let Err(e) = roll_forward(&state, &cfg) {
        // Do not touch anything else while an install is half done.
        error!("cannot complete an interrupted install: {e}");
        return Ok(selected
            .iter()
            .map(|c| Outcome {
                name: c.name.clone(),
                ok: false,
                summary: format!("interrupted install could not be completed: {e}"),
            })
            .collect());
    }
    let runner = Arc::new(Runner::new(cfg.clone(), state, Responders::default()));
    let force = opts.force;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, cert) in selected.into_iter().enumerate() {
        let runner = runner.clone();
        let span = info_span!("cert", cert = %cert.name);
        tasks
            .spawn(async move { (i, runner.process(&cert, force).await.outcome) }.instrument(span));
    }
    let mut out = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(v) => out.push(v),
            Err(e) => error!("certificate task panicked: {e}"),
        }
    }
    out.sort_by_key(|(i, _)| *i);
    // Claim what was installed for the first time in this pass.
    for c in &claimed {
        if let Err(e) = crate::owner::claim(state_root.as_path(), c) {
            warn!(cert = %c.name, "{e}");
        }
    }
    Ok(refused
        .into_iter()
        .chain(out.into_iter().map(|(_, o)| o))
        .collect())
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

impl Runner {
    /// Handles one certificate: decide, respect the back-off, order, install, reload, and
    /// record. Returns what happened and when the certificate next needs attention.
    pub async fn process(&self, cert: &CertConfig, force: bool) -> CertResult {
        let now = OffsetDateTime::now_utc();
        let fail = |summary: String, next_wake: OffsetDateTime| CertResult {
            outcome: Outcome {
                name: cert.name.clone(),
                ok: false,
                summary,
            },
            next_wake,
            installed: false,
        };
        let mut rec = match self.state.load(&cert.name) {
            Ok(r) => r,
            Err(e) => {
                error!("{e}");
                return fail(e.to_string(), now + policy::backoff_delay(1));
            }
        };
        let disk = inventory::inspect(cert, now);
        if let OnDisk::Invalid { reason, .. } = &disk {
            warn!("installed files are not usable: {reason}");
        }
        let ari = self.refresh_ari(cert, &disk, &mut rec, now).await;
        let decision = decide(cert, &disk, ari.as_ref(), &rec, now);
        let result = if !decision.due && !force {
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
                outcome = run_hooks(cert, info, &mut rec, "hooks retried").await;
            }
            CertResult {
                next_wake: self.next_wake(&rec, decision.renew_at, now),
                outcome,
                installed: false,
            }
        } else if let Some(next) = rec.next_attempt_at.filter(|t| *t > now && !force) {
            let msg = format!(
                "due ({}), but backing off after {} failed attempt(s) until {}; last error: {} (use --force to try now)",
                decision.reason,
                rec.failures,
                rfc3339(next),
                rec.last_error.as_deref().unwrap_or("unknown")
            );
            error!("{msg}");
            fail(msg, next)
        } else {
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
                .acquire()
                .await
                .expect("semaphore is never closed");
            let obtained = self.obtain(cert, &disk, &mut rec).await;
            drop(permit);
            match obtained {
                Ok(info) => {
                    rec.failures = 0;
                    rec.next_attempt_at = None;
                    rec.last_error = None;
                    rec.last_success_at = Some(OffsetDateTime::now_utc());
                    rec.last_outcome = Some("renewed".into());
                    rec.renewals_ok += 1;
                    info!(
                        not_after = %rfc3339(info.not_after),
                        serial = %info.serial,
                        "installed new certificate"
                    );
                    // The ARI window of the new certificate (free when the CA has no ARI).
                    let now = OffsetDateTime::now_utc();
                    let disk = OnDisk::Present(info.clone());
                    let ari = self.refresh_ari(cert, &disk, &mut rec, now).await;
                    rec.ari_hold_until = match ari {
                        Some(w) if w.start <= now => {
                            let until = rec.ari_next_poll.unwrap_or(now + ARI_MIN_POLL);
                            warn!(
                                "the CA's ARI window for the certificate it just issued is already open; not renewing again before {}",
                                rfc3339(until)
                            );
                            Some(until)
                        }
                        _ => None,
                    };
                    let outcome = run_hooks(cert, &info, &mut rec, "renewed").await;
                    let next = decide(cert, &disk, ari.as_ref(), &rec, now).renew_at;
                    CertResult {
                        next_wake: self.next_wake(&rec, next, now),
                        outcome,
                        installed: true,
                    }
                }
                Err(failure) => {
                    let at = OffsetDateTime::now_utc();
                    rec.failures += 1;
                    rec.renewals_failed += 1;
                    rec.last_failure_at = Some(at);
                    let next = policy::next_attempt(rec.failures, at, failure.retry_after);
                    rec.next_attempt_at = Some(next);
                    rec.last_error = Some(failure.message.clone());
                    rec.last_outcome = Some("failed".into());
                    error!(
                        next_attempt = %rfc3339(next),
                        "renewal failed: {}",
                        failure.message
                    );
                    fail(failure.message, next)
                }
            }
        };
        if let Err(e) = self.state.save(&cert.name, &rec) {
            error!("cannot record state: {e}");
            return fail(e.to_string(), now + policy::backoff_delay(1));
        }
        result
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
            t = t.min(now + HOOK_RETRY);
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
    match run_reload_hooks(
        &cert.reload,
        cert.reload_signal.as_ref(),
        &event,
        cert.hook_timeout,
    )
    .await
    {
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
        let mut ca = self.state.load_ca(&self.cfg.acme.directory).ok()?;
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
                let retry = retry.clamp(ARI_MIN_POLL, ARI_MAX_POLL);
                rec.ari = Some(w);
                rec.ari_serial = Some(info.serial.clone());
                rec.ari_next_poll = Some(now + retry);
                if ca.ari_supported != Some(true) {
                    ca.ari_supported = Some(true);
                    ca.ari_checked_at = Some(now);
                    let _ = self.state.save_ca(&ca);
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
                ca.ari_supported = Some(false);
                ca.ari_checked_at = Some(now);
                let _ = self.state.save_ca(&ca);
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
    ) -> Result<CertInfo, Failure> {
        let acme = self.acme().await?;
        let key = keys::generate(cert.key_type)?;
        let csr = keys::csr_der(&key, &cert.domains)?;
        let mut ca = self
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
                ca.replaces_unsupported = true;
                self.state.save_ca(&ca).map_err(|e| e.to_string())?;
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
        let err = |e: store::StoreError| Failure::from(format!("install failed: {e}"));
        store::stage(&self.state, cert, &set).map_err(err)?;
        store::install(&self.state, &cert.name).map_err(err)?;
        rec.hooks_pending = true;
        self.state
            .save(&cert.name, rec)
            .map_err(|e| Failure::from(e.to_string()))?;
        store::finish(&self.state, &cert.name).map_err(err)?;
        Ok(info)
    }
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
