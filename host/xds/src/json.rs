//! Envoy resources as Envoy's own JSON (the proto3 JSON mapping), for
//! `infergate translate`: what an Envoy would receive, readable.
//!
//! envoy-types has no JSON mapping, so the messages are re-read through their
//! descriptors: `envoy-types-0.7.7-descriptors.bin` is the FileDescriptorSet
//! envoy-types 0.7.7 generated its code from (a copy of its
//! `src/generated/types.bin`, built from Envoy's Apache-2.0 protos). Update it
//! with envoy-types; the test below fails if the two disagree.

use std::sync::OnceLock;

use envoy_types::pb::google::protobuf::Any;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::{Map, Value};

use crate::encode::Resources;

static DESCRIPTORS: &[u8] = include_bytes!("../envoy-types-0.7.7-descriptors.bin");

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(DESCRIPTORS).expect("the bundled Envoy descriptors decode")
    })
}

/// One packed resource as JSON, with `@type` (nested `Any`s are expanded too).
pub fn any_to_json(any: &Any) -> Result<Value, String> {
    let name = any.type_url.rsplit('/').next().unwrap_or(&any.type_url);
    let descriptor = pool()
        .get_message_by_name(name)
        .ok_or_else(|| format!("no descriptor for {}", any.type_url))?;
    let message = DynamicMessage::decode(descriptor, any.value.as_slice())
        .map_err(|e| format!("decoding {name}: {e}"))?;
    let options = SerializeOptions::new().skip_default_fields(true);
    let mut serializer = serde_json::Serializer::new(Vec::new());
    message
        .serialize_with_options(&mut serializer, &options)
        .map_err(|e| format!("{name} to JSON: {e}"))?;
    let mut value: Value = serde_json::from_slice(&serializer.into_inner())
        .map_err(|e| format!("{name} to JSON: {e}"))?;
    if let Value::Object(map) = &mut value {
        let mut typed = Map::new();
        typed.insert("@type".into(), Value::String(any.type_url.clone()));
        typed.append(map);
        value = Value::Object(typed);
    }
    Ok(value)
}

/// A Gateway's resources as `{listeners, routes, clusters, endpoints}` (and
/// `secrets` when there are any), each a list of Envoy JSON objects.
pub fn resources_to_json(resources: Resources) -> Result<Value, String> {
    let mut out = Map::new();
    for (type_url, packed) in resources.into_packed() {
        let key = match type_url.rsplit('.').next().unwrap_or(type_url) {
            "Cluster" => "clusters",
            "ClusterLoadAssignment" => "endpoints",
            "Listener" => "listeners",
            "RouteConfiguration" => "routes",
            "Secret" if packed.is_empty() => continue,
            "Secret" => "secrets",
            other => other,
        };
        let items = packed
            .iter()
            .map(|(_, any)| any_to_json(any))
            .collect::<Result<Vec<_>, _>>()?;
        out.insert(key.to_string(), Value::Array(items));
    }
    Ok(Value::Object(out))
}

/// One Gateway's Envoy resources as JSON by type, with its `node` id: what
/// `infergate translate` prints per Gateway. The certificates' private keys
/// are left out.
pub fn gateway_to_json(
    gateway: &infergate_model::GatewayIr,
    certificates: &crate::encode::Certificates,
) -> Result<Value, String> {
    let mut encoded = crate::encode::gateway(gateway, certificates);
    encoded.secrets = encoded
        .secrets
        .into_iter()
        .map(crate::encode::redacted)
        .collect();
    let mut resources = resources_to_json(encoded)?;
    resources["node"] = Value::String(gateway.node_id.clone());
    Ok(resources)
}

