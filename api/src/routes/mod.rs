//! HTTP routes, one module per resource.

mod agent;
mod bmcs;
mod boot;
mod deploy;
mod images;
mod machines;
mod metrics;
mod node;
mod ups;

pub use metrics::handle as metrics_handle;

use axum::routing::get;
use axum::Router;

use crate::AppState;

/// The operator API (`api.listen`): health, machines, events, metrics.
pub fn operator_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health))
        .merge(machines::router())
        .merge(deploy::router())
        .merge(images::router())
        .merge(node::operator_router())
        .merge(bmcs::router())
        .merge(ups::router())
        .merge(metrics::router())
        .with_state(state)
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// The provisioning face (`provisioning.address:http_port`): iPXE scripts,
/// ramdisk files and the agent endpoints.
pub fn boot_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health))
        .merge(boot::router(&state))
        .merge(images::boot_router())
        .merge(agent::router())
        .merge(node::agent_router())
        .with_state(state)
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

async fn health(axum::extract::State(state): axum::extract::State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match state.store.ping().await {
        Ok(()) => axum::Json(serde_json::json!({ "status": "ok" })).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "health check: database unreachable");
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({ "status": "database unreachable" })),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support;
