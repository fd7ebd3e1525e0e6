//! Kubernetes mode over time, against a real kube-apiserver and etcd: routes
//! deleted, the feature and the CRD switched, two replicas, the API server
//! restarted. Pods whose readiness changes under traffic run on the real
//! cluster (tests/cluster.rs), with real readiness probes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use infergate_e2e::kube::{
    CLASS, Cluster, Controller, gateway, grant_printed_rbac, parent_condition, service_route,
    wait_for_object,
};
use infergate_e2e::{complete, free_port, get, wait_until};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

/// An InferencePool `pool` over Pods labelled app=`pool`, port 8000, with
/// (if `picker`) the picker Service `<pool>-epp` on port 9002, and a route
/// `<pool>-route` on path `path` to it.
fn pool_and_route(pool: &str, path: &str, picker: bool) -> String {
    let picker_ref = if picker {
        format!("\n  endpointPickerRef: {{ name: {pool}-epp, port: {{ number: 9002 }} }}")
    } else {
        String::new()
    };
    format!(
        r#"
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {{ name: {pool}, namespace: default }}
spec:
  selector: {{ matchLabels: {{ app: {pool} }} }}
  targetPorts: [{{ number: 8000 }}]{picker_ref}
---
apiVersion: v1
kind: Service
metadata: {{ name: {pool}-epp, namespace: default }}
spec:
  ports: [{{ name: grpc, port: 9002, protocol: TCP }}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{ name: {pool}-route, namespace: default }}
spec:
  parentRefs: [{{ name: gw }}]
  rules:
  - matches: [{{ path: {{ type: PathPrefix, value: {path} }} }}]
    backendRefs: [{{ group: inference.networking.k8s.io, kind: InferencePool, name: {pool} }}]
"#
    )
}

/// A test API server with the printed RBAC for the controller, our
/// GatewayClass, Gateway `gw` and the pool `llm` with its route on /v1.
async fn with_pool(tag: &str) -> Cluster {
    let cluster = Cluster::start(tag, true).await;
    grant_printed_rbac(&cluster, "default", true).await;
    cluster.apply_yaml(CLASS).await;
    cluster.apply_yaml(&gateway(free_port())).await;
    cluster
        .apply_yaml(&pool_and_route("llm", "/v1", false))
        .await;
    cluster
}

fn accepted(object: &serde_json::Value, parent: &str) -> bool {
    parent_condition(object, parent, "Accepted") == Some(("True".into(), "Accepted".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_parents_follow_routes_and_other_controllers_entries_survive() {
    let cluster = with_pool("parents").await;
    // Another implementation's entry, written before infergate starts.
    let pools = cluster.pools("default").await;
    let other = json!({
        "parentRef": { "group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "default", "name": "their-gw" },
        "controllerName": "example.com/other-controller",
        "conditions": [{ "type": "Accepted", "status": "True", "reason": "Accepted", "message": "theirs",
                         "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z" }],
    });
    pools
        .patch_status(
            "llm",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "parents": [other.clone()] } })),
        )
        .await
        .expect("writing the other controller's entry");

    let controller = Controller::start(&cluster, "one", &["--enable-inference-extension"]);
    let has_other = |p: &serde_json::Value| {
        p["status"]["parents"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|e| e == &other))
    };
    let pool = wait_for_object(&pools, "llm", Duration::from_secs(30), |p| {
        accepted(p, "gw")
    })
    .await;
    assert!(
        has_other(&pool),
        "the other controller's entry was lost:\n{pool:#}"
    );

    // A second route to the same pool, then both deleted: our entry goes, theirs stays.
    cluster
        .apply_yaml(
            &pool_and_route("llm", "/v2", false)
                .split("---")
                .nth(2)
                .unwrap()
                .replace("llm-route", "llm-route-2"),
        )
        .await;
    let routes = cluster.routes("default").await;
    wait_for_object(&routes, "llm-route-2", Duration::from_secs(20), |r| {
        accepted(r, "gw")
    })
    .await;
    routes
        .delete("llm-route", &DeleteParams::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pool = pools.get("llm").await.unwrap();
    let pool = serde_json::to_value(&pool).unwrap();
    assert!(
        accepted(&pool, "gw"),
        "the pool lost its parent while a route still uses it:\n{pool:#}"
    );
    routes
        .delete("llm-route-2", &DeleteParams::default())
        .await
        .unwrap();
    let pool = wait_for_object(&pools, "llm", Duration::from_secs(20), |p| {
        parent_condition(p, "gw", "Accepted").is_none()
    })
    .await;
    assert!(
        has_other(&pool),
        "the other controller's entry was lost:\n{pool:#}"
    );
    assert_eq!(pool["status"]["parents"].as_array().unwrap().len(), 1);
    assert!(!controller.log_text().contains("panicked"));
}

