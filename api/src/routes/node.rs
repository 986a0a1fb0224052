//! Deployed nodes and their clusters.
//!
//! The node agent (slipway-agent as a systemd service on the deployed OS)
//! posts its status every heartbeat with the credential written at deploy;
//! the reply says what to do about the cluster. A machine becomes `joined`
//! only when the agent reports membership that it read from the cluster
//! itself (`docker info`, or the join spec's check command).
//!
//! Operators read `GET /api/v1/machines/{id}/node` and `/api/v1/clusters`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use super::Routes;
use crate::auth::{NodeMachine, Viewer};
use crate::error::{parse_json, ApiError};
use crate::join::{self, JoinSpec, HEARTBEAT_SECONDS};
use crate::AppState;
use model::lifecycle::{MachineState, Trigger};
use store::{Cluster, NodeReport};
use wire::{NodeInstruction, NodeStatus, SwarmCreated};

/// How often a manager reports while a refresh waits for a Swarm change.
const OPS_POLL_SECONDS: u32 = 2;

pub fn agent_router() -> Router<AppState> {
    Router::new().route(wire::NODE_STATUS_PATH, post(status)).route(wire::NODE_SWARM_PATH, post(swarm_created))
}

pub(super) fn operator_router() -> Routes {
    Routes::new()
        .route("/api/v1/machines/{id}/node", get(show_node))
        .route("/api/v1/clusters", get(list_clusters))
        .route("/api/v1/clusters/{name}", get(show_cluster))
}

/// The join spec of the machine's deployment, if it asked for one.
async fn join_spec(state: &AppState, id: &str) -> Result<Option<JoinSpec>, ApiError> {
    Ok(state.store.deployment(id).await?.and_then(|d| d.spec.cluster))
}

