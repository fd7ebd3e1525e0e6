//! infergate's translation: Gateway API and InferencePool resources in, an
//! Envoy-shaped IR and every status condition out.
//!
//! The whole crate is a pure function of its [`Snapshot`]: no I/O, no clock,
//! no randomness, so the same input always yields the same output. It compiles
//! natively (fast tests, the `translate` command) and to WebAssembly, where the
//! `infergate-guest` crate exports it as the translation component.
//!
//! The stages, in the order they run, each in its own module:
//! 1. [`index`]: look-up tables over the snapshot;
//! 2. [`gateways`]: which GatewayClasses and Gateways are ours, and their listeners;
//! 3. [`routes`]: HTTPRoutes compiled (rules checked with [`validate`]) and
//!    attached to listeners; their backendRefs resolved through the
//!    [`backends`] kinds: core Services ([`services`]) and, with the inference
//!    extension, InferencePools ([`inference`]), both checking references
//!    with [`refs`];
//! 4. [`assemble`]: listeners, virtual hosts and routes in precedence order,
//!    with routing by the model a request body names ([`models`]);
//! 5. statuses: Gateways and routes from the stages above, InferencePools
//!    from the uses attachment recorded ([`inference::pool_statuses`]), and
//!    the pools' InferenceModelRewrites ([`rewrites`]).

pub mod assemble;
pub mod backends;
pub mod conditions;
pub mod gateways;
pub mod hostname;
pub mod index;
pub mod inference;
pub mod models;
pub mod refs;
pub mod rewrites;
pub mod routes;
pub mod selector;
pub mod services;
pub mod tls;
pub mod validate;

pub use infergate_model as model;
use infergate_model::{Output, Snapshot, Statuses, TranslateError};

/// Translate a whole snapshot.
///
/// Problems with individual objects are reported in their statuses and never
/// fail the call; an `Err` means the snapshot itself is unusable.
pub fn translate(snapshot: &Snapshot) -> Result<Output, TranslateError> {
    if snapshot.settings.controller_name.is_empty() {
        return Err(TranslateError {
            message:
                "settings.controller-name is empty; the host must say which GatewayClasses are ours"
                    .into(),
        });
    }
    let index = index::Index::new(snapshot);
    let mut gateways = gateways::evaluate(&index);
    let routes = routes::attach_all(&index, &mut gateways, backend_kinds(snapshot));
    let gateway_irs = assemble::gateway_irs(
        &gateways,
        &routes,
        snapshot.settings.model_routing_max_body_bytes,
    );

    let (inference_pools, managed_pickers, inference_model_rewrites) =
        if snapshot.settings.inference_extension {
            (
                inference::pool_statuses(&index, &routes.backend_uses, &routes.clusters),
                inference::managed_pickers(&index, &routes.backend_uses),
                rewrites::statuses(&index, &routes.backend_uses),
            )
        } else {
            (Vec::new(), Vec::new(), Vec::new())
        };
    let statuses = Statuses {
        gateway_classes: gateways.class_statuses.clone(),
        gateways: gateways.gateways.iter().map(|g| g.status()).collect(),
        http_routes: routes.statuses,
        inference_pools,
        inference_model_rewrites,
    };
    Ok(Output {
        gateways: gateway_irs,
        statuses,
        managed_pickers,
    })
}

/// The backend kinds this translation serves: core Services always,
/// InferencePools when the inference extension is on (when it is off, a
/// reference to one is refused with a hint).
fn backend_kinds(snapshot: &Snapshot) -> Vec<Box<dyn backends::BackendKind>> {
    let pools: Box<dyn backends::BackendKind> = if snapshot.settings.inference_extension {
        Box::new(inference::InferencePoolBackend)
    } else {
        Box::new(inference::DisabledInferencePools)
    };
    vec![Box::new(services::ServiceBackend), pools]
}
