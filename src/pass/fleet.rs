//! The pass in fleet mode (`[cluster]`): install the fleet's set when it differs from the
//! files, take the certificate's lock before ordering (or wait for the node that holds
//! it), resume an order a dead orderer left, publish before installing, and share the
//! retry ladder. Without `[cluster]` none of this runs.
//!
//! etcd trouble never touches installed files: no set is installed and no order is
//! placed, except under `emergency_before`, when ordering alone is better than expiring.

use std::sync::Arc;

use time::OffsetDateTime;
use tracing::{error, info, warn};

use super::fingerprint::set_fingerprint;
use super::{CertResult, Outcome, PassError, Runner};
use crate::config::CertConfig;
use crate::fleet::{CertEntry, Fleet, FleetError, Ladder, LockGuard, LockOutcome, Published};
use crate::inventory::{self, CertInfo, OnDisk};
use crate::policy;
use crate::state::CertRecord;
use crate::store::{self, NewSet};
use crate::timefmt::{format_duration, rfc3339};

/// Whether (and how) this replica may order.
pub(super) enum Gate {
    /// Order: under the lock, or alone in an emergency (`None`).
    Order(Option<LockGuard>),
    /// Do not order; this is the certificate's result for the pass.
    Done(CertResult),
}

/// What became of a new set in the fleet before it is installed here.
pub(super) enum Publish {
    /// Not in fleet mode, or ordered alone in an emergency.
    NotInFleet,
    /// Published at this revision.
    Published(Arc<Fleet>, i64),
    /// etcd went away after the CA issued: installed here, published when etcd is back.
    Unpublished,
}

/// An order in flight left by a previous holder of the lock, to resume.
pub(super) struct Resume {
    /// The order's URL.
    pub(super) url: String,
    /// The key its CSR is made from.
    pub(super) key_pem: String,
}

impl Runner {
    /// Installs the fleet's set when it differs from the files (a set another replica
    /// ordered, or this replica was down). Returns the pass's result when it installed.
    pub(super) async fn fleet_adopt(
        &self,
        cert: &CertConfig,
        disk: &OnDisk,
        rec: &mut CertRecord,
    ) -> Option<CertResult> {
        let fleet = self.fleet.as_ref()?;
        let published = match fleet.current(&cert.name).await {
            Ok(Some(p)) => p,
            Ok(None) => {
                self.publish_unpublished(fleet, cert, disk, rec).await;
                return None;
            }
            Err(FleetError::Corrupt(e)) => {
                error!("fleet: the fleet's set is unusable, ignoring it: {e}");
                return None;
            }
            Err(_) => return None,
        };
        let info = disk.info();
        if info.map(|i| i.serial.as_str()) == Some(published.entry.serial.as_str()) {
            rec.fleet_unpublished = None;
            fleet
                .report_installed(&cert.name, published.revision, &published.entry.serial)
                .await;
            return None;
        }
        let ours_is_newer = info.is_some_and(|i| {
            rec.fleet_unpublished.as_deref() == Some(i.serial.as_str())
                && i.not_after > published.entry.not_after
        });
        if ours_is_newer && self.publish_unpublished(fleet, cert, disk, rec).await {
            return None;
        }
        match self.install_published(fleet, cert, &published, rec).await {
            Ok(r) => Some(r),
            Err(e) => {
                error!(
                    revision = published.revision,
                    "fleet: the fleet's set was not installed: {e}"
                );
                None
            }
        }
    }

