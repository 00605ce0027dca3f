//! `status`: one row per certificate, for the table, `--json` and the metrics.

use serde::Serialize;

use super::Facts;
use crate::policy::{self, CertState};
use crate::timefmt::rfc3339;

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
    /// valid, due, missing, invalid, expired; or, when due but held by a limit on
    /// orders, deferred (the CA's order budget) or breaker (the circuit breaker).
    pub state: CertState,
    /// The limit on orders in force, if any: `deferred` or `breaker`, even when not due.
    pub hold: Option<CertState>,
    /// When that limit next allows an order.
    pub hold_until: Option<String>,
    /// Its message, as logged.
    pub hold_reason: Option<String>,
    /// The installed set is usable (valid or due, whatever holds it), for metrics.
    #[serde(skip)]
    pub usable: bool,
    /// Serial of the installed certificate.
    pub serial: Option<String>,
    /// Last recorded error.
    pub last_error: Option<String>,
    /// Its class: transient, rate-limited, permanent or local (which set the back-off).
    pub error_class: Option<&'static str>,
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
    /// The last result of each `verify` endpoint.
    pub endpoints: Vec<crate::state::EndpointResult>,
    /// The directory of the CA that issued the installed certificate, as recorded
    /// (`None`: the primary, or installed before the issuer was recorded).
    pub issuer: Option<String>,
    /// The fallback CA the next order goes to, if the primary kept failing.
    pub ca: Option<String>,
    /// The CA the certificate last moved away from, while that move stands.
    pub fallback_from: Option<String>,
    /// Fleet mode: `available` or `unavailable` (`None` without `[cluster]`).
    pub cluster: Option<&'static str>,
    /// Fleet mode: the fleet's set of this certificate and who installed it (`None`
    /// without `[cluster]`, or while etcd is unavailable).
    pub fleet: Option<FleetCell>,
    /// Unix timestamps of the above, for metrics.
    #[serde(skip)]
    pub times: RowTimes,
}

/// One certificate in the fleet's view.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FleetCell {
    /// The revision of the fleet's set (`None`: the fleet has none yet).
    pub revision: Option<i64>,
    /// Its serial.
    pub serial: Option<String>,
    /// The node holding the certificate's lock (renewing it now).
    pub lock_holder: Option<String>,
    /// The nodes that report this revision installed.
    pub installed_on: Vec<String>,
    /// The revision this replica installed, as it reported it.
    pub installed_here: Option<i64>,
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

/// The status row for one certificate's facts.
pub fn status_row(f: &Facts) -> StatusRow {
    let (rec, d, now) = (&f.record, &f.decision, f.now);
    let info = f.disk.info();
    StatusRow {
        name: f.name.clone(),
        domains: f.domains.clone(),
        not_after: info.map(|i| rfc3339(i.not_after)),
        remaining_seconds: info.map(|i| (i.not_after - now).whole_seconds()),
        renew_at: rfc3339(d.renew_at),
        reason: d.reason.clone(),
        rule: d.rule,
        state: match &f.hold {
            Some(h) if d.due => h.kind,
            _ if rec.not_served && matches!(d.state, CertState::Valid | CertState::Due) => {
                CertState::NotServed
            }
            _ => d.state,
        },
        hold: f.hold.as_ref().map(|h| h.kind),
        hold_until: f.hold.as_ref().map(|h| rfc3339(h.until)),
        hold_reason: f.hold.as_ref().map(|h| h.message.clone()),
        usable: matches!(d.state, CertState::Valid | CertState::Due),
        serial: info.map(|i| i.serial.clone()),
        last_error: f.record_error.clone().or(rec.last_error.clone()),
        error_class: rec
            .last_error_class
            .filter(|_| rec.last_error.is_some())
            .map(|c| c.as_str()),
        last_outcome: rec.last_outcome.clone(),
        last_success: rec.last_success_at.map(rfc3339),
        failures: rec.failures,
        next_attempt: rec.next_attempt_at.filter(|t| *t > now).map(rfc3339),
        hooks_pending: rec.hooks_pending,
        last_failure: rec.last_failure_at.map(rfc3339),
        renewals_ok: rec.renewals_ok,
        renewals_failed: rec.renewals_failed,
        hook_failures: rec.hook_failures,
        ari_window: f.ari.map(|w| [rfc3339(w.start), rfc3339(w.end)]),
        ari_next_poll: rec.ari_next_poll.map(rfc3339),
        warnings: f.warnings.clone(),
        endpoints: rec.endpoints.clone(),
        issuer: rec.issuer.clone(),
        ca: rec.ca.clone(),
        fallback_from: rec.fallback_from.clone(),
        cluster: None,
        fleet: None,
        times: RowTimes {
            not_after: info.map(|i| i.not_after.unix_timestamp()),
            renew_at: d.renew_at.unix_timestamp(),
            last_success: rec.last_success_at.map(|t| t.unix_timestamp()),
            last_failure: rec.last_failure_at.map(|t| t.unix_timestamp()),
        },
    }
}
