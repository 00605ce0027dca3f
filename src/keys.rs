//! New private keys and CSRs, with rcgen. A fresh key is generated for every order (as
//! cert-manager and Let's Encrypt recommend), so a leaked old key dies with its certificate.

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, RsaKeySize};

use crate::config::KeyType;

/// Why no key or CSR could be made: rcgen's cause, with what was being made, so the
/// certificate's error names it.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key generator refused (an unsupported size, no entropy).
    #[error("cannot generate a {kind} key: {source}")]
    Generate {
        /// The configured key type.
        kind: KeyType,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// The CSR's names were not acceptable to rcgen.
    #[error("cannot build a CSR for {domains}: {source}")]
    CsrParams {
        /// The names, comma-separated.
        domains: String,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// A stored key (an order in flight a fleet replica left) could not be read.
    #[error("cannot read the stored key of the order in flight: {source}")]
    Stored {
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// Signing the CSR with the new key failed.
    #[error("cannot sign the CSR: {source}")]
    CsrSign {
        /// rcgen's error.
        source: rcgen::Error,
    },
}

/// Generates a key of the configured type.
pub fn generate(kind: KeyType) -> Result<KeyPair, KeyError> {
    let r = match kind {
        KeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyType::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyType::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048),
        KeyType::Rsa3072 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_3072),
        KeyType::Rsa4096 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_4096),
    };
    r.map_err(|source| KeyError::Generate { kind, source })
}

/// The key of an order a fleet replica placed and could not finish (PEM), so the
/// replica that takes over finalizes that order with a CSR of the same key.
pub fn from_pem(pem: &str) -> Result<KeyPair, KeyError> {
    KeyPair::from_pem(pem).map_err(|source| KeyError::Stored { source })
}

/// A DER CSR for `domains`, signed by `key`; the first name is also the subject CN, which
/// some private CAs still require.
pub fn csr_der(key: &KeyPair, domains: &[String]) -> Result<Vec<u8>, KeyError> {
    let mut params =
        CertificateParams::new(domains.to_vec()).map_err(|source| KeyError::CsrParams {
            domains: domains.join(", "),
            source,
        })?;
    let mut dn = DistinguishedName::new();
    if let Some(first) = domains.first() {
        dn.push(DnType::CommonName, first.clone());
    }
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(key)
        .map_err(|source| KeyError::CsrSign { source })?;
    Ok(csr.der().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::FromDer;

    #[test]
    fn every_key_type_generates_and_signs_a_csr() {
        for kind in [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::Rsa2048] {
            let k = generate(kind).unwrap();
            let der = csr_der(&k, &["a.example".into(), "*.b.example".into()]).unwrap();
            let (_, csr) =
                x509_parser::certification_request::X509CertificationRequest::from_der(&der)
                    .unwrap();
            let subject = csr.certification_request_info.subject.to_string();
            assert_eq!(subject, "CN=a.example");
            assert!(k.serialize_pem().contains("PRIVATE KEY"));
        }
    }

    /// The messages stay what they were when these were plain strings.
    #[test]
    fn errors_name_what_was_being_made_and_the_cause() {
        let key = generate(KeyType::EcdsaP256).unwrap();
        let e = csr_der(&key, &["a.example".into(), "bücher.example".into()]).unwrap_err();
        assert!(matches!(e, KeyError::CsrParams { .. }), "{e:?}");
        let m = e.to_string();
        assert!(
            m.starts_with("cannot build a CSR for a.example, bücher.example: "),
            "{m}"
        );
        let e = KeyError::Generate {
            kind: KeyType::Rsa4096,
            source: rcgen::Error::KeyGenerationUnavailable,
        };
        let prefix = format!("cannot generate a {} key: ", KeyType::Rsa4096);
        assert!(e.to_string().starts_with(&prefix), "{e}");
    }
}
