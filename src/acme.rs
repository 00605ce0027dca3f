//! The only module that talks to instant-acme (pinned 0.8.x; 0.9 will break its API, and
//! keeping every call here makes that upgrade one file).
//!
//! It owns: the HTTP client (with extra roots from `ca_bundle`, and a wrapper that bounds
//! every exchange in time and size and remembers what the CA answered, which instant-acme
//! 0.8 does not expose on errors), the account (one per directory, stored 0600 under
//! `state_dir`, created on first use, EAB when configured), ARI look-ups, and the order flow.
//! Every step is retried on `badNonce` (instant-acme gives up after 3; Pebble rejects 5% of
//! nonces by default) and briefly on transient errors. A Retry-After longer than a run may
//! wait is stored with the CA, and no request goes to that CA before it passes.
//! Each step logs under a span carrying the certificate name and order URL.

use std::cell::RefCell;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse,
    CertificateIdentifier, ChallengeType, Error as AcmeLibError, ExternalAccountKey, HttpClient,
    Identifier, NewAccount, NewOrder, OrderStatus, Problem, RetryPolicy,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::challenge::{ChallengeError, ChallengeSpec, Provisioned, Responders};
use crate::config::{AcmeConfig, CertConfig, Challenge};
use crate::policy::AriWindow;
use crate::state::StateDir;
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

const RETRYABLE_PROBLEMS: &[&str] = &[
    "urn:ietf:params:acme:error:badNonce",
    "urn:ietf:params:acme:error:rateLimited",
    "urn:ietf:params:acme:error:serverInternal",
];

fn transient_status(status: u16) -> bool {
    status >= 500 || status == 429
}

impl AcmeError {
    /// Whether waiting and trying again can help (rate limits, outages, timeouts), as
    /// opposed to permanent refusals (`rejectedIdentifier`, `unauthorized`, `caa`, an
    /// untrusted TLS certificate, ...). The one place where errors are sorted.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Problem { kind, status, .. } => {
                RETRYABLE_PROBLEMS.contains(&kind.as_str()) || status.is_some_and(transient_status)
            }
            Self::HttpStatus { status, .. } => transient_status(*status),
            Self::Transport { .. } | Self::Timeout { .. } | Self::Deferred { .. } => true,
            Self::BadResponse { .. }
            | Self::UntrustedCa { .. }
            | Self::BadChallenge { .. }
            | Self::Unsupported { .. }
            | Self::ReplacesIgnored { .. }
            | Self::Validation(_)
            | Self::Challenge(_)
            | Self::Other { .. } => false,
        }
    }

    /// Whether to try again within this run. A CA that let a request time out, or asked us
    /// to wait, is left to the retry ladder instead: repeating would only multiply the wait.
    fn retry_in_run(&self) -> bool {
        self.is_retryable()
            && !self.is_bad_nonce()
            && !matches!(self, Self::Timeout { .. } | Self::Deferred { .. })
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

    fn is_bad_nonce(&self) -> bool {
        matches!(self, Self::Problem { kind, .. } if kind.ends_with(":badNonce"))
    }

    fn step(&self) -> &'static str {
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
    fn is_ca_wide(&self) -> bool {
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

const STEP_DIRECTORY: &str = "fetch directory";
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

/// At most this much of one answer is read: a certificate chain is a few KiB, so 4 MiB
/// leaves room for long chains and is still harmless to hold in memory.
pub const MAX_RESPONSE_BYTES: usize = 4 << 20;
/// How many characters of an unexpected answer an error quotes.
const EXCERPT_CHARS: usize = 160;
/// The longest Retry-After waited out within a run; a longer one is stored with the CA and
/// left to the retry ladder.
const MAX_IN_RUN_WAIT: Duration = Duration::from_secs(30);

/// What one HTTP exchange with the CA returned, kept for classifying the error that
/// instant-acme reports afterwards (it drops the status, the headers and the body).
#[derive(Debug, Clone)]
struct Exchange {
    method: Method,
    url: String,
    /// `None` when no answer came.
    status: Option<StatusCode>,
    retry_after: Option<SystemTime>,
    /// The start of the body, bounded.
    excerpt: String,
    /// The problem document of an error answer, if it had one.
    problem: Option<Problem>,
}

tokio::task_local! {
    /// The last exchange of the ACME call running in this task: one per order (or connect,
    /// or ARI look-up), so concurrent orders never see each other's Retry-After.
    static LAST: RefCell<Option<Exchange>>;
}

/// Runs an ACME call with its own exchange record.
fn scoped<F: Future>(f: F) -> impl Future<Output = F::Output> {
    LAST.scope(RefCell::new(None), f)
}

fn record(x: Option<Exchange>) {
    let _ = LAST.try_with(|c| *c.borrow_mut() = x);
}

fn take_last() -> Option<Exchange> {
    LAST.try_with(|c| c.borrow_mut().take()).ok().flatten()
}

/// What the wrapper itself can go wrong with, beyond hyper's errors.
#[derive(Debug, thiserror::Error)]
enum Fault {
    #[error("no answer to {method} {url} within acme.request_timeout")]
    TimedOut {
        method: Method,
        url: String,
        after: Duration,
    },
    #[error("the answer to {method} {url} is larger than {limit} bytes")]
    TooLarge {
        method: Method,
        url: String,
        status: StatusCode,
        limit: usize,
    },
    #[error("reading the answer to {method} {url} failed: {message}")]
    Body {
        method: Method,
        url: String,
        message: String,
    },
}

/// instant-acme's HTTP client, wrapped to bound every exchange in time and size, to
/// remember each answer for error messages and Retry-After, and to log every request
/// (operators count them when judging whether we hammer a CA).
#[derive(Clone)]
struct Http {
    inner: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    timeout: Duration,
}

fn parse_retry_after(v: &http::HeaderValue) -> Option<SystemTime> {
    let s = v.to_str().ok()?.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(SystemTime::now() + Duration::from_secs(secs));
    }
    let t = OffsetDateTime::parse(s, &time::format_description::well_known::Rfc2822).ok()?;
    Some(t.into())
}

fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(EXCERPT_CHARS * 4)])
        .chars()
        .take(EXCERPT_CHARS)
        .collect()
}

