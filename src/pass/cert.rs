//! One certificate's pass, as small named steps: prepare (load the record, complete an
//! interrupted install, claim the files), look (read the disk, repair key modes, notice
//! damage, refresh ARI, decide), act (nothing due, backing off, conflict, or renew), and
//! record.

use time::OffsetDateTime;
use tracing::{error, info, warn};

use super::record::{note_damage, note_error, roll_forward};
use super::reload::run_hooks;
use super::verify::{Patience, cap_wake};
use super::{CertResult, DiskLook, Fingerprint, HOOK_RETRY, Outcome, PassError, Runner};
use crate::config::CertConfig;
use crate::inventory::{CertInfo, OnDisk};
use crate::policy::{self, AriWindow, Decision};
use crate::state::CertRecord;
use crate::timefmt::rfc3339;
use crate::{owner, store};

/// What the look step found.
struct Look {
    disk: OnDisk,
    fingerprint: Option<Fingerprint>,
    decision: Decision,
    damaged: Option<String>,
}

impl Runner {
    /// Handles one certificate: complete an interrupted install, decide, respect the
    /// back-off, order, install, reload, and record. Returns what happened and when the
    /// certificate next needs attention.
    pub async fn process(&self, cert: &CertConfig, force: bool) -> CertResult {
        self.process_in(cert, force, None).await
    }

