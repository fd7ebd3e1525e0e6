//! Values that Envoy would refuse, refused here first.
//!
//! Envoy refuses a whole xDS resource for one bad value: a route
//! configuration carries every route of a listener, so one team's broken
//! regular expression would freeze every other team's routes on that
//! Gateway. Each check names the field and says what is wrong; the callers
//! leave the offending rule or route out and report it in status.
//!
//! The rules are those of the Gateway API CRDs (what the API server would
//! refuse, which standalone mode must refuse too) and of Envoy's own
//! validation (what the CRDs let through but Envoy refuses, such as `?` in a
//! path prefix). Each is a leaf function of one value.

use infergate_model::{
    ApiError, BackendRef, FilterChainIr, HeaderModifier, ModelMatch, Output, PathMatch,
    PathModifier, RequestRedirect, RouteAction, RouteFilter, RouteMatch, StringMatchType,
    UrlRewrite,
};
use regex_automata::nfa::thompson;
use regex_syntax::ast::{self, Ast};

/// The most NFA states a regular expression may compile to (regex-automata's
/// Thompson construction with RE2's ASCII `\d`, `\s`, `\w`). RE2 programs
/// are at most about twice as large; the Envoys infergate configures accept
/// RE2 programs of up to [`ENVOY_RE2_MAX_PROGRAM_SIZE`] instructions.
pub const MAX_REGEX_STATES: usize = 1000;

/// The RE2 program size Envoy accepts (runtime key
/// `re2.max_program_size.error_level`) in the bootstraps infergate writes.
/// Envoy's default is 100, below what a 100-character path prefix rewrite
/// needs; this leaves room for every regular expression that passes
/// [`regex`] and for the generated prefix rewrites of paths up to 1024 bytes.
pub const ENVOY_RE2_MAX_PROGRAM_SIZE: u32 = 4096;

/// The bounds on how much of a body model routing reads: Envoy's HTTP/2
/// stream window (which bounds what Envoy buffers of an HTTP/2 request)
/// takes 64 KiB to 2 GiB.
pub const MODEL_BODY_BYTES: std::ops::RangeInclusive<u32> = 65_535..=0x7fff_ffff;

/// Gateway API's limit on a path value.
pub const MAX_PATH_LENGTH: usize = 1024;
/// Gateway API's limit on a header or query parameter value.
pub const MAX_HEADER_VALUE_LENGTH: usize = 4096;
/// Gateway API's limit on a header name.
pub const MAX_HEADER_NAME_LENGTH: usize = 256;
/// Gateway API's limit on one backendRef's weight; with at most 16
/// backendRefs per rule the sum stays far below Envoy's 2^32-1.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// An `Exact` or `PathPrefix` path: what the CRD's rules require, and no `?`
/// (Envoy refuses it in a prefix; an exact path never sees a query).
pub fn path(value: &str) -> Result<(), String> {
    if !value.starts_with('/') {
        return Err(format!("path {value:?} must start with \"/\""));
    }
    if value.len() > MAX_PATH_LENGTH {
        return Err(format!(
            "path is {} bytes long; at most {MAX_PATH_LENGTH} are allowed",
            value.len()
        ));
    }
    for bad in ["//", "/./", "/../", "%2f", "%2F", "#", "?"] {
        if value.contains(bad) {
            return Err(format!("path {value:?} must not contain {bad:?}"));
        }
    }
    if value.ends_with("/..") || value.ends_with("/.") {
        return Err(format!(
            "path {value:?} must not end with \"/.\" or \"/..\""
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "path {value:?} must not contain {c:?} (control characters and spaces are not allowed)"
        ));
    }
    Ok(())
}

