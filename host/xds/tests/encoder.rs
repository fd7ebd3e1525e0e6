//! The encoder that re-uses unchanged virtual hosts gives Envoy exactly what
//! encoding everything afresh gives, and encodes again only what changed.

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use infergate_model as ir;
use infergate_xds::encode::{self, Packed, ROUTE_TYPE};
use infergate_xds::{EncodeStats, Encoder};
use prost::Message;

const GATEWAY: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: infergate}
spec: {controllerName: infergate.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: infergate
  listeners:
  - {name: http, port: 8080, protocol: HTTP}
  - {name: other, port: 9090, protocol: HTTP}
---
apiVersion: v1
kind: Service
metadata: {name: svc}
spec: {ports: [{port: 80}]}
";

/// An HTTPRoute on `host` whose one rule adds `x-version: <version>`.
fn route(name: &str, host: &str, version: u32) -> String {
    format!(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [{host}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /{name}}}}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{set: [{{name: x-version, value: v{version}}}]}}
    backendRefs: [{{name: svc, port: 80}}]
"
    )
}

fn translate(routes: &[String]) -> Vec<ir::GatewayIr> {
    let mut resources = infergate_resources::Resources::default();
    resources
        .add_yaml("test.yaml", &format!("{GATEWAY}{}", routes.concat()))
        .expect("valid YAML");
    let snapshot = resources
        .to_snapshot(ir::Settings::new("infergate.dev/gateway-controller"))
        .expect("converts");
    infergate_translate::translate(&snapshot)
        .expect("translates")
        .gateways
}

/// The route configurations, decoded, by name.
fn route_configurations(packed: &Packed) -> Vec<RouteConfiguration> {
    packed
        .iter()
        .filter(|(type_url, _)| *type_url == ROUTE_TYPE)
        .flat_map(|(_, resources)| resources)
        .map(|(name, any)| {
            assert_eq!(any.type_url, ROUTE_TYPE);
            let config = RouteConfiguration::decode(any.value.as_slice()).expect("decodes");
            assert_eq!(&config.name, name);
            config
        })
        .collect()
}

/// The encoder's output must equal encoding every Gateway afresh, resource by
/// resource (route configurations compared decoded).
fn assert_same_as_fresh(encoded: &[(String, Packed)], gateways: &[ir::GatewayIr]) {
    assert_eq!(encoded.len(), gateways.len());
    for ((node, packed), gateway) in encoded.iter().zip(gateways) {
        assert_eq!(node, &gateway.node_id);
        let fresh = encode::gateway(gateway, &Default::default());
        assert_eq!(route_configurations(packed), fresh.routes);
        let fresh_packed = fresh.into_packed();
        let without_routes = |p: &Packed| {
            p.iter()
                .filter(|(t, _)| *t != ROUTE_TYPE)
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(without_routes(packed), without_routes(&fresh_packed));
    }
}

#[test]
fn assembled_route_configurations_are_what_a_fresh_encoding_gives() {
    let routes: Vec<String> = (0..6)
        .map(|i| route(&format!("r{i}"), &format!("h{}.example.com", i % 3), 0))
        .collect();
    let gateways = translate(&routes);
    let hosts: usize = gateways[0]
        .listeners
        .iter()
        .map(|l| l.virtual_hosts().count())
        .sum();
    assert_eq!(hosts, 6, "three hostnames on each of two listeners");
    let mut encoder = Encoder::new();
    let (encoded, stats) = encoder.encode(&gateways, &Default::default());
    assert_same_as_fresh(&encoded, &gateways);
    assert_eq!(
        stats,
        EncodeStats {
            virtual_hosts_encoded: 6,
            virtual_hosts_reused: 0
        }
    );
    // Byte for byte, too: the assembled message is prost's own encoding.
    let fresh = encode::gateway(&gateways[0], &Default::default()).into_packed();
    assert_eq!(encoded[0].1, fresh);
}

#[test]
fn a_change_re_encodes_only_the_virtual_hosts_it_touches() {
    let mut routes: Vec<String> = (0..6)
        .map(|i| route(&format!("r{i}"), &format!("h{}.example.com", i % 3), 0))
        .collect();
    let mut encoder = Encoder::new();
    encoder.encode(&translate(&routes), &Default::default());

    // r4 is on h1.example.com: that host changes on both listeners.
    routes[4] = route("r4", "h1.example.com", 1);
    let gateways = translate(&routes);
    let (encoded, stats) = encoder.encode(&gateways, &Default::default());
    assert_same_as_fresh(&encoded, &gateways);
    assert_eq!(
        stats,
        EncodeStats {
            virtual_hosts_encoded: 2,
            virtual_hosts_reused: 4
        }
    );
    let header = |config: &RouteConfiguration| {
        config
            .virtual_hosts
            .iter()
            .flat_map(|h| &h.routes)
            .find(|r| r.name.contains("/r4/"))
            .map(|r| r.request_headers_to_add[0].header.clone().unwrap().value)
    };
    for config in route_configurations(&encoded[0].1) {
        assert_eq!(header(&config).as_deref(), Some("v1"), "{}", config.name);
    }

    // Unchanged input: nothing is encoded again.
    let (_, stats) = encoder.encode(&gateways, &Default::default());
    assert_eq!(stats.virtual_hosts_encoded, 0);
    assert_eq!(stats.virtual_hosts_reused, 6);
}

#[test]
fn hosts_that_go_and_come_back_are_encoded_from_their_new_ir() {
    let routes: Vec<String> = (0..3)
        .map(|i| route(&format!("r{i}"), &format!("h{i}.example.com"), 0))
        .collect();
    let mut encoder = Encoder::new();
    encoder.encode(&translate(&routes), &Default::default());

    // h2 goes away...
    let (encoded, stats) = encoder.encode(&translate(&routes[..2]), &Default::default());
    assert_eq!(stats.virtual_hosts_encoded, 0);
    assert_eq!(
        route_configurations(&encoded[0].1)[0].virtual_hosts.len(),
        2
    );

    // ...and comes back changed: encoded, not served from before.
    let mut back = routes[..2].to_vec();
    back.push(route("r2", "h2.example.com", 7));
    let gateways = translate(&back);
    let (encoded, stats) = encoder.encode(&gateways, &Default::default());
    assert_same_as_fresh(&encoded, &gateways);
    assert_eq!(stats.virtual_hosts_encoded, 2);

    // A Gateway that goes away takes its hosts with it.
    let (encoded, stats) = encoder.encode(&[], &Default::default());
    assert!(encoded.is_empty());
    assert_eq!(stats, EncodeStats::default());
    let (_, stats) = encoder.encode(&gateways, &Default::default());
    assert_eq!(stats.virtual_hosts_encoded, 6);
}

#[test]
fn virtual_hosts_with_the_same_name_are_each_encoded() {
    let gateways = translate(&[
        route("a", "a.example.com", 0),
        route("b", "b.example.com", 0),
    ]);
    let mut twice = gateways.clone();
    let chain = &mut twice[0].listeners[0].filter_chains[0];
    let mut copy = chain.virtual_hosts[1].clone();
    copy.name = chain.virtual_hosts[0].name.clone();
    chain.virtual_hosts.push(copy);
    let mut encoder = Encoder::new();
    for _ in 0..2 {
        let (encoded, _) = encoder.encode(&twice, &Default::default());
        assert_same_as_fresh(&encoded, &twice);
    }
}