impl HttpClient for Http {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, AcmeLibError>> + Send>> {
        let method = req.method().clone();
        let url = req.uri().to_string();
        let fut = self.inner.request(req);
        let after = self.timeout;
        Box::pin(async move {
            record(Some(Exchange {
                method: method.clone(),
                url: url.clone(),
                status: None,
                retry_after: None,
                excerpt: String::new(),
                problem: None,
            }));
            let exchange = async {
                let rsp = fut.await.map_err(|e| AcmeLibError::Other(Box::new(e)))?;
                let (parts, body) = rsp.into_parts();
                let body = match Limited::new(body, MAX_RESPONSE_BYTES).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                        return Err(AcmeLibError::Other(Box::new(Fault::TooLarge {
                            method: method.clone(),
                            url: url.clone(),
                            status: parts.status,
                            limit: MAX_RESPONSE_BYTES,
                        })));
                    }
                    Err(e) => {
                        return Err(AcmeLibError::Other(Box::new(Fault::Body {
                            method: method.clone(),
                            url: url.clone(),
                            message: error_chain(e.as_ref()),
                        })));
                    }
                };
                Ok((parts, body))
            };
            let (parts, body) = match tokio::time::timeout(after, exchange).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    debug!(%method, %url, "ACME request failed: {e}");
                    return Err(e);
                }
                Err(_) => {
                    debug!(%method, %url, "ACME request timed out");
                    return Err(AcmeLibError::Other(Box::new(Fault::TimedOut {
                        method,
                        url,
                        after,
                    })));
                }
            };
            let status = parts.status;
            debug!(%method, %url, status = status.as_u16(), "ACME request");
            let failed =
                !(status.is_success() || status.is_informational() || status.is_redirection());
            record(Some(Exchange {
                retry_after: parts
                    .headers
                    .get(http::header::RETRY_AFTER)
                    .and_then(parse_retry_after),
                problem: if failed {
                    serde_json::from_slice::<Problem>(&body)
                        .ok()
                        .filter(|p| p.r#type.is_some())
                } else {
                    None
                },
                excerpt: excerpt(&body),
                status: Some(status),
                method,
                url,
            }));
            Ok(BytesResponse {
                parts,
                body: Box::new(body),
            })
        })
    }
}

