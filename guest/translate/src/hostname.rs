//! Hostname matching as Gateway API defines it: `*.example.com` matches any
//! name with one or more labels in front of `example.com`, never `example.com`.

/// The hostname a request must carry to match both a listener hostname and a
/// route hostname, or None when no request can match both. `None` inputs
/// mean "any host".
pub fn intersect(listener: Option<&str>, route: &str) -> Option<String> {
    let Some(listener) = listener.filter(|l| !l.is_empty()) else {
        return Some(route.to_string());
    };
    if listener == route {
        return Some(route.to_string());
    }
    match (wildcard_suffix(listener), wildcard_suffix(route)) {
        // Both wildcards: the longer (more specific) one, if it lies within the other.
        (Some(l), Some(r)) => {
            if r.ends_with(&format!(".{l}")) {
                Some(route.to_string())
            } else if l.ends_with(&format!(".{r}")) {
                Some(listener.to_string())
            } else {
                None
            }
        }
        (Some(l), None) => route.ends_with(&format!(".{l}")).then(|| route.to_string()),
        (None, Some(r)) => listener
            .ends_with(&format!(".{r}"))
            .then(|| listener.to_string()),
        (None, None) => None,
    }
}

/// `example.com` for `*.example.com`.
fn wildcard_suffix(host: &str) -> Option<&str> {
    host.strip_prefix("*.")
}

/// The hostnames a route serves on a listener: the intersections of the
/// listener's hostname with each route hostname, or the listener's hostname
/// (or `*`) when the route names none. Empty when nothing intersects.
pub fn effective(listener: Option<&str>, route_hostnames: &[String]) -> Vec<String> {
    if route_hostnames.is_empty() {
        return vec![
            listener
                .filter(|l| !l.is_empty())
                .unwrap_or("*")
                .to_string(),
        ];
    }
    let mut out: Vec<String> = route_hostnames
        .iter()
        .filter_map(|h| intersect(listener, h))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The listener that owns the requests of `host` (a virtual host's domain:
/// a name, a wildcard or `*`) among `listeners` (hostnames of listeners
/// sharing a port; None for any host): the most specific one whose hostname
/// covers every name `host` stands for. Gateway API's listener isolation: a
/// request is served only by routes of the most specific listener it
/// matches. Returns the owner's position in `listeners`.
pub fn owner(listeners: &[Option<&str>], host: &str) -> Option<usize> {
    listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| covers(**l, host))
        .max_by_key(|(_, l)| specificity(**l))
        .map(|(i, _)| i)
}

/// Whether every request host that `host` stands for matches the listener
/// hostname (None or empty: any host).
fn covers(listener: Option<&str>, host: &str) -> bool {
    let Some(listener) = listener.filter(|l| !l.is_empty()) else {
        return true;
    };
    listener == host
        || wildcard_suffix(listener).is_some_and(|suffix| host.ends_with(&format!(".{suffix}")))
}

/// Exact names before wildcards, longer wildcards before shorter, any host
/// last.
fn specificity(listener: Option<&str>) -> (u8, usize) {
    match listener.filter(|l| !l.is_empty()) {
        None => (0, 0),
        Some(l) if l.starts_with("*.") => (1, l.len()),
        Some(l) => (2, l.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_specific_listener_owns_a_host() {
        let listeners = [
            None,
            Some("*.example.com"),
            Some("*.foo.example.com"),
            Some("abc.foo.example.com"),
        ];
        assert_eq!(owner(&listeners, "bar.com"), Some(0));
        assert_eq!(owner(&listeners, "*"), Some(0));
        assert_eq!(owner(&listeners, "bar.example.com"), Some(1));
        assert_eq!(owner(&listeners, "*.example.com"), Some(1));
        assert_eq!(owner(&listeners, "*.foo.example.com"), Some(2));
        assert_eq!(owner(&listeners, "x.y.foo.example.com"), Some(2));
        assert_eq!(owner(&listeners, "abc.foo.example.com"), Some(3));
        // example.com is not under *.example.com.
        assert_eq!(owner(&listeners, "example.com"), Some(0));
        assert_eq!(owner(&listeners[1..], "bar.com"), None);
    }

    #[test]
    fn exact_and_wildcards() {
        assert_eq!(
            intersect(None, "a.example.com").as_deref(),
            Some("a.example.com")
        );
        assert_eq!(
            intersect(Some("a.example.com"), "a.example.com").as_deref(),
            Some("a.example.com")
        );
        assert_eq!(intersect(Some("a.example.com"), "b.example.com"), None);
        assert_eq!(
            intersect(Some("*.example.com"), "a.example.com").as_deref(),
            Some("a.example.com")
        );
        assert_eq!(
            intersect(Some("*.example.com"), "a.b.example.com").as_deref(),
            Some("a.b.example.com")
        );
        assert_eq!(intersect(Some("*.example.com"), "example.com"), None);
        assert_eq!(
            intersect(Some("a.example.com"), "*.example.com").as_deref(),
            Some("a.example.com")
        );
        assert_eq!(
            intersect(Some("*.example.com"), "*.a.example.com").as_deref(),
            Some("*.a.example.com")
        );
        assert_eq!(
            intersect(Some("*.a.example.com"), "*.example.com").as_deref(),
            Some("*.a.example.com")
        );
        assert_eq!(intersect(Some("*.example.com"), "*.example.org"), None);
    }

    #[test]
    fn effective_hostnames() {
        assert_eq!(effective(None, &[]), vec!["*"]);
        assert_eq!(effective(Some("*.x.io"), &[]), vec!["*.x.io"]);
        assert_eq!(
            effective(Some("*.x.io"), &["a.x.io".into(), "b.y.io".into()]),
            vec!["a.x.io"]
        );
        assert!(effective(Some("a.x.io"), &["b.x.io".into()]).is_empty());
    }
}
