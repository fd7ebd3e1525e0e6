//! InferenceModelRewrite (`inference.networking.x-k8s.io/v1alpha2`, the
//! Inference Extension's API since v1.4): models of a pool served under
//! other names, split by weight. The translation decides which rewrites a
//! pool has; the pool's picker carries them out (it renames the model in the
//! request and back in the response) when the route's endpoint picker IR
//! carries them.
//!
//! Precedence, as the API defines it: a rule that names a model exactly
//! comes before a rule without matches (every model); between rewrites of
//! the same pool, the oldest first (then namespace/name); within one, its
//! rules in order. A rewrite that is not valid applies nothing.

use std::collections::{BTreeMap, BTreeSet};

use infergate_model::{
    InferenceModelRewrite, InferenceModelRewriteStatus, ModelRewrite, ObjectRef, RefKind,
    RewriteTarget,
};

use crate::backends::BackendUse;
use crate::conditions::{self as c, fail, ok, reason};
use crate::index::Index;

/// Reasons of the Accepted condition besides `Accepted`.
pub const POOL_NOT_FOUND: &str = "PoolNotFound";
pub const INVALID_RULES: &str = "InvalidRules";
pub const CONFLICTED: &str = "Conflicted";

/// The rewrites of pool `namespace/pool`, in precedence order: exact names
/// first, then at most one rule for every other model (`model` None).
pub fn for_pool(index: &Index, namespace: &str, pool: &str) -> Vec<ModelRewrite> {
    effective(index, namespace, pool).0
}

/// The pool's rewrites, and which rewrite each one came from (by position
/// in `index.rewrites_of`).
fn effective(index: &Index, namespace: &str, pool: &str) -> (Vec<ModelRewrite>, Vec<usize>) {
    let mut exact: BTreeMap<&str, (usize, ModelRewrite)> = BTreeMap::new();
    let mut generic: Option<(usize, ModelRewrite)> = None;
    for (position, rewrite) in index.rewrites_of(namespace, pool).iter().enumerate() {
        if problems(rewrite).is_some() {
            continue;
        }
        for rule in &rewrite.rules {
            let targets = targets(rule);
            if rule.models.is_empty() {
                generic.get_or_insert((
                    position,
                    ModelRewrite {
                        model: None,
                        targets,
                    },
                ));
                continue;
            }
            for model in &rule.models {
                exact.entry(model.as_str()).or_insert_with(|| {
                    (
                        position,
                        ModelRewrite {
                            model: Some(model.clone()),
                            targets: targets.clone(),
                        },
                    )
                });
            }
        }
    }
    exact
        .into_values()
        .chain(generic)
        .map(|(position, rewrite)| (rewrite, position))
        .unzip()
}

/// A rule's targets with their weights: all given, or all equal.
fn targets(rule: &infergate_model::ModelRewriteRule) -> Vec<RewriteTarget> {
    rule.targets
        .iter()
        .map(|t| RewriteTarget {
            model: t.model.clone(),
            weight: t.weight.unwrap_or(1),
        })
        .collect()
}

