//! `/api/v1/ups`: enrol a UPS (NUT, SNMP UPS-MIB or Redfish power
//! equipment), read each one's normalized state and what it feeds.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::bmcs::{check_address, tls_trust};
use super::Routes;
use crate::auth::{Operator, Viewer};
use crate::config::UpsEntry;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::oob::client::redfish_url;
use crate::AppState;
use inventory::oob::{Credentials, TlsTrust, UpsProtocol};
use inventory::redfish::RedfishClient;
use store::Ups;

pub(super) fn router() -> Routes {
    Routes::new().route("/api/v1/ups", get(list).post(enrol)).route("/api/v1/ups/{name}", get(show).delete(remove))
}

fn bad(field: &str, detail: impl Into<String>) -> ApiError {
    ApiError::BadRequest { field: field.into(), detail: detail.into() }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 63 && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Enrols a UPS and reads it once.
#[utoipa::path(
    post,
    path = "/api/v1/ups",
    operation_id = "enrol_ups",
    tag = "ups",
    description = "Role: operator. A UPS that does not answer is still enrolled; its `status` says why.",
    request_body = UpsEntry,
    responses(
        (status = 201, description = "The UPS, enrolled", body = UpsView),
        super::openapi::NeedsRole, super::openapi::TakesJson,
        (status = 409, response = super::openapi::Conflict),
    )
)]
async fn enrol(
    _: Operator,
    State(state): State<AppState>,
    JsonBody(req): JsonBody<UpsEntry>,
) -> Result<(StatusCode, Json<UpsView>), ApiError> {
    let name = req.name.clone();
    let ups = validated(&state, req).await?;
    state.store.insert_ups(&ups).await?;
    // Read it once now so the answer shows its state (or why not).
    let _ = state.oob.read_ups(&ups).await;
    state.oob.watch_ups(&ups.name);
    Ok((StatusCode::CREATED, Json(view(&state, one(&state, &name).await?).await?)))
}

/// Enrols the UPSes listed in `oob.ups` that are not enrolled yet (at
/// start). A bad entry stops the start, naming it and its field.
pub async fn enrol_configured(state: &AppState, entries: &[UpsEntry]) -> anyhow::Result<()> {
    for (i, entry) in entries.iter().enumerate() {
        if state.store.ups(&entry.name).await?.is_some() {
            continue;
        }
        let ups = validated(state, entry.clone()).await.map_err(|e| anyhow::anyhow!("oob.ups[{i}]: {e}"))?;
        state.store.insert_ups(&ups).await?;
        tracing::info!(ups = ups.name, protocol = ups.protocol.as_str(), "UPS enrolled from the configuration");
    }
    Ok(())
}

/// Whether the protocol's client can use this address (and CA) at all, as
/// for BMCs: NUT and SNMP take `host:port`, Redfish an http(s) URL or a host.
fn check_client(protocol: UpsProtocol, address: &str, tls: &TlsTrust) -> Result<(), ApiError> {
    let url = address.starts_with("http://") || address.starts_with("https://");
    if protocol != UpsProtocol::Redfish && address.contains("://") {
        return Err(bad("address", format!("{protocol} takes host:port, not a URL")));
    }
    if protocol == UpsProtocol::Redfish {
        if address.contains("://") && !url {
            return Err(bad("address", "an http(s) URL or a host"));
        }
        let creds = Credentials { username: String::new(), password: String::new() };
        let timeout = std::time::Duration::from_secs(1);
        RedfishClient::new(&redfish_url(address), creds.clone(), TlsTrust::Verify, timeout)
            .map_err(|e| bad("address", e.to_string()))?;
        if let TlsTrust::Ca(_) = tls {
            RedfishClient::new(&redfish_url(address), creds, tls.clone(), timeout)
                .map_err(|e| bad("ca_pem", e.to_string()))?;
        }
    }
    Ok(())
}

