//! The writer task against a mocked API server (tower-test): what it sends,
//! and what it does when the API server refuses, stalls or changes leader.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use infergate_model::{
    Condition, ConditionType, HttpRouteStatus, ObjectRef, ParentRef, RefKind, RouteParentStatus,
    Statuses,
};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::*;

const US: &str = "infergate.io/gateway-controller";

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn statuses() -> Statuses {
    Statuses {
        gateway_classes: vec![],
        gateways: vec![],
        http_routes: vec![HttpRouteStatus {
            route: ObjectRef::new("default", "r"),
            parents: vec![RouteParentStatus {
                parent_ref: ParentRef {
                    kind: RefKind::Gateway,
                    namespace: None,
                    name: "gw".into(),
                    section_name: None,
                    port: None,
                },
                conditions: vec![Condition::new(
                    ConditionType::Accepted,
                    true,
                    "Accepted",
                    "ok",
                    1,
                )],
            }],
        }],
        inference_pools: vec![],
        inference_model_rewrites: vec![],
    }
}

/// The route as the API server has it: `others` are other controllers'
/// `parents` entries.
fn route_json(resource_version: &str, others: &[&str]) -> Value {
    let parents: Vec<Value> = others
        .iter()
        .map(|controller| {
            json!({
                "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "their-gw"},
                "controllerName": controller,
                "conditions": [],
            })
        })
        .collect();
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r", "namespace": "default", "resourceVersion": resource_version},
        "spec": {},
        "status": {"parents": parents},
    })
}

fn observed(route: &Value) -> Observed {
    Observed {
        http_routes: vec![Arc::new(serde_json::from_value(route.clone()).unwrap())],
        ..Observed::default()
    }
}

struct Setup {
    api: Handle,
    task: StatusTask,
    metrics: StatusMetrics,
    /// What the watches have; tests change it as the API server would.
    store: Arc<Mutex<Observed>>,
    leading: watch::Sender<bool>,
}

fn setup(write_timeout: Duration, leading: bool, route: &Value) -> Setup {
    let (service, api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let metrics = StatusMetrics::default();
    let writer = Arc::new(StatusWriter::new(
        client,
        WriterConfig {
            field_manager: "infergate".into(),
            controller_name: US.into(),
            instance: "test".into(),
            write_timeout,
        },
        metrics.clone(),
    ));
    let store = Arc::new(Mutex::new(observed(route)));
    let (leading, is_leading) = watch::channel(leading);
    let view = store.clone();
    let task = StatusTask::spawn(
        writer,
        move || view.lock().unwrap().clone(),
        is_leading,
        Backoff {
            first: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
    );
    Setup {
        api,
        task,
        metrics,
        store,
        leading,
    }
}

/// The next request, its method, path and JSON body.
async fn next(
    api: &mut Handle,
) -> (
    String,
    String,
    Value,
    tower_test::mock::SendResponse<Response<Body>>,
) {
    let (request, respond) = tokio::time::timeout(Duration::from_secs(10), api.next_request())
        .await
        .expect("a request within 10 s")
        .expect("the client is alive");
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let bytes = request.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (method, path, body, respond)
}

fn respond(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn conflict() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict",
           "message": "the object has been modified", "code": 409})
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never: {what}");
}

const ROUTE_STATUS: &str =
    "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes/r/status";

#[tokio::test]
async fn a_conflict_is_planned_again_from_fresh_data_keeping_the_entry_another_controller_added() {
    let first = route_json("42", &["example.com/a"]);
    let mut s = setup(Duration::from_secs(5), true, &first);
    s.task.publish(statuses());

    let (method, path, body, reply) = next(&mut s.api).await;
    assert_eq!((method.as_str(), path.as_str()), ("PATCH", ROUTE_STATUS));
    assert_eq!(body["metadata"]["resourceVersion"], "42");
    // Another controller adds its entry before our write lands.
    let fresh = route_json("43", &["example.com/a", "example.com/b"]);
    *s.store.lock().unwrap() = observed(&fresh);
    reply.send_response(respond(409, &conflict()));

    let (_, path, body, reply) = next(&mut s.api).await;
    assert_eq!(path, ROUTE_STATUS);
    assert_eq!(body["metadata"]["resourceVersion"], "43");
    let controllers: Vec<&str> = body["status"]["parents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["controllerName"].as_str().unwrap())
        .collect();
    assert_eq!(controllers, ["example.com/a", "example.com/b", US]);
    reply.send_response(respond(200, &fresh));
    let metrics = s.metrics.clone();
    eventually("one write counted", move || metrics.writes("written") == 1).await;
    assert_eq!(s.metrics.writes("conflict"), 1);
}

#[tokio::test]
async fn a_write_the_api_server_does_not_answer_times_out_and_is_retried() {
    let route = route_json("1", &[]);
    let mut s = setup(Duration::from_millis(100), true, &route);
    s.task.publish(statuses());
    let (_, _, _, stalled) = next(&mut s.api).await;
    // Never answered (kept alive so that the connection does not fail).
    let (_, path, _, reply) = next(&mut s.api).await;
    assert_eq!(path, ROUTE_STATUS);
    assert_eq!(s.metrics.writes("timeout"), 1);
    reply.send_response(respond(200, &route));
    let metrics = s.metrics.clone();
    eventually("the retry counted", move || metrics.writes("written") == 1).await;
    drop(stalled);
}

#[tokio::test]
async fn only_the_leader_writes_and_a_new_leader_writes_the_latest_state() {
    let route = route_json("1", &[]);
    let mut s = setup(Duration::from_secs(5), false, &route);
    s.task.publish(statuses());
    let mut newer = statuses();
    newer.http_routes[0].parents[0].conditions[0].message = "newer".into();
    s.task.publish(newer);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), s.api.next_request())
            .await
            .is_err(),
        "a replica that does not lead wrote a status"
    );
    s.leading.send_replace(true);
    let (_, path, body, reply) = next(&mut s.api).await;
    assert_eq!(path, ROUTE_STATUS);
    assert_eq!(
        body["status"]["parents"][0]["conditions"][0]["message"], "newer",
        "the state published last is the one written"
    );
    reply.send_response(respond(200, &route));
    let metrics = s.metrics.clone();
    eventually("written", move || metrics.writes("written") == 1).await;
}

#[tokio::test]
async fn publishing_never_waits_for_the_api_server() {
    let route = route_json("1", &[]);
    let mut s = setup(Duration::from_secs(30), true, &route);
    s.task.publish(statuses());
    let (_, _, _, stalled) = next(&mut s.api).await;
    // The API server holds the write; the controller goes on publishing.
    // (A publish that waited would wait the whole 30 s write timeout.)
    tokio::time::timeout(Duration::from_secs(10), async {
        for i in 0..1000 {
            let mut next = statuses();
            next.http_routes[0].parents[0].conditions[0].message = format!("state {i}");
            s.task.publish(next);
        }
    })
    .await
    .expect("publishing waited for the stalled write");
    // Once the stalled write ends, the latest state is what is written next.
    stalled.send_response(respond(200, &route));
    let (_, _, body, reply) = next(&mut s.api).await;
    assert_eq!(
        body["status"]["parents"][0]["conditions"][0]["message"],
        "state 999"
    );
    reply.send_response(respond(200, &route));
}
