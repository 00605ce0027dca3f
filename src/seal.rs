//! Sealing private keys before they leave the host for etcd (fleet mode): AES-256-GCM
//! (aws-lc-rs) under a 32-byte fleet key read from `seal_key_file`. Whoever can read etcd
//! or its backups but not that file gets no private key.
//!
//! A sealed blob is `nonce (12 bytes) || ciphertext || tag`, base64 (standard) for JSON.
//! The associated data binds each blob to what it is for (the etcd key it is stored
//! under), so a sealed key cannot be moved to another certificate's entry unnoticed.

use std::fmt;
use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// The fleet key length: AES-256.
pub const SEAL_KEY_LEN: usize = 32;

/// Why a blob could not be sealed or opened. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key file is unreadable (missing, not a regular file, too large).
    #[error("cannot read the seal key: {0}")]
    Read(crate::fsx::ReadError),
    /// The key file does not hold exactly 32 bytes.
    #[error(
        "seal key file {path} holds {len} bytes; it must be exactly 32 bytes of raw key (create it with `openssl rand -out {path} 32`)"
    )]
    Length {
        /// The file.
        path: std::path::PathBuf,
        /// What it held.
        len: usize,
    },
    /// The blob is not base64, too short, or fails authentication (wrong fleet key,
    /// tampered with, or moved from another entry).
    #[error("cannot open sealed data: {0}")]
    Open(&'static str),
    /// The system random source failed.
    #[error("cannot seal: {0}")]
    Seal(&'static str),
}

/// The fleet key. Debug shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct SealKey([u8; SEAL_KEY_LEN]);

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(***)")
    }
}

impl SealKey {
    /// Reads the key file: exactly 32 raw bytes, a regular file, read bounded.
    pub fn read(path: &Path) -> Result<Self, SealError> {
        let bytes = crate::fsx::read_regular(path, 4096, true).map_err(SealError::Read)?;
        Self::from_bytes(&bytes).ok_or_else(|| SealError::Length {
            path: path.to_path_buf(),
            len: bytes.len(),
        })
    }

    /// A key from raw bytes, if there are exactly 32.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &self.0).expect("32 bytes is an AES-256 key"),
        )
    }

    /// Seals `plain` for the purpose `aad`; returns base64 of nonce || ciphertext || tag.
    pub fn seal(&self, plain: &[u8], aad: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| SealError::Seal("no randomness"))?;
        let mut buf = plain.to_vec();
        self.aead()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut buf,
            )
            .map_err(|_| SealError::Seal("AES-GCM failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(STANDARD.encode(out))
    }

    /// Opens what [`SealKey::seal`] made for the same `aad`.
    pub fn open(&self, sealed: &str, aad: &str) -> Result<Vec<u8>, SealError> {
        let raw = STANDARD
            .decode(sealed.trim())
            .map_err(|_| SealError::Open("not base64"))?;
        if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(SealError::Open("too short"));
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open("bad nonce"))?;
        let mut buf = rest.to_vec();
        let plain = self
            .aead()
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf)
            .map_err(|_| {
                SealError::Open(
                    "authentication failed (another fleet key, or the entry was altered)",
                )
            })?;
        Ok(plain.to_vec())
    }
}

/// SHA-256 of `data`, lower-case hex: the checksum every fleet entry carries.
pub fn sha256_hex(data: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trips_and_is_bound_to_its_purpose() {
        let k = SealKey::from_bytes(&[7u8; 32]).unwrap();
        let s = k
            .seal(b"-----BEGIN PRIVATE KEY-----\nabc", "certs/www")
            .unwrap();
        assert!(!s.contains("PRIVATE"));
        assert_eq!(
            k.open(&s, "certs/www").unwrap(),
            b"-----BEGIN PRIVATE KEY-----\nabc"
        );
        assert!(k.open(&s, "certs/other").is_err(), "moved to another entry");
        let other = SealKey::from_bytes(&[8u8; 32]).unwrap();
        assert!(other.open(&s, "certs/www").is_err(), "another fleet key");
        let mut raw = STANDARD.decode(&s).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert!(
            k.open(&STANDARD.encode(raw), "certs/www").is_err(),
            "tampered"
        );
        assert!(k.open("!!", "x").is_err());
        assert!(k.open("AAAA", "x").is_err());
        // Two seals of the same text differ (fresh nonce).
        assert_ne!(k.seal(b"x", "a").unwrap(), k.seal(b"x", "a").unwrap());
    }

    #[test]
    fn key_file_must_hold_32_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, [1u8; 31]).unwrap();
        let e = SealKey::read(&p).unwrap_err().to_string();
        assert!(
            e.contains("31 bytes") && e.contains("exactly 32 bytes"),
            "{e}"
        );
        std::fs::write(&p, [1u8; 32]).unwrap();
        let k = SealKey::read(&p).unwrap();
        assert_eq!(format!("{k:?}"), "SealKey(***)");
        assert!(SealKey::read(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn checksum_is_sha256_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
