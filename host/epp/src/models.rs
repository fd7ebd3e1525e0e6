//! What the gateway tells the picker about the models of the route a
//! request came by (gRPC metadata of the ext_proc stream, set per route;
//! `infergate_names::picker::{ROUTE_MODELS, MODEL_REWRITES}`): the models
//! the route names exactly, the labels of the per-model metrics; and the
//! pool's model rewrites (InferenceModelRewrite), served names by weight.

use std::collections::HashMap;

use infergate_names::picker::{MODEL_REWRITES, ROUTE_MODELS};

/// The label of requests for a model no route names (bounded cardinality).
pub const OTHER: &str = "other";

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteModels {
    named: Vec<String>,
    rewrites: HashMap<String, Vec<(String, u32)>>,
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
            let rewrites: HashMap<String, Vec<(String, u32)>> = serde_json::from_str(text)
                .map_err(|e| format!("gRPC metadata {MODEL_REWRITES}: {e}"))?;
            for (model, targets) in &rewrites {
                if targets.is_empty() || targets.iter().all(|(_, w)| *w == 0) {
                    return Err(format!(
                        "gRPC metadata {MODEL_REWRITES}: {model:?} has no target of positive weight"
                    ));
                }
            }
            models.rewrites = rewrites;
        }
        Ok(models)
    }

    /// The model a request for `model` is served under, chosen by weight
    /// with `random` (uniform in 0..1), and the labels of both.
    pub fn choose(&self, model: &str, random: f64) -> ModelChoice {
        let served = match self.rewrites.get(model) {
            Some(targets) => {
                let total: u64 = targets.iter().map(|(_, w)| u64::from(*w)).sum();
                let mut point = (random.clamp(0.0, 1.0) * total as f64) as u64;
                targets
                    .iter()
                    .find(|(_, w)| {
                        if point < u64::from(*w) {
                            true
                        } else {
                            point -= u64::from(*w);
                            false
                        }
                    })
                    .or(targets.last())
                    .map(|(name, _)| name.clone())
                    .unwrap_or_else(|| model.to_string())
            }
            None => model.to_string(),
        };
        let known = |name: &str| {
            self.named.iter().any(|n| n == name)
                || self.rewrites.contains_key(name)
                || self
                    .rewrites
                    .values()
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
        let choice = models.choose("llama", 0.5);
        assert_eq!(
            (choice.asked_label.as_str(), choice.served.as_str()),
            ("llama", "llama")
        );
        assert!(!choice.rewritten());
        assert_eq!(models.choose("made-up-by-a-client", 0.5).asked_label, OTHER);
        assert_eq!(
            RouteModels::default().choose("llama", 0.5).asked_label,
            OTHER
        );
    }

    #[test]
    fn a_rewrite_serves_a_model_under_its_targets_by_weight() {
        let models = RouteModels::from_metadata(&metadata(
            Some(r#"["chat"]"#),
            Some(r#"{"chat": [["llama-3-70b", 90], ["llama-3.1-70b", 10]]}"#),
        ))
        .unwrap();
        let served = |random| models.choose("chat", random).served;
        assert_eq!(served(0.0), "llama-3-70b");
        assert_eq!(served(0.899), "llama-3-70b");
        assert_eq!(served(0.9), "llama-3.1-70b");
        assert_eq!(served(1.0), "llama-3.1-70b");
        let choice = models.choose("chat", 0.95);
        assert!(choice.rewritten());
        assert_eq!(
            (choice.asked_label.as_str(), choice.served_label.as_str()),
            ("chat", "llama-3.1-70b")
        );
        assert_eq!(models.choose("other-model", 0.5).served, "other-model");
    }

    #[test]
    fn metadata_that_does_not_parse_is_named() {
        let error = RouteModels::from_metadata(&metadata(Some("[llama"), None)).unwrap_err();
        assert!(error.contains(ROUTE_MODELS), "{error}");
        let error =
            RouteModels::from_metadata(&metadata(None, Some(r#"{"chat": []}"#))).unwrap_err();
        assert!(error.contains("no target"), "{error}");
        // Non-ASCII names arrive escaped.
        let models =
            RouteModels::from_metadata(&metadata(Some(r#"["mod\u00e8le"]"#), None)).unwrap();
        assert_eq!(models.choose("modèle", 0.0).asked_label, "modèle");
    }
}