/// InferenceModelRewrites are watched and judged with the permissions
/// `infergate rbac` prints: a rewrite of a pool our route uses is Accepted
/// (the message says what it applies), one naming a pool that does not
/// exist says so; a condition another controller wrote stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_rewrites_get_their_accepted_condition() {
    let cluster = with_pool("rewrites").await;
    cluster
        .apply_yaml(
            r#"
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModelRewrite
metadata: { name: names, namespace: default }
spec:
  poolRef: { name: llm }
  rules:
  - matches: [{ model: { value: chat } }]
    targets: [{ modelRewrite: llama-3-70b, weight: 9 }, { modelRewrite: llama-3.1-70b, weight: 1 }]
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModelRewrite
metadata: { name: typo, namespace: default }
spec:
  poolRef: { name: lm }
  rules:
  - targets: [{ modelRewrite: llama-3-70b }]
"#,
        )
        .await;
    let rewrites = cluster.model_rewrites("default").await;
    // Another controller's condition, of a type we do not write.
    let theirs = json!({ "type": "Reconciled", "status": "True", "reason": "Done", "message": "theirs",
                         "lastTransitionTime": "2026-01-01T00:00:00Z" });
    rewrites
        .patch_status(
            "names",
            &PatchParams::apply("example.com/other-controller"),
            &Patch::Apply(json!({
                "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
                "kind": "InferenceModelRewrite",
                "status": { "conditions": [theirs.clone()] },
            })),
        )
        .await
        .expect("writing the other controller's condition");
    let controller = Controller::start(&cluster, "rewrites", &["--enable-inference-extension"]);
    let condition = |object: &serde_json::Value, kind: &str| {
        object["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == kind)
            .cloned()
    };
    let names = wait_for_object(&rewrites, "names", Duration::from_secs(30), |r| {
        condition(r, "Accepted").is_some_and(|c| c["status"] == "True")
    })
    .await;
    let accepted = condition(&names, "Accepted").unwrap();
    assert_eq!(accepted["reason"], "Accepted");
    let message = accepted["message"].as_str().unwrap();
    assert!(
        message.contains(r#""chat" -> llama-3-70b (9), llama-3.1-70b (1)"#),
        "{message}"
    );
    assert_eq!(
        condition(&names, "Reconciled"),
        Some(theirs),
        "another controller's condition was lost:\n{names:#}"
    );
    let typo = wait_for_object(&rewrites, "typo", Duration::from_secs(30), |r| {
        condition(r, "Accepted").is_some_and(|c| c["reason"] == "PoolNotFound")
    })
    .await;
    assert_eq!(condition(&typo, "Accepted").unwrap()["status"], "False");
    assert!(!controller.log_text().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_pool_crd_installed_later_and_the_feature_switched_off() {
    let cluster = Cluster::start("crd-later", false).await;
    grant_printed_rbac(&cluster, "default", true).await;
    let listener = free_port();
    let ip = cluster.ip();
    let plain = cluster.named_server("plain");
    let pod_ip = cluster.pod_address(31);
    let _sim = cluster.sim(&format!("{pod_ip}:8000"), "pool-pod", &[]);
    cluster.apply_yaml(CLASS).await;
    cluster.apply_yaml(&gateway(listener)).await;
    cluster
        .route_to_endpoint("plain", "/plain", &ip, plain.port)
        .await;

    // Feature on, CRD missing: said clearly, everything else served.
    let controller = Controller::start(&cluster, "one", &["--enable-inference-extension"]);
    controller.wait_for_log(
        "does not serve inference.networking.k8s.io/v1 InferencePools",
        Duration::from_secs(30),
    );
    assert!(
        wait_until(Duration::from_secs(20), || get(listener, "/plain", &[])
            .map(|r| r.1)
            == Some("plain".into())),
        "the plain route is not served while the CRD is missing:\n{}",
        controller.log_text()
    );

    // CRD installed: the InferencePool watch starts without a restart.
    let crd = infergate_e2e::kube::crds_dir()
        .join("inference-v1.6.0/inference.networking.k8s.io_inferencepools.yaml");
    cluster.install_crd_file(&crd).await;
    controller.wait_for_log(
        "InferencePools (inference.networking.k8s.io/v1) are served",
        Duration::from_secs(30),
    );
    cluster
        .apply_yaml(&pool_and_route("llm", "/v1", false))
        .await;
    cluster
        .pod("default", "pool-pod", &[("app", "llm")], &pod_ip, true)
        .await;
    let routes = cluster.routes("default").await;
    wait_for_object(&routes, "llm-route", Duration::from_secs(30), |r| {
        accepted(r, "gw")
            && parent_condition(r, "gw", "ResolvedRefs")
                == Some(("True".into(), "ResolvedRefs".into()))
    })
    .await;
    assert!(
        wait_until(Duration::from_secs(20), || complete(
            listener,
            "/v1/completions",
            &[]
        )
        .is_some_and(
            |r| r.status == 200 && r.header("x-served-by") == Some("pool-pod")
        )),
        "the pool is not served after the CRD was installed:\n{}",
        controller.log_text()
    );

    // CRD removed while running: said clearly, the rest keeps being served.
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(cluster.client(infergate_e2e::kube::ADMIN).await);
    crds.delete(
        "inferencepools.inference.networking.k8s.io",
        &DeleteParams::default(),
    )
    .await
    .expect("deleting the InferencePool CRD");
    controller.wait_for_log(
        "no longer serves inference.networking.k8s.io/v1 InferencePools",
        Duration::from_secs(60),
    );
    assert_eq!(
        get(listener, "/plain", &[]).map(|r| r.1),
        Some("plain".into())
    );
    wait_for_object(&routes, "llm-route", Duration::from_secs(30), |r| {
        parent_condition(r, "gw", "ResolvedRefs")
            == Some(("False".into(), "BackendNotFound".into()))
    })
    .await;

    // Restart with the feature off, and with RBAC that has no InferencePool
    // or Pod permission at all: InvalidKind, and no watch is attempted.
    drop(controller);
    grant_printed_rbac(&cluster, "default", false).await;
    let controller = Controller::start(&cluster, "two", &[]);
    wait_for_object(&routes, "llm-route", Duration::from_secs(30), |r| {
        parent_condition(r, "gw", "ResolvedRefs") == Some(("False".into(), "InvalidKind".into()))
    })
    .await;
    let log = controller.log_text();
    assert!(
        log.contains("inference extension disabled: no InferencePool (or Pod) watch"),
        "{log}"
    );
    assert!(
        !log.contains("forbidden") && !log.contains("Forbidden"),
        "a watch was refused:\n{log}"
    );
    assert_eq!(
        get(listener, "/plain", &[]).map(|r| r.1),
        Some("plain".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_writer_and_a_handover() {
    let cluster = Cluster::start("leader", true).await;
    grant_printed_rbac(&cluster, "default", false).await;
    let ip = cluster.ip();
    let server = cluster.named_server("backend");
    let listener = free_port();
    cluster.apply_yaml(CLASS).await;
    cluster.apply_yaml(&gateway(listener)).await;
    let route = |name: &str| service_route(name, "backend", &format!("/{name}"));
    cluster.apply_yaml(&route("first")).await;
    cluster
        .endpoint_slice("default", "backend", &[ip.as_str()], server.port, None)
        .await;

    let mut one = Controller::start(&cluster, "one", &[]);
    one.wait_for_log("became the leader", Duration::from_secs(20));
    // The second replica serves xDS too (its own Envoy would need another port: none).
    let two = Controller::start_without_envoy(&cluster, "two", &[]);
    let routes = cluster.routes("default").await;
    wait_for_object(&routes, "first", Duration::from_secs(20), |r| {
        accepted(r, "gw")
    })
    .await;
    two.wait_for_log("initial lists done", Duration::from_secs(20));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!two.log_text().contains("became the leader"));
    assert!(
        !two.log_text().contains("written="),
        "the follower wrote status:\n{}",
        two.log_text()
    );

    // The leader dies; the follower takes over within the lease (4 s) plus a renewal.
    let killed = std::time::Instant::now();
    one.crash();
    two.wait_for_log("became the leader", Duration::from_secs(10));
    let handover = killed.elapsed();
    assert!(
        handover < Duration::from_secs(8),
        "handover took {handover:?}"
    );
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(cluster.client(infergate_e2e::kube::ADMIN).await, "default");
    let lease = leases.get("infergate-leader").await.unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("two"));
    // The new leader writes status for changes made after the handover.
    cluster.apply_yaml(&route("second")).await;
    wait_for_object(&routes, "second", Duration::from_secs(20), |r| {
        accepted(r, "gw")
    })
    .await;
    let first = serde_json::to_value(routes.get("first").await.unwrap()).unwrap();
    assert!(accepted(&first, "gw"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_restart_keeps_serving_and_watches_resume() {
    let mut cluster = Cluster::start("restart", true).await;
    grant_printed_rbac(&cluster, "default", false).await;
    let ip = cluster.ip();
    let a = cluster.named_server("a");
    let b = cluster.named_server("b");
    let listener = free_port();
    cluster.apply_yaml(CLASS).await;
    cluster.apply_yaml(&gateway(listener)).await;
    let route = |name: &str| service_route(name, name, &format!("/{name}"));
    cluster.apply_yaml(&route("a")).await;
    cluster
        .endpoint_slice("default", "a", &[ip.as_str()], a.port, None)
        .await;
    let controller = Controller::start(&cluster, "one", &[]);
    assert!(
        wait_until(Duration::from_secs(30), || get(listener, "/a", &[])
            .map(|r| r.1)
            == Some("a".into())),
        "{}",
        controller.log_text()
    );

    // While the API server is down, Envoy keeps its configuration.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let traffic = {
        let (stop, failures) = (stop.clone(), failures.clone());
        std::thread::spawn(move || {
            let mut ok = 0;
            while !stop.load(Ordering::Relaxed) {
                if get(listener, "/a", &[]).map(|r| r.1) == Some("a".into()) {
                    ok += 1;
                } else {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            ok
        })
    };
    cluster.restart_apiserver(Duration::from_secs(3)).await;
    // A change made after the restart is picked up by the resumed watches.
    cluster.apply_yaml(&route("b")).await;
    cluster
        .endpoint_slice("default", "b", &[ip.as_str()], b.port, None)
        .await;
    assert!(
        wait_until(Duration::from_secs(60), || get(listener, "/b", &[])
            .map(|r| r.1)
            == Some("b".into())),
        "a route created after the API server restart is not served:\n{}",
        controller.log_text()
    );
    let routes = cluster.routes("default").await;
    wait_for_object(&routes, "b", Duration::from_secs(30), |r| accepted(r, "gw")).await;
    stop.store(true, Ordering::Relaxed);
    let ok = traffic.join().unwrap();
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed while the API server was away ({ok} succeeded)"
    );
    assert!(ok > 50);
}