/// A value Envoy will send as a header or use as a path: no NUL, CR or LF,
/// which would split or end a header line.
pub fn header_value(value: &str) -> Result<(), String> {
    if value.len() > MAX_HEADER_VALUE_LENGTH {
        return Err(format!(
            "value is {} bytes long; at most {MAX_HEADER_VALUE_LENGTH} are allowed",
            value.len()
        ));
    }
    if let Some(c) = value.chars().find(|c| matches!(c, '\0' | '\r' | '\n')) {
        return Err(format!(
            "value {value:?} must not contain {c:?} (NUL, CR and LF would split the header)"
        ));
    }
    Ok(())
}

/// An HTTP header (or query parameter) name: an RFC 7230 token, as the CRD's
/// pattern `^[A-Za-z0-9!#$%&'*+\-.^_\x60|~]+$` says.
pub fn header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("name must not be empty".into());
    }
    if name.len() > MAX_HEADER_NAME_LENGTH {
        return Err(format!(
            "name is {} bytes long; at most {MAX_HEADER_NAME_LENGTH} are allowed",
            name.len()
        ));
    }
    match name.chars().find(|&c| !is_token_char(c)) {
        Some(c) => Err(format!(
            "name {name:?} must not contain {c:?} (a header name is letters, digits and !#$%&'*+-.^_`|~)"
        )),
        None => Ok(()),
    }
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// A header that a header modifier may set, add or remove. Envoy refuses
/// pseudo-headers and `host` there (the name check already refuses `:`).
pub fn modifiable_header(name: &str) -> Result<(), String> {
    header_name(name)?;
    if name.eq_ignore_ascii_case("host") {
        return Err(
            "the Host header cannot be modified by a header filter; use a URLRewrite filter's hostname"
                .into(),
        );
    }
    Ok(())
}

/// A hostname as the CRDs allow it: lowercase RFC 1123 labels, optionally
/// with a leading `*.` where `wildcard` is allowed. Lowercase matters to
/// Envoy, which refuses two virtual hosts whose domains differ only in case.
pub fn hostname(value: &str, wildcard: bool) -> Result<(), String> {
    let name = match value.strip_prefix("*.") {
        Some(rest) if wildcard => rest,
        Some(_) => return Err(format!("hostname {value:?} must not be a wildcard")),
        None => value,
    };
    if value.len() > 253 {
        return Err(format!("hostname {value:?} is longer than 253 characters"));
    }
    if value.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "hostname {value:?} is an IP address; use a DNS name"
        ));
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!(
            "hostname {value:?} is not a valid lowercase DNS name (RFC 1123{})",
            if wildcard {
                ", optionally starting with \"*.\""
            } else {
                ""
            }
        ))
    }
}

/// The HTTP methods Gateway API's method match allows.
pub fn method(value: &str) -> Result<(), String> {
    const METHODS: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    if METHODS.contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "method {value:?} is not one of {}",
            METHODS.join(", ")
        ))
    }
}

/// A regular expression Envoy compiles with RE2: RE2's syntax (parsed by
/// regex-syntax, which follows RE2, with the extensions RE2 lacks refused)
/// and a bound on its size.
pub fn regex(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("regular expression is empty".into());
    }
    let mut parsed = ast::parse::ParserBuilder::new()
        .nest_limit(100)
        .build()
        .parse(pattern)
        .map_err(|e| format!("regular expression {pattern:?} is invalid: {}", e.kind()))?;
    re2_only(&parsed).map_err(|why| {
        format!("regular expression {pattern:?} uses {why}, which RE2 (Envoy's regex engine) does not support")
    })?;
    ascii_perl_classes(&mut parsed);
    let hir = regex_syntax::hir::translate::TranslatorBuilder::new()
        .build()
        .translate(pattern, &parsed)
        .map_err(|e| format!("regular expression {pattern:?} is invalid: {}", e.kind()))?;
    let nfa = thompson::Compiler::new()
        .configure(
            thompson::Config::new()
                .shrink(true)
                .which_captures(thompson::WhichCaptures::All)
                .nfa_size_limit(Some(1 << 20)),
        )
        .build_from_hir(&hir)
        .map_err(|_| format!("regular expression {pattern:?} is too large"))?;
    let states = nfa.states().len();
    if states > MAX_REGEX_STATES {
        return Err(format!(
            "regular expression {pattern:?} is too complex: it compiles to {states} automaton states, at most {MAX_REGEX_STATES} are allowed"
        ));
    }
    Ok(())
}

