//! `/api/v1/machines`: the filtered, paged list, one machine with its
//! `ETag`, `PATCH` of labels and rack (honouring `If-Match`), and the
//! operator lifecycle actions (`/actions/{retry|mark-failed|reset|retire}`).
//! The event routes are in `events`.

use std::collections::BTreeMap;
use std::str::FromStr;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::Routes;
use crate::auth::{Operator, Viewer};
use crate::error::{problem, ApiError};
use crate::extract::{JsonBody, Query};
use crate::AppState;
use model::lifecycle::MachineState;
use store::labels::{PatchOutcome, MAX_LABELS};
use store::{Machine, MachineFilter, MachinePatch};

pub(super) fn router() -> Routes {
    Routes::new()
        .route("/api/v1/machines", get(list))
        .route("/api/v1/machines/{id}", get(show).patch(patch))
        .route("/api/v1/machines/{id}/actions/{action}", post(action))
}

/// `?after=ID&limit=N` (the event and audit lists).
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct Page {
    /// Return entries after this id (a page's `next`).
    pub after: Option<String>,
    /// At most this many entries (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

pub(super) fn limit(page: &Page) -> Result<i64, ApiError> {
    match page.limit.unwrap_or(100) {
        n @ 1..=1000 => Ok(n),
        n => Err(ApiError::BadRequest { field: "limit".into(), detail: format!("{n} is not in 1..=1000") }),
    }
}

fn bad(field: &str, detail: impl Into<String>) -> ApiError {
    ApiError::BadRequest { field: field.into(), detail: detail.into() }
}

/// `?state=ready&label=k=v&label=k2=v2&rack=r7&mac=...&limit=50&after=ID`.
fn filter(query: &[(String, String)]) -> Result<MachineFilter, ApiError> {
    let mut f = MachineFilter { limit: 1000, ..Default::default() };
    for (name, value) in query {
        match name.as_str() {
            "state" => f.state = Some(MachineState::from_str(value).map_err(|e| bad("state", e))?),
            "label" => {
                let (k, v) = value.split_once('=').ok_or_else(|| bad("label", "label=NAME=VALUE"))?;
                check_label(k, Some(v)).map_err(|d| bad("label", d))?;
                f.labels.push((k.to_string(), v.to_string()));
            }
            "rack" => f.rack = Some(check_rack(value).map_err(|d| bad("rack", d))?.to_string()),
            "mac" => {
                let mac = value.parse().map_err(|e: inventory::NotAMac| bad("mac", e.to_string()))?;
                f.mac = Some(mac);
            }
            "after" => f.after = Some(value.clone()),
            "limit" => {
                f.limit = match value.parse::<i64>() {
                    Ok(n @ 1..=1000) => n,
                    _ => return Err(bad("limit", format!("{value:?} is not in 1..=1000"))),
                }
            }
            other => return Err(bad(other, "not a filter: state, label, rack, mac, after, limit")),
        }
    }
    Ok(f)
}

/// A page of machines.
#[derive(Serialize, ToSchema)]
pub(super) struct MachinePage {
    pub machines: Vec<Machine>,
    /// The `after` for the next page; null on the last one.
    pub next: Option<String>,
}

/// Machines, filtered and paged by id.
#[utoipa::path(
    get,
    path = "/api/v1/machines",
    operation_id = "list_machines",
    tag = "machines",
    description = "Role: viewer. Every filter given must match.",
    params(
        ("state" = Option<MachineState>, Query, description = "Only machines in this state"),
        ("label" = Option<Vec<String>>, Query, explode = true, style = Form,
         description = "`NAME=VALUE`; repeat for several, all must match"),
        ("rack" = Option<String>, Query, description = "Only machines in this rack (1-64 characters, no spaces)"),
        ("mac" = Option<String>, Query, description = "Only the machine with this MAC"),
        ("after" = Option<String>, Query, description = "Machines after this id (a page's `next`)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "At most this many (default 1000)"),
    ),
    responses(
        (status = 200, description = "A page of machines", body = MachinePage),
        (status = 400, response = super::openapi::BadRequest),
        super::openapi::NeedsToken,
    )
)]
async fn list(
    _: Viewer,
    State(state): State<AppState>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Json<MachinePage>, ApiError> {
    let f = filter(&query)?;
    let (machines, next) = state.store.machines_page(&f).await?.ok_or_else(|| bad("after", "names no machine"))?;
    Ok(Json(MachinePage { machines, next }))
}

/// `{id}` is the machine id or any of its MACs.
pub(super) async fn find(state: &AppState, id_or_mac: &str) -> Result<Machine, ApiError> {
    let id = match id_or_mac.parse() {
        Ok(mac) => state.store.machine_id_by_mac(mac).await?,
        Err(_) => Some(id_or_mac.to_string()),
    };
    let machine = match id {
        Some(id) => state.store.machine(&id).await?,
        None => None,
    };
    machine.ok_or_else(|| ApiError::NotFound { what: format!("machine {id_or_mac}") })
}

/// The machine as JSON with its `ETag`.
fn tagged(status: StatusCode, machine: &Machine) -> Response {
    let mut response = (status, Json(machine)).into_response();
    if let Ok(tag) = HeaderValue::from_str(&format!("\"{}\"", machine.etag)) {
        response.headers_mut().insert(header::ETAG, tag);
    }
    response
}

/// One machine, by its id or any of its MACs.
#[utoipa::path(
    get,
    path = "/api/v1/machines/{id}",
    operation_id = "get_machine",
    tag = "machines",
    description = "Role: viewer.",
    params(("id" = String, Path, example = "52:54:00:12:34:56", description = "The machine's id or any of its MACs")),
    responses(
        (status = 200, description = "The machine", body = Machine,
         headers(("ETag" = String, description = "Send it as If-Match to edit only this version"))),
        super::openapi::NeedsToken,
        (status = 404, response = super::openapi::NotFound),
    )
)]
async fn show(_: Viewer, State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(tagged(StatusCode::OK, &find(&state, &id).await?))
}

