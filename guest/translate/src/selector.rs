//! Kubernetes label selectors.

use infergate_model::{Label, LabelSelector};

fn label<'a>(labels: &'a [Label], key: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|l| l.key == key)
        .map(|l| l.value.as_str())
}

/// Every `match_labels` pair is present in `labels`.
pub fn matches_labels(match_labels: &[Label], labels: &[Label]) -> bool {
    match_labels
        .iter()
        .all(|m| label(labels, &m.key) == Some(m.value.as_str()))
}

/// Whether `labels` satisfy `selector`. An unknown operator matches nothing,
/// so a typo never widens what a selector admits.
pub fn matches(selector: &LabelSelector, labels: &[Label]) -> bool {
    matches_labels(&selector.match_labels, labels)
        && selector.match_expressions.iter().all(|e| {
            let value = label(labels, &e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| e.values.iter().any(|x| x == v)),
                "NotIn" => value.is_none_or(|v| !e.values.iter().any(|x| x == v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use infergate_model::LabelSelectorRequirement;

    fn l(k: &str, v: &str) -> Label {
        Label {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn labels_and_expressions() {
        let labels = vec![l("env", "prod"), l("team", "ml")];
        let sel = |ml: Vec<Label>, op: &str, vals: &[&str]| LabelSelector {
            match_labels: ml,
            match_expressions: vec![LabelSelectorRequirement {
                key: "env".into(),
                operator: op.into(),
                values: vals.iter().map(|s| s.to_string()).collect(),
            }],
        };
        assert!(matches(
            &sel(vec![l("team", "ml")], "In", &["prod", "dev"]),
            &labels
        ));
        assert!(!matches(
            &sel(vec![l("team", "web")], "In", &["prod"]),
            &labels
        ));
        assert!(!matches(&sel(vec![], "NotIn", &["prod"]), &labels));
        assert!(matches(&sel(vec![], "Exists", &[]), &labels));
        assert!(!matches(&sel(vec![], "DoesNotExist", &[]), &labels));
        assert!(!matches(&sel(vec![], "Typo", &[]), &labels));
    }
}
