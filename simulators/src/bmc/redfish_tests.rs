//! The Redfish service over `MemoryBackend`, through real HTTP on
//! 127.0.0.1 (the QEMU-backed run is `tests/sim_qemu.rs`).

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use super::backend::{DiskFact, MachineState, MemoryBackend, NicFact, SystemFacts};
use super::{router, SimState, Smbios};
use inventory::oob::{BootTarget, Credentials};

struct Bmc {
    base: String,
    backend: Arc<MemoryBackend>,
    http: reqwest::Client,
}

async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

async fn bmc() -> Bmc {
    let facts = SystemFacts {
        cpus: 2,
        memory_bytes: 1 << 30,
        disks: vec![DiskFact { id: "disk0".into(), size_bytes: 8 << 30, serial: Some("DISK-LAB-0001".into()) }],
        nics: vec![NicFact { id: "nic0".into(), mac: "52:54:00:5e:00:01".into() }],
        smbios: Smbios {
            serial: "LAB-0001".into(),
            uuid: "5f1a0000-0000-4000-8000-000000000001".into(),
            manufacturer: "Slipway Lab".into(),
            product: "QEMU Lab Node".into(),
        },
    };
    let backend = Arc::new(MemoryBackend::new(facts, MachineState::new(BootTarget::Disk, "1.0", "2.0")));
    let creds = Credentials { username: "admin".into(), password: "pw".into() };
    let base =
        serve(router(SimState::new("node1", "5f1a0000-0000-4000-8000-000000000001", creds, false, backend.clone())))
            .await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    Bmc { base, backend, http }
}

