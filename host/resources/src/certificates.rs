//! Secrets of type `kubernetes.io/tls` as listener certificates.
//!
//! They are checked here, on the host: the translation component learns only
//! whether each Secret can serve (a `tls-secret` with its problem, if any)
//! and names the Secrets it uses in its IR; the PEM, private key included,
//! goes from here to Envoy and nowhere else.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The Secret type Gateway API listeners take certificates from.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

/// A certificate chain and its private key, PEM, as Envoy takes them.
#[derive(Clone, PartialEq, Eq)]
pub struct Certificate {
    pub chain_pem: String,
    pub key_pem: String,
}

/// The key stays out of logs and debug output.
impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("chain_pem", &format_args!("{} bytes", self.chain_pem.len()))
            .field("key_pem", &format_args!("<redacted>"))
            .finish()
    }
}

/// The usable certificates, by "<namespace>/<name>" of their Secret (the name
/// the IR's `downstream-tls` uses).
pub type Certificates = BTreeMap<String, Arc<Certificate>>;

/// A Secret's entry `key`: `stringData` (as written in a file) over `data`
/// (as the API server returns it).
fn entry<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|s| s.as_bytes())
        .or_else(|| {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|b| b.0.as_slice())
        })
}

/// The Secret as a certificate, or why it cannot be one (a sentence naming
/// the entry at fault). Checked: the type; `tls.crt` holds PEM certificates,
/// the first of them X.509; `tls.key` holds a PEM private key of a kind
/// Envoy signs with (RSA, ECDSA P-256/P-384, Ed25519); and the key is the
/// first certificate's.
pub fn check(secret: &Secret) -> Result<Certificate, String> {
    let kind = secret.type_.as_deref().unwrap_or("Opaque");
    if kind != TLS_SECRET_TYPE {
        return Err(format!("its type is {kind:?}, not {TLS_SECRET_TYPE:?}"));
    }
    let crt = entry(secret, "tls.crt").ok_or("it has no tls.crt")?;
    let key = entry(secret, "tls.key").ok_or("it has no tls.key")?;
    let chain: Vec<CertificateDer> = CertificateDer::pem_slice_iter(crt)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt is not PEM: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err("tls.crt holds no PEM certificate".into());
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("tls.crt: its first certificate is not valid X.509: {e}"))?;
    let private = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| format!("tls.key holds no PEM private key: {e}"))?;
    key_matches(&private, parsed.tbs_certificate.subject_pki.raw)?;
    let text = |bytes: &[u8], name: &str| {
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{name} is not UTF-8 text"))
    };
    Ok(Certificate {
        chain_pem: text(crt, "tls.crt")?,
        key_pem: text(key, "tls.key")?,
    })
}

/// The key is of a kind Envoy signs with, and its public key is
/// `certificate_spki` (the certificate's SubjectPublicKeyInfo).
#[cfg(not(target_family = "wasm"))]
fn key_matches(private: &PrivateKeyDer, certificate_spki: &[u8]) -> Result<(), String> {
    let signing = rustls::crypto::ring::sign::any_supported_type(private)
        .map_err(|e| format!("tls.key: {e}"))?;
    if signing
        .public_key()
        .is_some_and(|spki| spki.as_ref() != certificate_spki)
    {
        return Err("tls.key is not the private key of the first certificate in tls.crt".into());
    }
    Ok(())
}

/// Built for WebAssembly only by the translation's tests (see Cargo.toml),
/// which do not need this check.
#[cfg(target_family = "wasm")]
fn key_matches(_: &PrivateKeyDer, _: &[u8]) -> Result<(), String> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(kind: &str, crt: &str, key: &str) -> Secret {
        Secret {
            type_: Some(kind.into()),
            data: Some(BTreeMap::from([
                ("tls.crt".to_string(), ByteString(crt.as_bytes().to_vec())),
                ("tls.key".to_string(), ByteString(key.as_bytes().to_vec())),
            ])),
            ..Secret::default()
        }
    }

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_matching_pair_is_a_certificate_and_its_key_is_not_printed() {
        let (crt, key) = pair("example.com");
        let certificate = check(&secret(TLS_SECRET_TYPE, &crt, &key)).unwrap();
        assert_eq!(certificate.chain_pem, crt);
        let shown = format!("{certificate:?}");
        assert!(!shown.contains("PRIVATE"), "{shown}");
    }

    #[test]
    fn string_data_counts_as_written_in_a_file() {
        let (crt, key) = pair("example.com");
        let mut s = secret(TLS_SECRET_TYPE, "", "");
        s.data = None;
        s.string_data = Some(BTreeMap::from([
            ("tls.crt".to_string(), crt),
            ("tls.key".to_string(), key),
        ]));
        assert!(check(&s).is_ok());
    }

    #[test]
    fn each_problem_is_named() {
        let (crt, key) = pair("example.com");
        let (_, other_key) = pair("other.example.com");
        let cases = [
            (secret("Opaque", &crt, &key), "not \"kubernetes.io/tls\""),
            (
                secret(TLS_SECRET_TYPE, "Hello world\n", &key),
                "no PEM certificate",
            ),
            (
                secret(TLS_SECRET_TYPE, &crt, "Hello world\n"),
                "tls.key holds no PEM private key",
            ),
            (
                secret(TLS_SECRET_TYPE, &crt, &other_key),
                "is not the private key",
            ),
            (
                secret(
                    TLS_SECRET_TYPE,
                    "-----BEGIN CERTIFICATE-----\nSGVsbG8=\n-----END CERTIFICATE-----\n",
                    &key,
                ),
                "not valid X.509",
            ),
        ];
        for (s, expected) in cases {
            let why = check(&s).unwrap_err();
            assert!(why.contains(expected), "{why:?} should say {expected:?}");
        }
        let mut missing = secret(TLS_SECRET_TYPE, &crt, &key);
        missing.data.as_mut().unwrap().remove("tls.key");
        assert_eq!(check(&missing).unwrap_err(), "it has no tls.key");
    }
}
