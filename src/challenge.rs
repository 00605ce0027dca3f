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
    /// The CA sent an HTTP-01 token that is not base64url; used as a file name or URL
    /// segment it could point anywhere (`/etc/...`, `../`), so the order fails instead.
    #[error(
        "the CA {ca} sent an HTTP-01 challenge token that is not base64url (RFC 8555 8.3): {token}; refusing to use it"
    )]
    BadToken {
        /// The CA's directory URL (or "(unknown)").
        ca: String,
        /// The token, escaped and truncated for display.
        token: String,
    },
    /// The fleet's token store (etcd) did not take the key authorization, so the replica
    /// the CA's request reaches could not answer it.
    #[error("cannot publish the HTTP-01 token to the fleet: {0}")]
    Shared(String),
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

/// Whether an HTTP-01 token is safe to use as a file name and URL segment: base64url only
/// (`^[A-Za-z0-9_-]{1,256}$`), so no `/`, `.`, NUL or other path syntax can get through.
pub fn valid_token(token: &str) -> bool {
    (1..=256).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A hostile token for an error message: escaped, at most 64 characters.
fn display_token(token: &str) -> String {
    let mut shown: String = token.chars().take(64).collect::<String>();
    let truncated = shown.len() < token.len();
    shown = format!("{shown:?}");
    if truncated {
        shown.push_str(&format!(" (truncated, {} bytes)", token.len()));
    }
    shown
}

/// A boxed future, for the object-safe [`SharedTokens`].
pub type BoxFut<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Where a fleet keeps the HTTP-01 answers of all its replicas: the CA's request lands on
/// whichever replica the load balancer picks, so each responder also answers the tokens
/// another replica's order published. Implemented by [`crate::fleet`] over etcd.
pub trait SharedTokens: Send + Sync + std::fmt::Debug {
    /// Makes `token` answerable by every replica (bounded; an error fails the order).
    fn publish<'a>(
        &'a self,
        token: &'a str,
        key_authorization: &'a str,
    ) -> BoxFut<'a, Result<(), String>>;
    /// Removes it again (best effort).
    fn withdraw<'a>(&'a self, token: &'a str) -> BoxFut<'a, ()>;
    /// The key authorization another replica published, if any (bounded).
    fn lookup<'a>(&'a self, token: &'a str) -> BoxFut<'a, Option<String>>;
}

/// The fleet's token store, when fleet mode is on.
type SharedSlot = Arc<std::sync::RwLock<Option<Arc<dyn SharedTokens>>>>;

/// The built-in HTTP-01 responders, one per listen address, shared by all certificates and
/// kept running for the life of the process once started.
#[derive(Debug, Clone, Default)]
pub struct Responders {
    servers: Arc<tokio::sync::Mutex<HashMap<SocketAddr, Tokens>>>,
    shared: SharedSlot,
}

async fn serve_token(
    State((tokens, shared)): State<(Tokens, SharedSlot)>,
    UrlPath(token): UrlPath<String>,
) -> (StatusCode, String) {
    let mut found = tokens.lock().expect("tokens lock").get(&token).cloned();
    let fleet = shared.read().expect("shared tokens lock").clone();
    if found.is_none()
        && valid_token(&token)
        && let Some(fleet) = fleet
    {
        found = fleet.lookup(&token).await;
    }
    match found {
        Some(ka) => {
            debug!(token, "served HTTP-01 challenge");
            (StatusCode::OK, ka)
        }
        None => (StatusCode::NOT_FOUND, "no such challenge\n".into()),
    }
}

impl Responders {
    /// Serves (and publishes to) the fleet's tokens from now on.
    pub fn set_shared(&self, shared: Arc<dyn SharedTokens>) {
        *self.shared.write().expect("shared tokens lock") = Some(shared);
    }

    /// The fleet's token store, if fleet mode is on.
    pub fn shared(&self) -> Option<Arc<dyn SharedTokens>> {
        self.shared.read().expect("shared tokens lock").clone()
    }

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
            .with_state((tokens.clone(), self.shared.clone()));
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
    /// A token published to the fleet: withdrawn at cleanup.
    Shared {
        shared: Arc<dyn SharedTokens>,
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
    ca: Option<String>,
    timeout: Duration,
    items: Vec<Item>,
}

impl Provisioned {
    /// An empty set for the named certificate; `timeout` bounds each DNS hook run.
    pub fn new(cert: &str, timeout: Duration) -> Self {
        Self {
            cert: cert.to_string(),
            ca: None,
            timeout,
            items: Vec::new(),
        }
    }

