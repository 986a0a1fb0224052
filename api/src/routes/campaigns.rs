//! `/api/v1/campaigns`: create a refresh campaign (checked field by field,
//! targets resolved to machines once), list them, show one with each
//! node's progress, and pause, resume or cancel it. The runner
//! (`campaign::runner`) does the work; these handlers only store intent.

use std::collections::BTreeSet;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::machines::find;
use super::Routes;
use crate::auth::{Operator, Role, Viewer};
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::firmware_files::{self, valid_name};
use crate::AppState;
use model::campaign::{
    order_nodes, Action, Campaign, CampaignState, DrainCommands, FirmwareAction, Gates, NodeProgress, NodeState,
    Rollout, Schedule, Targets, MAX_DRAIN_COMMAND, MAX_DRAIN_SECONDS,
};
use store::{rfc3339, ImageState, StoreError, UpsFeeds};

pub(super) fn router() -> Routes {
    Routes::new()
        .route("/api/v1/campaigns", get(list).post(create))
        .route("/api/v1/campaigns/{id}", get(show))
        .route("/api/v1/campaigns/{id}/pause", post(pause))
        .route("/api/v1/campaigns/{id}/resume", post(resume))
        .route("/api/v1/campaigns/{id}/cancel", post(cancel))
}

fn bad(field: &str, detail: impl Into<String>) -> ApiError {
    ApiError::BadRequest { field: field.into(), detail: detail.into() }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewCampaign, example = json!({
    "name": "BIOS 2.1, rack r7", "targets": {"racks": ["r7"], "machines": []},
    "action": {"firmware": {"component": "BIOS", "firmware": "bios-2.1", "version": "2.1"}},
    "schedule": {"window": {"cron": "0 2 * * SAT", "timezone": "Europe/Berlin", "minutes": 240}},
    "rollout": {"batch_size": 2, "order": "by_rack", "max_failures": 1}, "gates": {"on_mains": true}
}))]
pub(super) struct Create {
    #[schema(min_length = 1, max_length = 128)]
    name: String,
    targets: Targets,
    action: Action,
    /// `"now"` when absent.
    #[serde(default = "now")]
    schedule: Schedule,
    #[serde(default)]
    rollout: Rollout,
    #[serde(default)]
    gates: Gates,
}

fn now() -> Schedule {
    Schedule::Now
}

/// Checks a firmware action; returns the SHA-256 to pin for an uploaded file.
fn check_firmware(state: &AppState, f: &FirmwareAction) -> Result<Option<String>, ApiError> {
    let ok_text = |t: &str, max| !t.is_empty() && t.len() <= max && t.bytes().all(|b| b.is_ascii_graphic());
    if !ok_text(&f.component, 64) {
        return Err(bad("action.firmware.component", "the FirmwareInventory id: BIOS, BMC, ..."));
    }
    if !ok_text(&f.version, 64) {
        return Err(bad("action.firmware.version", "1 to 64 printable characters without spaces"));
    }
    match (&f.firmware, &f.image_url) {
        (Some(_), Some(_)) | (None, None) => {
            Err(bad("action.firmware.firmware", "give either firmware (an uploaded file) or image_url"))
        }
        (Some(name), None) => {
            let found = valid_name(name).then(|| firmware_files::find(&state.firmware_dir, name)).flatten();
            let Some(file) = found else {
                return Err(bad(
                    "action.firmware.firmware",
                    format!("no firmware {name:?} uploaded (PUT /api/v1/firmware/{{name}})"),
                ));
            };
            if state.boot.is_none() {
                return Err(bad(
                    "action.firmware.firmware",
                    "the boot HTTP face is off, so no BMC can fetch it: give image_url",
                ));
            }
            if f.sha256.as_ref().is_some_and(|want| !want.eq_ignore_ascii_case(&file.sha256)) {
                let detail = format!("firmware {name:?} as uploaded has SHA-256 {}", file.sha256);
                return Err(bad("action.firmware.sha256", detail));
            }
            Ok(Some(file.sha256))
        }
        (None, Some(url)) => {
            let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
            if !scheme_ok || url.len() > 2048 || !url.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad("action.firmware.image_url", "an http:// or https:// URL the BMC can fetch"));
            }
            if f.sha256.is_some() {
                return Err(bad("action.firmware.sha256", "pins an uploaded firmware file; not for image_url"));
            }
            Ok(None)
        }
    }
}