/// What classifying an error needs to know about the CA, and where its holds are kept.
#[derive(Debug, Clone)]
struct Ca {
    directory: String,
    ca_bundle: Option<PathBuf>,
    state: StateDir,
}

/// When the CA asked not to be contacted again, if that is still ahead: `renew` uses it as
/// the next attempt of a certificate that failed because of it.
pub fn ca_hold(state: &StateDir, directory: &str) -> Option<OffsetDateTime> {
    let rec = state.load_ca(directory).ok()?;
    rec.retry_after_until
        .filter(|t| *t > OffsetDateTime::now_utc())
}

impl Ca {
    fn check_hold(&self) -> Result<(), AcmeError> {
        match ca_hold(&self.state, &self.directory) {
            Some(until) => Err(AcmeError::Deferred {
                directory: self.directory.clone(),
                until,
                until_text: crate::timefmt::rfc3339(until),
            }),
            None => Ok(()),
        }
    }

    /// Stores a Retry-After that outlives the run, so later runs respect it too.
    fn remember_hold(&self, until: OffsetDateTime) {
        // Under the state's CA-record lock: certificate tasks update the same record.
        let mut later = false;
        let res = self.state.update_ca(&self.directory, |rec| {
            later = rec.retry_after_until.is_none_or(|t| t < until);
            if later {
                rec.retry_after_until = Some(until);
            }
        });
        match res {
            Ok(_) if !later => {}
            Ok(_) => info!(
                directory = %self.directory,
                until = %crate::timefmt::rfc3339(until),
                "the CA asked us to wait; not contacting it before then"
            ),
            Err(e) => warn!("cannot record the CA's Retry-After: {e}"),
        }
    }

    fn trust(&self) -> String {
        match &self.ca_bundle {
            Some(b) => format!(
                "acme.ca_bundle {} (nor by the system's roots)",
                b.display()
            ),
            None => "the system's root certificates (set acme.ca_bundle to the CA's root if it uses a private one)".into(),
        }
    }
}

fn build_http(cfg: &AcmeConfig) -> Result<Http, AcmeError> {
    let other = |message: String| AcmeError::Other {
        step: "TLS setup",
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for c in native.certs {
        let _ = roots.add(c);
    }
    if let Some(bundle) = &cfg.ca_bundle {
        let certs = crate::inventory::read_pem_certs(bundle)
            .map_err(|e| other(format!("acme.ca_bundle: {e}")))?;
        for c in certs {
            roots
                .add(c)
                .map_err(|e| other(format!("acme.ca_bundle {}: {e}", bundle.display())))?;
        }
    }
    if roots.is_empty() {
        return Err(other(
            "no trusted root certificates: install ca-certificates or set acme.ca_bundle".into(),
        ));
    }
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // ACME POSTs go out as two writes (headers, body); without TCP_NODELAY the second one
    // waits for the server's delayed ACK, about 40 ms per request.
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.request_timeout));
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Http {
        inner: HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector),
        timeout: cfg.request_timeout,
    })
}

/// A connected ACME account.
pub struct Acme {
    account: Account,
    ca: Ca,
    order_timeout: Duration,
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme")
            .field("directory", &self.ca.directory)
            .field("account", &self.account.id())
            .finish()
    }
}

/// How many times a step is repeated after badNonce, beyond instant-acme's own 3 tries.
/// Each repetition is cheap (the error answer carries a fresh nonce), and a CA rejecting
/// 90% of nonces fails a step's 3 tries 73% of the time: 50 more make a failed step about
/// one in ten million, so a fleet renewal through a nonce storm does not lose a certificate.
const NONCE_RETRIES: u32 = 50;
/// How many times a step is repeated after a transient error within one run.
const TRANSIENT_RETRIES: u32 = 2;
/// How long instant-acme polls an order before giving up (within `acme.order_timeout`).
const POLL_TIMEOUT: Duration = Duration::from_secs(120);