async fn status(
    NodeMachine(id): NodeMachine,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<NodeInstruction>, ApiError> {
    let report: NodeStatus = parse_json(&body)?;
    let machine_state = state.store.machine(&id).await?.map(|m| m.state);
    if !matches!(machine_state, Some(MachineState::Deployed | MachineState::Joined)) {
        return Err(store::StoreError::Conflict(format!("machine {id} is not deployed")).into());
    }
    if state.store.record_node_status(&id, &report).await? {
        tracing::info!(
            machine = id,
            os = report.os,
            kernel = report.kernel,
            containerd = report.containerd_version,
            docker = report.docker_version,
            "node agent started"
        );
        crate::metrics_catalog::node_agent_started(&state.store, &id).await;
    }
    // A refresh campaign's drain or undrain command comes first.
    if let Some(hook) = state.store.node_hook(&id).await? {
        if let Some(run) = hook.instruction_unless_done(report.hook.as_ref()) {
            tracing::info!(machine = id, hook = hook.hook_id, "asking a node agent to run a drain command");
            return Ok(Json(run));
        }
    }
    let spec = join_spec(&state, &id).await?;
    let cluster_name = spec.as_ref().and_then(JoinSpec::managed_cluster).map(str::to_string);
    let cluster_name = cluster_name.as_deref();
    if let Some(membership) = &report.cluster {
        if let (Some(name), true) = (cluster_name, membership.manager && !membership.members.is_empty()) {
            state.store.set_cluster_members(name, &membership.members).await?;
        }
        if machine_state == Some(MachineState::Deployed) {
            if let Some(MachineState::Joined) = state.store.fire(&id, Trigger::ClusterJoined).await? {
                tracing::info!(
                    machine = id,
                    kind = membership.kind.as_str(),
                    node_id = membership.node_id,
                    manager = membership.manager,
                    "node joined its cluster"
                );
                metrics::counter!("slipway_cluster_joins_total").increment(1);
                crate::metrics_catalog::cluster_joined(&state.store, &id).await;
                let detail = json!({ "kind": membership.kind, "node_id": membership.node_id, "manager": membership.manager, "cluster": cluster_name });
                state.store.record_event(Some(&id), "cluster.joined", detail).await?;
            }
        }
        // A manager carries out what OS refreshes wait for (drain, tidy).
        let mut poll_seconds = HEARTBEAT_SECONDS;
        if let (Some(name), true) = (cluster_name, membership.manager) {
            let ops = state.store.cluster_ops(name).await?;
            if let Some(op) = model::refresh_plan::next_cluster_op(&ops, &membership.members) {
                tracing::info!(machine = id, cluster = name, ?op, "asking a Swarm manager to change a node");
                return Ok(Json(op));
            }
            // A refresh waits on this manager's member list: report often.
            if !ops.is_empty() {
                poll_seconds = OPS_POLL_SECONDS;
            }
        }
        return Ok(Json(NodeInstruction::Wait { poll_seconds }));
    }
    let Some(spec) = spec else {
        return Ok(Json(NodeInstruction::Wait { poll_seconds: HEARTBEAT_SECONDS }));
    };
    if let Some(error) = &report.join_error {
        tracing::warn!(machine = id, error, "cluster join attempt failed; the agent retries");
    }
    let cluster = match cluster_name {
        Some(name) => {
            let mut cluster = state.store.claim_cluster(name, spec.kind, &id).await?;
            for token in [&mut cluster.worker_token, &mut cluster.manager_token].into_iter().flatten() {
                *token = state.oob.open_or_clear(token).map_err(|e| {
                    ApiError::Store(store::StoreError::Corrupt(format!("cluster {name}'s join token: {e}")))
                })?;
            }
            // Join through a manager that is up: the one that created the
            // Swarm may be away (an OS refresh), or be this very node.
            if cluster.endpoint.is_some() {
                let since = state.store.now_ms() - 3 * i64::from(HEARTBEAT_SECONDS) * 1000;
                if let Some(live) = state.store.live_manager_endpoint(name, &id, since).await? {
                    cluster.endpoint = Some(live);
                }
            }
            Some(cluster)
        }
        None => None,
    };
    Ok(Json(join::plan(&spec, &id, cluster.as_ref())))
}

/// The node that created its cluster's Swarm hands back the join tokens.
async fn swarm_created(
    NodeMachine(id): NodeMachine,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<NodeInstruction>, ApiError> {
    let created: SwarmCreated = parse_json(&body)?;
    let spec = join_spec(&state, &id).await?;
    let Some(name) = spec.as_ref().and_then(JoinSpec::managed_cluster) else {
        return Err(store::StoreError::Conflict(format!("machine {id} forms no cluster")).into());
    };
    // Join tokens let anyone join the cluster: sealed at rest like BMC passwords.
    let (worker, manager) = (state.oob.seal(&created.worker_token), state.oob.seal(&created.manager_token));
    state.store.cluster_created(name, &id, &created.endpoint, &worker, &manager).await?;
    tracing::info!(machine = id, cluster = name, endpoint = created.endpoint, "swarm created");
    Ok(Json(NodeInstruction::Wait { poll_seconds: 1 }))
}

/// The node agent's last report from the machine's deployed OS.
#[utoipa::path(
    get,
    path = "/api/v1/machines/{id}/node",
    operation_id = "get_node",
    tag = "nodes",
    description = "Role: viewer.",
    params(("id" = String, Path, example = "52:54:00:12:34:56", description = "The machine's id or any of its MACs")),
    responses(
        (status = 200, description = "The node's last report", body = NodeReport),
        super::openapi::NeedsToken,
        (status = 404, response = super::openapi::NotFound),
    )
)]
async fn show_node(
    _: Viewer,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<NodeReport>, ApiError> {
    let machine = super::machines::find(&state, &id).await?;
    let report = state.store.node_report(&machine.id).await?;
    report.map(Json).ok_or_else(|| ApiError::NotFound { what: format!("a node agent report from machine {id}") })
}

/// The clusters Slipway formed.
#[derive(Serialize, ToSchema)]
pub(super) struct ClusterList {
    pub clusters: Vec<Cluster>,
}

/// Every cluster Slipway formed.
#[utoipa::path(
    get,
    path = "/api/v1/clusters",
    operation_id = "list_clusters",
    tag = "nodes",
    description = "Role: viewer.",
    responses(
        (status = 200, description = "Every cluster", body = ClusterList),
        super::openapi::NeedsToken,
    )
)]
async fn list_clusters(_: Viewer, State(state): State<AppState>) -> Result<Json<ClusterList>, ApiError> {
    Ok(Json(ClusterList { clusters: state.store.clusters().await? }))
}