/// Listed machines (by id or MAC), then each rack's; each once.
async fn resolve(state: &AppState, targets: &Targets) -> Result<Vec<(String, Option<String>)>, ApiError> {
    let mut seen = BTreeSet::new();
    let mut out = vec![];
    for (i, id) in targets.machines.iter().enumerate() {
        let m =
            find(state, id).await.map_err(|_| bad(&format!("targets.machines[{i}]"), format!("no machine {id}")))?;
        if seen.insert(m.id.clone()) {
            out.push((m.id, m.rack));
        }
    }
    for (i, rack) in targets.racks.iter().enumerate() {
        let feeds = UpsFeeds { racks: vec![rack.clone()], machines: vec![] };
        let ids = state.store.machines_fed_by(&feeds).await?;
        if ids.is_empty() {
            return Err(bad(&format!("targets.racks[{i}]"), format!("no machine is in rack {rack}")));
        }
        for id in ids {
            if seen.insert(id.clone()) {
                out.push((id, Some(rack.clone())));
            }
        }
    }
    if out.is_empty() {
        return Err(bad("targets", "name at least one machine or rack"));
    }
    Ok(out)
}

/// Creates a refresh campaign; its targets are resolved to machines now.
#[utoipa::path(
    post,
    path = "/api/v1/campaigns",
    operation_id = "create_campaign",
    tag = "campaigns",
    description = "Role: operator. With `gates.drain` (commands run as root on the nodes): `node_root`. Honours \
                   `Idempotency-Key`.",
    params(crate::idempotency::KeyParam),
    request_body = Create,
    responses(
        (status = 201, description = "The campaign, scheduled", body = CampaignView),
        super::openapi::NeedsRole, super::openapi::TakesJson,
        (status = 409, response = super::openapi::Conflict),
        (status = 422, response = super::openapi::Unprocessable),
    )
)]
async fn create(
    Operator(caller): Operator,
    State(state): State<AppState>,
    JsonBody(mut req): JsonBody<Create>,
) -> Result<Response, ApiError> {
    if req.name.trim().is_empty() || req.name.len() > 128 || req.name.chars().any(char::is_control) {
        return Err(bad("name", "1 to 128 characters"));
    }
    let refresh_to = match &mut req.action {
        Action::Firmware(f) => {
            f.sha256 = check_firmware(&state, f)?;
            None
        }
        Action::OsRefresh { image } => match state.store.image(image).await? {
            Some(i) if i.state == ImageState::Available => Some(i),
            Some(i) => {
                return Err(bad("action.os_refresh.image", format!("image {image:?} is {:?}, not available", i.state)))
            }
            None => return Err(bad("action.os_refresh.image", format!("no image named {image:?}"))),
        },
    };
    req.schedule.parse().map_err(|e| bad(&format!("schedule.{}", e.field), e.detail))?;
    let r = &req.rollout;
    if !(1..=1000).contains(&r.batch_size) {
        return Err(bad("rollout.batch_size", "1 to 1000"));
    }
    if r.max_failures == 0 {
        return Err(bad("rollout.max_failures", "at least 1"));
    }
    if r.max_failure_ratio.is_some_and(|x| !(x > 0.0 && x <= 1.0)) {
        return Err(bad("rollout.max_failure_ratio", "more than 0, at most 1"));
    }
    if req.gates.ups_min_charge_percent.is_some_and(|c| !(0.0..=100.0).contains(&c)) {
        return Err(bad("gates.ups_min_charge_percent", "0 to 100"));
    }
    if req.gates.back_within_seconds.is_some_and(|s| !(10..=86_400).contains(&s)) {
        return Err(bad("gates.back_within_seconds", "10 to 86400"));
    }
    if let Some(d) = &req.gates.drain {
        check_drain(d)?;
        crate::auth::may_run_root_commands(&caller, "gates.drain")?;
    }
    let nodes = order_nodes(resolve(&state, &req.targets).await?, req.rollout.order);
    if let Some(image) = &refresh_to {
        check_every_node_boots(&state, image, &nodes).await?;
    }
    let at = state.store.now_ms();
    let campaign = Campaign {
        id: uuid::Uuid::new_v4().to_string(),
        name: req.name,
        targets: req.targets,
        action: req.action,
        schedule: req.schedule,
        rollout: req.rollout,
        gates: req.gates,
        state: CampaignState::Scheduled,
        reason: None,
        acknowledged_failures: 0,
        created_at_ms: at,
        updated_at_ms: at,
        started_at_ms: None,
        finished_at_ms: None,
    };
    state.store.insert_campaign(&campaign, &nodes).await?;
    Ok((StatusCode::CREATED, Json(view(&campaign, &nodes, at))).into_response())
}

