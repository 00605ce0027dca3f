//! ACME failures and the one place they are sorted: [`classify`] turns an instant-acme
//! error (plus what the HTTP wrapper saw of the failing exchange) into an [`AcmeError`],
//! and [`AcmeError::class`] sorts that into the [`ErrorClass`] the retry ladder and
//! `status` use.

use std::time::Duration;

use http::Method;
use instant_acme::{Error as AcmeLibError, Identifier, Problem};
use time::OffsetDateTime;

use super::POLL_TIMEOUT;
use super::ca::Ca;
use super::http::{Exchange, Fault, error_chain, take_last};
use crate::challenge::ChallengeError;
use crate::hooks::HookError;
use crate::policy::ErrorClass;
use crate::timefmt::format_duration;

/// An ACME failure, sorted into what the retry ladder needs to know.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The CA answered with an RFC 7807 problem document.
    #[error("{step}: the CA said: {detail} ({kind}){context}")]
    Problem {
        /// Which step of the flow.
        step: &'static str,
        /// The `urn:ietf:params:acme:error:*` type.
        kind: String,
        /// The human detail.
        detail: String,
        /// Subproblems and which request got the answer, pre-formatted.
        context: String,
        /// When the CA asked us to come back.
        retry_after: Option<OffsetDateTime>,
        /// The HTTP status of the answer, when known.
        status: Option<u16>,
    },
    /// The CA answered an HTTP error without a usable problem document.
    #[error(
        "{step}: the CA answered HTTP {status} to {method} {url}{}",
        quote(excerpt)
    )]
    HttpStatus {
        /// Which step.
        step: &'static str,
        /// The request method.
        method: String,
        /// The request URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the body, bounded.
        excerpt: String,
        /// When the CA asked us to come back.
        retry_after: Option<OffsetDateTime>,
    },
    /// The CA's answer is not what ACME says it must be (not JSON, wrong fields, too big).
    #[error(
        "{step}: unexpected answer from the CA to {method} {url} (HTTP {status}): {message}{}",
        quote(excerpt)
    )]
    BadResponse {
        /// Which step.
        step: &'static str,
        /// The request method.
        method: String,
        /// The request URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// What is wrong with it.
        message: String,
        /// The start of the body, bounded.
        excerpt: String,
    },
    /// The CA did not answer in time: one request (`acme.request_timeout`) or the whole
    /// order (`acme.order_timeout`).
    #[error("{step}: timed out after {}: {what}", format_duration(*after))]
    Timeout {
        /// Which step.
        step: &'static str,
        /// What did not finish.
        what: String,
        /// The limit that was hit.
        after: Duration,
    },
    /// The CA could not be reached or the connection failed.
    #[error("{step}: cannot reach the ACME server {directory}: {message}")]
    Transport {
        /// Which step.
        step: &'static str,
        /// The directory URL.
        directory: String,
        /// The cause chain.
        message: String,
    },
    /// The CA's HTTPS certificate does not chain to a trusted root: retrying cannot help
    /// until the configuration (or the CA) changes.
    #[error(
        "{step}: the TLS certificate of the ACME server {directory} is not trusted by {trust}: {cause}"
    )]
    UntrustedCa {
        /// Which step.
        step: &'static str,
        /// The directory URL.
        directory: String,
        /// What we trust, naming the bundle file.
        trust: String,
        /// rustls' verdict.
        cause: String,
    },
    /// An earlier answer of this CA asked us to wait, and that time has not come.
    #[error(
        "the CA {directory} asked us to wait until {until_text} (Retry-After); not contacting it before then"
    )]
    Deferred {
        /// The directory URL.
        directory: String,
        /// Until when.
        until: OffsetDateTime,
        /// `until`, RFC 3339.
        until_text: String,
    },
    /// The CA handed out a challenge token that is not the base64url string RFC 8555
    /// requires (e.g. a path such as `../../x`): nothing is published for it.
    #[error(
        "the CA {directory} handed out an unusable challenge for {identifier} ({url}): token {token:?} is not base64url (RFC 8555 section 8.1); refusing to publish it"
    )]
    BadChallenge {
        /// The directory URL.
        directory: String,
        /// The name being validated.
        identifier: String,
        /// The challenge URL.
        url: String,
        /// The token, shortened.
        token: String,
    },
    /// The CA does not offer a feature we asked for.
    #[error("{step}: the CA does not support {what}")]
    Unsupported {
        /// Which step.
        step: &'static str,
        /// The feature.
        what: &'static str,
    },
    /// The CA accepted `replaces` but did not honour it.
    #[error("{step}: the CA does not honour ARI `replaces` ({message})")]
    ReplacesIgnored {
        /// Which step.
        step: &'static str,
        /// What instant-acme saw.
        message: String,
    },
    /// Validation of a name failed.
    #[error("validation failed: {0}")]
    Validation(String),
    /// Publishing a challenge failed.
    #[error(transparent)]
    Challenge(#[from] ChallengeError),
    /// Anything else (unexpected responses, local problems).
    #[error("{step}: {message}")]
    Other {
        /// Which step.
        step: &'static str,
        /// What happened.
        message: String,
    },
}