/// The first construct in `ast` that regex-syntax accepts and RE2 refuses.
fn re2_only(root: &Ast) -> Result<(), String> {
    let mut stack = vec![root];
    while let Some(node) = stack.pop() {
        match node {
            Ast::Flags(f) => flags(&f.flags)?,
            Ast::Group(g) => {
                if let ast::GroupKind::NonCapturing(f) = &g.kind {
                    flags(f)?;
                }
                stack.push(&g.ast);
            }
            Ast::Repetition(r) => {
                if matches!(&*r.ast, Ast::Repetition(_)) {
                    return Err("a repetition of a repetition (such as \"a**\" or \"a++\")".into());
                }
                stack.push(&r.ast);
            }
            Ast::Assertion(a) => {
                use ast::AssertionKind::*;
                if !matches!(
                    a.kind,
                    StartLine | EndLine | StartText | EndText | WordBoundary | NotWordBoundary
                ) {
                    return Err("a word-boundary assertion other than \\b and \\B".into());
                }
            }
            Ast::ClassUnicode(u) => unicode_class(u)?,
            Ast::ClassBracketed(b) => class_set(&b.kind)?,
            Ast::Alternation(a) => stack.extend(a.asts.iter()),
            Ast::Concat(c) => stack.extend(c.asts.iter()),
            Ast::Empty(_) | Ast::Literal(_) | Ast::Dot(_) | Ast::ClassPerl(_) => {}
        }
    }
    Ok(())
}

fn flags(f: &ast::Flags) -> Result<(), String> {
    for item in &f.items {
        if let ast::FlagsItemKind::Flag(flag) = &item.kind {
            use ast::Flag::*;
            if !matches!(
                flag,
                CaseInsensitive | MultiLine | DotMatchesNewLine | SwapGreed
            ) {
                return Err(format!("the flag {flag:?} (RE2 knows i, m, s and U)"));
            }
        }
    }
    Ok(())
}

fn class_set(set: &ast::ClassSet) -> Result<(), String> {
    match set {
        ast::ClassSet::BinaryOp(_) => Err("a class set operation (&&, -- or ~~)".into()),
        ast::ClassSet::Item(item) => class_item(item),
    }
}

fn class_item(item: &ast::ClassSetItem) -> Result<(), String> {
    match item {
        ast::ClassSetItem::Bracketed(_) => Err("a nested character class".into()),
        ast::ClassSetItem::Unicode(u) => unicode_class(u),
        ast::ClassSetItem::Union(u) => u.items.iter().try_for_each(class_item),
        _ => Ok(()),
    }
}

/// RE2 knows general categories (`\pL`, `\p{Lu}`) and scripts (`\p{Greek}`);
/// regex-syntax also knows `name=value` forms and binary properties.
fn unicode_class(class: &ast::ClassUnicode) -> Result<(), String> {
    match &class.kind {
        ast::ClassUnicodeKind::OneLetter(_) => Ok(()),
        ast::ClassUnicodeKind::NamedValue { .. } => {
            Err("a Unicode class of the form \\p{name=value}".into())
        }
        ast::ClassUnicodeKind::Named(name) => {
            let category = name.len() <= 2 && name.chars().all(|c| c.is_ascii_alphabetic());
            let script = regex_syntax::ParserBuilder::new()
                .build()
                .parse(&format!("\\p{{Script={name}}}"))
                .is_ok();
            if category || script || name == "Any" {
                Ok(())
            } else {
                Err(format!("the Unicode property {name:?}"))
            }
        }
    }
}