/// An OS refresh to an image one of its machines cannot boot would roll
/// that machine back at best: refused before anything starts, naming it.
async fn check_every_node_boots(
    state: &AppState,
    image: &store::Image,
    nodes: &[NodeProgress],
) -> Result<(), ApiError> {
    for node in nodes {
        let Some(machine) = state.store.machine(&node.machine_id).await? else { continue };
        if let Some(detail) = image.meta.boot_mode.refusal(&image.meta.name, &machine.id, machine.firmware_mode()) {
            return Err(ApiError::Unprocessable { field: "action.os_refresh.image".into(), detail });
        }
    }
    Ok(())
}

fn check_drain(d: &DrainCommands) -> Result<(), ApiError> {
    for (field, command) in [("gates.drain.run", &d.run), ("gates.drain.undo", &d.undo)] {
        if command.trim().is_empty() || command.len() > MAX_DRAIN_COMMAND || command.contains('\0') {
            return Err(bad(field, format!("a shell command of 1 to {MAX_DRAIN_COMMAND} bytes")));
        }
    }
    if !(1..=MAX_DRAIN_SECONDS).contains(&d.timeout_seconds) {
        return Err(bad("gates.drain.timeout_seconds", format!("1 to {MAX_DRAIN_SECONDS}")));
    }
    Ok(())
}

/// A campaign as shown: times in RFC 3339, node counts, the next time its
/// schedule opens, and (one campaign, not in the list) each node.
#[derive(Serialize, ToSchema)]
pub(super) struct CampaignView {
    pub id: String,
    pub name: String,
    pub state: CampaignState,
    /// Why it is held, paused or failed.
    pub reason: Option<String>,
    pub targets: Targets,
    pub action: Action,
    pub schedule: Schedule,
    pub rollout: Rollout,
    pub gates: Gates,
    /// Failed nodes an operator resumed past.
    pub acknowledged_failures: u32,
    pub created_at: String,
    pub updated_at: String,
    /// When the first node started.
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// When nodes may next start, if not now (null once finished).
    pub schedule_next_open: Option<String>,
    pub summary: CampaignSummary,
    /// Each node's progress, in rollout order (absent in the list).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<CampaignNodeView>>,
}

/// Nodes by state.
#[derive(Serialize, ToSchema)]
pub(super) struct CampaignSummary {
    pub total: usize,
    pub pending: usize,
    pub applying: usize,
    pub verifying: usize,
    pub done: usize,
    pub failed: usize,
    pub rolled_back: usize,
}