/// Checks an enrolment (from the API or the configuration) and seals its
/// password.
async fn validated(state: &AppState, req: UpsEntry) -> Result<Ups, ApiError> {
    if !valid_name(&req.name) {
        return Err(bad("name", "1 to 63 letters, digits, '-', '_' or '.'"));
    }
    check_address(&req.address)?;
    let target = match req.protocol {
        UpsProtocol::Nut => {
            req.ups.clone().filter(|u| !u.is_empty()).ok_or_else(|| bad("ups", "NUT needs the UPS's name"))?
        }
        UpsProtocol::Snmp => req.community.clone().unwrap_or_else(|| "public".into()),
        UpsProtocol::Redfish => req.resource.clone().unwrap_or_default(),
    };
    if req.protocol == UpsProtocol::Redfish && (req.username.is_none() || req.password.is_none()) {
        return Err(bad("username", "Redfish needs a username and password"));
    }
    if req.password.is_some() != req.username.is_some() {
        return Err(bad("password", "give both username and password, or neither"));
    }
    let tls = tls_trust(req.tls_verify, req.ca_pem.clone())?;
    check_client(req.protocol, &req.address, &tls)?;
    for (i, id) in req.feeds.machines.iter().enumerate() {
        if state.store.machine(id).await?.is_none() {
            return Err(bad(&format!("feeds.machines[{i}]"), format!("no machine {id}")));
        }
    }
    let ups = Ups {
        name: req.name.clone(),
        protocol: req.protocol,
        address: req.address,
        target: None,
        username: req.username,
        tls,
        feeds: req.feeds,
        state: None,
        status: "ok",
        last_error: None,
        last_ok: None,
        created_at: String::new(),
        updated_at: String::new(),
        // The SNMP community is a password in all but name.
        target_raw: match req.protocol {
            UpsProtocol::Snmp => state.oob.seal(&target),
            _ => target,
        },
        password_sealed: req.password.as_deref().map(|p| state.oob.seal(p)),
    };
    Ok(ups)
}

async fn one(state: &AppState, name: &str) -> Result<Ups, ApiError> {
    state.store.ups(name).await?.ok_or_else(|| ApiError::NotFound { what: format!("UPS {name}") })
}

/// A UPS with the machines it feeds.
#[derive(Serialize, ToSchema)]
pub(super) struct UpsView {
    #[serde(flatten)]
    pub ups: Ups,
    /// Every machine it feeds: listed ones and those in its racks.
    pub feeds_machines: Vec<String>,
}

/// The enrolled UPSes.
#[derive(Serialize, ToSchema)]
pub(super) struct UpsList {
    pub ups: Vec<UpsView>,
}

/// The UPS with the machines it feeds (listed and through its racks).
async fn view(state: &AppState, ups: Ups) -> Result<UpsView, ApiError> {
    let feeds_machines = state.store.machines_fed_by(&ups.feeds).await?;
    Ok(UpsView { ups, feeds_machines })
}

/// Every UPS with its state and what it feeds.
#[utoipa::path(
    get,
    path = "/api/v1/ups",
    operation_id = "list_ups",
    tag = "ups",
    description = "Role: viewer.",
    responses(
        (status = 200, description = "Every UPS", body = UpsList),
        super::openapi::NeedsToken,
    )
)]
async fn list(_: Viewer, State(state): State<AppState>) -> Result<Json<UpsList>, ApiError> {
    let mut ups = vec![];
    for one in state.store.ups_list().await? {
        ups.push(view(&state, one).await?);
    }
    Ok(Json(UpsList { ups }))
}