fn bracket(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(" [{s}]")
    }
}

fn quote(excerpt: &str) -> String {
    if excerpt.is_empty() {
        String::new()
    } else {
        format!("; it began with {excerpt:?}")
    }
}

/// Problem types that mean the CA (not our request) had trouble.
const TRANSIENT_PROBLEMS: &[&str] = &[
    "urn:ietf:params:acme:error:badNonce",
    "urn:ietf:params:acme:error:serverInternal",
];
const RATE_LIMITED: &str = "urn:ietf:params:acme:error:rateLimited";

/// The class of an HTTP status that came without a more telling problem type.
fn status_class(status: u16) -> ErrorClass {
    match status {
        429 => ErrorClass::RateLimited,
        s if s >= 500 => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

/// How a failure to publish a challenge is sorted.
///
/// Binding the HTTP-01 port (in use, no permission) and writing into the webroot (missing,
/// not writable, disk full) are failures of this machine: [`ErrorClass::Local`], the
/// operator may fix them any minute. A token that is not base64url is the CA's doing and
/// would come again: [`ErrorClass::Permanent`], like [`AcmeError::BadChallenge`].
///
/// A failing DNS-01 hook is not sorted as permanent: the hook is the operator's own
/// program, and its exit status cannot tell a DNS provider's outage from bad credentials;
/// neither is a CA refusal, and holding a just-fixed hook back for the permanent step
/// (100 minutes) helps nobody. A hook that could not be started or that failed is
/// [`ErrorClass::Local`]; one that timed out (a slow DNS API) is [`ErrorClass::Transient`].
pub fn challenge_class(e: &ChallengeError) -> ErrorClass {
    match e {
        ChallengeError::Listen { .. } | ChallengeError::Webroot { .. } => ErrorClass::Local,
        ChallengeError::BadToken { .. } => ErrorClass::Permanent,
        // etcd trouble while publishing a token: it comes back by itself.
        ChallengeError::Shared(_) => ErrorClass::Transient,
        ChallengeError::Dns { source, .. } => match source {
            HookError::Timeout { .. } => ErrorClass::Transient,
            HookError::Spawn { .. } | HookError::Failed { .. } | HookError::Signal { .. } => {
                ErrorClass::Local
            }
        },
    }
}

impl AcmeError {
    /// How the retry ladder and `status` treat this failure. The one place where errors
    /// are sorted; [`Self::is_retryable`] and the in-run retries follow from it.
    ///
    /// An answer carrying a Retry-After is rate-limited whatever its type: the CA named
    /// when to come back. A garbled answer ([`Self::BadResponse`]) or an unexpected
    /// failure ([`Self::Other`]) is transient: the ladder tries again as it is.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Problem { retry_after, .. } | Self::HttpStatus { retry_after, .. }
                if retry_after.is_some() =>
            {
                ErrorClass::RateLimited
            }
            Self::Problem { kind, status, .. } => {
                if kind == RATE_LIMITED {
                    ErrorClass::RateLimited
                } else if TRANSIENT_PROBLEMS.contains(&kind.as_str()) {
                    ErrorClass::Transient
                } else {
                    // A 5xx or 429 with a client-side problem type is still the CA's state.
                    status.map_or(ErrorClass::Permanent, status_class)
                }
            }
            Self::HttpStatus { status, .. } => status_class(*status),
            Self::Deferred { .. } => ErrorClass::RateLimited,
            Self::Timeout { .. } | Self::Transport { .. } => ErrorClass::Transient,
            Self::BadResponse { .. } | Self::Other { .. } => ErrorClass::Transient,
            Self::UntrustedCa { .. }
            | Self::BadChallenge { .. }
            | Self::Unsupported { .. }
            | Self::ReplacesIgnored { .. }
            | Self::Validation(_) => ErrorClass::Permanent,
            Self::Challenge(e) => challenge_class(e),
        }
    }

    /// Whether the CA's side may well look different later (rate limits, outages,
    /// timeouts), as opposed to permanent refusals (`rejectedIdentifier`, `unauthorized`,
    /// `caa`, an untrusted TLS certificate, ...) and local trouble.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.class(),
            ErrorClass::Transient | ErrorClass::RateLimited
        )
    }

    /// Whether to try again within this run. A CA that let a request time out, or asked us
    /// to wait, is left to the retry ladder instead: repeating would only multiply the
    /// wait. A garbled answer or an unexpected failure is not repeated either: a broken CA
    /// answers the same seconds later, and every repetition is load on it.
    pub(super) fn retry_in_run(&self) -> bool {
        self.is_retryable()
            && !self.is_bad_nonce()
            && !matches!(
                self,
                Self::Timeout { .. }
                    | Self::Deferred { .. }
                    | Self::BadResponse { .. }
                    | Self::Other { .. }
            )
    }

    /// The server's Retry-After, if it sent one (or the stored one that deferred us).
    pub fn retry_after(&self) -> Option<OffsetDateTime> {
        match self {
            Self::Problem { retry_after, .. } | Self::HttpStatus { retry_after, .. } => {
                *retry_after
            }
            Self::Deferred { until, .. } => Some(*until),
            _ => None,
        }
    }

    /// The CA no longer knows our account (it was deleted, or the CA was reset).
    pub fn is_account_gone(&self) -> bool {
        matches!(self, Self::Problem { kind, .. } if kind.ends_with(":accountDoesNotExist"))
    }

    pub(super) fn is_bad_nonce(&self) -> bool {
        matches!(self, Self::Problem { kind, .. } if kind.ends_with(":badNonce"))
    }

    pub(super) fn step(&self) -> &'static str {
        match self {
            Self::Problem { step, .. }
            | Self::HttpStatus { step, .. }
            | Self::BadResponse { step, .. }
            | Self::Timeout { step, .. }
            | Self::Transport { step, .. }
            | Self::UntrustedCa { step, .. }
            | Self::Unsupported { step, .. }
            | Self::ReplacesIgnored { step, .. }
            | Self::Other { step, .. } => step,
            Self::Deferred { .. } => "deferred",
            Self::BadChallenge { .. } => "fetch authorization",
            Self::Validation(_) | Self::Challenge(_) => "validation",
        }
    }

    /// Whether a Retry-After on this error speaks for the whole CA (an outage, or an
    /// answer to a request shared by every order) rather than for this one order.
    pub(super) fn is_ca_wide(&self) -> bool {
        let status = match self {
            Self::Problem { status, .. } => *status,
            Self::HttpStatus { status, .. } => Some(*status),
            _ => None,
        };
        matches!(
            self.step(),
            STEP_DIRECTORY | STEP_NONCE | "account" | "create account"
        ) || status.is_some_and(|s| s >= 500)
    }
}