/// One target machine's progress.
#[derive(Serialize, ToSchema)]
pub(super) struct CampaignNodeView {
    pub machine_id: String,
    /// Its place in the rollout order.
    pub position: u32,
    pub rack: Option<String>,
    pub state: NodeState,
    /// Why it failed (or a note such as "already at 2.0").
    pub reason: Option<String>,
    pub old_version: Option<String>,
    pub new_version: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

/// The campaigns, without their nodes.
#[derive(Serialize, ToSchema)]
pub(super) struct CampaignList {
    pub campaigns: Vec<CampaignView>,
}

fn view(c: &Campaign, nodes: &[NodeProgress], now_ms: i64) -> CampaignView {
    let time = |ms: Option<i64>| ms.map(rfc3339);
    let count = |s: NodeState| nodes.iter().filter(|n| n.state == s).count();
    let next_start = c.schedule.parse().ok().and_then(|s| s.next_open(now_ms));
    CampaignView {
        id: c.id.clone(),
        name: c.name.clone(),
        state: c.state,
        reason: c.reason.clone(),
        targets: c.targets.clone(),
        action: c.action.clone(),
        schedule: c.schedule.clone(),
        rollout: c.rollout.clone(),
        gates: c.gates.clone(),
        acknowledged_failures: c.acknowledged_failures,
        created_at: rfc3339(c.created_at_ms),
        updated_at: rfc3339(c.updated_at_ms),
        started_at: time(c.started_at_ms),
        finished_at: time(c.finished_at_ms),
        schedule_next_open: if c.state.is_final() { None } else { time(next_start) },
        summary: CampaignSummary {
            total: nodes.len(),
            pending: count(NodeState::Pending),
            applying: count(NodeState::Applying),
            verifying: count(NodeState::Verifying),
            done: count(NodeState::Done),
            failed: count(NodeState::Failed),
            rolled_back: count(NodeState::RolledBack),
        },
        nodes: Some(
            nodes
                .iter()
                .map(|n| CampaignNodeView {
                    machine_id: n.machine_id.clone(),
                    position: n.position,
                    rack: n.rack.clone(),
                    state: n.state,
                    reason: n.reason.clone(),
                    old_version: n.old_version.clone(),
                    new_version: n.new_version.clone(),
                    started_at: time(n.started_at_ms),
                    finished_at: time(n.finished_at_ms),
                })
                .collect(),
        ),
    }
}

async fn one(state: &AppState, id: &str) -> Result<CampaignView, ApiError> {
    let c = state.store.campaign(id).await?.ok_or_else(|| ApiError::NotFound { what: format!("campaign {id}") })?;
    Ok(view(&c, &state.store.campaign_nodes(id).await?, state.store.now_ms()))
}

/// Every campaign with its node counts.
#[utoipa::path(
    get,
    path = "/api/v1/campaigns",
    operation_id = "list_campaigns",
    tag = "campaigns",
    description = "Role: viewer.",
    responses(
        (status = 200, description = "Every campaign", body = CampaignList),
        super::openapi::NeedsToken,
    )
)]
async fn list(Viewer(caller): Viewer, State(state): State<AppState>) -> Result<Json<CampaignList>, ApiError> {
    let mut campaigns = vec![];
    for c in state.store.campaigns().await? {
        let mut v = view(&c, &state.store.campaign_nodes(&c.id).await?, state.store.now_ms());
        // The list is a summary; one campaign's nodes are at /campaigns/{id}.
        v.nodes = None;
        campaigns.push(for_role(v, caller.role));
    }
    Ok(Json(CampaignList { campaigns }))
}

/// Drain commands run as root on nodes: a viewer sees that there are some,
/// not what they say.
fn for_role(mut v: CampaignView, role: Role) -> CampaignView {
    if role < Role::Operator {
        if let Some(drain) = &mut v.gates.drain {
            drain.run = model::deploy::REDACTED.into();
            drain.undo = model::deploy::REDACTED.into();
        }
    }
    v
}

