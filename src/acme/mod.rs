//! The only module that talks to instant-acme (pinned 0.8.x; 0.9 will break its API, and
//! keeping every call under `acme/` makes that upgrade one directory).
//!
//! - `http`: the HTTP client (bounded in time and size, remembering what the
//!   CA answered, which instant-acme 0.8 does not expose on errors, and its Retry-After).
//! - [`error`]: [`AcmeError`], how instant-acme's errors are sorted, and the
//!   [`ErrorClass`](crate::policy::ErrorClass) the retry ladder and `status` use.
//! - `ca`: the CA's TLS trust and the hold a long Retry-After puts on it ([`ca_hold`]).
//! - `retry`: in-run retries (badNonce, brief transient errors).
//! - `account`: the account (one per directory, stored 0600 under `state_dir`, created on
//!   first use, EAB when configured).
//! - `order`: the order flow in named steps.
//!
//! This file holds the public face: connecting, ARI look-ups and ordering, each bounded by
//! `acme.order_timeout` and refused without a request while the CA's stored Retry-After
//! is ahead. Each step logs under a span carrying the certificate name and order URL.

use std::time::Duration;

use instant_acme::{Account, CertificateIdentifier};
use rustls_pki_types::CertificateDer;
use tracing::{Instrument, debug, info, info_span};

mod account;
mod ca;
pub mod error;
mod http;
mod order;
mod retry;

pub use ca::ca_hold;
pub use error::AcmeError;
pub use http::MAX_RESPONSE_BYTES;

use ca::Ca;
use retry::step;

use crate::challenge::{Provisioned, Responders};
use crate::config::{AcmeConfig, CertConfig};
use crate::policy::AriWindow;
use crate::state::StateDir;

/// How long instant-acme polls an order before giving up (within `acme.order_timeout`).
const POLL_TIMEOUT: Duration = Duration::from_secs(120);

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
    /// An order placed earlier (by a replica that died): resumed where the CA still
    /// holds it, instead of placing a new one. A resumed order that is invalid or gone
    /// gives way to a new order.
    pub resume: Option<&'a str>,
    /// Told the URL of a newly created order before any challenge is published, so a
    /// replica taking over can resume it. An error here fails the order.
    pub on_created: Option<&'a dyn OnCreated>,
}

/// Told the URL of each new order ([`OrderRequest::on_created`]).
pub trait OnCreated: Send + Sync {
    /// Records `url`; an error fails the order before any challenge is published.
    fn created(&self, url: String) -> crate::challenge::BoxFut<'_, Result<(), String>>;
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

impl Acme {
    /// Loads the account for the configured directory, creating (and storing) it on first
    /// use. Refuses without a request while the CA's stored Retry-After is ahead; the whole
    /// connection is bounded by `acme.order_timeout`.
    pub async fn connect(cfg: &AcmeConfig, state: &StateDir) -> Result<Self, AcmeError> {
        Self::connect_with(cfg, state, false).await
    }

    /// Like [`Acme::connect`], but a transient failure fails at once instead of being
    /// retried: for optional lookups, so a CA that is down costs a pass no time.
    pub async fn connect_quick(cfg: &AcmeConfig, state: &StateDir) -> Result<Self, AcmeError> {
        Self::connect_with(cfg, state, true).await
    }

    async fn connect_with(
        cfg: &AcmeConfig,
        state: &StateDir,
        quick: bool,
    ) -> Result<Self, AcmeError> {
        let ca = Ca::new(cfg, state);
        ca.check_hold()?;
        let http = ca::build_http(cfg)?;
        let limit = if quick {
            cfg.request_timeout
        } else {
            cfg.order_timeout
        };
        let connecting = http::scoped(account::load_or_create(cfg, &ca, http, quick));
        let account = tokio::time::timeout(limit, connecting)
            .await
            .map_err(|_| AcmeError::Timeout {
                step: "account",
                what: if quick {
                    "connecting to the CA for an optional lookup did not finish within acme.request_timeout".into()
                } else {
                    "connecting to the CA did not finish within acme.order_timeout".into()
                },
                after: limit,
            })??;
        Ok(Self {
            account,
            ca,
            order_timeout: cfg.order_timeout,
        })
    }

    /// The CA's directory URL.
    pub fn directory(&self) -> &str {
        &self.ca.directory
    }

    /// The CA's suggested renewal window for a leaf, with when to ask again, or why there
    /// is none.
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
            http::scoped(async { step!(self, "renewalInfo", self.account.renewal_info(&id)) })
                .await;
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
        let span = info_span!("order", cert = %req.cert.name);
        http::scoped(self.order_scoped(req, responders))
            .instrument(span)
            .await
    }

    /// The resumed order when it is still usable, else a new one (announced to
    /// `on_created`).
    async fn resume_or_create(
        &self,
        req: &OrderRequest<'_>,
    ) -> Result<instant_acme::Order, AcmeError> {
        if let Some(url) = req.resume {
            match step!(self, "resume order", self.account.order(url.to_string())) {
                Ok(mut o) => {
                    let status = o.state().status;
                    if status != instant_acme::OrderStatus::Invalid {
                        info!(order = %url, ?status, "fleet: resuming the order");
                        return Ok(o);
                    }
                    info!(order = %url, "the order in flight is invalid; placing a new one");
                }
                Err(e) => {
                    info!(order = %url, "the order in flight cannot be resumed ({e}); placing a new one")
                }
            }
        }
        let order = self.create_order(req.cert, req.replaces).await?;
        info!(order = %order.url(), "order created");
        if let Some(cb) = req.on_created {
            cb.created(order.url().to_string())
                .await
                .map_err(|message| AcmeError::Other {
                    step: "new order",
                    message,
                })?;
        }
        Ok(order)
    }

    async fn order_scoped(
        &self,
        req: &OrderRequest<'_>,
        responders: &Responders,
    ) -> Result<ChainPem, AcmeError> {
        let cert = req.cert;
        let limit = self.order_timeout;
        let deadline = tokio::time::Instant::now() + limit;
        let timed_out = move |step| AcmeError::Timeout {
            step,
            what: "the order did not complete within acme.order_timeout".into(),
            after: limit,
        };
        self.ca.check_hold()?;
        self.check_profile(cert)?;
        let mut order = tokio::time::timeout_at(deadline, self.resume_or_create(req))
            .await
            .map_err(|_| timed_out("new order"))??;

        let mut provisioned =
            Provisioned::new(&cert.name, cert.hook_timeout).with_ca(self.directory());
        let mut solver = order::Solver {
            cert,
            responders,
            provisioned: &mut provisioned,
        };
        // The deadline covers the CA's part; cleanup runs after it on every path.
        let result = tokio::time::timeout_at(
            deadline,
            self.solve_and_finalize(&mut order, &mut solver, req.csr_der),
        )
        .await
        .unwrap_or_else(|_| Err(timed_out("order")));
        provisioned.cleanup().await;
        result
    }
}

#[cfg(test)]
mod testkit;
