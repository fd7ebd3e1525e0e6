//! InferencePools as YAML for the end-to-end tests, and the processes that
//! serve them: Pods, pools, picker Services, simulators.

use std::path::Path;

use crate::{Process, sim};

/// Pods `name-<i>` labelled `app: <app>` at the given IPs, ready.
pub fn pods(app: &str, ips: &[&str]) -> String {
    ips.iter()
        .enumerate()
        .map(|(i, ip)| {
            format!(
                "---
apiVersion: v1
kind: Pod
metadata: {{name: {app}-{i}, labels: {{app: {app}}}}}
status:
  podIP: {ip}
  podIPs: [{{ip: {ip}}}]
  conditions: [{{type: Ready, status: \"True\"}}]
"
            )
        })
        .collect()
}

/// An InferencePool selecting `app: <app>` on `ports`, with the picker
/// Service `<name>-epp` (port 9002) unless `picker` is None.
pub fn pool(name: &str, app: &str, ports: &[u16], picker: Option<&str>, extra: &str) -> String {
    let ports: Vec<String> = ports.iter().map(|p| format!("{{number: {p}}}")).collect();
    let picker = picker
        .map(|mode| {
            format!("  endpointPickerRef: {{name: {name}-epp, port: {{number: 9002}}, failureMode: {mode}}}\n")
        })
        .unwrap_or_default();
    format!(
        "---
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {{name: {name}}}
spec:
  selector: {{matchLabels: {{app: {app}}}}}
  targetPorts: [{}]
{picker}{extra}",
        ports.join(", ")
    )
}

/// The picker Service `<pool>-epp`: port 9002, served by 127.0.0.1:<port>.
pub fn picker_service(pool: &str, port: u16) -> String {
    format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: {pool}-epp}}
spec: {{ports: [{{name: grpc, port: 9002}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {pool}-epp-1, labels: {{kubernetes.io/service-name: {pool}-epp}}}}
addressType: IPv4
ports: [{{name: grpc, port: {port}}}]
endpoints: [{{addresses: [127.0.0.1]}}]
"
    )
}

/// A backendRef (YAML flow mapping) to InferencePool `name`, `extra` inside it.
pub fn pool_ref(name: &str, extra: &str) -> String {
    format!("{{group: inference.networking.k8s.io, kind: InferencePool, name: {name}{extra}}}")
}

/// Simulators named `<prefix>-<i>` at each address, with `extra` flags.
pub fn sims(prefix: &str, addresses: &[String], work: &Path, extra: &[&str]) -> Vec<Process> {
    addresses
        .iter()
        .enumerate()
        .map(|(i, a)| sim(a, &format!("{prefix}-{i}"), work, extra))
        .collect()
}

/// `ip:port` of each IP.
pub fn addresses(ips: &[&str], port: u16) -> Vec<String> {
    ips.iter().map(|ip| format!("{ip}:{port}")).collect()
}
