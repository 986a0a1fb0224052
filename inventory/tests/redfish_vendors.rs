//! The Redfish client against vendor-shaped fixture trees (Dell iDRAC 9,
//! HPE iLO 5, Supermicro X12, a DMTF power shelf) served from
//! `tests/fixtures/redfish/<vendor>/<@odata.id>/index.json` by a small
//! BMC double that does sessions, ETags and PATCH like the real ones.
//! Every vendor must come out as the same normalized inventory shape.
#![cfg(feature = "oob")]

#[path = "redfish_common.rs"]
mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Reply, Request, Server};
use inventory::oob::{BootTarget, Credentials, OobError, PowerAction, PowerState, TlsTrust, UpsStatus};
use inventory::redfish::RedfishClient;
use serde_json::{json, Value};

const USER: &str = "root";
const PASS: &str = "calvin";
/// `root:calvin`, for services without a SessionService.
const BASIC: &str = "Basic cm9vdDpjYWx2aW4=";

#[derive(Default)]
struct State {
    tokens: Vec<String>,
    issued: usize,
    patched: HashMap<String, Value>,
}

fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}

fn error(status: u16, msg: &str) -> Reply {
    Reply::json(status, &json!({"error": {"code": "Base.1.0.GeneralError", "message": msg}}))
}

/// A BMC double over one fixture tree. `broken` maps a path to a reply
/// that replaces the fixture (to break one section).
async fn fixture_bmc(vendor: &'static str, broken: Vec<(&'static str, u16)>) -> (Server, Arc<Mutex<State>>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/redfish").join(vendor);
    assert!(dir.is_dir(), "{dir:?}");
    let state = Arc::new(Mutex::new(State::default()));
    let st = state.clone();
    let server = Server::start(move |req: &Request| {
        let path = req.path.split('?').next().unwrap_or("").trim_end_matches('/').to_owned();
        let mut st = st.lock().unwrap();
        if req.method == "POST" && path == "/redfish/v1/SessionService/Sessions" {
            let body = req.json();
            if body["UserName"] != USER || body["Password"] != PASS {
                return error(401, "login failed");
            }
            st.issued += 1;
            let token = format!("tok-{}", st.issued);
            st.tokens.push(token.clone());
            let location = format!("/redfish/v1/SessionService/Sessions/{}", st.issued);
            // iLO answers with an absolute Location.
            let absolute = format!("https://{}{location}", req.header("Host").unwrap_or("ilo"));
            let shown = if vendor == "hpe" { absolute } else { location.clone() };
            let headers = vec![("X-Auth-Token".into(), token), ("Location".into(), shown)];
            return Reply::Full(201, headers, json!({"@odata.id": location}).to_string());
        }
        let session = req.header("X-Auth-Token").is_some_and(|t| st.tokens.iter().any(|x| x == t));
        let basic = req.header("Authorization") == Some(BASIC);
        if path != "/redfish/v1" && !session && !basic {
            return error(401, "no valid session");
        }
        if let Some((_, status)) = broken.iter().find(|(p, _)| p.trim_end_matches('/') == path) {
            return match status {
                0 => Reply::Full(200, vec![], "{\"Members\": [".into()),
                s => error(*s, "broken on purpose"),
            };
        }
        let file = dir.join(path.trim_start_matches('/')).join("index.json");
        let doc = std::fs::read_to_string(&file).ok().and_then(|s| serde_json::from_str::<Value>(&s).ok());
        match req.method.as_str() {
            "DELETE" => {
                let n = path.rsplit('/').next().unwrap_or("");
                st.tokens.retain(|t| t != &format!("tok-{n}"));
                Reply::Full(204, vec![], String::new())
            }
            "GET" if path.starts_with("/redfish/v1/TaskService/Tasks/") => Reply::json(
                200,
                &json!({"@odata.id": path, "Id": "JID_467767026271", "TaskState": "Running",
                    "PercentComplete": 40, "Messages": [{"Message": "Downloading the image"}]}),
            ),
            "GET" => {
                let Some(mut doc) = doc else { return error(404, "resource not found") };
                if let Some(p) = st.patched.get(&path) {
                    merge(&mut doc, p);
                }
                let headers = match doc.get("@odata.etag").and_then(Value::as_str) {
                    Some(tag) => vec![("ETag".to_owned(), tag.to_owned())],
                    None => vec![],
                };
                Reply::Full(200, headers, doc.to_string())
            }
            "PATCH" => {
                let Some(doc) = doc else { return error(404, "resource not found") };
                // Supermicro and AMI: no PATCH without the right If-Match.
                if let Some(tag) = doc.get("@odata.etag").and_then(Value::as_str) {
                    if req.header("If-Match") != Some(tag) {
                        return error(428, "A precondition header or annotation is required");
                    }
                }
                merge(st.patched.entry(path).or_insert(json!({})), &req.json());
                Reply::Full(204, vec![], String::new())
            }
            "POST" if path.ends_with("UpdateService.SimpleUpdate") => Reply::Full(
                202,
                vec![("Location".into(), "/redfish/v1/TaskService/Tasks/JID_467767026271".into())],
                String::new(),
            ),
            "POST" if path.ends_with("ComputerSystem.Reset") => Reply::Full(204, vec![], String::new()),
            _ => error(405, "method not allowed"),
        }
    })
    .await;
    (server, state)
}