/// RE2's `\d`, `\s` and `\w` are ASCII classes, where regex-syntax's are
/// Unicode (and hundreds of automaton states larger).
fn ascii_perl_classes(node: &mut Ast) {
    fn ascii(perl: &ast::ClassPerl) -> ast::ClassAscii {
        ast::ClassAscii {
            span: perl.span,
            kind: match perl.kind {
                ast::ClassPerlKind::Digit => ast::ClassAsciiKind::Digit,
                ast::ClassPerlKind::Space => ast::ClassAsciiKind::Space,
                ast::ClassPerlKind::Word => ast::ClassAsciiKind::Word,
            },
            negated: perl.negated,
        }
    }
    fn item(i: &mut ast::ClassSetItem) {
        match i {
            ast::ClassSetItem::Perl(p) => *i = ast::ClassSetItem::Ascii(ascii(p)),
            ast::ClassSetItem::Union(u) => u.items.iter_mut().for_each(item),
            _ => {}
        }
    }
    match node {
        Ast::ClassPerl(p) => {
            let span = p.span;
            *node = Ast::class_bracketed(ast::ClassBracketed {
                span,
                negated: false,
                kind: ast::ClassSet::Item(ast::ClassSetItem::Ascii(ascii(p))),
            });
        }
        Ast::ClassBracketed(b) => {
            if let ast::ClassSet::Item(i) = &mut b.kind {
                item(i);
            }
        }
        Ast::Group(g) => ascii_perl_classes(&mut g.ast),
        Ast::Repetition(r) => ascii_perl_classes(&mut r.ast),
        Ast::Alternation(a) => a.asts.iter_mut().for_each(ascii_perl_classes),
        Ast::Concat(c) => c.asts.iter_mut().for_each(ascii_perl_classes),
        _ => {}
    }
}

/// Each backendRef's weight at most [`MAX_WEIGHT`], as Gateway API allows,
/// and their sum at most 2^32-1, as Envoy requires.
pub fn weights(refs: &[BackendRef]) -> Result<(), String> {
    if let Some((i, r)) = refs.iter().enumerate().find(|(_, r)| r.weight > MAX_WEIGHT) {
        return Err(format!(
            "backendRefs[{i}].weight: weight {} is larger than {MAX_WEIGHT}, the most Gateway API allows",
            r.weight
        ));
    }
    let total: u64 = refs.iter().map(|r| u64::from(r.weight)).sum();
    if total > u64::from(u32::MAX) {
        return Err(format!(
            "backendRefs: the weights add up to {total}, more than Envoy's limit of {}",
            u32::MAX
        ));
    }
    Ok(())
}

/// Every match's values, as Envoy will see them; the first problem names
/// its field (`matches[1].headers[0].name: ...`).
pub fn route_matches(matches: &[RouteMatch]) -> Result<(), String> {
    for (i, m) in matches.iter().enumerate() {
        route_match(m).map_err(|why| format!("matches[{i}].{why}"))?;
    }
    Ok(())
}

/// One match; the problem starts with its field (`path.value: ...`).
pub fn route_match(m: &RouteMatch) -> Result<(), String> {
    let at = |what: &str, why: String| format!("{what}: {why}");
    match &m.path {
        Some(PathMatch::Exact(p) | PathMatch::Prefix(p)) => {
            path(p).map_err(|why| at("path.value", why))?
        }
        Some(PathMatch::RegularExpression(p)) => regex(p).map_err(|why| at("path.value", why))?,
        None => {}
    }
    for (kind, list) in [("headers", &m.headers), ("queryParams", &m.query_params)] {
        for (j, h) in list.iter().enumerate() {
            header_name(&h.name).map_err(|why| at(&format!("{kind}[{j}].name"), why))?;
            match h.match_type {
                StringMatchType::Exact => header_value(&h.value),
                StringMatchType::RegularExpression => regex(&h.value),
            }
            .map_err(|why| at(&format!("{kind}[{j}].value"), why))?;
        }
    }
    if let Some(m) = &m.method {
        method(m).map_err(|why| at("method", why))?;
    }
    Ok(())
}