/// The step name of a directory fetch, wherever instant-acme does it.
pub(super) const STEP_DIRECTORY: &str = "fetch directory";
const STEP_NONCE: &str = "new nonce";

fn format_subproblems(p: &Problem) -> String {
    p.subproblems
        .iter()
        .map(|s| {
            let id = match &s.identifier {
                Some(Identifier::Dns(d)) => d.clone(),
                Some(other) => format!("{other:?}"),
                None => "?".into(),
            };
            format!(
                "; {id}: {} ({})",
                s.detail.as_deref().unwrap_or("no detail"),
                s.r#type.as_deref().unwrap_or("no type")
            )
        })
        .collect()
}

/// The TLS verdict inside a connection error, if the failure was the CA's certificate.
/// The rustls error sits inside nested `io::Error`s, whose `source()` skips the payload.
fn untrusted_certificate(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        let mut node: &(dyn std::error::Error + 'static) = c;
        loop {
            if let Some(t @ rustls::Error::InvalidCertificate(_)) =
                node.downcast_ref::<rustls::Error>()
            {
                return Some(t.to_string());
            }
            match node
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
            {
                Some(inner) => node = inner,
                None => break,
            }
        }
        cur = c.source();
    }
    None
}

/// What classifying one error knows: the step, the CA, and the last exchange.
struct Context<'a> {
    ca: &'a Ca,
    step: &'static str,
    last: Option<Exchange>,
}

