//! Proving control of names: HTTP-01 through the built-in responder or a webroot, DNS-01
//! through a hook. Knows nothing about ACME objects: `acme` hands it plain strings.
//!
//! Everything provisioned is recorded in a [`Provisioned`] set whose `cleanup` runs on every
//! path; its `Drop` is the fallback for cancelled tasks, so no challenge file or TXT record
//! is left behind even when an order fails half-way.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::get;
use tracing::{debug, info, warn};

use crate::config::Challenge;

/// Failures while provisioning a challenge.
#[derive(Debug, thiserror::Error)]
pub enum ChallengeError {
    /// The responder could not bind its address.
    #[error("cannot listen on {addr} for HTTP-01: {source}")]
    Listen {
        /// Address from `http01_listen`.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The webroot file could not be written.
    #[error("cannot write HTTP-01 challenge file {path}: {source}")]
    Webroot {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The DNS hook failed.
    #[error("DNS-01 hook for {record}: {source}")]
    Dns {
        /// The TXT record name.
        record: String,
        /// What the hook said.
        source: crate::hooks::HookError,
    },
}

type Tokens = Arc<Mutex<HashMap<String, String>>>;

/// The built-in HTTP-01 responders, one per listen address, shared by all certificates and
/// kept running for the life of the process once started.
#[derive(Debug, Clone, Default)]
pub struct Responders {
    servers: Arc<tokio::sync::Mutex<HashMap<SocketAddr, Tokens>>>,
}

async fn serve_token(
    State(tokens): State<Tokens>,
    UrlPath(token): UrlPath<String>,
) -> (StatusCode, String) {
    let found = tokens.lock().expect("tokens lock").get(&token).cloned();
    match found {
        Some(ka) => {
            debug!(token, "served HTTP-01 challenge");
            (StatusCode::OK, ka)
        }
        None => (StatusCode::NOT_FOUND, "no such challenge\n".into()),
    }
}

impl Responders {
    /// Returns the token table of the responder on `addr`, starting it if needed.
    pub async fn get(&self, addr: SocketAddr) -> Result<Tokens, ChallengeError> {
        let mut servers = self.servers.lock().await;
        if let Some(t) = servers.get(&addr) {
            return Ok(t.clone());
        }
        let tokens: Tokens = Arc::default();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ChallengeError::Listen { addr, source })?;
        let app = axum::Router::new()
            .route("/.well-known/acme-challenge/{token}", get(serve_token))
            .with_state(tokens.clone());
        info!(%addr, "HTTP-01 responder listening");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                warn!(%addr, "HTTP-01 responder stopped: {e}");
            }
        });
        servers.insert(addr, tokens.clone());
        Ok(tokens)
    }
}

/// What one challenge needs, as plain strings.
#[derive(Debug, Clone)]
pub struct ChallengeSpec {
    /// The name being validated, without any wildcard prefix.
    pub domain: String,
    /// HTTP-01 token.
    pub token: String,
    /// HTTP-01 response body.
    pub key_authorization: String,
    /// DNS-01 TXT value.
    pub dns_value: String,
}

#[derive(Debug)]
enum Item {
    Token {
        tokens: Tokens,
        token: String,
    },
    File(PathBuf),
    Dns {
        argv: Vec<String>,
        record: String,
        value: String,
    },
}

/// The challenges provisioned for one order; clean them up with [`Provisioned::cleanup`].
#[derive(Debug)]
pub struct Provisioned {
    cert: String,
    timeout: Duration,
    items: Vec<Item>,
}

impl Provisioned {
    /// An empty set for the named certificate; `timeout` bounds each DNS hook run.
    pub fn new(cert: &str, timeout: Duration) -> Self {
        Self {
            cert: cert.to_string(),
            timeout,
            items: Vec::new(),
        }
    }

    /// Publishes one challenge response using the certificate's configured method.
    pub async fn present(
        &mut self,
        how: &Challenge,
        responders: &Responders,
        spec: &ChallengeSpec,
    ) -> Result<(), ChallengeError> {
        match how {
            Challenge::Http01Listen(addr) => {
                let tokens = responders.get(*addr).await?;
                tokens
                    .lock()
                    .expect("tokens lock")
                    .insert(spec.token.clone(), spec.key_authorization.clone());
                self.items.push(Item::Token {
                    tokens,
                    token: spec.token.clone(),
                });
            }
            Challenge::Http01Webroot(root) => {
                let dir = root.join(".well-known/acme-challenge");
                let path = dir.join(&spec.token);
                let write = || -> std::io::Result<()> {
                    std::fs::create_dir_all(&dir)?;
                    crate::store::write_atomic(
                        &path,
                        spec.key_authorization.as_bytes(),
                        0o644,
                        None,
                    )
                };
                write().map_err(|source| ChallengeError::Webroot {
                    path: path.clone(),
                    source,
                })?;
                self.items.push(Item::File(path));
            }
            Challenge::Dns01Hook(argv) => {
                let record = format!("_acme-challenge.{}.", spec.domain);
                let mut full = argv.clone();
                full.extend(["set".to_string(), record.clone(), spec.dns_value.clone()]);
                // Recorded before running, so a half-done `set` is still cleared.
                self.items.push(Item::Dns {
                    argv: argv.clone(),
                    record: record.clone(),
                    value: spec.dns_value.clone(),
                });
                crate::hooks::run("dns01", &self.cert, &full, &[], None, self.timeout)
                    .await
                    .map_err(|source| ChallengeError::Dns { record, source })?;
            }
        }
        Ok(())
    }

