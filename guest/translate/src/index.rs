//! Look-up tables over a snapshot, built once per translation.

use std::collections::HashMap;

use infergate_model::{
    EndpointSlice, InferenceModelRewrite, InferencePool, Label, Namespace, Pod, RefKind,
    ReferenceGrant, Service, ServicePort, Snapshot, SocketAddress, TlsSecret,
};

pub use infergate_model::{GATEWAY_GROUP, INFERENCE_GROUP};

type Key<'a> = (&'a str, &'a str);

pub struct Index<'a> {
    pub snapshot: &'a Snapshot,
    namespaces: HashMap<&'a str, &'a Namespace>,
    services: HashMap<Key<'a>, &'a Service>,
    slices: HashMap<Key<'a>, Vec<&'a EndpointSlice>>,
    grants: HashMap<&'a str, Vec<&'a ReferenceGrant>>,
    pools: HashMap<Key<'a>, &'a InferencePool>,
    pods: HashMap<&'a str, Vec<&'a Pod>>,
    tls_secrets: HashMap<Key<'a>, &'a TlsSecret>,
    /// InferenceModelRewrites by pool, oldest first.
    rewrites: HashMap<Key<'a>, Vec<&'a InferenceModelRewrite>>,
}

/// One side of a cross-namespace reference, for ReferenceGrant checks.
pub struct RefEnd<'s> {
    pub group: &'s str,
    pub kind: &'s str,
    pub namespace: &'s str,
    /// Only meaningful on the "to" side.
    pub name: &'s str,
}

impl<'a> Index<'a> {
    pub fn new(snapshot: &'a Snapshot) -> Self {
        let mut index = Index {
            snapshot,
            namespaces: snapshot
                .namespaces
                .iter()
                .map(|n| (n.name.as_str(), n))
                .collect(),
            services: snapshot
                .services
                .iter()
                .map(|s| ((s.meta.namespace.as_str(), s.meta.name.as_str()), s))
                .collect(),
            slices: HashMap::new(),
            grants: HashMap::new(),
            pools: snapshot
                .inference_pools
                .iter()
                .map(|p| ((p.meta.namespace.as_str(), p.meta.name.as_str()), p))
                .collect(),
            pods: HashMap::new(),
            tls_secrets: snapshot
                .tls_secrets
                .iter()
                .map(|s| ((s.meta.namespace.as_str(), s.meta.name.as_str()), s))
                .collect(),
            rewrites: HashMap::new(),
        };
        for rewrite in &snapshot.inference_model_rewrites {
            if rewrite.pool_kind == RefKind::InferencePool {
                index
                    .rewrites
                    .entry((rewrite.meta.namespace.as_str(), rewrite.pool_name.as_str()))
                    .or_default()
                    .push(rewrite);
            }
        }
        for rewrites in index.rewrites.values_mut() {
            // Unset creation times (files) before any, as for routes.
            rewrites.sort_by(|a, b| {
                (a.meta.creation_timestamp, &a.meta.name)
                    .cmp(&(b.meta.creation_timestamp, &b.meta.name))
            });
        }
        for pod in &snapshot.pods {
            index
                .pods
                .entry(pod.meta.namespace.as_str())
                .or_default()
                .push(pod);
        }
        for slice in &snapshot.endpoint_slices {
            index
                .slices
                .entry((slice.meta.namespace.as_str(), slice.service_name.as_str()))
                .or_default()
                .push(slice);
        }
        for grant in &snapshot.reference_grants {
            index
                .grants
                .entry(grant.meta.namespace.as_str())
                .or_default()
                .push(grant);
        }
        index
    }

    /// Labels of a namespace; a namespace the snapshot does not list has none
    /// (standalone mode rarely declares namespaces).
    pub fn namespace_labels(&self, name: &str) -> &'a [Label] {
        self.namespaces
            .get(name)
            .map(|n| n.labels.as_slice())
            .unwrap_or(&[])
    }

    pub fn inference_pool(&self, namespace: &str, name: &str) -> Option<&'a InferencePool> {
        self.pools.get(&(namespace, name)).copied()
    }

    /// The InferenceModelRewrites of a pool, oldest first.
    pub fn rewrites_of(&self, namespace: &str, pool: &str) -> Vec<&'a InferenceModelRewrite> {
        self.rewrites
            .get(&(namespace, pool))
            .cloned()
            .unwrap_or_default()
    }

    /// Pods of a namespace.
    pub fn pods(&self, namespace: &str) -> &[&'a Pod] {
        self.pods.get(namespace).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn tls_secret(&self, namespace: &str, name: &str) -> Option<&'a TlsSecret> {
        self.tls_secrets.get(&(namespace, name)).copied()
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&'a Service> {
        self.services.get(&(namespace, name)).copied()
    }

    /// Ready endpoint addresses of a Service port, from its EndpointSlices,
    /// sorted and without duplicates (stable output for stable input).
    pub fn ready_endpoints(&self, service: &Service, port: &ServicePort) -> Vec<SocketAddress> {
        let mut out = Vec::new();
        let key = (service.meta.namespace.as_str(), service.meta.name.as_str());
        for slice in self.slices.get(&key).map(Vec::as_slice).unwrap_or(&[]) {
            let Some(number) = slice_port(slice, service, port) else {
                continue;
            };
            for endpoint in slice.endpoints.iter().filter(|e| e.ready) {
                // Envoy refuses a whole endpoint assignment for one address
                // that is not an IP, so such an address is left out here.
                for address in endpoint
                    .addresses
                    .iter()
                    .filter(|a| a.parse::<std::net::IpAddr>().is_ok())
                {
                    out.push(SocketAddress {
                        address: address.clone(),
                        port: number,
                    });
                }
            }
        }
        out.sort_by(|a, b| (&a.address, a.port).cmp(&(&b.address, b.port)));
        out.dedup();
        out
    }

    /// Whether a ReferenceGrant in the target namespace permits `from` to
    /// refer to `to`. Same-namespace references need no grant.
    pub fn reference_permitted(&self, from: &RefEnd, to: &RefEnd) -> bool {
        if from.namespace == to.namespace {
            return true;
        }
        self.grants
            .get(to.namespace)
            .into_iter()
            .flatten()
            .any(|grant| {
                grant.from.iter().any(|f| {
                    f.group == from.group && f.kind == from.kind && f.namespace == from.namespace
                }) && grant.to.iter().any(|t| {
                    t.group == to.group
                        && t.kind == to.kind
                        && t.name.as_deref().is_none_or(|n| n == to.name)
                })
            })
    }
}

/// The endpoint port number that serves `port` of `service` in `slice`:
/// matched by port name as Kubernetes does, or the only port of a
/// single-port Service.
fn slice_port(slice: &EndpointSlice, service: &Service, port: &ServicePort) -> Option<u32> {
    let name = port.name.as_deref().unwrap_or("");
    if let Some(p) = slice
        .ports
        .iter()
        .find(|p| p.name.as_deref().unwrap_or("") == name)
    {
        return Some(p.port);
    }
    if service.ports.len() == 1 && slice.ports.len() == 1 {
        return Some(slice.ports[0].port);
    }
    if slice.ports.is_empty() {
        return Some(port.target_port.unwrap_or(port.port));
    }
    None
}
