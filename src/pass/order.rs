//! The renew step: reserve the outcome, generate the key, order, verify, stage, install
//! and record. Nothing on disk changes unless the new set passed verification, and a
//! started install always runs to its end.

use std::sync::Arc;

use time::OffsetDateTime;
use tracing::{error, info, warn};

use super::fingerprint::set_fingerprint;
use super::fleet::{Gate, Publish};
use super::record::{mark_installed, note_error, record_failure};
use super::{CertResult, Fingerprint, PassError, Runner};
use crate::acme::{Acme, AcmeError, OnCreated, OrderRequest};
use crate::config::{CaConfig, CertConfig};
use crate::fleet::LockGuard;
use crate::inventory::{self, CertInfo, OnDisk};
use crate::keys;
use crate::policy::{self, Decision, ErrorClass};
use crate::state::{CertRecord, StateDir, StateError};
use crate::store::{self, NewSet};
use crate::timefmt::rfc3339;

/// The outcome of an order, written pessimistically before the order is sent: "failed,
/// back off". If the process dies mid-order, the next run backs off instead of ordering
/// again; if the record cannot be written (a full disk), no order is sent at all, since its
/// failure could not be recorded either. A cancelled task (graceful shutdown) puts the
/// record back: the operator stopping us is no failure of the CA's.
pub(super) struct Reservation {
    state: StateDir,
    name: String,
    original: CertRecord,
    reserved: CertRecord,
    settled: bool,
    /// Set by the install job once it starts; from then on its record stands.
    installing: Arc<std::sync::Mutex<bool>>,
}

