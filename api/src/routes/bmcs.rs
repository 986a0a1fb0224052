//! `/api/v1/bmcs` (enrol, list, show, remove, re-read inventory) and
//! `/api/v1/machines/{id}/power` (power actions and the next boot device
//! through the machine's BMC).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::machines::find;
use super::Routes;
use crate::auth::{Operator, Viewer};
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::oob::client::BmcClient;
use crate::AppState;
use inventory::oob::{BmcProtocol, BootTarget, Credentials, PowerAction, TlsTrust};
use model::lifecycle::MachineState;
use store::{Bmc, NewBmc};

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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewBmc, example = json!({
    "address": "https://10.0.1.21", "protocol": "redfish", "username": "root", "password": "calvin",
    "tls_verify": false, "rack": "r7"
}))]
pub(super) struct Enrol {
    /// `https://10.0.0.5`, `10.0.0.5` or `10.0.0.5:623`.
    address: String,
    /// `auto`: Redfish, else IPMI (an unreachable BMC is refused, as there
    /// is nothing to detect).
    #[serde(default)]
    #[schema(default = "auto")]
    protocol: ProtocolChoice,
    #[schema(min_length = 1, max_length = 64)]
    username: String,
    /// Sealed at rest, never returned.
    #[schema(max_length = 256)]
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

/// The protocol asked for at enrolment.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(super) enum ProtocolChoice {
    Redfish,
    Ipmi,
    /// Redfish if it answers, else IPMI.
    #[default]
    Auto,
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

/// Whether the chosen protocol can use this address (and CA) at all: a
/// BMC whose address no client can be built for would only ever be in
/// `error`, so it is refused now, naming the field.
fn check_client(protocol: BmcProtocol, address: &str, creds: &Credentials, tls: &TlsTrust) -> Result<(), ApiError> {
    let timeout = std::time::Duration::from_secs(1);
    let url = address.starts_with("http://") || address.starts_with("https://");
    if protocol == BmcProtocol::Ipmi && url {
        return Err(bad("address", "IPMI takes a host or host:port, not a URL"));
    }
    if address.contains("://") && !url {
        return Err(bad("address", "a host, host:port or an http(s) URL"));
    }
    // Build the client without the CA first, so a bad address is blamed on the address.
    BmcClient::connect(protocol, address, creds.clone(), TlsTrust::Verify, timeout)
        .map_err(|e| bad("address", e.to_string()))?;
    if let TlsTrust::Ca(_) = tls {
        BmcClient::connect(protocol, address, creds.clone(), tls.clone(), timeout)
            .map_err(|e| bad("ca_pem", e.to_string()))?;
    }
    Ok(())
}

/// Enrols a BMC: its inventory is read at once and it is linked to its
/// machine (by MAC, system UUID or serial), or creates it.
#[utoipa::path(
    post,
    path = "/api/v1/bmcs",
    operation_id = "enrol_bmc",
    tag = "bmcs",
    description = "Role: operator. A BMC that cannot be read now is still enrolled, with its error shown. \
        With `protocol: auto` an unreachable BMC is refused (400, `address`): there is nothing to detect. \
        With `commission`, the machine is powered on into discovery through the BMC (502 if the BMC refuses). \
        Honours `Idempotency-Key`.",
    params(crate::idempotency::KeyParam),
    request_body = Enrol,
    responses(
        (status = 201, description = "The BMC, enrolled", body = Bmc),
        super::openapi::NeedsRole, super::openapi::TakesJson,
        (status = 409, response = super::openapi::Conflict),
        (status = 422, response = super::openapi::Unprocessable),
        (status = 502, response = super::openapi::BadGateway),
    )
)]
async fn enrol(
    _: Operator,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<Enrol>,
) -> Result<(StatusCode, Json<Bmc>), ApiError> {
    check_address(&req.address)?;
    if req.username.is_empty() || req.username.len() > 64 {
        return Err(bad("username", "1 to 64 characters"));
    }
    if req.password.len() > 256 {
        return Err(bad("password", "at most 256 characters"));
    }
    let tls = tls_trust(req.tls_verify, req.ca_pem)?;
    let creds = Credentials { username: req.username.clone(), password: req.password.clone() };
    let protocol = match req.protocol {
        ProtocolChoice::Redfish => BmcProtocol::Redfish,
        ProtocolChoice::Ipmi => BmcProtocol::Ipmi,
        ProtocolChoice::Auto => BmcClient::detect(&req.address, &creds, &tls, state.oob.settings.timeout)
            .await
            .map_err(|e| bad("address", e.to_string()))?,
    };
    check_client(protocol, &req.address, &creds, &tls)?;
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
    Ok((StatusCode::CREATED, Json(bmc)))
}

/// The enrolled BMCs, without their inventories.
#[derive(Serialize, ToSchema)]
pub(super) struct BmcList {
    pub bmcs: Vec<Bmc>,
}

/// Every BMC (`inventory` is null here: one BMC's is at `/bmcs/{id}`).
#[utoipa::path(
    get,
    path = "/api/v1/bmcs",
    operation_id = "list_bmcs",
    tag = "bmcs",
    description = "Role: viewer.",
    responses(
        (status = 200, description = "Every BMC", body = BmcList),
        super::openapi::NeedsToken,
    )
)]
async fn list(_: Viewer, State(state): State<AppState>) -> Result<Json<BmcList>, ApiError> {
    let mut bmcs = state.store.bmcs().await?;
    // The list is a summary; one BMC's inventory is at /bmcs/{id}.
    bmcs.iter_mut().for_each(|b| b.inventory = None);
    Ok(Json(BmcList { bmcs }))
}

