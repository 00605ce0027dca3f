//! New private keys and CSRs, with rcgen. A fresh key is generated for every order (as
//! cert-manager and Let's Encrypt recommend), so a leaked old key dies with its certificate.

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, RsaKeySize};

use crate::config::KeyType;
#[cfg(test)]
use x509_parser::prelude::FromDer;

/// Generates a key of the configured type.
pub fn generate(kind: KeyType) -> Result<KeyPair, String> {
    let r = match kind {
        KeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyType::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyType::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048),
        KeyType::Rsa3072 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_3072),
        KeyType::Rsa4096 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_4096),
    };
    r.map_err(|e| format!("cannot generate a {kind} key: {e}"))
}

/// A DER CSR for `domains`, signed by `key`; the first name is also the subject CN, which
/// some private CAs still require.
pub fn csr_der(key: &KeyPair, domains: &[String]) -> Result<Vec<u8>, String> {
    let mut params = CertificateParams::new(domains.to_vec())
        .map_err(|e| format!("cannot build a CSR for {}: {e}", domains.join(", ")))?;
    let mut dn = DistinguishedName::new();
    if let Some(first) = domains.first() {
        dn.push(DnType::CommonName, first.clone());
    }
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(key)
        .map_err(|e| format!("cannot sign the CSR: {e}"))?;
    Ok(csr.der().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
