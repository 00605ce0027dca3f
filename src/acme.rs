//! The only module that talks to instant-acme (pinned 0.8.x; 0.9 will break its API, and
//! keeping every call here makes that upgrade one file).
//!
//! It owns: the HTTP client (with extra roots from `ca_bundle`, and a wrapper that records
//! `Retry-After`, which instant-acme 0.8 does not expose on errors), the account (one per
//! directory, stored 0600 under `state_dir`, created on first use, EAB when configured),
//! ARI look-ups, and the order flow. Every step is retried on `badNonce` (instant-acme gives
//! up after 3; Pebble rejects 5% of nonces by default) and briefly on transient errors.
//! Each step logs under a span carrying the certificate name and order URL.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::Request;
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

/// An ACME failure, sorted into what the retry ladder needs to know.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The CA answered with an RFC 7807 problem document.
    #[error("{step}: the CA said: {detail} ({kind}){subs}")]
    Problem {
        /// Which step of the flow.
        step: &'static str,
        /// The `urn:ietf:params:acme:error:*` type.
        kind: String,
        /// The human detail.
        detail: String,
        /// Subproblems, pre-formatted.
        subs: String,
        /// When the CA asked us to come back.
        retry_after: Option<OffsetDateTime>,
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

const RETRYABLE_PROBLEMS: &[&str] = &[
    "urn:ietf:params:acme:error:badNonce",
    "urn:ietf:params:acme:error:rateLimited",
    "urn:ietf:params:acme:error:serverInternal",
];

impl AcmeError {
    /// Whether waiting and trying again can help (rate limits, outages, timeouts), as
    /// opposed to permanent refusals (`rejectedIdentifier`, `unauthorized`, `caa`, ...).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Problem { kind, .. } => RETRYABLE_PROBLEMS.contains(&kind.as_str()),
            Self::Transport { .. } => true,
            Self::Other { message, .. } => message.contains("timed out"),
            Self::ReplacesIgnored { .. } | Self::Validation(_) | Self::Challenge(_) => false,
        }
    }

    /// The server's Retry-After, if it sent one.
    pub fn retry_after(&self) -> Option<OffsetDateTime> {
        match self {
            Self::Problem { retry_after, .. } => *retry_after,
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
}

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

/// The shared slot where the HTTP wrapper leaves the last error response's Retry-After.
type RetrySlot = Arc<Mutex<Option<SystemTime>>>;

/// instant-acme's HTTP client, wrapped to read `Retry-After` on error responses and to log
/// every request (operators count them when judging whether we hammer a CA).
#[derive(Clone)]
struct Http {
    inner: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    retry_after: RetrySlot,
}

fn parse_retry_after(v: &http::HeaderValue) -> Option<SystemTime> {
    let s = v.to_str().ok()?.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(SystemTime::now() + Duration::from_secs(secs));
    }
    let t = OffsetDateTime::parse(s, &time::format_description::well_known::Rfc2822).ok()?;
    Some(t.into())
}

impl HttpClient for Http {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, AcmeLibError>> + Send>> {
        let method = req.method().clone();
        let uri = req.uri().clone();
        let fut = self.inner.request(req);
        let slot = self.retry_after.clone();
        Box::pin(async move {
            match fut.await {
                Ok(rsp) => {
                    let status = rsp.status();
                    debug!(%method, %uri, status = status.as_u16(), "ACME request");
                    if status.is_client_error() || status.is_server_error() {
                        let ra = rsp
                            .headers()
                            .get(http::header::RETRY_AFTER)
                            .and_then(parse_retry_after);
                        *slot.lock().expect("retry slot") = ra;
                    }
                    Ok(BytesResponse::from(rsp))
                }
                Err(e) => {
                    debug!(%method, %uri, "ACME request failed: {e}");
                    Err(AcmeLibError::Other(Box::new(e)))
                }
            }
        })
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
    http.set_connect_timeout(Some(Duration::from_secs(30)));
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
        retry_after: Arc::default(),
    })
}

