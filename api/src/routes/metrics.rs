//! `/metrics`: Prometheus text format. Counters come from the `metrics`
//! facade across the crates; machine counts by state are read at scrape.

use std::sync::OnceLock;

use axum::extract::State;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::Routes;
use crate::auth::Viewer;
use crate::error::ApiError;
use crate::lifecycle::ALL_STATES;
use crate::AppState;

/// The process-wide recorder, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

pub(super) fn router() -> Routes {
    Routes::new().route("/metrics", get(render))
}

async fn render(_: Viewer, State(state): State<AppState>) -> Result<String, ApiError> {
    let counts = state.store.count_by_state().await?;
    for s in ALL_STATES {
        let n = counts.get(&s).copied().unwrap_or(0);
        metrics::gauge!("slipway_machines", "state" => s.as_str()).set(n as f64);
    }
    Ok(handle().render())
}
