//! Agent endpoints: hello, inventory, instructions. Each request carries
//! the machine's own agent token, so an agent can only report for the
//! machine it booted on.

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::auth::AgentMachine;
use crate::error::{parse_json, ApiError};
use crate::lifecycle::Trigger;
use crate::AppState;
use wire::{Hello, Instruction, Inventory};

/// How often a waiting discovery agent asks for instructions.
const POLL_SECONDS: u32 = 10;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(wire::HELLO_PATH, post(hello))
        .route(wire::INVENTORY_PATH, post(inventory))
        .route(wire::INSTRUCTIONS_PATH, get(instructions))
}

async fn hello(
    AgentMachine(id): AgentMachine,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Instruction>, ApiError> {
    let hello: Hello = parse_json(&body)?;
    tracing::info!(
        machine = id,
        mac = hello.mac,
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

async fn instructions(AgentMachine(_id): AgentMachine) -> Json<Instruction> {
    // Ready machines wait in the ramdisk; deploy instructions come later.
    Json(Instruction::Wait { poll_seconds: POLL_SECONDS })
}

#[cfg(test)]
mod tests {
    use crate::routes::test_support::{app, get, get_text, post};
    use axum::http::StatusCode;

    fn token_from(script: &str) -> String {
        script.split("slipway.token=").nth(1).unwrap().split_whitespace().next().unwrap().to_string()
    }

    fn inventory_json(mac: &str) -> serde_json::Value {
        serde_json::json!({
            "source": "in_band",
            "system": { "vendor": "QEMU", "product": "Standard PC", "serial": "S1", "uuid": null },
            "cpu": { "model": "QEMU Virtual CPU", "count": 2 },
            "memory": { "total_bytes": 1_000_000 },
            "disks": [{ "name": "vda", "size_bytes": 8_589_934_592u64, "model": null, "serial": "d1", "rotational": true }],
            "nics": [{ "name": "eth0", "mac": mac, "link": true, "speed_mbps": null }]
        })
    }

    #[tokio::test]
    async fn inventory_makes_the_machine_ready() {
        let t = app().await;
        let (_, script) = get_text(&t.boot, "/boot/52-54-00-00-00-06.ipxe").await;
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
        let (_, script) = get_text(&t.boot, "/boot/52-54-00-00-00-07.ipxe").await;
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
        let (_, m) = get(&t.operator, "/api/v1/machines/52:54:00:00:00:07", Some(&t.admin)).await;
        assert_eq!(m["state"], "discovering", "rejected reports change nothing");
    }
}