impl Context<'_> {
    /// An error for a problem document, naming the request that got it.
    fn problem(&self, p: &Problem) -> AcmeError {
        let status = self.last.as_ref().and_then(|x| x.status);
        let origin = match &self.last {
            Some(Exchange {
                method,
                url,
                status: Some(s),
                ..
            }) => format!("HTTP {} to {method} {url}", s.as_u16()),
            _ => String::new(),
        };
        AcmeError::Problem {
            step: self.step,
            kind: p.r#type.clone().unwrap_or_else(|| "no problem type".into()),
            detail: p.detail.clone().unwrap_or_else(|| "no detail".into()),
            context: format!("{}{}", format_subproblems(p), bracket(&origin)),
            retry_after: self.retry_after(),
            status: status.map(|s| s.as_u16()).or(p.status),
        }
    }

    fn retry_after(&self) -> Option<OffsetDateTime> {
        self.last.as_ref().and_then(Exchange::retry_after_time)
    }

    /// The answer did not parse or lacked something: say what the CA actually sent.
    fn unexpected(&self, message: String) -> AcmeError {
        let step = self.step;
        let Some(
            x @ Exchange {
                status: Some(s), ..
            },
        ) = &self.last
        else {
            return AcmeError::Other { step, message };
        };
        if s.is_success() {
            return AcmeError::BadResponse {
                step,
                method: x.method.to_string(),
                url: x.url.clone(),
                status: s.as_u16(),
                message,
                excerpt: x.excerpt.clone(),
            };
        }
        match &x.problem {
            Some(p) => self.problem(p),
            None => AcmeError::HttpStatus {
                step,
                method: x.method.to_string(),
                url: x.url.clone(),
                status: s.as_u16(),
                excerpt: x.excerpt.clone(),
                retry_after: self.retry_after(),
            },
        }
    }

    /// A failure of the HTTP wrapper itself.
    fn fault(&self, f: &Fault) -> AcmeError {
        let step = self.step;
        match f {
            Fault::TimedOut { after, .. } => AcmeError::Timeout {
                step,
                what: f.to_string(),
                after: *after,
            },
            Fault::TooLarge {
                method,
                url,
                status,
                ..
            } => AcmeError::BadResponse {
                step,
                method: method.to_string(),
                url: url.clone(),
                status: status.as_u16(),
                message: f.to_string(),
                excerpt: String::new(),
            },
            Fault::Body { .. } => self.transport(f.to_string()),
        }
    }

    fn transport(&self, message: String) -> AcmeError {
        AcmeError::Transport {
            step: self.step,
            directory: self.ca.directory.clone(),
            message,
        }
    }

    /// instant-acme's catch-all: our wrapper's faults, connection and TLS failures, and
    /// the few conditions it reports as bare strings.
    fn other(&self, inner: &(dyn std::error::Error + Send + Sync + 'static)) -> AcmeError {
        if let Some(f) = inner.downcast_ref::<Fault>() {
            return self.fault(f);
        }
        let message = error_chain(inner);
        if let Some(cause) = untrusted_certificate(inner) {
            AcmeError::UntrustedCa {
                step: self.step,
                directory: self.ca.directory.clone(),
                trust: self.ca.trust(),
                cause,
            }
        } else if inner.is::<hyper_util::client::legacy::Error>() {
            self.transport(message)
        } else if message.contains("replaces field mismatch") {
            // instant-acme 0.8.5 (`Account::new_order`) reports this as
            // `Error::Other(String.into())`: std's boxed string type is private, so there
            // is nothing typed to downcast to, and the message is the only mark.
            AcmeError::ReplacesIgnored {
                step: self.step,
                message,
            }
        } else {
            AcmeError::Other {
                step: self.step,
                message,
            }
        }
    }
}

