//! The certificates of TLS filter chains as SDS secrets, named as the IR
//! names them ("<namespace>/<name>" of their Kubernetes Secret). They travel
//! on the same ADS stream as the rest, over mutual TLS in a cluster.

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    Secret, TlsCertificate, secret,
};
use infergate_model as ir;

use super::Certificates;

/// The secrets `gateway`'s chains name, each once, sorted. A name without a
/// certificate (the Secret went away since the snapshot was taken) is left
/// out: Envoy keeps the chain warming until it comes, and the next
/// translation drops the chain.
pub(super) fn secrets(gateway: &ir::GatewayIr, certificates: &Certificates) -> Vec<Secret> {
    let mut names: Vec<&str> = gateway
        .listeners
        .iter()
        .flat_map(|l| &l.filter_chains)
        .filter_map(|c| c.tls.as_ref())
        .flat_map(|t| t.certificates.iter().map(String::as_str))
        .collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .filter_map(|name| {
            let certificate = certificates.get(name)?;
            let inline = |text: &str| DataSource {
                specifier: Some(data_source::Specifier::InlineString(text.to_string())),
                ..Default::default()
            };
            Some(Secret {
                name: name.to_string(),
                r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                    certificate_chain: Some(inline(&certificate.chain_pem)),
                    private_key: Some(inline(&certificate.key_pem)),
                    ..Default::default()
                })),
            })
        })
        .collect()
}

/// `secret` with its private key replaced, for output a person reads
/// (`infergate translate`, logs).
pub fn redacted(mut secret: Secret) -> Secret {
    if let Some(secret::Type::TlsCertificate(certificate)) = &mut secret.r#type
        && certificate.private_key.is_some()
    {
        certificate.private_key = Some(DataSource {
            specifier: Some(data_source::Specifier::InlineString("<redacted>".into())),
            ..Default::default()
        });
    }
    secret
}