/// A match on the model a request body names, from a header match on
/// X-Gateway-Model-Name; the problem starts with its field.
pub fn model_match(m: &ModelMatch) -> Result<(), String> {
    match m.match_type {
        StringMatchType::Exact => header_value(&m.value),
        StringMatchType::RegularExpression => regex(&m.value),
    }
    .map_err(|why| format!("model: {why}"))
}

/// An error Envoy answers in the OpenAI API's shape: a status Envoy sends
/// and text that fits in a response body.
pub fn api_error(e: &ApiError) -> Result<(), String> {
    if !(200..=599).contains(&e.status) {
        return Err(format!("status: {} is not a status code 200-599", e.status));
    }
    for (field, value) in [
        ("message", &e.message),
        ("type", &e.error_type),
        ("code", &e.code),
    ] {
        if value.contains('%') {
            return Err(format!("{field}: '%' is not allowed"));
        }
    }
    Ok(())
}

/// The values of the filters infergate implements; the first problem names
/// its field (`filters[0].requestRedirect.hostname: ...`).
pub fn filters(filters: &[RouteFilter]) -> Result<(), String> {
    for (i, filter) in filters.iter().enumerate() {
        let (name, result) = match filter {
            RouteFilter::RequestHeaderModifier(m) => ("requestHeaderModifier", header_modifier(m)),
            RouteFilter::ResponseHeaderModifier(m) => {
                ("responseHeaderModifier", header_modifier(m))
            }
            RouteFilter::RequestRedirect(r) => ("requestRedirect", redirect(r)),
            RouteFilter::UrlRewrite(r) => ("urlRewrite", url_rewrite(r)),
            RouteFilter::Unsupported(_) => continue,
        };
        result.map_err(|why| format!("filters[{i}].{name}.{why}"))?;
    }
    Ok(())
}

/// Header modifier values; the problem starts with its field (`set[0].name: ...`).
pub fn header_modifier(m: &HeaderModifier) -> Result<(), String> {
    for (list, values) in [("set", &m.set), ("add", &m.add)] {
        for (j, h) in values.iter().enumerate() {
            modifiable_header(&h.name).map_err(|why| format!("{list}[{j}].name: {why}"))?;
            header_value(&h.value).map_err(|why| format!("{list}[{j}].value: {why}"))?;
        }
    }
    for (j, name) in m.remove.iter().enumerate() {
        modifiable_header(name).map_err(|why| format!("remove[{j}]: {why}"))?;
    }
    Ok(())
}

/// A redirect; the problem starts with its field (`hostname: ...`).
pub fn redirect(r: &RequestRedirect) -> Result<(), String> {
    if let Some(scheme) = &r.scheme
        && scheme != "http"
        && scheme != "https"
    {
        return Err(format!("scheme: {scheme:?} is not http or https"));
    }
    if let Some(host) = &r.hostname {
        hostname(host, false).map_err(|why| format!("hostname: {why}"))?;
    }
    if let Some(p) = &r.path {
        path_modifier(p).map_err(|why| format!("path.{why}"))?;
    }
    if let Some(port) = r.port
        && !(1..=65535).contains(&port)
    {
        return Err(format!("port: {port} is out of range 1-65535"));
    }
    if let Some(code) = r.status_code
        && ![301, 302, 303, 307, 308].contains(&code)
    {
        return Err(format!(
            "statusCode: {code} is not one of 301, 302, 303, 307, 308"
        ));
    }
    Ok(())
}

/// A URL rewrite; the problem starts with its field (`hostname: ...`).
pub fn url_rewrite(r: &UrlRewrite) -> Result<(), String> {
    if let Some(host) = &r.hostname {
        hostname(host, false).map_err(|why| format!("hostname: {why}"))?;
    }
    if let Some(p) = &r.path {
        path_modifier(p).map_err(|why| format!("path.{why}"))?;
    }
    Ok(())
}