/// Label names: 1-63 characters, a letter or digit first, then letters,
/// digits and `._/-` (Kubernetes-like); values at most 255 characters with
/// no control characters.
fn check_label(name: &str, value: Option<&str>) -> Result<(), String> {
    let first_ok = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || name.len() > 63 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c)) {
        return Err(format!("{name:?}: 1-63 of [A-Za-z0-9._/-], starting with a letter or digit"));
    }
    if value.is_some_and(|v| v.len() > 255 || v.chars().any(char::is_control)) {
        return Err(format!("the value of {name:?}: at most 255 characters, no control characters"));
    }
    Ok(())
}

fn check_rack(rack: &str) -> Result<&str, String> {
    if rack.is_empty() || rack.len() > 64 || rack.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{rack:?}: 1-64 characters without spaces"));
    }
    Ok(rack)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = MachinePatch, example = json!({"labels": {"pool": "gpu", "old": null}, "rack": "r7"}))]
pub(super) struct PatchBody {
    /// A JSON merge: a null value deletes the label.
    #[serde(default)]
    labels: BTreeMap<String, Option<String>>,
    /// Absent: unchanged; null: cleared.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    rack: Option<Option<String>>,
}

/// Tells a field given as `null` (`Some(None)`) from an absent one (`None`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// Edits a machine's labels and rack, as a JSON merge.
///
/// `If-Match` is honoured when present and not required: a stale ETag is
/// 412 with the current one in `ETag`.
#[utoipa::path(
    patch,
    path = "/api/v1/machines/{id}",
    operation_id = "patch_machine",
    tag = "machines",
    description = "Role: operator. A null label deletes it; `\"rack\": null` clears the rack. Label names: \
        1-63 of `[A-Za-z0-9._/-]` starting with a letter or digit; values at most 255 characters, no control \
        characters; at most 64 labels.",
    params(
        ("id" = String, Path, example = "52:54:00:12:34:56", description = "The machine's id or any of its MACs"),
        ("If-Match" = Option<String>, Header, description = "The machine's ETag, as GET returned it"),
    ),
    request_body = PatchBody,
    responses(
        (status = 200, description = "The machine as edited", body = Machine,
         headers(("ETag" = String, description = "The machine's new ETag"))),
        super::openapi::NeedsRole, super::openapi::TakesJson,
        (status = 404, response = super::openapi::NotFound),
        (status = 412, response = super::openapi::PreconditionFailed),
    )
)]
async fn patch(
    _: Operator,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<PatchBody>,
) -> Result<Response, ApiError> {
    if req.labels.is_empty() && req.rack.is_none() {
        return Err(bad("body", "give labels, rack or both"));
    }
    if req.labels.len() > MAX_LABELS {
        return Err(bad("labels", format!("at most {MAX_LABELS} labels")));
    }
    for (name, value) in &req.labels {
        check_label(name, value.as_deref()).map_err(|d| bad(&format!("labels.{name}"), d))?;
    }
    if let Some(Some(rack)) = &req.rack {
        check_rack(rack).map_err(|d| bad("rack", d))?;
    }
    let if_match = match headers.get(header::IF_MATCH) {
        Some(v) => Some(v.to_str().map_err(|_| bad("If-Match", "an ETag"))?.to_string()),
        None => None,
    };
    let machine = find(&state, &id).await?;
    let patch = MachinePatch { labels: req.labels, rack: req.rack };
    match state.store.patch_machine(&machine.id, &patch, if_match.as_deref()).await? {
        PatchOutcome::Done(machine) => Ok(tagged(StatusCode::OK, &machine)),
        PatchOutcome::NotFound => Err(ApiError::NotFound { what: format!("machine {id}") }),
        PatchOutcome::Stale(current) => {
            let mut response = problem(
                StatusCode::PRECONDITION_FAILED,
                format!("machine {} changed since that ETag; its ETag is now \"{}\"", current.id, current.etag),
            );
            if let Ok(tag) = HeaderValue::from_str(&format!("\"{}\"", current.etag)) {
                response.headers_mut().insert(header::ETAG, tag);
            }
            Ok(response)
        }
    }
}

