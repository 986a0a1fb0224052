//! The operator API's OpenAPI 3.1 document, generated from the code: each
//! handler carries a `#[utoipa::path]` (its parameters, body and
//! responses, with the serde types it really reads and writes), and
//! [`ApiDoc`] lists them. `GET /api/v1/openapi.json` serves it (viewer
//! role); `api/openapi.json` is the committed copy, and a test fails when
//! the two differ or when the document and the router disagree on a route.
//!
//! Deliberately not here: the boot face (`/boot/...`, `/api/v1/agent/...`),
//! which only iPXE and slipway-agent speak.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{Modify, OpenApi, ToResponse, ToSchema};

use crate::auth::Viewer;

/// An RFC 9457 problem document: every error the API returns.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// Always `about:blank`: the status says what kind of error it is.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The request field to blame, by its JSON path (`disk.serial`,
    /// `users[0].name`), a query parameter, a header (`If-Match`) or
    /// `body`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// On a 403: the least role the route needs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required_role: Option<crate::auth::Role>,
}

macro_rules! problem_responses {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {$(
        $(#[$doc])*
        #[derive(ToResponse)]
        #[response(content_type = "application/problem+json")]
        #[allow(dead_code)]
        pub struct $name(Problem);
    )*};
}

problem_responses!(
    /// The request is malformed: bad JSON, an unknown or missing field, a
    /// value of the wrong type or out of range, a bad query parameter.
    /// `field` names it.
    BadRequest,
    /// No bearer token, or one that is unknown, revoked or expired.
    Unauthorized,
    /// The token's role is too small; `required_role` says which is needed.
    Forbidden,
    /// No such resource.
    NotFound,
    /// The resource is not in a state that allows this (or already exists).
    Conflict,
    /// `If-Match` names an ETag the resource no longer has; `ETag` carries
    /// the current one.
    PreconditionFailed,
    /// The request body is over its limit.
    PayloadTooLarge,
    /// The request body is not JSON (`Content-Type`).
    UnsupportedMediaType,
    /// The request was understood and refused (an upload whose content
    /// does not match its digest, an `Idempotency-Key` reused with another
    /// body).
    Unprocessable,
    /// The BMC or UPS did not answer, refused, or answered nonsense.
    BadGateway,
);

/// Error responses that come from how an operation is reached rather than
/// what it does, listed once: `responses((status = 200, ..), NeedsRole,
/// TakesJson, (status = 409, ..))`.
macro_rules! error_sets {
    ($($(#[$doc:meta])* $name:ident: $($status:literal => $response:ident),+;)*) => {$(
        $(#[$doc])*
        pub struct $name;
        impl utoipa::IntoResponses for $name {
            fn responses() -> std::collections::BTreeMap<String, RefOr<utoipa::openapi::Response>> {
                [$(($status.to_string(), RefOr::Ref(Ref::from_response_name(stringify!($response))))),+]
                    .into_iter()
                    .collect()
            }
        }
    )*};
}

error_sets!(
    /// A bearer token is needed (any role).
    NeedsToken: "401" => Unauthorized;
    /// A bearer token of a role above viewer is needed.
    NeedsRole: "401" => Unauthorized, "403" => Forbidden;
    /// The JSON body extractor's refusals.
    TakesJson: "400" => BadRequest, "413" => PayloadTooLarge, "415" => UnsupportedMediaType;
);

/// The bearer token scheme every operation but `/healthz` uses.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.description = Some(
            "An operator token: the appliance's admin token, or one created with POST /api/v1/tokens \
             (role viewer, operator or admin)."
                .into(),
        );
        components.add_security_scheme("bearer", SecurityScheme::Http(http));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Slipway operator API",
        description = "Bare-metal provisioning: machines and their lifecycle, images and deploys, BMCs, UPSes, \
            refresh campaigns, tokens and the audit log. Every operation but `GET /healthz` needs a bearer \
            token; its role (viewer, operator, admin) is named in each operation's description. Errors are \
            RFC 9457 problem documents (`application/problem+json`) naming the offending field. Any \
            operation may also answer 500 or 503 when the database cannot be reached.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(
        responses(
            BadRequest, Unauthorized, Forbidden, NotFound, Conflict, PreconditionFailed, PayloadTooLarge,
            UnsupportedMediaType, Unprocessable, BadGateway
        ),
        schemas(Problem)
    ),
    paths(
        super::health,
        serve_document,
        super::metrics::render,
        super::machines::list,
        super::machines::show,
        super::machines::patch,
        super::machines::action,
        super::events::machine_events,
        super::events::all_events,
        super::events::stream,
        super::deploy::deploy,
        super::deploy::show,
        super::deploy::release,
        super::images::list,
        super::images::register,
        super::images::show,
        super::images::remove,
        super::images::upload,
        super::node::show_node,
        super::node::list_clusters,
        super::node::show_cluster,
        super::bmcs::list,
        super::bmcs::enrol,
        super::bmcs::show,
        super::bmcs::remove,
        super::bmcs::reread,
        super::bmcs::power,
        super::bmcs::machine_bmc,
        super::ups::list,
        super::ups::enrol,
        super::ups::show,
        super::ups::remove,
        super::firmware::list,
        super::firmware::upload,
        super::campaigns::list,
        super::campaigns::create,
        super::campaigns::show,
        super::campaigns::pause,
        super::campaigns::resume,
        super::campaigns::cancel,
        super::tokens::list,
        super::tokens::create,
        super::tokens::revoke,
        super::tokens::audit,
    )
)]
pub struct ApiDoc;

/// The document, with the crate's version.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// The document as the committed `api/openapi.json` holds it: pretty JSON
/// and a final newline.
pub fn document_json() -> String {
    let mut text = document().to_pretty_json().expect("the document serializes");
    text.push('\n');
    text
}

pub(super) fn router() -> super::Routes {
    super::Routes::new().route("/api/v1/openapi.json", axum::routing::get(serve_document))
}

/// This document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    operation_id = "openapi_document",
    tag = "meta",
    description = "Role: viewer.",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json",
         body = serde_json::Value),
        (status = 401, response = Unauthorized),
    )
)]
async fn serve_document(_: Viewer) -> Response {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let body = DOC.get_or_init(document_json).clone();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[cfg(test)]
#[path = "openapi_tests.rs"]
mod tests;
