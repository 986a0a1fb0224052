//! The API's one error type. Every error is an RFC 9457 problem document;
//! client errors name what was wrong, internal errors log their whole
//! chain and return a generic body.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(&'static str),
    /// A valid token whose role is too small (HTTP 403): says which is needed.
    #[error("this request needs the {needed} role; the token's role is {role}")]
    Forbidden { needed: model::Role, role: model::Role },
    /// A field of the request needs a larger role than the token's (HTTP
    /// 403), such as commands run as root on nodes.
    #[error("{field} needs the {needed} role; the token's role is {role}")]
    ForbiddenField { field: String, needed: model::Role, role: model::Role },
    /// The provisioning network asked for what its sender may not have
    /// (HTTP 403): a boot script or an agent call; see `boot_guard`.
    #[error("refused: {}", .0.detail())]
    Refused(crate::boot_guard::Refusal),
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("invalid {field}: {detail}")]
    BadRequest { field: String, detail: String },
    /// A request body over its limit (HTTP 413).
    #[error("{field} too large: {detail}")]
    PayloadTooLarge { field: String, detail: String },
    /// A request body in a format the route does not read (HTTP 415).
    #[error("unsupported {field}: {detail}")]
    UnsupportedMediaType { field: String, detail: String },
    /// A well-formed request that cannot be carried out as asked (HTTP
    /// 422), such as an image the machine's firmware cannot boot.
    #[error("{detail}")]
    Unprocessable { field: String, detail: String },
    /// A BMC, a UPS or the appliance holding an image's content failed the
    /// request (HTTP 502): it says which and why.
    #[error("{0}")]
    Device(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<crate::oob::OobFailure> for ApiError {
    fn from(err: crate::oob::OobFailure) -> Self {
        match err {
            crate::oob::OobFailure::Store(e) => ApiError::Store(e),
            crate::oob::OobFailure::NoBmc(id) => ApiError::NotFound { what: format!("BMC {id}") },
            crate::oob::OobFailure::Device(e) => ApiError::Device(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, title, field) = match &self {
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "Unauthorized", None),
            ApiError::Forbidden { .. } | ApiError::Refused(_) => (StatusCode::FORBIDDEN, "Forbidden", None),
            ApiError::ForbiddenField { field, .. } => (StatusCode::FORBIDDEN, "Forbidden", Some(field.clone())),
            ApiError::NotFound { .. } => (StatusCode::NOT_FOUND, "Not Found", None),
            ApiError::BadRequest { field, .. } => (StatusCode::BAD_REQUEST, "Bad Request", Some(field.clone())),
            ApiError::PayloadTooLarge { field, .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "Content Too Large", Some(field.clone()))
            }
            ApiError::UnsupportedMediaType { field, .. } => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "Unsupported Media Type", Some(field.clone()))
            }
            ApiError::Unprocessable { field, .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "Unprocessable Content", Some(field.clone()))
            }
            ApiError::Device(_) => (StatusCode::BAD_GATEWAY, "Bad Gateway", None),
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
        if let ApiError::Forbidden { needed, .. } | ApiError::ForbiddenField { needed, .. } = &self {
            body["required_role"] = json!(needed);
        }
        let mut response = (status, body.to_string()).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, "application/problem+json".parse().expect("static header"));
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static header"));
        }
        response
    }
}

/// A problem document with `status` and `detail`, for the statuses
/// [`ApiError`] has no variant for (412, 422, 428).
pub fn problem(status: StatusCode, detail: impl Into<String>) -> Response {
    problem_with_field(status, None, detail)
}

/// [`problem`], naming the offending field when there is one.
pub fn problem_with_field(status: StatusCode, field: Option<&str>, detail: impl Into<String>) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let mut body = json!({ "type": "about:blank", "title": title, "status": status.as_u16(), "detail": detail.into() });
    if let Some(field) = field {
        body["field"] = json!(field);
    }
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, "application/problem+json".parse().expect("static header"));
    response
}

/// Parses a JSON body, naming the offending field by its path
/// (`disk.serial`, `users[0].name`) on error.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| named(e, "body"))?;
    // Trailing bytes after the value (`{}x`, `{}{}`) are malformed too.
    de.end().map_err(|e| ApiError::BadRequest { field: "body".into(), detail: e.to_string() })?;
    Ok(value)
}

/// A deserialization error as a 400 naming the field by its path; `whole`
/// names the input itself when no field is to blame (`body`, `query`).
pub(crate) fn named<E: std::fmt::Display>(e: serde_path_to_error::Error<E>, whole: &str) -> ApiError {
    let path = e.path().to_string();
    let detail = e.inner().to_string();
    // An unknown or missing field is reported at its parent: name it.
    let named = ["unknown field `", "missing field `", "duplicate field `"]
        .iter()
        .find_map(|p| detail.strip_prefix(p))
        .and_then(|rest| rest.split('`').next());
    let field = match (path.as_str(), named) {
        (".", Some(name)) => name.to_string(),
        (".", None) => whole.to_string(),
        (parent, Some(name)) if !parent.ends_with(name) => format!("{parent}.{name}"),
        (path, _) => path.to_string(),
    };
    ApiError::BadRequest { field, detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        #[serde(default)]
        inner: Option<Inner>,
        #[serde(default)]
        list: Vec<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        count: u32,
    }

    fn field(body: &str) -> String {
        match parse_json::<Outer>(body.as_bytes()) {
            Err(ApiError::BadRequest { field, .. }) => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field_by_its_path() {
        assert_eq!(field(r#"{}"#), "name");
        assert_eq!(field(r#"{"name": 1}"#), "name");
        assert_eq!(field(r#"{"name": "a", "extra": 1}"#), "extra");
        assert_eq!(field(r#"{"name": "a", "inner": {"count": "x"}}"#), "inner.count");
        assert_eq!(field(r#"{"name": "a", "inner": {"count": 1, "colour": 1}}"#), "inner.colour");
        assert_eq!(field(r#"{"name": "a", "inner": {}}"#), "inner.count");
        assert_eq!(field(r#"{"name": "a", "list": [{"count": 1}, {"count": -1}]}"#), "list[1].count");
        assert_eq!(field(r#"{"name": "#), "name", "truncated where name's value should be");
        assert_eq!(field("not json"), "body");
        assert_eq!(field(r#"{"name": "a"} trailing"#), "body", "one value, nothing after it");
    }
}
