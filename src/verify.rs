//! The endpoint probe: connect to a server the way a client would (with STARTTLS for mail
//! servers), and read the leaf it presents. A renewal is only worth something when the
//! server serves it; this is how certkeeper knows instead of trusting a hook's exit code.
//!
//! Trust is deliberately not judged (the verifier accepts any chain): the question is
//! "is it the certificate we installed", answered by SPKI and serial. Every probe is
//! bounded in time (the whole probe) and in bytes (each plain-text line and everything
//! read before TLS), so a hanging or flooding peer yields a clear error.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::{Endpoint, Starttls};

/// Longest plain-text line accepted from a server before TLS.
pub const MAX_LINE: usize = 4096;
/// Most plain-text bytes read from a server before TLS, over all lines.
pub const MAX_PLAIN: usize = 64 * 1024;

/// What a server presented: enough to tell our certificate from another one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// Serial number, lower-case hex, no separators (as in `inventory`).
    pub serial: String,
    /// SHA-256 of the SubjectPublicKeyInfo, lower-case hex.
    pub spki_sha256: String,
    /// End of validity of the served leaf.
    pub not_after: OffsetDateTime,
    /// Start of validity (a watched endpoint's `warn_before` may be a share of the lifetime).
    pub not_before: OffsetDateTime,
}

impl Served {
    /// Reads a leaf in DER; also used for the installed leaf, so both sides of
    /// [`compare`] are computed the same way.
    pub fn from_der(der: &[u8]) -> Result<Self, ProbeError> {
        let (_, x) = X509Certificate::from_der(der)
            .map_err(|e| ProbeError::Leaf(format!("cannot parse the leaf: {e}")))?;
        let serial = x
            .tbs_certificate
            .raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, x.public_key().raw);
        let spki_sha256 = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self {
            serial,
            spki_sha256,
            not_after: x.validity().not_after.to_datetime(),
            not_before: x.validity().not_before.to_datetime(),
        })
    }
}

/// Why a probe did not yield a leaf: each is shown to the operator as is.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The whole probe did not finish in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Name resolution or the TCP connection failed.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The plain-text part before TLS failed (greeting, no STARTTLS, refused, too long).
    #[error("starttls: {0}")]
    Starttls(String),
    /// The TLS handshake failed.
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// The server sent no certificate, or one we cannot parse.
    #[error("{0}")]
    Leaf(String),
}

/// The result of comparing what is served with what was installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Comparison {
    /// The endpoint serves the installed certificate.
    Live,
    /// The endpoint serves another certificate.
    Stale {
        /// The serial it serves.
        served: String,
        /// The serial we installed.
        installed: String,
    },
}

/// Same certificate when both the key (SPKI) and the serial match: a restored old
/// certificate with the same key is still stale.
pub fn compare(served: &Served, installed: &Served) -> Comparison {
    if served.spki_sha256 == installed.spki_sha256 && served.serial == installed.serial {
        Comparison::Live
    } else {
        Comparison::Stale {
            served: served.serial.clone(),
            installed: installed.serial.clone(),
        }
    }
}

/// Probes one endpoint, all of it under `timeout`. `default_sni` is the certificate's
/// first domain, used when the entry names none; an IP address is never sent as SNI.
/// Public and independent of the pass: `[[watch]] endpoints` use it too.
pub async fn probe(
    endpoint: &Endpoint,
    default_sni: &str,
    timeout: Duration,
) -> Result<Served, ProbeError> {
    tokio::time::timeout(timeout, probe_inner(endpoint, default_sni))
        .await
        .map_err(|_| ProbeError::Timeout(timeout))?
}

async fn probe_inner(endpoint: &Endpoint, default_sni: &str) -> Result<Served, ProbeError> {
    let mut tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| ProbeError::Connect(e.to_string()))?;
    match endpoint.starttls {
        Starttls::None => {}
        Starttls::Smtp => smtp_starttls(&mut tcp).await?,
        Starttls::Imap => imap_starttls(&mut tcp).await?,
    }
    let sni = endpoint.sni.as_deref().unwrap_or(default_sni);
    let name = server_name(sni, &endpoint.host)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config()));
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| ProbeError::Tls(e.to_string()))?;
    let (_, conn) = tls.get_ref();
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| ProbeError::Leaf("the server sent no certificate".into()))?;
    Served::from_der(leaf.as_ref())
}

