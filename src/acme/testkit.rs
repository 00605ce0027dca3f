//! What the unit tests of `acme/` share: a CA record in a temporary state directory, a
//! recorded exchange, and an instant-acme JSON error.

use std::path::Path;
use std::time::{Duration, SystemTime};

use http::{Method, StatusCode};
use instant_acme::{Error as AcmeLibError, Problem};

use super::ca::Ca;
use super::error::AcmeError;
use super::http::{Exchange, excerpt};
use crate::state::StateDir;

pub(super) fn problem(kind: &str) -> AcmeError {
    AcmeError::Problem {
        step: "new order",
        kind: format!("urn:ietf:params:acme:error:{kind}"),
        detail: "d".into(),
        context: String::new(),
        retry_after: None,
        status: Some(400),
    }
}

pub(super) fn ca(dir: &Path) -> Ca {
    Ca {
        directory: "https://ca.test/dir".into(),
        ca_bundle: Some("/etc/ck/ca.pem".into()),
        state: StateDir::create(dir).unwrap(),
    }
}

pub(super) fn exchange(
    method: Method,
    url: &str,
    status: u16,
    body: &str,
    ra: Option<u64>,
) -> Exchange {
    let status = StatusCode::from_u16(status).unwrap();
    Exchange {
        method,
        url: url.into(),
        status: Some(status),
        retry_after: ra.map(|s| SystemTime::now() + Duration::from_secs(s)),
        excerpt: excerpt(body.as_bytes()),
        problem: if status.is_success() {
            None
        } else {
            serde_json::from_str::<Problem>(body)
                .ok()
                .filter(|p| p.r#type.is_some())
        },
    }
}

pub(super) fn json_error() -> AcmeLibError {
    AcmeLibError::Json(serde_json::from_str::<Problem>("{").unwrap_err())
}