/// One UPS.
#[utoipa::path(
    get,
    path = "/api/v1/ups/{name}",
    operation_id = "get_ups",
    tag = "ups",
    description = "Role: viewer.",
    params(("name" = String, Path, example = "r7-ups", description = "The UPS's name")),
    responses(
        (status = 200, description = "The UPS", body = UpsView),
        super::openapi::NeedsToken,
        (status = 404, response = super::openapi::NotFound),
    )
)]
async fn show(_: Viewer, State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<UpsView>, ApiError> {
    Ok(Json(view(&state, one(&state, &name).await?).await?))
}

/// Removes a UPS.
#[utoipa::path(
    delete,
    path = "/api/v1/ups/{name}",
    operation_id = "delete_ups",
    tag = "ups",
    description = "Role: operator.",
    params(("name" = String, Path, description = "The UPS's name")),
    responses(
        (status = 204, description = "Removed"),
        super::openapi::NeedsRole,
        (status = 404, response = super::openapi::NotFound),
    )
)]
async fn remove(_: Operator, State(state): State<AppState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    if !state.store.delete_ups(&name).await? {
        return Err(ApiError::NotFound { what: format!("UPS {name}") });
    }
    state.oob.forget_ups(&name);
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use axum::http::StatusCode;
    use serde_json::json;
    use simulators::ups::DummyState;

    use crate::routes::test_support::{app, get, post, ready_machine, TestApp};

    async fn status_within(t: &TestApp, want: &str, limit: Duration) -> serde_json::Value {
        let started = Instant::now();
        loop {
            let (_, ups) = get(&t.operator, "/api/v1/ups/rack1-ups", Some(&t.admin)).await;
            if ups["state"]["status"] == want {
                return ups;
            }
            assert!(started.elapsed() < limit, "UPS not {want} within {limit:?}: {ups}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The community is sealed in the database and opened for the wire:
    /// the SNMP request the UPS receives carries it, the row does not.
    #[tokio::test]
    async fn an_snmp_community_is_sealed_at_rest_and_sent_as_given() {
        let t = app().await;
        let ups_socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = ups_socket.local_addr().unwrap().to_string();
        let body = json!({ "name": "snmp-ups", "protocol": "snmp", "address": address, "community": "s3cret-comm",
                           "feeds": { "racks": ["r1"] } });
        let (status, ups) = post(&t.operator, "/api/v1/ups", &t.admin, &body).await;
        assert!(!ups.to_string().contains("s3cret"), "{ups}");
        assert_eq!(status, StatusCode::CREATED, "{ups}");
        let mut buf = [0u8; 1500];
        let (n, _) =
            tokio::time::timeout(Duration::from_secs(10), ups_socket.recv_from(&mut buf)).await.unwrap().unwrap();
        assert!(buf[..n].windows(11).any(|w| w == b"s3cret-comm"), "the request carries the community");
        let stored = t.state.store.ups("snmp-ups").await.unwrap().unwrap().target_raw;
        assert!(!stored.contains("s3cret"), "stored in clear: {stored}");
    }

    /// A real NUT upsd with dummy-ups: the API follows the UPS from mains
    /// to battery to low battery and back within seconds.
    #[tokio::test]
    async fn the_api_follows_a_nut_ups_from_mains_to_battery_to_low_and_back() {
        let Some((_dir, nut)) = crate::routes::test_support::dummy_ups("rack1").await else { return };
        let t = app().await;
        let (machine, _) = ready_machine(&t, "52:54:00:bb:00:01").await;
        let creds = nut.credentials();
        let (status, ups) = post(
            &t.operator,
            "/api/v1/ups",
            &t.admin,
            &json!({ "name": "rack1-ups", "protocol": "nut", "address": nut.addr(), "ups": "rack1",
                     "username": creds.username, "password": creds.password, "feeds": { "machines": [machine] } }),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{ups}");
        assert!(!ups.to_string().contains(&creds.password), "the password is never returned");
        assert_eq!(ups["feeds_machines"], json!([machine]));
        assert_eq!(ups["state"]["status"], "online", "{ups}");
        for (state, want) in
            [(DummyState::Battery, "on_battery"), (DummyState::Low, "low_battery"), (DummyState::Online, "online")]
        {
            nut.set(state).unwrap();
            let ups = status_within(&t, want, Duration::from_secs(10)).await;
            assert!(ups["state"]["charge_percent"].is_number(), "{ups}");
        }
        let (_, events) = get(&t.operator, "/api/v1/events", Some(&t.admin)).await;
        let changes: Vec<String> = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "ups.status_changed")
            .map(|e| e["detail"]["to"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(changes, ["online", "on_battery", "low_battery", "online"]);
        drop(nut);
        // The UPS going away is an error on the UPS, seen in the API.
        let started = Instant::now();
        loop {
            let (_, ups) = get(&t.operator, "/api/v1/ups/rack1-ups", Some(&t.admin)).await;
            if ups["status"] == "error" {
                assert!(ups["last_error"].as_str().unwrap().contains("127.0.0.1"), "{ups}");
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "{ups}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod config_tests {
    use crate::config::UpsEntry;
    use crate::routes::test_support::{app, get};

    fn entry(name: &str, protocol: &str) -> UpsEntry {
        serde_json::from_value(serde_json::json!({
            "name": name, "protocol": protocol, "address": "127.0.0.1:9", "ups": "x", "feeds": { "racks": ["r1"] }
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn configured_upses_are_enrolled_once_and_bad_ones_named() {
        let t = app().await;
        super::enrol_configured(&t.state, &[entry("cfg-ups", "nut")]).await.unwrap();
        super::enrol_configured(&t.state, &[entry("cfg-ups", "nut")]).await.unwrap();
        let (_, list) = get(&t.operator, "/api/v1/ups", Some(&t.admin)).await;
        assert_eq!(list["ups"].as_array().unwrap().len(), 1, "{list}");
        assert_eq!(list["ups"][0]["feeds"]["racks"][0], "r1");
        let mut bad = entry("bad", "nut");
        bad.ups = None;
        let err = super::enrol_configured(&t.state, &[bad]).await.unwrap_err().to_string();
        assert!(err.contains("oob.ups[0]") && err.contains("ups"), "{err}");
        // An unknown protocol does not get this far: the configuration
        // does not load (`config::tests::bad_values_name_the_key`).
    }
}