/// Bookkeeping for one step's retries.
#[derive(Default)]
struct Attempts {
    nonce: u32,
    transient: u32,
}

enum Next {
    Retry,
    Fail(AcmeError),
}

impl Acme {
    async fn after_error(&self, step: &'static str, e: AcmeLibError, a: &mut Attempts) -> Next {
        let err = classify(&self.ca, step, e);
        after_failure(&self.ca, err, a).await
    }
}

/// Decides whether a failed step is repeated: badNonce at once, transient errors after a
/// short pause (or the CA's Retry-After when that is short). A longer Retry-After from the
/// CA as a whole is stored so no run contacts it before then.
async fn after_failure(ca: &Ca, err: AcmeError, a: &mut Attempts) -> Next {
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
        let wait = Duration::from_secs(1 << a.transient).max(wait_asked.unwrap_or_default());
        warn!("{err}; retrying in {}s", wait.as_secs());
        tokio::time::sleep(wait).await;
        return Next::Retry;
    }
    Next::Fail(err)
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

/// Sorts an instant-acme error, using what the wrapper saw of the failing exchange.
fn classify(ca: &Ca, step: &'static str, e: AcmeLibError) -> AcmeError {
    let last = take_last();
    // instant-acme fetches the directory and nonces inside other calls: name what failed.
    let step = match &last {
        Some(x) if x.method == Method::GET && x.url == ca.directory => STEP_DIRECTORY,
        Some(x) if x.method == Method::HEAD => STEP_NONCE,
        _ => step,
    };
    let retry_after = last
        .as_ref()
        .and_then(|x| x.retry_after)
        .map(OffsetDateTime::from);
    let status = last.as_ref().and_then(|x| x.status);
    let origin = match &last {
        Some(Exchange {
            method,
            url,
            status: Some(s),
            ..
        }) => format!("HTTP {} to {method} {url}", s.as_u16()),
        _ => String::new(),
    };
    let problem = |p: &Problem| AcmeError::Problem {
        step,
        kind: p.r#type.clone().unwrap_or_else(|| "no problem type".into()),
        detail: p.detail.clone().unwrap_or_else(|| "no detail".into()),
        context: format!("{}{}", format_subproblems(p), bracket(&origin)),
        retry_after,
        status: status.map(|s| s.as_u16()).or(p.status),
    };
    // The answer did not parse or lacked something: say what the CA actually sent.
    let unexpected = |message: String| match &last {
        Some(
            x @ Exchange {
                status: Some(s), ..
            },
        ) if !s.is_success() => match &x.problem {
            Some(p) => problem(p),
            None => AcmeError::HttpStatus {
                step,
                method: x.method.to_string(),
                url: x.url.clone(),
                status: s.as_u16(),
                excerpt: x.excerpt.clone(),
                retry_after,
            },
        },
        Some(
            x @ Exchange {
                status: Some(s), ..
            },
        ) => AcmeError::BadResponse {
            step,
            method: x.method.to_string(),
            url: x.url.clone(),
            status: s.as_u16(),
            message,
            excerpt: x.excerpt.clone(),
        },
        _ => AcmeError::Other { step, message },
    };
    match e {
        AcmeLibError::Api(p) => problem(&p),
        AcmeLibError::Json(e) => unexpected(format!("not the JSON ACME expects: {e}")),
        AcmeLibError::Str(s) => unexpected(s.to_string()),
        AcmeLibError::Unsupported(what) => AcmeError::Unsupported { step, what },
        AcmeLibError::Timeout(_) => AcmeError::Timeout {
            step,
            what: "the order did not become ready".into(),
            after: POLL_TIMEOUT,
        },
        AcmeLibError::Other(inner) => {
            if let Some(f) = inner.downcast_ref::<Fault>() {
                return match f {
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
                    Fault::Body { .. } => AcmeError::Transport {
                        step,
                        directory: ca.directory.clone(),
                        message: f.to_string(),
                    },
                };
            }
            let message = error_chain(inner.as_ref());
            if let Some(cause) = untrusted_certificate(inner.as_ref()) {
                AcmeError::UntrustedCa {
                    step,
                    directory: ca.directory.clone(),
                    trust: ca.trust(),
                    cause,
                }
            } else if inner.is::<hyper_util::client::legacy::Error>() {
                AcmeError::Transport {
                    step,
                    directory: ca.directory.clone(),
                    message,
                }
            } else if message.contains("replaces field mismatch") {
                // instant-acme reports this one as a bare string.
                AcmeError::ReplacesIgnored { step, message }
            } else {
                AcmeError::Other { step, message }
            }
        }
        #[allow(unreachable_patterns)]
        AcmeLibError::Hyper(e) => AcmeError::Transport {
            step,
            directory: ca.directory.clone(),
            message: error_chain(&e),
        },
        other => AcmeError::Other {
            step,
            message: other.to_string(),
        },
    }
}