    /// [`Runner::process`] holding a look slot of the pass, given back before the
    /// certificate waits for an order slot: a certificate being renewed never keeps
    /// the ones behind it from being looked at.
    pub(super) async fn process_in(
        &self,
        cert: &CertConfig,
        force: bool,
        mut look_slot: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> CertResult {
        let now = self.now();
        let (mut rec, rolled) = match self.prepare(cert, now).await {
            Ok(r) => r,
            Err(failed) => return failed,
        };
        let loaded = rec.clone();
        let look = self.look(cert, &mut rec, rolled, now).await;
        if look.decision.due || force {
            look_slot.take();
        }
        let mut result = self.act(cert, &look, &mut rec, force, now).await;
        result.fingerprint = result.fingerprint.or(look.fingerprint);
        // An unchanged record is not written again: at 10,000 certificates, a no-op pass
        // would otherwise spend its time in fsync.
        if rec == loaded {
            return result;
        }
        if let Err(e) = self.save(&cert.name, rec).await {
            error!("cannot record state: {e}");
            return CertResult::failed(cert, e.to_string(), now + policy::backoff_delay(1));
        }
        result
    }

    /// Loads the record, completes an interrupted install and claims the files. Returns
    /// the record and whether an install was completed, or the failed result.
    async fn prepare(
        &self,
        cert: &CertConfig,
        now: OffsetDateTime,
    ) -> Result<(CertRecord, bool), CertResult> {
        let retry = now + policy::backoff_delay(1);
        // Reading the record and completing an install read, write and fsync: off the
        // async workers.
        // The owner markers are claimed in the same trip to the blocking pool: at 10,000
        // certificates, each extra trip costs more than the work it carries.
        let (state, c, me) = (self.state.clone(), cert.clone(), self.owner_id.clone());
        let loaded = tokio::task::spawn_blocking(move || {
            let mut rec = state.load(&c.name)?;
            let r = roll_forward(&state, &c.name, &mut rec, now);
            let claimed = owner::claim_as(&me, &c).map_err(|e| PassError::Conflict(e.to_string()));
            Ok::<_, crate::state::StateError>((r, rec, claimed))
        })
        .await
        .map_err(|e| CertResult::failed(cert, e.to_string(), retry))?;
        let rolled = loaded.map_err(|e| {
            error!("{e}");
            CertResult::failed(cert, e.to_string(), retry)
        })?;
        let (rolled, rec, claimed) = match rolled {
            (Ok(rolled), rec, claimed) => (rolled, rec, claimed),
            (Err(e), rec, _) => return Err(self.refuse(cert, rec, &e, "install-failed", retry)),
        };
        // A certificate whose files another state_dir owns is refused, never ordered.
        if let Err(e) = claimed {
            return Err(self.refuse(cert, rec, &e, "conflict", retry));
        }
        Ok((rec, rolled))
    }

    /// Records an error that stops this certificate before anything is decided.
    fn refuse(
        &self,
        cert: &CertConfig,
        mut rec: CertRecord,
        e: &PassError,
        outcome: &str,
        retry: OffsetDateTime,
    ) -> CertResult {
        error!("{e}");
        note_error(&mut rec, e, outcome);
        if let Err(se) = self.state.save(&cert.name, &rec) {
            error!("cannot record state: {se}");
        }
        CertResult::failed(cert, e.to_string(), retry)
    }

    /// Reads the disk, repairs key modes, notices damage, refreshes ARI and decides.
    async fn look(
        &self,
        cert: &CertConfig,
        rec: &mut CertRecord,
        rolled: bool,
        now: OffsetDateTime,
    ) -> Look {
        let (disk, fingerprint) = match read_disk(self, cert, rec.verified_set.clone(), now).await {
            Some(d) => {
                if d.loose_modes {
                    self.repair_modes(cert).await;
                }
                rec.verified_set = d.verified;
                (d.disk, Some(d.fingerprint))
            }
            None => {
                let reason = "reading the files failed".to_string();
                (OnDisk::Invalid { reason, info: None }, None)
            }
        };
        if let OnDisk::Invalid { reason, .. } = &disk {
            warn!("installed files are not usable: {reason}");
        }
        if rolled && let Some(info) = disk.info() {
            rec.installed_serial = Some(info.serial.clone());
        }
        let damaged = note_damage(rec, &disk, now);
        let ari = self.refresh_ari(cert, &disk, rec, now).await;
        let decision = decide(cert, &disk, ari.as_ref(), rec, now);
        Look {
            disk,
            fingerprint,
            decision,
            damaged,
        }
    }

    /// Not due, backing off, a conflict, or renew now.
    async fn act(
        &self,
        cert: &CertConfig,
        look: &Look,
        rec: &mut CertRecord,
        force: bool,
        now: OffsetDateTime,
    ) -> CertResult {
        // Fleet mode: the fleet's set, when it differs from the files, is installed
        // instead of anything being decided here.
        if let Some(adopted) = self.fleet_adopt(cert, &look.disk, rec).await {
            return adopted;
        }
        let decision = &look.decision;
        if !decision.due && !force {
            return self.not_due(cert, &look.disk, decision, rec, now).await;
        }
        if let Some(next) = rec.next_attempt_at.filter(|t| *t > now && !force) {
            let msg = format!(
                "due ({}), but backing off after {} failed attempt(s) until {}; last error: {} (use --force to try now)",
                decision.reason,
                rec.failures,
                rfc3339(next),
                rec.last_error.as_deref().unwrap_or("unknown")
            );
            error!("{msg}");
            return CertResult::failed(cert, msg, next);
        }
        if let Some(msg) = look.damaged.clone().filter(|_| !force) {
            let e = PassError::Conflict(msg);
            error!("{e}");
            note_error(rec, &e, "conflict");
            let next = now + policy::backoff_delay(rec.failures.max(1));
            return CertResult::failed(cert, e.to_string(), next);
        }
        self.renew_now(cert, &look.disk, decision, rec, force, now)
            .await
    }

    /// Claims this certificate's existing files for our state_dir with the owner markers
    /// next to them (see [`crate::owner`]), off the async workers.
    pub(super) async fn claim(&self, cert: &CertConfig) -> Result<(), PassError> {
        let (me, c) = (self.owner_id.clone(), cert.clone());
        tokio::task::spawn_blocking(move || owner::claim_as(&me, &c).map_err(|e| e.to_string()))
            .await
            .unwrap_or_else(|e| Err(e.to_string()))
            .map_err(PassError::Conflict)
    }

    /// A key or bundle readable by others is rewritten with `key_mode` (a fresh copy
    /// through the store, so another name sharing the inode is not changed behind its
    /// owner's back). Failures are logged: the files still work, the next pass tries again.
    async fn repair_modes(&self, cert: &CertConfig) {
        let (state, c) = (self.state.clone(), cert.clone());
        let fixed = tokio::task::spawn_blocking(move || {
            store::repair_modes(&state, &c).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match fixed {
            Ok(paths) => {
                for p in paths {
                    warn!(
                        "{} was readable by others; rewritten with mode {:04o}",
                        p.display(),
                        cert.key_mode
                    );
                }
            }
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
        if let Some(info) = disk.info() {
            outcome = self
                .verify_served(cert, info, rec, outcome, Patience::Once)
                .await;
        }
        CertResult {
            next_wake: cap_wake(cert, next_wake(rec, decision.renew_at, now), now),
            outcome,
            installed: false,
            fingerprint: None,
        }
    }

    /// After a successful install: the new certificate's ARI window, then the hooks.
    pub(super) async fn installed(
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
        let now = self.now();
        let disk = OnDisk::Present(info.clone());
        let ari = self.refresh_ari(cert, &disk, rec, now).await;
        rec.ari_hold_until = match ari {
            Some(w) if w.start <= now => {
                let until = rec
                    .ari_next_poll
                    .unwrap_or(now + super::ari::ari_min_poll());
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
        let outcome = self
            .verify_served(cert, &info, rec, outcome, Patience::UntilTimeout)
            .await;
        let next = decide(cert, &disk, ari.as_ref(), rec, now).renew_at;
        CertResult {
            next_wake: cap_wake(cert, next_wake(rec, next, now), now),
            outcome,
            installed: true,
            fingerprint: None,
        }
    }
}

/// The policy decision with this certificate's jitter and ARI hold.
fn decide(
    cert: &CertConfig,
    disk: &OnDisk,
    ari: Option<&AriWindow>,
    rec: &CertRecord,
    now: OffsetDateTime,
) -> Decision {
    policy::decide_cert(
        &cert.name,
        cert.renew_before,
        disk,
        ari,
        rec.ari_hold_until,
        now,
    )
}

/// The earliest of: the renewal time, the next ARI poll, a hook retry.
fn next_wake(rec: &CertRecord, renew_at: OffsetDateTime, now: OffsetDateTime) -> OffsetDateTime {
    let mut t = renew_at;
    if let Some(p) = rec.ari_next_poll {
        t = t.min(p);
    }
    if rec.hooks_pending {
        t = t.min(now + crate::fault::scaled(HOOK_RETRY));
    }
    t
}

/// Reads the disk for one pass, off the async workers (see [`super::look_at_files`]).
async fn read_disk(
    runner: &Runner,
    cert: &CertConfig,
    verified: Option<String>,
    now: OffsetDateTime,
) -> Option<DiskLook> {
    let (c, cache) = (cert.clone(), runner.disk_cache.clone());
    tokio::task::spawn_blocking(move || cache.look(&c, verified.as_deref(), now))
        .await
        .map_err(|e| error!("reading the files failed: {e}"))
        .ok()
}
