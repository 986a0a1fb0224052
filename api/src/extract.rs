//! Request extractors whose rejections are the API's problem documents,
//! and the layer that turns every other error response into one.
//!
//! axum's own `Json`, `Query` and `Path` reject with `text/plain` bodies
//! that do not say which field was wrong. [`JsonBody`] and [`Query`] name
//! the field by its path (through [`crate::error`]); [`problems`] catches
//! what no handler produced (an unknown route, a method the route lacks, a
//! path that is not UTF-8) and answers it as `application/problem+json`
//! too, so a client parses one error shape whatever went wrong.
//!
//! Deliberately not here: what a valid value is (handlers check that, with
//! the field to blame) and the streamed uploads (`PUT .../content`,
//! `PUT /api/v1/firmware/{name}`), which read their bodies themselves.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::error::{named, parse_json, problem_with_field, ApiError};

/// The largest JSON request body (`413` beyond it). The biggest real ones
/// are deploy requests with cloud-init user-data, a few KiB.
pub const MAX_JSON_BODY: usize = 1 << 20;

/// A JSON request body. Refuses (with a problem naming the field):
/// a `Content-Type` that is not JSON (415), a body over
/// [`MAX_JSON_BODY`] (413), malformed JSON, a missing or unknown field
/// or a value of the wrong type (400). An empty body reads as `null`, so
/// `JsonBody<Option<T>>` takes an optional body.
///
/// `Content-Type` may be absent or `application/x-www-form-urlencoded`
/// as well as `application/json` (or `application/*+json`): that is
/// what `curl -d` sends, and the README's examples use it.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

/// Whether a request body with this `Content-Type` is read as JSON.
fn json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else { return Ok(()) };
    let essence = value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
        || essence == "application/x-www-form-urlencoded";
    if json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType { field: "Content-Type".into(), detail: "send application/json".into() })
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        json_content_type(req.headers())?;
        let too_large = || ApiError::PayloadTooLarge {
            field: "body".into(),
            detail: format!("a JSON body is at most {MAX_JSON_BODY} bytes"),
        };
        let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_JSON_BODY as u64) {
            return Err(too_large());
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                ApiError::BadRequest { field: "body".into(), detail: rejection.body_text() }
            }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return parse_json(b"null")
                .map(JsonBody)
                .map_err(|_| ApiError::BadRequest { field: "body".into(), detail: "a JSON body is required".into() });
        }
        parse_json(&bytes).map(JsonBody)
    }
}

/// The query string, deserialized into `T`, naming the parameter that was
/// wrong (unknown, repeated, of the wrong type).
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de).map(Query).map_err(|e| named(e, "query"))
    }
}

/// Responses longer than this are not read into a problem's detail.
const MAX_DETAIL: usize = 4096;

/// The layer over the operator router: an error response (4xx, 5xx) that
/// is not a problem document already becomes one, keeping its status and
/// headers and its text as the detail. (axum adds `Allow` to a 405 after
/// this layer, around each route.)
pub async fn problems(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let response = next.run(request).await;
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_DETAIL).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let detail = match (status, text.is_empty()) {
        (StatusCode::NOT_FOUND, true) => "no such route".to_string(),
        (StatusCode::METHOD_NOT_ALLOWED, true) => format!("this route does not take {method}; see Allow"),
        (_, true) => status.canonical_reason().unwrap_or("error").to_string(),
        (_, false) => text,
    };
    // A path that did not decode is the only rejection left to axum.
    let field = (status == StatusCode::BAD_REQUEST).then_some("path");
    let fresh = problem_with_field(status, field, detail);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(header::CONTENT_TYPE, fresh.headers()[header::CONTENT_TYPE].clone());
    let body = axum::body::to_bytes(fresh.into_body(), usize::MAX).await.unwrap_or_default();
    Response::from_parts(parts, Body::from(body))
}

/// The operator router's fallback: an unknown route is a 404 problem.
pub async fn no_route() -> Response {
    ApiError::NotFound { what: "route".into() }.into_response()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn json_content_types() {
        let mut headers = HeaderMap::new();
        assert!(json_content_type(&headers).is_ok(), "absent: read as JSON");
        for ok in ["application/json", "application/json; charset=utf-8", "application/merge-patch+json"] {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ok));
            assert!(json_content_type(&headers).is_ok(), "{ok}");
        }
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"));
        assert!(json_content_type(&headers).is_ok(), "curl -d");
        for bad in ["text/plain", "application/xml", "multipart/form-data; boundary=x"] {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(bad));
            assert!(matches!(json_content_type(&headers), Err(ApiError::UnsupportedMediaType { .. })), "{bad}");
        }
    }
}
