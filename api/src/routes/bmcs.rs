//! `/api/v1/bmcs` (enrol, list, show, remove, re-read inventory) and
//! `/api/v1/machines/{id}/power` (power actions and the next boot device
//! through the machine's BMC).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::machines::find;
use super::Routes;
use crate::auth::{Operator, Viewer};
use crate::error::{parse_json, ApiError};
use crate::lifecycle::MachineState;
use crate::oob::client::BmcClient;
use crate::store::{Bmc, NewBmc};
use crate::AppState;
use inventory::oob::{BootTarget, Credentials, PowerAction, TlsTrust};

pub(super) fn router() -> Routes {
    Routes::new()
        .route("/api/v1/bmcs", get(list).post(enrol))
        .route("/api/v1/bmcs/{id}", get(show).delete(remove))
        .route("/api/v1/bmcs/{id}/inventory", post(reread))
        .route("/api/v1/machines/{id}/power", post(power))
        .route("/api/v1/machines/{id}/bmc", get(machine_bmc))
}

fn bad(field: &str, detail: impl Into<String>) -> ApiError {
    ApiError::BadRequest { field: field.into(), detail: detail.into() }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Enrol {
    /// `https://10.0.0.5`, `10.0.0.5` or `10.0.0.5:623`.
    address: String,
    #[serde(default = "auto")]
    protocol: String,
    username: String,
    password: String,
    /// Check the BMC's certificate against the system roots (or `ca_pem`).
    #[serde(default = "yes")]
    tls_verify: bool,
    ca_pem: Option<String>,
    rack: Option<String>,
    /// Power the machine on into discovery once it is linked (when it is
    /// new, discovering or failed).
    #[serde(default)]
    commission: bool,
}

fn auto() -> String {
    "auto".into()
}

fn yes() -> bool {
    true
}

/// How an enrolment or UPS request says to trust TLS.
pub(super) fn tls_trust(verify: bool, ca_pem: Option<String>) -> Result<TlsTrust, ApiError> {
    match (verify, ca_pem) {
        (_, Some(pem)) if !pem.contains("-----BEGIN CERTIFICATE-----") => Err(bad("ca_pem", "not a PEM certificate")),
        (_, Some(pem)) => Ok(TlsTrust::Ca(pem)),
        (true, None) => Ok(TlsTrust::Verify),
        (false, None) => Ok(TlsTrust::Insecure),
    }
}

pub(super) fn check_address(address: &str) -> Result<(), ApiError> {
    let host = address.trim_start_matches("https://").trim_start_matches("http://");
    if address.is_empty() || address.len() > 255 || host.is_empty() || address.chars().any(char::is_whitespace) {
        return Err(bad("address", "a host, host:port or an http(s) URL"));
    }
    Ok(())
}

async fn enrol(_: Operator, State(state): State<AppState>, body: Bytes) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: Enrol = parse_json(&body)?;
    check_address(&req.address)?;
    if req.username.is_empty() || req.username.len() > 64 {
        return Err(bad("username", "1 to 64 characters"));
    }
    if req.password.len() > 256 {
        return Err(bad("password", "at most 256 characters"));
    }
    let tls = tls_trust(req.tls_verify, req.ca_pem)?;
    let creds = Credentials { username: req.username.clone(), password: req.password.clone() };
    let protocol = match req.protocol.as_str() {
        "redfish" | "ipmi" => req.protocol.clone(),
        "auto" => BmcClient::detect(&req.address, &creds, &tls, state.oob.settings.timeout)
            .await
            .map_err(|e| bad("address", e.to_string()))?
            .to_string(),
        other => return Err(bad("protocol", format!("{other:?} is not redfish, ipmi or auto"))),
    };
    let new = NewBmc {
        address: req.address.trim_end_matches('/').to_string(),
        protocol,
        username: req.username,
        password_sealed: state.oob.seal(&req.password),
        tls,
    };
    let bmc = state.store.insert_bmc(&new).await?;
    // A BMC that cannot be read now is still enrolled; its record says why
    // and the poller keeps trying with backoff.
    let linked = state.oob.refresh_inventory(&bmc.id).await;
    state.oob.watch_bmc(&bmc.id, linked.is_ok());
    if let Ok((_, machine_id)) = &linked {
        if let Some(rack) = &req.rack {
            state.store.set_rack(machine_id, Some(rack)).await?;
        }
        let machine = state.store.machine(machine_id).await?;
        let waiting = machine.is_some_and(|m| {
            matches!(m.state, MachineState::Discovering | MachineState::Failed) && m.inventory.is_none()
        });
        if req.commission && waiting {
            state.oob.network_boot(machine_id, "commissioning a newly enrolled BMC's machine").await?;
        }
    }
    let bmc = state.store.bmc(&bmc.id).await?.ok_or_else(|| ApiError::NotFound { what: "BMC".into() })?;
    Ok((StatusCode::CREATED, Json(json!(bmc))))
}

async fn list(_: Viewer, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut bmcs = state.store.bmcs().await?;
    // The list is a summary; one BMC's inventory is at /bmcs/{id}.
    bmcs.iter_mut().for_each(|b| b.inventory = None);
    Ok(Json(json!({ "bmcs": bmcs })))
}

async fn one(state: &AppState, id: &str) -> Result<Bmc, ApiError> {
    state.store.bmc(id).await?.ok_or_else(|| ApiError::NotFound { what: format!("BMC {id}") })
}

async fn show(_: Viewer, State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Bmc>, ApiError> {
    Ok(Json(one(&state, &id).await?))
}

async fn remove(_: Operator, State(state): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    if !state.store.delete_bmc(&id).await? {
        return Err(ApiError::NotFound { what: format!("BMC {id}") });
    }
    state.oob.forget_bmc(&id);
    Ok(StatusCode::NO_CONTENT)
}

async fn reread(_: Operator, State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Bmc>, ApiError> {
    one(&state, &id).await?;
    state.oob.refresh_inventory(&id).await?;
    Ok(Json(one(&state, &id).await?))
}

async fn machine_bmc(_: Viewer, State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Bmc>, ApiError> {
    let machine = find(&state, &id).await?;
    let bmc = state.store.bmc_for_machine(&machine.id).await?;
    Ok(Json(bmc.ok_or_else(|| ApiError::NotFound { what: format!("a BMC for machine {}", machine.id) })?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PowerRequest {
    action: Option<PowerAction>,
    /// Boot this device once, before the action.
    boot: Option<BootTarget>,
    /// The boot mode for `boot`; absent: keep the machine's.
    uefi: Option<bool>,
}

async fn power(
    _: Operator,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: PowerRequest = parse_json(&body)?;
    if req.action.is_none() && req.boot.is_none() {
        return Err(bad("action", "give an action, a boot device, or both"));
    }
    let machine = find(&state, &id).await?;
    let Some(bmc) = state.store.bmc_for_machine(&machine.id).await? else {
        return Err(crate::store::StoreError::Conflict(format!("machine {} has no BMC enrolled", machine.id)).into());
    };
    state.oob.power(&bmc.id, req.action, req.boot.map(|t| (t, req.uefi)), "operator request").await?;
    let bmc = one(&state, &bmc.id).await?;
    Ok(Json(json!({ "machine": machine.id, "bmc": bmc.id, "power_state": bmc.power_state })))
}

#[cfg(test)]
#[path = "bmcs_tests.rs"]
mod tests;