    /// Names the CA (its directory URL) in errors about what it sent.
    pub fn with_ca(mut self, directory: &str) -> Self {
        self.ca = Some(directory.to_string());
        self
    }

    fn check_token(&self, token: &str) -> Result<(), ChallengeError> {
        if valid_token(token) {
            return Ok(());
        }
        Err(ChallengeError::BadToken {
            ca: self.ca.clone().unwrap_or_else(|| "(unknown)".into()),
            token: display_token(token),
        })
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
                self.check_token(&spec.token)?;
                let tokens = responders.get(*addr).await?;
                tokens
                    .lock()
                    .expect("tokens lock")
                    .insert(spec.token.clone(), spec.key_authorization.clone());
                self.items.push(Item::Token {
                    tokens,
                    token: spec.token.clone(),
                });
                if let Some(shared) = responders.shared() {
                    self.items.push(Item::Shared {
                        shared: shared.clone(),
                        token: spec.token.clone(),
                    });
                    shared
                        .publish(&spec.token, &spec.key_authorization)
                        .await
                        .map_err(ChallengeError::Shared)?;
                }
            }
            Challenge::Http01Webroot(root) => {
                self.check_token(&spec.token)?;
                let dir = root.join(".well-known/acme-challenge");
                let path = dir.join(&spec.token);
                // write_atomic renames a fresh O_EXCL temp over the path: a symlink planted
                // at the token's name is replaced, never followed.
                let write = || -> std::io::Result<()> {
                    std::fs::create_dir_all(&dir)?;
                    crate::fsx::write_atomic(&path, spec.key_authorization.as_bytes(), 0o644, None)
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
                Item::Shared { shared, token } => shared.withdraw(&token).await,
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
        Item::Shared { shared, token } => {
            // Cancelled mid-order: withdraw in the background if a runtime is there; the
            // token's lease removes it anyway when this replica stops.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { shared.withdraw(&token).await });
            }
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

    /// The hostile-CA report: token `/tmp/x/victim.txt` with a webroot overwrote, then
    /// deleted, that file. Now the order fails naming the CA and the token.
    #[tokio::test]
    async fn path_like_token_is_refused_and_the_victim_file_untouched() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim.txt");
        std::fs::write(&victim, b"precious").unwrap();
        let webroot = d.path().join("www");
        std::fs::create_dir(&webroot).unwrap();
        let how = Challenge::Http01Webroot(webroot.clone());
        for token in [
            victim.display().to_string(),
            "../../victim.txt".to_string(),
            "..".to_string(),
            String::new(),
            "a".repeat(257),
            "tok\0en".to_string(),
        ] {
            let mut p =
                Provisioned::new("t", Duration::from_secs(5)).with_ca("https://evil.example/dir");
            let spec = ChallengeSpec {
                token: token.clone(),
                ..spec()
            };
            let e = p
                .present(&how, &Responders::default(), &spec)
                .await
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("https://evil.example/dir") && e.contains("not base64url"),
                "{e}"
            );
            assert!(e.len() < 400, "token not truncated: {e}");
            p.cleanup().await;
            assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        }
        // The built-in responder refuses it too.
        let mut p = Provisioned::new("t", Duration::from_secs(5));
        let spec = ChallengeSpec {
            token: "a/b".into(),
            ..spec()
        };
        let e = p
            .present(
                &Challenge::Http01Listen("127.0.0.1:1".parse().unwrap()),
                &Responders::default(),
                &spec,
            )
            .await
            .unwrap_err();
        assert!(matches!(e, ChallengeError::BadToken { .. }), "{e}");
        assert!(valid_token("AbC-_09"));
        assert!(valid_token(&"a".repeat(256)));
    }

    /// A symlink planted at the token's path (by someone with write access to the webroot)
    /// must not redirect the write, nor the cleanup, to the file it points at.
    #[tokio::test]
    async fn planted_symlink_at_token_path_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside.txt");
        std::fs::write(&outside, b"precious").unwrap();
        let webroot = d.path().join("www");
        let dir = webroot.join(".well-known/acme-challenge");
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("tok123")).unwrap();
        let how = Challenge::Http01Webroot(webroot);
        let mut p = Provisioned::new("t", Duration::from_secs(5));
        p.present(&how, &Responders::default(), &spec())
            .await
            .unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"precious");
        assert_eq!(
            std::fs::read_to_string(dir.join("tok123")).unwrap(),
            "tok123.thumb"
        );
        p.cleanup().await;
        assert!(!dir.join("tok123").exists());
        assert_eq!(std::fs::read(&outside).unwrap(), b"precious");
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
