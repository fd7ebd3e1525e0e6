//! The host's second look at any component's output
//! (`validate::output`): what Envoy would refuse is removed and described,
//! and the rest is left as it was.

use infergate_model::{PathMatch, Settings};
use infergate_resources::Resources;

fn translated(yaml: &str) -> infergate_model::Output {
    let mut resources = Resources::default();
    resources.add_yaml("case.yaml", yaml).expect("valid YAML");
    let snapshot = resources
        .to_snapshot(Settings {
            inference_extension: true,
            ..Settings::new("infergate.dev/gateway-controller")
        })
        .expect("a snapshot");
    infergate_translate::translate(&snapshot).expect("translated")
}

#[test]
fn the_translations_own_output_passes_unchanged() {
    for yaml in [
        include_str!("../testdata/match-precedence.in.yaml"),
        include_str!("../testdata/filters.in.yaml"),
        include_str!("../testdata/refused-values.in.yaml"),
        include_str!("../testdata/weighted-backends.in.yaml"),
    ] {
        let mut output = translated(yaml);
        let before = output.clone();
        assert_eq!(
            infergate_translate::validate::output(&mut output),
            Vec::<String>::new()
        );
        assert!(output == before);
    }
}

#[test]
fn a_value_envoy_would_refuse_removes_that_route_only() {
    let mut output = translated(include_str!("../testdata/match-precedence.in.yaml"));
    let host = &mut output.gateways[0].listeners[0].filter_chains[0].virtual_hosts[0];
    let routes = host.routes.len();
    assert!(routes > 2, "the case has several routes");
    host.routes[1].matches.path = Some(PathMatch::RegularExpression("/(abc".into()));
    let problems = infergate_translate::validate::output(&mut output);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("path.value") && problems[0].contains("removed"),
        "{problems:?}"
    );
    assert_eq!(
        output.gateways[0].listeners[0].filter_chains[0].virtual_hosts[0]
            .routes
            .len(),
        routes - 1
    );

    let mut output = translated(include_str!("../testdata/match-precedence.in.yaml"));
    let chain = &mut output.gateways[0].listeners[0].filter_chains[0];
    let mut twin = chain.virtual_hosts[0].clone();
    twin.domains = vec![chain.virtual_hosts[0].domains[0].to_uppercase()];
    chain.virtual_hosts.push(twin);
    let problems = infergate_translate::validate::output(&mut output);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(
        output.gateways[0].listeners[0].filter_chains[0]
            .virtual_hosts
            .len(),
        1
    );
}
