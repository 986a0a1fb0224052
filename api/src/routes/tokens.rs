//! `/api/v1/tokens` and `/api/v1/audit`: the admin-only resources.
//!
//! A token's secret is returned once, by the `POST` that creates it, and
//! stored only as its SHA-256 digest; listing shows everything else. The
//! appliance's own admin token (`api.token` or `data_dir/admin-token`) is
//! configuration, not a row: it is neither listed nor revocable here.
//! Checking tokens is `auth`'s; writing the audit log is `audit`'s.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::machines::{limit, Page};
use super::Routes;
use crate::auth::{Admin, Role, ADMIN_TOKEN_ID};
use crate::error::ApiError;
use crate::extract::{JsonBody, Query};
use crate::AppState;
use store::StoreError;

pub(super) fn router() -> Routes {
    Routes::new()
        .route("/api/v1/tokens", get(list).post(create))
        .route("/api/v1/tokens/{id}", delete(revoke))
        .route("/api/v1/audit", get(audit))
}

/// The longest lifetime a token may be given: ten years.
const MAX_EXPIRES_IN_SECS: u64 = 10 * 365 * 24 * 3600;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "ci", "role": "operator", "expires_in_secs": 2592000}))]
pub(super) struct NewToken {
    /// Who or what holds it (`ci`, `alice`): shown in listings and the audit log.
    #[schema(min_length = 1, max_length = 64)]
    name: String,
    role: Role,
    /// Absent: the token never expires.
    #[schema(minimum = 1, maximum = 315_360_000)]
    expires_in_secs: Option<u64>,
}

fn bad(field: &str, detail: impl Into<String>) -> ApiError {
    ApiError::BadRequest { field: field.into(), detail: detail.into() }
}

/// A token as created: with its secret, shown this once.
#[derive(Serialize, ToSchema)]
pub(super) struct CreatedToken {
    #[serde(flatten)]
    pub token: store::tokens::ApiToken,
    /// The bearer token itself; only its digest is kept.
    pub secret: String,
}

/// Every token, expired ones included; never a secret.
#[derive(Serialize, ToSchema)]
pub(super) struct TokenList {
    pub tokens: Vec<store::tokens::ApiToken>,
}

/// Audit entries, oldest first.
#[derive(Serialize, ToSchema)]
pub(super) struct AuditPage {
    pub entries: Vec<store::tokens::AuditEntry>,
}

/// `POST /api/v1/tokens`: 201 with the token and its `secret`, shown this
/// once.
#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    operation_id = "create_token",
    tag = "tokens",
    description = "Role: admin. Name: 1-64 characters (trimmed), no control characters, not `admin-token` or \
        `anonymous`.",
    request_body = NewToken,
    responses(
        (status = 201, description = "The token with its secret", body = CreatedToken),
        super::openapi::NeedsRole, super::openapi::TakesJson,
    )
)]
async fn create(
    Admin(caller): Admin,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<NewToken>,
) -> Result<Response, ApiError> {
    let name = req.name.trim();
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(bad("name", "1 to 64 characters, no control characters"));
    }
    if name == ADMIN_TOKEN_ID || name == "anonymous" {
        return Err(bad("name", format!("{name:?} is reserved for the audit log")));
    }
    let expires_at_ms = match req.expires_in_secs {
        None => None,
        Some(secs @ 1..=MAX_EXPIRES_IN_SECS) => Some(state.store.now_ms() + secs as i64 * 1000),
        Some(secs) => return Err(bad("expires_in_secs", format!("{secs} is not in 1..={MAX_EXPIRES_IN_SECS}"))),
    };
    let (token, secret) = state.store.create_api_token(name, req.role, &caller.name, expires_at_ms).await?;
    tracing::info!(token = token.id, name = token.name, role = %token.role, by = caller.name, "API token created");
    Ok((StatusCode::CREATED, [(header::CACHE_CONTROL, "no-store")], Json(CreatedToken { token, secret }))
        .into_response())
}

/// `GET /api/v1/tokens`: every token, expired ones included; never a secret.
#[utoipa::path(
    get,
    path = "/api/v1/tokens",
    operation_id = "list_tokens",
    tag = "tokens",
    description = "Role: admin.",
    responses(
        (status = 200, description = "Every token", body = TokenList),
        super::openapi::NeedsRole,
    )
)]
async fn list(_: Admin, State(state): State<AppState>) -> Result<Json<TokenList>, ApiError> {
    Ok(Json(TokenList { tokens: state.store.api_tokens().await? }))
}

/// `DELETE /api/v1/tokens/{id}`: 204; the token is refused from then on.
#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{id}",
    operation_id = "revoke_token",
    tag = "tokens",
    description = "Role: admin. The appliance's own admin token is configuration and cannot be revoked (409).",
    params(("id" = String, Path, description = "The token's id")),
    responses(
        (status = 204, description = "Revoked"),
        super::openapi::NeedsRole,
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
    )
)]
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
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    operation_id = "list_audit",
    tag = "tokens",
    description = "Role: admin.",
    params(Page),
    responses(
        (status = 200, description = "A page of audit entries", body = AuditPage),
        (status = 400, response = super::openapi::BadRequest),
        super::openapi::NeedsRole,
    )
)]
async fn audit(_: Admin, State(state): State<AppState>, Query(page): Query<Page>) -> Result<Json<AuditPage>, ApiError> {
    let entries = state.store.audit(page.after.as_deref(), limit(&page)?).await?;
    Ok(Json(AuditPage { entries }))
}

#[cfg(test)]
#[path = "tokens_tests.rs"]
mod tests;