    /// Removes everything provisioned; failures are logged, never fatal.
    pub async fn cleanup(mut self) {
        for item in std::mem::take(&mut self.items) {
            match item {
                Item::Dns {
                    argv,
                    record,
                    value,
                } => {
                    let mut full = argv;
                    full.extend(["clear".to_string(), record.clone(), value]);
                    if let Err(e) =
                        crate::hooks::run("dns01", &self.cert, &full, &[], None, self.timeout).await
                    {
                        warn!(cert = %self.cert, "could not clear DNS-01 record {record}: {e}");
                    }
                }
                other => remove_sync(other),
            }
        }
    }
}

fn remove_sync(item: Item) {
    match item {
        Item::Token { tokens, token } => {
            tokens.lock().expect("tokens lock").remove(&token);
        }
        Item::File(p) => {
            if let Err(e) = std::fs::remove_file(&p)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                warn!("could not remove challenge file {}: {e}", p.display());
            }
        }
        Item::Dns {
            argv,
            record,
            value,
        } => {
            // Cancelled mid-order (no async context to await in): fire the clear anyway.
            let mut cmd = std::process::Command::new(&argv[0]);
            cmd.args(&argv[1..]).args(["clear", &record, &value]);
            if let Err(e) = cmd.status() {
                warn!("could not clear DNS-01 record {record}: {e}");
            }
        }
    }
}

impl Drop for Provisioned {
    fn drop(&mut self) {
        for item in std::mem::take(&mut self.items) {
            remove_sync(item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ChallengeSpec {
        ChallengeSpec {
            domain: "a.example".into(),
            token: "tok123".into(),
            key_authorization: "tok123.thumb".into(),
            dns_value: "dnsval".into(),
        }
    }

    #[tokio::test]
    async fn webroot_file_is_written_and_removed_on_drop() {
        let d = tempfile::tempdir().unwrap();
        let how = Challenge::Http01Webroot(d.path().to_path_buf());
        let path = d.path().join(".well-known/acme-challenge/tok123");
        {
            let mut p = Provisioned::new("t", Duration::from_secs(5));
            p.present(&how, &Responders::default(), &spec())
                .await
                .unwrap();
            assert_eq!(std::fs::read_to_string(&path).unwrap(), "tok123.thumb");
            // dropped without cleanup(): an error path
        }
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn dns_hook_gets_set_then_clear() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("log");
        let how = Challenge::Dns01Hook(vec![
            "sh".into(),
            "-c".into(),
            format!("echo \"$@\" >> {}", log.display()),
            "hook".into(),
        ]);
        let mut p = Provisioned::new("t", Duration::from_secs(5));
        p.present(&how, &Responders::default(), &spec())
            .await
            .unwrap();
        p.cleanup().await;
        let got = std::fs::read_to_string(log).unwrap();
        assert_eq!(
            got,
            "set _acme-challenge.a.example. dnsval\nclear _acme-challenge.a.example. dnsval\n"
        );
    }

    #[tokio::test]
    async fn responder_serves_token_until_cleanup() {
        let r = Responders::default();
        let mut p = Provisioned::new("t", Duration::from_secs(5));
        // Ephemeral ports can be taken between probing and binding: try a few.
        let mut addr = None;
        for _ in 0..5 {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let a = probe.local_addr().unwrap();
            drop(probe);
            if p.present(&Challenge::Http01Listen(a), &r, &spec())
                .await
                .is_ok()
            {
                addr = Some(a);
                break;
            }
        }
        let addr = addr.expect("could not bind a responder port");
        let fetch = || async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /.well-known/acme-challenge/tok123 HTTP/1.0\r\n\r\n")
                .await
                .unwrap();
            let mut v = String::new();
            s.read_to_string(&mut v).await.unwrap();
            v
        };
        let got = fetch().await;
        assert!(
            got.starts_with("HTTP/1.0 200") && got.ends_with("tok123.thumb"),
            "{got}"
        );
        p.cleanup().await;
        assert!(fetch().await.contains(" 404 "));
    }
}
