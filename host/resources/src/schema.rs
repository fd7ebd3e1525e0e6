//! Objects of the CRD kinds checked as the API server checks them: against
//! the OpenAPI v3 schema and the CEL rules (`x-kubernetes-validations`) of the
//! CRDs this project ships (`crds/`), after the schema's defaults are applied.
//! So a file in standalone mode gets the answer `kubectl apply` would get
//! from a cluster with those CRDs, instead of being translated.
//!
//! What is not checked: `metadata` beyond what [`crate::names`] checks, the
//! core kinds (Service, EndpointSlice, Pod, Namespace; their few fields that
//! matter are checked where they are read), transition rules (`oldSelf`:
//! files have no previous version the API server would know), and CEL cost
//! limits. A CEL rule that our interpreter cannot evaluate is skipped (and
//! logged by the caller at debug level), never reported against the object:
//! an interpreter gap must not block a configuration the API server takes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, LazyLock};

use cel::common::types::{CelBool, CelString};
use serde_json::Value;

/// The CRDs whose kinds infergate reads, as shipped in `crds/`.
const CRDS: &[(&str, &str)] = &[
    (
        "gateway-api-v1.6.1/gateway.networking.k8s.io_gatewayclasses.yaml",
        include_str!(
            "../../../crds/gateway-api-v1.6.1/gateway.networking.k8s.io_gatewayclasses.yaml"
        ),
    ),
    (
        "gateway-api-v1.6.1/gateway.networking.k8s.io_gateways.yaml",
        include_str!("../../../crds/gateway-api-v1.6.1/gateway.networking.k8s.io_gateways.yaml"),
    ),
    (
        "gateway-api-v1.6.1/gateway.networking.k8s.io_httproutes.yaml",
        include_str!("../../../crds/gateway-api-v1.6.1/gateway.networking.k8s.io_httproutes.yaml"),
    ),
    (
        "gateway-api-v1.6.1/gateway.networking.k8s.io_referencegrants.yaml",
        include_str!(
            "../../../crds/gateway-api-v1.6.1/gateway.networking.k8s.io_referencegrants.yaml"
        ),
    ),
    (
        "inference-v1.6.0/inference.networking.k8s.io_inferencepools.yaml",
        include_str!(
            "../../../crds/inference-v1.6.0/inference.networking.k8s.io_inferencepools.yaml"
        ),
    ),
    (
        "inference-x-v1.5.0/inference.networking.x-k8s.io_inferencemodelrewrites.yaml",
        include_str!(
            "../../../crds/inference-x-v1.5.0/inference.networking.x-k8s.io_inferencemodelrewrites.yaml"
        ),
    ),
];

/// One problem: the field path (`spec.rules[0].matches[0].path`) and what
/// is wrong, worded as the API server words it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub message: String,
}

/// The outcome of checking one object.
#[derive(Debug, Default)]
pub struct Checked {
    pub violations: Vec<Violation>,
    /// CEL rules that could not be evaluated here (rule, error).
    pub skipped_rules: Vec<(String, String)>,
}

/// Check `object` (an apiVersion/kind of a shipped CRD; other kinds pass)
/// as the API server would.
pub fn check(api_version: &str, kind: &str, object: &serde_yaml_ng::Value) -> Checked {
    let mut checked = Checked::default();
    let Some(schema) = SCHEMAS.get(&(api_version.to_string(), kind.to_string())) else {
        return checked;
    };
    let mut value = match serde_json::to_value(object) {
        Ok(value) => value,
        Err(e) => {
            checked.violations.push(Violation {
                field: String::new(),
                message: format!("not representable as JSON: {e}"),
            });
            return checked;
        }
    };
    let mut walk = Walk {
        checked: &mut checked,
    };
    walk.node(schema, &mut value, &mut String::new(), true);
    checked
}

/// The kinds with a schema, as (apiVersion, kind).
pub fn kinds() -> Vec<(String, String)> {
    let mut kinds: Vec<_> = SCHEMAS.keys().cloned().collect();
    kinds.sort();
    kinds
}