    /// Verifies the fleet's set like a new order's (key, chain, names, validity) and
    /// installs it with the crash-safe store, then runs this replica's hooks.
    async fn install_published(
        &self,
        fleet: &Arc<Fleet>,
        cert: &CertConfig,
        p: &Published,
        rec: &mut CertRecord,
    ) -> Result<CertResult, PassError> {
        let key_pem = fleet.open_key(&p.entry).map_err(fleet_err)?;
        let now = self.now();
        let info = inventory::verify_set(
            key_pem.as_bytes(),
            p.entry.fullchain_pem.as_bytes(),
            &cert.domains,
            now,
        )
        .map_err(|(e, _)| PassError::Verify(e))?;
        if info.serial != p.entry.serial {
            return Err(PassError::Verify(format!(
                "the entry says serial {} but its certificate has serial {}",
                p.entry.serial, info.serial
            )));
        }
        store::preflight(cert).map_err(PassError::Preflight)?;
        let set = NewSet {
            key_pem,
            fullchain_pem: p.entry.fullchain_pem.clone(),
            chain_pem: p.entry.chain_pem.clone(),
        };
        let fingerprint = set_fingerprint(cert, &set);
        // Installing what another replica ordered is no order of ours: the breaker's
        // count of this certificate's orders stays as it was.
        let issued = rec.issued_at.clone();
        rec.ca = p.entry.issuer.clone();
        let installed = self
            .install_off_thread(cert, set, rec, &info.serial, None)
            .await;
        rec.issued_at = issued;
        rec.fleet_unpublished = None;
        installed?;
        info!(
            revision = p.revision,
            serial = %p.entry.serial,
            orderer = %p.entry.orderer,
            "fleet: installed the fleet's set"
        );
        fleet
            .report_installed(&cert.name, p.revision, &p.entry.serial)
            .await;
        let mut result = self.installed(cert, info, rec).await;
        result.fingerprint = Some(fingerprint);
        Ok(result)
    }

    /// Publishes the set this replica ordered alone in an emergency, if the fleet has
    /// none or an older one. Returns true when the files stay as they are (published, or
    /// etcd cannot tell yet), false when the fleet's newer set should be installed.
    async fn publish_unpublished(
        &self,
        fleet: &Arc<Fleet>,
        cert: &CertConfig,
        disk: &OnDisk,
        rec: &mut CertRecord,
    ) -> bool {
        let Some(info) = disk.info() else {
            return false;
        };
        if rec.fleet_unpublished.as_deref() != Some(info.serial.as_str()) {
            return false;
        }
        let Ok(LockOutcome::Held(guard)) = fleet.try_lock(&cert.name).await else {
            return true;
        };
        let keep = match fleet.current_fresh(&cert.name).await {
            Ok(Some(p)) if p.entry.not_after >= info.not_after => false,
            Ok(_) => match self.publish_files(fleet, &guard, cert, info).await {
                Ok(rev) => {
                    info!(
                        revision = rev,
                        serial = %info.serial,
                        "fleet: published the set ordered during the etcd outage"
                    );
                    fleet.report_installed(&cert.name, rev, &info.serial).await;
                    true
                }
                Err(e) => {
                    warn!("fleet: cannot publish the set ordered during the outage: {e}");
                    guard.release().await;
                    return true;
                }
            },
            Err(_) => {
                guard.release().await;
                return true;
            }
        };
        rec.fleet_unpublished = None;
        guard.release().await;
        keep
    }

    /// Publishes the installed files (read back, bounded) as the fleet's set.
    async fn publish_files(
        &self,
        fleet: &Arc<Fleet>,
        guard: &LockGuard,
        cert: &CertConfig,
        info: &CertInfo,
    ) -> Result<i64, PassError> {
        let read = |p: &std::path::Path| {
            crate::fsx::read_regular(p, 1024 * 1024, true)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .map_err(|e| PassError::Internal(e.to_string()))
        };
        let key = read(&cert.key_path)?;
        let fullchain = read(&cert.cert_path)?;
        let chain = super::order::chain_after_leaf(&fullchain);
        let set = NewSet {
            key_pem: key,
            fullchain_pem: fullchain,
            chain_pem: chain,
        };
        self.publish_set(fleet, guard, cert, info, &set, None)
            .await
            .map_err(fleet_err)
    }

    /// Publishes a verified set under the lock (fenced). Returns its revision.
    pub(super) async fn publish_set(
        &self,
        fleet: &Arc<Fleet>,
        guard: &LockGuard,
        cert: &CertConfig,
        info: &CertInfo,
        set: &NewSet,
        issuer: Option<String>,
    ) -> Result<i64, FleetError> {
        let entry = CertEntry {
            v: crate::fleet::entry::ENTRY_VERSION,
            name: cert.name.clone(),
            serial: info.serial.clone(),
            not_after: info.not_after,
            fullchain_pem: set.fullchain_pem.clone(),
            chain_pem: set.chain_pem.clone(),
            key_sealed: fleet.seal_key_for(&cert.name, &set.key_pem)?,
            orderer: fleet.node().to_string(),
            published_at: self.now(),
            issuer,
            checksum: String::new(),
        }
        .seal_checksum();
        guard.publish(&entry).await
    }

