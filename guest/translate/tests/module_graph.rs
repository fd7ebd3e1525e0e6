//! The translation's modules depend on each other in one direction only:
//! the stages read from the top down (index, gateways, routes with the
//! backend kinds, assembly), and a backend kind can be taken out without
//! touching the core. A `use crate::...` (or a `crate::...` path in code)
//! that closes a cycle fails here, naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module -> the modules its code (not its comments) refers to. None
/// where the sources cannot be read (these tests compiled to WebAssembly run
/// under wasmtime without access to the file system).
fn module_graph() -> Option<BTreeMap<String, BTreeSet<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(&src) else {
        println!(
            "skipped: the sources in {} cannot be read here",
            src.display()
        );
        return None;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let module = path.file_stem().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut uses = BTreeSet::new();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or_default();
            let mut rest = code;
            while let Some(at) = rest.find("crate::") {
                rest = &rest[at + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    uses.insert(name);
                }
            }
            // `use crate::{a, b::C}` names several modules at once.
            if let Some(group) = code.trim_start().strip_prefix("use crate::{") {
                for part in group.split([',', '}']) {
                    let name = part.trim().split("::").next().unwrap_or_default();
                    if !name.is_empty() && name != "self" && name != module {
                        uses.insert(name.to_string());
                    }
                }
            }
        }
        graph.insert(module, uses);
    }
    Some(graph)
}

/// A cycle through `node`, if any (depth-first search).
fn cycle(
    graph: &BTreeMap<String, BTreeSet<String>>,
    node: &str,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(at) = path.iter().position(|n| n == node) {
        let mut found = path[at..].to_vec();
        found.push(node.to_string());
        return Some(found);
    }
    if done.contains(node) {
        return None;
    }
    path.push(node.to_string());
    for next in graph.get(node).into_iter().flatten() {
        if let Some(found) = cycle(graph, next, path, done) {
            return Some(found);
        }
    }
    path.pop();
    done.insert(node.to_string());
    None
}

#[test]
fn the_translation_modules_have_no_cycle() {
    let Some(graph) = module_graph() else { return };
    assert!(graph.len() >= 10, "the modules were found: {graph:?}");
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        if let Some(found) = cycle(&graph, module, &mut Vec::new(), &mut done) {
            panic!(
                "modules import each other in a circle: {}",
                found.join(" -> ")
            );
        }
    }
}

#[test]
fn the_core_does_not_know_the_inference_plugin() {
    let Some(graph) = module_graph() else { return };
    for core in [
        "index", "gateways", "routes", "backends", "services", "refs", "assemble",
    ] {
        assert!(
            !graph[core].contains("inference"),
            "{core} uses the inference plugin: {:?}",
            graph[core]
        );
    }
}
