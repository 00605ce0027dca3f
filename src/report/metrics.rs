//! Prometheus metrics, rendered from the same facts as `status` (files on disk + state), so
//! `/metrics`, the node_exporter textfile and `status --json` can never disagree.
//!
//! The daemon serves them on `metrics_listen` (`/metrics`, `/healthz`); timer mode writes
//! them with `renew --metrics-file PATH` (atomically, for node_exporter's textfile
//! collector). Counters live in the state files, so they survive restarts and timer runs.

use std::path::Path;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{StatusRow, WatchRow};
use crate::policy::CertState;

type Labels = Vec<(String, String)>;

fn labels(name: &str) -> Labels {
    vec![("name".to_string(), name.to_string())]
}

/// Renders the Prometheus text exposition for the given status rows.
pub fn render(rows: &[StatusRow], watched: &[WatchRow]) -> String {
    let families = Families::default();
    for r in rows {
        families.add(r);
    }
    let watch = WatchFamilies::default();
    for w in watched {
        watch.add(w);
    }
    let mut reg = Registry::with_prefix("certkeeper");
    families.register(&mut reg);
    watch.register(&mut reg);
    register_fleet(&mut reg, rows);
    let mut out = String::new();
    encode(&mut out, &reg).expect("writing to a String cannot fail");
    out
}

/// Fleet mode's series: whether etcd answers (`cluster_available`, the alert for a fleet
/// that cannot coordinate) and the revision of each set this replica installed. Nothing
/// without `[cluster]`.
fn register_fleet(reg: &mut Registry, rows: &[StatusRow]) {
    let Some(cluster) = rows.iter().find_map(|r| r.cluster) else {
        return;
    };
    let available = Gauge::<i64>::default();
    available.set(i64::from(cluster == "available"));
    reg.register(
        "cluster_available",
        "Fleet mode: 1 when etcd answered this replica's last request, 0 when it is unavailable",
        available,
    );
    let installed = Family::<Labels, Gauge>::default();
    for r in rows {
        if let Some(rev) = r.fleet.as_ref().and_then(|f| f.installed_here) {
            installed.get_or_create(&labels(&r.name)).set(rev);
        }
    }
    reg.register(
        "fleet_installed_revision",
        "Fleet mode: the etcd revision of the fleet's set this replica installed",
        installed,
    );
}

/// Every metric family, filled row by row and then registered in a fixed order.
#[derive(Default)]
struct Families {
    not_after: Family<Labels, Gauge>,
    renew_at: Family<Labels, Gauge>,
    last_success: Family<Labels, Gauge>,
    last_failure: Family<Labels, Gauge>,
    valid: Family<Labels, Gauge>,
    state: Family<Labels, Gauge>,
    renewals: Family<Labels, Counter>,
    hook_failures: Family<Labels, Counter>,
    consecutive_failures: Family<Labels, Gauge>,
    endpoint_current: Family<Labels, Gauge>,
    endpoint_not_after: Family<Labels, Gauge>,
}

impl Families {
    /// Adds one certificate's series.
    fn add(&self, r: &StatusRow) {
        let l = labels(&r.name);
        if let Some(t) = r.times.not_after {
            self.not_after.get_or_create(&l).set(t);
        }
        self.renew_at.get_or_create(&l).set(r.times.renew_at);
        if let Some(t) = r.times.last_success {
            self.last_success.get_or_create(&l).set(t);
        }
        if let Some(t) = r.times.last_failure {
            self.last_failure.get_or_create(&l).set(t);
        }
        let usable = r.usable;
        self.valid.get_or_create(&l).set(i64::from(usable));
        for s in [
            CertState::Valid,
            CertState::Due,
            CertState::Missing,
            CertState::Invalid,
            CertState::Expired,
            CertState::Deferred,
            CertState::Breaker,
            CertState::NotServed,
        ] {
            let mut sl = l.clone();
            sl.push(("state".into(), s.as_str().into()));
            self.state.get_or_create(&sl).set(i64::from(r.state == s));
        }
        for (result, n) in [("success", r.renewals_ok), ("failure", r.renewals_failed)] {
            let mut rl = l.clone();
            rl.push(("result".into(), result.into()));
            self.renewals.get_or_create(&rl).inc_by(n);
        }
        self.hook_failures.get_or_create(&l).inc_by(r.hook_failures);
        self.consecutive_failures
            .get_or_create(&l)
            .set(i64::from(r.failures));
        self.add_endpoints(r);
    }