/// Why a rewrite cannot apply, naming the field.
fn problems(rewrite: &InferenceModelRewrite) -> Option<String> {
    let mut why = Vec::new();
    for (i, rule) in rewrite.rules.iter().enumerate() {
        if rule.targets.is_empty() {
            why.push(format!(
                "spec.rules[{i}].targets: a rule needs at least one target"
            ));
        }
        let weighted = rule.targets.iter().filter(|t| t.weight.is_some()).count();
        if weighted != 0 && weighted != rule.targets.len() {
            why.push(format!(
                "spec.rules[{i}].targets: weights are given for {weighted} of {} targets; give one for every target or for none",
                rule.targets.len()
            ));
        }
        if let Some(j) = rule.targets.iter().position(|t| t.weight == Some(0)) {
            why.push(format!(
                "spec.rules[{i}].targets[{j}].weight: must be at least 1"
            ));
        }
        if let Some(j) = rule.targets.iter().position(|t| t.model.is_empty()) {
            why.push(format!(
                "spec.rules[{i}].targets[{j}].modelRewrite: is empty"
            ));
        }
    }
    if rewrite.rules.is_empty() {
        why.push("spec.rules: no rule".to_string());
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// The statuses of the rewrites whose pool a route of ours uses (through a
/// Gateway that accepted it), or whose pool does not exist: Accepted, or
/// why not. Rewrites of other kinds of pools, or of pools only others use,
/// are not ours to judge.
pub fn statuses(index: &Index, uses: &[BackendUse]) -> Vec<InferenceModelRewriteStatus> {
    let ours: BTreeSet<(&str, &str)> = uses
        .iter()
        .filter(|u| u.kind == RefKind::InferencePool && u.accepted)
        .map(|u| (u.namespace.as_str(), u.name.as_str()))
        .collect();
    let mut out = Vec::new();
    for rewrite in &index.snapshot.inference_model_rewrites {
        if rewrite.pool_kind != RefKind::InferencePool {
            continue;
        }
        let namespace = rewrite.meta.namespace.as_str();
        let pool = rewrite.pool_name.as_str();
        let generation = rewrite.meta.generation;
        let exists = index.inference_pool(namespace, pool).is_some();
        let condition = if !exists {
            fail(
                c::ACCEPTED,
                POOL_NOT_FOUND,
                format!("spec.poolRef: InferencePool {namespace}/{pool} not found"),
                generation,
            )
        } else if !ours.contains(&(namespace, pool)) {
            continue;
        } else if let Some(why) = problems(rewrite) {
            fail(
                c::ACCEPTED,
                INVALID_RULES,
                format!("{why}; none of its rules applies"),
                generation,
            )
        } else {
            verdict(index, rewrite, generation)
        };
        out.push(InferenceModelRewriteStatus {
            rewrite: ObjectRef {
                namespace: namespace.to_string(),
                name: rewrite.meta.name.clone(),
            },
            conditions: vec![condition],
        });
    }
    out.sort_by(|a, b| {
        (&a.rewrite.namespace, &a.rewrite.name).cmp(&(&b.rewrite.namespace, &b.rewrite.name))
    });
    out
}

/// A valid rewrite: accepted unless every rule of it is taken by an older
/// rewrite of the same pool; the models others take are named.
fn verdict(
    index: &Index,
    rewrite: &InferenceModelRewrite,
    generation: i64,
) -> infergate_model::Condition {
    let namespace = rewrite.meta.namespace.as_str();
    let pool = rewrite.pool_name.as_str();
    let rewrites = index.rewrites_of(namespace, pool);
    let (applied, from) = effective(index, namespace, pool);
    let position = rewrites
        .iter()
        .position(|r| std::ptr::eq(*r, rewrite))
        .unwrap_or(usize::MAX);
    let mine: Vec<&ModelRewrite> = applied
        .iter()
        .zip(&from)
        .filter(|(_, p)| **p == position)
        .map(|(r, _)| r)
        .collect();
    let taken: Vec<String> = rewrite
        .rules
        .iter()
        .flat_map(|rule| {
            if rule.models.is_empty() {
                vec![None]
            } else {
                rule.models.iter().map(Some).collect()
            }
        })
        .filter(|model| !mine.iter().any(|r| r.model.as_ref() == *model))
        .map(|model| match model {
            Some(name) => format!("{name:?}"),
            None => "every other model".to_string(),
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let describe = |r: &ModelRewrite| {
        let targets: Vec<String> = r
            .targets
            .iter()
            .map(|t| format!("{} ({})", t.model, t.weight))
            .collect();
        match &r.model {
            Some(model) => format!("{model:?} -> {}", targets.join(", ")),
            None => format!("every other model -> {}", targets.join(", ")),
        }
    };
    if mine.is_empty() {
        return fail(
            c::ACCEPTED,
            CONFLICTED,
            format!(
                "older InferenceModelRewrites of InferencePool {namespace}/{pool} already rewrite {}; nothing of this one applies",
                taken.join(", ")
            ),
            generation,
        );
    }
    let mut message = format!(
        "applied by the picker of InferencePool {namespace}/{pool}: {}",
        mine.iter()
            .map(|r| describe(r))
            .collect::<Vec<_>>()
            .join("; ")
    );
    if !taken.is_empty() {
        message.push_str(&format!(
            "; {} taken by an older rule or InferenceModelRewrite of the pool",
            taken.join(", ")
        ));
    }
    ok(c::ACCEPTED, reason::ACCEPTED, message, generation)
}