/// RFC 8555 section 8.1: a token is base64url (and so can never name a path). Checked
/// here, at the CA boundary, and again where a token becomes a file name.
fn is_token(t: &str) -> bool {
    crate::challenge::valid_token(t)
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Runs an instant-acme call until it succeeds, retrying badNonce and brief transient
/// errors. A macro because the call usually borrows the order mutably.
macro_rules! step {
    ($acme:expr, $name:expr, $call:expr) => {{
        let mut attempts = Attempts::default();
        loop {
            match $call.await {
                Ok(v) => break Ok(v),
                Err(e) => match $acme.after_error($name, e, &mut attempts).await {
                    Next::Retry => continue,
                    Next::Fail(err) => break Err(err),
                },
            }
        }
    }};
}

/// What an ARI look-up found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AriLookup {
    /// The suggested window, and when to ask again.
    Window(AriWindow, Duration),
    /// The CA's directory has no `renewalInfo`.
    Unsupported,
    /// This certificate cannot be identified for ARI (no Authority Key Identifier), which
    /// says nothing about the CA.
    NoIdentifier,
}

/// A new certificate chain as the CA returned it (PEM, leaf first).
pub type ChainPem = String;

/// An order request: the certificate's config plus the per-order inputs.
pub struct OrderRequest<'a> {
    /// The certificate being ordered.
    pub cert: &'a CertConfig,
    /// The CSR, DER.
    pub csr_der: &'a [u8],
    /// The leaf being replaced, for ARI's `replaces`.
    pub replaces: Option<&'a [u8]>,
}

impl Acme {
    /// Loads the account for the configured directory, creating (and storing) it on first
    /// use. Refuses without a request while the CA's stored Retry-After is ahead; the whole
    /// connection is bounded by `acme.order_timeout`.
    pub async fn connect(cfg: &AcmeConfig, state: &StateDir) -> Result<Self, AcmeError> {
        let ca = Ca {
            directory: cfg.directory.clone(),
            ca_bundle: cfg.ca_bundle.clone(),
            state: state.clone(),
        };
        ca.check_hold()?;
        let http = build_http(cfg)?;
        let limit = cfg.order_timeout;
        let account = tokio::time::timeout(limit, scoped(Self::account(cfg, &ca, http)))
            .await
            .map_err(|_| AcmeError::Timeout {
                step: "account",
                what: "connecting to the CA did not finish within acme.order_timeout".into(),
                after: limit,
            })??;
        Ok(Self {
            account,
            ca,
            order_timeout: cfg.order_timeout,
        })
    }

