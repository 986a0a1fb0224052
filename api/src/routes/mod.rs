//! HTTP routes, one module per resource.
//!
//! Every operator route is registered through [`Routes`], which notes its
//! path template, so the route-table test (`roles_tests`) sees every route
//! and fails when one is added without a role in its table. The operator
//! router is wrapped in the audit layer ([`crate::audit`]), which resolves
//! the caller's token and records every mutating request.

mod agent;
mod bmcs;
mod boot;
mod campaigns;
mod confine;
mod deploy;
mod events;
pub(crate) mod firmware;
mod images;
mod machines;
mod metrics;
mod node;
pub mod openapi;
mod tokens;
mod ups;

pub use boot::GrubScripts;
pub use images::resume_imports;
pub use metrics::handle as metrics_handle;
pub use ups::enrol_configured as enrol_configured_ups;

use axum::routing::{get, MethodRouter};
use axum::Router;

use crate::AppState;

/// Operator routes being registered, with their path templates noted.
pub(crate) struct Routes {
    router: Router<AppState>,
    paths: Vec<&'static str>,
}

impl Routes {
    pub fn new() -> Routes {
        Routes { router: Router::new(), paths: Vec::new() }
    }

    /// As [`Router::route`].
    pub fn route(mut self, path: &'static str, methods: MethodRouter<AppState>) -> Routes {
        self.router = self.router.route(path, methods);
        self.paths.push(path);
        self
    }

    /// As [`Router::merge`].
    pub fn merge(mut self, other: Routes) -> Routes {
        self.router = self.router.merge(other.router);
        self.paths.extend(other.paths);
        self
    }
}

/// Every operator route: health, machines, events, deploys, images, nodes
/// and clusters, BMCs and UPSes, tokens, the audit log, metrics.
pub(crate) fn operator_routes() -> Routes {
    Routes::new()
        .route("/healthz", get(health))
        .merge(machines::router())
        .merge(events::router())
        .merge(deploy::router())
        .merge(images::router())
        .merge(node::operator_router())
        .merge(bmcs::router())
        .merge(ups::router())
        .merge(firmware::router())
        .merge(campaigns::router())
        .merge(tokens::router())
        .merge(metrics::router())
        .merge(openapi::router())
}

/// The operator API (`api.listen`), behind the audit layer.
pub fn operator_router(state: AppState) -> Router {
    operator_routes()
        .router
        // Before the layers, so a POST to no route is audited like any other.
        .fallback(crate::extract::no_route)
        // Inside the audit layer: it needs the caller the audit layer resolves.
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::idempotency::layer))
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::audit::layer))
        .layer(axum::extract::DefaultBodyLimit::max(crate::extract::MAX_JSON_BODY))
        .with_state(state)
        // Outermost: every error response leaves as a problem document.
        .layer(axum::middleware::from_fn(crate::extract::problems))
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// The provisioning face (`provisioning.address:http_port`): iPXE scripts,
/// ramdisk files and the agent endpoints.
pub fn boot_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health))
        .merge(boot::router(&state))
        .merge(images::boot_router())
        .merge(firmware::boot_router())
        .merge(agent::router())
        .merge(node::agent_router())
        .layer(axum::middleware::from_fn_with_state(state.clone(), sign_agent_answers))
        .with_state(state)
        .layer(axum::middleware::from_fn(crate::metrics_catalog::count_boot_http))
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// The largest answer signed; agents' instructions are a few KiB.
const MAX_SIGNED_BYTES: usize = 1 << 20;

/// Signs the answer to every request that carries an agent's nonce
/// (`wire::NONCE_HEADER`) with the appliance's key, so an agent that pinned
/// it acts only on this appliance's answer to that very request.
async fn sign_agent_answers(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use ed25519_dalek::Signer;
    let nonce = request
        .headers()
        .get(wire::NONCE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|n| wire::valid_nonce(n))
        .map(str::to_string);
    let response = next.run(request).await;
    let (Some(nonce), Some(boot)) = (nonce, &state.boot) else { return response };
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_SIGNED_BYTES).await else {
        return crate::error::problem(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "answer too large to sign");
    };
    let signature = boot.signer.sign(&wire::signed_bytes(&nonce, &bytes));
    if let Ok(value) = hex::encode(signature.to_bytes()).parse() {
        parts.headers.insert(wire::SIGNATURE_HEADER, value);
    }
    (parts, axum::body::Body::from(bytes)).into_response()
}

/// The appliance's health: whether its database answers.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Health {
    /// `ok`, or `database unreachable`.
    status: &'static str,
}

/// Whether the appliance can serve: its database answers.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "health",
    tag = "meta",
    description = "No token needed.",
    security(()),
    responses(
        (status = 200, description = "The database answers", body = Health),
        (status = 503, description = "The database does not answer", body = Health),
    )
)]
async fn health(axum::extract::State(state): axum::extract::State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match state.store.ping().await {
        Ok(()) => axum::Json(Health { status: "ok" }).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "health check: database unreachable");
            (axum::http::StatusCode::SERVICE_UNAVAILABLE, axum::Json(Health { status: "database unreachable" }))
                .into_response()
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support;

#[cfg(test)]
mod roles_tests;

#[cfg(test)]
mod input_tests;
