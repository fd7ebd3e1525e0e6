//! The certificates that keep xDS closed: a CA of the controller's, kept in
//! a Secret in its namespace (every replica and every restart uses the same
//! one), a serving certificate per replica, and a client certificate per
//! Gateway whose URI names it (`infergate_names::xds_identity`).
//! The xDS server accepts only clients with a certificate of this CA and
//! serves each only the configuration of the Gateway its certificate names.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Client;
use kube::api::{Api, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// How long issued certificates last; the deployer renews a Gateway's when
/// less than [`RENEW_BEFORE_DAYS`] remain.
pub const LEAF_DAYS: i64 = 365;
pub const RENEW_BEFORE_DAYS: i64 = 30;

const CA_NAME: &str = "infergate xDS CA";

/// A PEM certificate and its key.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
}

pub struct Ca {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

impl Ca {
    /// A new CA (valid ten years).
    pub fn generate() -> anyhow::Result<Ca> {
        let key = KeyPair::generate()?;
        let mut params = ca_params();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(ca_params(), key),
        })
    }

    /// The CA whose certificate and key these are (made by [`Ca::generate`]).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> anyhow::Result<Ca> {
        let key = KeyPair::from_pem(key_pem)?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            issuer: Issuer::new(ca_params(), key),
        })
    }

    fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    fn issue(&self, mut params: CertificateParams, common_name: &str) -> anyhow::Result<Issued> {
        let key = KeyPair::generate()?;
        let now = time::OffsetDateTime::now_utc();
        let not_after = now + time::Duration::days(LEAF_DAYS);
        params.not_before = now - time::Duration::hours(1);
        params.not_after = not_after;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after: not_after.unix_timestamp(),
        })
    }

    /// The xDS server's certificate, for these names and addresses.
    pub fn issue_server(&self, dns_names: &[String], ips: &[IpAddr]) -> anyhow::Result<Issued> {
        let mut params = CertificateParams::new(dns_names.to_vec())?;
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, "infergate xDS server")
    }

    /// A managed endpoint picker's serving certificate, for these names.
    pub fn issue_picker(&self, dns_names: &[String]) -> anyhow::Result<Issued> {
        let mut params = CertificateParams::new(dns_names.to_vec())?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, "infergate endpoint picker")
    }

    /// The client certificate of Gateway `namespace/name`'s Envoys.
    pub fn issue_gateway(&self, namespace: &str, name: &str) -> anyhow::Result<Issued> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            infergate_names::xds_identity::gateway_uri(namespace, name).try_into()?,
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, &format!("gateway {namespace}/{name}"))
    }
}

/// An owner reference to Lease `namespace/name`, if it exists (the chart
/// makes the controller's Lease; what it owns goes with the release).
pub async fn lease_owner(client: &Client, namespace: &str, name: &str) -> Option<OwnerReference> {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), namespace);
    let lease = leases.get_opt(name).await.ok()??;
    Some(OwnerReference {
        api_version: "coordination.k8s.io/v1".into(),
        kind: "Lease".into(),
        name: name.to_string(),
        uid: lease.metadata.uid?,
        ..Default::default()
    })
}

/// The CA in Secret `namespace/name`, made there first if there is none
/// (two replicas racing: the second reads what the first made). A new
/// Secret is owned by `owner` when given (the chart's Lease: uninstalling
/// the chart then deletes the CA too).
pub async fn load_or_create(
    client: &Client,
    namespace: &str,
    name: &str,
    owner: Option<OwnerReference>,
) -> anyhow::Result<Ca> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let read = |secret: &Secret| -> anyhow::Result<Ca> {
        let data = secret.data.clone().unwrap_or_default();
        let text = |key: &str| -> anyhow::Result<String> {
            let bytes = data
                .get(key)
                .ok_or_else(|| anyhow::anyhow!("Secret {namespace}/{name} has no {key}"))?;
            Ok(String::from_utf8(bytes.0.clone())?)
        };
        Ca::from_pem(&text("ca.crt")?, &text("ca.key")?)
    };
    if let Some(secret) = api
        .get_opt(name)
        .await
        .map_err(|e| anyhow::anyhow!("reading the CA Secret {namespace}/{name}: {e}"))?
    {
        return read(&secret);
    }
    let ca = Ca::generate()?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "infergate".to_string(),
            )])),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            (
                "ca.crt".to_string(),
                ByteString(ca.cert_pem.clone().into_bytes()),
            ),
            ("ca.key".to_string(), ByteString(ca.key_pem().into_bytes())),
        ])),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(secret = %format!("{namespace}/{name}"), "made the xDS CA");
            Ok(ca)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => read(&api.get(name).await?),
        Err(e) => Err(anyhow::anyhow!(
            "creating the CA Secret {namespace}/{name}: {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_read_back_from_its_secret_issues_certificates_the_same_ca_verifies() {
        let ca = Ca::generate().unwrap();
        let again = Ca::from_pem(&ca.cert_pem, &ca.key_pem()).unwrap();
        let issued = again.issue_gateway("team", "gw").unwrap();
        // Verified with rustls' WebPKI verifier against the first CA's certificate.
        let roots = {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile_certs(&ca.cert_pem) {
                roots.add(cert).unwrap();
            }
            std::sync::Arc::new(roots)
        };
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots,
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let chain = rustls_pemfile_certs(&issued.cert_pem);
        verifier
            .verify_client_cert(&chain[0], &[], rustls::pki_types::UnixTime::now())
            .expect("the CA verifies the Gateway's certificate");
        let other = Ca::generate().unwrap().issue_gateway("team", "gw").unwrap();
        assert!(
            verifier
                .verify_client_cert(
                    &rustls_pemfile_certs(&other.cert_pem)[0],
                    &[],
                    rustls::pki_types::UnixTime::now()
                )
                .is_err(),
            "another CA's certificate is refused"
        );
    }

    fn rustls_pemfile_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
            .map(|c| c.unwrap())
            .collect()
    }
}
