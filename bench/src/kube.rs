//! `infergate-bench kube`: Kubernetes mode at scale, against the real
//! kube-apiserver and etcd of the tests. Prints: time from a Pod becoming
//! ready to Envoy having that endpoint (p50/p99 over `changes` Pods), the
//! controller's resident memory, and status writes per change.

use std::time::{Duration, Instant};

use futures::StreamExt;
use infergate_e2e::free_port;
use infergate_e2e::kube::{Cluster, Controller, grant_printed_rbac};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::json;

const CONCURRENCY: usize = 16;

pub fn run(routes: usize, pools: usize, pods: usize, changes: usize) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(bench(routes, pools, pods, changes))
}

fn pod_ip(index: usize) -> String {
    format!(
        "10.{}.{}.{}",
        1 + index / 65536,
        (index / 256) % 256,
        index % 256
    )
}

/// Run `tasks`, `CONCURRENCY` at a time; the first error, if any.
async fn concurrently<T, E>(
    tasks: impl Iterator<Item = impl std::future::Future<Output = Result<T, E>>>,
) -> Result<(), E> {
    futures::stream::iter(tasks)
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .try_for_each(|r| r.map(|_| ()))
}

async fn bench(routes: usize, pools: usize, pods: usize, changes: usize) -> anyhow::Result<()> {
    let cluster = Cluster::start("bench", true).await;
    grant_printed_rbac(&cluster, "default", true).await;
    let listener = free_port();
    let client = cluster.client(infergate_e2e::kube::ADMIN).await;
    let apply = PatchParams::apply("infergate-bench").force();
    cluster
        .apply_yaml(&format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: infergate}}\n\
             spec: {{controllerName: infergate.dev/gateway-controller}}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: default}}\n\
             spec:\n  gatewayClassName: infergate\n  listeners: [{{name: http, port: {listener}, protocol: HTTP}}]\n"
        ))
        .await;

    let started = Instant::now();
    let pool_ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("inference.networking.k8s.io", "v1", "InferencePool"),
        "inferencepools",
    );
    let route_ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    );
    let pool_api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &pool_ar);
    let route_api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &route_ar);
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    concurrently(
        (0..pools).map(|p| {
            let (api, apply) = (pool_api.clone(), apply.clone());
            async move {
                let body = json!({
                    "apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
                    "metadata": { "name": format!("pool-{p}"), "namespace": "default" },
                    "spec": { "selector": { "matchLabels": { "pool": format!("pool-{p}") } }, "targetPorts": [{ "number": 8000 }] },
                });
                api.patch(&format!("pool-{p}"), &apply, &Patch::Apply(&body)).await.map(|_| ())
            }
        }),
    )
    .await?;
    concurrently(
        (0..routes).map(|r| {
            let (api, apply) = (route_api.clone(), apply.clone());
            async move {
                let body = json!({
                    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                    "metadata": { "name": format!("route-{r}"), "namespace": "default" },
                    "spec": {
                        "parentRefs": [{ "name": "gw" }],
                        "rules": [{
                            "matches": [{ "path": { "type": "PathPrefix", "value": format!("/r{r}") } }],
                            "backendRefs": [{ "group": "inference.networking.k8s.io", "kind": "InferencePool", "name": format!("pool-{}", r % pools) }],
                        }],
                    },
                });
                api.patch(&format!("route-{r}"), &apply, &Patch::Apply(&body)).await.map(|_| ())
            }
        }),
    )
    .await?;
    // `pods` ready Pods, plus `changes` that become ready during the measurement.
    concurrently(
        (0..pods + changes).map(|i| {
            let (api, apply) = (pod_api.clone(), apply.clone());
            async move {
                let name = format!("pod-{i}");
                let body = json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": { "name": name, "namespace": "default", "labels": { "pool": format!("pool-{}", i % pools) } },
                    "spec": { "containers": [{ "name": "server", "image": "model-server" }] },
                });
                api.patch(&name, &apply, &Patch::Apply(&body)).await?;
                let ready = if i < pods { "True" } else { "False" };
                let status = json!({ "status": {
                    "phase": "Running", "podIP": pod_ip(i), "podIPs": [{ "ip": pod_ip(i) }],
                    "conditions": [{ "type": "Ready", "status": ready }],
                }});
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await.map(|_| ())
            }
        }),
    )
    .await?;
    println!(
        "created {routes} HTTPRoutes, {pools} InferencePools, {} Pods in {:.1} s",
        pods + changes,
        started.elapsed().as_secs_f64()
    );

    let controller = Controller::start(&cluster, "bench", &["--enable-inference-extension"]);
    // Settled: every route's status written, and quiet for a while.
    let settle = Instant::now();
    loop {
        anyhow::ensure!(
            settle.elapsed() < Duration::from_secs(300),
            "the controller did not settle:\n{}",
            controller.log_text()
        );
        let written = status_writes(&controller.log_text());
        tokio::time::sleep(Duration::from_secs(2)).await;
        if written >= routes && written == status_writes(&controller.log_text()) {
            break;
        }
    }
    println!(
        "controller settled {:.1} s after start ({} status writes)",
        settle.elapsed().as_secs_f64(),
        status_writes(&controller.log_text())
    );
    let admin_file = controller.work.join("default_gw.admin");
    let admin = std::fs::read_to_string(&admin_file)?;
    let admin_port: u16 = admin
        .trim()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .parse()?;
    let rss_settled = rss_mib(controller.process.child.id());

    let mut latencies = Vec::new();
    let mut writes = Vec::new();
    for k in 0..changes {
        let i = pods + k;
        let pool = format!("pool-{}", i % pools);
        let before = membership(admin_port, &pool);
        let writes_before = status_writes(&controller.log_text());
        let t = Instant::now();
        pod_api
            .patch_status(
                &format!("pod-{i}"),
                &PatchParams::default(),
                &Patch::Merge(
                    &json!({ "status": { "conditions": [{ "type": "Ready", "status": "True" }] } }),
                ),
            )
            .await?;
        loop {
            if membership(admin_port, &pool) > before {
                break;
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(30),
                "pod-{i} never reached Envoy"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        latencies.push(t.elapsed());
        // Let any status writes this change caused land before counting.
        tokio::time::sleep(Duration::from_millis(200)).await;
        writes.push(status_writes(&controller.log_text()) - writes_before);
    }
    let rss_after = rss_mib(controller.process.child.id());
    latencies.sort();
    let q = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "pod ready -> endpoint in Envoy over {changes} changes: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        q(0.5).as_secs_f64() * 1000.0,
        q(0.99).as_secs_f64() * 1000.0,
        latencies.last().unwrap().as_secs_f64() * 1000.0
    );
    println!(
        "controller resident memory: {rss_settled:.0} MiB settled, {rss_after:.0} MiB after the changes"
    );
    println!(
        "status writes per Pod change: max {}, total {} (no status depends on Pod readiness)",
        writes.iter().max().unwrap_or(&0),
        writes.iter().sum::<usize>()
    );
    Ok(())
}

/// Status writes so far, from the controller's `status written=N` lines.
fn status_writes(log: &str) -> usize {
    log.lines()
        .filter_map(|l| l.split("written=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<usize>().ok())
        .sum()
}

/// Hosts of a pool's cluster in Envoy (its membership_total stat).
fn membership(admin_port: u16, pool: &str) -> u64 {
    let path = format!("/stats?filter=inferencepool/default/{pool}\\.membership_total$");
    infergate_e2e::request(admin_port, "GET", &path, &[], b"")
        .and_then(|r| {
            r.body
                .lines()
                .find_map(|l| l.rsplit(": ").next()?.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}
