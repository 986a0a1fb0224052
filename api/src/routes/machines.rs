//! `/api/v1/machines` and `/api/v1/events`.

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::Routes;
use crate::auth::Viewer;
use crate::error::ApiError;
use crate::store::Machine;
use crate::AppState;

pub(super) fn router() -> Routes {
    Routes::new()
        .route("/api/v1/machines", get(list))
        .route("/api/v1/machines/{id}", get(show))
        .route("/api/v1/machines/{id}/events", get(machine_events))
        .route("/api/v1/events", get(all_events))
}

async fn list(_: Viewer, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "machines": state.store.machines().await? })))
}

/// `{id}` is the machine id or any of its MACs.
pub(super) async fn find(state: &AppState, id_or_mac: &str) -> Result<Machine, ApiError> {
    let id = match inventory::inband::normalize_mac(id_or_mac) {
        Some(mac) => state.store.machine_id_by_mac(&mac).await?,
        None => Some(id_or_mac.to_string()),
    };
    let machine = match id {
        Some(id) => state.store.machine(&id).await?,
        None => None,
    };
    machine.ok_or_else(|| ApiError::NotFound { what: format!("machine {id_or_mac}") })
}

async fn show(_: Viewer, State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Machine>, ApiError> {
    Ok(Json(find(&state, &id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Page {
    /// Return entries after this id.
    pub after: Option<String>,
    pub limit: Option<i64>,
}

pub(super) fn limit(page: &Page) -> Result<i64, ApiError> {
    match page.limit.unwrap_or(100) {
        n @ 1..=1000 => Ok(n),
        n => Err(ApiError::BadRequest { field: "limit".into(), detail: format!("{n} is not in 1..=1000") }),
    }
}

async fn machine_events(
    _: Viewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    let machine = find(&state, &id).await?;
    let events = state.store.events(Some(&machine.id), page.after.as_deref(), limit(&page)?).await?;
    Ok(Json(json!({ "events": events })))
}

async fn all_events(
    _: Viewer,
    State(state): State<AppState>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    let events = state.store.events(None, page.after.as_deref(), limit(&page)?).await?;
    Ok(Json(json!({ "events": events })))
}

#[cfg(test)]
mod tests {
    use crate::routes::test_support::{app, get};
    use axum::http::StatusCode;

    #[tokio::test]
    async fn machines_need_the_admin_token() {
        let t = app().await;
        assert_eq!(get(&t.operator, "/api/v1/machines", None).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(get(&t.operator, "/api/v1/machines", Some("wrong")).await.0, StatusCode::UNAUTHORIZED);
        let (status, body) = get(&t.operator, "/api/v1/machines", Some(&t.admin)).await;
        assert_eq!((status, body["machines"].as_array().unwrap().len()), (StatusCode::OK, 0));
        assert_eq!(get(&t.operator, "/healthz", None).await.0, StatusCode::OK, "health needs no token");
    }

    #[tokio::test]
    async fn unknown_machine_is_a_404_problem() {
        let t = app().await;
        let (status, body) = get(&t.operator, "/api/v1/machines/52:54:00:00:00:99", Some(&t.admin)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["status"], 404);
        let (status, body) = get(&t.operator, "/api/v1/events?limit=0", Some(&t.admin)).await;
        assert_eq!((status, body["field"].as_str()), (StatusCode::BAD_REQUEST, Some("limit")));
    }
}
