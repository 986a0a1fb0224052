//! `/metrics`: Prometheus text format. Counters and histograms come from
//! the `metrics` facade across the crates; every metric is described, and
//! its starting series registered, by [`crate::metrics_catalog`]; the
//! counts of machines, campaigns and campaign nodes by state and each
//! UPS's state are read from the database at scrape.

use std::sync::OnceLock;

use axum::extract::State;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::Routes;
use crate::auth::Viewer;
use crate::error::ApiError;
use crate::metrics_catalog;
use crate::AppState;

/// The process-wide recorder, installed on first use, with the catalog's
/// histogram buckets and every metric described.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let mut builder = PrometheusBuilder::new();
        for (name, buckets) in metrics_catalog::BUCKETS {
            builder = builder
                .set_buckets_for_metric(Matcher::Full((*name).to_string()), buckets)
                .expect("the catalog's buckets are not empty");
        }
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let _ = metrics::set_global_recorder(recorder);
        metrics_catalog::describe_all();
        handle
    })
}

pub(super) fn router() -> Routes {
    Routes::new().route("/metrics", get(render))
}

/// Prometheus text format: every metric in `api::metrics_catalog`.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "meta",
    description = "Role: viewer.",
    responses(
        (status = 200, description = "The metrics", content_type = "text/plain", body = String),
        super::openapi::NeedsToken,
    )
)]
async fn render(_: Viewer, State(state): State<AppState>) -> Result<String, ApiError> {
    let handle = handle();
    metrics_catalog::set_scrape_gauges(&state.store).await?;
    Ok(handle.render())
}