    /// One series per `verify` endpoint: whether it serves the installed certificate,
    /// and the served leaf's expiry (what clients really see).
    fn add_endpoints(&self, r: &StatusRow) {
        for e in &r.endpoints {
            let el = vec![
                ("cert".to_string(), r.name.clone()),
                ("endpoint".to_string(), e.addr.clone()),
            ];
            let live = e.result == crate::state::EndpointState::Live;
            self.endpoint_current
                .get_or_create(&el)
                .set(i64::from(live));
            if let Some(t) = e.served_not_after {
                self.endpoint_not_after
                    .get_or_create(&el)
                    .set(t.unix_timestamp());
            }
        }
    }

    /// Registers the families with their help texts, in exposition order.
    fn register(self, reg: &mut Registry) {
        reg.register(
            "certificate_not_after_timestamp_seconds",
            "Expiry of the installed certificate (Unix time)",
            self.not_after,
        );
        reg.register(
            "certificate_renew_at_timestamp_seconds",
            "When the certificate is scheduled for renewal (Unix time)",
            self.renew_at,
        );
        reg.register(
            "certificate_last_success_timestamp_seconds",
            "When a new certificate was last installed (Unix time)",
            self.last_success,
        );
        reg.register(
            "certificate_last_failure_timestamp_seconds",
            "When a renewal attempt last failed (Unix time)",
            self.last_failure,
        );
        reg.register(
            "certificate_valid",
            "1 if the installed set is usable (parses, key matches, names covered, not expired)",
            self.valid,
        );
        reg.register(
            "certificate_state",
            "1 for the certificate's current state (valid, due, missing, invalid, expired, deferred, breaker, not-served)",
            self.state,
        );
        reg.register(
            "certificate_renewals",
            "Renewal attempts by result",
            self.renewals,
        );
        reg.register(
            "certificate_hook_failures",
            "Failed reload hook runs",
            self.hook_failures,
        );
        reg.register(
            "certificate_consecutive_failures",
            "Renewal attempts that failed in a row (0 after a success): the alert rules fire from 2",
            self.consecutive_failures,
        );
        reg.register(
            "endpoint_serves_current",
            "1 if the verify endpoint served the installed certificate at its last check",
            self.endpoint_current,
        );
        reg.register(
            "endpoint_not_after_timestamp_seconds",
            "Expiry of the certificate the verify endpoint served at its last check (Unix time)",
            self.endpoint_not_after,
        );
    }
}

/// The series of watched certificates (`[[watch]]`), labelled by watch and file, so an
/// alert on a private-PKI certificate needs no other exporter.
#[derive(Default)]
struct WatchFamilies {
    not_after: Family<Labels, Gauge>,
    readable: Family<Labels, Gauge>,
    expiring: Family<Labels, Gauge>,
}

impl WatchFamilies {
    /// Adds one watched file's series.
    fn add(&self, w: &WatchRow) {
        let l = vec![
            ("name".to_string(), w.name.clone()),
            ("source".to_string(), w.source.clone()),
        ];
        if let Some(t) = w.not_after_unix {
            self.not_after.get_or_create(&l).set(t);
        }
        self.readable
            .get_or_create(&l)
            .set(i64::from(w.error.is_none()));
        self.expiring.get_or_create(&l).set(i64::from(w.expiring));
    }

    /// Registers the families with their help texts.
    fn register(self, reg: &mut Registry) {
        reg.register(
            "watched_not_after_timestamp_seconds",
            "Expiry of a watched certificate certkeeper does not issue (Unix time)",
            self.not_after,
        );
        reg.register(
            "watched_readable",
            "1 if the watched file holds a certificate that parses",
            self.readable,
        );
        reg.register(
            "watched_expiring",
            "1 if the watched certificate is within its warn_before of expiry (or expired)",
            self.expiring,
        );
    }
}