/// One campaign with each node's progress and versions.
#[utoipa::path(
    get,
    path = "/api/v1/campaigns/{id}",
    operation_id = "get_campaign",
    tag = "campaigns",
    description = "Role: viewer.",
    params(("id" = String, Path, description = "The campaign's id")),
    responses(
        (status = 200, description = "The campaign", body = CampaignView),
        super::openapi::NeedsToken,
        (status = 404, response = super::openapi::NotFound),
    )
)]
async fn show(
    Viewer(caller): Viewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CampaignView>, ApiError> {
    Ok(Json(for_role(one(&state, &id).await?, caller.role)))
}

/// Moves the campaign for an operator, or says (409) why it cannot.
async fn operate(
    state: &AppState,
    id: &str,
    from: &[CampaignState],
    to: impl Fn(&Campaign) -> CampaignState,
    event: &str,
    reason: &str,
    acknowledge: bool,
) -> Result<Json<CampaignView>, ApiError> {
    let c = state.store.campaign(id).await?.ok_or_else(|| ApiError::NotFound { what: format!("campaign {id}") })?;
    let detail = json!({ "cause": "operator" });
    let moved = state.store.transition_campaign(id, from, to(&c), Some(reason), event, detail, acknowledge).await?;
    if moved.is_none() {
        let now = state.store.campaign(id).await?.map_or(c.state, |c| c.state);
        return Err(StoreError::Conflict(format!("campaign {id} is {}", now.as_str())).into());
    }
    Ok(Json(one(state, id).await?))
}

#[utoipa::path(
    post,
    path = "/api/v1/campaigns/{id}/pause",
    operation_id = "pause_campaign",
    tag = "campaigns",
    description = "Role: operator. Scheduled, running or held campaigns; no node starts until it is resumed.",
    params(("id" = String, Path, description = "The campaign's id")),
    responses(
        (status = 200, description = "The campaign", body = CampaignView),
        super::openapi::NeedsRole,
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
    )
)]
async fn pause(
    _: Operator,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CampaignView>, ApiError> {
    use CampaignState::*;
    operate(&state, &id, &[Scheduled, Running, Held], |_| Paused, "campaign.paused", "paused by an operator", false)
        .await
}

/// Back to `running` (or `scheduled` if no node ever started); the
/// failures so far are accepted, and the failure policy counts from here.
#[utoipa::path(
    post,
    path = "/api/v1/campaigns/{id}/resume",
    operation_id = "resume_campaign",
    tag = "campaigns",
    description = "Role: operator. A paused campaign; the failures so far are accepted.",
    params(("id" = String, Path, description = "The campaign's id")),
    responses(
        (status = 200, description = "The campaign", body = CampaignView),
        super::openapi::NeedsRole,
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
    )
)]
async fn resume(
    _: Operator,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CampaignView>, ApiError> {
    use CampaignState::*;
    let to = |c: &Campaign| if c.started_at_ms.is_some() { Running } else { Scheduled };
    operate(&state, &id, &[Paused], to, "campaign.resumed", "resumed by an operator", true).await
}

/// No node starts any more; one in progress finishes (a flash is not
/// interrupted) and is recorded.
#[utoipa::path(
    post,
    path = "/api/v1/campaigns/{id}/cancel",
    operation_id = "cancel_campaign",
    tag = "campaigns",
    description = "Role: operator. No node starts any more; one in progress finishes.",
    params(("id" = String, Path, description = "The campaign's id")),
    responses(
        (status = 200, description = "The campaign", body = CampaignView),
        super::openapi::NeedsRole,
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
    )
)]
async fn cancel(
    _: Operator,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CampaignView>, ApiError> {
    use CampaignState::*;
    operate(
        &state,
        &id,
        &[Scheduled, Running, Held, Paused],
        |_| Cancelled,
        "campaign.cancelled",
        "cancelled by an operator",
        false,
    )
    .await
}

#[cfg(test)]
#[path = "campaigns_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "campaigns_os_tests.rs"]
mod os_tests;
