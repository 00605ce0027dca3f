//! What the fleet keeps in etcd, as JSON: the published set of each certificate, the
//! order in flight, each node's report, the shared retry ladder and ARI window. Private
//! keys appear only sealed (see [`crate::seal`]); every set carries a checksum that is
//! verified on read, so a truncated or hand-edited entry is refused, never installed.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::seal::sha256_hex;

/// The entry format's version; a replica refuses a set of a version it does not know.
pub const ENTRY_VERSION: u32 = 1;

/// A certificate set as the orderer published it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertEntry {
    /// [`ENTRY_VERSION`].
    pub v: u32,
    /// The certificate's name in the config.
    pub name: String,
    /// The leaf's serial (hex, as `status` shows it).
    pub serial: String,
    /// The leaf's not-after.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Leaf first, then the chain.
    pub fullchain_pem: String,
    /// The chain without the leaf.
    pub chain_pem: String,
    /// The private key, sealed under the fleet key for this entry's etcd key.
    pub key_sealed: String,
    /// The node that ordered it.
    pub orderer: String,
    /// When it was published.
    #[serde(with = "time::serde::rfc3339")]
    pub published_at: OffsetDateTime,
    /// The CA directory that issued it (for ARI's `replaces`).
    #[serde(default)]
    pub issuer: Option<String>,
    /// SHA-256 over every other field ([`CertEntry::digest`]).
    pub checksum: String,
}

impl CertEntry {
    /// The checksum of the entry's content (every field but `checksum`).
    pub fn digest(&self) -> String {
        let text = format!(
            "{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n",
            self.v,
            self.name,
            self.serial,
            self.not_after.unix_timestamp(),
            self.fullchain_pem,
            self.chain_pem,
            self.key_sealed,
            self.orderer,
            self.published_at.unix_timestamp(),
            self.issuer.as_deref().unwrap_or(""),
        );
        sha256_hex(text.as_bytes())
    }

    /// Sets the checksum after the content is final.
    pub fn seal_checksum(mut self) -> Self {
        self.checksum = self.digest();
        self
    }

    /// Parses and checks an entry read from etcd: JSON, version, name and checksum.
    pub fn parse(bytes: &[u8], name: &str) -> Result<Self, String> {
        let e: Self =
            serde_json::from_slice(bytes).map_err(|e| format!("not a certificate entry: {e}"))?;
        if e.v != ENTRY_VERSION {
            return Err(format!(
                "entry version {} is not {ENTRY_VERSION} (written by another certkeeper version)",
                e.v
            ));
        }
        if e.name != name {
            return Err(format!("the entry names certificate {:?}", e.name));
        }
        if e.checksum != e.digest() {
            return Err("checksum mismatch: the entry was altered or truncated".into());
        }
        Ok(e)
    }
}

/// A published set with the etcd revision it was written at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The entry's mod_revision: the fleet's version number of this set.
    pub revision: i64,
    /// The entry, checksum verified.
    pub entry: CertEntry,
}

/// The order in flight, so a replica taking over resumes it instead of ordering again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderEntry {
    /// The order's URL at the CA.
    pub url: String,
    /// The CA's directory URL.
    pub directory: String,
    /// The key the CSR is (or will be) made from, sealed for this entry's etcd key.
    pub key_sealed: String,
    /// The node that placed it.
    pub node: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
}

/// The shared retry ladder of one certificate, so a failure on one replica backs off
/// the whole fleet instead of each replica trying the CA in turn.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ladder {
    /// Failed orders in a row.
    pub failures: u32,
    /// No order before this.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub next_attempt_at: Option<OffsetDateTime>,
    /// The last error, for `status`.
    #[serde(default)]
    pub last_error: Option<String>,
    /// The node that failed last.
    #[serde(default)]
    pub node: String,
}

/// One replica's report: which set of each certificate it has installed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    /// The node's name.
    pub node: String,
    /// When it last wrote this report.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub updated_at: Option<OffsetDateTime>,
    /// Certificate name -> what is installed.
    #[serde(default)]
    pub installed: std::collections::BTreeMap<String, Installed>,
}

/// An installed set, by the fleet's revision and its serial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    /// The revision of `certs/<name>` installed.
    pub revision: i64,
    /// Its serial.
    pub serial: String,
}

/// The ARI window the CA suggested, shared so one replica's poll serves the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AriShared {
    /// The serial of the certificate the window is for.
    pub serial: String,
    /// Window start.
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    /// Window end.
    #[serde(with = "time::serde::rfc3339")]
    pub end: OffsetDateTime,
    /// Nobody polls again before this.
    #[serde(with = "time::serde::rfc3339")]
    pub next_poll: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> CertEntry {
        CertEntry {
            v: ENTRY_VERSION,
            name: "www".into(),
            serial: "0a".into(),
            not_after: OffsetDateTime::from_unix_timestamp(2_000_000_000).unwrap(),
            fullchain_pem: "leaf\nchain\n".into(),
            chain_pem: "chain\n".into(),
            key_sealed: "c2VhbGVk".into(),
            orderer: "a".into(),
            published_at: OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap(),
            issuer: None,
            checksum: String::new(),
        }
        .seal_checksum()
    }

    #[test]
    fn entries_round_trip_and_are_checked() {
        let e = entry();
        let bytes = serde_json::to_vec(&e).unwrap();
        assert_eq!(CertEntry::parse(&bytes, "www").unwrap(), e);
        assert!(
            CertEntry::parse(&bytes, "other")
                .unwrap_err()
                .contains("names")
        );
        let mut bad = e.clone();
        bad.fullchain_pem.push('x');
        let e2 = CertEntry::parse(&serde_json::to_vec(&bad).unwrap(), "www").unwrap_err();
        assert!(e2.contains("checksum"), "{e2}");
        let mut v2 = e;
        v2.v = 2;
        let v2 = v2.seal_checksum();
        assert!(
            CertEntry::parse(&serde_json::to_vec(&v2).unwrap(), "www")
                .unwrap_err()
                .contains("version")
        );
        assert!(CertEntry::parse(b"{", "www").is_err());
    }
}
