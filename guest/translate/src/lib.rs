//! infergate's translation: Gateway API and InferencePool resources in, an
//! Envoy-shaped IR and every status condition out.
//!
//! The whole crate is a pure function of its [`Snapshot`]: no I/O, no clock,
//! no randomness, so the same input always yields the same output. It compiles
//! natively (fast tests, the `translate` command) and to WebAssembly, where the
//! `infergate-guest` crate exports it as the translation component.
//!
//! The stages, each in its own module:
//! 1. [`index`]: look-up tables over the snapshot;
//! 2. [`gateways`]: which GatewayClasses and Gateways are ours, and their listeners;
//! 3. [`routes`]: HTTPRoute attachment to listeners, rule validation;
//! 4. [`backends`]: backendRef resolution (Services; InferencePools live in
//!    the inference plugin);
//! 5. [`assemble`]: listeners, virtual hosts and routes in precedence order.

pub mod assemble;
pub mod backends;
pub mod conditions;
pub mod gateways;
pub mod hostname;
pub mod index;
pub mod inference;
pub mod routes;
pub mod selector;
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
    let routes = routes::attach_all(&index, &mut gateways);
    let gateway_irs = assemble::gateway_irs(&gateways, &routes);

    let inference_pools = if snapshot.settings.inference_extension {
        inference::pool_statuses(&index, &routes)
    } else {
        Vec::new()
    };
    let statuses = Statuses {
        gateway_classes: gateways.class_statuses.clone(),
        gateways: gateways.gateways.iter().map(|g| g.status()).collect(),
        http_routes: routes.statuses,
        inference_pools,
    };
    Ok(Output {
        gateways: gateway_irs,
        statuses,
    })
}