fn client(server: &Server, password: &str) -> RedfishClient {
    let creds = Credentials { username: USER.into(), password: password.into() };
    RedfishClient::new(&server.base, creds, TlsTrust::Verify, Duration::from_secs(5)).unwrap()
}

/// The normalized shape every vendor must produce.
struct Expected {
    manufacturer: &'static str,
    serial: &'static str,
    uuid: &'static str,
    bios: &'static str,
    /// (count, model, cores)
    cpus: (usize, &'static str, u32),
    /// populated DIMMs, total bytes
    dimms: (usize, u64),
    /// (serial, size) per drive
    drives: Vec<(Option<&'static str>, u64)>,
    macs: [&'static str; 2],
    /// (serial, capacity W) per PSU
    psus: Vec<(&'static str, f64)>,
    /// (id, version) of each firmware component
    firmware: Vec<(&'static str, &'static str)>,
}

async fn check(vendor: &'static str, want: Expected) {
    let (server, _) = fixture_bmc(vendor, vec![]).await;
    let inv = client(&server, PASS).inventory().await.unwrap_or_else(|e| panic!("{vendor}: {e}"));
    assert!(inv.errors.is_empty(), "{vendor}: {:?}", inv.errors);
    let s = &inv.system;
    assert_eq!(s.manufacturer.as_deref(), Some(want.manufacturer), "{vendor}");
    assert_eq!(s.serial.as_deref(), Some(want.serial), "{vendor}");
    assert_eq!(s.uuid.as_deref(), Some(want.uuid), "{vendor}");
    assert_eq!(s.bios_version.as_deref(), Some(want.bios), "{vendor}");
    assert_eq!(s.power_state, Some(PowerState::On), "{vendor}");
    assert_eq!(inv.processors.len(), want.cpus.0, "{vendor}");
    assert!(inv.processors.iter().all(|p| p.model.as_deref() == Some(want.cpus.1) && p.cores == Some(want.cpus.2)));
    let total: u64 = inv.memory.iter().map(|d| d.size_bytes).sum();
    assert_eq!((inv.memory.len(), total), want.dimms, "{vendor}: {:?}", inv.memory);
    let drives: Vec<(Option<&str>, u64)> =
        inv.drives.iter().map(|d| (d.serial.as_deref(), d.size_bytes.unwrap_or(0))).collect();
    assert_eq!(drives, want.drives, "{vendor}");
    let macs: Vec<String> = inv.nics.iter().filter_map(|n| n.mac.map(|m| m.to_string())).collect();
    assert_eq!(macs, want.macs, "{vendor}");
    let psus: Vec<(&str, f64)> = inv
        .power_supplies
        .iter()
        .map(|p| (p.serial.as_deref().unwrap_or(""), p.capacity_watts.unwrap_or(0.0)))
        .collect();
    assert_eq!(psus, want.psus, "{vendor}");
    let fw: Vec<(&str, &str)> =
        inv.firmware.iter().map(|f| (f.id.as_str(), f.version.as_deref().unwrap_or(""))).collect();
    assert_eq!(fw, want.firmware, "{vendor}");
    assert!(!inv.sensors.is_empty(), "{vendor}: no sensors");
}

const XEON: &str = "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz";
const GIB32: u64 = 32 << 30;

#[tokio::test]
async fn dell_idrac9_legacy_power_and_previous_firmware_skipped() {
    check(
        "dell",
        Expected {
            manufacturer: "Dell Inc.",
            serial: "CNFCP0014T00B2",
            uuid: "4c4c4544-0058-4b10-8032-b7c04f4d3533",
            bios: "1.10.2",
            cpus: (2, XEON, 32),
            dimms: (4, 4 * GIB32),
            drives: vec![(Some("S5G0NE0R100000"), 479559942144), (Some("S5G0NE0R100001"), 479559942144)],
            macs: ["b0:7b:25:de:ad:01", "b0:7b:25:de:ad:02"],
            psus: vec![("CNLOD0012B0030", 800.0), ("CNLOD0012B0031", 800.0)],
            firmware: vec![("Installed-159-1.10.2", "1.10.2"), ("Installed-25227-6.10.30.00", "6.10.30.00")],
        },
    )
    .await;
}

#[tokio::test]
async fn hpe_ilo5_trailing_slashes_and_absent_dimm_slots() {
    check(
        "hpe",
        Expected {
            manufacturer: "HPE",
            serial: "CZJ2120ABC",
            uuid: "37393150-3436-5a43-4a32-313230414243",
            bios: "U46 v1.68 (07/20/2022)",
            cpus: (2, XEON, 32),
            dimms: (4, 4 * GIB32),
            drives: vec![(Some("S4YPNC0R700000"), 960197124096), (Some("S4YPNC0R700001"), 960197124096)],
            macs: ["b4:7a:f1:3c:00:01", "b4:7a:f1:3c:00:02"],
            psus: vec![("5WBXT0B4DAB120", 500.0), ("5WBXT0B4DAB121", 500.0)],
            firmware: vec![("1", "2.72 Sep 04 2022"), ("2", "U46 v1.68 (07/20/2022)")],
        },
    )
    .await;
}

#[tokio::test]
async fn supermicro_x12_power_subsystem_and_simple_storage() {
    check(
        "supermicro",
        Expected {
            manufacturer: "Supermicro",
            serial: "S452314X2A12345",
            uuid: "00000000-0000-0000-0000-3cecef7a8b9c",
            bios: "1.4",
            cpus: (2, XEON, 32),
            dimms: (4, 4 * GIB32),
            drives: vec![(None, 480103981056), (None, 480103981056)],
            macs: ["3c:ec:ef:7a:8b:9e", "3c:ec:ef:7a:8b:9f"],
            psus: vec![("P1K22AK12AB3451", 1200.0), ("P1K22AK12AB3452", 1200.0)],
            firmware: vec![("BMC", "01.01.10"), ("BIOS", "1.4")],
        },
    )
    .await;
}

#[tokio::test]
async fn supermicro_boot_once_sends_mode_and_if_match() {
    let (server, _) = fixture_bmc("supermicro", vec![]).await;
    client(&server, PASS).set_boot_once(BootTarget::Pxe, true).await.unwrap();
    let patch = server.requests().into_iter().find(|r| r.method == "PATCH").expect("a PATCH");
    assert_eq!(patch.header("If-Match"), Some("\"6f2c1d9e0a4b\""));
    assert_eq!(
        patch.json(),
        json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once", "BootSourceOverrideMode": "UEFI"}})
    );
}

#[tokio::test]
async fn boot_once_if_match_only_where_the_bmc_gives_an_etag() {
    for (vendor, etag) in [("dell", None), ("hpe", Some("W/\"7B6B4C9D\""))] {
        let (server, _) = fixture_bmc(vendor, vec![]).await;
        client(&server, PASS).set_boot_once(BootTarget::UefiHttp, true).await.unwrap();
        let patch = server.requests().into_iter().find(|r| r.method == "PATCH").expect("a PATCH");
        assert_eq!(patch.json()["Boot"]["BootSourceOverrideMode"], "UEFI", "{vendor}");
        assert_eq!(patch.json()["Boot"]["BootSourceOverrideTarget"], "UefiHttp", "{vendor}");
        assert_eq!(patch.header("If-Match"), etag, "{vendor}");
    }
}

fn resets(server: &Server) -> Vec<String> {
    let posts = server.requests().into_iter().filter(|r| r.method == "POST" && r.path.contains("ComputerSystem.Reset"));
    posts.map(|r| r.json()["ResetType"].as_str().unwrap_or("").to_owned()).collect()
}

#[tokio::test]
async fn hpe_cycle_is_force_restart_and_on_when_on_is_a_noop() {
    let (server, _) = fixture_bmc("hpe", vec![]).await;
    let c = client(&server, PASS);
    c.power(PowerAction::Cycle).await.unwrap();
    c.power(PowerAction::On).await.unwrap();
    c.power(PowerAction::GracefulOff).await.unwrap();
    assert_eq!(resets(&server), ["ForceRestart", "GracefulShutdown"]);
}

#[tokio::test]
async fn reset_types_read_from_action_info_when_not_inline() {
    let (server, _) = fixture_bmc("supermicro", vec![]).await;
    let c = client(&server, PASS);
    c.power(PowerAction::Cycle).await.unwrap();
    c.power(PowerAction::Reset).await.unwrap();
    assert_eq!(resets(&server), ["ForceRestart", "ForceRestart"]);
    assert!(server.requests().iter().any(|r| r.path.ends_with("/ResetActionInfo")));
}

#[tokio::test]
async fn dell_power_cycle_is_offered_and_used() {
    let (server, _) = fixture_bmc("dell", vec![]).await;
    client(&server, PASS).power(PowerAction::Cycle).await.unwrap();
    assert_eq!(resets(&server), ["PowerCycle"]);
}

#[tokio::test]
async fn dell_simple_update_returns_the_job_and_refuses_unoffered_protocols() {
    let (server, _) = fixture_bmc("dell", vec![]).await;
    let c = client(&server, PASS);
    let task = c.simple_update("http://127.0.0.1:9/BIOS_1.11.0.EXE", &[]).await.unwrap();
    assert_eq!(task.as_deref(), Some("/redfish/v1/TaskService/Tasks/JID_467767026271"));
    let state = c.task_state(task.as_deref().unwrap()).await.unwrap();
    assert_eq!((state.state.as_str(), state.percent, state.is_finished()), ("Running", Some(40), false));
    match c.simple_update("sftp://127.0.0.1/fw.bin", &[]).await {
        Err(OobError::Unsupported { what, .. }) => assert!(what.contains("SFTP") && what.contains("HTTP"), "{what}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn wrong_password_is_auth_error_without_the_password() {
    let (server, _) = fixture_bmc("dell", vec![]).await;
    let err = client(&server, "hunter2").inventory().await.unwrap_err();
    assert!(matches!(err, OobError::Auth { .. }), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("hunter2"));
}

#[tokio::test]
async fn expired_session_logs_in_again_once_and_logout_deletes_it() {
    let (server, state) = fixture_bmc("hpe", vec![]).await;
    let c = client(&server, PASS);
    assert_eq!(c.power_state().await.unwrap(), PowerState::On);
    state.lock().unwrap().tokens.clear(); // the BMC forgets every session
    assert_eq!(c.power_state().await.unwrap(), PowerState::On);
    assert_eq!(state.lock().unwrap().issued, 2);
    c.logout().await.unwrap();
    assert!(state.lock().unwrap().tokens.is_empty());
    let deletes: Vec<String> = server.requests().into_iter().filter(|r| r.method == "DELETE").map(|r| r.path).collect();
    assert_eq!(deletes, ["/redfish/v1/SessionService/Sessions/2"]);
}

#[tokio::test]
async fn a_broken_section_is_recorded_and_the_rest_returned() {
    let memory = "/redfish/v1/Systems/System.Embedded.1/Memory";
    let power = "/redfish/v1/Chassis/System.Embedded.1/Power";
    let (server, _) = fixture_bmc("dell", vec![(memory, 0), (power, 500)]).await;
    let inv = client(&server, PASS).inventory().await.unwrap();
    let sections: Vec<&str> = inv.errors.iter().map(|e| e.section.as_str()).collect();
    assert_eq!(sections, ["memory", "power"], "{:?}", inv.errors);
    assert!(inv.errors[0].error.contains("malformed") && inv.errors[0].error.contains(memory), "{:?}", inv.errors);
    assert!(inv.errors[1].error.contains("500"), "{:?}", inv.errors);
    assert!(inv.memory.is_empty() && inv.power_supplies.is_empty());
    assert_eq!((inv.processors.len(), inv.drives.len(), inv.nics.len(), inv.firmware.len()), (2, 2, 2, 2));
}

#[tokio::test]
async fn power_shelf_batteries_read_as_ups() {
    let (server, _) = fixture_bmc("powershelf", vec![]).await;
    let ups = client(&server, PASS).power_equipment_ups().await.unwrap();
    let ids: Vec<&str> = ups.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "/redfish/v1/PowerEquipment/PowerShelves/1/Batteries/BBU1",
            "/redfish/v1/Chassis/1/PowerSubsystem/Batteries/1"
        ]
    );
    let (bbu, chassis) = (&ups[0].1, &ups[1].1);
    assert_eq!((bbu.status, bbu.charge_percent), (UpsStatus::LowBattery, Some(15.0)));
    assert_eq!(bbu.flags, ["OB", "DISCHRG", "LB"]);
    assert_eq!(bbu.model.as_deref(), Some("BBU-3K"));
    assert_eq!((chassis.status, chassis.charge_percent), (UpsStatus::Online, Some(100.0)));
    let (server, _) = fixture_bmc("hpe", vec![]).await;
    assert!(client(&server, PASS).power_equipment_ups().await.unwrap().is_empty());
}
