//! A hostile or broken ACME CA of the tests' own, for the fault suite (`tests/hostile.rs`).
//!
//! It listens on 127.0.0.1 with the TLS leaf that [`super::write_tls_certs`] made for a
//! Pebble (so the same `ca_bundle` trusts it) and, depending on its [`Mode`], forwards each
//! request to that real Pebble (a sane CA: Pebble builds its URLs from the `Host` header,
//! so every URL it hands out points back here), or misbehaves: refuses connections,
//! accepts and never speaks, completes TLS and never answers, answers with a fixed status
//! and body, or rewrites the challenge tokens Pebble hands out. A fault can be limited to
//! requests whose path contains a given string (e.g. only newNonce).
//!
//! It counts TCP connections and HTTP requests, so tests can assert that certkeeper
//! contacts a broken CA a bounded number of times, and not at all while backing off.
//! The mode can change while it runs (a CA that recovers).

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the hostile CA behaves.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Forward to Pebble: a sane CA.
    Proxy,
    /// Nothing listens on the port (connection refused).
    Refuse,
    /// Accept TCP connections and never read or write (no TLS handshake).
    Silent,
    /// Complete the TLS handshake and read the request, never answer.
    NoReply,
    /// Answer every request with this status, extra headers and body.
    Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Forward to Pebble, but replace every challenge token in its answers with this one.
    EvilToken(String),
    /// Forward to Pebble, answering each request only after this long (a slow CA).
    Delay(Duration),
}

struct Shared {
    mode: Mutex<(Mode, Option<String>)>,
    connections: AtomicUsize,
    requests: AtomicUsize,
    log: Mutex<Vec<String>>,
    upstream: u16,
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
    listening: tokio::sync::Notify,
}

/// The running hostile CA; stopped on drop.
pub struct Hostile {
    pub port: u16,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    _port_lease: super::PortLease,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl Hostile {
    /// Starts in `mode`, in front of the Pebble listening on `upstream_port`, serving the
    /// `leaf.pem`/`leaf.key` found next to `ca_pem` (Pebble's TLS material).
    pub fn start(ca_pem: &Path, upstream_port: u16, mode: Mode) -> Self {
        let dir = ca_pem.parent().unwrap();
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(dir.join("leaf.pem"))
                .unwrap()
                .map(Result::unwrap)
                .collect();
        let key = PrivateKeyDer::from_pem_file(dir.join("leaf.key")).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca_pem).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        // A port of our own, reserved against other test processes for our lifetime
        // (not bind(0): while refusing nothing listens on it, and an ephemeral port
        // could be taken by anyone in the meantime).
        let (port, lease) = super::reserve_ports(1, None);
        let shared = Arc::new(Shared {
            mode: Mutex::new((mode, None)),
            connections: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
            upstream: upstream_port,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            listening: tokio::sync::Notify::new(),
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let sh = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                tokio::select! {
                    _ = serve(sh, port, ready_tx) => {}
                    _ = stop_rx => {}
                }
            });
            rt.shutdown_timeout(Duration::from_millis(100));
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("hostile CA started");
        Self {
            port,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
            _port_lease: lease,
        }
    }

    /// `https://127.0.0.1:<port>/dir`, the directory as Pebble serves it through us.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// Changes the behaviour for all later connections and requests.
    pub fn set_mode(&self, mode: Mode) {
        self.set_mode_for(mode, None);
    }