fn path_modifier(p: &PathModifier) -> Result<(), String> {
    let (field, value) = match p {
        PathModifier::ReplaceFullPath(v) => ("replaceFullPath", v),
        PathModifier::ReplacePrefixMatch(v) => ("replacePrefixMatch", v),
    };
    path(value).map_err(|why| format!("{field}: {why}"))
}

/// The output of any translation component, checked again by the host
/// before it reaches Envoy: filter chains, routes, virtual hosts and
/// endpoints holding a value Envoy would refuse are removed, so the rest is
/// configured, and each removal is described (node, listener, chain, virtual
/// host, route). A component that produces any is refused as a hot-swap
/// candidate.
pub fn output(output: &mut Output) -> Vec<String> {
    let mut problems = Vec::new();
    for gateway in &mut output.gateways {
        let node = gateway.node_id.clone();
        for listener in &mut gateway.listeners {
            // Envoy refuses a listener two of whose chains match alike, a TLS
            // chain without a certificate, and a server name it cannot match.
            let mut matches = std::collections::HashSet::new();
            listener.filter_chains.retain(|chain| {
                let mut names = chain.server_names.clone();
                names.sort();
                let bad = if let Some(why) = chain.server_names.iter().find_map(|n| {
                    hostname(n, true)
                        .err()
                        .map(|why| format!("server name {n:?}: {why}"))
                }) {
                    Some(why)
                } else if chain.tls.as_ref().is_some_and(|t| {
                    t.certificates.is_empty() || t.certificates.iter().any(String::is_empty)
                }) {
                    Some("TLS without a certificate name".to_string())
                } else if let Some(routing) = &chain.model_routing
                    && !MODEL_BODY_BYTES.contains(&routing.max_body_bytes)
                {
                    Some(format!(
                        "model routing reads at most {} bytes of a body, outside {MODEL_BODY_BYTES:?}",
                        routing.max_body_bytes
                    ))
                } else if !matches.insert(names) {
                    Some(format!(
                        "another chain matches the same server names {:?}",
                        chain.server_names
                    ))
                } else {
                    None
                };
                if let Some(why) = &bad {
                    problems.push(format!(
                        "Gateway {node}, listener {}, filter chain {:?} removed: {why}",
                        listener.name, chain.name
                    ));
                }
                bad.is_none()
            });
            for chain in &mut listener.filter_chains {
                virtual_hosts(&node, chain, &mut problems);
            }
        }
        for cluster in &mut gateway.clusters {
            let before = cluster.endpoints.len();
            cluster.endpoints.retain(|e| {
                e.address.parse::<std::net::IpAddr>().is_ok() && (1..=65535).contains(&e.port)
            });
            if cluster.endpoints.len() != before {
                problems.push(format!(
                    "Gateway {node}, cluster {:?}: {} endpoints that are not an IP address and port removed",
                    cluster.name,
                    before - cluster.endpoints.len()
                ));
            }
        }
    }
    problems
}

