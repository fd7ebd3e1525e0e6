//! What the gateway tells the picker about the models of the route a
//! request came by (gRPC metadata of the ext_proc stream, set per route;
//! `infergate_names::picker::{ROUTE_MODELS, MODEL_REWRITES}`): the models
//! the route names exactly, the labels of the per-model metrics; and the
//! pool's model rewrites (InferenceModelRewrite), served names by weight
//! (the translation has put them in precedence order; the first entry for a
//! model is its own).

use std::collections::HashMap;
use std::sync::Mutex;

use infergate_names::picker::{MODEL_REWRITES, ROUTE_MODELS};

/// The label of requests for a model no route names (bounded cardinality).
pub const OTHER: &str = "other";

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteModels {
    named: Vec<String>,
    /// Served names by the model a request gives.
    rewrites: HashMap<String, Vec<(String, u32)>>,
    /// Served names of every other model.
    otherwise: Option<Vec<(String, u32)>>,
}

/// `[model or null, [[served name, weight], ...]]`.
type RewriteEntry = (Option<String>, Vec<(String, u32)>);

/// The turns of every weighted split the picker has served: smooth
/// weighted round robin (as nginx balances upstreams), so that a split's
/// shares are exact over every run of its total weight rather than only on
/// average, the same for every picker replica's requests. Bounded: past
/// [`Splits::MAX`] splits (configurations come and go) it starts afresh.
#[derive(Debug, Default)]
pub struct Splits(Mutex<HashMap<SplitKey, Vec<i64>>>);

/// A split: the model asked for, and its targets with their weights.
type SplitKey = (String, Vec<(String, u32)>);

impl Splits {
    const MAX: usize = 10_000;

    /// The target the next request for `model` goes to.
    pub fn next(&self, model: &str, targets: &[(String, u32)]) -> String {
        let mut splits = self.0.lock().expect("splits lock");
        if splits.len() >= Self::MAX {
            splits.clear();
        }
        let current = splits
            .entry((model.to_string(), targets.to_vec()))
            .or_insert_with(|| vec![0; targets.len()]);
        let total: i64 = targets.iter().map(|(_, w)| i64::from(*w)).sum();
        let mut best = 0;
        for (i, (_, weight)) in targets.iter().enumerate() {
            current[i] += i64::from(*weight);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        targets[best].0.clone()
    }
}

/// A request's model, and the name it is served under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelChoice {
    /// What the request named.
    pub asked: String,
    /// What the server gets (the same unless rewritten).
    pub served: String,
    /// The metric labels of both: a name a route or a rewrite names, else
    /// [`OTHER`].
    pub asked_label: String,
    pub served_label: String,
}

impl ModelChoice {
    pub fn rewritten(&self) -> bool {
        self.asked != self.served
    }
}

impl RouteModels {
    /// From the stream's metadata; a value that does not parse is an error
    /// naming it (the gateway's configuration and the picker disagree).
    pub fn from_metadata(metadata: &tonic::metadata::MetadataMap) -> Result<Self, String> {
        let value = |key: &str| -> Result<Option<&str>, String> {
            metadata
                .get(key)
                .map(|v| {
                    v.to_str()
                        .map_err(|_| format!("gRPC metadata {key} is not ASCII"))
                })
                .transpose()
        };
        let mut models = RouteModels::default();
        if let Some(text) = value(ROUTE_MODELS)? {
            models.named = serde_json::from_str(text)
                .map_err(|e| format!("gRPC metadata {ROUTE_MODELS}: {e}"))?;
        }
        if let Some(text) = value(MODEL_REWRITES)? {
            let entries: Vec<RewriteEntry> = serde_json::from_str(text)
                .map_err(|e| format!("gRPC metadata {MODEL_REWRITES}: {e}"))?;
            for (model, targets) in entries {
                if targets.is_empty() || targets.iter().all(|(_, w)| *w == 0) {
                    return Err(format!(
                        "gRPC metadata {MODEL_REWRITES}: {model:?} has no target of positive weight"
                    ));
                }
                match model {
                    Some(model) => {
                        models.rewrites.entry(model).or_insert(targets);
                    }
                    None => {
                        models.otherwise.get_or_insert(targets);
                    }
                }
            }
        }
        Ok(models)
    }