/// A connected ACME account.
pub struct Acme {
    account: Account,
    directory: String,
    retry_after: RetrySlot,
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme")
            .field("directory", &self.directory)
            .field("account", &self.account.id())
            .finish()
    }
}

/// How many times a step is repeated after badNonce, beyond instant-acme's own 3 tries.
const NONCE_RETRIES: u32 = 10;
/// How many times a step is repeated after a transient error within one run.
const TRANSIENT_RETRIES: u32 = 2;

/// Bookkeeping for one step's retries.
struct Attempts {
    nonce: u32,
    transient: u32,
}

enum Next {
    Retry,
    Fail(AcmeError),
}

impl Acme {
    fn classify(&self, step: &'static str, e: AcmeLibError) -> AcmeError {
        classify(step, &self.directory, &self.retry_after, e)
    }

    async fn after_error(&self, step: &'static str, e: AcmeLibError, a: &mut Attempts) -> Next {
        let err = self.classify(step, e);
        if err.is_bad_nonce() && a.nonce < NONCE_RETRIES {
            a.nonce += 1;
            debug!(step, attempt = a.nonce, "badNonce, retrying the step");
            return Next::Retry;
        }
        retry_transient(err, a).await
    }
}

async fn retry_transient(err: AcmeError, a: &mut Attempts) -> Next {
    if err.is_retryable() && !err.is_bad_nonce() && a.transient < TRANSIENT_RETRIES {
        a.transient += 1;
        let mut wait = Duration::from_secs(1 << a.transient);
        if let Some(ra) = err.retry_after() {
            let d = ra - OffsetDateTime::now_utc();
            let d = Duration::try_from(d).unwrap_or_default();
            if d > Duration::from_secs(30) {
                // Longer than we'd block a run: leave it to the retry ladder.
                return Next::Fail(err);
            }
            wait = wait.max(d);
        }
        warn!("{err}; retrying in {}s", wait.as_secs());
        tokio::time::sleep(wait).await;
        return Next::Retry;
    }
    Next::Fail(err)
}