async fn one(state: &AppState, id: &str) -> Result<Bmc, ApiError> {
    state.store.bmc(id).await?.ok_or_else(|| ApiError::NotFound { what: format!("BMC {id}") })
}

/// One BMC: power state, inventory, last error.
#[utoipa::path(
    get,
    path = "/api/v1/bmcs/{id}",
    operation_id = "get_bmc",
    tag = "bmcs",
    description = "Role: viewer.",
    params(("id" = String, Path, description = "The BMC's id")),
    responses(
        (status = 200, description = "The BMC", body = Bmc),
        super::openapi::NeedsToken,
        (status = 404, response = super::openapi::NotFound),
    )
)]
async fn show(_: Viewer, State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Bmc>, ApiError> {
    Ok(Json(one(&state, &id).await?))
}

/// Removes a BMC (its machine stays).
#[utoipa::path(
    delete,
    path = "/api/v1/bmcs/{id}",
    operation_id = "delete_bmc",
    tag = "bmcs",
    description = "Role: operator.",
    params(("id" = String, Path, description = "The BMC's id")),
    responses(
        (status = 204, description = "Removed"),
        super::openapi::NeedsRole,
        (status = 404, response = super::openapi::NotFound),
    )
)]
async fn remove(_: Operator, State(state): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    if !state.store.delete_bmc(&id).await? {
        return Err(ApiError::NotFound { what: format!("BMC {id}") });
    }
    state.oob.forget_bmc(&id);
    Ok(StatusCode::NO_CONTENT)
}

/// Reads the BMC's inventory again now.
#[utoipa::path(
    post,
    path = "/api/v1/bmcs/{id}/inventory",
    operation_id = "reread_bmc_inventory",
    tag = "bmcs",
    description = "Role: operator. 502 when the BMC cannot be read (its record says why too).",
    params(("id" = String, Path, description = "The BMC's id")),
    responses(
        (status = 200, description = "The BMC with its new inventory", body = Bmc),
        super::openapi::NeedsRole,
        (status = 404, response = super::openapi::NotFound),
        (status = 502, response = super::openapi::BadGateway),
    )
)]
async fn reread(_: Operator, State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Bmc>, ApiError> {
    one(&state, &id).await?;
    state.oob.refresh_inventory(&id).await?;
    Ok(Json(one(&state, &id).await?))
}

/// The machine's BMC.
#[utoipa::path(
    get,
    path = "/api/v1/machines/{id}/bmc",
    operation_id = "get_machine_bmc",
    tag = "bmcs",
    description = "Role: viewer.",
    params(("id" = String, Path, example = "52:54:00:12:34:56", description = "The machine's id or any of its MACs")),
    responses(
        (status = 200, description = "The BMC", body = Bmc),
        super::openapi::NeedsToken,
        (status = 404, response = super::openapi::NotFound),
    )
)]
async fn machine_bmc(_: Viewer, State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Bmc>, ApiError> {
    let machine = find(&state, &id).await?;
    let bmc = state.store.bmc_for_machine(&machine.id).await?;
    Ok(Json(bmc.ok_or_else(|| ApiError::NotFound { what: format!("a BMC for machine {}", machine.id) })?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"action": "cycle", "boot": "pxe"}))]
pub(super) struct PowerRequest {
    action: Option<PowerAction>,
    /// Boot this device once, before the action.
    boot: Option<BootTarget>,
    /// The boot mode for `boot`; absent: keep the machine's.
    uefi: Option<bool>,
}

/// What a power request did.
#[derive(Serialize, ToSchema)]
pub(super) struct PowerResult {
    pub machine: String,
    pub bmc: String,
    /// As the BMC last reported it.
    pub power_state: Option<inventory::oob::PowerState>,
}

/// A power action and/or the next boot device, through the machine's BMC.
#[utoipa::path(
    post,
    path = "/api/v1/machines/{id}/power",
    operation_id = "power_machine",
    tag = "bmcs",
    description = "Role: operator. 409 when the machine has no BMC; 502 when the BMC refuses or does not answer. \
        Honours `Idempotency-Key`.",
    params(
        ("id" = String, Path, example = "52:54:00:12:34:56", description = "The machine's id or any of its MACs"),
        crate::idempotency::KeyParam,
    ),
    request_body = PowerRequest,
    responses(
        (status = 200, description = "Done", body = PowerResult),
        super::openapi::NeedsRole, super::openapi::TakesJson,
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
        (status = 422, response = super::openapi::Unprocessable),
        (status = 502, response = super::openapi::BadGateway),
    )
)]
async fn power(
    _: Operator,
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<PowerRequest>,
) -> Result<Json<PowerResult>, ApiError> {
    if req.action.is_none() && req.boot.is_none() {
        return Err(bad("action", "give an action, a boot device, or both"));
    }
    let machine = find(&state, &id).await?;
    let Some(bmc) = state.store.bmc_for_machine(&machine.id).await? else {
        return Err(store::StoreError::Conflict(format!("machine {} has no BMC enrolled", machine.id)).into());
    };
    state.oob.power(&bmc.id, req.action, req.boot.map(|t| (t, req.uefi)), "operator request").await?;
    let bmc = one(&state, &bmc.id).await?;
    Ok(Json(PowerResult { machine: machine.id, bmc: bmc.id, power_state: bmc.power_state }))
}

#[cfg(test)]
#[path = "bmcs_tests.rs"]
mod tests;
