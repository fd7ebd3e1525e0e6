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

#[cfg(test)]
mod tests {
    use super::*;

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