impl Bmc {
    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let resp = self.http.get(format!("{}{path}", self.base)).basic_auth("admin", Some("pw")).send().await.unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Value) -> (StatusCode, Value) {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base))
            .basic_auth("admin", Some("pw"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn wait_task(&self, location: &str) -> Value {
        for _ in 0..100 {
            let (_, task) = self.get(location).await;
            if task["TaskState"] != "Running" {
                return task;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("task {location} still running after 5 s");
    }
}

#[tokio::test]
async fn the_service_root_is_open_and_everything_else_needs_credentials() {
    let b = bmc().await;
    let root: Value = b.http.get(format!("{}/redfish/v1/", b.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(root["Vendor"], "Slipway Lab");
    assert_eq!(root["Systems"]["@odata.id"], "/redfish/v1/Systems");
    for path in ["/redfish/v1/Systems/1", "/redfish/v1/Nowhere"] {
        let resp = b.http.get(format!("{}{path}", b.base)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert!(resp.headers().contains_key("www-authenticate"));
        let body: Value = resp.json().await.unwrap();
        assert!(body["error"]["code"].as_str().unwrap().starts_with("Base."), "{body}");
    }
    let wrong = b.http.get(format!("{}/redfish/v1/Systems", b.base)).basic_auth("admin", Some("no")).send();
    assert_eq!(wrong.await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let (status, systems) = b.get("/redfish/v1/Systems").await;
    assert_eq!((status, systems["Members"][0]["@odata.id"].as_str()), (StatusCode::OK, Some("/redfish/v1/Systems/1")));
}

#[tokio::test]
async fn a_session_token_works_until_logout() {
    let b = bmc().await;
    let login = |password: &'static str| {
        b.http
            .post(format!("{}/redfish/v1/SessionService/Sessions", b.base))
            .json(&json!({ "UserName": "admin", "Password": password }))
            .send()
    };
    assert_eq!(login("wrong").await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let resp = login("pw").await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let token = resp.headers()["x-auth-token"].to_str().unwrap().to_string();
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with("/redfish/v1/SessionService/Sessions/"), "{location}");
    let with_token = |method: reqwest::Method, path: &str| {
        b.http.request(method, format!("{}{path}", b.base)).header("X-Auth-Token", &token).send()
    };
    assert_eq!(with_token(reqwest::Method::GET, "/redfish/v1/Systems/1").await.unwrap().status(), StatusCode::OK);
    assert_eq!(with_token(reqwest::Method::DELETE, &location).await.unwrap().status(), StatusCode::NO_CONTENT);
    let after = with_token(reqwest::Method::GET, "/redfish/v1/Systems/1").await.unwrap();
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn reset_and_a_one_time_pxe_override_reach_the_machine() {
    let b = bmc().await;
    let (_, system) = b.get("/redfish/v1/Systems/1").await;
    assert_eq!(system["PowerState"], "Off");
    let patch = json!({ "Boot": { "BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once" } });
    let (status, system) = b.send(reqwest::Method::PATCH, "/redfish/v1/Systems/1", patch).await;
    assert_eq!((status, system["Boot"]["BootSourceOverrideTarget"].as_str()), (StatusCode::OK, Some("Pxe")));
    let reset = "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset";
    let (status, _) = b.send(reqwest::Method::POST, reset, json!({ "ResetType": "On" })).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = b.send(reqwest::Method::POST, reset, json!({ "ResetType": "ForceRestart" })).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(b.backend.boots(), vec![BootTarget::Pxe, BootTarget::Disk]);
    let (_, system) = b.get("/redfish/v1/Systems/1").await;
    assert_eq!(
        (system["PowerState"].as_str(), system["Boot"]["BootSourceOverrideEnabled"].as_str()),
        (Some("On"), Some("Disabled"))
    );
    let (status, err) = b.send(reqwest::Method::POST, reset, json!({ "ResetType": "Nmi" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(err["error"]["message"].as_str().unwrap().contains("Nmi"), "{err}");
    let bad = json!({ "Boot": { "BootSourceOverrideTarget": "Floppy" } });
    assert_eq!(b.send(reqwest::Method::PATCH, "/redfish/v1/Systems/1", bad).await.0, StatusCode::BAD_REQUEST);
    let uefi = json!({ "Boot": { "BootSourceOverrideMode": "UEFI" } });
    assert_eq!(b.send(reqwest::Method::PATCH, "/redfish/v1/Systems/1", uefi).await.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn hardware_resources_and_unknown_paths() {
    let b = bmc().await;
    let (_, nic) = b.get("/redfish/v1/Systems/1/EthernetInterfaces/1").await;
    assert_eq!(nic["MACAddress"], "52:54:00:5e:00:01");
    let (_, drive) = b.get("/redfish/v1/Systems/1/Storage/1/Drives/1/").await;
    assert_eq!(
        (drive["CapacityBytes"].as_u64(), drive["SerialNumber"].as_str()),
        (Some(8 << 30), Some("DISK-LAB-0001"))
    );
    let (_, dimm) = b.get("/redfish/v1/Systems/1/Memory/1").await;
    assert_eq!(dimm["CapacityMiB"], 1024);
    let (_, psus) = b.get("/redfish/v1/Chassis/1/PowerSubsystem/PowerSupplies").await;
    assert_eq!(psus["Members@odata.count"], 1);
    let (_, power) = b.get("/redfish/v1/Chassis/1/Power").await;
    assert_eq!(power["PowerSupplies"][0]["Name"], "PSU 1");
    let (_, manager) = b.get("/redfish/v1/Managers/1").await;
    assert_eq!(manager["FirmwareVersion"], "2.0");
    for path in [
        "/redfish/v1/Systems/2",
        "/redfish/v1/Systems/1/Storage/1/Drives/2",
        "/redfish/v1/UpdateService/FirmwareInventory/NIC",
    ] {
        let (status, body) = b.get(path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body["error"]["@Message.ExtendedInfo"][0]["MessageId"], "Base.1.16.ResourceNotFound");
    }
}

#[tokio::test]
async fn simple_update_installs_the_bmc_at_once_and_the_bios_at_the_next_boot() {
    let b = bmc().await;
    let images = axum::Router::new()
        .route("/bios.fw", axum::routing::get(|| async { "slipway-lab-firmware BIOS 1.1\nblob" }))
        .route("/bmc.fw", axum::routing::get(|| async { "slipway-lab-firmware BMC 2.1\n" }))
        .route("/junk.fw", axum::routing::get(|| async { "MZ not firmware" }));
    let images = serve(images).await;
    let update = "/redfish/v1/UpdateService/Actions/UpdateService.SimpleUpdate";
    let mut tasks = Vec::new();
    for (file, target) in [("bios.fw", "BIOS"), ("bmc.fw", "BMC"), ("junk.fw", "BIOS"), ("bmc.fw", "BIOS")] {
        let body = json!({ "ImageURI": format!("{images}/{file}"), "Targets": [format!("/redfish/v1/UpdateService/FirmwareInventory/{target}")] });
        let resp = b
            .http
            .post(format!("{}{update}", b.base))
            .basic_auth("admin", Some("pw"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        tasks.push(resp.headers()["location"].to_str().unwrap().to_string());
    }
    let states: Vec<Value> = futures_states(&b, &tasks).await;
    assert_eq!(states, vec!["Completed", "Completed", "Exception", "Exception"]);
    let (_, bmc) = b.get("/redfish/v1/UpdateService/FirmwareInventory/BMC").await;
    let (_, bios) = b.get("/redfish/v1/UpdateService/FirmwareInventory/BIOS").await;
    assert_eq!((bmc["Version"].as_str(), bios["Version"].as_str()), (Some("2.1"), Some("1.0")));
    let reset = "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset";
    b.send(reqwest::Method::POST, reset, json!({ "ResetType": "On" })).await;
    let (_, system) = b.get("/redfish/v1/Systems/1").await;
    assert_eq!(system["BiosVersion"], "1.1");
    let (status, _) = b.send(reqwest::Method::POST, update, json!({ "ImageURI": "ftp://x/y" })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

async fn futures_states(b: &Bmc, tasks: &[String]) -> Vec<Value> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(b.wait_task(t).await["TaskState"].clone());
    }
    out
}
