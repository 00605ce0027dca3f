//! The order limits inside a pass (the arithmetic is in [`crate::budget`]): the circuit
//! breaker is checked before a certificate takes an order slot, and one unit of the CA's
//! order budget is taken right before the order is sent, in one locked update of the CA's
//! record, so concurrent certificates never overspend it. Neither is a failure on the
//! retry ladder; a deferral is not even a failure of the run.

use time::OffsetDateTime;
use tracing::{error, warn};

use super::{CertResult, Outcome, PassError, Runner};
use crate::budget;
use crate::config::CertConfig;
use crate::inventory::OnDisk;
use crate::state::{CaRecord, CertRecord};

/// Whether an order for this certificate will carry ARI `replaces`: the CA offers ARI,
/// has not been caught ignoring `replaces`, and there is a certificate to replace.
pub(super) fn sends_replaces(ca: &CaRecord, has_cert: bool) -> bool {
    ca.ari_supported == Some(true) && !ca.replaces_unsupported && has_cert
}

/// Whether `replaces` may go to the CA at `directory`: only the CA that issued the
/// installed certificate (`issuer`; `None` is the primary) knows the certificate, and
/// another CA would reject the order or ignore the field.
pub(super) fn replaces_goes_to(issuer: Option<&str>, primary: &str, directory: &str) -> bool {
    issuer.unwrap_or(primary) == directory
}

impl Runner {
    /// The breaker's refusal, if it is open for this certificate: logged at ERROR, the
    /// run exits 1, but the retry ladder is untouched. `--force` does not override it:
    /// the breaker exists to stop loops, forced or not.
    pub(super) fn breaker_refusal(
        &self,
        cert: &CertConfig,
        rec: &mut CertRecord,
        force: bool,
        now: OffsetDateTime,
    ) -> Option<CertResult> {
        let tripped = budget::breaker(&rec.issued_at, cert.max_orders_per_cert, now)?;
        let mut msg = tripped.message(&cert.name);
        if force {
            msg = format!("renew --force refused by the {msg}; --force does not override it");
        }
        error!("{msg}");
        rec.last_outcome = Some("breaker".into());
        Some(CertResult::failed(cert, msg, tripped.reopens))
    }

    /// Takes one unit of the CA's order budget for the order about to be sent, or says
    /// when the budget allows the next one ([`PassError::Deferred`]). An order carrying
    /// `replaces` to a CA configured with `replaces_exempt` costs nothing. A state that
    /// cannot record the unit sends no order.
    pub(super) async fn spend_budget(
        &self,
        disk: &OnDisk,
        directory: &str,
    ) -> Result<(), PassError> {
        let Some(limit) = self.cfg.acme.max_new_orders else {
            return Ok(());
        };
        let exempt = self.cfg.acme.replaces_exempt;
        let (state, directory) = (self.state.clone(), directory.to_string());
        let has_cert = disk.info().is_some();
        let now = self.now();
        if let Some(fleet) = &self.fleet {
            // The fleet's budget, counted in etcd for every replica; etcd being down
            // (an emergency order) falls back to this replica's own count.
            let exempt = exempt && sends_replaces(&self.state.load_ca(&directory)?, has_cert);
            match fleet
                .spend_budget(&directory, |times| {
                    if exempt {
                        Ok(())
                    } else {
                        budget::spend(times, &limit, now)
                    }
                })
                .await
            {
                Ok(spent) => {
                    return spent.map_err(|until| PassError::Deferred {
                        message: budget::deferred_message(&limit, until),
                        until,
                    });
                }
                Err(e) => warn!("fleet: counting this order in this replica's own budget: {e}"),
            }
        }
        let spent = tokio::task::spawn_blocking(move || {
            let mut verdict = Ok(());
            state.update_ca(&directory, |ca| {
                if !(exempt && sends_replaces(ca, has_cert)) {
                    verdict = budget::spend(&mut ca.new_orders, &limit, now);
                }
            })?;
            Ok::<_, crate::state::StateError>(verdict)
        })
        .await
        .map_err(|e| PassError::Internal(format!("the order budget could not be read: {e}")))??;
        spent.map_err(|until| PassError::Deferred {
            message: budget::deferred_message(&limit, until),
            until,
        })
    }

    /// Counts an extra order sent within one attempt (a repeat after a lost account or
    /// without `replaces`) against the budget without refusing it: the CA counts it too.
    pub(super) fn charge_repeat(&self, directory: &str) {
        if self.cfg.acme.max_new_orders.is_none() {
            return;
        }
        let now = self.now();
        self.update_ca(directory, |ca| {
            ca.new_orders.push(now);
            ca.new_orders.sort();
        });
    }