#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = MachineAction, example = json!({"reason": "fan failure"}))]
pub(super) struct ActionBody {
    /// Why (mark-failed: required; recorded as the failure's reason).
    reason: Option<String>,
}

/// Applies an operator lifecycle action; a machine whose state the action
/// does not apply to is 409. Then, through its BMC if it has one, the
/// machine is booted into the ramdisk for the work the action started.
#[utoipa::path(
    post,
    path = "/api/v1/machines/{id}/actions/{action}",
    operation_id = "machine_action",
    tag = "machines",
    description = "Role: operator. `retry` a failed machine, `mark-failed` (a reason is required), `reset` \
        (back to discovering), `retire` (terminal). The body is optional. Honours `Idempotency-Key`.",
    params(
        ("id" = String, Path, example = "52:54:00:12:34:56", description = "The machine's id or any of its MACs"),
        ("action" = String, Path, pattern = "^(retry|mark-failed|reset|retire)$", example = "mark-failed",
         description = "retry, mark-failed, reset or retire"),
        crate::idempotency::KeyParam,
    ),
    request_body(content = Option<ActionBody>, description = "Optional"),
    responses(
        (status = 200, description = "The machine after the action", body = Machine),
        super::openapi::NeedsRole, super::openapi::TakesJson,
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
        (status = 422, response = super::openapi::Unprocessable),
    )
)]
async fn action(
    _: Operator,
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    JsonBody(req): JsonBody<Option<ActionBody>>,
) -> Result<Response, ApiError> {
    use store::actions::{Action, ActionTimeouts};
    let req = req.unwrap_or_default();
    let action = match name.as_str() {
        "retry" => Action::Retry,
        "mark-failed" => match req.reason.as_deref().map(str::trim) {
            Some(reason) if !reason.is_empty() && reason.len() <= 500 => Action::MarkFailed { reason: reason.into() },
            _ => return Err(bad("reason", "mark-failed needs a reason, 1 to 500 characters")),
        },
        "reset" => Action::Reset,
        "retire" => Action::Retire,
        other => {
            return Err(ApiError::NotFound { what: format!("action {other:?} (retry, mark-failed, reset, retire)") })
        }
    };
    let machine = find(&state, &id).await?;
    let timeouts = ActionTimeouts {
        discovery_ms: state.discovery_timeout_ms,
        deploy_ms: state.deploy_timeout_ms,
        release_wipe: state.release_wipe,
    };
    let to = state.store.machine_action(&machine.id, &action, &timeouts).await?;
    let to = to.ok_or_else(|| ApiError::NotFound { what: format!("machine {id}") })?;
    tracing::info!(machine = machine.id, action = name, to = %to, "operator action");
    match to {
        MachineState::Deploying | MachineState::Releasing => {
            state.work_posted.posted(&machine.id);
            state.oob.boot_for_work(&machine.id, true, "operator retry: boot into the ramdisk");
        }
        MachineState::Discovering => {
            state.oob.boot_for_work(&machine.id, false, "operator retry or reset: boot into discovery")
        }
        _ => {}
    }
    Ok(tagged(StatusCode::OK, &find(&state, &machine.id).await?))
}

#[cfg(test)]
#[path = "machines_tests.rs"]
mod tests;
