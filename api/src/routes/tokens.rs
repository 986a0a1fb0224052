//! `/api/v1/tokens` and `/api/v1/audit`: the admin-only resources.
//!
//! A token's secret is returned once, by the `POST` that creates it, and
//! stored only as its SHA-256 digest; listing shows everything else. The
//! appliance's own admin token (`api.token` or `data_dir/admin-token`) is
//! configuration, not a row: it is neither listed nor revocable here.
//! Checking tokens is `auth`'s; writing the audit log is `audit`'s.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::machines::{limit, Page};
use super::Routes;
use crate::auth::{Admin, Role, ADMIN_TOKEN_ID};
use crate::error::{parse_json, ApiError};
use crate::store::{now_ms, StoreError};
use crate::AppState;

pub(super) fn router() -> Routes {
    Routes::new()
        .route("/api/v1/tokens", get(list).post(create))
        .route("/api/v1/tokens/{id}", delete(revoke))
        .route("/api/v1/audit", get(audit))
}

/// The longest lifetime a token may be given: ten years.
const MAX_EXPIRES_IN_SECS: u64 = 10 * 365 * 24 * 3600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    /// Who or what holds it (`ci`, `alice`): shown in listings and the audit log.
    name: String,
    role: Role,
    /// Absent: the token never expires.
    expires_in_secs: Option<u64>,
}

fn bad(field: &str, detail: impl Into<String>) -> ApiError {
    ApiError::BadRequest { field: field.into(), detail: detail.into() }
}

/// `POST /api/v1/tokens`: 201 with the token and its `secret`, shown this
/// once.
async fn create(Admin(caller): Admin, State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let req: NewToken = parse_json(&body)?;
    let name = req.name.trim();
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(bad("name", "1 to 64 characters, no control characters"));
    }
    if name == ADMIN_TOKEN_ID || name == "anonymous" {
        return Err(bad("name", format!("{name:?} is reserved for the audit log")));
    }
    let expires_at_ms = match req.expires_in_secs {
        None => None,
        Some(secs @ 1..=MAX_EXPIRES_IN_SECS) => Some(now_ms() + secs as i64 * 1000),
        Some(secs) => return Err(bad("expires_in_secs", format!("{secs} is not in 1..={MAX_EXPIRES_IN_SECS}"))),
    };
    let (token, secret) = state.store.create_api_token(name, req.role, &caller.name, expires_at_ms).await?;
    tracing::info!(token = token.id, name = token.name, role = %token.role, by = caller.name, "API token created");
    let mut body = serde_json::to_value(&token).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    body["secret"] = json!(secret);
    Ok((StatusCode::CREATED, [(header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
}

/// `GET /api/v1/tokens`: every token, expired ones included; never a secret.
async fn list(_: Admin, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "tokens": state.store.api_tokens().await? })))
}

/// `DELETE /api/v1/tokens/{id}`: 204; the token is refused from then on.
async fn revoke(
    Admin(caller): Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if id == ADMIN_TOKEN_ID {
        return Err(StoreError::Conflict(
            "the appliance's admin token is configuration (api.token or data_dir/admin-token); change it there".into(),
        )
        .into());
    }
    if !state.store.revoke_api_token(&id).await? {
        return Err(ApiError::NotFound { what: format!("token {id}") });
    }
    tracing::info!(token = id, by = caller.name, "API token revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/audit?after=&limit=`: audit entries after `after`, oldest
/// first.
async fn audit(_: Admin, State(state): State<AppState>, Query(page): Query<Page>) -> Result<Json<Value>, ApiError> {
    let entries = state.store.audit(page.after.as_deref(), limit(&page)?).await?;
    Ok(Json(json!({ "entries": entries })))
}

#[cfg(test)]
#[path = "tokens_tests.rs"]
mod tests;
