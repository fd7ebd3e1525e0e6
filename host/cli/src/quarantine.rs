//! When Envoy refuses a configuration anyway: find the objects whose change
//! it refuses, hold them at their last accepted version, and keep applying
//! everything else.
//!
//! The translation refuses every value we know Envoy refuses
//! (`infergate_translate::validate`), so this is the second line: an Envoy
//! with stricter settings than ours, a newer Envoy, a defect of ours. Envoy
//! refuses a whole resource (a listener's route configuration holds every
//! route of every team on it), so without this one refused route would stop
//! every later change on that listener.
//!
//! How: the last snapshot that every connected Envoy took is remembered
//! ([`Guard::accepted`]). When Envoy refuses a newer one, the objects that
//! changed since (the suspects) are held at their accepted version (a new
//! object is left out, a deleted one kept); if Envoy takes that, the suspects
//! are let through again in halves, and a half Envoy refuses is split again,
//! until the objects Envoy refuses are found, one by one. Those stay held
//! (quarantined) until they change again, with Envoy's message in their
//! status; everything else is applied. Each step is one translation and one
//! round trip to Envoy, so k refused objects among n changed take about
//! 2·k·log2(n) steps. If Envoy refuses even the configuration with every
//! suspect held, no change explains the refusal: nothing is held, and the
//! Gateway says Programmed=False with Envoy's message.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use infergate_model::{
    Condition, ConditionStatus, ConditionType, EndpointSlice, Gateway, GatewayClass, GatewayStatus,
    HttpRoute, HttpRouteStatus, InferenceModelRewrite, InferencePool, InferencePoolStatus,
    Namespace, Pod, ReferenceGrant, Service, Snapshot, Statuses, TlsSecret,
};
use infergate_translate::conditions::set;
use infergate_xds::Verdict;

/// Envoy's messages are cut to this many bytes in statuses.
const MAX_MESSAGE_BYTES: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    GatewayClass,
    Gateway,
    HttpRoute,
    ReferenceGrant,
    Service,
    EndpointSlice,
    Pod,
    InferencePool,
    InferenceModelRewrite,
    Secret,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Namespace => "Namespace",
            Kind::GatewayClass => "GatewayClass",
            Kind::Gateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::ReferenceGrant => "ReferenceGrant",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Pod => "Pod",
            Kind::InferencePool => "InferencePool",
            Kind::InferenceModelRewrite => "InferenceModelRewrite",
            Kind::Secret => "Secret",
        })
    }
}