    /// Records a deferral: logged once at WARN, the ladder untouched, the outcome ok (a
    /// deferral is the budget working, not a failure), next wake when the budget allows.
    pub(super) fn deferred(
        &self,
        cert: &CertConfig,
        rec: &mut CertRecord,
        message: String,
        until: OffsetDateTime,
        force: bool,
    ) -> CertResult {
        let message = if force {
            format!("{message} (--force does not bypass the order budget)")
        } else {
            message
        };
        warn!("{message}");
        rec.deferred_until = Some(until);
        rec.last_outcome = Some("deferred".into());
        CertResult {
            outcome: Outcome {
                name: cert.name.clone(),
                ok: true,
                summary: message,
            },
            next_wake: until,
            installed: false,
            fingerprint: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::challenge::Responders;
    use crate::clock::ManualClock;
    use crate::config::Config;
    use crate::inventory::CertInfo;
    use crate::state::StateDir;

    fn runner(dir: &std::path::Path, acme_extra: &str, clock: Arc<ManualClock>) -> Runner {
        let src = format!(
            "state_dir = \"{d}/state\"\n[acme]\ndirectory = \"https://127.0.0.1:1/dir\"\n{acme_extra}\n[[cert]]\nname = \"t\"\ndomains = [\"a.example\"]\ncert_path = \"{d}/c.pem\"\nkey_path = \"{d}/k.pem\"\nhttp01_listen = \"127.0.0.1:1\"\nmax_orders_per_cert = 2\n",
            d = dir.display()
        );
        let cfg = Config::from_str_at(&src, std::path::Path::new("t.toml"), dir).unwrap();
        let st = StateDir::create(&dir.join("state")).unwrap();
        Runner::new(Arc::new(cfg), st, Responders::default(), clock)
    }

    fn start() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000)
    }

    fn present() -> OnDisk {
        OnDisk::Present(CertInfo {
            not_before: start(),
            not_after: start() + time::Duration::days(90),
            serial: "aa".into(),
            sans: vec!["a.example".into()],
            leaf_der: vec![1, 2, 3],
            chain_len: 1,
        })
    }

