//! HTTPS listeners with the real Envoy: TLS terminated with certificates
//! from Secrets, a filter chain per listener chosen by SNI, a renewed
//! certificate served without a restart, and a listener whose certificate
//! cannot be used reported in its status while the others keep serving.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use infergate_e2e::*;
use rustls::pki_types::{CertificateDer, ServerName};

/// A CA of the test's own, and leaf certificates it signs.
struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Ca {
        let params = || {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "infergate test CA");
            params
        };
        let key = rcgen::KeyPair::generate().unwrap();
        let der = params().self_signed(&key).unwrap().der().clone();
        Ca {
            issuer: rcgen::Issuer::new(params(), key),
            der,
        }
    }

    /// (certificate PEM, key PEM, certificate DER) for `names`.
    fn leaf(&self, names: &[&str]) -> (String, String, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }
}

/// What one HTTPS request saw: the server's leaf certificate (DER), the
/// status and the `x-served-by` header.
struct Seen {
    leaf: Vec<u8>,
    status: u16,
    served_by: String,
}

/// GET / over TLS to 127.0.0.1:`port` with SNI `sni` and Host `sni`,
/// trusting only `ca`.
fn https_get(port: u16, sni: &str, ca: &CertificateDer<'static>) -> Result<Seen, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let connection =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    let request = format!("GET / HTTP/1.1\r\nhost: {sni}\r\nconnection: close\r\n\r\n");
    tls.write_all(request.as_bytes())
        .map_err(|e| format!("TLS handshake or write: {e}"))?;
    let mut response = Vec::new();
    // Envoy may close without close_notify; what was read is what counts.
    let _ = tls.read_to_end(&mut response);
    let leaf = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .ok_or("no server certificate")?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP response: {text:?}"))?;
    let served_by = text
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-served-by: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    Ok(Seen {
        leaf,
        status,
        served_by,
    })
}

fn secret(name: &str, crt: &str, key: &str) -> String {
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(crt),
        indent(key)
    )
}

fn write(dir: &std::path::Path, file: &str, text: &str) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, dir.join(file)).expect("rename");
}

/// The conditions (type, status, reason) of listener `listener` of Gateway
/// `gw`, from the status file.
fn listener_conditions(status_file: &std::path::Path, listener: &str) -> Vec<[String; 3]> {
    let text = std::fs::read_to_string(status_file).unwrap_or_default();
    let statuses: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).unwrap_or(serde_yaml_ng::Value::Null);
    statuses["gateways"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter(|g| g["gateway"]["name"].as_str() == Some("gw"))
        .flat_map(|g| g["listeners"].as_sequence().cloned().unwrap_or_default())
        .filter(|l| l["name"].as_str() == Some(listener))
        .flat_map(|l| l["conditions"].as_sequence().cloned().unwrap_or_default())
        .map(|c| {
            ["condition_type", "status", "reason"].map(|k| c[k].as_str().unwrap_or("").to_string())
        })
        .collect()
}

#[test]
fn https_listeners_terminate_tls_by_sni_and_serve_a_renewed_certificate_without_a_restart() {
    let dir = TempDir::new("https");
    let config = dir.0.join("config");
    let work = dir.0.join("work");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let port = free_port();
    let blue = NamedServer::start("blue");
    let green = NamedServer::start("green");
    let ca = Ca::new();
    let (blue_crt, blue_key, blue_der) = ca.leaf(&["blue.example.com"]);
    let (any_crt, any_key, any_der) = ca.leaf(&["*.example.com"]);
    write(
        &config,
        "gateway.yaml",
        &format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: infergate}}