    async fn account(cfg: &AcmeConfig, ca: &Ca, http: Http) -> Result<Account, AcmeError> {
        let directory = &ca.directory;
        let path = ca.state.account_file(directory);
        let mut attempts = Attempts::default();
        let fail = |m: String| AcmeError::Other {
            step: "account",
            message: m,
        };
        if path.exists() {
            let raw = crate::fsx::read_regular(&path, crate::fsx::STATE_LIMIT, false)
                .map_err(|e| fail(e.to_string()))?;
            loop {
                let creds: AccountCredentials = serde_json::from_slice(&raw)
                    .map_err(|e| fail(format!("{}: corrupt account file: {e}", path.display())))?;
                match Account::builder_with_http(Box::new(http.clone()))
                    .from_credentials(creds)
                    .await
                {
                    Ok(a) => return Ok(a),
                    Err(e) => {
                        let err = classify(ca, STEP_DIRECTORY, e);
                        match after_failure(ca, err, &mut attempts).await {
                            Next::Retry => continue,
                            Next::Fail(e) => return Err(e),
                        }
                    }
                }
            }
        }
        let eab = match &cfg.eab {
            Some(eab) => {
                use base64::Engine;
                let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(eab.hmac_key.expose().trim_end_matches('='))
                    .map_err(|_| fail("acme.eab_hmac_key is not base64url".into()))?;
                Some(ExternalAccountKey::new(eab.kid.clone(), &key))
            }
            None => None,
        };
        let contact: Vec<&str> = cfg.contact.iter().map(String::as_str).collect();
        let new = NewAccount {
            contact: &contact,
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let (account, creds) = loop {
            match Account::builder_with_http(Box::new(http.clone()))
                .create(&new, directory.clone(), eab.as_ref())
                .await
            {
                Ok(v) => break v,
                Err(e) => {
                    let err = classify(ca, "create account", e);
                    match after_failure(ca, err, &mut attempts).await {
                        Next::Retry => continue,
                        Next::Fail(e) => return Err(e),
                    }
                }
            }
        };
        let data = serde_json::to_vec(&creds).expect("credentials serialize");
        crate::store::write_atomic(&path, &data, 0o600, None)
            .map_err(|e| fail(format!("cannot store account in {}: {e}", path.display())))?;
        info!(directory = %directory, account = %account.id(), "created ACME account");
        Ok(account)
    }

    /// The CA's directory URL.
    pub fn directory(&self) -> &str {
        &self.ca.directory
    }

    /// The CA's suggested renewal window for a leaf, with when to ask again. `Ok(None)` if
    /// the CA does not offer ARI.
    pub async fn renewal_info(&self, leaf_der: &[u8]) -> Result<AriLookup, AcmeError> {
        let der = CertificateDer::from(leaf_der);
        let id = match CertificateIdentifier::try_from(&der) {
            Ok(id) => id,
            Err(e) => {
                debug!("no ARI identifier for this certificate: {e}");
                return Ok(AriLookup::NoIdentifier);
            }
        };
        self.ca.check_hold()?;
        let r: Result<_, AcmeError> =
            scoped(async { step!(self, "renewalInfo", self.account.renewal_info(&id)) }).await;
        match r {
            Ok((info, retry)) => Ok(AriLookup::Window(
                AriWindow {
                    start: info.suggested_window.start,
                    end: info.suggested_window.end,
                },
                retry,
            )),
            Err(AcmeError::Unsupported { .. }) => Ok(AriLookup::Unsupported),
            Err(e) => Err(e),
        }
    }

    /// Orders a certificate: creates the order, solves pending authorizations (skipping ones
    /// that are already valid), finalizes with the given CSR and downloads the chain.
    /// Challenges are cleaned up on every path. The whole order is bounded by
    /// `acme.order_timeout`, and no request goes out while the CA's stored Retry-After is
    /// ahead.
    pub async fn order(
        &self,
        req: &OrderRequest<'_>,
        responders: &Responders,
    ) -> Result<ChainPem, AcmeError> {
        let cert = req.cert;
        let span = info_span!("order", cert = %cert.name);
        let limit = self.order_timeout;
        let deadline = tokio::time::Instant::now() + limit;
        let timed_out = move |step| AcmeError::Timeout {
            step,
            what: "the order did not complete within acme.order_timeout".into(),
            after: limit,
        };
        scoped(async move {
            self.ca.check_hold()?;
            if let Some(p) = &cert.profile {
                let offered: Vec<String> = self
                    .account
                    .profiles()
                    .map(|p| p.name.to_string())
                    .collect();
                if !offered.iter().any(|o| o == p) {
                    return Err(AcmeError::Other {
                        step: "new order",
                        message: if offered.is_empty() {
                            format!("profile {p:?} is configured but the CA offers no profiles")
                        } else {
                            format!(
                                "profile {p:?} is not offered by the CA (it offers: {})",
                                offered.join(", ")
                            )
                        },
                    });
                }
            }
            let ids: Vec<Identifier> = cert
                .domains
                .iter()
                .map(|d| Identifier::Dns(d.clone()))
                .collect();
            let replaces = match req.replaces {
                Some(der) => CertificateIdentifier::try_from(&CertificateDer::from(der))
                    .ok()
                    .map(CertificateIdentifier::into_owned),
                None => None,
            };
            let mut new = NewOrder::new(&ids);
            if let Some(p) = &cert.profile {
                new = new.profile(p);
            }
            if let Some(r) = replaces {
                new = new.replaces(r);
            }
            let mut order = tokio::time::timeout_at(deadline, async {
                step!(self, "new order", self.account.new_order(&new))
            })
            .await
            .map_err(|_| timed_out("new order"))??;
            info!(order = %order.url(), "order created");

            let mut provisioned =
                Provisioned::new(&cert.name, cert.hook_timeout).with_ca(self.directory());
            // The deadline covers the CA's part; cleanup runs after it on every path.
            let result = tokio::time::timeout_at(
                deadline,
                self.solve_and_finalize(
                    &mut order,
                    cert,
                    req.csr_der,
                    responders,
                    &mut provisioned,
                ),
            )
            .await
            .unwrap_or_else(|_| Err(timed_out("order")));
            provisioned.cleanup().await;
            result
        })
        .instrument(span)
        .await
    }

    async fn solve_and_finalize(
        &self,
        order: &mut instant_acme::Order,
        cert: &CertConfig,
        csr_der: &[u8],
        responders: &Responders,
        provisioned: &mut Provisioned,
    ) -> Result<ChainPem, AcmeError> {
        let kind = match cert.challenge {
            Challenge::Dns01Hook(_) => ChallengeType::Dns01,
            _ => ChallengeType::Http01,
        };
        let mut readied: Vec<String> = Vec::new();
        let mut attempts = Attempts::default();
        // The authorization stream caches what it fetched; on a failed fetch we restart it
        // and skip challenges already set ready.
        'restart: loop {
            let mut authzs = order.authorizations();
            while let Some(next) = authzs.next().await {
                let mut authz = match next {
                    Ok(a) => a,
                    Err(e) => match self
                        .after_error("fetch authorization", e, &mut attempts)
                        .await
                    {
                        Next::Retry => continue 'restart,
                        Next::Fail(err) => return Err(err),
                    },
                };
                match authz.status {
                    AuthorizationStatus::Valid => {
                        debug!(identifier = %authz.identifier(), "authorization already valid");
                        continue;
                    }
                    AuthorizationStatus::Pending => {}
                    other => {
                        return Err(AcmeError::Validation(format!(
                            "authorization for {} is {other:?}",
                            authz.identifier()
                        )));
                    }
                }
                let ident = authz.identifier().to_string();
                let mut challenge = authz.challenge(kind.clone()).ok_or_else(|| {
                    AcmeError::Validation(format!(
                        "the CA offers no {kind:?} challenge for {ident}"
                    ))
                })?;
                if readied.contains(&challenge.url) {
                    continue;
                }
                if !is_token(&challenge.token) {
                    return Err(AcmeError::BadChallenge {
                        directory: self.ca.directory.clone(),
                        identifier: ident,
                        url: challenge.url.clone(),
                        token: challenge.token.chars().take(EXCERPT_CHARS).collect(),
                    });
                }
                let ka = challenge.key_authorization();
                let spec = ChallengeSpec {
                    domain: ident.trim_start_matches("*.").to_string(),
                    token: challenge.token.clone(),
                    key_authorization: ka.as_str().to_string(),
                    dns_value: ka.dns_value(),
                };
                provisioned
                    .present(&cert.challenge, responders, &spec)
                    .await?;
                step!(self, "challenge ready", challenge.set_ready())?;
                readied.push(challenge.url.clone());
                debug!(identifier = %ident, "challenge ready");
            }
            break;
        }

        let policy = RetryPolicy::new()
            .initial_delay(Duration::from_millis(100))
            .backoff(1.5)
            .timeout(POLL_TIMEOUT);
        let status = step!(self, "wait for validation", order.poll_ready(&policy));
        let status = match status {
            Ok(s) => s,
            Err(AcmeError::Problem { detail, kind, .. }) => {
                return Err(AcmeError::Validation(
                    self.authorization_errors(order)
                        .await
                        .unwrap_or(format!("{detail} ({kind})")),
                ));
            }
            Err(e) => return Err(e),
        };
        if status != OrderStatus::Ready {
            return Err(AcmeError::Validation(
                self.authorization_errors(order)
                    .await
                    .unwrap_or_else(|| format!("order became {status:?}")),
            ));
        }
        step!(self, "finalize", order.finalize_csr(csr_der))?;
        // `certificate()` polls only while the order is processing and keeps the valid
        // state it saw, so a badNonce on the download repeats just that request (with
        // `poll_certificate` every retry needed two POSTs to pass the nonce check).
        let mut delay = Duration::from_millis(100);
        let chain = loop {
            match step!(self, "download certificate", order.certificate())? {
                Some(chain) => break chain,
                None => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 3 / 2).min(Duration::from_secs(5));
                }
            }
        };
        info!("certificate issued");
        Ok(chain)
    }

    /// Collects the CA's reasons for failed authorizations, for an actionable message.
    async fn authorization_errors(&self, order: &mut instant_acme::Order) -> Option<String> {
        let mut out = Vec::new();
        let mut authzs = order.authorizations();
        while let Some(Ok(mut a)) = authzs.next().await {
            let ident = a.identifier().to_string();
            if let Ok(state) = a.refresh().await {
                for c in &state.challenges {
                    if let Some(p) = &c.error {
                        out.push(format!(
                            "{ident}: {} ({})",
                            p.detail.as_deref().unwrap_or("no detail"),
                            p.r#type.as_deref().unwrap_or("no type")
                        ));
                    }
                }
            }
        }
        (!out.is_empty()).then(|| out.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(kind: &str) -> AcmeError {
        AcmeError::Problem {
            step: "new order",
            kind: format!("urn:ietf:params:acme:error:{kind}"),
            detail: "d".into(),
            context: String::new(),
            retry_after: None,
            status: Some(400),
        }
    }

    fn ca(dir: &Path) -> Ca {
        Ca {
            directory: "https://ca.test/dir".into(),
            ca_bundle: Some("/etc/ck/ca.pem".into()),
            state: StateDir::create(dir).unwrap(),
        }
    }

    fn exchange(method: Method, url: &str, status: u16, body: &str, ra: Option<u64>) -> Exchange {
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

    fn json_error() -> AcmeLibError {
        AcmeLibError::Json(serde_json::from_str::<Problem>("{").unwrap_err())
    }

    use std::path::Path;

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

    #[test]
    fn tokens_must_be_base64url() {
        assert!(is_token("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"));
        for bad in [
            "",
            "../../x",
            "/tmp/x/victim.txt",
            "a.b",
            "a b",
            "a%2F..",
            &"a".repeat(513),
        ] {
            assert!(!is_token(bad), "{bad:?}");
        }
    }

    #[test]
    fn retry_after_is_read_in_both_forms() {
        let v = http::HeaderValue::from_static("120");
        let t = parse_retry_after(&v).unwrap();
        let d = t.duration_since(SystemTime::now()).unwrap().as_secs();
        assert!((118..=120).contains(&d));
        let v = http::HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT");
        assert!(parse_retry_after(&v).is_some());
    }
}
