//! infergate standalone with the real Envoy: requests land where the
//! configuration says, and keep landing there through edits, mistakes and
//! restarts.

use std::time::Duration;

use infergate_e2e::*;

struct Setup {
    _dir: TempDir,
    listener: u16,
    blue: NamedServer,
    green: NamedServer,
    infergate: Standalone,
}

fn write(dir: &std::path::Path, file: &str, text: &str) {
    // Write-then-rename, as editors and kubectl-style tools do, so the
    // watcher never sees half a file.
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, dir.join(file)).expect("rename");
}

fn route(rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
{rules}"
    )
}

const PATH_AND_HEADER: &str = "  - matches: [{path: {type: PathPrefix, value: /blue}}]
    backendRefs: [{name: blue, port: 80}]
  - matches: [{headers: [{name: x-pick, value: green}]}]
    backendRefs: [{name: green, port: 80}]
  - backendRefs: [{name: blue, port: 80}]
";

/// A config directory with a Gateway, the blue and green Services and a
/// route with `rules`, and the servers behind them.
struct Layout {
    dir: TempDir,
    config: std::path::PathBuf,
    work: std::path::PathBuf,
    listener: u16,
    blue: NamedServer,
    green: NamedServer,
}

fn layout(tag: &str, rules: &str) -> Layout {
    let dir = TempDir::new(tag);
    let config = dir.0.join("config");
    let work = dir.0.join("work");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let listener = free_port();
    let blue = NamedServer::start("blue");
    let green = NamedServer::start("green");
    write(&config, "gateway.yaml", &gateway_yaml(listener));
    write(
        &config,
        "services.yaml",
        &(service_yaml("blue", blue.port) + &service_yaml("green", green.port)),
    );
    write(&config, "routes.yaml", &route(rules));
    Layout {
        dir,
        config,
        work,
        listener,
        blue,
        green,
    }
}

fn start(tag: &str, rules: &str, extra: &[&str]) -> Setup {
    serve(layout(tag, rules), extra)
}

/// Run infergate on a layout and wait until Envoy serves its routes.
fn serve(l: Layout, extra: &[&str]) -> Setup {
    let infergate = Standalone::start(&l.config, &l.work, free_port(), extra);
    let ready = wait_until(Duration::from_secs(30), || {
        get(l.listener, "/", &[]).is_some_and(|r| r.0 == 200)
    });
    assert!(
        ready,
        "Envoy never served on {}; infergate log:\n{}",
        l.listener,
        infergate.log_text()
    );
    Setup {
        _dir: l.dir,
        listener: l.listener,
        blue: l.blue,
        green: l.green,
        infergate,
    }
}

fn served_by(s: &Setup, path: &str, headers: &[(&str, &str)]) -> String {
    let (status, who, body) = get(s.listener, path, headers).expect("a response");
    assert_eq!(status, 200, "{path}: {body}");
    who
}

#[test]
fn path_and_header_matches_route_to_the_right_server() {
    let s = start("matches", PATH_AND_HEADER, &[]);
    assert_eq!(
        served_by(&s, "/blue/x", &[("x-pick", "green")]),
        "blue",
        "the path rule wins over the header rule"
    );
    assert_eq!(served_by(&s, "/other", &[("x-pick", "green")]), "green");
    assert_eq!(served_by(&s, "/other", &[]), "blue");
    // PathPrefix matches whole segments: /bluex is not under /blue.
    assert_eq!(served_by(&s, "/bluex", &[("x-pick", "green")]), "green");
    let _ = (&s.blue, &s.green);
}