fn classify(step: &'static str, directory: &str, slot: &RetrySlot, e: AcmeLibError) -> AcmeError {
    let retry_after = slot
        .lock()
        .expect("retry slot")
        .take()
        .map(OffsetDateTime::from);
    match e {
        AcmeLibError::Api(p) => AcmeError::Problem {
            step,
            kind: p.r#type.clone().unwrap_or_else(|| "no problem type".into()),
            detail: p.detail.clone().unwrap_or_else(|| "no detail".into()),
            subs: format_subproblems(&p),
            retry_after,
        },
        AcmeLibError::Other(inner) => {
            let message = error_chain(inner.as_ref());
            if message.contains("replaces field mismatch") {
                AcmeError::ReplacesIgnored { step, message }
            } else if inner.is::<hyper_util::client::legacy::Error>() {
                AcmeError::Transport {
                    step,
                    directory: directory.to_string(),
                    message,
                }
            } else {
                AcmeError::Other { step, message }
            }
        }
        #[allow(unreachable_patterns)]
        AcmeLibError::Hyper(e) => AcmeError::Transport {
            step,
            directory: directory.to_string(),
            message: error_chain(&e),
        },
        AcmeLibError::Timeout(_) => AcmeError::Other {
            step,
            message: "timed out waiting for the CA".into(),
        },
        AcmeLibError::Json(e) => AcmeError::Other {
            step,
            message: format!("unexpected response from the CA (not the expected JSON): {e}"),
        },
        other => AcmeError::Other {
            step,
            message: other.to_string(),
        },
    }
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
        let mut attempts = Attempts {
            nonce: 0,
            transient: 0,
        };
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
    /// Loads the account for the configured directory, creating (and storing) it on first use.
    pub async fn connect(cfg: &AcmeConfig, state: &StateDir) -> Result<Self, AcmeError> {
        let http = build_http(cfg)?;
        let slot = http.retry_after.clone();
        let directory = cfg.directory.clone();
        let path = state.account_file(&directory);
        let mut attempts = Attempts {
            nonce: 0,
            transient: 0,
        };
        let fail = |m: String| AcmeError::Other {
            step: "account",
            message: m,
        };
        let account = if path.exists() {
            let raw = std::fs::read(&path)
                .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
            loop {
                let creds: AccountCredentials = serde_json::from_slice(&raw)
                    .map_err(|e| fail(format!("{}: corrupt account file: {e}", path.display())))?;
                match Account::builder_with_http(Box::new(http.clone()))
                    .from_credentials(creds)
                    .await
                {
                    Ok(a) => break a,
                    Err(e) => {
                        let err = classify("fetch directory", &directory, &slot, e);
                        match retry_transient(err, &mut attempts).await {
                            Next::Retry => continue,
                            Next::Fail(e) => return Err(e),
                        }
                    }
                }
            }
        } else {
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
                        let err = classify("create account", &directory, &slot, e);
                        if err.is_bad_nonce() && attempts.nonce < NONCE_RETRIES {
                            attempts.nonce += 1;
                            continue;
                        }
                        match retry_transient(err, &mut attempts).await {
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
            account
        };
        Ok(Self {
            account,
            directory,
            retry_after: slot,
        })
    }

    /// The CA's directory URL.
    pub fn directory(&self) -> &str {
        &self.directory
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
        let r: Result<_, AcmeError> = step!(self, "renewalInfo", self.account.renewal_info(&id));
        match r {
            Ok((info, retry)) => Ok(AriLookup::Window(
                AriWindow {
                    start: info.suggested_window.start,
                    end: info.suggested_window.end,
                },
                retry,
            )),
            Err(AcmeError::Other { message, .. }) if message.contains("does not support") => {
                Ok(AriLookup::Unsupported)
            }
            Err(e) => Err(e),
        }
    }

    /// Orders a certificate: creates the order, solves pending authorizations (skipping ones
    /// that are already valid), finalizes with the given CSR and downloads the chain.
    /// Challenges are cleaned up on every path.
    pub async fn order(
        &self,
        req: &OrderRequest<'_>,
        responders: &Responders,
    ) -> Result<ChainPem, AcmeError> {
        let cert = req.cert;
        let span = info_span!("order", cert = %cert.name);
        async move {
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
            let mut order = step!(self, "new order", self.account.new_order(&new))?;
            info!(order = %order.url(), "order created");

            let mut provisioned =
                Provisioned::new(&cert.name, cert.hook_timeout).with_ca(&self.directory);
            let result = self
                .solve_and_finalize(&mut order, cert, req.csr_der, responders, &mut provisioned)
                .await;
            provisioned.cleanup().await;
            result
        }
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
        let mut attempts = Attempts {
            nonce: 0,
            transient: 0,
        };
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
            .timeout(Duration::from_secs(120));
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
        let chain = step!(
            self,
            "download certificate",
            order.poll_certificate(&policy)
        )?;
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
            subs: String::new(),
            retry_after: None,
        }
    }

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
    }

    #[test]
    fn problem_message_names_type_and_detail() {
        let slot = RetrySlot::default();
        let p: Problem = serde_json::from_str(
            r#"{"type":"urn:ietf:params:acme:error:rejectedIdentifier","detail":"no way","status":400,
                "subproblems":[{"type":"urn:ietf:params:acme:error:caa","detail":"CAA forbids","identifier":{"type":"dns","value":"a.example"}}]}"#,
        )
        .unwrap();
        let e = classify("new order", "https://ca", &slot, AcmeLibError::Api(p)).to_string();
        assert!(
            e.contains("rejectedIdentifier") && e.contains("no way"),
            "{e}"
        );
        assert!(e.contains("a.example: CAA forbids"), "{e}");
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
