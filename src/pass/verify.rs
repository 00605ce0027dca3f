//! The verify step: after the reload hooks, and on every pass that does not order, prove
//! that each `verify` endpoint serves the installed certificate. A stale endpoint gets
//! the reload hooks once more; still stale, the certificate fails as `not-served` (the
//! next run re-verifies instead of ordering again). An unreachable endpoint is recorded
//! and warned about but does not fail the run: a server that is down is not serving an
//! old certificate, and ordering again would not help it.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{error, info, warn};

use super::reload::run_hooks;
use super::{Outcome, Runner};
use crate::config::{CertConfig, Endpoint};
use crate::inventory::CertInfo;
use crate::state::{CertRecord, EndpointResult, EndpointState};
use crate::verify::{Comparison, Served, compare, probe};

/// First pause between probes of an endpoint that is not live yet.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest pause between probes.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The daemon wakes a certificate with `verify` at least this often, so a server that
/// never reloaded or an old certificate put back is seen within the hour.
pub const VERIFY_EVERY: Duration = Duration::from_secs(3600);

/// `t`, or sooner when the certificate has endpoints to re-verify hourly.
pub(super) fn cap_wake(
    cert: &CertConfig,
    t: time::OffsetDateTime,
    now: time::OffsetDateTime,
) -> time::OffsetDateTime {
    if cert.verify.is_empty() {
        t
    } else {
        t.min(now + crate::fault::scaled(VERIFY_EVERY))
    }
}

/// How long to keep probing: one probe, or until live or `verify_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Patience {
    /// One probe per endpoint (the check on a pass that does not order).
    Once,
    /// Retry with backoff until live or the timeout (after an install or hooks).
    UntilTimeout,
}

/// One endpoint's result before it is stamped with the time.
type Probed = (EndpointState, Option<Served>, Option<String>);

impl Runner {
    /// Verifies the endpoints of `cert` against the installed `info`, runs the hooks once
    /// more for stale ones, and records the results in `rec`. Returns `outcome` unchanged
    /// when every endpoint is live or unreachable, else a failed outcome.
    pub(super) async fn verify_served(
        &self,
        cert: &CertConfig,
        info: &CertInfo,
        rec: &mut CertRecord,
        outcome: Outcome,
        patience: Patience,
    ) -> Outcome {
        if cert.verify.is_empty() {
            rec.not_served = false;
            rec.endpoints.clear();
            return outcome;
        }
        let installed = match Served::from_der(&info.leaf_der) {
            Ok(s) => s,
            Err(e) => {
                error!("cannot read the installed leaf to verify endpoints: {e}");
                return outcome;
            }
        };
        let started = Instant::now();
        let mut results = verify_all(cert, &cert.verify, &installed, patience).await;
        let stale: Vec<Endpoint> = stale_endpoints(cert, &results);
        let mut outcome = outcome;
        if !stale.is_empty() {
            for e in &stale {
                warn!(
                    endpoint = %e.addr,
                    "endpoint serves another certificate than the installed one (serial {}); running the reload hooks once more",
                    installed.serial
                );
            }
            outcome = run_hooks(cert, info, rec, "hooks rerun for a stale endpoint").await;
            let again = verify_all(cert, &stale, &installed, Patience::UntilTimeout).await;
            for (addr, r) in again {
                if let Some(slot) = results.iter_mut().find(|(a, _)| *a == addr) {
                    slot.1 = r;
                }
            }
        }
        let now = self.now();
        rec.endpoints = results
            .into_iter()
            .map(|(addr, (state, served, error))| EndpointResult {
                addr,
                result: state,
                served_serial: served.as_ref().map(|s| s.serial.clone()),
                served_not_after: served.as_ref().map(|s| s.not_after),
                checked_at: now,
                error,
            })
            .collect();
        info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "verified {} endpoint(s)",
            rec.endpoints.len()
        );
        judge(cert, &installed, rec, outcome)
    }
}

/// The endpoints of `cert` whose result is stale.
fn stale_endpoints(cert: &CertConfig, results: &[(String, Probed)]) -> Vec<Endpoint> {
    cert.verify
        .iter()
        .filter(|e| {
            results
                .iter()
                .any(|(a, r)| *a == e.addr && r.0 == EndpointState::Stale)
        })
        .cloned()
        .collect()
}

/// Logs each result and sets `not_served` and the outcome from the recorded results.
fn judge(cert: &CertConfig, installed: &Served, rec: &mut CertRecord, outcome: Outcome) -> Outcome {
    let mut failed = Vec::new();
    for r in &rec.endpoints {
        match r.result {
            EndpointState::Live => {
                info!(endpoint = %r.addr, serial = %installed.serial, "endpoint serves the installed certificate")
            }
            EndpointState::Unreachable => warn!(
                endpoint = %r.addr,
                "endpoint unreachable, cannot verify what it serves: {}",
                r.error.as_deref().unwrap_or("unknown")
            ),
            EndpointState::Stale => {
                let served = r.served_serial.as_deref().unwrap_or("?");
                let msg = format!(
                    "endpoint {} serves serial {served}, not the installed serial {} (after the reload hooks ran again)",
                    r.addr, installed.serial
                );
                error!(endpoint = %r.addr, "{msg}");
                failed.push(msg);
            }
        }
    }
    let was = rec.not_served;
    rec.not_served = !failed.is_empty();
    if failed.is_empty() {
        if was {
            info!("every endpoint now serves the installed certificate; not-served cleared");
            if rec.last_outcome.as_deref() != Some("hook-failed") {
                rec.last_error = None;
                rec.last_error_class = None;
            }
        }
        return outcome;
    }
    let msg = format!("not served: {}", failed.join("; "));
    rec.last_error = Some(msg.clone());
    rec.last_error_class = Some(crate::policy::ErrorClass::Local);
    rec.last_outcome = Some("not-served".into());
    Outcome {
        name: cert.name.clone(),
        ok: false,
        summary: msg,
    }
}

