//! Retries within one run: every step is repeated on `badNonce` (instant-acme gives up
//! after 3; Pebble rejects 5% of nonces by default) and briefly on transient errors. A
//! Retry-After longer than a run may wait is stored with the CA when it speaks for the
//! whole CA, and the step fails to the retry ladder.

use std::time::Duration;

use instant_acme::Error as AcmeLibError;
use time::OffsetDateTime;
use tracing::{debug, warn};

use super::error::classify;
use super::{Acme, AcmeError, ca::Ca};

/// How many times a step is repeated after badNonce, beyond instant-acme's own 3 tries.
/// Each repetition is cheap (the error answer carries a fresh nonce), and a CA rejecting
/// 90% of nonces fails a step's 3 tries 73% of the time: 50 more make a failed step about
/// one in ten million, so a fleet renewal through a nonce storm does not lose a certificate.
const NONCE_RETRIES: u32 = 50;
/// How many times a step is repeated after a transient error within one run.
const TRANSIENT_RETRIES: u32 = 2;
/// The longest Retry-After waited out within a run; a longer one is stored with the CA and
/// left to the retry ladder.
const MAX_IN_RUN_WAIT: Duration = Duration::from_secs(30);

/// Bookkeeping for one step's retries.
#[derive(Default)]
pub(super) struct Attempts {
    nonce: u32,
    transient: u32,
}

impl Attempts {
    /// Bookkeeping that repeats badNonce but not transient errors: for lookups that are
    /// optional (ARI for a certificate that is not due), where waiting on a CA that is
    /// down would only delay certificates that need nothing from it.
    pub(super) fn without_transient_retries() -> Self {
        Self {
            nonce: 0,
            transient: TRANSIENT_RETRIES,
        }
    }
}

/// What to do after a failed step.
pub(super) enum Next {
    Retry,
    Fail(AcmeError),
}

impl Acme {
    /// Classifies a failed step's error and decides whether to repeat it.
    pub(super) async fn after_error(
        &self,
        step: &'static str,
        e: AcmeLibError,
        a: &mut Attempts,
    ) -> Next {
        let err = classify(&self.ca, step, e);
        after_failure(&self.ca, err, a).await
    }
}

/// Decides whether a failed step is repeated: badNonce at once, transient errors after a
/// short pause (or the CA's Retry-After when that is short). A longer Retry-After from the
/// CA as a whole is stored so no run contacts it before then.
pub(super) async fn after_failure(ca: &Ca, err: AcmeError, a: &mut Attempts) -> Next {
    let now = OffsetDateTime::now_utc();
    let wait_asked = err
        .retry_after()
        .map(|t| Duration::try_from(t - now).unwrap_or_default());
    if let Some(d) = wait_asked
        && d > MAX_IN_RUN_WAIT
    {
        if err.is_ca_wide() {
            ca.remember_hold(err.retry_after().expect("checked above"));
        }
        return Next::Fail(err);
    }
    if err.is_bad_nonce() {
        if a.nonce < NONCE_RETRIES {
            a.nonce += 1;
            debug!(
                step = err.step(),
                attempt = a.nonce,
                "badNonce, retrying the step"
            );
            return Next::Retry;
        }
        return Next::Fail(err);
    }
    if err.retry_in_run() && a.transient < TRANSIENT_RETRIES {
        a.transient += 1;
        // The base step follows `CERTKEEPER_FAULT_TIME_SCALE` in debug builds; a wait the
        // CA asked for never does.
        let base = crate::fault::scaled(Duration::from_secs(1 << a.transient));
        let wait = base.max(wait_asked.unwrap_or_default());
        warn!("{err}; retrying in {}s", wait.as_secs_f64());
        tokio::time::sleep(wait).await;
        return Next::Retry;
    }
    Next::Fail(err)
}

/// Runs an instant-acme call until it succeeds, retrying badNonce and brief transient
/// errors. A macro because the call usually borrows the order mutably.
macro_rules! step {
    ($acme:expr, $name:expr, $call:expr) => {{
        let mut attempts = $crate::acme::retry::Attempts::default();
        loop {
            match $call.await {
                Ok(v) => break Ok(v),
                Err(e) => match $acme.after_error($name, e, &mut attempts).await {
                    $crate::acme::retry::Next::Retry => continue,
                    $crate::acme::retry::Next::Fail(err) => break Err(err),
                },
            }
        }
    }};
}
pub(super) use step;

#[cfg(test)]
mod tests {
    use super::super::ca::ca_hold;
    use super::super::error::classify;
    use super::super::http::{record, scoped};
    use super::super::testkit::{ca, exchange, json_error};
    use super::*;
    use http::Method;

    #[tokio::test]
    async fn long_ca_wide_retry_after_is_stored_and_defers_later_calls() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path());
        let err = scoped(async {
            record(Some(exchange(
                Method::GET,
                "https://ca.test/dir",
                503,
                r#"{"type":"urn:ietf:params:acme:error:rateLimited","detail":"come back later"}"#,
                Some(7200),
            )));
            classify(&ca, "create account", json_error())
        })
        .await;
        assert!(matches!(
            after_failure(&ca, err, &mut Attempts::default()).await,
            Next::Fail(_)
        ));
        let until = ca_hold(&ca.state, &ca.directory).expect("hold stored");
        assert!((until - OffsetDateTime::now_utc()).whole_seconds() > 7000);
        let e = ca.check_hold().unwrap_err();
        assert_eq!(e.retry_after(), Some(until));
        assert!(e.to_string().contains("asked us to wait until"), "{e}");
        // A per-order rate limit does not block the CA for everyone.
        let dir2 = tempfile::tempdir().unwrap();
        let ca2 = self::ca(dir2.path());
        let err = AcmeError::Problem {
            step: "new order",
            kind: "urn:ietf:params:acme:error:rateLimited".into(),
            detail: "too many certificates for this name".into(),
            context: String::new(),
            retry_after: Some(OffsetDateTime::now_utc() + time::Duration::hours(1)),
            status: Some(429),
        };
        assert!(matches!(
            after_failure(&ca2, err, &mut Attempts::default()).await,
            Next::Fail(_)
        ));
        assert!(ca_hold(&ca2.state, &ca2.directory).is_none());
    }
}
