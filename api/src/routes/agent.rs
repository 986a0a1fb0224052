//! Agent endpoints: hello, inventory, instructions, deploy reports. Each request carries
//! the machine's own agent token, so an agent can only report for the
//! machine it booted on.

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::auth::AgentMachine;
use crate::error::{parse_json, ApiError};
use crate::AppState;
use model::lifecycle::{MachineState, Trigger};
use store::DeployPhase;
use wire::{DeployReport, DeploySpec, Hello, Instruction, Inventory, WipeReport};

/// How often a waiting discovery agent asks for instructions.
const POLL_SECONDS: u32 = 10;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(wire::HELLO_PATH, post(hello))
        .route(wire::INVENTORY_PATH, post(inventory))
        .route(wire::INSTRUCTIONS_PATH, get(instructions))
        .route(wire::DEPLOY_PATH, post(deploy_report))
        .route(wire::WIPED_PATH, post(wiped))
}

async fn hello(
    AgentMachine(id): AgentMachine,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Instruction>, ApiError> {
    let hello: Hello = parse_json(&body)?;
    tracing::info!(
        machine = id,
        mac = %hello.mac,
        agent_version = hello.agent_version,
        mode = hello.mode,
        "agent hello"
    );
    state.store.record_event(Some(&id), "agent.hello", serde_json::to_value(&hello).unwrap_or_default()).await?;
    Ok(Json(Instruction::Wait { poll_seconds: POLL_SECONDS }))
}

async fn inventory(
    AgentMachine(id): AgentMachine,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Instruction>, ApiError> {
    let inventory: Inventory = parse_json(&body)?;
    if inventory.nics.is_empty() {
        return Err(ApiError::BadRequest {
            field: "nics".into(),
            detail: "an inventory without NICs cannot come from a network-booted machine".into(),
        });
    }
    state.store.set_inventory(&id, &inventory).await?;
    let to = state.store.fire(&id, Trigger::InventoryReceived).await?;
    tracing::info!(machine = id, state = ?to, cpus = inventory.cpu.count, memory_bytes = inventory.memory.total_bytes, disks = inventory.disks.len(), "inventory stored");
    metrics::counter!("slipway_inventories_total").increment(1);
    Ok(Json(Instruction::Wait { poll_seconds: POLL_SECONDS }))
}

/// Longest an instructions request is held open (`?wait_seconds=`); under
/// the agent's 20 s request timeout.
const MAX_HOLD_SECONDS: u64 = 15;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Hold {
    /// Hold the request until there is work or this many seconds pass
    /// (long poll), so a deploy starts within a second, not a poll period.
    wait_seconds: Option<u64>,
}

async fn instructions(
    AgentMachine(id): AgentMachine,
    State(state): State<AppState>,
    axum::extract::Query(hold): axum::extract::Query<Hold>,
) -> Result<Json<Instruction>, ApiError> {
    let hold = std::time::Duration::from_secs(hold.wait_seconds.unwrap_or(0).min(MAX_HOLD_SECONDS));
    let deadline = tokio::time::Instant::now() + hold;
    let wake = state.work_posted.for_machine(&id);
    loop {
        // Registered before looking, so a wake-up between the look and the
        // wait is not missed.
        let woken = wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let instruction = next_instruction(&state, &id).await?;
        if !matches!(instruction, Instruction::Wait { .. }) || hold.is_zero() {
            return Ok(Json(instruction));
        }
        tokio::select! {
            _ = &mut woken => continue,
            _ = tokio::time::sleep_until(deadline) => {
                // Held the whole time: ask again right away.
                return Ok(Json(Instruction::Wait { poll_seconds: 1 }));
            }
        }
    }
}

/// Ready machines wait in the ramdisk; a deploying one is handed its image
/// until the agent reports it written or failed; a releasing one, the wipe.
async fn next_instruction(state: &AppState, id: &str) -> Result<Instruction, ApiError> {
    let wait = Instruction::Wait { poll_seconds: POLL_SECONDS };
    let machine_state = state.store.machine(id).await?.map(|m| m.state);
    if machine_state == Some(MachineState::Releasing) {
        return Ok(match state.store.release_mode(id).await? {
            Some(mode) => Instruction::Wipe { mode },
            None => wait,
        });
    }
    // A refreshing machine's installer is handed its new deployment
    // exactly as a deploying one is.
    let deploying = matches!(machine_state, Some(MachineState::Deploying | MachineState::Refreshing));
    let Some(deployment) = state.store.deployment(id).await?.filter(|_| deploying) else {
        return Ok(wait);
    };
    if matches!(deployment.phase, DeployPhase::Written | DeployPhase::Failed) {
        return Ok(wait);
    }
    let image = state.store.image(&deployment.image).await?;
    let Some((sha256, raw_bytes)) = image.and_then(|i| Some((i.sha256?, i.raw_bytes?))) else {
        return Ok(wait);
    };
    let spec = deployment.spec;
    Ok(Instruction::Deploy(Box::new(DeploySpec {
        url_path: format!("/boot/images/{}.raw.zst", deployment.image),
        image: deployment.image.clone(),
        sha256,
        raw_bytes: raw_bytes as u64,
        disk: spec.disk,
        hostname: spec.hostname,
        ssh_authorized_keys: spec.ssh_authorized_keys,
        users: spec.users,
        network: spec.network,
        user_data: spec.user_data,
        // A new credential with every hand-out: one live per machine, so a
        // write restarted after a reboot installs the one that works.
        node_token: state.store.issue_node_token(id).await?,
    })))
}

/// The outcome of a release's wipe: `ready` again, or `failed` in phase
/// `releasing` with the agent's error.
async fn wiped(
    AgentMachine(id): AgentMachine,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Instruction>, ApiError> {
    let report: WipeReport = parse_json(&body)?;
    if !state.store.machine(&id).await?.is_some_and(|m| m.state == MachineState::Releasing) {
        return Err(store::StoreError::Conflict(format!("machine {id} is not releasing")).into());
    }
    state.store.finish_release(&id, &report.disks, report.error.as_deref()).await?;
    tracing::info!(machine = id, mode = report.mode.as_str(), disks = ?report.disks, error = report.error, "wipe report");
    let outcome = if report.error.is_some() { "failed" } else { "wiped" };
    metrics::counter!("slipway_releases_total", "outcome" => outcome).increment(1);
    Ok(Json(Instruction::Wait { poll_seconds: POLL_SECONDS }))
}

/// Progress and outcome of a deployment. `written` moves the machine to
/// `deployed` and tells the agent to reboot (into its disk); `failed`
/// moves it to `failed` with the agent's error.
async fn deploy_report(
    AgentMachine(id): AgentMachine,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Instruction>, ApiError> {
    let report: DeployReport = parse_json(&body)?;
    let phase = report.phase;
    if phase == DeployPhase::Requested {
        return Err(ApiError::BadRequest {
            field: "phase".into(),
            detail: "requested is the appliance's phase: an agent reports writing, verifying, configuring, written or failed"
                .into(),
        });
    }
    let machine_state = state.store.machine(&id).await?.map(|m| m.state);
    if !matches!(machine_state, Some(MachineState::Deploying | MachineState::Refreshing)) {
        return Err(store::StoreError::Conflict(format!("machine {id} is not deploying")).into());
    }
    let bytes = i64::try_from(report.bytes_written).unwrap_or(i64::MAX);
    state
        .store
        .deploy_progress(
            &id,
            phase,
            bytes,
            report.disk.as_deref(),
            report.error.as_deref(),
            report.configured.as_deref(),
        )
        .await?;
    tracing::info!(
        machine = id,
        phase = phase.as_str(),
        bytes = report.bytes_written,
        error = report.error,
        "deploy report"
    );
    match phase {
        DeployPhase::Written => {
            // With a join spec, `deployed` waits for the node agent to
            // report membership, with a deadline.
            let joins = state.store.deployment(&id).await?.is_some_and(|d| d.spec.cluster.is_some());
            let deadline = joins.then(|| state.store.now_ms() + state.join_timeout_ms);
            state.store.fire_because(&id, Trigger::ImageWritten, Trigger::ImageWritten.cause(), deadline).await?;
            metrics::counter!("slipway_deployments_total", "outcome" => "written").increment(1);
            Ok(Json(Instruction::Reboot))
        }
        DeployPhase::Failed => {
            let reason = report.error.as_deref().unwrap_or("the agent gave no reason");
            // A failed refresh stays `refreshing`: its campaign rolls it back.
            if machine_state == Some(MachineState::Deploying) {
                state.store.fire_because(&id, Trigger::DeployFailed, reason, None).await?;
            }
            metrics::counter!("slipway_deployments_total", "outcome" => "failed").increment(1);
            Ok(Json(Instruction::Wait { poll_seconds: POLL_SECONDS }))
        }
        _ => Ok(Json(Instruction::Wait { poll_seconds: POLL_SECONDS })),
    }
}

#[cfg(test)]
mod tests {
    use crate::routes::test_support::{app, boot_script, get, inventory_json, post, token_from};
    use axum::http::StatusCode;

    /// The script pins the appliance's key; every answer to a request with
    /// a nonce is signed with it for that nonce (what the agent checks).
    #[tokio::test]
    async fn answers_are_signed_with_the_key_the_script_pinned() {
        let t = app().await;
        let (_, script) = boot_script(&t, "52:54:00:00:00:09").await;
        let token = token_from(&script);
        let key = script.split("slipway.key=").nth(1).unwrap().split_whitespace().next().unwrap();
        let key: [u8; 32] = hex::decode(key).unwrap().try_into().unwrap();
        let key = ed25519_dalek::VerifyingKey::from_bytes(&key).unwrap();
        let nonce = "0123456789abcdef0123456789abcdef";
        let req = axum::http::Request::get(format!("{}?wait_seconds=0", wire::INSTRUCTIONS_PATH))
            .header("Authorization", format!("Bearer {token}"))
            .header(wire::NONCE_HEADER, nonce)
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = tower::ServiceExt::oneshot(t.boot.clone(), req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let signature = resp.headers()[wire::SIGNATURE_HEADER].to_str().unwrap().to_string();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        let signature: [u8; 64] = hex::decode(signature).unwrap().try_into().unwrap();
        let signature = ed25519_dalek::Signature::from_bytes(&signature);
        assert!(key.verify_strict(&wire::signed_bytes(nonce, &body), &signature).is_ok(), "signed for this nonce");
        assert!(key.verify_strict(&wire::signed_bytes("ffffffffffffffff", &body), &signature).is_err());
    }

    #[tokio::test]
    async fn inventory_makes_the_machine_ready() {
        let t = app().await;
        let (_, script) = boot_script(&t, "52:54:00:00:00:06").await;
        let token = token_from(&script);
        let hello = serde_json::json!({ "mac": "52:54:00:00:00:06", "agent_version": "0.1.0", "mode": "discovery" });
        assert_eq!(post(&t.boot, wire::HELLO_PATH, &token, &hello).await.0, StatusCode::OK);
        let (status, reply) = post(&t.boot, wire::INVENTORY_PATH, &token, &inventory_json("52:54:00:00:00:06")).await;
        assert_eq!((status, reply["action"].as_str()), (StatusCode::OK, Some("wait")));
        let (_, m) = get(&t.operator, "/api/v1/machines/52:54:00:00:00:06", Some(&t.admin)).await;
        assert_eq!(m["state"], "ready");
        assert_eq!(m["inventory"]["disks"][0]["size_bytes"], 8_589_934_592u64);
        let (_, events) =
            get(&t.operator, &format!("/api/v1/machines/{}/events", m["id"].as_str().unwrap()), Some(&t.admin)).await;
        let kinds: Vec<&str> =
            events["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["machine.created", "boot.script", "agent.hello", "inventory.received", "state.changed"]);
    }

    /// An agent that refused answers in the appliance's name says so on its
    /// next call: the machine's events and a metric show the impersonator.
    #[tokio::test]
    async fn answers_an_agent_refused_become_an_event() {
        let t = app().await;
        let (id, token) = crate::routes::test_support::ready_machine(&t, "52:54:00:00:00:08").await;
        let poll = |refused: &'static str| {
            let token = token.clone();
            let boot = t.boot.clone();
            async move {
                let request = axum::http::Request::get(format!("{}?wait_seconds=0", wire::INSTRUCTIONS_PATH))
                    .header("Authorization", format!("Bearer {token}"))
                    .header(wire::REFUSED_ANSWERS_HEADER, refused)
                    .body(axum::body::Body::empty())
                    .unwrap();
                tower::ServiceExt::oneshot(boot, request).await.unwrap().status()
            }
        };
        assert_eq!(poll("3").await, StatusCode::OK);
        assert_eq!(poll("3").await, StatusCode::OK, "said again: nothing new");
        assert_eq!(poll("not a number").await, StatusCode::OK, "a malformed count is ignored");
        assert_eq!(poll("4").await, StatusCode::OK);
        let (_, events) = get(&t.operator, &format!("/api/v1/machines/{id}/events"), Some(&t.admin)).await;
        let refused: Vec<(u64, u64)> = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "agent.answers_refused")
            .map(|e| (e["detail"]["count"].as_u64().unwrap(), e["detail"]["new"].as_u64().unwrap()))
            .collect();
        assert_eq!(refused, [(3, 3), (4, 1)]);
    }

    #[tokio::test]
    async fn agents_need_their_own_token_and_valid_bodies() {
        let t = app().await;
        let inv = inventory_json("52:54:00:00:00:07");
        assert_eq!(post(&t.boot, wire::INVENTORY_PATH, "forged", &inv).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(
            post(&t.boot, wire::INVENTORY_PATH, &t.admin, &inv).await.0,
            StatusCode::UNAUTHORIZED,
            "the admin token is not an agent token"
        );
        let (_, script) = boot_script(&t, "52:54:00:00:00:07").await;
        let token = token_from(&script);
        let mut bad = inv.clone();
        bad["cpu"]["count"] = serde_json::json!("two");
        let (status, problem) = post(&t.boot, wire::INVENTORY_PATH, &token, &bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(problem["detail"].as_str().unwrap().contains("invalid type"), "{problem}");
        let mut extra = inv.clone();
        extra["surprise"] = serde_json::json!(1);
        let (status, problem) = post(&t.boot, wire::INVENTORY_PATH, &token, &extra).await;
        assert_eq!((status, problem["field"].as_str()), (StatusCode::BAD_REQUEST, Some("surprise")));
        let mut bad_mac = inv.clone();
        bad_mac["nics"][0]["mac"] = serde_json::json!("52:54:00:00:00:zz");
        let (status, problem) = post(&t.boot, wire::INVENTORY_PATH, &token, &bad_mac).await;
        assert_eq!((status, problem["field"].as_str()), (StatusCode::BAD_REQUEST, Some("nics[0].mac")), "{problem}");
        let hello = serde_json::json!({ "mac": "not-a-mac", "agent_version": "0.1.0", "mode": "discovery" });
        let (status, problem) = post(&t.boot, wire::HELLO_PATH, &token, &hello).await;
        assert_eq!((status, problem["field"].as_str()), (StatusCode::BAD_REQUEST, Some("mac")), "{problem}");
        let (_, m) = get(&t.operator, "/api/v1/machines/52:54:00:00:00:07", Some(&t.admin)).await;
        assert_eq!(m["state"], "discovering", "rejected reports change nothing");
    }
}