impl Reservation {
    pub(super) fn take(
        state: &StateDir,
        name: &str,
        rec: &CertRecord,
        now: OffsetDateTime,
    ) -> Result<Self, StateError> {
        let mut reserved = rec.clone();
        reserved.failures += 1;
        reserved.last_failure_at = Some(now);
        reserved.next_attempt_at = Some(policy::next_attempt(
            reserved.failures,
            now,
            ErrorClass::Transient,
            None,
        ));
        reserved.last_outcome = Some("interrupted".into());
        reserved.last_error = Some(format!(
            "the order started at {} was interrupted before its outcome was recorded",
            rfc3339(now)
        ));
        reserved.last_error_class = Some(ErrorClass::Transient);
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
    /// Due (or forced) and not backing off: reserve the outcome, order, install, reload.
    pub(super) async fn renew_now(
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
        if let Some(refused) = self.breaker_refusal(cert, rec, force, now) {
            return refused;
        }
        let lock = match self.fleet_gate(cert, disk, rec, force, now).await {
            Gate::Order(lock) => lock,
            Gate::Done(result) => return result,
        };
        let alone = self.fleet.is_some() && lock.is_none();
        let permit = self
            .orders
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore is never closed");
        let reservation = match self.reserve(cert, rec, now) {
            Ok(r) => r,
            Err(result) => {
                if let Some(l) = lock {
                    l.release().await;
                }
                return result;
            }
        };
        crate::fault::point("before-order");
        let obtained = self
            .obtain(cert, disk, rec, &reservation.installing, lock.as_ref())
            .await;
        drop(permit);
        if let Err(PassError::Deferred { message, until }) = obtained {
            // No order was sent: dropping the reservation unsettled puts the record back.
            drop(reservation);
            if let Some(l) = lock {
                l.release().await;
            }
            return self.deferred(cert, rec, message, until, force);
        }
        reservation.settle();
        match obtained {
            Ok((info, fingerprint)) => {
                if let Some(l) = lock {
                    l.release().await;
                }
                if alone {
                    rec.fleet_unpublished = Some(info.serial.clone());
                }
                let mut r = self.installed(cert, info, rec).await;
                r.fingerprint = Some(fingerprint);
                r
            }
            Err(e) => {
                let mut next = record_failure(rec, &e, self.now());
                if let Some(sooner) = self.note_ca_failure(cert, disk, rec, &e, self.now()) {
                    next = next.min(sooner);
                    rec.next_attempt_at = Some(next);
                }
                error!(next_attempt = %rfc3339(next), "renewal failed: {e}");
                if let Some(l) = lock {
                    self.fleet_failed(l, rec, &e).await;
                }
                CertResult::failed(cert, e.to_string(), next)
            }
        }
    }

    /// Counts a failure against the certificate's current CA and moves it to the next CA
    /// of its list when [`policy::ca_after_failure`] says so (WARN, and `fallback_from` /
    /// `fallback_at` set as the notifier's signal). A local error (our disk) is no fault
    /// of the CA's and counts nothing. Returns the sooner next attempt after a move: the
    /// new CA has not failed yet, so the ladder built up at the old one does not apply.
    fn note_ca_failure(
        &self,
        cert: &CertConfig,
        disk: &OnDisk,
        rec: &mut CertRecord,
        e: &PassError,
        now: OffsetDateTime,
    ) -> Option<OffsetDateTime> {
        if e.class() == ErrorClass::Local {
            return None;
        }
        let cas = self.cfg.acme.cas_for(cert);
        let current = cas
            .iter()
            .position(|c| Some(c.directory.as_str()) == rec.ca.as_deref())
            .unwrap_or(0);
        rec.ca_failures += 1;
        let rule = self.cfg.acme.fallback_rule;
        let next =
            policy::ca_after_failure(current, cas.len(), rec.ca_failures, disk.info(), rule, now);
        if next == current {
            return None;
        }
        let (from, to) = (&cas[current].directory, &cas[next].directory);
        warn!(
            from = %from,
            to = %to,
            failures = rec.ca_failures,
            "moving the certificate from CA {from} to CA {to}"
        );
        rec.fallback_from = Some(from.clone());
        rec.fallback_at = Some(now);
        rec.ca = (next != 0).then(|| to.clone());
        rec.ca_failures = 0;
        Some(now + crate::fault::scaled(policy::backoff_delay(1)))
    }

    /// Checks the targets and writes the reservation; either failing costs no order.
    fn reserve(
        &self,
        cert: &CertConfig,
        rec: &mut CertRecord,
        now: OffsetDateTime,
    ) -> Result<Reservation, CertResult> {
        // A FIFO or directory where a file must go would make the install fail after the
        // CA issued: check first and spend no order on it.
        if let Err(e) = store::preflight(cert) {
            let e = PassError::Preflight(e);
            error!("{e}");
            note_error(rec, &e, "failed");
            let next = now + policy::backoff_delay(rec.failures.max(1));
            return Err(CertResult::failed(cert, e.to_string(), next));
        }
        Reservation::take(&self.state, &cert.name, rec, now).map_err(|e| {
            let e = PassError::Unrecordable(e);
            error!("{e}");
            rec.last_error = Some(e.to_string());
            rec.last_error_class = Some(e.class());
            CertResult::failed(cert, e.to_string(), now + policy::backoff_delay(1))
        })
    }

    /// Orders, verifies, stages and installs a new set. Nothing on disk changes unless the
    /// new set passed verification.
    async fn obtain(
        &self,
        cert: &CertConfig,
        disk: &OnDisk,
        rec: &mut CertRecord,
        installing: &Arc<std::sync::Mutex<bool>>,
        lock: Option<&LockGuard>,
    ) -> Result<(CertInfo, Fingerprint), PassError> {
        let ca = self.current_ca(cert, rec);
        let acme = self.acme_at(&ca).await?;
        let resume = self.fleet_resume(lock, cert, acme.directory()).await;
        let (key, csr) = match &resume {
            Some(r) => stored_key(cert, &r.key_pem).await?,
            None => new_key(cert).await?,
        };
        // A resumed order is no new order: the budget was spent when it was placed.
        if resume.is_none() {
            self.spend_budget(disk, acme.directory()).await?;
        }
        let at_ca = at_fallback(cert, &ca, &acme, rec.ca.is_some());
        let key_pem = key.serialize_pem();
        let record = lock.map(|lock| RecordOrder {
            lock,
            directory: acme.directory().to_string(),
            key_pem: &key_pem,
        });
        let inputs = OrderInputs {
            csr: &csr,
            resume: resume.as_ref().map(|r| r.url.as_str()),
            on_created: record.as_ref().map(|r| r as &dyn OnCreated),
        };
        let chain = self
            .order_chain(&acme, &ca, &at_ca, disk, rec, &inputs)
            .await?;
        let (info, set) = verified_set(cert, key_pem.clone(), chain, self.now())?;
        let fingerprint = set_fingerprint(cert, &set);
        // Fleet: published (fenced by the lock) before anything is installed, so a
        // replica that lost its lock installs nothing and the newer set stands.
        let published = self
            .publish_first(lock, cert, &info, &set, rec.ca.clone())
            .await?;
        // Stage, install, record and finish run as one piece on a blocking thread: fsyncs
        // stay off the async workers, and a cancelled task (graceful shutdown) cannot stop
        // an install half-way, since a started blocking job always runs to its end.
        self.install_off_thread(cert, set, rec, &info.serial, Some(installing.clone()))
            .await?;
        match published {
            Publish::Unpublished => rec.fleet_unpublished = Some(info.serial.clone()),
            Publish::Published(fleet, rev) => {
                fleet.report_installed(&cert.name, rev, &info.serial).await;
            }
            Publish::NotInFleet => {}
        }
        Ok((info, fingerprint))
    }

    /// Stages, installs and records a verified set on a blocking thread (see
    /// [`install_set`]); `installing` is raised first, so a cancelled task's reservation
    /// stands once the install has begun. `rec` is the record as installed, on success and
    /// on failure alike.
    pub(super) async fn install_off_thread(
        &self,
        cert: &CertConfig,
        set: NewSet,
        rec: &mut CertRecord,
        serial: &str,
        installing: Option<Arc<std::sync::Mutex<bool>>>,
    ) -> Result<(), PassError> {
        let (state, c, mut r) = (self.state.clone(), cert.clone(), rec.clone());
        let (serial, now) = (serial.to_string(), self.now());
        let done = tokio::task::spawn_blocking(move || {
            if let Some(flag) = installing {
                *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
            }
            let res = install_set(&state, &c, &set, &mut r, &serial, now);
            (res, r)
        })
        .await
        .map_err(|e| PassError::Install(e.to_string()))?;
        *rec = done.1;
        done.0
    }

    /// The CA this attempt goes to: the one `rec.ca` names if it is still configured, else
    /// the primary (and the record says so, so the install records the right issuer).
    fn current_ca(&self, cert: &CertConfig, rec: &mut CertRecord) -> CaConfig {
        match self.ca_by_directory(cert, rec.ca.as_deref()) {
            Some(ca) => ca,
            None => {
                rec.ca = None;
                self.cfg.acme.primary()
            }
        }
    }

    /// Sends the order, recovering once from a lost account, an ignored `replaces` or an
    /// order the CA refused because of `replaces`. `replaces` goes only to the CA that
    /// issued the certificate being replaced: another CA does not know it.
    async fn order_chain(
        &self,
        acme: &Arc<Acme>,
        at: &CaConfig,
        cert: &CertConfig,
        disk: &OnDisk,
        rec: &CertRecord,
        inputs: &OrderInputs<'_>,
    ) -> Result<String, PassError> {
        let ca = self.state.load_ca(acme.directory())?;
        let to_issuer = super::budget::replaces_goes_to(
            rec.issuer.as_deref(),
            &self.cfg.acme.directory,
            acme.directory(),
        );
        let replaces = disk
            .info()
            .filter(|_| to_issuer)
            .filter(|_| super::budget::sends_replaces(&ca, true))
            .map(|info| info.leaf_der.as_slice());
        let req = OrderRequest {
            cert,
            csr_der: inputs.csr,
            replaces,
            resume: inputs.resume,
            on_created: inputs.on_created,
        };
        let without = OrderRequest {
            replaces: None,
            ..req
        };
        match acme.order(&req, &self.responders).await {
            Ok(c) => Ok(c),
            Err(e) if e.is_account_gone() => {
                warn!("{e}; creating a new account and ordering again");
                self.forget_account(acme.directory()).await;
                let acme = self.acme_at(at).await?;
                self.charge_repeat(acme.directory());
                Ok(acme.order(&req, &self.responders).await?)
            }
            Err(AcmeError::ReplacesIgnored { message, .. }) => {
                warn!(
                    "the CA ignored `replaces` ({message}); ordering again without it and not sending it to this CA again"
                );
                self.update_ca(acme.directory(), |c| c.replaces_unsupported = true);
                self.charge_repeat(acme.directory());
                Ok(acme.order(&without, &self.responders).await?)
            }
            Err(
                e @ AcmeError::Problem {
                    step: "new order", ..
                },
            ) if replaces.is_some() => {
                warn!("the CA rejected the order with `replaces` ({e}); ordering again without it");
                self.charge_repeat(acme.directory());
                Ok(acme.order(&without, &self.responders).await?)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The certificate as ordered from this CA. At a fallback, the profile is the entry's
/// own, else the certificate's, and is left out (with a WARN) when the fallback's
/// directory does not list it: the fallback is there to get a certificate at all. The
/// primary keeps the certificate's profile, and refuses one it does not offer.
fn at_fallback(cert: &CertConfig, ca: &CaConfig, acme: &Acme, is_fallback: bool) -> CertConfig {
    let mut c = cert.clone();
    if !is_fallback {
        return c;
    }
    c.profile = ca.profile.clone().or_else(|| cert.profile.clone());
    if let Some(p) = c.profile.as_deref()
        && !acme.offers_profile(p)
    {
        warn!(
            directory = %ca.directory,
            "the fallback CA does not offer profile {p:?}; ordering without a profile"
        );
        c.profile = None;
    }
    c
}

/// What one attempt orders with: the CSR, and in fleet mode the order to resume and the
/// callback that records a new order's URL for a takeover.
pub(super) struct OrderInputs<'a> {
    csr: &'a [u8],
    resume: Option<&'a str>,
    on_created: Option<&'a dyn OnCreated>,
}

/// Records a new order's URL and key under the fleet lock, so a replica taking over a
/// dead orderer's lock resumes that order instead of placing another.
struct RecordOrder<'a> {
    lock: &'a LockGuard,
    directory: String,
    key_pem: &'a str,
}

impl OnCreated for RecordOrder<'_> {
    fn created(&self, url: String) -> crate::challenge::BoxFut<'_, Result<(), String>> {
        Box::pin(async move {
            self.lock
                .record_order(&url, &self.directory, self.key_pem)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// The key of an order in flight a dead orderer left, and its CSR (off the async workers).
async fn stored_key(cert: &CertConfig, pem: &str) -> Result<(rcgen::KeyPair, Vec<u8>), PassError> {
    let (pem, domains) = (pem.to_string(), cert.domains.clone());
    tokio::task::spawn_blocking(move || {
        let key = keys::from_pem(&pem)?;
        let csr = keys::csr_der(&key, &domains)?;
        Ok((key, csr))
    })
    .await
    .map_err(|e| PassError::Internal(format!("reading the stored key failed: {e}")))?
}

/// A new key and its CSR. Key generation is CPU-heavy (RSA-4096 takes seconds): off the
/// async workers, so the HTTP-01 responder and the other certificates keep going.
async fn new_key(cert: &CertConfig) -> Result<(rcgen::KeyPair, Vec<u8>), PassError> {
    let (kind, domains) = (cert.key_type, cert.domains.clone());
    tokio::task::spawn_blocking(move || {
        let key = keys::generate(kind)?;
        let csr = keys::csr_der(&key, &domains)?;
        Ok((key, csr))
    })
    .await
    .map_err(|e| PassError::Internal(format!("key generation failed: {e}")))?
}

/// The chain without its leaf (the `chain_path` file), from a full chain, leaf first.
pub(super) fn chain_after_leaf(fullchain: &str) -> String {
    fullchain
        .match_indices("-----BEGIN CERTIFICATE-----")
        .nth(1)
        .map(|(i, _)| fullchain[i..].to_string())
        .unwrap_or_default()
}

/// Verifies the CA's chain against the key and names, and builds the set to install.
fn verified_set(
    cert: &CertConfig,
    key_pem: String,
    chain: String,
    now: OffsetDateTime,
) -> Result<(CertInfo, NewSet), PassError> {
    let info = inventory::verify_set(key_pem.as_bytes(), chain.as_bytes(), &cert.domains, now)
        .map_err(|(e, _)| PassError::Verify(e))?;
    let chain_pem = chain_after_leaf(&chain);
    let set = NewSet {
        key_pem,
        fullchain_pem: chain,
        chain_pem,
    };
    Ok((info, set))
}

/// Stages and installs a verified set, records it (hooks pending), then clears the
/// staging area. Blocking. A crash anywhere in here is completed by
/// [`super::roll_forward`].
fn install_set(
    state: &StateDir,
    cert: &CertConfig,
    set: &NewSet,
    rec: &mut CertRecord,
    serial: &str,
    now: OffsetDateTime,
) -> Result<(), PassError> {
    let err = |e: store::StoreError| PassError::Install(e.to_string());
    store::stage(state, cert, set).map_err(err)?;
    crate::fault::point("staged");
    store::install(state, &cert.name).map_err(err)?;
    crate::fault::point("installed-before-record");
    rec.hooks_pending = true;
    mark_installed(rec, now, Some(serial));
    state.save(&cert.name, rec)?;
    crate::fault::point("recorded-before-finish");
    store::finish(state, &cert.name).map_err(err)?;
    crate::fault::point("finished");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let r = Reservation::take(&st, "www", &rec, OffsetDateTime::now_utc()).unwrap();
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
        drop(Reservation::take(&st, "www", &rec, OffsetDateTime::now_utc()).unwrap());
        assert_eq!(st.load("www").unwrap(), rec);

        // Dropped after an install was recorded: that record stands.
        let r = Reservation::take(&st, "www", &rec, OffsetDateTime::now_utc()).unwrap();
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
        assert!(
            Reservation::take(
                &st,
                "www",
                &CertRecord::default(),
                OffsetDateTime::now_utc()
            )
            .is_err()
        );
    }
}