spec: {{controllerName: infergate.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw}}
spec:
  gatewayClassName: infergate
  listeners:
  - name: blue
    port: {port}
    protocol: HTTPS
    hostname: blue.example.com
    tls: {{certificateRefs: [{{name: blue-cert}}]}}
  - name: any
    port: {port}
    protocol: HTTPS
    tls: {{certificateRefs: [{{name: any-cert}}]}}
  - name: broken
    port: {}
    protocol: HTTPS
    tls: {{certificateRefs: [{{name: missing-cert}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: blue}}
spec:
  parentRefs: [{{name: gw, sectionName: blue}}]
  rules: [{{backendRefs: [{{name: blue, port: 80}}]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: green}}
spec:
  parentRefs: [{{name: gw, sectionName: any}}]
  hostnames: [green.example.com]
  rules: [{{backendRefs: [{{name: green, port: 80}}]}}]
",
            free_port()
        ),
    );
    write(
        &config,
        "services.yaml",
        &(service_yaml("blue", blue.port) + &service_yaml("green", green.port)),
    );
    write(
        &config,
        "secrets.yaml",
        &(secret("blue-cert", &blue_crt, &blue_key) + &secret("any-cert", &any_crt, &any_key)),
    );
    let status_file = work.join("status.yaml");
    let infergate = Standalone::start(
        &config,
        &work,
        free_port(),
        &["--status-file", status_file.to_str().unwrap()],
    );
    let ready = wait_until(Duration::from_secs(30), || {
        https_get(port, "blue.example.com", &ca.der).is_ok_and(|s| s.status == 200)
    });
    assert!(
        ready,
        "Envoy never served HTTPS on {port}:\n{}",
        infergate.log_text()
    );

    // SNI picks the chain: its certificate, and only its routes.
    let seen = https_get(port, "blue.example.com", &ca.der).unwrap();
    assert_eq!((seen.status, seen.served_by.as_str()), (200, "blue"));
    assert_eq!(
        seen.leaf, blue_der,
        "blue.example.com gets its own certificate"
    );
    let seen = https_get(port, "green.example.com", &ca.der).unwrap();
    assert_eq!((seen.status, seen.served_by.as_str()), (200, "green"));
    assert_eq!(
        seen.leaf, any_der,
        "other names get the catch-all listener's"
    );

    // The listener without a usable certificate says so; the rest serve.
    let conditions = listener_conditions(&status_file, "broken");
    for expected in [
        ["ResolvedRefs", "False", "InvalidCertificateRef"],
        ["Programmed", "False", "Invalid"],
    ] {
        assert!(
            conditions.iter().any(|c| c == &expected.map(String::from)),
            "{expected:?} in {conditions:?}"
        );
    }
    assert!(
        listener_conditions(&status_file, "blue")
            .contains(&["Programmed", "True", "Programmed"].map(String::from))
    );

    // A renewed certificate is served to new connections, Envoy not restarted.
    let envoy_before = envoy_pid(&work);
    assert!(envoy_before.is_some());
    let (renewed_crt, renewed_key, renewed_der) = ca.leaf(&["blue.example.com"]);
    write(
        &config,
        "secrets.yaml",
        &(secret("blue-cert", &renewed_crt, &renewed_key)
            + &secret("any-cert", &any_crt, &any_key)),
    );
    let renewed = wait_until(Duration::from_secs(20), || {
        https_get(port, "blue.example.com", &ca.der).is_ok_and(|s| s.leaf == renewed_der)
    });
    assert!(
        renewed,
        "the renewed certificate was never served:\n{}",
        infergate.log_text()
    );
    assert_eq!(envoy_pid(&work), envoy_before, "Envoy was not restarted");

    // A broken renewal (the key of another certificate): the listener's
    // status says why, and the other listeners serve on. (Its chain is no
    // longer served: keeping a last good certificate is not done yet.)
    let (_, wrong_key, _) = ca.leaf(&["blue.example.com"]);
    write(
        &config,
        "secrets.yaml",
        &(secret("blue-cert", &renewed_crt, &wrong_key) + &secret("any-cert", &any_crt, &any_key)),
    );
    let reported = wait_until(Duration::from_secs(20), || {
        listener_conditions(&status_file, "blue")
            .contains(&["ResolvedRefs", "False", "InvalidCertificateRef"].map(String::from))
    });
    assert!(reported, "{:?}", listener_conditions(&status_file, "blue"));
    let seen = https_get(port, "green.example.com", &ca.der).unwrap();
    assert_eq!(
        (seen.status, seen.leaf),
        (200, any_der),
        "other listeners serve on"
    );
}
