//! The order flow, in named steps: check the profile, create the order (with ARI's
//! `replaces`), publish and ready each pending challenge, wait for validation, finalize
//! with the CSR and download the chain. Failed authorizations are reported with the CA's
//! reasons.

use std::time::Duration;

use instant_acme::{
    AuthorizationHandle, AuthorizationStatus, CertificateIdentifier, ChallengeType, Identifier,
    NewOrder, Order, OrderStatus, RetryPolicy,
};
use rustls_pki_types::CertificateDer;
use tracing::{debug, info};

use super::http::EXCERPT_CHARS;
use super::retry::{Attempts, Next, step};
use super::{Acme, AcmeError, ChainPem, POLL_TIMEOUT};
use crate::challenge::{ChallengeSpec, Provisioned, Responders};
use crate::config::{CertConfig, Challenge};

/// RFC 8555 section 8.1: a token is base64url (and so can never name a path). Checked
/// here, at the CA boundary, and again where a token becomes a file name.
fn is_token(t: &str) -> bool {
    crate::challenge::valid_token(t)
}

/// What one order publishes its challenges with.
pub(super) struct Solver<'a> {
    pub(super) cert: &'a CertConfig,
    pub(super) responders: &'a Responders,
    pub(super) provisioned: &'a mut Provisioned,
}

impl Solver<'_> {
    fn kind(&self) -> ChallengeType {
        match self.cert.challenge {
            Challenge::Dns01Hook(_) => ChallengeType::Dns01,
            _ => ChallengeType::Http01,
        }
    }
}

impl Acme {
    /// Whether the CA's directory lists this profile: a fallback CA is ordered from
    /// without a profile it does not offer (a fallback is there to get a certificate at
    /// all), where the primary refuses (see [`Self::check_profile`]).
    pub fn offers_profile(&self, profile: &str) -> bool {
        self.account.profiles().any(|p| p.name == profile)
    }

    /// Refuses, before any order exists, a profile the CA does not offer.
    pub(super) fn check_profile(&self, cert: &CertConfig) -> Result<(), AcmeError> {
        let Some(p) = &cert.profile else {
            return Ok(());
        };
        let offered: Vec<String> = self
            .account
            .profiles()
            .map(|p| p.name.to_string())
            .collect();
        if offered.iter().any(|o| o == p) {
            return Ok(());
        }
        Err(AcmeError::Other {
            step: "new order",
            message: if offered.is_empty() {
                format!("profile {p:?} is configured but the CA offers no profiles")
            } else {
                format!(
                    "profile {p:?} is not offered by the CA (it offers: {})",
                    offered.join(", ")
                )
            },
        })
    }

    /// Creates the order for the certificate's names, replacing `replaces` (a leaf, DER)
    /// under ARI when given.
    pub(super) async fn create_order(
        &self,
        cert: &CertConfig,
        replaces: Option<&[u8]>,
    ) -> Result<Order, AcmeError> {
        let ids: Vec<Identifier> = cert
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let replaces = replaces.and_then(|der| {
            CertificateIdentifier::try_from(&CertificateDer::from(der))
                .ok()
                .map(CertificateIdentifier::into_owned)
        });
        let mut new = NewOrder::new(&ids);
        if let Some(p) = &cert.profile {
            new = new.profile(p);
        }
        if let Some(r) = replaces {
            new = new.replaces(r);
        }
        step!(self, "new order", self.account.new_order(&new))
    }

    /// Everything after the order exists, up to the downloaded chain.
    pub(super) async fn solve_and_finalize(
        &self,
        order: &mut Order,
        solver: &mut Solver<'_>,
        csr_der: &[u8],
    ) -> Result<ChainPem, AcmeError> {
        // A resumed order may be further along: solve only what is pending, finalize
        // only what is not finalized yet.
        let status = order.state().status;
        if status == OrderStatus::Pending {
            self.solve_authorizations(order, solver).await?;
            self.wait_ready(order).await?;
        }
        if matches!(status, OrderStatus::Pending | OrderStatus::Ready) {
            step!(self, "finalize", order.finalize_csr(csr_der))?;
        }
        let chain = self.download(order).await?;
        info!("certificate issued");
        Ok(chain)
    }

    /// Publishes and readies the challenge of every pending authorization, skipping ones
    /// that are already valid.
    async fn solve_authorizations(
        &self,
        order: &mut Order,
        solver: &mut Solver<'_>,
    ) -> Result<(), AcmeError> {
        let mut readied: Vec<String> = Vec::new();
        let mut attempts = Attempts::default();
        // The authorization stream caches what it fetched; on a failed fetch we restart it
        // and skip challenges already set ready.
        'restart: loop {
            let mut authzs = order.authorizations();
            while let Some(next) = authzs.next().await {
                let authz = match next {
                    Ok(a) => a,
                    Err(e) => match self
                        .after_error("fetch authorization", e, &mut attempts)
                        .await
                    {
                        Next::Retry => continue 'restart,
                        Next::Fail(err) => return Err(err),
                    },
                };
                self.ready_challenge(authz, solver, &mut readied).await?;
            }
            return Ok(());
        }
    }

    /// Publishes one authorization's challenge and tells the CA it is ready.
    async fn ready_challenge(
        &self,
        mut authz: AuthorizationHandle<'_>,
        solver: &mut Solver<'_>,
        readied: &mut Vec<String>,
    ) -> Result<(), AcmeError> {
        match authz.status {
            AuthorizationStatus::Valid => {
                debug!(identifier = %authz.identifier(), "authorization already valid");
                return Ok(());
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
        let kind = solver.kind();
        let mut challenge = authz.challenge(kind.clone()).ok_or_else(|| {
            AcmeError::Validation(format!("the CA offers no {kind:?} challenge for {ident}"))
        })?;
        if readied.contains(&challenge.url) {
            return Ok(());
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
        solver
            .provisioned
            .present(&solver.cert.challenge, solver.responders, &spec)
            .await?;
        step!(self, "challenge ready", challenge.set_ready())?;
        readied.push(challenge.url.clone());
        debug!(identifier = %ident, "challenge ready");
        Ok(())
    }

    /// Waits until the CA has validated every name, with its reasons when it did not.
    async fn wait_ready(&self, order: &mut Order) -> Result<(), AcmeError> {
        let policy = RetryPolicy::new()
            .initial_delay(Duration::from_millis(100))
            .backoff(1.5)
            .timeout(POLL_TIMEOUT);
        let status = match step!(self, "wait for validation", order.poll_ready(&policy)) {
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
        Ok(())
    }

    /// Downloads the chain of a finalized order, waiting while the CA is processing it.
    async fn download(&self, order: &mut Order) -> Result<ChainPem, AcmeError> {
        // `certificate()` polls only while the order is processing and keeps the valid
        // state it saw, so a badNonce on the download repeats just that request (with
        // `poll_certificate` every retry needed two POSTs to pass the nonce check).
        let mut delay = Duration::from_millis(100);
        loop {
            match step!(self, "download certificate", order.certificate())? {
                Some(chain) => return Ok(chain),
                None => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 3 / 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Collects the CA's reasons for failed authorizations, for an actionable message.
    async fn authorization_errors(&self, order: &mut Order) -> Option<String> {
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
}