/// The SNI name, or, for an IP address (which rustls never puts in SNI), the address
/// itself so the handshake still happens.
fn server_name(sni: &str, host: &str) -> Result<ServerName<'static>, ProbeError> {
    let s = if sni.is_empty() { host } else { sni };
    // A wildcard's first domain is not a name: any name under it selects the certificate.
    let s = match s.strip_prefix("*.") {
        Some(rest) => format!("probe.{rest}"),
        None => s.to_string(),
    };
    ServerName::try_from(s.clone()).map_err(|e| ProbeError::Tls(format!("SNI {s:?}: {e}")))
}

fn client_config() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyChain(provider)))
        .with_no_client_auth()
}

/// Accepts any chain (we only read the leaf), but still checks the handshake signature,
/// so the peer holds the key of the certificate it shows.
#[derive(Debug)]
struct AnyChain(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyChain {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Reads plain-text lines with the per-line and total caps.
struct Lines<'a> {
    r: BufReader<&'a mut TcpStream>,
    total: usize,
}

impl<'a> Lines<'a> {
    fn new(s: &'a mut TcpStream) -> Self {
        // A one-byte buffer: nothing the server sends after its last plain-text line
        // (the start of TLS) may be swallowed by the reader.
        Self {
            r: BufReader::with_capacity(1, s),
            total: 0,
        }
    }

    async fn line(&mut self) -> Result<String, ProbeError> {
        let mut buf = Vec::new();
        loop {
            let chunk = self
                .r
                .fill_buf()
                .await
                .map_err(|e| ProbeError::Starttls(e.to_string()))?;
            if chunk.is_empty() {
                return Err(ProbeError::Starttls(
                    "the server closed the connection".into(),
                ));
            }
            let b = chunk[0];
            self.r.consume(1);
            self.total += 1;
            if self.total > MAX_PLAIN {
                return Err(ProbeError::Starttls(format!(
                    "more than {MAX_PLAIN} bytes before TLS"
                )));
            }
            if b == b'\n' {
                let s = String::from_utf8_lossy(&buf)
                    .trim_end_matches('\r')
                    .to_string();
                return Ok(s);
            }
            buf.push(b);
            if buf.len() > MAX_LINE {
                return Err(ProbeError::Starttls(format!(
                    "a line longer than {MAX_LINE} bytes"
                )));
            }
        }
    }

    async fn send(&mut self, s: &str) -> Result<(), ProbeError> {
        self.r
            .get_mut()
            .write_all(s.as_bytes())
            .await
            .map_err(|e| ProbeError::Starttls(e.to_string()))
    }

    /// One SMTP reply (all its lines), checked for `code`.
    async fn smtp_reply(&mut self, code: u16) -> Result<Vec<String>, ProbeError> {
        let mut lines = Vec::new();
        loop {
            let l = self.line().await?;
            let last = smtp_line(&l, code)?;
            lines.push(l);
            if last {
                return Ok(lines);
            }
        }
    }
}

/// Checks one SMTP reply line against the expected code; true when it is the last line
/// of the reply (`250 ...` rather than `250-...`).
pub fn smtp_line(line: &str, code: u16) -> Result<bool, ProbeError> {
    let want = code.to_string();
    let b = line.as_bytes();
    if b.len() < 3 || b[..3] != *want.as_bytes() {
        return Err(ProbeError::Starttls(format!(
            "expected {code}, the server said {:?}",
            truncate(line)
        )));
    }
    match b.get(3) {
        None | Some(b' ') => Ok(true),
        Some(b'-') => Ok(false),
        _ => Err(ProbeError::Starttls(format!(
            "not an SMTP reply: {:?}",
            truncate(line)
        ))),
    }
}

/// Whether an EHLO reply offers STARTTLS.
pub fn ehlo_offers_starttls(lines: &[String]) -> bool {
    lines.iter().any(|l| {
        l.get(4..)
            .is_some_and(|k| k.trim().eq_ignore_ascii_case("STARTTLS"))
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(120).collect()
}

async fn smtp_starttls(tcp: &mut TcpStream) -> Result<(), ProbeError> {
    let mut l = Lines::new(tcp);
    l.smtp_reply(220).await?;
    l.send("EHLO certkeeper\r\n").await?;
    let ehlo = l.smtp_reply(250).await?;
    if !ehlo_offers_starttls(&ehlo) {
        return Err(ProbeError::Starttls(
            "the server does not offer STARTTLS".into(),
        ));
    }
    l.send("STARTTLS\r\n").await?;
    l.smtp_reply(220).await?;
    Ok(())
}

/// What one IMAP line means while waiting for the answer to `a1 STARTTLS`.
#[derive(Debug, PartialEq, Eq)]
pub enum ImapLine {
    /// An untagged line (`* ...`): keep reading.
    Untagged,
    /// `a1 OK`: TLS starts now.
    Ok,
    /// `a1 NO` / `a1 BAD` or anything else.
    Refused(String),
}

/// Classifies one IMAP line of the STARTTLS exchange.
pub fn imap_line(line: &str) -> ImapLine {
    if line.starts_with("* ") {
        return ImapLine::Untagged;
    }
    let mut w = line.split_ascii_whitespace();
    match (w.next(), w.next()) {
        (Some("a1"), Some(s)) if s.eq_ignore_ascii_case("OK") => ImapLine::Ok,
        _ => ImapLine::Refused(truncate(line)),
    }
}

/// Whether an IMAP greeting is `* OK ...` (a `* PREAUTH` or `* BYE` server cannot
/// start TLS for us).
pub fn imap_greeting_ok(line: &str) -> bool {
    line.strip_prefix("* ")
        .is_some_and(|r| r.len() >= 2 && r.as_bytes()[..2].eq_ignore_ascii_case(b"OK"))
}

async fn imap_starttls(tcp: &mut TcpStream) -> Result<(), ProbeError> {
    let mut l = Lines::new(tcp);
    let greeting = l.line().await?;
    if !imap_greeting_ok(&greeting) {
        return Err(ProbeError::Starttls(format!(
            "expected \"* OK\", the server said {:?}",
            truncate(&greeting)
        )));
    }
    l.send("a1 STARTTLS\r\n").await?;
    loop {
        match imap_line(&l.line().await?) {
            ImapLine::Untagged => continue,
            ImapLine::Ok => return Ok(()),
            ImapLine::Refused(s) => {
                return Err(ProbeError::Starttls(format!("STARTTLS refused: {s:?}")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(serial: &str, spki: &str) -> Served {
        Served {
            serial: serial.into(),
            spki_sha256: spki.into(),
            not_after: OffsetDateTime::UNIX_EPOCH,
            not_before: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn compare_needs_key_and_serial() {
        let ours = served("0a", "k1");
        assert_eq!(compare(&served("0a", "k1"), &ours), Comparison::Live);
        let stale = Comparison::Stale {
            served: "0b".into(),
            installed: "0a".into(),
        };
        assert_eq!(compare(&served("0b", "k1"), &ours), stale);
        let other_key = Comparison::Stale {
            served: "0a".into(),
            installed: "0a".into(),
        };
        assert_eq!(compare(&served("0a", "k2"), &ours), other_key);
    }

    #[test]
    fn smtp_lines() {
        assert!(smtp_line("220 mail ESMTP", 220).unwrap());
        assert!(!smtp_line("220-mail first", 220).unwrap());
        assert!(smtp_line("250", 250).unwrap());
        assert!(smtp_line("554 no", 220).is_err());
        assert!(smtp_line("22", 220).is_err());
        assert!(smtp_line("250xSTARTTLS", 250).is_err());
        // A multi-byte character across byte 3 is an error, not a panic.
        assert!(smtp_line("2\u{e9}0 hi", 250).is_err());
        let ehlo: Vec<String> = ["250-mail", "250-PIPELINING", "250 STARTTLS"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(ehlo_offers_starttls(&ehlo));
        assert!(!ehlo_offers_starttls(&ehlo[..2]));
        assert!(!ehlo_offers_starttls(&["250-STARTTLSX".to_string()]));
    }

    #[test]
    fn imap_lines() {
        assert_eq!(imap_line("* CAPABILITY IMAP4rev1"), ImapLine::Untagged);
        assert_eq!(imap_line("a1 OK Begin TLS"), ImapLine::Ok);
        assert_eq!(imap_line("a1 ok"), ImapLine::Ok);
        assert!(matches!(imap_line("a1 NO tls off"), ImapLine::Refused(_)));
        assert!(matches!(imap_line("a1 BAD"), ImapLine::Refused(_)));
        assert!(matches!(imap_line("a2 OK"), ImapLine::Refused(_)));
        assert!(imap_greeting_ok("* OK [CAPABILITY IMAP4rev1] ready"));
        assert!(imap_greeting_ok("* ok"));
        assert!(!imap_greeting_ok("* BYE go away"));
        assert!(!imap_greeting_ok("* \u{e9}"));
        assert!(!imap_greeting_ok("OK"));
    }

    #[test]
    fn ip_hosts_still_get_a_server_name() {
        assert!(server_name("127.0.0.1", "127.0.0.1").is_ok());
        assert!(server_name("www.example.com", "127.0.0.1").is_ok());
        assert!(server_name("*.example.com", "127.0.0.1").is_ok());
    }
}