/// Writes the metrics for node_exporter's textfile collector, atomically (0644).
pub fn write_textfile(
    path: &Path,
    rows: &[StatusRow],
    watched: &[WatchRow],
) -> std::io::Result<()> {
    crate::fsx::write_atomic(path, render(rows, watched).as_bytes(), 0o644, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Rule;
    use crate::report::RowTimes;

    fn row(name: &str, state: CertState) -> StatusRow {
        StatusRow {
            name: name.into(),
            domains: vec!["a.example".into()],
            not_after: None,
            remaining_seconds: None,
            renew_at: String::new(),
            reason: String::new(),
            rule: Rule::Fraction,
            state,
            hold: None,
            hold_until: None,
            hold_reason: None,
            usable: matches!(state, CertState::Valid | CertState::Due),
            serial: None,
            last_error: None,
            error_class: None,
            last_outcome: None,
            last_success: None,
            failures: 0,
            next_attempt: None,
            hooks_pending: false,
            last_failure: None,
            renewals_ok: 3,
            renewals_failed: 1,
            hook_failures: 2,
            ari_window: None,
            ari_next_poll: None,
            warnings: Vec::new(),
            endpoints: Vec::new(),
            issuer: None,
            ca: None,
            fallback_from: None,
            cluster: None,
            fleet: None,
            times: RowTimes {
                not_after: Some(1_900_000_000),
                renew_at: 1_800_000_000,
                last_success: Some(1_700_000_000),
                last_failure: None,
            },
        }
    }

    #[test]
    fn renders_per_certificate_series() {
        let text = render(
            &[row("www", CertState::Valid), row("api", CertState::Expired)],
            &[],
        );
        for want in [
            "certkeeper_certificate_not_after_timestamp_seconds{name=\"www\"} 1900000000",
            "certkeeper_certificate_renew_at_timestamp_seconds{name=\"www\"} 1800000000",
            "certkeeper_certificate_last_success_timestamp_seconds{name=\"www\"} 1700000000",
            "certkeeper_certificate_valid{name=\"www\"} 1",
            "certkeeper_certificate_valid{name=\"api\"} 0",
            "certkeeper_certificate_state{name=\"api\",state=\"expired\"} 1",
            "certkeeper_certificate_renewals_total{name=\"www\",result=\"success\"} 3",
            "certkeeper_certificate_renewals_total{name=\"www\",result=\"failure\"} 1",
            "certkeeper_certificate_hook_failures_total{name=\"www\"} 2",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        assert!(!text.contains("last_failure_timestamp_seconds{name=\"www\"}"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn renders_endpoint_series() {
        use crate::state::{EndpointResult, EndpointState};
        let at = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let mut r = row("www", CertState::NotServed);
        r.endpoints = vec![
            EndpointResult {
                addr: "127.0.0.1:8443".into(),
                result: EndpointState::Live,
                served_serial: Some("0a".into()),
                served_not_after: Some(
                    time::OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap(),
                ),
                checked_at: at,
                error: None,
            },
            EndpointResult {
                addr: "127.0.0.1:25".into(),
                result: EndpointState::Unreachable,
                served_serial: None,
                served_not_after: None,
                checked_at: at,
                error: Some("refused".into()),
            },
        ];
        let text = render(&[r], &[]);
        for want in [
            "certkeeper_endpoint_serves_current{cert=\"www\",endpoint=\"127.0.0.1:8443\"} 1",
            "certkeeper_endpoint_serves_current{cert=\"www\",endpoint=\"127.0.0.1:25\"} 0",
            "certkeeper_endpoint_not_after_timestamp_seconds{cert=\"www\",endpoint=\"127.0.0.1:8443\"} 1900000000",
            "certkeeper_certificate_state{name=\"www\",state=\"not-served\"} 1",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        assert!(
            !text.contains("not_after_timestamp_seconds{cert=\"www\",endpoint=\"127.0.0.1:25\"}")
        );
    }
}
