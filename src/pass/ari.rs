//! The ARI step: asks the CA for its renewal window when the cached answer is stale, and
//! remembers what it learns about the certificate and about the CA. Failures fall back
//! to the cached window or the threshold; they never fail the certificate.

use std::time::Duration;

use time::OffsetDateTime;
use tracing::{debug, info, warn};

use super::Runner;
use crate::acme::AriLookup;
use crate::config::CertConfig;
use crate::inventory::{CertInfo, OnDisk};
use crate::policy::AriWindow;
use crate::state::{CaRecord, CertRecord};
use crate::timefmt::{format_duration, rfc3339};

/// ARI is re-checked at least this often, whatever Retry-After says (Let's Encrypt asks
/// for twice a day).
pub const ARI_MAX_POLL: Duration = Duration::from_secs(12 * 3600);
/// ...and never more often than this (divided by `CERTKEEPER_FAULT_TIME_SCALE` in debug
/// builds, see [`ari_min_poll`]).
pub const ARI_MIN_POLL: Duration = Duration::from_secs(60);

/// The minimum ARI poll interval in force.
pub fn ari_min_poll() -> Duration {
    crate::fault::scaled(ARI_MIN_POLL)
}

impl Runner {
    /// The ARI window for the installed certificate: the cached one while it is fresh,
    /// else the CA's answer.
    pub(super) async fn refresh_ari(
        &self,
        cert: &CertConfig,
        disk: &OnDisk,
        rec: &mut CertRecord,
        now: OffsetDateTime,
    ) -> Option<AriWindow> {
        let info = disk.info()?;
        let cached = rec.ari_for(Some(info.serial.as_str()));
        let fresh = rec.ari_next_poll.is_some_and(|t| t > now);
        if fresh && rec.ari_serial.as_deref() == Some(info.serial.as_str()) {
            return cached;
        }
        // ARI goes to the CA that issued the installed certificate, not to the primary.
        let Some(issuer) = self.ca_by_directory(cert, rec.issuer.as_deref()) else {
            return cached;
        };
        if self.ca_known_unreachable(&issuer.directory) {
            return cached;
        }
        let ca = self.state.load_ca(&issuer.directory).ok()?;
        if ca.ari_supported == Some(false)
            && ca
                .ari_checked_at
                .is_some_and(|t| now - t < time::Duration::days(1))
        {
            return None;
        }
        // Fleet mode: another replica may have asked already.
        if let Some(w) = self.fleet_ari(cert, info, rec, now).await {
            return Some(w);
        }
        // Optional: a CA that is down must not delay a certificate that is not due (the
        // failure is logged once per pass, in `acme_quick_at`).
        let Some(acme) = self.acme_quick_at(&issuer).await else {
            debug!("ARI not checked: the CA is unreachable");
            return cached;
        };
        match acme.renewal_info(&info.leaf_der).await {
            Ok(lookup) => {
                let w = self.learn_ari(cert, info, &ca, lookup, rec, now);
                self.share_ari(cert, info, rec).await;
                w
            }
            Err(e) => {
                warn!("ARI lookup failed, using the cached window or threshold: {e}");
                cached
            }
        }
    }

    /// The window another replica learned for this very certificate, while it is fresh:
    /// one ARI poll serves the whole fleet.
    async fn fleet_ari(
        &self,
        cert: &CertConfig,
        info: &CertInfo,
        rec: &mut CertRecord,
        now: OffsetDateTime,
    ) -> Option<AriWindow> {
        let shared = self.fleet.as_ref()?.ari(&cert.name).await.ok()??;
        if shared.serial != info.serial || shared.next_poll <= now {
            return None;
        }
        let w = AriWindow {
            start: shared.start,
            end: shared.end,
        };
        rec.ari = Some(w);
        rec.ari_serial = Some(info.serial.clone());
        rec.ari_next_poll = Some(shared.next_poll);
        debug!("ARI window from the fleet");
        Some(w)
    }

    /// Shares a window this replica learned with the fleet (best effort).
    async fn share_ari(&self, cert: &CertConfig, info: &CertInfo, rec: &CertRecord) {
        let (Some(f), Some(w), Some(next)) = (&self.fleet, rec.ari, rec.ari_next_poll) else {
            return;
        };
        if rec.ari_serial.as_deref() != Some(info.serial.as_str()) {
            return;
        }
        let shared = crate::fleet::AriShared {
            serial: info.serial.clone(),
            start: w.start,
            end: w.end,
            next_poll: next,
        };
        if let Err(e) = f.put_ari(&cert.name, &shared).await {
            debug!("fleet: ARI window not shared: {e}");
        }
    }

    /// Records what an ARI lookup said, for the certificate and for the CA.
    fn learn_ari(
        &self,
        cert: &CertConfig,
        info: &CertInfo,
        ca: &CaRecord,
        lookup: AriLookup,
        rec: &mut CertRecord,
        now: OffsetDateTime,
    ) -> Option<AriWindow> {
        let directory = ca.directory.clone();
        let directory = &directory;
        match lookup {
            AriLookup::Window(w, retry) => {
                let retry = retry.clamp(ari_min_poll(), ARI_MAX_POLL);
                rec.ari = Some(w);
                rec.ari_serial = Some(info.serial.clone());
                rec.ari_next_poll = Some(now + retry);
                if ca.ari_supported != Some(true) {
                    self.update_ca(directory, |c| {
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
            AriLookup::Unsupported => {
                if ca.ari_supported == Some(false) {
                    debug!("the CA still does not offer ARI");
                } else {
                    info!("the CA does not offer ARI; using the renew_before threshold");
                }
                self.update_ca(directory, |c| {
                    c.ari_supported = Some(false);
                    c.ari_checked_at = Some(now);
                });
                None
            }
            AriLookup::NoIdentifier => {
                // Not the CA's fault: remember for this certificate only, and don't ask
                // again before the usual re-check.
                rec.ari = None;
                rec.ari_serial = Some(info.serial.clone());
                rec.ari_next_poll = Some(now + ARI_MAX_POLL);
                debug!("certificate has no Authority Key Identifier; no ARI for it");
                None
            }
        }
    }
}
