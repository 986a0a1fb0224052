//! BMC enrolment, linking, power and failure isolation through the API,
//! against the simulated Redfish BMC (`simulators::bmc`, the same service
//! the lab runs per VM) on loopback, and against peers that misbehave.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use inventory::oob::{BootTarget, Credentials};
use serde_json::json;
use simulators::bmc::backend::{DiskFact, MachineState, NicFact};
use simulators::bmc::{MemoryBackend, SimState, Smbios, SystemFacts};

use crate::routes::test_support::{app, get, post, TestApp};

const MAC: &str = "52:54:00:aa:00:01";
const UUID: &str = "5f1a0000-0000-4000-8000-0000000000aa";

/// A simulated BMC on loopback: its URL and its machine.
async fn sim_bmc(password: &str) -> (String, Arc<MemoryBackend>) {
    sim_bmc_in_mode(password, false).await
}

/// The same, for a machine whose firmware is UEFI (`uefi`) or legacy: the
/// BMC refuses a boot override in the other mode, as real ones do.
async fn sim_bmc_in_mode(password: &str, uefi: bool) -> (String, Arc<MemoryBackend>) {
    let facts = SystemFacts {
        cpus: 2,
        memory_bytes: 2 << 30,
        disks: vec![DiskFact { id: "disk0".into(), size_bytes: 8 << 30, serial: Some("DISK-SIM-1".into()) }],
        nics: vec![NicFact { id: "nic0".into(), mac: MAC.into() }],
        smbios: Smbios {
            serial: "SIM-0001".into(),
            uuid: UUID.into(),
            manufacturer: "Slipway Lab".into(),
            product: "Sim".into(),
        },
    };
    let backend = Arc::new(MemoryBackend::new(facts, MachineState::new(BootTarget::Disk, "1.0.0", "1.0.0")));
    let creds = Credentials { username: "admin".into(), password: password.into() };
    let router = simulators::bmc::router(SimState::new("sim1", UUID, creds, uefi, backend.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}"), backend)
}

/// A peer that accepts connections and never answers.
async fn silent_peer() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    format!("http://{addr}")
}

async fn enrol(t: &TestApp, body: serde_json::Value) -> (StatusCode, serde_json::Value) {
    post(&t.operator, "/api/v1/bmcs", &t.admin, &body).await
}