#[test]
fn url_rewrites_reach_the_backend_with_the_path_gateway_api_prescribes() {
    let rewrite = |prefix: &str, path: &str| {
        format!(
            "  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]
    filters: [{{type: URLRewrite, urlRewrite: {{path: {path}}}}}]
    backendRefs: [{{name: blue, port: 80}}]
"
        )
    };
    let rules = [
        rewrite(
            "/foo",
            "{type: ReplacePrefixMatch, replacePrefixMatch: /xyz}",
        ),
        rewrite(
            "/strip",
            "{type: ReplacePrefixMatch, replacePrefixMatch: /}",
        ),
        rewrite(
            "/slash/",
            "{type: ReplacePrefixMatch, replacePrefixMatch: /xyz/}",
        ),
        rewrite("/full", "{type: ReplaceFullPath, replaceFullPath: /one}"),
        "  - backendRefs: [{name: green, port: 80}]\n".to_string(),
    ]
    .concat();
    let s = start("rewrites", &rules, &[]);
    // The table of Gateway API's HTTPPathModifier; a query does not
    // disturb the rewrite.
    for (request, expected) in [
        ("/foo/bar", "/xyz/bar"),
        ("/foo", "/xyz"),
        ("/foo/", "/xyz/"),
        ("/foo/bar?q=1", "/xyz/bar"),
        ("/strip/bar", "/bar"),
        ("/strip/bar/baz", "/bar/baz"),
        ("/strip", "/"),
        ("/strip/", "/"),
        ("/slash/bar", "/xyz/bar"),
        ("/slash", "/xyz"),
        ("/full/a/b", "/one"),
    ] {
        let (status, who, body) = get(s.listener, request, &[]).expect("a response");
        assert_eq!(status, 200, "{request}: {body}");
        assert_eq!(who, "blue");
        assert_eq!(body.trim(), format!("blue {expected}"), "{request}");
    }
    let _ = (&s.blue, &s.green, &s.infergate);
}