/// Probes every endpoint concurrently (each its own task, so a hanging one delays
/// nobody else beyond its own timeout), in `eps` order.
async fn verify_all(
    cert: &CertConfig,
    eps: &[Endpoint],
    installed: &Served,
    patience: Patience,
) -> Vec<(String, Probed)> {
    let sni = cert.domains.first().cloned().unwrap_or_default();
    let handles: Vec<_> = eps
        .iter()
        .map(|e| {
            let (e, sni, want, t) = (
                e.clone(),
                sni.clone(),
                installed.clone(),
                cert.verify_timeout,
            );
            tokio::spawn(async move { verify_one(&e, &sni, &want, t, patience).await })
        })
        .collect();
    let mut out = Vec::with_capacity(eps.len());
    for (e, h) in eps.iter().zip(handles) {
        let r = h.await.unwrap_or_else(|err| {
            (
                EndpointState::Unreachable,
                None,
                Some(format!("probe task failed: {err}")),
            )
        });
        out.push((e.addr.clone(), r));
    }
    out
}

/// One endpoint: probe, and with [`Patience::UntilTimeout`] retry with a doubling pause
/// until live or `timeout` has passed.
async fn verify_one(
    e: &Endpoint,
    sni: &str,
    installed: &Served,
    timeout: Duration,
    patience: Patience,
) -> Probed {
    let deadline = Instant::now() + timeout;
    let mut pause = FIRST_BACKOFF;
    // A stale answer seen once is worth more than a last probe cut short by the deadline.
    let mut seen_stale: Option<Probed> = None;
    loop {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let r = match probe(e, sni, left).await {
            Ok(served) => match compare(&served, installed) {
                Comparison::Live => return (EndpointState::Live, Some(served), None),
                Comparison::Stale {
                    served: s,
                    installed: i,
                } => (
                    EndpointState::Stale,
                    Some(served),
                    Some(format!("serves serial {s}, installed {i}")),
                ),
            },
            Err(err) => (EndpointState::Unreachable, None, Some(err.to_string())),
        };
        if r.0 == EndpointState::Stale {
            seen_stale = Some(r.clone());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if patience == Patience::Once || left.is_zero() {
            return match (r.0, seen_stale) {
                (EndpointState::Unreachable, Some(stale)) => stale,
                _ => r,
            };
        }
        // The last pause is cut short so one probe lands at the deadline.
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn cert(verify: &str) -> CertConfig {
        let src = format!(
            "[acme]\ndirectory = \"letsencrypt\"\n[defaults]\nhttp01_listen = \"127.0.0.1:80\"\n\
             [[cert]]\nname = \"www\"\ndomains = [\"www.example.com\"]\ncert_path = \"/x/c.pem\"\n\
             key_path = \"/x/k.pem\"\n{verify}\n"
        );
        let cfg = Config::from_str_at(&src, Path::new("t.toml"), Path::new("/")).unwrap();
        cfg.certs[0].clone()
    }

    #[test]
    fn wake_is_capped_hourly_only_with_endpoints() {
        let now = time::OffsetDateTime::UNIX_EPOCH;
        let later = now + time::Duration::days(20);
        assert_eq!(cap_wake(&cert(""), later, now), later);
        let capped = cap_wake(&cert("verify = [\"127.0.0.1:443\"]"), later, now);
        assert_eq!(capped, now + crate::fault::scaled(VERIFY_EVERY));
        let soon = now + time::Duration::minutes(5);
        assert_eq!(
            cap_wake(&cert("verify = [\"127.0.0.1:443\"]"), soon, now),
            soon
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_once_and_until_the_timeout() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let c = cert(&format!("verify = [\"{addr}\"]\nverify_timeout = \"1s\""));
        let want = Served {
            serial: "01".into(),
            spki_sha256: "00".into(),
            not_after: time::OffsetDateTime::UNIX_EPOCH,
            not_before: time::OffsetDateTime::UNIX_EPOCH,
        };
        for p in [Patience::Once, Patience::UntilTimeout] {
            let r = verify_all(&c, &c.verify, &want, p).await;
            assert_eq!(r.len(), 1);
            assert_eq!(r[0].0, addr.to_string());
            assert_eq!(r[0].1.0, EndpointState::Unreachable, "{p:?}");
            assert!(
                r[0].1.2.as_deref().unwrap().contains("connect"),
                "{:?}",
                r[0].1
            );
        }
    }
}
