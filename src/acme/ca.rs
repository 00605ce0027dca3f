//! The CA as this client sees it: its directory, what we trust its TLS certificate by,
//! and the hold a long Retry-After puts on it (stored with the CA's record in the state
//! directory, so later runs respect it too).

use std::path::PathBuf;
use std::time::Duration;

use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use time::OffsetDateTime;
use tracing::{info, warn};

use super::AcmeError;
use super::http::Http;
use crate::config::AcmeConfig;
use crate::state::StateDir;

/// What classifying an error needs to know about the CA, and where its holds are kept.
#[derive(Debug, Clone)]
pub(super) struct Ca {
    pub(super) directory: String,
    pub(super) ca_bundle: Option<PathBuf>,
    pub(super) state: StateDir,
}

/// When the CA asked not to be contacted again, if that is still ahead: `renew` uses it as
/// the next attempt of a certificate that failed because of it.
pub fn ca_hold(state: &StateDir, directory: &str) -> Option<OffsetDateTime> {
    let rec = state.load_ca(directory).ok()?;
    rec.retry_after_until
        .filter(|t| *t > OffsetDateTime::now_utc())
}

impl Ca {
    /// The CA of `cfg`, with its holds kept in `state`.
    pub(super) fn new(cfg: &AcmeConfig, state: &StateDir) -> Self {
        Self {
            directory: cfg.directory.clone(),
            ca_bundle: cfg.ca_bundle.clone(),
            state: state.clone(),
        }
    }

    /// Refuses, without a request, while a stored Retry-After of this CA is ahead.
    pub(super) fn check_hold(&self) -> Result<(), AcmeError> {
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
    pub(super) fn remember_hold(&self, until: OffsetDateTime) {
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

    /// What we trust the CA's TLS certificate by, for an untrusted-certificate error.
    pub(super) fn trust(&self) -> String {
        match &self.ca_bundle {
            Some(b) => format!(
                "acme.ca_bundle {} (nor by the system's roots)",
                b.display()
            ),
            None => "the system's root certificates (set acme.ca_bundle to the CA's root if it uses a private one)".into(),
        }
    }
}

/// The system's roots plus `acme.ca_bundle`.
fn roots(cfg: &AcmeConfig) -> Result<rustls::RootCertStore, AcmeError> {
    let other = |message: String| AcmeError::Other {
        step: "TLS setup",
        message,
    };
    let roots =
        crate::inventory::trust_roots(cfg.ca_bundle.as_deref(), "acme.ca_bundle").map_err(other)?;
    if roots.is_empty() {
        return Err(other(
            "no trusted root certificates: install ca-certificates or set acme.ca_bundle".into(),
        ));
    }
    Ok(roots)
}

/// The HTTPS client for the CA: HTTPS only, its roots, `acme.request_timeout`.
pub(super) fn build_http(cfg: &AcmeConfig) -> Result<Http, AcmeError> {
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots(cfg)?)
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
    Ok(Http::new(
        HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector),
        cfg.request_timeout,
    ))
}