    /// Ten certificate tasks racing for a budget of three: exactly three get a unit, the
    /// others are deferred to the time the first unit leaves the window, and the CA's
    /// record holds exactly the three spent units (no lost update, no overspend).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_tasks_never_overspend_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::at(start()));
        let r = Arc::new(runner(dir.path(), "max_new_orders = \"3/1h\"", clock));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let r = r.clone();
            tasks.spawn(async move {
                r.spend_budget(&OnDisk::Missing("x".into()), &r.cfg.acme.directory.clone())
                    .await
            });
        }
        let (mut granted, mut deferred) = (0, 0);
        while let Some(res) = tasks.join_next().await {
            match res.unwrap() {
                Ok(()) => granted += 1,
                Err(PassError::Deferred { message, until }) => {
                    deferred += 1;
                    assert_eq!(until, start() + time::Duration::hours(1));
                    assert!(
                        message.starts_with("deferred: the CA's order budget (3 per 1h) is spent; next order allowed at "),
                        "{message}"
                    );
                }
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        assert_eq!((granted, deferred), (3, 7));
        let ca = r.state.load_ca(&r.cfg.acme.directory).unwrap();
        assert_eq!(ca.new_orders.len(), 3);
    }

    /// The budget is read from the state, so a new runner (a new process) sees the units
    /// an earlier one spent, and after the window has passed it may order again.
    #[tokio::test]
    async fn the_budget_survives_a_new_runner_and_resumes_after_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::at(start()));
        let missing = OnDisk::Missing("x".into());
        let first = runner(dir.path(), "max_new_orders = \"2/20s\"", clock.clone());
        first
            .spend_budget(&missing, &first.cfg.acme.directory.clone())
            .await
            .unwrap();
        clock.advance(time::Duration::seconds(5));
        first
            .spend_budget(&missing, &first.cfg.acme.directory.clone())
            .await
            .unwrap();
        drop(first);
        let second = runner(dir.path(), "max_new_orders = \"2/20s\"", clock.clone());
        match second
            .spend_budget(&missing, &second.cfg.acme.directory.clone())
            .await
        {
            Err(PassError::Deferred { until, .. }) => {
                assert_eq!(until, start() + time::Duration::seconds(20))
            }
            other => panic!("expected a deferral, got {other:?}"),
        }
        clock.advance(time::Duration::seconds(15));
        second
            .spend_budget(&missing, &second.cfg.acme.directory.clone())
            .await
            .unwrap();
        let ca = second.state.load_ca(&second.cfg.acme.directory).unwrap();
        assert_eq!(
            ca.new_orders,
            vec![
                start() + time::Duration::seconds(5),
                start() + time::Duration::seconds(20)
            ],
            "pruned to the window"
        );
    }

    /// `replaces_exempt` spares only orders that will carry `replaces`: an ARI CA that
    /// honours it and a certificate to replace. Without the setting everything counts.
    #[tokio::test]
    async fn only_replacing_orders_are_exempt_and_only_when_configured() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::at(start()));
        let r = runner(
            dir.path(),
            "max_new_orders = \"1/1h\"\nreplaces_exempt = true",
            clock.clone(),
        );
        let directory = r.cfg.acme.directory.clone();
        r.update_ca(&directory, |ca| ca.ari_supported = Some(true));
        for _ in 0..3 {
            r.spend_budget(&present(), &r.cfg.acme.directory.clone())
                .await
                .unwrap();
        }
        assert!(r.state.load_ca(&directory).unwrap().new_orders.is_empty());
        // A first issuance has nothing to replace: it counts.
        r.spend_budget(&OnDisk::Missing("x".into()), &r.cfg.acme.directory.clone())
            .await
            .unwrap();
        assert!(
            r.spend_budget(&OnDisk::Missing("x".into()), &r.cfg.acme.directory.clone())
                .await
                .is_err()
        );
        // A CA that ignores `replaces` gets none, so nothing is exempt there.
        r.update_ca(&directory, |ca| ca.replaces_unsupported = true);
        assert!(
            r.spend_budget(&present(), &r.cfg.acme.directory.clone())
                .await
                .is_err()
        );

        let dir = tempfile::tempdir().unwrap();
        let r = runner(dir.path(), "max_new_orders = \"1/1h\"", clock);
        r.update_ca(&directory, |ca| ca.ari_supported = Some(true));
        r.spend_budget(&present(), &r.cfg.acme.directory.clone())
            .await
            .unwrap();
        assert!(
            r.spend_budget(&present(), &r.cfg.acme.directory.clone())
                .await
                .is_err(),
            "not exempt by default"
        );
    }

    /// `"unlimited"` turns the budget off: nothing is counted or refused.
    #[tokio::test]
    async fn an_unlimited_budget_records_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::at(start()));
        let r = runner(dir.path(), "max_new_orders = \"unlimited\"", clock);
        for _ in 0..5 {
            r.spend_budget(&OnDisk::Missing("x".into()), &r.cfg.acme.directory.clone())
                .await
                .unwrap();
        }
        r.charge_repeat(&r.cfg.acme.directory.clone());
        let ca = r.state.load_ca(&r.cfg.acme.directory).unwrap();
        assert!(ca.new_orders.is_empty());
    }

    /// The breaker refuses the third order in 24 h for max_orders_per_cert = 2, forced or
    /// not, says so and when it reopens, and leaves the retry ladder alone.
    #[test]
    fn breaker_refuses_even_forced_orders_without_touching_the_ladder() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::at(start()));
        let r = runner(dir.path(), "", clock);
        let cert = r.cfg.certs[0].clone();
        let mut rec = CertRecord::default();
        budget::note_issued(&mut rec.issued_at, start());
        assert!(r.breaker_refusal(&cert, &mut rec, true, start()).is_none());
        budget::note_issued(&mut rec.issued_at, start() + time::Duration::seconds(3));
        let now = start() + time::Duration::seconds(4);
        let res = r
            .breaker_refusal(&cert, &mut rec, true, now)
            .expect("tripped");
        assert!(!res.outcome.ok);
        assert_eq!(res.next_wake, start() + time::Duration::hours(24));
        let msg = &res.outcome.summary;
        assert!(msg.contains("refused by the circuit breaker: 2 certificates issued for t in the last 24h (max_orders_per_cert = 2); next order allowed at "), "{msg}");
        assert!(msg.contains("--force does not override it"), "{msg}");
        assert_eq!(rec.failures, 0);
        assert_eq!(rec.next_attempt_at, None);
        assert_eq!(rec.last_outcome.as_deref(), Some("breaker"));
        let res = r.breaker_refusal(&cert, &mut rec, false, now).unwrap();
        assert!(!res.outcome.summary.contains("--force"));
    }
}