    /// The model a request for `model` is served under, chosen by weight
    /// (`splits` keeps each split's turn), and the labels of both.
    pub fn choose(&self, model: &str, splits: &Splits) -> ModelChoice {
        let served = match self.rewrites.get(model).or(self.otherwise.as_ref()) {
            Some(targets) => splits.next(model, targets),
            None => model.to_string(),
        };
        let known = |name: &str| {
            self.named.iter().any(|n| n == name)
                || self.rewrites.contains_key(name)
                || self
                    .rewrites
                    .values()
                    .chain(&self.otherwise)
                    .flatten()
                    .any(|(target, _)| target == name)
        };
        let label = |name: &str| {
            if known(name) {
                name.to_string()
            } else {
                OTHER.to_string()
            }
        };
        ModelChoice {
            asked_label: label(model),
            served_label: label(&served),
            asked: model.to_string(),
            served,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(models: Option<&str>, rewrites: Option<&str>) -> tonic::metadata::MetadataMap {
        let mut map = tonic::metadata::MetadataMap::new();
        if let Some(m) = models {
            map.insert(ROUTE_MODELS, m.parse().unwrap());
        }
        if let Some(r) = rewrites {
            map.insert(MODEL_REWRITES, r.parse().unwrap());
        }
        map
    }

    #[test]
    fn requests_are_labelled_by_the_models_routes_name_else_other() {
        let models = RouteModels::from_metadata(&metadata(Some(r#"["llama"]"#), None)).unwrap();
        let splits = Splits::default();
        let choice = models.choose("llama", &splits);
        assert_eq!(
            (choice.asked_label.as_str(), choice.served.as_str()),
            ("llama", "llama")
        );
        assert!(!choice.rewritten());
        assert_eq!(
            models.choose("made-up-by-a-client", &splits).asked_label,
            OTHER
        );
        assert_eq!(
            RouteModels::default().choose("llama", &splits).asked_label,
            OTHER
        );
    }

    #[test]
    fn a_rewrite_serves_a_model_under_its_targets_by_weight() {
        let models = RouteModels::from_metadata(&metadata(
            Some(r#"["chat"]"#),
            Some(r#"[["chat", [["llama-3-70b", 90], ["llama-3.1-70b", 10]]]]"#),
        ))
        .unwrap();
        let splits = Splits::default();
        let served: Vec<String> = (0..100)
            .map(|_| models.choose("chat", &splits).served)
            .collect();
        // Exact over every run of the total weight, spread out within it.
        for run in served.chunks(100) {
            assert_eq!(run.iter().filter(|s| *s == "llama-3.1-70b").count(), 10);
        }
        let first_ten = &served[..10];
        assert_eq!(
            first_ten.iter().filter(|s| *s == "llama-3.1-70b").count(),
            1,
            "spread out, not in a block: {first_ten:?}"
        );
        let choice = (0..100)
            .map(|_| models.choose("chat", &splits))
            .find(|c| c.served == "llama-3.1-70b")
            .unwrap();
        assert!(choice.rewritten());
        assert_eq!(
            (choice.asked_label.as_str(), choice.served_label.as_str()),
            ("chat", "llama-3.1-70b")
        );
        assert_eq!(models.choose("other-model", &splits).served, "other-model");
    }

    #[test]
    fn a_rewrite_of_every_model_takes_what_no_other_names() {
        let models = RouteModels::from_metadata(&metadata(
            None,
            Some(r#"[["chat", [["a", 1]]], [null, [["fallback", 1]]]]"#),
        ))
        .unwrap();
        let splits = Splits::default();
        assert_eq!(models.choose("chat", &splits).served, "a");
        let other = models.choose("anything", &splits);
        assert_eq!(other.served, "fallback");
        assert_eq!(
            (other.asked_label.as_str(), other.served_label.as_str()),
            ("other", "fallback")
        );
    }

    #[test]
    fn metadata_that_does_not_parse_is_named() {
        let error = RouteModels::from_metadata(&metadata(Some("[llama"), None)).unwrap_err();
        assert!(error.contains(ROUTE_MODELS), "{error}");
        let error =
            RouteModels::from_metadata(&metadata(None, Some(r#"[["chat", []]]"#))).unwrap_err();
        assert!(error.contains("no target"), "{error}");
        // Non-ASCII names arrive escaped.
        let models =
            RouteModels::from_metadata(&metadata(Some(r#"["mod\u00e8le"]"#), None)).unwrap();
        assert_eq!(
            models.choose("modèle", &Splits::default()).asked_label,
            "modèle"
        );
    }
}