/// One object of a snapshot: kind, namespace (empty when cluster-scoped), name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// The snapshot's object types.
trait Object: Clone + PartialEq + serde::Serialize {
    const KIND: Kind;
    fn names(&self) -> (&str, &str);
    fn generation(&self) -> i64 {
        0
    }
    fn key(&self) -> Key {
        let (namespace, name) = self.names();
        Key {
            kind: Self::KIND,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

macro_rules! namespaced {
    ($($type:ty => $kind:ident),* $(,)?) => {$(
        impl Object for $type {
            const KIND: Kind = Kind::$kind;
            fn names(&self) -> (&str, &str) {
                (&self.meta.namespace, &self.meta.name)
            }
            fn generation(&self) -> i64 {
                self.meta.generation
            }
        }
    )*};
}

namespaced!(
    Gateway => Gateway,
    HttpRoute => HttpRoute,
    ReferenceGrant => ReferenceGrant,
    Service => Service,
    EndpointSlice => EndpointSlice,
    Pod => Pod,
    InferencePool => InferencePool,
    InferenceModelRewrite => InferenceModelRewrite,
    TlsSecret => Secret,
);

impl Object for Namespace {
    const KIND: Kind = Kind::Namespace;
    fn names(&self) -> (&str, &str) {
        ("", &self.name)
    }
}

impl Object for GatewayClass {
    const KIND: Kind = Kind::GatewayClass;
    fn names(&self) -> (&str, &str) {
        ("", &self.name)
    }
    fn generation(&self) -> i64 {
        self.generation
    }
}

/// Runs `$each!(field)` for every object list of a snapshot.
macro_rules! every_list {
    ($each:ident) => {
        $each!(namespaces);
        $each!(gateway_classes);
        $each!(gateways);
        $each!(http_routes);
        $each!(reference_grants);
        $each!(services);
        $each!(endpoint_slices);
        $each!(pods);
        $each!(inference_pools);
        $each!(tls_secrets);
        $each!(inference_model_rewrites);
    };
}

/// Keys of the objects that differ between `before` and `after` (added,
/// changed or removed).
fn changed_list<T: Object>(before: &[T], after: &[T], out: &mut BTreeSet<Key>) {
    let old: BTreeMap<Key, &T> = before.iter().map(|o| (o.key(), o)).collect();
    let new: BTreeMap<Key, &T> = after.iter().map(|o| (o.key(), o)).collect();
    for (key, object) in &new {
        if old.get(key) != Some(object) {
            out.insert(key.clone());
        }
    }
    out.extend(old.keys().filter(|k| !new.contains_key(*k)).cloned());
}

/// Put the `accepted` version of every `held` object of this type into
/// `list`: replace it, add it back if it was deleted, leave it out if new.
fn hold_list<T: Object>(list: &mut Vec<T>, accepted: &[T], held: &BTreeSet<Key>) {
    if !held.iter().any(|k| k.kind == T::KIND) {
        return;
    }
    let old: BTreeMap<Key, &T> = accepted
        .iter()
        .map(|o| (o.key(), o))
        .filter(|(k, _)| held.contains(k))
        .collect();
    let mut placed = BTreeSet::new();
    list.retain_mut(|object| {
        let key = object.key();
        if !held.contains(&key) {
            return true;
        }
        match old.get(&key) {
            Some(previous) => {
                *object = (*previous).clone();
                placed.insert(key);
                true
            }
            None => false,
        }
    });
    for (key, previous) in old {
        if !placed.contains(&key) {
            list.push(previous.clone());
        }
    }
}

/// The object `key` of this type in `list`, as JSON (to notice when it
/// changes again), with its generation.
fn find_list<T: Object>(list: &[T], key: &Key) -> Option<(String, i64)> {
    if key.kind != T::KIND {
        return None;
    }
    list.iter()
        .find(|o| o.key() == *key)
        .map(|o| (serde_json::to_string(o).unwrap_or_default(), o.generation()))
}

fn changed(before: &Snapshot, after: &Snapshot) -> BTreeSet<Key> {
    let mut out = BTreeSet::new();
    macro_rules! each {
        ($field:ident) => {
            changed_list(&before.$field, &after.$field, &mut out)
        };
    }
    every_list!(each);
    out
}

fn hold(snapshot: &mut Snapshot, accepted: &Snapshot, held: &BTreeSet<Key>) {
    macro_rules! each {
        ($field:ident) => {
            hold_list(&mut snapshot.$field, &accepted.$field, held)
        };
    }
    every_list!(each);
}

fn find(snapshot: &Snapshot, key: &Key) -> Option<(String, i64)> {
    macro_rules! each {
        ($field:ident) => {
            if let Some(found) = find_list(&snapshot.$field, key) {
                return Some(found);
            }
        };
    }
    every_list!(each);
    None
}

/// What an Envoy refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The Envoy's node id: the Gateway's "namespace/name".
    pub node: String,
    pub type_url: String,
    pub message: String,
}

impl Refusal {
    fn resource(&self) -> &str {
        let short = self.type_url.rsplit('.').next().unwrap_or(&self.type_url);
        match short {
            "Listener" => "listeners",
            "RouteConfiguration" => "routes",
            "Cluster" => "clusters",
            "ClusterLoadAssignment" => "endpoints",
            other => other,
        }
    }

    /// Envoy's message on one line, without its final full stop (ours
    /// follows), and cut to [`MAX_MESSAGE_BYTES`].
    fn message(&self) -> String {
        let mut message = self
            .message
            .replace(['\r', '\n'], " ")
            .trim_end_matches(['.', ' '])
            .to_string();
        if message.len() > MAX_MESSAGE_BYTES {
            let mut end = MAX_MESSAGE_BYTES;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push_str("...");
        }
        message
    }
}

/// The status the translation gave a quarantined object for its refused
/// version, to report with Envoy's message.
#[derive(Clone, Debug)]
enum Saved {
    Gateway(GatewayStatus),
    Route(HttpRouteStatus),
    Pool(InferencePoolStatus),
}

#[derive(Clone, Debug)]
struct Quarantined {
    /// The refused version as JSON; None when its deletion was refused.
    refused: Option<String>,
    generation: i64,
    refusal: Refusal,
    status: Option<Saved>,
}

/// Finds and holds back what Envoy refuses. Feed it every new input
/// ([`Guard::input`]) and every verdict ([`Guard::verdict`]); translate and
/// publish each snapshot it returns, then report statuses through
/// [`Guard::overlay`].
pub struct Guard {
    /// The last effective snapshot every connected Envoy took (empty
    /// until one took one).
    accepted: Snapshot,
    /// The newest input.
    input: Snapshot,
    /// The input with held objects at their accepted version (None: no
    /// object is held, the input is served as it is).
    effective: Option<Snapshot>,
    quarantined: BTreeMap<Key, Quarantined>,
    /// Suspects not let through in the current step.
    held: BTreeSet<Key>,
    /// Groups of suspects still to let through.
    queue: VecDeque<Vec<Key>>,
    /// The group let through in the current step.
    probe: Option<Vec<Key>>,
    /// The current step holds every suspect.
    baseline: bool,
    /// A snapshot was handed out and its verdict is not in yet.
    awaiting: bool,
    /// Envoy refuses what no change explains.
    unexplained: Option<Refusal>,
}

impl Default for Guard {
    fn default() -> Self {
        Guard::new()
    }
}

impl Guard {
    pub fn new() -> Self {
        Guard {
            accepted: empty_snapshot(),
            input: empty_snapshot(),
            effective: None,
            quarantined: BTreeMap::new(),
            held: BTreeSet::new(),
            queue: VecDeque::new(),
            probe: None,
            baseline: false,
            awaiting: false,
            unexplained: None,
        }
    }

    /// A new input: objects held since an earlier refusal are let through
    /// again if they changed since; any search in progress starts over.
    /// Returns the snapshot to translate and publish.
    pub fn input(&mut self, input: Snapshot) -> &Snapshot {
        self.input = input;
        let input = &self.input;
        self.quarantined.retain(|key, q| {
            let now = find(input, key).map(|(json, _)| json);
            let keep = now == q.refused;
            if !keep {
                tracing::info!("{key} changed since Envoy refused it: trying it again");
            }
            keep
        });
        self.held.clear();
        self.queue.clear();
        self.probe = None;
        self.baseline = false;
        self.unexplained = None;
        self.recompute();
        self.awaiting = true;
        self.current()
    }

    /// The snapshot handed out last.
    pub fn current(&self) -> &Snapshot {
        self.effective.as_ref().unwrap_or(&self.input)
    }

    /// The snapshot handed out last could not be published (its translation
    /// failed): stop searching until the next input.
    pub fn not_published(&mut self) {
        self.awaiting = false;
    }

    pub fn quarantined(&self) -> impl Iterator<Item = &Key> {
        self.quarantined.keys()
    }

    /// Take Envoy's verdict on the snapshot handed out last. `statuses` are
    /// that snapshot's translated statuses. Returns the next snapshot to
    /// translate and publish, if the search goes on.
    pub fn verdict(&mut self, verdict: Verdict, statuses: &Statuses) -> Option<&Snapshot> {
        if !self.awaiting {
            return None;
        }
        match verdict {
            Verdict::Pending => None,
            Verdict::Accepted => {
                self.awaiting = false;
                self.accepted = self.current().clone();
                self.baseline = false;
                if let Some(group) = self.probe.take() {
                    tracing::info!(
                        "Envoy took {}: applied",
                        group
                            .iter()
                            .map(|k| k.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                self.next_step(false)
            }
            Verdict::Rejected {
                node,
                type_url,
                message,
            } => {
                self.awaiting = false;
                let refusal = Refusal {
                    node,
                    type_url,
                    message,
                };
                if self.unexplained.is_some() {
                    // Already searched since the last input: wait for the next.
                    self.unexplained = Some(refusal);
                    return None;
                }
                if self.baseline {
                    tracing::error!(
                        "Envoy {} refuses its {} even with every recent change held back: {}; \
                         no change explains it, so nothing is held",
                        refusal.node,
                        refusal.resource(),
                        refusal.message()
                    );
                    self.held.clear();
                    self.queue.clear();
                    self.baseline = false;
                    self.unexplained = Some(refusal);
                    return self.publish();
                }
                if let Some(mut group) = self.probe.take() {
                    if group.len() == 1 {
                        self.quarantine(group.remove(0), &refusal, statuses);
                    } else {
                        self.held.extend(group.iter().cloned());
                        let second = group.split_off(group.len() / 2);
                        self.queue.push_front(second);
                        self.queue.push_front(group);
                    }
                    return self.next_step(true);
                }
                let suspects: BTreeSet<Key> = changed(&self.accepted, self.current())
                    .into_iter()
                    .filter(|k| !self.quarantined.contains_key(k))
                    .collect();
                match suspects.len() {
                    0 => {
                        tracing::error!(
                            "Envoy {} refuses its {}: {}; no change since it last took the \
                             configuration explains it",
                            refusal.node,
                            refusal.resource(),
                            refusal.message()
                        );
                        self.unexplained = Some(refusal);
                        None
                    }
                    n => {
                        tracing::warn!(
                            "Envoy {} refuses its {}: {}; finding which of the {n} changed \
                             objects it refuses",
                            refusal.node,
                            refusal.resource(),
                            refusal.message()
                        );
                        // First everything held: if Envoy refuses that too,
                        // the changes do not explain the refusal.
                        let mut first: Vec<Key> = suspects.iter().cloned().collect();
                        let second = first.split_off(first.len() / 2);
                        self.queue
                            .extend([first, second].into_iter().filter(|g| !g.is_empty()));
                        self.held = suspects;
                        self.baseline = true;
                        self.publish()
                    }
                }
            }
        }
    }

    /// Let the next group of suspects through, or, when none is left,
    /// publish what the search found if that `changed` anything.
    fn next_step(&mut self, changed: bool) -> Option<&Snapshot> {
        let Some(group) = self.queue.pop_front() else {
            self.held.clear();
            return if changed { self.publish() } else { None };
        };
        for key in &group {
            self.held.remove(key);
        }
        self.probe = Some(group);
        self.publish()
    }

    fn publish(&mut self) -> Option<&Snapshot> {
        self.recompute();
        self.awaiting = true;
        Some(self.current())
    }

    fn recompute(&mut self) {
        let mut held: BTreeSet<Key> = self.quarantined.keys().cloned().collect();
        held.extend(self.held.iter().cloned());
        self.effective = (!held.is_empty()).then(|| {
            let mut snapshot = self.input.clone();
            hold(&mut snapshot, &self.accepted, &held);
            snapshot
        });
    }

    fn quarantine(&mut self, key: Key, refusal: &Refusal, statuses: &Statuses) {
        let found = find(&self.input, &key);
        let served = find(&self.accepted, &key).is_some();
        tracing::error!(
            "Envoy {} refuses the {} made from {key}: {}; {key} is held at {} until it changes, \
             the rest of the configuration is applied",
            refusal.node,
            refusal.resource(),
            refusal.message(),
            if served {
                "the version Envoy took last"
            } else {
                "nothing (left out)"
            }
        );
        let status = match key.kind {
            Kind::Gateway => statuses
                .gateways
                .iter()
                .find(|s| s.gateway.namespace == key.namespace && s.gateway.name == key.name)
                .cloned()
                .map(Saved::Gateway),
            Kind::HttpRoute => statuses
                .http_routes
                .iter()
                .find(|s| s.route.namespace == key.namespace && s.route.name == key.name)
                .cloned()
                .map(Saved::Route),
            Kind::InferencePool => statuses
                .inference_pools
                .iter()
                .find(|s| s.pool.namespace == key.namespace && s.pool.name == key.name)
                .cloned()
                .map(Saved::Pool),
            _ => None,
        };
        self.held.remove(&key);
        self.quarantined.insert(
            key,
            Quarantined {
                refused: found.as_ref().map(|(json, _)| json.clone()),
                generation: found.map(|(_, g)| g).unwrap_or_default(),
                refusal: refusal.clone(),
                status,
            },
        );
    }

    /// Put what Envoy refused into `statuses`: a quarantined HTTPRoute is
    /// not Accepted by its parents, a quarantined InferencePool not by its
    /// Gateways, a quarantined Gateway not Programmed, all with Envoy's
    /// message; an unexplained refusal makes its Gateway not Programmed.
    pub fn overlay(&self, statuses: &mut Statuses) {
        for (key, q) in &self.quarantined {
            let served = find(&self.accepted, key).is_some();
            let message = format!(
                "Envoy refused the {} made from this {}: {}; {}",
                q.refusal.resource(),
                key.kind,
                q.refusal.message(),
                if served {
                    "the version it took last is still served"
                } else {
                    "it is not served"
                }
            );
            let condition = |condition_type, reason: &str| Condition {
                condition_type,
                status: ConditionStatus::False,
                reason: reason.to_string(),
                message: message.clone(),
                observed_generation: q.generation,
            };
            match &q.status {
                Some(Saved::Route(saved)) => {
                    let mut status = saved.clone();
                    for parent in &mut status.parents {
                        set(
                            &mut parent.conditions,
                            condition(ConditionType::Accepted, "UnsupportedValue"),
                        );
                    }
                    statuses.http_routes.retain(|s| s.route != status.route);
                    statuses.http_routes.push(status);
                }
                Some(Saved::Pool(saved)) => {
                    let mut status = saved.clone();
                    for parent in &mut status.parents {
                        set(
                            &mut parent.conditions,
                            condition(ConditionType::Accepted, "NotSupportedByGateway"),
                        );
                    }
                    statuses.inference_pools.retain(|s| s.pool != status.pool);
                    statuses.inference_pools.push(status);
                }
                Some(Saved::Gateway(saved)) => {
                    let mut status = saved.clone();
                    set(
                        &mut status.conditions,
                        condition(ConditionType::Programmed, "Invalid"),
                    );
                    statuses.gateways.retain(|s| s.gateway != status.gateway);
                    statuses.gateways.push(status);
                }
                None => {}
            }
        }
        if let Some(refusal) = &self.unexplained
            && let Some(gateway) = statuses
                .gateways
                .iter_mut()
                .find(|g| format!("{}/{}", g.gateway.namespace, g.gateway.name) == refusal.node)
        {
            let generation = gateway
                .conditions
                .first()
                .map(|c| c.observed_generation)
                .unwrap_or_default();
            set(
                &mut gateway.conditions,
                Condition {
                    condition_type: ConditionType::Programmed,
                    status: ConditionStatus::False,
                    reason: "Invalid".into(),
                    message: format!(
                        "Envoy refused its {}: {}",
                        refusal.resource(),
                        refusal.message()
                    ),
                    observed_generation: generation,
                },
            );
        }
    }
}

/// A snapshot of nothing: what an Envoy that took nothing yet has.
fn empty_snapshot() -> Snapshot {
    infergate_resources::empty_snapshot(infergate_model::Settings {
        default_address: String::new(),
        ..infergate_model::Settings::new("")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use infergate_model::{Label, ObjectRef, ParentRef, RefKind, RouteParentStatus};

    /// Objects are Namespaces here (the guard treats every kind alike);
    /// the simulated Envoy refuses any whose label `bad` is set.
    fn namespace(name: &str, version: &str, bad: bool) -> Namespace {
        let mut labels = vec![Label {
            key: "version".into(),
            value: version.into(),
        }];
        if bad {
            labels.push(Label {
                key: "bad".into(),
                value: "yes".into(),
            });
        }
        Namespace {
            name: name.into(),
            labels,
        }
    }

    fn snapshot(namespaces: Vec<Namespace>) -> Snapshot {
        Snapshot {
            namespaces,
            ..empty_snapshot()
        }
    }

    /// Refuses a namespace labelled `bad`, or labelled `needs: X` while X
    /// does not exist.
    fn envoy(snapshot: &Snapshot) -> Verdict {
        let exists = |name: &str| snapshot.namespaces.iter().any(|n| n.name == name);
        match snapshot.namespaces.iter().find(|n| {
            n.labels
                .iter()
                .any(|l| l.key == "bad" || (l.key == "needs" && !exists(&l.value)))
        }) {
            Some(n) => Verdict::Rejected {
                node: "default/gw".into(),
                type_url: "type.googleapis.com/envoy.config.route.v3.RouteConfiguration".into(),
                message: format!("cannot take {}", n.name),
            },
            None => Verdict::Accepted,
        }
    }

    /// Hand `input` to the guard and answer as Envoy until the guard stops;
    /// returns the served snapshot and how many snapshots Envoy was sent.
    fn run(guard: &mut Guard, input: Snapshot) -> (Snapshot, usize) {
        let statuses = Statuses {
            gateway_classes: vec![],
            gateways: vec![],
            http_routes: vec![],
            inference_pools: vec![],
            inference_model_rewrites: vec![],
        };
        let mut sent = guard.input(input).clone();
        let mut steps = 1;
        loop {
            let verdict = envoy(&sent);
            match guard.verdict(verdict, &statuses) {
                Some(next) => {
                    sent = next.clone();
                    steps += 1;
                    assert!(steps < 1000, "the search ends");
                }
                None => return (sent, steps),
            }
        }
    }

    fn served(snapshot: &Snapshot) -> Vec<String> {
        let mut names: Vec<String> = snapshot
            .namespaces
            .iter()
            .map(|n| format!("{}@{}", n.name, n.labels[0].value))
            .collect();
        names.sort();
        names
    }

    fn held(guard: &Guard) -> Vec<String> {
        guard.quarantined().map(|k| k.name.clone()).collect()
    }

    #[test]
    fn a_refused_change_is_held_at_its_last_accepted_version_and_the_rest_is_applied() {
        let mut guard = Guard::new();
        let (out, _) = run(
            &mut guard,
            snapshot(vec![namespace("a", "1", false), namespace("b", "1", false)]),
        );
        assert_eq!(served(&out), ["a@1", "b@1"]);

        // b changes into something Envoy refuses; a new object c is fine.
        let (out, _) = run(
            &mut guard,
            snapshot(vec![
                namespace("a", "1", false),
                namespace("b", "2", true),
                namespace("c", "1", false),
            ]),
        );
        assert_eq!(served(&out), ["a@1", "b@1", "c@1"]);
        assert_eq!(held(&guard), ["b"]);

        // Later changes to others apply while b stays held.
        let (out, _) = run(
            &mut guard,
            snapshot(vec![
                namespace("a", "2", false),
                namespace("b", "2", true),
                namespace("c", "1", false),
            ]),
        );
        assert_eq!(served(&out), ["a@2", "b@1", "c@1"]);
        assert_eq!(held(&guard), ["b"]);

        // Fixed: b is tried again and served.
        let (out, _) = run(
            &mut guard,
            snapshot(vec![
                namespace("a", "2", false),
                namespace("b", "3", false),
                namespace("c", "1", false),
            ]),
        );
        assert_eq!(served(&out), ["a@2", "b@3", "c@1"]);
        assert!(held(&guard).is_empty());
    }

    #[test]
    fn refused_objects_among_many_changes_are_found_one_by_one() {
        for bad in [vec![0], vec![37], vec![3, 4], vec![0, 63, 64, 99]] {
            let mut guard = Guard::new();
            if bad.len() > 1 {
                run(&mut guard, snapshot(vec![namespace("keep", "1", false)]));
            } // else Envoy has taken nothing yet: every object is a suspect.
            let names: Vec<String> = (0..100).map(|i| format!("n{i:03}")).collect();
            let input: Vec<Namespace> = std::iter::once(namespace("keep", "1", false))
                .chain(
                    names
                        .iter()
                        .enumerate()
                        .map(|(i, name)| namespace(name, "1", bad.contains(&i))),
                )
                .collect();
            let (out, steps) = run(&mut guard, snapshot(input));
            let expected_held: Vec<String> = bad.iter().map(|i| names[*i].clone()).collect();
            assert_eq!(held(&guard), expected_held, "bad {bad:?}");
            assert_eq!(
                out.namespaces.len(),
                101 - bad.len(),
                "every other object is served"
            );
            assert!(envoy(&out) == Verdict::Accepted);
            // 1 + baseline + about 2 log2(100) per refused object.
            assert!(steps <= 2 + 16 * bad.len(), "{steps} steps for {bad:?}");
        }
    }

    #[test]
    fn a_refused_new_object_is_left_out_and_a_refused_deletion_keeps_the_object() {
        let mut guard = Guard::new();
        let mut b = namespace("b", "1", false);
        b.labels.push(Label {
            key: "needs".into(),
            value: "a".into(),
        });
        run(
            &mut guard,
            snapshot(vec![namespace("a", "1", false), b.clone()]),
        );
        // a is deleted although b needs it, and a refused z is added.
        let (out, _) = run(
            &mut guard,
            snapshot(vec![b.clone(), namespace("z", "1", true)]),
        );
        assert_eq!(served(&out), ["a@1", "b@1"], "z is left out, a is kept");
        assert_eq!(held(&guard), ["a", "z"]);
        // z is fixed: it is served; a stays while b needs it.
        let (out, _) = run(&mut guard, snapshot(vec![b, namespace("z", "2", false)]));
        assert_eq!(served(&out), ["a@1", "b@1", "z@2"]);
        assert_eq!(held(&guard), ["a"]);
    }

    #[test]
    fn a_refusal_no_change_explains_holds_nothing_and_is_reported() {
        let mut guard = Guard::new();
        // The first Envoy took a (say, with a laxer runtime)...
        let statuses = |gateway: bool| Statuses {
            gateway_classes: vec![],
            gateways: gateway
                .then(|| GatewayStatus {
                    gateway: ObjectRef {
                        namespace: "default".into(),
                        name: "gw".into(),
                    },
                    addresses: vec![],
                    conditions: vec![Condition {
                        condition_type: ConditionType::Programmed,
                        status: ConditionStatus::True,
                        reason: "Programmed".into(),
                        message: String::new(),
                        observed_generation: 3,
                    }],
                    listeners: vec![],
                })
                .into_iter()
                .collect(),
            http_routes: vec![],
            inference_pools: vec![],
            inference_model_rewrites: vec![],
        };
        guard.input(snapshot(vec![namespace("a", "1", true)]));
        assert!(guard.verdict(Verdict::Accepted, &statuses(false)).is_none());
        // ... a new one refuses it, though a did not change.
        let new = snapshot(vec![namespace("a", "1", true), namespace("b", "1", false)]);
        let sent = guard.input(new).clone();
        let mut sent = sent;
        for step in 0.. {
            assert!(step < 100, "the search ends");
            match guard.verdict(envoy(&sent), &statuses(false)) {
                Some(next) => sent = next.clone(),
                None => break,
            }
        }
        assert!(held(&guard).is_empty());
        assert_eq!(served(&sent), ["a@1", "b@1"], "nothing is held back");
        let mut reported = statuses(true);
        guard.overlay(&mut reported);
        let programmed = &reported.gateways[0].conditions[0];
        assert_eq!(programmed.status, ConditionStatus::False);
        assert!(
            programmed
                .message
                .contains("Envoy refused its routes: cannot take a"),
            "{programmed:?}"
        );
        assert_eq!(programmed.observed_generation, 3);
    }

    #[test]
    fn a_held_route_says_so_in_its_status_with_envoys_message() {
        let route_status = |accepted: ConditionStatus| HttpRouteStatus {
            route: ObjectRef {
                namespace: "team".into(),
                name: "r".into(),
            },
            parents: vec![RouteParentStatus {
                parent_ref: ParentRef {
                    kind: RefKind::Gateway,
                    namespace: None,
                    name: "gw".into(),
                    section_name: None,
                    port: None,
                },
                conditions: vec![Condition {
                    condition_type: ConditionType::Accepted,
                    status: accepted,
                    reason: "Accepted".into(),
                    message: String::new(),
                    observed_generation: 1,
                }],
            }],
        };
        let mut guard = Guard::new();
        let key = Key {
            kind: Kind::HttpRoute,
            namespace: "team".into(),
            name: "r".into(),
        };
        let refusal = Refusal {
            node: "default/gw".into(),
            type_url: "type.googleapis.com/envoy.config.route.v3.RouteConfiguration".into(),
            message: "RE2 program size 120 > max\nallowed".into(),
        };
        let translated = Statuses {
            gateway_classes: vec![],
            gateways: vec![],
            http_routes: vec![route_status(ConditionStatus::True)],
            inference_pools: vec![],
            inference_model_rewrites: vec![],
        };
        guard.quarantine(key, &refusal, &translated);
        let mut reported = translated.clone();
        guard.overlay(&mut reported);
        let accepted = &reported.http_routes[0].parents[0].conditions[0];
        assert_eq!(accepted.status, ConditionStatus::False);
        assert_eq!(accepted.reason, "UnsupportedValue");
        assert_eq!(
            accepted.message,
            "Envoy refused the routes made from this HTTPRoute: RE2 program size 120 > max allowed; it is not served"
        );
    }
}
