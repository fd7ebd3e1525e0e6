//! The upstream Gateway API Inference Extension v1.6.0 conformance manifests
//! (tests/kube/gie-conformance-v1.6.0) applied to a real kube-apiserver with
//! infergate's GatewayClass, and the 14 conformance tests' expectations
//! checked: statuses read back from the API server, traffic through the real
//! Envoy to simulated model servers, chosen by pickers that discover their
//! pools in the cluster (in the upstream conformance picker's test mode).
//!
//! No kubelet or controller-manager runs: this test plays them. For each
//! model-server Deployment it creates ready Pods, each on an address of its
//! own in the cluster's network namespace where simulators listen; for each
//! picker Service an EndpointSlice pointing at a picker in that namespace.
//! The Gateways get spec.addresses (127.0.9.1 and .2) so that their two local
//! Envoys can both listen on port 80. (The unmodified upstream suite runs on
//! the real cluster: issue 18.)

use std::collections::HashMap;
use std::time::Duration;

use infergate_e2e::kube::{
    Cluster, Controller, grant_printed_rbac, manifests_dir, parent_condition, picker,
    wait_for_object,
};
use infergate_e2e::{Process, Response, free_port, request_at, wait_until};
use kube::api::{Api, DeleteParams, DynamicObject};

const APP: &str = "inference-conformance-app-backend";
const INFRA: &str = "inference-conformance-infra";
const PRIMARY_GW: &str = "127.0.9.1";
const SECONDARY_GW: &str = "127.0.9.2";
const BODY: &str = r#"{"model":"conformance-fake-model","prompt":"Write as if you were a critic: San Francisco","max_tokens":3}"#;

/// Model-server Deployments: (label app=, number, container ports). Pod `i`
/// (1..=3) of Deployment `n` has address `.<10 n + i>` in the namespace.
const MODEL_SERVERS: &[(&str, u8, &[u16])] = &[
    ("primary-inference-model-server", PRIMARY, &[3000]),
    ("secondary-inference-model-server", SECONDARY, &[3000]),
    ("appprotocol-inference-model-server", 3, &[3000, 3001]),
    (
        "dp-inference-model-server",
        DATA_PARALLEL,
        &[3000, 3002, 3004],
    ),
];
const PRIMARY: u8 = 1;
const SECONDARY: u8 = 2;
const DATA_PARALLEL: u8 = 4;

/// Picker Services and their pools.
const PICKERS: &[(&str, &str)] = &[
    ("primary-endpoint-picker-svc", "primary-inference-pool"),
    ("secondary-endpoint-picker-svc", "secondary-inference-pool"),
    (
        "appprotocol-http-endpoint-picker-svc",
        "appprotocol-http-inference-pool",
    ),
    (
        "appprotocol-h2c-endpoint-picker-svc",
        "appprotocol-h2c-inference-pool",
    ),
    ("dp-endpoint-picker-svc", "dp-inference-pool"),
];