static SCHEMAS: LazyLock<HashMap<(String, String), Node>> = LazyLock::new(|| {
    let mut env = cel::Env::stdlib();
    // Kubernetes offers the strings extension (split, lowerAscii...).
    env.add_extension(cel::extensions::strings)
        .expect("the strings extension");
    cel::add_overload!(env, fn matches: (CelString, CelString) -> Result<CelBool>, id = "matches")
        .expect("matches, as a function");
    cel::add_member_overload!(env, fn matches: (CelString, CelString) -> Result<CelBool>)
        .expect("matches, as a method");
    let env = Arc::new(env);
    let mut schemas = HashMap::new();
    for (file, text) in CRDS {
        let crd: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("crds/{file}: {e}"));
        let crd: Value = serde_json::to_value(crd).expect("a CRD is JSON");
        let group = crd["spec"]["group"].as_str().expect("spec.group");
        let kind = crd["spec"]["names"]["kind"]
            .as_str()
            .expect("spec.names.kind");
        for version in crd["spec"]["versions"].as_array().expect("spec.versions") {
            if version["served"] != Value::Bool(true) {
                continue;
            }
            let name = version["name"].as_str().expect("version name");
            let node = Node::parse(&version["schema"]["openAPIV3Schema"], &env)
                .unwrap_or_else(|e| panic!("crds/{file} {name}: {e}"));
            schemas.insert((format!("{group}/{name}"), kind.to_string()), node);
        }
    }
    schemas
});

/// CEL's `matches`, with each pattern compiled once per thread (cel's own
/// compiles it at every call: most of the checks' time on a route).
fn matches(text: &CelString<'_>, pattern: &CelString<'_>) -> Result<CelBool, cel::ExecutionError> {
    thread_local! {
        static COMPILED: std::cell::RefCell<HashMap<String, Result<regex::Regex, String>>> =
            std::cell::RefCell::new(HashMap::new());
    }
    COMPILED.with(|compiled| {
        let mut compiled = compiled.borrow_mut();
        let regex = compiled
            .entry(pattern.inner().to_string())
            .or_insert_with(|| regex::Regex::new(pattern.inner()).map_err(|e| e.to_string()));
        match regex {
            Ok(regex) => Ok(CelBool::from(regex.is_match(text.inner()))),
            Err(e) => Err(cel::ExecutionError::FunctionError {
                function: "matches".into(),
                message: format!("'{}' is not a valid regex: {e}", pattern.inner()),
            }),
        }
    })
}

/// A CEL rule of a schema node.
struct Rule {
    source: String,
    program: cel::Program,
    message: Option<String>,
    field_path: Option<String>,
    env: Arc<cel::Env>,
}

/// A schema node, as much of OpenAPI v3 as the CRDs use.
#[derive(Default)]
struct Node {
    types: Option<String>,
    properties: BTreeMap<String, Node>,
    additional: Option<Box<Node>>,
    /// x-kubernetes-preserve-unknown-fields, or an object without
    /// properties (`metadata`): its fields are not checked.
    open: bool,
    required: Vec<String>,
    items: Option<Box<Node>>,
    enumeration: Vec<Value>,
    pattern: Option<(String, regex::Regex)>,
    min_length: Option<u64>,
    max_length: Option<u64>,
    min_items: Option<u64>,
    max_items: Option<u64>,
    max_properties: Option<u64>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    list_type: Option<String>,
    list_map_keys: Vec<String>,
    nullable: bool,
    int_or_string: bool,
    default: Option<Value>,
    rules: Vec<Rule>,
}

impl Node {
    fn parse(schema: &Value, env: &Arc<cel::Env>) -> Result<Node, String> {
        let u = |key: &str| schema.get(key).and_then(Value::as_u64);
        let f = |key: &str| schema.get(key).and_then(Value::as_f64);
        let s = |key: &str| schema.get(key).and_then(Value::as_str).map(str::to_string);
        let mut node = Node {
            types: s("type"),
            min_length: u("minLength"),
            max_length: u("maxLength"),
            min_items: u("minItems"),
            max_items: u("maxItems"),
            max_properties: u("maxProperties"),
            minimum: f("minimum"),
            maximum: f("maximum"),
            list_type: s("x-kubernetes-list-type"),
            nullable: schema.get("nullable") == Some(&Value::Bool(true)),
            int_or_string: schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)),
            default: schema.get("default").cloned(),
            ..Node::default()
        };
        if let Some(pattern) = s("pattern") {
            let regex =
                regex::Regex::new(&pattern).map_err(|e| format!("pattern {pattern}: {e}"))?;
            node.pattern = Some((pattern, regex));
        }
        if let Some(Value::Object(properties)) = schema.get("properties") {
            for (name, property) in properties {
                node.properties
                    .insert(name.clone(), Node::parse(property, env)?);
            }
        }
        match schema.get("additionalProperties") {
            Some(additional @ Value::Object(_)) => {
                node.additional = Some(Box::new(Node::parse(additional, env)?));
            }
            Some(Value::Bool(true)) => node.open = true,
            _ => {}
        }
        node.open |= schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
            || (node.types.as_deref() == Some("object")
                && node.properties.is_empty()
                && node.additional.is_none());
        if let Some(items) = schema.get("items") {
            node.items = Some(Box::new(Node::parse(items, env)?));
        }
        if let Some(Value::Array(values)) = schema.get("enum") {
            node.enumeration = values.clone();
        }
        if let Some(Value::Array(required)) = schema.get("required") {
            node.required = required
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect();
        }
        if let Some(Value::Array(keys)) = schema.get("x-kubernetes-list-map-keys") {
            node.list_map_keys = keys
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect();
        }
        if let Some(Value::Array(rules)) = schema.get("x-kubernetes-validations") {
            for rule in rules {
                let source = rule["rule"].as_str().ok_or("a rule without `rule`")?;
                if source.contains("oldSelf") {
                    continue; // transition rules: no previous version here
                }
                let program = env
                    .compile(source)
                    .map_err(|e| format!("rule {source}: {e}"))?;
                node.rules.push(Rule {
                    source: source.to_string(),
                    program,
                    message: rule["message"].as_str().map(str::to_string),
                    field_path: rule["fieldPath"].as_str().map(str::to_string),
                    env: env.clone(),
                });
            }
        }
        Ok(node)
    }
}