/// A filter chain's virtual hosts and routes, as [`output`] checks them.
fn virtual_hosts(node: &str, chain: &mut FilterChainIr, problems: &mut Vec<String>) {
    let mut domains = std::collections::HashSet::new();
    chain.virtual_hosts.retain(|vh| {
        let bad = vh.domains.iter().find_map(|d| {
            let lower = d.to_ascii_lowercase();
            if d != "*"
                && let Err(why) = hostname(d, true)
            {
                Some(why)
            } else if !domains.insert(lower) {
                Some(format!(
                    "domain {d:?} is served by another virtual host too"
                ))
            } else {
                None
            }
        });
        if let Some(why) = &bad {
            problems.push(format!(
                "Gateway {node}, filter chain {}, virtual host {:?} removed: {why}",
                chain.name, vh.name
            ));
        }
        bad.is_none()
    });
    for vh in &mut chain.virtual_hosts {
        let rules = &vh.rules;
        vh.routes.retain(|r| {
            // Output::check_references has made sure the rule exists.
            let Some(rule) = rules.get(r.rule as usize) else {
                return false;
            };
            let checked = route_match(&r.matches)
                .and_then(|()| r.model.as_ref().map_or(Ok(()), model_match))
                .and_then(|()| header_modifier(&rule.request_headers))
                .and_then(|()| header_modifier(&rule.response_headers))
                .and_then(|()| match &rule.action {
                    RouteAction::Redirect(redirect_) => redirect(redirect_),
                    RouteAction::Forward(forward) => {
                        let total: u64 = forward.clusters.iter().map(|c| u64::from(c.weight)).sum();
                        if total > u64::from(u32::MAX) {
                            return Err(format!("weights add up to {total}"));
                        }
                        forward.rewrite.as_ref().map_or(Ok(()), url_rewrite)
                    }
                    RouteAction::DirectResponse(_) => Ok(()),
                    RouteAction::ApiError(e) => api_error(e),
                });
            if let Err(why) = &checked {
                problems.push(format!(
                    "Gateway {node}, virtual host {:?}, route {}/match/{} removed: {why}",
                    vh.name, rule.name, r.match_index
                ));
            }
            checked.is_ok()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regexes_envoy_accepts() {
        for ok in [
            "/v1/models/[a-z0-9-]+/completions",
            "/api/.*",
            "(?i)/API",
            "/x/\\d+",
            "/w/\\w+/\\s*",
            "[[:alpha:]]+",
            "\\pL+",
            "\\p{Greek}",
            "(?P<name>a)|(?<other>b)",
            "^/a{2,5}$",
            "(?U)a*",
        ] {
            assert_eq!(regex(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn regexes_envoy_refuses() {
        for (bad, why) in [
            ("/(abc", "invalid"),
            ("(?=a)", "invalid"),
            ("(?!a)", "invalid"),
            ("(a)\\1", "invalid"),
            ("a++", "repetition of a repetition"),
            ("(?x) a", "flag"),
            ("[a-z&&[^aeiou]]", "class set operation"),
            ("[[a-z]]", "nested character class"),
            ("\\p{Emoji}", "Unicode property"),
            ("\\p{sc=Greek}", "name=value"),
            ("\\b{start}", "word-boundary"),
            ("/a{1000}", "too complex"),
            ("", "empty"),
        ] {
            let error = regex(bad).expect_err(bad);
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn paths() {
        assert_eq!(path("/v1/completions"), Ok(()));
        for bad in [
            "v1", "/a?b", "/a//b", "/a/../b", "/a#x", "/a/..", "/a b", "/a\nb",
        ] {
            assert!(path(bad).is_err(), "{bad:?}");
        }
        assert!(path(&format!("/{}", "a".repeat(1024))).is_err());
    }

    #[test]
    fn headers() {
        assert_eq!(header_name("x-env"), Ok(()));
        assert!(header_name("").is_err());
        assert!(header_name(":path").is_err());
        assert!(header_name("a b").is_err());
        assert!(modifiable_header("Host").is_err());
        assert_eq!(header_value("prod"), Ok(()));
        assert!(header_value("a\r\nx-injected: 1").is_err());
        assert!(header_value("a\0").is_err());
    }

    #[test]
    fn hostnames() {
        assert_eq!(hostname("api.example.com", true), Ok(()));
        assert_eq!(hostname("*.example.com", true), Ok(()));
        assert!(hostname("*.example.com", false).is_err());
        assert!(hostname("API.example.com", true).is_err());
        assert!(hostname("a..b", true).is_err());
        assert!(hostname("-a.b", true).is_err());
        assert!(hostname("127.0.0.1", true).is_err());
        assert!(hostname("a.b\r\nx: y", false).is_err());
    }
}