/// Sorts an instant-acme error, using what the wrapper saw of the failing exchange.
pub(super) fn classify(ca: &Ca, step: &'static str, e: AcmeLibError) -> AcmeError {
    let last = take_last();
    // instant-acme fetches the directory and nonces inside other calls: name what failed.
    let step = match &last {
        Some(x) if x.method == Method::GET && x.url == ca.directory => STEP_DIRECTORY,
        Some(x) if x.method == Method::HEAD => STEP_NONCE,
        _ => step,
    };
    let cx = Context { ca, step, last };
    match e {
        AcmeLibError::Api(p) => cx.problem(&p),
        AcmeLibError::Json(e) => cx.unexpected(format!("not the JSON ACME expects: {e}")),
        AcmeLibError::Str(s) => cx.unexpected(s.to_string()),
        AcmeLibError::Unsupported(what) => AcmeError::Unsupported { step, what },
        AcmeLibError::Timeout(_) => AcmeError::Timeout {
            step,
            what: "the order did not become ready".into(),
            after: POLL_TIMEOUT,
        },
        AcmeLibError::Other(inner) => cx.other(inner.as_ref()),
        #[allow(unreachable_patterns)]
        AcmeLibError::Hyper(e) => cx.transport(error_chain(&e)),
        other => AcmeError::Other {
            step,
            message: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::super::http::{record, scoped, take_last};
    use super::super::testkit::{ca, exchange, json_error, problem};
    use super::*;

    #[test]
    fn retryable_vs_permanent() {
        for k in ["rateLimited", "serverInternal", "badNonce"] {
            assert!(problem(k).is_retryable(), "{k}");
        }
        for k in ["rejectedIdentifier", "unauthorized", "caa", "malformed"] {
            assert!(!problem(k).is_retryable(), "{k}");
        }
        assert!(
            AcmeError::Transport {
                step: "x",
                directory: "d".into(),
                message: "m".into()
            }
            .is_retryable()
        );
        let timeout = AcmeError::Timeout {
            step: "x",
            what: "w".into(),
            after: Duration::from_secs(2),
        };
        assert!(timeout.is_retryable() && !timeout.retry_in_run());
        let untrusted = AcmeError::UntrustedCa {
            step: "x",
            directory: "d".into(),
            trust: "t".into(),
            cause: "c".into(),
        };
        assert!(!untrusted.is_retryable());
        let http = |status| AcmeError::HttpStatus {
            step: "x",
            method: "GET".into(),
            url: "u".into(),
            status,
            excerpt: String::new(),
            retry_after: None,
        };
        assert!(http(503).is_retryable() && http(500).is_retryable() && http(429).is_retryable());
        assert!(!http(404).is_retryable());
    }

    #[tokio::test]
    async fn problem_message_names_type_and_detail() {
        let dir = tempfile::tempdir().unwrap();
        let p: Problem = serde_json::from_str(
            r#"{"type":"urn:ietf:params:acme:error:rejectedIdentifier","detail":"no way","status":400,
                "subproblems":[{"type":"urn:ietf:params:acme:error:caa","detail":"CAA forbids","identifier":{"type":"dns","value":"a.example"}}]}"#,
        )
        .unwrap();
        let e = scoped(async { classify(&ca(dir.path()), "new order", AcmeLibError::Api(p)) })
            .await
            .to_string();
        assert!(
            e.contains("rejectedIdentifier") && e.contains("no way"),
            "{e}"
        );
        assert!(e.contains("a.example: CAA forbids"), "{e}");
    }

    /// A 500 with a problem document at the directory used to read "missing field newNonce".
    #[tokio::test]
    async fn directory_error_shows_status_and_problem() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path());
        let e = scoped(async {
            record(Some(exchange(
                Method::GET,
                "https://ca.test/dir",
                500,
                r#"{"type":"urn:ietf:params:acme:error:serverInternal","detail":"database on fire"}"#,
                None,
            )));
            classify(&ca, "create account", json_error())
        })
        .await;
        let m = e.to_string();
        assert!(m.starts_with("fetch directory:"), "{m}");
        assert!(
            m.contains("HTTP 500") && m.contains("https://ca.test/dir"),
            "{m}"
        );
        assert!(
            m.contains("database on fire") && m.contains("serverInternal"),
            "{m}"
        );
        assert!(e.is_retryable(), "{m}");
    }

    #[tokio::test]
    async fn garbage_is_quoted_briefly_with_step_url_and_status() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path());
        let body = format!("<html>{}</html>", "x".repeat(10_000));
        let e = scoped(async {
            record(Some(exchange(
                Method::GET,
                "https://ca.test/dir",
                200,
                &body,
                None,
            )));
            classify(&ca, "create account", json_error())
        })
        .await;
        let m = e.to_string();
        assert!(m.starts_with("fetch directory: unexpected answer"), "{m}");
        assert!(m.contains("HTTP 200") && m.contains("<html>xxx"), "{m}");
        assert!(m.len() < 600, "excerpt not bounded: {} chars", m.len());
        // An error page without a problem document.
        let e = scoped(async {
            record(Some(exchange(
                Method::HEAD,
                "https://ca.test/nonce",
                503,
                "",
                Some(7200),
            )));
            classify(
                &ca,
                "new order",
                AcmeLibError::Str("error response from newNonce resource"),
            )
        })
        .await;
        let m = e.to_string();
        assert!(
            m.starts_with("new nonce: the CA answered HTTP 503 to HEAD https://ca.test/nonce"),
            "{m}"
        );
        assert!(
            e.is_retryable() && e.is_ca_wide() && e.retry_after().is_some(),
            "{m}"
        );
    }

    /// Two orders in flight at once each see their own Retry-After (the old design had one
    /// slot per account, which the second order's answer overwrote).
    #[tokio::test]
    async fn retry_after_belongs_to_its_own_order() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(dir.path());
        let rate_limited =
            r#"{"type":"urn:ietf:params:acme:error:rateLimited","detail":"slow down"}"#;
        let (a_rec, b_rec) = (tokio::sync::Notify::new(), tokio::sync::Notify::new());
        let a = scoped(async {
            record(Some(exchange(
                Method::POST,
                "https://ca.test/a",
                429,
                rate_limited,
                Some(60),
            )));
            a_rec.notify_one();
            b_rec.notified().await;
            classify(&ca, "new order", json_error())
        });
        let b = scoped(async {
            a_rec.notified().await;
            record(Some(exchange(
                Method::POST,
                "https://ca.test/b",
                429,
                rate_limited,
                Some(7200),
            )));
            b_rec.notify_one();
            classify(&ca, "new order", json_error())
        });
        let (ea, eb) = tokio::join!(a, b);
        let now = OffsetDateTime::now_utc();
        let wait = |e: &AcmeError| (e.retry_after().unwrap() - now).whole_seconds();
        assert!((55..=60).contains(&wait(&ea)), "{ea}: {}", wait(&ea));
        assert!((7195..=7200).contains(&wait(&eb)), "{eb}: {}", wait(&eb));
        assert!(ea.to_string().contains("https://ca.test/a"), "{ea}");
        // Outside any order there is nothing to take.
        assert!(take_last().is_none());
    }

    /// Every variant, and every branch of the problem/status sorting, lands in its class.
    #[test]
    fn every_variant_has_its_class() {
        use ErrorClass::*;
        let soon = Some(OffsetDateTime::now_utc() + time::Duration::seconds(10));
        let with_status = |kind: &str, status, retry_after| AcmeError::Problem {
            step: "new order",
            kind: format!("urn:ietf:params:acme:error:{kind}"),
            detail: "d".into(),
            context: String::new(),
            retry_after,
            status,
        };
        let http = |status, retry_after| AcmeError::HttpStatus {
            step: "x",
            method: "GET".into(),
            url: "u".into(),
            status,
            excerpt: String::new(),
            retry_after,
        };
        let io = || std::io::Error::other("boom");
        let hook = |source| {
            AcmeError::Challenge(ChallengeError::Dns {
                record: "_acme-challenge.a.example.".into(),
                source,
            })
        };
        let cases: Vec<(AcmeError, ErrorClass)> = vec![
            (problem("rateLimited"), RateLimited),
            (with_status("malformed", Some(429), None), RateLimited),
            (with_status("unauthorized", Some(403), soon), RateLimited),
            (http(429, None), RateLimited),
            (http(404, soon), RateLimited),
            (
                AcmeError::Deferred {
                    directory: "d".into(),
                    until: OffsetDateTime::now_utc(),
                    until_text: "t".into(),
                },
                RateLimited,
            ),
            (problem("badNonce"), Transient),
            (problem("serverInternal"), Transient),
            (with_status("malformed", Some(503), None), Transient),
            (http(500, None), Transient),
            (http(503, None), Transient),
            (
                AcmeError::Timeout {
                    step: "x",
                    what: "w".into(),
                    after: Duration::from_secs(2),
                },
                Transient,
            ),
            (
                AcmeError::Transport {
                    step: "x",
                    directory: "d".into(),
                    message: "m".into(),
                },
                Transient,
            ),
            (
                AcmeError::BadResponse {
                    step: "x",
                    method: "GET".into(),
                    url: "u".into(),
                    status: 200,
                    message: "m".into(),
                    excerpt: String::new(),
                },
                Transient,
            ),
            (
                AcmeError::Other {
                    step: "x",
                    message: "m".into(),
                },
                Transient,
            ),
            (problem("unauthorized"), Permanent),
            (problem("rejectedIdentifier"), Permanent),
            (problem("caa"), Permanent),
            (problem("malformed"), Permanent),
            (with_status("accountDoesNotExist", None, None), Permanent),
            (http(404, None), Permanent),
            (
                AcmeError::UntrustedCa {
                    step: "x",
                    directory: "d".into(),
                    trust: "t".into(),
                    cause: "c".into(),
                },
                Permanent,
            ),
            (
                AcmeError::BadChallenge {
                    directory: "d".into(),
                    identifier: "a.example".into(),
                    url: "u".into(),
                    token: "../x".into(),
                },
                Permanent,
            ),
            (
                AcmeError::Unsupported {
                    step: "x",
                    what: "profiles",
                },
                Permanent,
            ),
            (
                AcmeError::ReplacesIgnored {
                    step: "new order",
                    message: "m".into(),
                },
                Permanent,
            ),
            (AcmeError::Validation("v".into()), Permanent),
            (
                AcmeError::Challenge(ChallengeError::Listen {
                    addr: "127.0.0.1:80".parse().unwrap(),
                    source: io(),
                }),
                Local,
            ),
            (
                AcmeError::Challenge(ChallengeError::Webroot {
                    path: "/srv/www/x".into(),
                    source: io(),
                }),
                Local,
            ),
            (
                AcmeError::Challenge(ChallengeError::BadToken {
                    ca: "d".into(),
                    token: "\"../x\"".into(),
                }),
                Permanent,
            ),
            (
                hook(HookError::Spawn {
                    argv: "dns-hook".into(),
                    source: io(),
                }),
                Local,
            ),
            (
                hook(HookError::Failed {
                    argv: "dns-hook".into(),
                    status: "exit status: 1".into(),
                    tail: String::new(),
                }),
                Local,
            ),
            (
                hook(HookError::Signal {
                    pidfile: "/run/x.pid".into(),
                    signal: "HUP".into(),
                    message: "m".into(),
                }),
                Local,
            ),
            (
                hook(HookError::Timeout {
                    argv: "dns-hook".into(),
                    secs: 60,
                    tail: String::new(),
                }),
                Transient,
            ),
        ];
        for (e, class) in &cases {
            assert_eq!(e.class(), *class, "{e:?}");
            assert_eq!(
                e.is_retryable(),
                matches!(class, Transient | RateLimited),
                "{e:?}"
            );
        }
        // Garbled answers and unexpected failures go to the ladder, not a quick repeat.
        let garbled = cases
            .iter()
            .map(|(e, _)| e)
            .filter(|e| matches!(e, AcmeError::BadResponse { .. } | AcmeError::Other { .. }));
        assert_eq!(garbled.clone().count(), 2);
        for e in garbled {
            assert!(e.is_retryable() && !e.retry_in_run(), "{e:?}");
        }
    }
}
