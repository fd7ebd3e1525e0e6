//! Encoding that remembers: a route configuration is assembled from the
//! encoded bytes of its virtual hosts, and a virtual host whose IR did not
//! change since the last call is not encoded again.
//!
//! A listener's route configuration holds every route of every hostname; at
//! 10,000 HTTPRoutes building and encoding it took most of the encode step,
//! though a change usually touches one hostname. Protobuf concatenates the
//! elements of a repeated field, so the configuration's name (field 1), each
//! virtual host's bytes (as field 2), then its other fields is the same
//! message, byte for byte, that encoding it whole gives (a test compares).

use std::collections::{HashMap, HashSet};

use envoy_types::pb::google::protobuf::Any;
use infergate_model as ir;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};

use crate::encode::{self, Packed, ROUTE_TYPE};

/// `RouteConfiguration.virtual_hosts`.
const VIRTUAL_HOSTS_FIELD: u32 = 2;

/// Which virtual host an entry is: node, filter chain (route configuration),
/// name.
type HostKey = (String, String, String);

/// Encodes Gateways for the xDS cache, re-using what it encoded last time for
/// virtual hosts that are unchanged. One per controller; not shared.
#[derive(Default)]
pub struct Encoder {
    hosts: HashMap<HostKey, (ir::VirtualHostIr, Vec<u8>)>,
}

/// What one [`Encoder::encode`] call did, for logs and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncodeStats {
    pub virtual_hosts_encoded: usize,
    pub virtual_hosts_reused: usize,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every Gateway's resources, packed, by node id, with the certificates
    /// their TLS chains name. Virtual hosts of Gateways or chains that are
    /// gone are forgotten.
    pub fn encode(
        &mut self,
        gateways: &[ir::GatewayIr],
        certificates: &encode::Certificates,
    ) -> (Vec<(String, Packed)>, EncodeStats) {
        let mut stats = EncodeStats::default();
        let mut seen: HashSet<HostKey> = HashSet::new();
        let nodes = gateways
            .iter()
            .map(|g| {
                let mut packed = encode::gateway_without_routes(g, certificates).into_packed();
                let routes = g
                    .listeners
                    .iter()
                    .flat_map(|l| &l.filter_chains)
                    .map(|c| {
                        let bytes = self.route_configuration(&g.node_id, c, &mut seen, &mut stats);
                        (
                            c.name.clone(),
                            Any {
                                type_url: ROUTE_TYPE.to_string(),
                                value: bytes,
                            },
                        )
                    })
                    .collect();
                for (type_url, resources) in &mut packed {
                    if *type_url == ROUTE_TYPE {
                        *resources = routes;
                        break;
                    }
                }
                (g.node_id.clone(), packed)
            })
            .collect();
        self.hosts.retain(|key, _| seen.contains(key));
        (nodes, stats)
    }

    fn route_configuration(
        &mut self,
        node: &str,
        chain: &ir::FilterChainIr,
        seen: &mut HashSet<HostKey>,
        stats: &mut EncodeStats,
    ) -> Vec<u8> {
        // Field order as prost encodes a whole message: the name (field 1),
        // the virtual hosts (2), then every other field (all numbered higher).
        let mut rest = encode::route_configuration_without_hosts(chain);
        let name = std::mem::take(&mut rest.name);
        let mut out = envoy_types::pb::envoy::config::route::v3::RouteConfiguration {
            name,
            ..Default::default()
        }
        .encode_to_vec();
        for host in &chain.virtual_hosts {
            let key = (node.to_string(), chain.name.clone(), host.name.clone());
            // A name seen twice in one chain is encoded each time, not cached.
            let first = seen.insert(key.clone());
            let cached = self
                .hosts
                .get(&key)
                .filter(|(ir, _)| first && ir == host)
                .map(|(_, bytes)| bytes);
            let fresh;
            let bytes = match cached {
                Some(bytes) => {
                    stats.virtual_hosts_reused += 1;
                    bytes
                }
                None => {
                    stats.virtual_hosts_encoded += 1;
                    let encoded = encode::virtual_host(host).encode_to_vec();
                    if first {
                        &self
                            .hosts
                            .entry(key)
                            .insert_entry((host.clone(), encoded))
                            .into_mut()
                            .1
                    } else {
                        fresh = encoded;
                        &fresh
                    }
                }
            };
            encode_key(VIRTUAL_HOSTS_FIELD, WireType::LengthDelimited, &mut out);
            encode_varint(bytes.len() as u64, &mut out);
            out.extend_from_slice(bytes);
        }
        out.extend_from_slice(&rest.encode_to_vec());
        out
    }
}
