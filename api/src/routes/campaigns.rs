//! `/api/v1/campaigns`: create a refresh campaign (checked field by field,
//! targets resolved to machines once), list them, show one with each
//! node's progress, and pause, resume or cancel it. The runner
//! (`campaign::runner`) does the work; these handlers only store intent.

use std::collections::BTreeSet;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::firmware::valid_name;
use super::machines::find;
use super::Routes;
use crate::auth::{Operator, Viewer};
use crate::campaign::model::{
    order_nodes, Action, Campaign, CampaignState, FirmwareAction, Gates, NodeProgress, NodeState, Rollout, Schedule,
    Targets,
};
use crate::error::{parse_json, ApiError};
use crate::store::{now_ms, rfc3339, ImageState, StoreError, UpsFeeds};
use crate::AppState;

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    name: String,
    targets: Targets,
    action: Action,
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

fn check_firmware(state: &AppState, f: &FirmwareAction) -> Result<(), ApiError> {
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
            if !valid_name(name) || super::firmware::find(&state.firmware_dir, name).is_none() {
                return Err(bad(
                    "action.firmware.firmware",
                    format!("no firmware {name:?} uploaded (PUT /api/v1/firmware/{{name}})"),
                ));
            }
            if state.boot.is_none() {
                return Err(bad(
                    "action.firmware.firmware",
                    "the boot HTTP face is off, so no BMC can fetch it: give image_url",
                ));
            }
            Ok(())
        }
        (None, Some(url)) => {
            let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
            if !scheme_ok || url.len() > 2048 || !url.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad("action.firmware.image_url", "an http:// or https:// URL the BMC can fetch"));
            }
            Ok(())
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

async fn create(_: Operator, State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let req: Create = parse_json(&body)?;
    if req.name.trim().is_empty() || req.name.len() > 128 || req.name.chars().any(char::is_control) {
        return Err(bad("name", "1 to 128 characters"));
    }
    match &req.action {
        Action::Firmware(f) => check_firmware(&state, f)?,
        Action::OsRefresh { image } => match state.store.image(image).await? {
            Some(i) if i.state == ImageState::Available => {}
            Some(i) => {
                return Err(bad("action.os_refresh.image", format!("image {image:?} is {:?}, not available", i.state)))
            }
            None => return Err(bad("action.os_refresh.image", format!("no image named {image:?}"))),
        },
    }
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
    let nodes = order_nodes(resolve(&state, &req.targets).await?, req.rollout.order);
    let at = now_ms();
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
    Ok((StatusCode::CREATED, Json(view(&campaign, &nodes))).into_response())
}

/// The campaign as shown: times in RFC 3339, node counts, the next time
/// its schedule opens, and (with `nodes`) each node's progress.
fn view(c: &Campaign, nodes: &[NodeProgress]) -> Value {
    let time = |ms: Option<i64>| ms.map(rfc3339);
    let count = |s: NodeState| nodes.iter().filter(|n| n.state == s).count();
    let next_start = c.schedule.parse().ok().and_then(|s| s.next_open(now_ms()));
    json!({
        "id": c.id, "name": c.name, "state": c.state, "reason": c.reason,
        "targets": c.targets, "action": c.action, "schedule": c.schedule, "rollout": c.rollout, "gates": c.gates,
        "acknowledged_failures": c.acknowledged_failures,
        "created_at": rfc3339(c.created_at_ms), "updated_at": rfc3339(c.updated_at_ms),
        "started_at": time(c.started_at_ms), "finished_at": time(c.finished_at_ms),
        "schedule_next_open": if c.state.is_final() { None } else { time(next_start) },
        "summary": {
            "total": nodes.len(), "pending": count(NodeState::Pending), "applying": count(NodeState::Applying),
            "verifying": count(NodeState::Verifying), "done": count(NodeState::Done), "failed": count(NodeState::Failed),
            "rolled_back": count(NodeState::RolledBack),
        },
        "nodes": nodes.iter().map(|n| json!({
            "machine_id": n.machine_id, "position": n.position, "rack": n.rack, "state": n.state,
            "reason": n.reason, "old_version": n.old_version, "new_version": n.new_version,
            "started_at": time(n.started_at_ms), "finished_at": time(n.finished_at_ms),
        })).collect::<Vec<_>>(),
    })
}

async fn one(state: &AppState, id: &str) -> Result<Value, ApiError> {
    let c = state.store.campaign(id).await?.ok_or_else(|| ApiError::NotFound { what: format!("campaign {id}") })?;
    Ok(view(&c, &state.store.campaign_nodes(id).await?))
}

async fn list(_: Viewer, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut out = vec![];
    for c in state.store.campaigns().await? {
        let mut v = view(&c, &state.store.campaign_nodes(&c.id).await?);
        // The list is a summary; one campaign's nodes are at /campaigns/{id}.
        v.as_object_mut().map(|o| o.remove("nodes"));
        out.push(v);
    }
    Ok(Json(json!({ "campaigns": out })))
}

async fn show(_: Viewer, State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(one(&state, &id).await?))
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
) -> Result<Json<Value>, ApiError> {
    let c = state.store.campaign(id).await?.ok_or_else(|| ApiError::NotFound { what: format!("campaign {id}") })?;
    let detail = json!({ "cause": "operator" });
    let moved = state.store.transition_campaign(id, from, to(&c), Some(reason), event, detail, acknowledge).await?;
    if moved.is_none() {
        let now = state.store.campaign(id).await?.map_or(c.state, |c| c.state);
        return Err(StoreError::Conflict(format!("campaign {id} is {}", now.as_str())).into());
    }
    Ok(Json(one(state, id).await?))
}

async fn pause(_: Operator, State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    use CampaignState::*;
    operate(&state, &id, &[Scheduled, Running, Held], |_| Paused, "campaign.paused", "paused by an operator", false)
        .await
}

/// Back to `running` (or `scheduled` if no node ever started); the
/// failures so far are accepted, and the failure policy counts from here.
async fn resume(_: Operator, State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    use CampaignState::*;
    let to = |c: &Campaign| if c.started_at_ms.is_some() { Running } else { Scheduled };
    operate(&state, &id, &[Paused], to, "campaign.resumed", "resumed by an operator", true).await
}

/// No node starts any more; one in progress finishes (a flash is not
/// interrupted) and is recorded.
async fn cancel(_: Operator, State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
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