/// One cluster with its members as its manager sees them; join tokens
/// are never shown.
#[utoipa::path(
    get,
    path = "/api/v1/clusters/{name}",
    operation_id = "get_cluster",
    tag = "nodes",
    description = "Role: viewer.",
    params(("name" = String, Path, example = "rack7", description = "The cluster's name")),
    responses(
        (status = 200, description = "The cluster", body = Cluster),
        super::openapi::NeedsToken,
        (status = 404, response = super::openapi::NotFound),
    )
)]
async fn show_cluster(
    _: Viewer,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Cluster>, ApiError> {
    let cluster = state.store.cluster(&name).await?;
    cluster.map(Json).ok_or_else(|| ApiError::NotFound { what: format!("cluster {name}") })
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use serde_json::json;

    use crate::routes::test_support::{app, deployed_machine, get, post, TestApp};

    fn status(hostname: &str) -> serde_json::Value {
        json!({ "agent_version": "0.1.0", "hostname": hostname, "os": "Debian GNU/Linux 12 (bookworm)",
                "kernel": "6.1.0-28-amd64", "containerd_version": "1.6.20", "docker_version": "20.10.24" })
    }

    fn member(hostname: &str, node_id: &str, manager: bool, members: serde_json::Value) -> serde_json::Value {
        let mut s = status(hostname);
        s["cluster"] = json!({ "kind": "swarm", "node_id": node_id, "manager": manager, "members": members });
        s
    }

    async fn machine_state(t: &TestApp, id: &str) -> String {
        get(&t.operator, &format!("/api/v1/machines/{id}"), Some(&t.admin)).await.1["state"].as_str().unwrap().into()
    }

    #[tokio::test]
    async fn slipway_forms_a_swarm_from_the_first_node_and_the_rest_join_it() {
        let t = app().await;
        let cluster = json!({ "kind": "swarm", "cluster": "rack7" });
        let (first, first_token) = deployed_machine(&t, "52:54:00:00:00:41", "node1", Some(&cluster)).await;
        let (second, second_token) = deployed_machine(&t, "52:54:00:00:00:42", "node2", Some(&cluster)).await;
        let path = wire::NODE_STATUS_PATH;

        // Both report before the swarm exists: the first to ask creates it.
        let (code, plan) = post(&t.boot, path, &second_token, &status("node2")).await;
        assert_eq!((code, plan["action"].as_str()), (StatusCode::OK, Some("swarm_init")), "{plan}");
        assert_eq!(post(&t.boot, path, &first_token, &status("node1")).await.1["action"], "wait");
        let created =
            json!({ "endpoint": "10.77.0.101:2377", "worker_token": "SWMTKN-1-w", "manager_token": "SWMTKN-1-m" });
        assert_eq!(
            post(&t.boot, wire::NODE_SWARM_PATH, &first_token, &created).await.0,
            StatusCode::CONFLICT,
            "only the node that was told to create the swarm hands back its tokens"
        );
        assert_eq!(post(&t.boot, wire::NODE_SWARM_PATH, &second_token, &created).await.0, StatusCode::OK);
        let (_, plan) = post(&t.boot, path, &first_token, &status("node1")).await;
        assert_eq!(plan, json!({ "action": "swarm_join", "endpoint": "10.77.0.101:2377", "token": "SWMTKN-1-w" }));
        assert_eq!(machine_state(&t, &first).await, "deployed", "told to join is not joined");

        // Membership as the cluster reports it makes a machine joined.
        let members = json!([
            { "hostname": "node2", "status": "Ready", "availability": "Active", "manager": true },
            { "hostname": "node1", "status": "Ready", "availability": "Active", "manager": false }
        ]);
        assert_eq!(post(&t.boot, path, &second_token, &member("node2", "n2", true, members)).await.1["action"], "wait");
        assert_eq!(post(&t.boot, path, &first_token, &member("node1", "n1", false, json!([]))).await.0, StatusCode::OK);
        assert_eq!(
            (machine_state(&t, &first).await, machine_state(&t, &second).await),
            ("joined".into(), "joined".into())
        );

        let (_, c) = get(&t.operator, "/api/v1/clusters/rack7", Some(&t.admin)).await;
        assert_eq!(
            (c["initiator"].as_str(), c["members"].as_array().unwrap().len()),
            (Some(second.as_str()), 2),
            "{c}"
        );
        assert!(!c.to_string().contains("SWMTKN"), "join tokens are never shown: {c}");
        let stored = t.state.store.cluster("rack7").await.unwrap().unwrap();
        let at_rest = format!("{:?} {:?}", stored.worker_token, stored.manager_token);
        assert!(!at_rest.contains("SWMTKN") && stored.worker_token.is_some(), "sealed at rest: {at_rest}");
        let (_, node) = get(&t.operator, &format!("/api/v1/machines/{first}/node"), Some(&t.admin)).await;
        assert_eq!(node["status"]["docker_version"], "20.10.24");
        let (_, events) = get(&t.operator, &format!("/api/v1/machines/{first}/events"), Some(&t.admin)).await;
        let kinds: Vec<&str> =
            events["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
        for kind in ["node.agent_started", "cluster.joined"] {
            assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
        }
    }

    #[tokio::test]
    async fn node_credentials_are_per_machine_and_die_with_release() {
        let t = app().await;
        let (id, token) = deployed_machine(&t, "52:54:00:00:00:43", "node3", None).await;
        let path = wire::NODE_STATUS_PATH;
        assert_eq!(post(&t.boot, path, "forged", &status("node3")).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(post(&t.boot, path, &t.admin, &status("node3")).await.0, StatusCode::UNAUTHORIZED);
        let mut bad = status("node3");
        bad["kernel"] = json!(6);
        let (code, problem) = post(&t.boot, path, &token, &bad).await;
        assert_eq!((code, problem["field"].as_str()), (StatusCode::BAD_REQUEST, Some("kernel")), "{problem}");
        let (code, plan) = post(&t.boot, path, &token, &status("node3")).await;
        assert_eq!(
            (code, plan["action"].as_str()),
            (StatusCode::OK, Some("wait")),
            "no cluster asked: nothing to join"
        );
        assert_eq!(machine_state(&t, &id).await, "deployed");
        let release = format!("/api/v1/machines/{id}/release");
        assert_eq!(post(&t.operator, &release, &t.admin, &json!({})).await.0, StatusCode::ACCEPTED);
        assert_eq!(
            post(&t.boot, path, &token, &status("node3")).await.0,
            StatusCode::UNAUTHORIZED,
            "a released machine's OS no longer speaks for it"
        );
    }

    #[tokio::test]
    async fn deploys_refuse_join_specs_that_cannot_work() {
        let t = app().await;
        let (id, _) = crate::routes::test_support::ready_machine(&t, "52:54:00:00:00:44").await;
        crate::routes::test_support::available_image(&t, "img").await;
        let deploy = format!("/api/v1/machines/{id}/deploy");
        for (cluster, field) in [
            (json!({ "kind": "nomad" }), "cluster.kind"),
            (json!({ "kind": "swarm" }), "cluster.cluster"),
            (json!({ "kind": "swarm", "cluster": "x", "colour": "red" }), "cluster.colour"),
        ] {
            let req = json!({ "image": "img", "hostname": "n", "cluster": cluster });
            let (code, problem) = post(&t.operator, &deploy, &t.admin, &req).await;
            assert_eq!((code, problem["field"].as_str()), (StatusCode::BAD_REQUEST, Some(field)), "{problem}");
        }
        assert_eq!(machine_state(&t, &id).await, "ready", "a refused deploy changes nothing");
    }
}