/// An HTTP/1.1 message head, read byte by byte up to its blank line (not a
/// byte of what follows); None if the stream ends or fails first.
fn read_head(stream: &mut std::net::TcpStream) -> Option<String> {
    use std::io::Read;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).ok()?;
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// A backend that accepts a WebSocket upgrade and then echoes every byte;
/// a request without `upgrade: websocket` gets 400. Returns its port.
fn websocket_echo() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let Some(head) = read_head(&mut stream) else {
                    return;
                };
                if !head.to_ascii_lowercase().contains("upgrade: websocket") {
                    let _ = stream.write_all(
                        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                    return;
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
                );
                let mut buffer = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buffer) {
                    if n == 0 || stream.write_all(&buffer[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn websocket_upgrades_reach_the_backend_and_carry_bytes_both_ways() {
    use std::io::{Read, Write};
    let l = layout(
        "websocket",
        "  - matches: [{path: {type: PathPrefix, value: /ws}}]
    backendRefs: [{name: ws, port: 80}]
  - backendRefs: [{name: blue, port: 80}]
",
    );
    write(&l.config, "ws.yaml", &service_yaml("ws", websocket_echo()));
    let s = serve(l, &[]);

    let mut stream = std::net::TcpStream::connect(("127.0.0.1", s.listener)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nhost: example.com\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
              sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
        )
        .expect("send the upgrade");
    let head = read_head(&mut stream).expect("the upgrade's answer");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Upgraded: bytes go both ways, a frame's worth at a time.
    for message in [&b"\x81\x05hello"[..], &[0x82, 3, 1, 2, 3][..]] {
        stream.write_all(message).expect("send");
        let mut echoed = vec![0u8; message.len()];
        stream.read_exact(&mut echoed).expect("the echo");
        assert_eq!(echoed, message);
    }
    let _ = (&s.blue, &s.green, &s.infergate);
}

#[test]
fn a_weighted_split_lands_within_statistical_bounds() {
    let s = start(
        "weights",
        "  - backendRefs: [{name: blue, port: 80, weight: 80}, {name: green, port: 80, weight: 20}]\n",
        &[],
    );
    let n = 400;
    let blue = (0..n).filter(|_| served_by(&s, "/", &[]) == "blue").count();
    // Binomial(400, 0.8): mean 320, sigma 8; accept 4.5 sigma either way.
    let sigma = (n as f64 * 0.8 * 0.2).sqrt();
    let off = (blue as f64 - n as f64 * 0.8).abs();
    assert!(
        off <= 4.5 * sigma,
        "{blue} of {n} requests went to blue; expected about 320"
    );
}

#[test]
fn editing_a_file_changes_routing_without_restarting_envoy() {
    let s = start("edit", PATH_AND_HEADER, &[]);
    assert_eq!(served_by(&s, "/other", &[]), "blue");
    write(
        &s.infergate.config,
        "routes.yaml",
        &route("  - backendRefs: [{name: green, port: 80}]\n"),
    );
    let switched = wait_until(Duration::from_secs(10), || {
        served_by(&s, "/other", &[]) == "green"
    });
    assert!(
        switched,
        "routing did not change; log:\n{}",
        s.infergate.log_text()
    );
    assert_eq!(
        s.infergate.log_text().matches("Envoy started").count(),
        1,
        "Envoy was not restarted"
    );
}

#[test]
fn a_broken_file_leaves_routing_as_it_was_and_the_error_names_file_and_field() {
    let s = start("broken", PATH_AND_HEADER, &[]);
    let broken =
        route("  - backendRefs: [{name: green, port: 80}]\n").replace("port: 80", "port: eighty");
    write(&s.infergate.config, "routes.yaml", &broken);
    let reported = wait_until(Duration::from_secs(10), || {
        s.infergate.log_text().contains("configuration not applied")
    });
    let log = s.infergate.log_text();
    assert!(reported, "the error was not reported; log:\n{log}");
    assert!(
        log.contains("routes.yaml: document 1 (HTTPRoute default/r)"),
        "names file, document and object:\n{log}"
    );
    assert!(
        log.contains("spec.rules[0].backendRefs[0].port"),
        "names the field:\n{log}"
    );
    for _ in 0..20 {
        assert_eq!(
            served_by(&s, "/other", &[]),
            "blue",
            "routing must not change"
        );
    }
    // Fixing the file applies it.
    write(
        &s.infergate.config,
        "routes.yaml",
        &route("  - backendRefs: [{name: green, port: 80}]\n"),
    );
    assert!(wait_until(Duration::from_secs(10), || served_by(
        &s,
        "/other",
        &[]
    ) == "green"));
}

#[test]
fn an_envoy_that_dies_is_restarted_and_gets_its_configuration_again() {
    let s = start("envoy-killed", PATH_AND_HEADER, &[]);
    let pid = envoy_pid(&s.infergate.work).expect("Envoy's pid");
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    let back = wait_until(Duration::from_secs(30), || {
        envoy_pid(&s.infergate.work).is_some_and(|p| p != pid)
            && get(s.listener, "/other", &[("x-pick", "green")]).is_some_and(|r| r.1 == "green")
    });
    assert!(
        back,
        "Envoy did not come back with its routes; log:\n{}",
        s.infergate.log_text()
    );
}

#[test]
fn traffic_keeps_flowing_while_the_controller_restarts() {
    // infergate serves xDS only; this test runs its own Envoy, as an operator
    // with an existing Envoy would.
    let Layout {
        dir: _dir,
        config,
        work,
        listener,
        blue: _blue,
        green: _green,
    } = layout(
        "controller-restart",
        "  - backendRefs: [{name: blue, port: 80}]\n",
    );
    let xds_port = free_port();
    let mut controller = Standalone::start(&config, &work, xds_port, &["--no-envoy"]);

    let bootstrap = std::process::Command::new(infergate_binary())
        .args([
            "bootstrap",
            "--node",
            "default/gw",
            "--xds-address",
            &format!("127.0.0.1:{xds_port}"),
        ])
        .output()
        .expect("bootstrap");
    let bootstrap_path = work.join("own-envoy.yaml");
    std::fs::write(&bootstrap_path, bootstrap.stdout).unwrap();
    let mut envoy = std::process::Command::new(envoy_binary())
        .arg("-c")
        .arg(&bootstrap_path)
        .args(["--disable-hot-restart", "--log-level", "error"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("Envoy starts");
    let ok = |who: &str| get(listener, "/", &[]).is_some_and(|r| r.0 == 200 && r.1 == who);
    assert!(
        wait_until(Duration::from_secs(30), || ok("blue")),
        "log:\n{}",
        controller.log_text()
    );

    controller.stop();
    for _ in 0..50 {
        assert!(
            ok("blue"),
            "traffic must keep flowing while the controller is down"
        );
    }
    write(
        &config,
        "routes.yaml",
        &route("  - backendRefs: [{name: green, port: 80}]\n"),
    );
    let restarted = Standalone::start(&config, &work, xds_port, &["--no-envoy"]);
    let switched = wait_until(Duration::from_secs(30), || ok("green"));
    let _ = envoy.kill();
    let _ = envoy.wait();
    assert!(
        switched,
        "Envoy did not pick up the restarted controller's configuration; log:\n{}",
        restarted.log_text()
    );
}

#[test]
fn translate_prints_envoy_resources_and_statuses_without_running_anything() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/standalone");
    let out = std::process::Command::new(infergate_e2e::infergate_binary())
        .args(["translate", "-o", "json", "-f"])
        .arg(&examples)
        .output()
        .expect("infergate translate runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let gateway = &value["gateways"][0];
    assert_eq!(gateway["node"], "default/quickstart");
    // Envoy's own JSON: typed, camelCase, nested Anys expanded.
    let listener = &gateway["listeners"][0];
    assert_eq!(
        listener["@type"],
        "type.googleapis.com/envoy.config.listener.v3.Listener"
    );
    assert_eq!(listener["address"]["socketAddress"]["portValue"], 8080);
    assert_eq!(listener["address"]["socketAddress"]["address"], "127.0.0.1");
    let hcm = &listener["filterChains"][0]["filters"][0]["typedConfig"];
    assert_eq!(
        hcm["@type"],
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    );
    let clusters: Vec<&str> = gateway["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(clusters.iter().any(|c| c.contains("blue")), "{clusters:?}");
    assert!(clusters.iter().any(|c| c.contains("green")), "{clusters:?}");
    assert!(
        !gateway["routes"][0]["virtualHosts"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let route = &value["statuses"]["http_routes"][0];
    assert_eq!(
        route["route"]["name"], "quickstart",
        "statuses are printed too: {}",
        value["statuses"]
    );
    assert_eq!(route["parents"][0]["conditions"][0]["status"], "True");
    // --ir prints the component's own output instead.
    let ir = std::process::Command::new(infergate_e2e::infergate_binary())
        .args(["translate", "--ir", "-o", "json", "-f"])
        .arg(&examples)
        .output()
        .unwrap();
    let ir: serde_json::Value = serde_json::from_slice(&ir.stdout).expect("JSON");
    assert!(ir["gateways"][0]["listeners"].is_array() && ir["gateways"][0].get("node").is_none());
}

/// Routes of another team on the same listener, each with a value that Envoy
/// refuses (and would refuse the listener's whole route configuration for)
/// and that the CRDs' schemas refuse too: the API server would not take them.
const REFUSED_BY_THE_SCHEMA: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: pseudo-header}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /pseudo}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: ':path', value: /x}]}
    backendRefs: [{name: green, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: upper-case}
spec:
  parentRefs: [{name: gw}]
  hostnames: [Example.com, example.com]
  rules:
  - backendRefs: [{name: green, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: query-in-prefix}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /a?b}}]
    backendRefs: [{name: green, port: 80}]
";

#[test]
fn values_the_crds_refuse_are_refused_as_the_api_server_would_and_nothing_served_changes() {
    let s = start("schema-refused", PATH_AND_HEADER, &[]);
    assert_eq!(served_by(&s, "/other", &[]), "blue");
    write(
        &s.infergate.config,
        "other-team.yaml",
        REFUSED_BY_THE_SCHEMA,
    );
    let fields = [
        "(HTTPRoute default/pseudo-header): spec.rules[0].filters[0].requestHeaderModifier.set[0].name: Invalid value: \":path\": should match",
        "(HTTPRoute default/upper-case): spec.hostnames[0]: Invalid value: \"Example.com\": should match",
        "(HTTPRoute default/query-in-prefix): spec.rules[0].matches[0].path: Invalid value: \"object\": must only contain valid characters",
    ];
    assert!(
        wait_until(Duration::from_secs(10), || {
            let log = s.infergate.log_text();
            fields.iter().all(|f| log.contains(f))
        }),
        "each refused value is named with its object and field; log:\n{}",
        s.infergate.log_text()
    );
    assert_eq!(served_by(&s, "/other", &[]), "blue", "what is served stays");
    assert_eq!(
        served_by(&s, "/pseudo", &[]),
        "blue",
        "nothing of the file is applied"
    );
    // Fixed, the file is taken.
    write(
        &s.infergate.config,
        "other-team.yaml",
        &REFUSED_BY_THE_SCHEMA
            .replace("':path'", "x-path")
            .replace("Example.com, ", "")
            .replace("/a?b", "/a-b"),
    );
    assert!(
        wait_until(Duration::from_secs(10), || served_by(&s, "/pseudo", &[])
            == "green"),
        "the fixed file is applied; log:\n{}",
        s.infergate.log_text()
    );
}

/// A route whose regular expression Envoy refuses (no schema checks it),
/// beside a valid rule.
const REFUSED_BY_ENVOY: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: regex}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: RegularExpression, value: /(abc}}]
    backendRefs: [{name: blue, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /fine}}]
    backendRefs: [{name: green, port: 80}]