    /// Publishes a new set under the lock before it is installed here (fenced), so a
    /// replica that lost its lock installs nothing and the newer set stands. When etcd
    /// went away after the CA issued, the set is installed here anyway (an order is not
    /// thrown away) and published when etcd is back, if it is still the newer one.
    pub(super) async fn publish_first(
        &self,
        lock: Option<&LockGuard>,
        cert: &CertConfig,
        info: &CertInfo,
        set: &NewSet,
        issuer: Option<String>,
    ) -> Result<Publish, PassError> {
        let (Some(fleet), Some(lock)) = (&self.fleet, lock) else {
            return Ok(Publish::NotInFleet);
        };
        match self.publish_set(fleet, lock, cert, info, set, issuer).await {
            Ok(rev) => {
                info!(revision = rev, serial = %info.serial, "fleet: published");
                Ok(Publish::Published(fleet.clone(), rev))
            }
            Err(FleetError::Unavailable(e)) => {
                warn!(
                    "fleet: etcd unavailable while publishing ({e}); installing here and publishing when etcd is back"
                );
                Ok(Publish::Unpublished)
            }
            Err(e) => {
                error!("fleet: {e}; this replica's set is discarded, the fleet's stands");
                Err(fleet_err(e))
            }
        }
    }

    /// Before ordering in fleet mode: take the lock, or wait for the node holding it, or
    /// (etcd unavailable) order alone only under `emergency_before`.
    pub(super) async fn fleet_gate(
        &self,
        cert: &CertConfig,
        disk: &OnDisk,
        rec: &mut CertRecord,
        force: bool,
        now: OffsetDateTime,
    ) -> Gate {
        let Some(fleet) = self.fleet.as_ref() else {
            return Gate::Order(None);
        };
        match fleet.try_lock(&cert.name).await {
            Ok(LockOutcome::Held(guard)) => {
                self.with_lock(fleet, guard, cert, disk, rec, force, now)
                    .await
            }
            Ok(LockOutcome::Busy { holder }) => {
                info!(
                    "fleet: {holder} is renewing {}; waiting for its set",
                    cert.name
                );
                Gate::Done(waiting(
                    cert,
                    format!("{holder} is renewing it for the fleet"),
                    true,
                    now + fleet.config().lease_ttl,
                ))
            }
            Err(e) => self.without_etcd(fleet, cert, disk, rec, &e),
        }
    }

    /// Holding the lock: a set published meanwhile is installed instead of ordering, and
    /// the fleet's ladder is respected.
    #[allow(clippy::too_many_arguments)]
    async fn with_lock(
        &self,
        fleet: &Arc<Fleet>,
        guard: LockGuard,
        cert: &CertConfig,
        disk: &OnDisk,
        rec: &mut CertRecord,
        force: bool,
        now: OffsetDateTime,
    ) -> Gate {
        info!(token = guard.token(), "fleet: took the lock");
        if let Ok(Some(p)) = fleet.current_fresh(&cert.name).await
            && disk.info().map(|i| &i.serial) != Some(&p.entry.serial)
            && disk.info().is_none_or(|i| p.entry.not_after > i.not_after)
        {
            guard.release().await;
            return match self.install_published(fleet, cert, &p, rec).await {
                Ok(r) => Gate::Done(r),
                Err(e) => {
                    error!("fleet: the fleet's set was not installed: {e}");
                    Gate::Done(CertResult::failed(
                        cert,
                        e.to_string(),
                        now + policy::backoff_delay(1),
                    ))
                }
            };
        }
        match fleet.ladder(&cert.name).await {
            Ok(l) if !force => {
                if let Some(next) = l.next_attempt_at.filter(|t| *t > now) {
                    guard.release().await;
                    let msg = format!(
                        "the fleet backs off after {} failed attempt(s) (last on {}) until {}: {}",
                        l.failures,
                        l.node,
                        rfc3339(next),
                        l.last_error.as_deref().unwrap_or("unknown")
                    );
                    error!("{msg}");
                    return Gate::Done(CertResult::failed(cert, msg, next));
                }
            }
            Ok(_) => {}
            Err(e) => {
                guard.release().await;
                return self.without_etcd(fleet, cert, disk, rec, &e);
            }
        }
        Gate::Order(Some(guard))
    }