fn post(gateway: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> Option<Response> {
    request_at(gateway, 80, host, "POST", path, headers, BODY.as_bytes())
}

/// The upstream manifests, with our GatewayClass and Gateway addresses.
fn manifests() -> String {
    let root = manifests_dir().join("gie-conformance-v1.6.0");
    let mut text = std::fs::read_to_string(root.join("resources/base.yaml")).unwrap();
    let mut tests: Vec<_> = std::fs::read_dir(root.join("tests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    tests.sort();
    for file in tests {
        text.push_str("\n---\n");
        text.push_str(&std::fs::read_to_string(file).unwrap());
    }
    let mut docs = Vec::new();
    for doc in
        serde_yaml_ng::Deserializer::from_str(&text.replace("{GATEWAY_CLASS_NAME}", "infergate"))
    {
        let mut value: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
        if value.is_null() {
            continue;
        }
        if value["kind"] == "Gateway" {
            let address = if value["metadata"]["name"] == "conformance-primary" {
                PRIMARY_GW
            } else {
                SECONDARY_GW
            };
            value["spec"]["addresses"] =
                serde_json::json!([{ "type": "IPAddress", "value": address }]);
        }
        docs.push(serde_json::to_string(&value).unwrap());
    }
    docs.join("\n---\n")
}

fn served_by(r: &Option<Response>) -> String {
    r.as_ref()
        .and_then(|r| r.header("x-served-endpoint"))
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_conformance_manifests() {
    let cluster = Cluster::start("conformance", true).await;
    cluster
        .apply_yaml(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: { name: infergate }\n\
             spec: { controllerName: infergate.dev/gateway-controller }\n",
        )
        .await;
    cluster.apply_yaml(&manifests()).await;
    // The controller's Lease is in `default`; the pickers' Role in the app namespace.
    grant_printed_rbac(&cluster, "default", true).await;
    grant_printed_rbac(&cluster, APP, true).await;

    // The kubelet's part: 3 ready Pods per model-server Deployment, each a
    // simulator per container port.
    let mut sims: Vec<Process> = Vec::new();
    let pod = |deployment: u8, i: u8| cluster.pod_address(10 * deployment + i);
    for (app, deployment, ports) in MODEL_SERVERS {
        for i in 1..=3 {
            let ip = pod(*deployment, i);
            for port in *ports {
                sims.push(cluster.sim(
                    &format!("{ip}:{port}"),
                    &format!("{app}-{i}-{port}"),
                    &["--echo-other-paths"],
                ));
            }
            cluster
                .pod(APP, &format!("{app}-{i}"), &[("app", app)], &ip, true)
                .await;
        }
    }
    // The pickers, and the EndpointSlices of their Services.
    let ip = cluster.ip();
    let mut pickers: HashMap<&str, Process> = HashMap::new();
    for (service, pool) in PICKERS {
        let port = free_port();
        pickers.insert(pool, picker(&cluster, APP, pool, port, true));
        cluster
            .endpoint_slice(APP, service, &[ip.as_str()], port, Some("http2"))
            .await;
    }

    let controller = Controller::start(&cluster, "one", &["--enable-inference-extension"]);
    let routes = cluster.routes(APP).await;
    let pools = cluster.pools(APP).await;
    let condition = |o: &serde_json::Value, parent: &str, t: &str| parent_condition(o, parent, t);
    let is = |status: &str, reason: &str| Some((status.to_string(), reason.to_string()));

    // 1. InferencePoolAccepted, 2. InferencePoolResolvedRefsCondition (parents for both Gateways).
    wait_for_object(
        &pools,
        "primary-inference-pool",
        Duration::from_secs(60),
        |p| {
            condition(p, "conformance-primary", "Accepted") == is("True", "Accepted")
                && condition(p, "conformance-primary", "ResolvedRefs") == is("True", "ResolvedRefs")
                && condition(p, "conformance-secondary", "Accepted") == is("True", "Accepted")
        },
    )
    .await;
    let pool = serde_json::to_value(pools.get("primary-inference-pool").await.unwrap()).unwrap();
    for parent in pool["status"]["parents"].as_array().unwrap() {
        assert_eq!(
            parent["parentRef"]["namespace"], INFRA,
            "parentRef.namespace must be explicit"
        );
        assert_eq!(parent["parentRef"]["kind"], "Gateway");
    }
    // 3. HTTPRouteInvalidInferencePoolRef.
    wait_for_object(
        &routes,
        "httproute-to-non-existent-pool",
        Duration::from_secs(20),
        |r| {
            condition(r, "conformance-primary", "Accepted") == is("True", "Accepted")
                && condition(r, "conformance-primary", "ResolvedRefs")
                    == is("False", "BackendNotFound")
        },
    )
    .await;
    // 4. InferencePoolInvalidEPPService.
    wait_for_object(
        &pools,
        "pool-with-invalid-epp",
        Duration::from_secs(20),
        |p| condition(p, "conformance-primary", "ResolvedRefs").is_some_and(|(s, _)| s == "False"),
    )
    .await;
    // 5. InferencePoolMissingEPPRef.
    wait_for_object(
        &pools,
        "pool-with-missing-epp-ref",
        Duration::from_secs(20),
        |p| condition(p, "conformance-primary", "Accepted") == is("True", "Accepted"),
    )
    .await;
    // Every route that names existing pools is accepted with resolved refs.
    for route in [
        "httproute-for-primary-gw",
        "httproute-for-secondary-gw",
        "httproute-weighted-two-pools",
        "httproute-multiple-rules-different-pools",
        "httproute-pool-port-unspecified",
        "httproute-for-failopen-pool-gw",
        "httproute-for-inferencepool-appprotocol-h2c",
        "httproute-for-primary-gw-dp",
    ] {
        let object = routes
            .get(route)
            .await
            .unwrap_or_else(|e| panic!("{route}: {e}"));
        let object = serde_json::to_value(object).unwrap();
        let parent = object["spec"]["parentRefs"][0]["name"]
            .as_str()
            .unwrap()
            .to_string();
        wait_for_object(&routes, route, Duration::from_secs(20), |r| {
            condition(r, &parent, "Accepted") == is("True", "Accepted")
                && condition(r, &parent, "ResolvedRefs") == is("True", "ResolvedRefs")
        })
        .await;
    }

    // Traffic. 9. GatewayFollowingEPPRouting: 100 requests at concurrency
    // 10, all on the picked pod; 13. the served endpoint is echoed.
    let wanted = pod(PRIMARY, 2);
    let diagnostics = || {
        format!(
            "{:?}\ncontroller log:\n{}\nEnvoy log:\n{}\npicker log:\n{}",
            post(
                PRIMARY_GW,
                "primary.example.com",
                "/primary-gateway-test",
                &[]
            ),
            controller.log_text(),
            infergate_e2e::kube::tail(
                &controller
                    .work
                    .join("inference-conformance-infra_conformance-primary.log"),
                20
            ),
            infergate_e2e::kube::tail(&pickers["primary-inference-pool"].log, 20),
        ) + &envoy_stats(
            &controller
                .work
                .join("inference-conformance-infra_conformance-primary.admin"),
        )
    };
    assert!(
        wait_until(Duration::from_secs(30), || post(
            PRIMARY_GW,
            "primary.example.com",
            "/primary-gateway-test",
            &[]
        )
        .is_some_and(|r| r.status == 200)),
        "no traffic through the primary Gateway: {}",
        diagnostics()
    );
    let threads: Vec<_> = (0..10)
        .map(|_| {
            let wanted = wanted.clone();
            std::thread::spawn(move || {
                (0..10)
                    .map(|_| {
                        post(
                            PRIMARY_GW,
                            "primary.example.com",
                            "/primary-gateway-test",
                            &[("test-epp-endpoint-selection", &wanted)],
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for response in threads.into_iter().flat_map(|t| t.join().unwrap()) {
        let r = response.as_ref().expect("a response");
        assert_eq!(r.status, 200, "{r:?}{}", diagnostics());
        assert_eq!(served_by(&response), format!("{wanted}:3000"));
        assert_eq!(
            r.header("x-conformance-test-served-endpoint"),
            Some(format!("{wanted}:3000").as_str())
        );
    }
    // 10. Data parallelism: the exact ip:port.
    for (i, port) in [(3, 3002), (1, 3004), (2, 3000)] {
        let target = format!("{}:{port}", pod(DATA_PARALLEL, i));
        eventually_served(
            PRIMARY_GW,
            "primary.example.com",
            "/primary-gateway-dp-test",
            &target,
            &target,
        );
    }
    // 6. Port validation: unset, matching and other ports all route.
    for host in [
        "port-unspecified.example.com",
        "port-matching.example.com",
        "port-non-matching.example.com",
    ] {
        let path = match host {
            "port-unspecified.example.com" => "/test-port-unspecified",
            "port-matching.example.com" => "/test-port-matching",
            _ => "/test-port-non-matching",
        };
        let target = pod(PRIMARY, 1);
        eventually_served(PRIMARY_GW, host, path, &target, &format!("{target}:3000"));
    }
    // 7. Two Gateways, two pools.
    eventually_served(
        PRIMARY_GW,
        "primary.example.com",
        "/test-primary-gateway",
        &pod(PRIMARY, 3),
        &format!("{}:3000", pod(PRIMARY, 3)),
    );
    eventually_served(
        SECONDARY_GW,
        "secondary.example.com",
        "/test-secondary-gateway",
        &pod(SECONDARY, 3),
        &format!("{}:3000", pod(SECONDARY, 3)),
    );
    // 8. Two rules, two pools.
    eventually_served(
        PRIMARY_GW,
        "example.com",
        "/primary",
        &pod(PRIMARY, 1),
        &format!("{}:3000", pod(PRIMARY, 1)),
    );
    eventually_served(
        PRIMARY_GW,
        "example.com",
        "/secondary",
        &pod(SECONDARY, 1),
        &format!("{}:3000", pod(SECONDARY, 1)),
    );
    // 14. appProtocol: h2c to the pool on 3001, HTTP/1.1 to the http pool.
    for (host, path, port, protocol) in [
        (
            "appprotocol-h2c.example.com",
            "/inferencepool-app-protocol-h2c",
            ":3001",
            "HTTP/2.0",
        ),
        (
            "appprotocol-http.example.com",
            "/inferencepool-app-protocol-http",
            ":3000",
            "HTTP/1.1",
        ),
    ] {
        let r = post(PRIMARY_GW, host, path, &[]);
        assert!(served_by(&r).ends_with(port), "{r:?}");
        assert_eq!(
            r.as_ref().and_then(|r| r.header("x-request-protocol")),
            Some(protocol),
            "{r:?}"
        );
    }
    // 11. Weighted 70/30 across two pools, 200 requests.
    let primary_pods: Vec<String> = (1..=3).map(|i| pod(PRIMARY, i)).collect();
    let mut primary = 0;
    for _ in 0..200 {
        let r = post(
            PRIMARY_GW,
            "primary.example.com",
            "/weighted-two-pools-test",
            &[],
        );
        let endpoint = served_by(&r);
        assert!(!endpoint.is_empty(), "{r:?}");
        if primary_pods
            .iter()
            .any(|ip| endpoint.starts_with(&format!("{ip}:")))
        {
            primary += 1;
        }
    }
    let sigma = (200.0f64 * 0.7 * 0.3).sqrt();
    let tolerance = (0.10 * 200.0f64).max(4.5 * sigma);
    assert!(
        (primary as f64 - 140.0).abs() <= tolerance,
        "{primary} of 200 went to the 70% pool"
    );
    // 4 (traffic): a pool whose picker Service does not exist: 5xx.
    let r = post(PRIMARY_GW, "example.com", "/invalid-epp-test", &[]);
    assert!(r.as_ref().is_some_and(|r| r.status >= 500), "{r:?}");

    // 12. EppUnAvailableFailOpen: the secondary pool is FailOpen; its picker
    // Service loses its endpoints and requests still get 200.
    let slices = cluster
        .dynamic(
            "discovery.k8s.io",
            "v1",
            "EndpointSlice",
            "endpointslices",
            Some(APP),
        )
        .await;
    slices
        .delete(
            "secondary-endpoint-picker-svc-test",
            &DeleteParams::default(),
        )
        .await
        .unwrap();
    drop(pickers.remove("secondary-inference-pool"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..10 {
        let r = post(
            SECONDARY_GW,
            "secondary.example.com",
            "/failopen-pool-test",
            &[],
        );
        assert_eq!(r.as_ref().map(|r| r.status), Some(200), "{r:?}");
        let endpoint = served_by(&r);
        assert!(
            (1..=3).any(|i| endpoint.starts_with(&format!("{}:", pod(SECONDARY, i)))),
            "{r:?}"
        );
    }

    // 2 (continued): deleting the secondary Gateway's route removes that
    // parent from the pool; requests there then get 404.
    routes
        .delete("httproute-for-secondary-gw", &DeleteParams::default())
        .await
        .unwrap();
    wait_for_object(
        &pools,
        "primary-inference-pool",
        Duration::from_secs(20),
        |p| {
            condition(p, "conformance-secondary", "Accepted").is_none()
                && condition(p, "conformance-primary", "Accepted") == is("True", "Accepted")
        },
    )
    .await;
    assert!(
        wait_until(Duration::from_secs(10), || post(
            SECONDARY_GW,
            "secondary.example.com",
            "/primary-gateway-test",
            &[]
        )
        .is_some_and(|r| r.status == 404)),
        "the deleted route still serves"
    );
    let _: &Api<DynamicObject> = &routes;
    drop(sims);
}

/// Envoy's cluster health and ext_proc counters, for failure messages.
fn envoy_stats(admin_file: &std::path::Path) -> String {
    let Ok(admin) = std::fs::read_to_string(admin_file) else {
        return String::new();
    };
    let port: u16 = admin
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let clusters = infergate_e2e::request(port, "GET", "/clusters", &[], b"")
        .map(|r| r.body)
        .unwrap_or_default();
    let stats = infergate_e2e::request(port, "GET", "/stats?filter=5xx|fail|direct|no_route|no_healthy|override|reset|timeout|upstream_rq_total", &[], b"")
        .map(|r| r.body)
        .unwrap_or_default();
    let relevant: Vec<&str> = clusters
        .lines()
        .filter(|l| {
            l.contains("endpointpicker")
                && (l.contains("health_flags")
                    || l.contains("cx_connect_fail")
                    || l.contains("rq_error"))
        })
        .collect();
    let stats: Vec<&str> = stats.lines().filter(|l| !l.ends_with(": 0")).collect();
    format!(
        "\nEnvoy clusters:\n{}\nEnvoy stats:\n{}",
        relevant.join("\n"),
        stats.join("\n")
    )
}

/// Like the upstream suite's eventually-consistent requests: send until the
/// endpoint `want` answers (configuration reaches each Envoy, picker and
/// pool on its own schedule), at most 20 s; then it must keep answering.
fn eventually_served(gateway: &str, host: &str, path: &str, steer: &str, want: &str) {
    let headers = [("test-epp-endpoint-selection", steer)];
    let mut last = None;
    let reached = wait_until(Duration::from_secs(20), || {
        last = post(gateway, host, path, &headers);
        served_by(&last) == want
    });
    assert!(
        reached,
        "{host}{path} steered to {steer}: never served by {want}; last: {last:?}"
    );
    for _ in 0..5 {
        let r = post(gateway, host, path, &headers);
        assert_eq!(
            served_by(&r),
            want,
            "{host}{path} steered to {steer}: {r:?}"
        );
    }
}