";

#[test]
fn a_route_envoy_would_refuse_is_refused_in_its_status_and_never_freezes_the_listener() {
    let status = TempDir::new("refused-status");
    let status_file = status.0.join("status.yaml");
    let s = start(
        "refused",
        PATH_AND_HEADER,
        &["--status-file", status_file.to_str().unwrap()],
    );
    assert_eq!(served_by(&s, "/other", &[]), "blue");
    write(&s.infergate.config, "other-team.yaml", REFUSED_BY_ENVOY);
    let reported = wait_until(Duration::from_secs(10), || {
        !route_conditions(&status_file, "regex").is_empty()
    });
    assert!(reported, "no status; log:\n{}", s.infergate.log_text());
    // The bad value is named in its route's status (the translation's
    // checks; golden case refused-values has the others the schemas refuse
    // too, for clusters whose CRDs are older).
    let partly = route_conditions(&status_file, "regex");
    assert!(
        partly.iter().any(|c| c[0] == "PartiallyInvalid"
            && c[1] == "True"
            && c[3].contains("matches[0].path.value")
            && c[3].contains("left out")),
        "regex: {partly:?}"
    );

    // The valid rule of the partly invalid route is served, and the other
    // team's route keeps following its edits.
    assert!(
        wait_until(Duration::from_secs(10), || get(s.listener, "/fine", &[])
            .is_some_and(|r| r.0 == 200 && r.1 == "green")),
        "the valid rule of a partly invalid route is not served; log:\n{}",
        s.infergate.log_text()
    );
    write(
        &s.infergate.config,
        "routes.yaml",
        &route("  - backendRefs: [{name: green, port: 80}]\n"),
    );
    assert!(
        wait_until(Duration::from_secs(10), || served_by(&s, "/other", &[])
            == "green"),
        "an edit of a good route was not applied; log:\n{}",
        s.infergate.log_text()
    );
    assert!(
        !s.infergate.log_text().contains("NACK"),
        "Envoy refused a configuration:\n{}",
        s.infergate.log_text()
    );
}