    /// etcd is unavailable: never touch the files; order alone only in the emergency.
    fn without_etcd(
        &self,
        fleet: &Arc<Fleet>,
        cert: &CertConfig,
        disk: &OnDisk,
        rec: &mut CertRecord,
        e: &FleetError,
    ) -> Gate {
        // Waiting for etcd took time (up to request_timeout per try): judge by the clock.
        let now = self.now();
        let emergency_at = disk.info().map(|i| {
            let life = (i.not_after - i.not_before).unsigned_abs();
            let before =
                crate::config::cluster::emergency_point(fleet.config().emergency_before, life);
            i.not_after - before
        });
        if emergency_at.is_none_or(|t| t <= now) {
            error!(
                "fleet: emergency: etcd is unavailable ({e}) and {} is within emergency_before ({}); ordering without the fleet lock (a duplicate certificate is better than an expired one)",
                cert.name,
                disk.info()
                    .map_or("no usable certificate".into(), |i| format!(
                        "{} left",
                        format_duration((i.not_after - now).unsigned_abs())
                    )),
            );
            rec.last_outcome = Some("fleet-emergency".into());
            return Gate::Order(None);
        }
        let at = emergency_at.unwrap_or(now);
        warn!(
            "fleet: etcd unavailable ({e}); not ordering {} until etcd is back or {} (emergency_before)",
            cert.name,
            rfc3339(at)
        );
        let retry = (now + fleet.config().lease_ttl).min(at);
        Gate::Done(waiting(
            cert,
            format!(
                "due, but etcd is unavailable ({e}); ordering alone from {}",
                rfc3339(at)
            ),
            false,
            retry.max(now + std::time::Duration::from_secs(1)),
        ))
    }

    /// The order a dead orderer left, when it went to the same CA.
    pub(super) async fn fleet_resume(
        &self,
        lock: Option<&LockGuard>,
        cert: &CertConfig,
        directory: &str,
    ) -> Option<Resume> {
        let fleet = self.fleet.as_ref().filter(|_| lock.is_some())?;
        let o = fleet.order_in_flight(&cert.name).await.ok()??;
        if o.directory != directory {
            return None;
        }
        match fleet.open_order_key(&cert.name, &o) {
            Ok(key_pem) => {
                info!(order = %o.url, node = %o.node, "fleet: taking over the order {} placed", o.node);
                Some(Resume {
                    url: o.url,
                    key_pem,
                })
            }
            Err(e) => {
                warn!("fleet: the order in flight cannot be resumed: {e}");
                None
            }
        }
    }

    /// After a failed attempt under the lock: the fleet backs off together.
    pub(super) async fn fleet_failed(&self, lock: LockGuard, rec: &CertRecord, e: &PassError) {
        // etcd's own trouble is no reason for the other replicas to hold back.
        if matches!(e, PassError::Fleet(_)) {
            lock.release().await;
            return;
        }
        let ladder = Ladder {
            failures: rec.failures,
            next_attempt_at: rec.next_attempt_at,
            last_error: Some(e.to_string()),
            node: self
                .fleet
                .as_ref()
                .map(|f| f.node().to_string())
                .unwrap_or_default(),
        };
        if let Err(e) = lock.record_failure(&ladder).await {
            warn!("fleet: the failure could not be shared: {e}");
        }
        lock.release().await;
    }
}

/// A pass that did not order because another node does, or etcd is down.
fn waiting(cert: &CertConfig, summary: String, ok: bool, next: OffsetDateTime) -> CertResult {
    CertResult {
        outcome: Outcome {
            name: cert.name.clone(),
            ok,
            summary,
        },
        next_wake: next,
        installed: false,
        fingerprint: None,
    }
}

/// A fleet error as a pass error.
pub(super) fn fleet_err(e: FleetError) -> PassError {
    PassError::Fleet(e.to_string())
}