fn kinds(events: &serde_json::Value) -> Vec<String> {
    events["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn a_bmc_enrolled_before_its_host_booted_creates_the_machine_and_commissions_it() {
    let t = app().await;
    let (url, machine) = sim_bmc("s3cret-pw").await;
    let (status, bmc) = enrol(
        &t,
        json!({ "address": url, "username": "admin", "password": "s3cret-pw", "commission": true, "rack": "r1" }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{bmc}");
    assert!(!bmc.to_string().contains("s3cret-pw"), "the password is never returned: {bmc}");
    assert_eq!((bmc["protocol"].as_str(), bmc["status"].as_str()), (Some("redfish"), Some("ok")), "{bmc}");
    assert_eq!(bmc["inventory"]["system"]["serial"], "SIM-0001");
    assert_eq!(bmc["inventory"]["system"]["uuid"], UUID);
    let id = bmc["machine_id"].as_str().expect("linked to a machine").to_string();

    let (_, m) = get(&t.operator, &format!("/api/v1/machines/{MAC}"), Some(&t.admin)).await;
    assert_eq!((m["id"].as_str(), m["state"].as_str()), (Some(id.as_str()), Some("discovering")));
    assert_eq!(
        (m["system_uuid"].as_str(), m["serial"].as_str(), m["rack"].as_str()),
        (Some(UUID), Some("SIM-0001"), Some("r1"))
    );
    // Commissioning: PXE once, then power on; the machine booted from PXE.
    assert_eq!(machine.boots(), vec![BootTarget::Pxe]);
    let (_, events) = get(&t.operator, &format!("/api/v1/machines/{id}/events"), Some(&t.admin)).await;
    let kinds = kinds(&events);
    for kind in ["machine.created", "bmc.linked", "boot.override", "power.action", "power.changed"] {
        assert!(kinds.contains(&kind.to_string()), "{kind} in {kinds:?}");
    }
    let (_, shown) = get(&t.operator, &format!("/api/v1/machines/{id}/bmc"), Some(&t.admin)).await;
    assert_eq!(shown["power_state"], "on");
}

#[tokio::test]
async fn a_machine_is_network_booted_in_the_firmware_mode_its_agent_saw() {
    use crate::routes::test_support::{boot_script, inventory_json, token_from};
    for (uefi, mode) in [(true, "uefi"), (false, "bios")] {
        let t = app().await;
        let (url, machine) = sim_bmc_in_mode("pw", uefi).await;
        let (_, bmc) = enrol(&t, json!({ "address": url, "username": "admin", "password": "pw" })).await;
        let id = bmc["machine_id"].as_str().unwrap().to_string();
        // The BMC's own view, beside what the agent will report.
        assert_eq!(bmc["inventory"]["system"]["firmware_mode"], mode, "{bmc}");
        assert_eq!(bmc["inventory"]["system"]["secure_boot"], if uefi { json!(false) } else { json!(null) }, "{bmc}");
        let (_, script) = boot_script(&t, MAC).await;
        let mut inventory = inventory_json(MAC);
        inventory["firmware"] = json!({ "mode": mode, "secure_boot": null });
        assert_eq!(post(&t.boot, wire::INVENTORY_PATH, &token_from(&script), &inventory).await.0, StatusCode::OK);

        assert!(t.state.oob.network_boot(&id, "reinstall").await.unwrap(), "{mode}: the BMC took the override");
        assert_eq!(machine.boots().last(), Some(&BootTarget::Pxe), "{mode}");
        let (_, events) = get(&t.operator, &format!("/api/v1/machines/{id}/events"), Some(&t.admin)).await;
        let set = events["events"].as_array().unwrap().iter().find(|e| e["kind"] == "boot.override").unwrap().clone();
        assert_eq!(set["detail"]["uefi"], json!(uefi), "{mode}: {set}");
    }
}

#[tokio::test]
async fn power_and_boot_device_through_the_api() {
    let t = app().await;
    let (url, machine) = sim_bmc("pw").await;
    let (_, bmc) =
        enrol(&t, json!({ "address": url, "protocol": "redfish", "username": "admin", "password": "pw" })).await;
    let id = bmc["machine_id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/machines/{id}/power");
    let (status, out) = post(&t.operator, &path, &t.admin, &json!({ "action": "on", "boot": "pxe" })).await;
    assert_eq!((status, out["power_state"].as_str()), (StatusCode::OK, Some("on")), "{out}");
    let (_, out) = post(&t.operator, &path, &t.admin, &json!({ "action": "force_off" })).await;
    assert_eq!(out["power_state"], "off");
    let (_, out) = post(&t.operator, &path, &t.admin, &json!({ "action": "on" })).await;
    assert_eq!(out["power_state"], "on");
    assert_eq!(machine.boots(), vec![BootTarget::Pxe, BootTarget::Disk], "the PXE override was for one boot");

    let (status, err) = post(&t.operator, &path, &t.admin, &json!({ "action": "explode" })).await;
    assert_eq!((status, err["field"].as_str()), (StatusCode::BAD_REQUEST, Some("action")));
    let (status, err) = post(&t.operator, &path, &t.admin, &json!({})).await;
    assert_eq!((status, err["field"].as_str()), (StatusCode::BAD_REQUEST, Some("action")));
    let (status, _) =
        post(&t.operator, "/api/v1/machines/52:54:00:00:00:99/power", &t.admin, &json!({ "action": "on" })).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_dead_or_refusing_bmc_is_an_error_on_that_bmc_and_nothing_else() {
    let t = app().await;
    let silent = silent_peer().await;
    let (url, _) = sim_bmc("right").await;
    let started = Instant::now();
    let dead = enrol(&t, json!({ "address": silent, "protocol": "redfish", "username": "a", "password": "b" }));
    let healthy = async {
        let r =
            enrol(&t, json!({ "address": url, "protocol": "redfish", "username": "admin", "password": "right" })).await;
        (r, started.elapsed())
    };
    let ((dead_status, dead), ((ok_status, ok), healthy_took)) = tokio::join!(dead, healthy);
    assert_eq!(dead_status, StatusCode::CREATED, "enrolled even though it does not answer: {dead}");
    assert_eq!((dead["status"].as_str(), dead["last_error_kind"].as_str()), (Some("error"), Some("timeout")), "{dead}");
    assert!(dead["last_error"].as_str().unwrap().contains(silent.trim_start_matches("http://")), "{dead}");
    assert_eq!((ok_status, ok["status"].as_str()), (StatusCode::CREATED, Some("ok")), "{ok}");
    assert!(healthy_took < Duration::from_secs(2), "the healthy BMC did not wait for the dead one: {healthy_took:?}");

    // A wrong password is a clear error on that BMC.
    let (url2, _) = sim_bmc("right").await;
    let (_, refused) =
        enrol(&t, json!({ "address": url2, "protocol": "redfish", "username": "admin", "password": "wrong" })).await;
    assert_eq!(refused["last_error_kind"], "auth", "{refused}");
    assert!(!refused.to_string().contains("wrong"), "{refused}");

    // Auto-detection of something that is neither Redfish nor IPMI names the address.
    let (status, err) = enrol(&t, json!({ "address": "127.0.0.1:9", "username": "a", "password": "b" })).await;
    assert_eq!((status, err["field"].as_str()), (StatusCode::BAD_REQUEST, Some("address")), "{err}");
    let (_, events) = get(&t.operator, "/api/v1/events", Some(&t.admin)).await;
    assert!(kinds(&events).contains(&"bmc.error".to_string()));
}

#[tokio::test]
async fn enrolment_requests_are_checked_field_by_field() {
    let t = app().await;
    for (body, field) in [
        (json!({ "username": "a", "password": "b" }), "address"),
        (json!({ "address": "x", "password": "b" }), "username"),
        (json!({ "address": "x", "username": "a", "password": "b", "protocol": "telnet" }), "protocol"),
        (json!({ "address": "x", "username": "a", "password": "b", "ca_pem": "nope" }), "ca_pem"),
        (json!({ "address": "x", "username": "a", "password": "b", "colour": 1 }), "colour"),
        (json!({ "address": "has space", "username": "a", "password": "b" }), "address"),
    ] {
        let (status, err) = enrol(&t, body.clone()).await;
        assert_eq!((status, err["field"].as_str()), (StatusCode::BAD_REQUEST, Some(field)), "{body} -> {err}");
    }
    let (status, _) = get(&t.operator, "/api/v1/bmcs", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, err) = post(
        &t.operator,
        "/api/v1/ups",
        &t.admin,
        &json!({ "name": "u", "protocol": "nut", "address": "127.0.0.1:3493" }),
    )
    .await;
    assert_eq!((status, err["field"].as_str()), (StatusCode::BAD_REQUEST, Some("ups")));
    let (status, err) = post(
        &t.operator,
        "/api/v1/ups",
        &t.admin,
        &json!({ "name": "u/1", "protocol": "nut", "address": "x", "ups": "a" }),
    )
    .await;
    assert_eq!((status, err["field"].as_str()), (StatusCode::BAD_REQUEST, Some("name")));
}

#[tokio::test]
async fn a_booting_machine_and_its_enrolled_bmc_are_one_record_with_agreeing_inventories() {
    let t = app().await;
    let (url, _) = sim_bmc("pw").await;
    let (_, bmc) = enrol(&t, json!({ "address": url, "username": "admin", "password": "pw" })).await;
    // The machine network-boots: DHCP finds it by the MAC its BMC reported.
    let (id, _) = crate::routes::test_support::ready_machine(&t, MAC).await;
    assert_eq!(bmc["machine_id"].as_str(), Some(id.as_str()));
    let (_, m) = get(&t.operator, &format!("/api/v1/machines/{id}"), Some(&t.admin)).await;
    let (_, b) = get(&t.operator, &format!("/api/v1/machines/{id}/bmc"), Some(&t.admin)).await;
    assert_eq!(b["inventory"]["nics"][0]["mac"], m["macs"][0]);
    assert_eq!(b["power_state"].as_str().map(|p| p == "off" || p == "on"), Some(true));
}
