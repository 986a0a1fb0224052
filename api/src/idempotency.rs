//! `Idempotency-Key` on the POSTs that start work: deploy, release,
//! power, lifecycle actions, campaign creation and BMC enrolment
//! ([`ROUTES`]). A middleware layer inside the audit layer, so no handler
//! can forget it and the handlers stay unaware of it.
//!
//! The first request with a key claims it (per caller token, concrete
//! path and key) and its response, status and body, is stored; a repeat
//! with the same body gets the stored response (`Idempotent-Replayed:
//! true`) and nothing runs again; the same key with another body is 422;
//! a repeat while the first still runs is 409. A server error (5xx) or a
//! refused token (401, 403) stores nothing, so the request can be retried.
//! Keys expire after 24 h. Requests without the header, without a valid
//! token, or to other routes pass through untouched.

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::auth::Authn;
use crate::error::{problem, ApiError};
use crate::AppState;
use store::idempotency::{Claim, KeyScope};

/// The route templates (POST) that honour `Idempotency-Key`.
pub const ROUTES: &[&str] = &[
    "/api/v1/machines/{id}/deploy",
    "/api/v1/machines/{id}/release",
    "/api/v1/machines/{id}/power",
    "/api/v1/machines/{id}/actions/{action}",
    "/api/v1/campaigns",
    "/api/v1/bmcs",
];

pub const HEADER: &str = "idempotency-key";
/// The longest key accepted.
const MAX_KEY: usize = 255;
/// Request bodies buffered to hash them; the routes above take small JSON.
const MAX_BODY: usize = 1 << 20;

/// The layer: `axum::middleware::from_fn_with_state(state, idempotency::layer)`.
pub async fn layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let applies = request.method() == Method::POST
        && request.extensions().get::<MatchedPath>().is_some_and(|m| ROUTES.contains(&m.as_str()));
    let Some(key) = request.headers().get(HEADER).filter(|_| applies).cloned() else {
        return next.run(request).await;
    };
    let Some(Authn::Valid(caller)) = request.extensions().get::<Authn>().cloned() else {
        return next.run(request).await;
    };
    let key = match key.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= MAX_KEY => k.to_string(),
        _ => {
            let detail = format!("1 to {MAX_KEY} visible ASCII characters");
            return ApiError::BadRequest { field: "Idempotency-Key".into(), detail }.into_response();
        }
    };
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return problem(StatusCode::PAYLOAD_TOO_LARGE, format!("a request body over {MAX_BODY} bytes"));
    };
    let route = format!("POST {}", parts.uri.path());
    let scope = KeyScope { token_id: &caller.token_id, route: &route, key: &key };
    let claim = match state.store.claim_idempotency(&scope, &hex::encode(Sha256::digest(&bytes))).await {
        Ok(claim) => claim,
        Err(err) => return ApiError::from(err).into_response(),
    };
    match claim {
        Claim::Claimed => {}
        Claim::Mismatch => {
            return problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "this Idempotency-Key was used with another request body; use a new key",
            )
        }
        Claim::InProgress => {
            return problem(StatusCode::CONFLICT, "a request with this Idempotency-Key is still running; retry later")
        }
        Claim::Replay { status, content_type, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let mut response = (status, body).into_response();
            if let Some(ct) = content_type.and_then(|ct| HeaderValue::from_str(&ct).ok()) {
                response.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            return response;
        }
    }
    let response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    let status = response.status();
    let keep = !(status.is_server_error() || matches!(status.as_u16(), 401 | 403 | 429));
    let (resp_parts, resp_body) = response.into_parts();
    let stored = match axum::body::to_bytes(resp_body, usize::MAX).await {
        Ok(b) => b,
        Err(err) => {
            tracing::error!(error = %err, "reading a response to store it under its Idempotency-Key");
            if let Err(err) = state.store.abandon_idempotency(&scope).await {
                tracing::error!(error = %err, "forgetting an Idempotency-Key");
            }
            return problem(StatusCode::INTERNAL_SERVER_ERROR, "the response could not be read; see the server log");
        }
    };
    let text = std::str::from_utf8(&stored).ok().filter(|_| keep);
    let content_type = resp_parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let saved = match text {
        Some(text) => state.store.complete_idempotency(&scope, status.as_u16(), content_type, text).await,
        None => state.store.abandon_idempotency(&scope).await,
    };
    if let Err(err) = saved {
        // The work is done and the caller gets its answer; a repeat may
        // find the key still claimed (409) until it expires.
        tracing::error!(error = %err, key, route, "storing an Idempotency-Key's response failed");
    }
    Response::from_parts(resp_parts, Body::from(stored))
}

/// The header as the OpenAPI document describes it, on each route of
/// [`ROUTES`]: `params(("id" = ..), idempotency::KeyParam)`.
pub struct KeyParam;

impl utoipa::IntoParams for KeyParam {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::{ObjectBuilder, Required, Type};
        let schema = ObjectBuilder::new()
            .schema_type([Type::String, Type::Null].into_iter().collect::<utoipa::openapi::schema::SchemaType>())
            .min_length(Some(1))
            .max_length(Some(MAX_KEY));
        vec![ParameterBuilder::new()
            .name("Idempotency-Key")
            .parameter_in(ParameterIn::Header)
            .description(Some("Run this request at most once (24 h, per token and path)"))
            .required(Required::False)
            .schema(Some(schema))
            .build()]
    }
}