/// An Envoy bootstrap as Envoy's JSON (which Envoy also reads as YAML).
pub fn bootstrap_to_json(
    bootstrap: envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap,
) -> Result<Value, String> {
    let mut json = any_to_json(&envoy_types::util::pack_any(bootstrap))?;
    if let Value::Object(map) = &mut json {
        map.remove("@type");
    }
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use prost::Message;

    #[test]
    fn the_bootstrap_names_the_node_the_xds_server_and_the_re2_limit() {
        let json = bootstrap_to_json(crate::encode::bootstrap(
            &crate::encode::BootstrapSettings {
                node: "apps/gw".into(),
                xds: "127.0.0.1:18000".parse().unwrap(),
                admin_port: 0,
                re2_max_program_size: 4096,
                tls: None,
            },
        ))
        .unwrap();
        assert_eq!(json["node"]["id"], "apps/gw");
        assert_eq!(
            json["layeredRuntime"]["layers"][0]["staticLayer"]["re2.max_program_size.error_level"],
            4096.0
        );
        let xds = &json["staticResources"]["clusters"][0];
        assert_eq!(xds["name"], crate::encode::XDS_CLUSTER);
        assert_eq!(xds["type"], "STATIC");
        assert_eq!(
            xds["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"]["socketAddress"]
                ["portValue"],
            18000
        );
        assert_eq!(
            json["dynamicResources"]["adsConfig"]["grpcServices"][0]["envoyGrpc"]["clusterName"],
            crate::encode::XDS_CLUSTER
        );
    }

    #[test]
    fn with_tls_the_xds_cluster_presents_its_certificate_and_checks_the_servers_name() {
        let json = bootstrap_to_json(crate::encode::bootstrap(
            &crate::encode::BootstrapSettings {
                node: "apps/gw".into(),
                xds: "198.19.9.10:18000".parse().unwrap(),
                admin_port: 19000,
                re2_max_program_size: 4096,
                tls: Some(crate::encode::XdsTls {
                    cert_file: "/etc/envoy/xds-tls/tls.crt".into(),
                    key_file: "/etc/envoy/xds-tls/tls.key".into(),
                    ca_file: "/etc/envoy/xds-tls/ca.crt".into(),
                    server_name: "infergate.infergate-system.svc".into(),
                }),
            },
        ))
        .unwrap();
        let socket = &json["staticResources"]["clusters"][0]["transportSocket"];
        assert_eq!(socket["name"], "envoy.transport_sockets.tls");
        let context = &socket["typedConfig"];
        assert_eq!(context["sni"], "infergate.infergate-system.svc");
        let common = &context["commonTlsContext"];
        assert_eq!(common["alpnProtocols"][0], "h2");
        assert_eq!(
            common["tlsCertificates"][0]["certificateChain"]["filename"],
            "/etc/envoy/xds-tls/tls.crt"
        );
        assert_eq!(
            common["validationContext"]["trustedCa"]["filename"],
            "/etc/envoy/xds-tls/ca.crt"
        );
        assert_eq!(
            common["validationContext"]["matchTypedSubjectAltNames"][0]["matcher"]["exact"],
            "infergate.infergate-system.svc"
        );
    }

    #[test]
    fn bundled_descriptors_match_the_envoy_types_messages() {
        // A cluster built with envoy-types, read back through the bundled
        // descriptors and written again: the same bytes, field for field.
        let cluster = Cluster {
            name: "pool/a".into(),
            connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 5,
                nanos: 0,
            }),
            ..Default::default()
        };
        let bytes = cluster.encode_to_vec();
        let descriptor = pool()
            .get_message_by_name("envoy.config.cluster.v3.Cluster")
            .expect("Cluster descriptor");
        let dynamic = DynamicMessage::decode(descriptor, bytes.as_slice()).expect("decodes");
        assert_eq!(dynamic.encode_to_vec(), bytes);
        let json = any_to_json(&Any {
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            value: bytes,
        })
        .expect("JSON");
        assert_eq!(json["name"], "pool/a");
        assert_eq!(json["connectTimeout"], "5s");
        assert_eq!(
            json["@type"],
            "type.googleapis.com/envoy.config.cluster.v3.Cluster"
        );
    }

    /// Every resource of every golden case: the translator's golden outputs
    /// (the IR of `guest/translate/testdata/*.out.yaml`), encoded.
    fn golden_resources() -> Vec<(String, Any)> {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest/translate/testdata");
        let mut cases: Vec<_> = std::fs::read_dir(&dir)
            .expect("the golden cases")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(".out.yaml"))
            .collect();
        cases.sort();
        let mut out = Vec::new();
        for case in cases {
            let name = case.file_name().unwrap().to_string_lossy().to_string();
            let text = std::fs::read_to_string(&case).unwrap();
            let output: infergate_model::Output =
                serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            for gateway in &output.gateways {
                let certificates = crate::encode::Certificates::default();
                for (_, packed) in crate::encode::gateway(gateway, &certificates).into_packed() {
                    for (resource, any) in packed {
                        out.push((format!("{name}: {resource}"), any));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn every_resource_of_every_golden_case_round_trips_through_the_descriptors_and_json() {
        // Through Envoy's JSON and back: a field the bundled descriptors do
        // not know would be dropped on the way (kept only as unknown bytes
        // when decoded), so the messages would differ.
        let resources = golden_resources();
        assert!(resources.len() >= 50, "only {} resources", resources.len());
        for (what, any) in &resources {
            let name = any.type_url.rsplit('/').next().unwrap();
            let descriptor = pool()
                .get_message_by_name(name)
                .unwrap_or_else(|| panic!("{what}: no descriptor for {name}"));
            let json = any_to_json(any).unwrap_or_else(|e| panic!("{what}: {e}"));
            let mut fields = json.clone();
            fields.as_object_mut().unwrap().remove("@type");
            let back = DynamicMessage::deserialize(descriptor, fields)
                .unwrap_or_else(|e| panic!("{what}: from JSON: {e}\n{json}"));
            // Compared as JSON again: the bytes inside a nested Any may
            // differ in field order (prost writes a oneof where the struct
            // declares it, prost-reflect by field number) and mean the same.
            let again = any_to_json(&Any {
                type_url: any.type_url.clone(),
                value: back.encode_to_vec(),
            })
            .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(again == json, "{what}: JSON round trip\n{json}\n{again}");
            assert_eq!(
                back.encode_to_vec().len(),
                any.value.len(),
                "{what}: the message re-encoded from JSON has another size"
            );
        }
    }
}