struct Walk<'a> {
    checked: &'a mut Checked,
}

/// How the API server shows a value in a message.
fn shown(value: &Value) -> String {
    match value {
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => {
            let text = other.to_string();
            if text.len() > 100 {
                let mut end = 100;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                format!("{}...", &text[..end])
            } else {
                text
            }
        }
    }
}

fn type_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl Walk<'_> {
    fn violation(&mut self, path: &str, message: String) {
        self.checked.violations.push(Violation {
            field: path.to_string(),
            message,
        });
    }

    /// Check `value` at `path` against `node`, applying defaults to absent
    /// properties first. CEL rules run only where the schema itself holds
    /// (so they see the types they were written for).
    fn node(&mut self, node: &Node, value: &mut Value, path: &mut String, root: bool) {
        let before = self.checked.violations.len();
        if value.is_null() {
            if !node.nullable {
                self.violation(path, "Invalid value: \"null\": must not be null".into());
            }
            return;
        }
        if let Some(expected) = &node.types {
            let actual = type_of(value);
            let fits = actual == expected
                || (expected == "number" && actual == "integer")
                || (node.int_or_string && matches!(actual, "integer" | "string"));
            if !fits {
                self.violation(
                    path,
                    format!(
                        "Invalid value: {}: must be of type {expected}, not {actual}",
                        shown(value)
                    ),
                );
                return;
            }
        } else if node.int_or_string && !matches!(type_of(value), "integer" | "string") {
            self.violation(
                path,
                format!(
                    "Invalid value: {}: must be an integer or a string",
                    shown(value)
                ),
            );
            return;
        }
        if !node.enumeration.is_empty() && !node.enumeration.contains(value) {
            let supported: Vec<String> = node.enumeration.iter().map(Value::to_string).collect();
            self.violation(
                path,
                format!(
                    "Unsupported value: {}: supported values: {}",
                    shown(value),
                    supported.join(", ")
                ),
            );
        }
        match value {
            Value::String(text) => self.string(node, text, path),
            Value::Number(number) => {
                let n = number.as_f64().unwrap_or_default();
                if let Some(min) = node.minimum
                    && n < min
                {
                    self.violation(
                        path,
                        format!(
                            "Invalid value: {number}: should be greater than or equal to {min}"
                        ),
                    );
                }
                if let Some(max) = node.maximum
                    && n > max
                {
                    self.violation(
                        path,
                        format!("Invalid value: {number}: should be less than or equal to {max}"),
                    );
                }
            }
            Value::Array(items) => self.array(node, items, path),
            Value::Object(fields) => self.object(node, fields, path, root),
            _ => {}
        }
        if self.checked.violations.len() == before {
            self.rules(node, value, path);
        }
    }

    fn string(&mut self, node: &Node, text: &str, path: &str) {
        let length = text.chars().count() as u64;
        if let Some(max) = node.max_length
            && length > max
        {
            self.violation(path, format!("Too long: may not be more than {max} bytes"));
        }
        if let Some(min) = node.min_length
            && length < min
        {
            self.violation(
                path,
                format!(
                    "Invalid value: {}: should be at least {min} chars long",
                    shown(&Value::String(text.to_string()))
                ),
            );
        }
        if let Some((pattern, regex)) = &node.pattern
            && !regex.is_match(text)
        {
            self.violation(
                path,
                format!(
                    "Invalid value: {}: should match '{pattern}'",
                    shown(&Value::String(text.to_string()))
                ),
            );
        }
    }

    fn array(&mut self, node: &Node, items: &mut [Value], path: &mut String) {
        let count = items.len() as u64;
        if let Some(max) = node.max_items
            && count > max
        {
            self.violation(
                path,
                format!("Too many: {count}: must have at most {max} items"),
            );
        }
        if let Some(min) = node.min_items
            && count < min
        {
            self.violation(
                path,
                format!("Invalid value: {count}: should have at least {min} items"),
            );
        }
        if let Some(item_node) = &node.items {
            let length = path.len();
            for (i, item) in items.iter_mut().enumerate() {
                path.push_str(&format!("[{i}]"));
                self.node(item_node, item, path, false);
                path.truncate(length);
            }
        }
        match node.list_type.as_deref() {
            Some("set") => {
                let mut seen = HashSet::new();
                for (i, item) in items.iter().enumerate() {
                    if !seen.insert(item.to_string()) {
                        self.violation(
                            &format!("{path}[{i}]"),
                            format!("Duplicate value: {}", shown(item)),
                        );
                    }
                }
            }
            Some("map") if !node.list_map_keys.is_empty() => {
                let mut seen = HashSet::new();
                for (i, item) in items.iter().enumerate() {
                    let key: Vec<String> = node
                        .list_map_keys
                        .iter()
                        .map(|k| item.get(k).map(Value::to_string).unwrap_or_default())
                        .collect();
                    if !seen.insert(key.clone()) {
                        let shown_key: Vec<String> = node
                            .list_map_keys
                            .iter()
                            .zip(&key)
                            .map(|(k, v)| format!("\"{k}\":{v}"))
                            .collect();
                        self.violation(
                            &format!("{path}[{i}]"),
                            format!("Duplicate value: map[{}]", shown_key.join(",")),
                        );
                    }
                }
            }
            _ => {}
        }
    }

    fn object(
        &mut self,
        node: &Node,
        fields: &mut serde_json::Map<String, Value>,
        path: &mut String,
        root: bool,
    ) {
        // Defaults first, as the API server applies them before validating.
        for (name, property) in &node.properties {
            if !fields.contains_key(name)
                && let Some(default) = &property.default
            {
                fields.insert(name.clone(), default.clone());
            }
        }
        for name in &node.required {
            if !fields.contains_key(name) {
                self.violation(&join(path, name), "Required value".into());
            }
        }
        if let Some(max) = node.max_properties
            && fields.len() as u64 > max
        {
            self.violation(
                path,
                format!("Too many: {}: must have at most {max} items", fields.len()),
            );
        }
        let length = path.len();
        for (name, field) in fields.iter_mut() {
            let child = node.properties.get(name).or(node.additional.as_deref());
            match child {
                Some(child) => {
                    path.push_str(&join_suffix(length == 0, name));
                    self.node(child, field, path, false);
                    path.truncate(length);
                }
                None if node.open => {}
                // apiVersion/kind/metadata are checked elsewhere; status is
                // not the user's to write.
                None if root && name == "status" => {}
                None => self.violation(&join(path, name), format!("unknown field \"{name}\"")),
            }
        }
    }

    fn rules(&mut self, node: &Node, value: &Value, path: &str) {
        let Some(first) = node.rules.first() else {
            return;
        };
        // One context per node: `self` is converted once for all its rules.
        let mut context = cel::Context::with_env(first.env.clone());
        if let Err(e) = context.add_variable("self", value.clone()) {
            for rule in &node.rules {
                self.checked
                    .skipped_rules
                    .push((rule.source.clone(), e.to_string()));
            }
            return;
        }
        for rule in &node.rules {
            match rule.program.execute(&context) {
                Ok(cel::Value::Bool(true)) => {}
                Ok(cel::Value::Bool(false)) => {
                    let field = match &rule.field_path {
                        Some(sub) => format!("{path}{sub}"),
                        None => path.to_string(),
                    };
                    let message = match &rule.message {
                        Some(message) => message.clone(),
                        None => format!("failed rule: {}", rule.source),
                    };
                    self.violation(
                        &field,
                        format!("Invalid value: {}: {message}", shown(value)),
                    );
                }
                Ok(other) => self
                    .checked
                    .skipped_rules
                    .push((rule.source.clone(), format!("evaluated to {other:?}"))),
                Err(e) => self
                    .checked
                    .skipped_rules
                    .push((rule.source.clone(), e.to_string())),
            }
        }
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn join_suffix(at_root: bool, name: &str) -> String {
    if at_root {
        name.to_string()
    } else {
        format!(".{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(yaml: &str) -> Vec<String> {
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(yaml).unwrap();
        let checked = check(
            value["apiVersion"].as_str().unwrap(),
            value["kind"].as_str().unwrap(),
            &value,
        );
        assert!(
            checked.skipped_rules.is_empty(),
            "every rule is evaluated: {:?}",
            checked.skipped_rules
        );
        checked
            .violations
            .into_iter()
            .map(|v| format!("{}: {}", v.field, v.message))
            .collect()
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

    #[test]
    fn every_shipped_crd_kind_has_a_schema_and_every_rule_compiles() {
        assert_eq!(
            kinds(),
            [
                ("gateway.networking.k8s.io/v1", "Gateway"),
                ("gateway.networking.k8s.io/v1", "GatewayClass"),
                ("gateway.networking.k8s.io/v1", "HTTPRoute"),
                ("gateway.networking.k8s.io/v1", "ReferenceGrant"),
                ("gateway.networking.k8s.io/v1beta1", "Gateway"),
                ("gateway.networking.k8s.io/v1beta1", "GatewayClass"),
                ("gateway.networking.k8s.io/v1beta1", "HTTPRoute"),
                ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant"),
                ("inference.networking.k8s.io/v1", "InferencePool"),
                (
                    "inference.networking.x-k8s.io/v1alpha2",
                    "InferenceModelRewrite"
                ),
            ]
            .map(|(v, k)| (v.to_string(), k.to_string()))
        );
    }

    #[test]
    fn a_valid_route_passes_with_its_defaults_applied_and_every_rule_evaluated() {
        let valid = route(
            "  - matches: [{headers: [{name: x-a, value: b}]}, {path: {value: /x}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-b, value: c}]}
    backendRefs: [{name: svc, port: 80, weight: 3}]
",
        );
        assert_eq!(problems(&valid), Vec::<String>::new());
    }

    #[test]
    fn the_api_servers_answers_for_values_its_schema_refuses() {
        // A CEL rule of the CRD, with its message and the field it names.
        let query = route(
            "  - matches: [{path: {type: PathPrefix, value: /a?b}}]
    backendRefs: [{name: svc, port: 80}]
",
        );
        let found = problems(&query);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("spec.rules[0].matches[0].path: Invalid value: \"object\": ")
                && found[0].contains("must only contain valid characters"),
            "{found:?}"
        );
        // A rule across fields.
        let redirect_and_backend = route(
            "  - filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301}}]
    backendRefs: [{name: svc, port: 80}]
",
        );
        let found = problems(&redirect_and_backend);
        assert!(
            found.iter().any(|p| p.starts_with("spec.rules[0]: ")
                && p.contains("RequestRedirect filter must not be used together with backendRefs")),
            "{found:?}"
        );
        // OpenAPI: enum, bounds, required, unknown fields, list keys.
        let gateway = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw}
spec:
  gatewayClassName: infergate
  listeners:
  - {name: http, port: 0, protocol: HTTP}
  - {name: http, port: 80, protocol: HTTP, hostnme: a.example}
  - {port: 81, protocol: HTTP}
";
        let found = problems(gateway);
        for expected in [
            "spec.listeners[0].port: Invalid value: 0: should be greater than or equal to 1",
            "spec.listeners[1].hostnme: unknown field \"hostnme\"",
            "spec.listeners[2].name: Required value",
        ] {
            assert!(found.iter().any(|p| p == expected), "{expected}: {found:?}");
        }
        let enum_value = route(
            "  - matches: [{method: FETCH}]
    backendRefs: [{name: svc, port: 80}]
",
        );
        let found = problems(&enum_value);
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("spec.rules[0].matches[0].method: Unsupported value: \"FETCH\": supported values: \"GET\"")),
            "{found:?}"
        );
        let pool = "apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {name: p}
spec:
  selector: {matchLabels: {app: m}}
  targetPorts: [{number: 8000}, {number: 8000}]
  endpointPickerRef: {name: epp, port: {number: 9002}}
";
        let found = problems(pool);
        assert!(!found.is_empty(), "duplicate target ports are refused");
    }

    #[test]
    fn kinds_without_a_shipped_crd_pass_unchecked() {
        let service: serde_yaml_ng::Value = serde_yaml_ng::from_str(
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {bogus: 1}\n",
        )
        .unwrap();
        let checked = check("v1", "Service", &service);
        assert!(checked.violations.is_empty() && checked.skipped_rules.is_empty());
    }
}
