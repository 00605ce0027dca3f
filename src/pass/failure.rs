//! Why a certificate's pass failed, kept typed from the failing call to the record: the
//! class sets the retry ladder's step and is what `status` shows next to the message.

use std::sync::Arc;

use time::OffsetDateTime;

use crate::acme::AcmeError;
use crate::policy::ErrorClass;
use crate::state::StateError;
use crate::store::StoreError;

/// A failed step of one certificate's pass.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// The CA refused, failed or could not be reached during the order.
    #[error(transparent)]
    Acme(Arc<AcmeError>),
    /// No ACME connection (shared by every certificate of the pass for a short while); the
    /// CA's stored hold, if any, sets the next attempt.
    #[error("{error}")]
    Connect {
        /// The connection failure.
        error: Arc<AcmeError>,
        /// A Retry-After the CA gave earlier that still holds.
        hold: Option<OffsetDateTime>,
    },
    /// A new private key or CSR could not be made.
    #[error(transparent)]
    Keys(#[from] crate::keys::KeyError),
    /// A blocking job of the pass died (a panic in key generation or the install job).
    #[error("{0}")]
    Internal(String),
    /// The CA's certificate does not match the key or names: nothing was installed.
    #[error("the CA's certificate failed verification, nothing installed: {0}")]
    Verify(String),
    /// Staging or installing the new set failed; the old set is intact.
    #[error("install failed: {0}")]
    Install(String),
    /// An install a crash interrupted could not be completed.
    #[error("an interrupted install could not be completed: {0}")]
    RollForward(String),
    /// The state directory could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// The files are owned by another state_dir, or keep being destroyed after each
    /// install: another writer, so no order is spent.
    #[error("{0}")]
    Conflict(String),
    /// A target path cannot take the new set (a FIFO, a directory): no order is spent.
    #[error("not ordering: {0}")]
    Preflight(StoreError),
    /// The pessimistic "failed, back off" record could not be written before the order.
    #[error(
        "not ordering: the outcome could not be recorded in the state directory ({0}); an order whose failure cannot be recorded would be repeated on every run"
    )]
    Unrecordable(StateError),
    /// Fleet mode: etcd trouble, a lost lock (another replica's result stands, nothing
    /// installed), or an unusable entry.
    #[error("fleet: {0}")]
    Fleet(String),
    /// The CA's order budget (`acme.max_new_orders`) is spent: no order was sent. Not a
    /// failure; the pass records a deferral instead of a step on the ladder.
    #[error("{message}")]
    Deferred {
        /// The operator's message, with the limit and the time.
        message: String,
        /// When the budget next allows an order.
        until: OffsetDateTime,
    },
}

impl From<AcmeError> for PassError {
    fn from(e: AcmeError) -> Self {
        Self::Acme(Arc::new(e))
    }
}

impl PassError {
    /// The class the ladder and `status` use.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Acme(e) => e.class(),
            Self::Connect { hold: Some(_), .. } | Self::Deferred { .. } => ErrorClass::RateLimited,
            Self::Connect { error, .. } => error.class(),
            Self::Verify(_) | Self::Conflict(_) => ErrorClass::Permanent,
            Self::Internal(_) | Self::Fleet(_) => ErrorClass::Transient,
            Self::Keys(_)
            | Self::Install(_)
            | Self::RollForward(_)
            | Self::State(_)
            | Self::Preflight(_)
            | Self::Unrecordable(_) => ErrorClass::Local,
        }
    }

    /// When the CA asked us to come back, if it did.
    pub fn retry_after(&self) -> Option<OffsetDateTime> {
        match self {
            Self::Acme(e) => e.retry_after(),
            Self::Connect { error, hold } => error.retry_after().or(*hold),
            Self::Deferred { until, .. } => Some(*until),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_and_conflict_failures_have_their_classes() {
        let io = std::io::Error::other("disk full");
        let state = StateError::Io {
            path: "/s/certs/a.json".into(),
            source: io,
        };
        assert_eq!(PassError::from(state).class(), ErrorClass::Local);
        assert_eq!(
            PassError::Conflict("owned by /other".into()).class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            PassError::Install("x".into()).to_string(),
            "install failed: x"
        );
        let held = PassError::Connect {
            error: Arc::new(AcmeError::Other {
                step: "directory",
                message: "down".into(),
            }),
            hold: Some(OffsetDateTime::UNIX_EPOCH),
        };
        assert_eq!(held.class(), ErrorClass::RateLimited);
        assert_eq!(held.retry_after(), Some(OffsetDateTime::UNIX_EPOCH));
    }
}
