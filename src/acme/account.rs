//! The ACME account: one per directory, stored 0600 under `state_dir`, created on first
//! use (with External Account Binding when configured).

use std::path::Path;

use instant_acme::{Account, AccountCredentials, ExternalAccountKey, NewAccount};
use tracing::info;

use super::AcmeError;
use super::ca::Ca;
use super::error::{STEP_DIRECTORY, classify};
use super::http::Http;
use super::retry::{Attempts, Next, after_failure};
use crate::config::AcmeConfig;

fn fail(message: String) -> AcmeError {
    AcmeError::Other {
        step: "account",
        message,
    }
}

/// The stored account for `ca`, or a new one (stored before it is returned).
pub(super) async fn load_or_create(
    cfg: &AcmeConfig,
    ca: &Ca,
    http: Http,
    quick: bool,
) -> Result<Account, AcmeError> {
    let path = ca.state.account_file(&ca.directory);
    let attempts = if quick {
        Attempts::without_transient_retries()
    } else {
        Attempts::default()
    };
    if path.exists() {
        return load(ca, &path, http, attempts).await;
    }
    let account = create(cfg, ca, &path, http, attempts).await?;
    info!(directory = %ca.directory, account = %account.id(), "created ACME account");
    Ok(account)
}

/// Loads the account stored in `path`; instant-acme fetches the directory meanwhile.
async fn load(
    ca: &Ca,
    path: &Path,
    http: Http,
    mut attempts: Attempts,
) -> Result<Account, AcmeError> {
    let raw = crate::fsx::read_regular(path, crate::fsx::STATE_LIMIT, false)
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

/// The External Account Binding key, if configured. Never logged: it is a secret.
fn eab_key(cfg: &AcmeConfig) -> Result<Option<ExternalAccountKey>, AcmeError> {
    let Some(eab) = &cfg.eab else {
        return Ok(None);
    };
    use base64::Engine;
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(eab.hmac_key.expose().trim_end_matches('='))
        .map_err(|_| fail("acme.eab_hmac_key is not base64url".into()))?;
    Ok(Some(ExternalAccountKey::new(eab.kid.clone(), &key)))
}

/// Creates an account at the CA and stores its credentials in `path` (0600).
async fn create(
    cfg: &AcmeConfig,
    ca: &Ca,
    path: &Path,
    http: Http,
    mut attempts: Attempts,
) -> Result<Account, AcmeError> {
    let eab = eab_key(cfg)?;
    let contact: Vec<&str> = cfg.contact.iter().map(String::as_str).collect();
    let new = NewAccount {
        contact: &contact,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let (account, creds) = loop {
        match Account::builder_with_http(Box::new(http.clone()))
            .create(&new, ca.directory.clone(), eab.as_ref())
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
    crate::store::write_atomic(path, &data, 0o600, None)
        .map_err(|e| fail(format!("cannot store account in {}: {e}", path.display())))?;
    Ok(account)
}