/// Another team's routes, added in one change: two with regular expressions
/// that infergate's own Envoys take (RE2 programs up to 4096) but an Envoy
/// with the stock RE2 limit of 100 refuses, and one that any Envoy takes.
const TOO_BIG_FOR_A_STOCK_ENVOY: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: big}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: RegularExpression, value: '/big/x{150}'}}]
    backendRefs: [{name: green, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: small}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /small}}]
    backendRefs: [{name: green, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bigger}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: RegularExpression, value: '/bigger/[a-z]{200}'}}]
    backendRefs: [{name: green, port: 80}]
";

#[test]
fn what_envoy_refuses_anyway_is_held_back_with_envoys_message_and_every_other_change_applies() {
    let Layout {
        dir,
        config,
        work,
        listener,
        blue: _blue,
        green: _green,
    } = layout(
        "envoy-refuses",
        "  - matches: [{path: {type: PathPrefix, value: /blue}}]\n    backendRefs: [{name: blue, port: 80}]\n",
    );
    let status_file = dir.0.join("status.yaml");
    let xds_port = free_port();
    let controller = Standalone::start(
        &config,
        &work,
        xds_port,
        &["--no-envoy", "--status-file", status_file.to_str().unwrap()],
    );
    // The operator's own Envoy, with Envoy's default RE2 program-size limit.
    let bootstrap = std::process::Command::new(infergate_binary())
        .args(["bootstrap", "--node", "default/gw", "--xds-address"])
        .arg(format!("127.0.0.1:{xds_port}"))
        .output()
        .expect("bootstrap");
    let ours = String::from_utf8(bootstrap.stdout).unwrap();
    let stock = ours.replace(
        "re2.max_program_size.error_level: 4096",
        "re2.max_program_size.error_level: 100",
    );
    assert_ne!(ours, stock, "the bootstrap sets the RE2 limit:\n{ours}");
    let bootstrap_path = work.join("stock-envoy.yaml");
    std::fs::write(&bootstrap_path, stock).unwrap();
    let mut envoy = Process::start(
        &envoy_binary(),
        &[
            "-c".into(),
            bootstrap_path.display().to_string(),
            "--disable-hot-restart".into(),
            "--log-level".into(),
            "error".into(),
        ],
        work.join("envoy.log"),
    );
    let served_by = |path: &str| get(listener, path, &[]).map(|r| (r.0, r.1));
    let serves = |path: &str, who: &str| {
        wait_until(Duration::from_secs(20), || {
            served_by(path) == Some((200, who.to_string()))
        })
    };
    assert!(serves("/blue", "blue"), "log:\n{}", controller.log_text());

    write(&config, "team-b.yaml", TOO_BIG_FOR_A_STOCK_ENVOY);
    let refused = |route: &str| {
        route_conditions(&status_file, route)
            .into_iter()
            .find(|c| c[0] == "Accepted" && c[1] == "False")
    };
    assert!(
        wait_until(Duration::from_secs(20), || refused("big").is_some()
            && refused("bigger").is_some()),
        "both refused routes are found; log:\n{}",
        controller.log_text()
    );
    for route in ["big", "bigger"] {
        let [_, _, reason, message] = refused(route).unwrap();
        assert_eq!(reason, "UnsupportedValue");
        assert!(
            message.starts_with("Envoy refused the routes made from this HTTPRoute: ")
                && message.contains("program size")
                && message.ends_with("it is not served"),
            "{route}: {message}"
        );
    }
    assert!(
        serves("/small", "green"),
        "the route Envoy takes, added with them, is served; log:\n{}",
        controller.log_text()
    );
    assert_eq!(refused("small"), None);

    // The listener is not frozen: the first team's edit is applied.
    write(
        &config,
        "routes.yaml",
        &route(
            "  - matches: [{path: {type: PathPrefix, value: /blue}}]\n    backendRefs: [{name: green, port: 80}]\n",
        ),
    );
    assert!(
        serves("/blue", "green"),
        "an edit of another route was not applied; log:\n{}",
        controller.log_text()
    );
    // Fixed, the route is tried again and served.
    write(
        &config,
        "team-b.yaml",
        &TOO_BIG_FOR_A_STOCK_ENVOY.replace("/big/x{150}", "/big/x+"),
    );
    assert!(
        serves("/big/xxx", "green"),
        "the fixed route is served; log:\n{}",
        controller.log_text()
    );
    assert!(
        wait_until(Duration::from_secs(10), || refused("big").is_none()),
        "{:?}",
        route_conditions(&status_file, "big")
    );
    assert!(
        refused("bigger").is_some(),
        "bigger did not change: still held"
    );
    envoy.kill();
}
