//! The API's one error type. Every error is an RFC 9457 problem document;
//! client errors name what was wrong, internal errors log their whole
//! chain and return a generic body.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("invalid {field}: {detail}")]
    BadRequest { field: String, detail: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, title, field) = match &self {
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "Unauthorized", None),
            ApiError::NotFound { .. } => (StatusCode::NOT_FOUND, "Not Found", None),
            ApiError::BadRequest { field, .. } => (StatusCode::BAD_REQUEST, "Bad Request", Some(field.clone())),
            ApiError::Store(StoreError::Conflict(_)) => (StatusCode::CONFLICT, "Conflict", None),
            ApiError::Store(err) => {
                tracing::error!(error = %err, source = ?std::error::Error::source(err), "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error", None)
            }
        };
        let detail = match &self {
            ApiError::Store(StoreError::Conflict(why)) => why.clone(),
            ApiError::Store(_) => "the server could not complete the request; see its log".to_string(),
            other => other.to_string(),
        };
        let mut body = json!({ "type": "about:blank", "title": title, "status": status.as_u16(), "detail": detail });
        if let Some(field) = field {
            body["field"] = json!(field);
        }
        let mut response = (status, body.to_string()).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, "application/problem+json".parse().expect("static header"));
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static header"));
        }
        response
    }
}

/// Parses a JSON body, naming the offending field (serde's path) on error.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let detail = e.to_string();
        // serde_json reports "unknown field `x`" / "missing field `x`".
        let field = detail.split('`').nth(1).map_or_else(|| "body".to_string(), str::to_string);
        ApiError::BadRequest { field, detail }
    })
}
