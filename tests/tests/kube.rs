//! Kubernetes mode against a real kube-apiserver and etcd (scripts/kube-tools.sh),
//! with the real Envoy: watches, status written back, RBAC as printed.

use std::time::Duration;

use infergate_e2e::kube::{
    CLASS, CONTROLLER, Cluster, Controller, SlowStatusProxy, gateway, grant_printed_rbac,
    parent_condition, service_route, wait_for_object,
};
use infergate_e2e::{get, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_and_status_from_the_api_server() {
    let cluster = Cluster::start("basic", true).await;
    grant_printed_rbac(&cluster, "default", false).await;
    let listener_port = infergate_e2e::free_port();
    let ip = cluster.ip();
    let a = cluster.named_server("a");
    let b = cluster.named_server("b");
    cluster.apply_yaml(CLASS).await;
    cluster.apply_yaml(&gateway(listener_port)).await;
    cluster.route_to_endpoint("svc-a", "/a", &ip, a.port).await;
    cluster.route_to_endpoint("svc-b", "/b", &ip, b.port).await;

    let controller = Controller::start(&cluster, "one", &[]);
    let routes = cluster.routes("default").await;
    for route in ["svc-a", "svc-b"] {
        wait_for_object(&routes, route, Duration::from_secs(30), |r| {
            parent_condition(r, "gw", "Accepted") == Some(("True".into(), "Accepted".into()))
                && parent_condition(r, "gw", "ResolvedRefs")
                    == Some(("True".into(), "ResolvedRefs".into()))
        })
        .await;
    }
    let gateways = cluster
        .dynamic(
            "gateway.networking.k8s.io",
            "v1",
            "Gateway",
            "gateways",
            Some("default"),
        )
        .await;
    let gw = wait_for_object(&gateways, "gw", Duration::from_secs(10), |g| {
        g["status"]["listeners"][0]["attachedRoutes"] == 2
    })
    .await;
    assert_eq!(gw["status"]["addresses"][0]["value"], "127.0.0.1");
    let programmed = gw["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Programmed")
        .unwrap();
    assert_eq!(programmed["status"], "True");
    assert_eq!(
        programmed["observedGeneration"],
        gw["metadata"]["generation"]
    );

    assert!(
        wait_until(Duration::from_secs(20), || {
            get(listener_port, "/a/x", &[]).map(|r| r.1) == Some("a".into())
                && get(listener_port, "/b/x", &[]).map(|r| r.1) == Some("b".into())
        }),
        "Envoy does not route /a and /b; controller log:\n{}",
        controller.log_text()
    );

    // A route pointing at a Service that does not exist: BackendNotFound,
    // read back from the API server, and a Warning Event on the route.
    cluster
        .apply_yaml(&service_route("svc-a", "svc-a", "/a").replace(
            "backendRefs: [{ name: svc-a",
            "backendRefs: [{ name: missing",
        ))
        .await;
    wait_for_object(&routes, "svc-a", Duration::from_secs(20), |r| {
        parent_condition(r, "gw", "ResolvedRefs")
            == Some(("False".into(), "BackendNotFound".into()))
    })
    .await;
    assert!(
        event_appears(&cluster, |e| {
            e["regarding"]["name"] == "svc-a"
                && e["reason"] == "BackendNotFound"
                && e["type"] == "Warning"
        })
        .await,
        "no BackendNotFound Event for svc-a"
    );
    // /b is untouched.
    assert_eq!(
        get(listener_port, "/b/x", &[]).map(|r| r.1),
        Some("b".into())
    );
}

/// Whether an Event in namespace default that `wanted` accepts shows up
/// within 20 seconds.
async fn event_appears(cluster: &Cluster, wanted: impl Fn(&serde_json::Value) -> bool) -> bool {
    let events = cluster
        .dynamic("events.k8s.io", "v1", "Event", "events", Some("default"))
        .await;
    wait_until_async(Duration::from_secs(20), || async {
        events
            .list(&Default::default())
            .await
            .is_ok_and(|l| l.items.iter().any(|e| wanted(&e.data)))
    })
    .await
}

async fn wait_until_async<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_component_is_an_event_on_our_gateway_class() {
    let cluster = Cluster::start("component", true).await;
    grant_printed_rbac(&cluster, "default", false).await;
    let ip = cluster.ip();
    let a = cluster.named_server("a");
    let listener_port = infergate_e2e::free_port();
    cluster.apply_yaml(CLASS).await;
    cluster.apply_yaml(&gateway(listener_port)).await;
    cluster.route_to_endpoint("svc-a", "/a", &ip, a.port).await;
    let component = cluster.dir.0.join("translator.wasm");
    std::fs::copy(infergate_e2e::production_component(), &component).unwrap();
    let controller = Controller::start(
        &cluster,
        "one",
        &["--component", &component.display().to_string()],
    );
    assert!(
        wait_until(Duration::from_secs(30), || get(listener_port, "/a", &[])
            .map(|r| r.1)
            == Some("a".into())),
        "{}",
        controller.log_text()
    );
    controller.wait_for_log("became the leader", Duration::from_secs(10));

    // A component built for another WIT version is refused: logged, an
    // Event on the GatewayClass, and the old component keeps serving.
    let staged = cluster.dir.0.join("translator.wasm.new");
    std::fs::copy(
        infergate_e2e::test_component("infergate-test-other-version"),
        &staged,
    )
    .unwrap();
    std::fs::rename(&staged, &component).unwrap();
    controller.wait_for_log("rejected", Duration::from_secs(20));
    assert!(
        event_appears(&cluster, |e| {
            e["regarding"]["kind"] == "GatewayClass"
                && e["regarding"]["name"] == "infergate"
                && e["reason"] == "ComponentRejected"
                && e["note"]
                    .as_str()
                    .is_some_and(|n| n.contains("0.0.9") || n.contains("version"))
        })
        .await,
        "no ComponentRejected Event on GatewayClass infergate; controller log:\n{}",
        controller.log_text()
    );
    assert_eq!(get(listener_port, "/a", &[]).map(|r| r.1), Some("a".into()));
}

/// Issue 15: status writes never delay configuration. Every status write is
/// held for a minute by a proxy in front of the API server; a route added
/// meanwhile still reaches Envoy within the usual time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_api_server_delays_statuses_never_configuration() {
    let cluster = Cluster::start("slow-status", true).await;
    grant_printed_rbac(&cluster, "default", false).await;
    let proxy = SlowStatusProxy::start(&cluster, CONTROLLER, Duration::from_secs(60)).await;
    let ip = cluster.ip();
    let a = cluster.named_server("a");
    let b = cluster.named_server("b");
    let listener_port = infergate_e2e::free_port();
    cluster.apply_yaml(CLASS).await;
    cluster.apply_yaml(&gateway(listener_port)).await;
    cluster.route_to_endpoint("svc-a", "/a", &ip, a.port).await;
    let controller = Controller::start_with_kubeconfig(
        &cluster,
        "slow",
        proxy.kubeconfig(),
        &["--status-write-timeout-seconds", "120"],
    );
    assert!(
        wait_until(Duration::from_secs(30), || get(listener_port, "/a", &[])
            .map(|r| r.1)
            == Some("a".into())),
        "Envoy does not route /a; controller log:\n{}",
        controller.log_text()
    );
    assert!(
        wait_until(Duration::from_secs(10), || proxy.status_writes() > 0),
        "the leader never tried to write a status; controller log:\n{}",
        controller.log_text()
    );

    // The writes hang in the proxy; a new route comes.
    cluster.route_to_endpoint("svc-b", "/b", &ip, b.port).await;
    assert!(
        wait_until(Duration::from_secs(10), || get(listener_port, "/b", &[])
            .map(|r| r.1)
            == Some("b".into())),
        "a new route waited for status writes; controller log:\n{}",
        controller.log_text()
    );
    // And the statuses really are still on their way: none has landed.
    let routes = cluster.routes("default").await;
    let route = routes.get("svc-a").await.unwrap();
    assert_eq!(
        parent_condition(&route.data, "gw", "Accepted"),
        None,
        "a status write got through the slow proxy, so this test proved nothing"
    );
}