    /// Misbehaves only on requests whose path contains `path_part`; forwards the others.
    pub fn set_mode_for(&self, mode: Mode, path_part: Option<&str>) {
        *self.shared.mode.lock().unwrap() = (mode, path_part.map(str::to_owned));
        self.shared.listening.notify_one();
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// HTTP requests read so far (answered or not).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Connections plus requests: any contact at all.
    pub fn contacts(&self) -> usize {
        self.connections() + self.requests()
    }

    /// `METHOD path -> status` for every request so far.
    pub fn log(&self) -> Vec<String> {
        self.shared.log.lock().unwrap().clone()
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn mode_of(sh: &Shared) -> (Mode, Option<String>) {
    sh.mode.lock().unwrap().clone()
}

async fn serve(sh: Arc<Shared>, port: u16, ready: std::sync::mpsc::Sender<()>) {
    let mut ready = Some(ready);
    loop {
        // While refusing, nothing is bound to the port.
        while matches!(mode_of(&sh).0, Mode::Refuse) {
            if let Some(r) = ready.take() {
                let _ = r.send(());
            }
            tokio::select! {
                _ = sh.listening.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("hostile CA bind 127.0.0.1:{port}: {e}"));
        if let Some(r) = ready.take() {
            let _ = r.send(());
        }
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    if matches!(mode_of(&sh).0, Mode::Refuse) { break } else { continue }
                }
            };
            let Ok((stream, _)) = accepted else { continue };
            sh.connections.fetch_add(1, Ordering::SeqCst);
            let sh = sh.clone();
            tokio::spawn(async move { connection(sh, stream).await });
        }
    }
}

async fn connection(sh: Arc<Shared>, stream: TcpStream) {
    if matches!(mode_of(&sh).0, Mode::Silent) {
        // Hold the connection open, say nothing.
        let _keep = stream;
        return std::future::pending::<()>().await;
    }
    let Ok(mut tls) = sh.acceptor.accept(stream).await else {
        return;
    };
    // One request per connection: every answer says `Connection: close`.
    if let Some(req) = read_request(&mut tls).await {
        sh.requests.fetch_add(1, Ordering::SeqCst);
        let (mode, only) = mode_of(&sh);
        let faulty = only.as_deref().is_none_or(|p| req.path.contains(p));
        let mode = if faulty { mode } else { Mode::Proxy };
        let (status, head, body) = match mode {
            Mode::NoReply | Mode::Silent | Mode::Refuse => {
                sh.log
                    .lock()
                    .unwrap()
                    .push(format!("{} {} -> (no answer)", req.method, req.path));
                std::future::pending::<()>().await;
                unreachable!()
            }
            Mode::Answer {
                status,
                headers,
                body,
            } => {
                let mut head = format!("HTTP/1.1 {status} Hostile\r\n");
                for (k, v) in headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("Replay-Nonce: hostile-nonce\r\n");
                (status, head, body.into_bytes())
            }
            Mode::Proxy => match forward(&sh, &req).await {
                Some(r) => r,
                None => return,
            },
            Mode::Delay(d) => {
                tokio::time::sleep(d).await;
                match forward(&sh, &req).await {
                    Some(r) => r,
                    None => return,
                }
            }
            Mode::EvilToken(token) => match forward(&sh, &req).await {
                Some((status, head, body)) => (status, head, replace_tokens(&body, &token)),
                None => return,
            },
        };
        sh.log
            .lock()
            .unwrap()
            .push(format!("{} {} -> {status}", req.method, req.path));
        let mut out = head.into_bytes();
        out.extend_from_slice(
            format!(
                "Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        if req.method != "HEAD" {
            out.extend_from_slice(&body);
        }
        let _ = tls.write_all(&out).await;
        let _ = tls.shutdown().await;
    }
}

struct Req {
    method: String,
    path: String,
    /// Header lines, without Connection / Content-Length.
    headers: Vec<String>,
    body: Vec<u8>,
}

async fn read_request<S: AsyncRead + Unpin>(s: &mut S) -> Option<Req> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split_whitespace();
    let method = first.next()?.to_owned();
    let path = first.next()?.to_owned();
    let mut len = 0usize;
    let mut headers = Vec::new();
    for l in lines {
        let lower = l.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().ok()?;
        } else if !lower.starts_with("connection:") {
            headers.push(l.to_owned());
        }
    }
    let mut body = buf[end + 4..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Some(Req {
        method,
        path,
        headers,
        body,
    })
}

/// Sends the request to Pebble as HTTP/1.0 (so the answer is not chunked and ends at EOF),
/// keeping the `Host` header so Pebble's URLs point back at us. Returns the status, the
/// status line plus headers to pass on (without framing headers), and the body.
async fn forward(sh: &Shared, req: &Req) -> Option<(u16, String, Vec<u8>)> {
    let tcp = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], sh.upstream)))
        .await
        .ok()?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = sh.connector.connect(name, tcp).await.ok()?;
    let mut out = format!("{} {} HTTP/1.0\r\n", req.method, req.path);
    for h in &req.headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", req.body.len()));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&req.body);
    tls.write_all(&bytes).await.ok()?;
    let mut rsp = Vec::new();
    let _ = read_to_end_limited(&mut tls, &mut rsp, 8 << 20).await;
    let end = rsp.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&rsp[..end]).into_owned();
    let mut body = rsp[end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?.to_owned();
    let status: u16 = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let mut kept = format!("{status_line}\r\n");
    let mut chunked = false;
    for l in lines {
        let lower = l.to_ascii_lowercase();
        if lower.starts_with("transfer-encoding:") {
            chunked = lower.contains("chunked");
        } else if !(lower.starts_with("content-length:") || lower.starts_with("connection:")) {
            kept.push_str(l);
            kept.push_str("\r\n");
        }
    }
    if chunked {
        body = dechunk(&body)?;
    }
    Some((status, kept, body))
}

async fn read_to_end_limited<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    out: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<()> {
    let mut chunk = [0u8; 16 * 1024];
    while out.len() < limit {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let i = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&b[..i]).split(';').next()?.trim(),
            16,
        )
        .ok()?;
        b = &b[i + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// Rewrites `"token": ...` of every challenge in an authorization (or challenge) answer.
fn replace_tokens(body: &[u8], token: &str) -> Vec<u8> {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return body.to_vec();
    };
    fn walk(v: &mut serde_json::Value, token: &str) {
        match v {
            serde_json::Value::Object(o) => {
                if o.contains_key("token") {
                    o.insert("token".into(), serde_json::Value::String(token.into()));
                }
                o.values_mut().for_each(|x| walk(x, token));
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(|x| walk(x, token)),
            _ => {}
        }
    }
    walk(&mut v, token);
    serde_json::to_vec(&v).unwrap()
}
