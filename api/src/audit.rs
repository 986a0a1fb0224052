//! The operator API's audit log, as a middleware layer over the whole
//! operator router so no handler can forget it.
//!
//! For every request the layer resolves the bearer token once
//! ([`auth::authenticate`]) and leaves the result in the request's
//! extensions, where the role extractors find it. For every mutating
//! request (POST, PUT, PATCH, DELETE) it writes one `audit` row after the
//! response is produced: who (token id, name and role, or `anonymous`),
//! what (method, matched route template, path, the route's path parameter),
//! when, and the response status. Refused requests (401, 403) are recorded
//! too. Bodies and query strings are never recorded: enrolment bodies carry
//! BMC and UPS passwords.
//!
//! Callers without a valid token are recorded only on the operator API's
//! own routes, and at most [`ANONYMOUS_PER_MINUTE`] a minute: anyone who
//! can reach the listener could otherwise grow the database at will. The
//! rest are counted (`slipway_audit_anonymous_skipped_total`).
//!
//! A failed audit write is logged and counted
//! (`slipway_audit_write_failures_total`); the response still goes out, since
//! what it reports has already happened.

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::{self, Authn};
use crate::rate::MinuteBudget;
use crate::AppState;
use store::tokens::AuditEntry;

fn mutating(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE)
}

/// Audit rows a minute for callers without a valid token.
pub const ANONYMOUS_PER_MINUTE: u32 = 60;

/// Anonymous callers' audit rows, per process.
static ANONYMOUS: MinuteBudget = MinuteBudget::new(ANONYMOUS_PER_MINUTE);

/// Whether an anonymous caller's request gets an audit row: only on a
/// route the API has, and within the minute's budget.
fn audit_anonymous(route_known: bool, now_ms: i64) -> bool {
    let allowed = route_known && ANONYMOUS.take(now_ms);
    if !allowed {
        metrics::counter!("slipway_audit_anonymous_skipped_total").increment(1);
    }
    allowed
}

/// The layer: `axum::middleware::from_fn_with_state(state, audit::layer)`.
pub async fn layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let authn = auth::authenticate(&parts.headers, &state).await;
    let record = mutating(&parts.method);
    let mut entry = None;
    if record {
        let target = RawPathParams::from_request_parts(&mut parts, &state)
            .await
            .ok()
            .and_then(|params| params.iter().next().map(|(_, value)| value.to_string()));
        entry = Some(AuditEntry {
            id: String::new(),
            at: String::new(),
            at_ms: state.store.now_ms(),
            token_id: None,
            token_name: "anonymous".into(),
            role: None,
            method: parts.method.as_str().to_string(),
            route: parts.extensions.get::<MatchedPath>().map(|m| m.as_str().to_string()),
            path: parts.uri.path().to_string(),
            target,
            status: 0,
        });
    }
    let response = match authn {
        Ok(authn) => {
            match (entry.as_mut(), &authn) {
                (Some(entry), Authn::Valid(caller)) => {
                    entry.token_id = Some(caller.token_id.clone());
                    entry.token_name = caller.name.clone();
                    entry.role = Some(caller.role.as_str().to_string());
                }
                (Some(e), _) if !audit_anonymous(e.route.is_some(), e.at_ms) => entry = None,
                _ => {}
            }
            parts.extensions.insert(authn);
            next.run(Request::from_parts(parts, body)).await
        }
        // The token could not be checked (the database is down): nothing ran.
        Err(err) => err.into_response(),
    };
    if let Some(mut entry) = entry {
        entry.status = response.status().as_u16();
        if let Err(err) = state.store.record_audit(&entry).await {
            tracing::error!(error = %err, method = entry.method, path = entry.path, status = entry.status,
                            caller = entry.token_name, "writing the audit log failed");
            metrics::counter!("slipway_audit_write_failures_total").increment(1);
        }
    }
    response
}
