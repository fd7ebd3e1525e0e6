//! The in-memory certificate the picker serves when it is given none.

use anyhow::Context;

/// A self-signed certificate and its key, PEM encoded.
pub fn self_signed() -> anyhow::Result<(String, String)> {
    let names = vec!["localhost".to_string(), "infergate-epp".to_string()];
    let certified = rcgen::generate_simple_self_signed(names)
        .context("generating a self-signed certificate")?;
    Ok((certified.cert.pem(), certified.signing_key.serialize_pem()))
}
