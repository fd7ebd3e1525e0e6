//! Kubernetes object names, checked as the API server checks them, so that
//! files get the answer a cluster would give.

/// An RFC 1123 label: namespaces, Services, and the parts of names.
pub fn dns_label(name: &str) -> Result<(), String> {
    if name.len() > 63 {
        return Err(format!(
            "{:?} is {} characters long; at most 63 are allowed",
            printable(name),
            name.len()
        ));
    }
    if is_label(name) {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a valid name: lowercase letters, digits and '-', starting and ending with a letter or digit (RFC 1123 label)",
            printable(name)
        ))
    }
}

/// An RFC 1123 subdomain: most object names.
pub fn dns_subdomain(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err(format!(
            "{:?} is {} characters long; at most 253 are allowed",
            printable(name),
            name.len()
        ));
    }
    if name.split('.').all(is_label) {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a valid name: lowercase letters, digits, '-' and '.', each part starting and ending with a letter or digit (RFC 1123 subdomain)",
            printable(name)
        ))
    }
}

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// At most 80 characters of `name`, for messages: a name that is not valid
/// may be long or hold control characters (Debug-quoting escapes those).
fn printable(name: &str) -> String {
    name.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_subdomains() {
        assert!(dns_label("echo-1").is_ok());
        assert!(dns_subdomain("a.b-c").is_ok());
        for bad in ["", "a/b", "A", "-a", "a-", "a\nb", "a\0", "a b", "x/a"] {
            assert!(dns_label(bad).is_err(), "{bad:?}");
            assert!(dns_subdomain(bad).is_err(), "{bad:?}");
        }
        assert!(dns_label("a.b").is_err());
        assert!(dns_label(&"a".repeat(64)).is_err());
        assert!(dns_subdomain(&"a".repeat(254)).is_err());
    }
}
