//! Two `slipway serve` processes (the release binary at `SLIPWAY_BIN`) on
//! one PostgreSQL database: what one is told, the other shows; background
//! work (the deadline reaper) runs on one of them; when that one is killed
//! the other takes over within the leader lease.
//!
//! Needs `SLIPWAY_TEST_POSTGRES_URL` (scripts/test.sh starts a PostgreSQL);
//! skips without it unless `SLIPWAY_LAB_TESTS=1`, where it fails.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use inventory::oob::{BootTarget, Credentials};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use simulators::bmc::backend::{DiskFact, MachineState, NicFact};
use simulators::bmc::{MemoryBackend, SimState, Smbios, SystemFacts};
use sqlx::{ConnectOptions, Connection};
use store::Store;

const TOKEN: &str = "two-appliances-admin-token-0123456789abcdef";
const SECRET_KEY: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
const BMC_MAC: &str = "52:54:00:7a:00:01";
const REAPED: &str = "waiting state's deadline passed";

struct Appliance {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Appliance {
    fn start(bin: &Path, dir: &Path, name: &str, db_url: &str) -> Appliance {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let data = dir.join(name);
        std::fs::create_dir_all(&data).unwrap();
        let config = data.join("slipway.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {data:?}\ncache_dir = {cache:?}\n\n[api]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n\n\
                 [database]\nurl = \"{db_url}\"\n\n[provisioning]\ndiscovery_timeout_secs = 4\n\n\
                 [oob]\nsecret_key = \"{SECRET_KEY}\"\npower_poll_secs = 1\nrequest_timeout_secs = 2\n",
                data = data.display().to_string(),
                cache = dir.join("cache").display().to_string(),
            ),
        )
        .unwrap();
        let log = data.join("serve.log");
        let child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(&config)
            .env("SLIPWAY_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting slipway serve");
        let appliance = Appliance { child, url: format!("http://127.0.0.1:{port}"), log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while ureq::get(&format!("{}/healthz", appliance.url)).call().is_err() {
            assert!(Instant::now() < deadline, "{name} did not come up:\n{}", appliance.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
        appliance
    }

    fn log_text(&self) -> String {
        let mut text = String::new();
        std::fs::File::open(&self.log).and_then(|mut f| f.read_to_string(&mut text)).ok();
        text
    }

    fn get(&self, path: &str) -> Value {
        ureq::get(&format!("{}{path}", self.url))
            .set("Authorization", &format!("Bearer {TOKEN}"))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .into_json()
            .unwrap()
    }

    fn post(&self, path: &str, body: Value) -> Value {
        ureq::post(&format!("{}{path}", self.url))
            .set("Authorization", &format!("Bearer {TOKEN}"))
            .send_json(body)
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
            .into_json()
            .unwrap()
    }

    fn kill9(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }

    fn terminate(&mut self) {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        self.child.wait().ok();
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A fresh database on the test server; dropped by [`drop_database`].
async fn create_database(admin: &str) -> (String, String) {
    let name = format!("slipway_two_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
    let url = sqlx::postgres::PgConnectOptions::from_str(admin).unwrap().database(&name).to_url_lossy().to_string();
    (name, url)
}

async fn drop_database(admin: &str, name: &str) {
    if let Ok(mut conn) = sqlx::PgConnection::connect(admin).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await;
    }
}

/// A simulated Redfish BMC on loopback whose host has `BMC_MAC`.
async fn sim_bmc() -> String {
    let facts = SystemFacts {
        cpus: 2,
        memory_bytes: 2 << 30,
        disks: vec![DiskFact { id: "disk0".into(), size_bytes: 8 << 30, serial: Some("DISK-TWO-1".into()) }],
        nics: vec![NicFact { id: "nic0".into(), mac: BMC_MAC.into() }],
        smbios: Smbios {
            serial: "TWO-0001".into(),
            uuid: "5f1a0000-0000-4000-8000-00000000007a".into(),
            manufacturer: "Slipway Lab".into(),
            product: "Sim".into(),
        },
    };
    let backend = std::sync::Arc::new(MemoryBackend::new(facts, MachineState::new(BootTarget::Disk, "1.0.0", "1.0.0")));
    let creds = Credentials { username: "admin".into(), password: "pw".into() };
    let router =
        simulators::bmc::router(SimState::new("two", "5f1a0000-0000-4000-8000-00000000007a", creds, false, backend));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

fn events(appliance: &Appliance, machine: &str) -> Vec<Value> {
    appliance.get(&format!("/api/v1/machines/{machine}/events"))["events"].as_array().cloned().unwrap_or_default()
}

fn failed_transitions(appliance: &Appliance, machine: &str) -> usize {
    events(appliance, machine).iter().filter(|e| e["kind"] == "state.changed" && e["detail"]["to"] == "failed").count()
}

/// Waits until `machine` is failed as seen through `appliance`; returns how long that took.
fn wait_failed(appliance: &Appliance, machine: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    while appliance.get(&format!("/api/v1/machines/{machine}"))["state"] != "failed" {
        assert!(start.elapsed() < limit, "{machine} not failed after {limit:?}:\n{}", appliance.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    start.elapsed()
}

fn reaped_in(appliance: &Appliance, machine: &str) -> usize {
    appliance.log_text().lines().filter(|l| l.contains(REAPED) && l.contains(machine)).count()
}

#[test]
fn two_appliances_on_one_postgres_serve_the_same_api_and_reap_once() {
    let Ok(admin) = std::env::var("SLIPWAY_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var("SLIPWAY_LAB_TESTS").as_deref() != Ok("1"),
            "SLIPWAY_TEST_POSTGRES_URL is not set (scripts/test.sh starts a PostgreSQL and sets it)"
        );
        eprintln!("skipped: SLIPWAY_TEST_POSTGRES_URL is not set");
        return;
    };
    let bin = PathBuf::from(std::env::var("SLIPWAY_BIN").unwrap_or_else(|_| "target/release/slipway".into()));
    if !bin.exists() {
        assert!(std::env::var("SLIPWAY_LAB_TESTS").as_deref() != Ok("1"), "{} missing", bin.display());
        eprintln!("skipped: {} missing (cargo build --release)", bin.display());
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (db_name, db_url) = rt.block_on(create_database(&admin));
    let result = std::panic::catch_unwind(|| scenario(&rt, &bin, &db_url));
    rt.block_on(drop_database(&admin, &db_name));
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn scenario(rt: &tokio::runtime::Runtime, bin: &Path, db_url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Appliance::start(bin, dir.path(), "a", db_url);
    let mut b = Appliance::start(bin, dir.path(), "b", db_url);
    let store = rt.block_on(Store::connect(db_url)).unwrap();
    let leads = |x: &Appliance| x.log_text().contains("leader: this appliance runs the background work");
    assert!(leads(&a) && !leads(&b), "the first appliance up leads, the second waits");

    // A machine created through A (its BMC enrolled there) is seen with
    // its events through B.
    let bmc_url = rt.block_on(sim_bmc());
    let bmc = a.post("/api/v1/bmcs", json!({ "address": bmc_url, "username": "admin", "password": "pw" }));
    let m1 = bmc["machine_id"].as_str().unwrap_or_else(|| panic!("linked to a machine: {bmc}")).to_string();
    let seen = b.get(&format!("/api/v1/machines/{BMC_MAC}"));
    assert_eq!((seen["id"].as_str(), seen["state"].as_str()), (Some(m1.as_str()), Some("discovering")), "{seen}");
    let kinds: Vec<String> = events(&b, &m1).iter().filter_map(|e| e["kind"].as_str().map(str::to_string)).collect();
    assert!(kinds.contains(&"machine.created".to_string()), "B shows A's events: {kinds:?}");

    // Its discovery deadline (4 s) passes: failed once, by the leader only.
    wait_failed(&b, &m1, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(failed_transitions(&b, &m1), 1, "one state.changed to failed");
    assert_eq!((reaped_in(&a, &m1), reaped_in(&b, &m1)), (1, 0), "the leader reaped, the other did not");

    // A deploy started through A is seen through B.
    let m2 = ready_machine(rt, &store, "52:54:00:7a:00:02");
    upload_image(&a, "img");
    let d = a.post(&format!("/api/v1/machines/{m2}/deploy"), json!({ "image": "img", "hostname": "n2" }));
    assert_eq!(d["image"], "img", "{d}");
    let seen = b.get(&format!("/api/v1/machines/{m2}/deployment"));
    assert_eq!((seen["image"].as_str(), seen["phase"].as_str()), (Some("img"), d["phase"].as_str()), "{seen}");
    assert_eq!(b.get(&format!("/api/v1/machines/{m2}"))["state"], "deploying");
    assert!(events(&b, &m2).iter().any(|e| e["kind"] == "state.changed" && e["detail"]["to"] == "deploying"));

    // The leader dies: B takes over within the lease and reaps.
    a.kill9();
    let killed = Instant::now();
    let (m3, _) = rt.block_on(store.ensure_machine("52:54:00:7a:00:03".parse().unwrap(), "test", 0)).unwrap();
    let limit = api::leader::LEASE + api::leader::RENEW + Duration::from_secs(5);
    wait_failed(&b, &m3, limit);
    let took = killed.elapsed();
    eprintln!("failover: B reaped {m3} {took:?} after A was killed (lease {:?})", api::leader::LEASE);
    assert!(leads(&b), "B took the lease");
    assert_eq!((reaped_in(&b, &m3), failed_transitions(&b, &m3)), (1, 1));

    // A clean shutdown gives the lease up at once.
    b.terminate();
    assert_eq!(rt.block_on(store.lease_holder(api::leader::BACKGROUND)).unwrap(), None, "{}", b.log_text());
}

/// A machine in `ready`, as its discovery agent leaves it (the boot
/// services, which the agent talks to, are off here).
fn ready_machine(rt: &tokio::runtime::Runtime, store: &Store, mac: &str) -> String {
    rt.block_on(async {
        let (id, _) = store.ensure_machine(mac.parse().unwrap(), "test", 600_000).await.unwrap();
        let inventory = serde_json::from_value(json!({
            "source": "in_band",
            "system": { "vendor": "QEMU", "product": "Standard PC", "serial": "TWO-2", "uuid": null },
            "cpu": { "model": "QEMU Virtual CPU", "count": 2 },
            "memory": { "total_bytes": 1_000_000 },
            "disks": [{ "name": "vda", "size_bytes": 8_589_934_592u64, "model": null, "serial": "d2", "rotational": true }],
            "nics": [{ "name": "eth0", "mac": mac, "link": true, "speed_mbps": null }]
        }))
        .unwrap();
        store.set_inventory(&id, &inventory).await.unwrap();
        store.fire(&id, model::lifecycle::Trigger::InventoryReceived).await.unwrap();
        id
    })
}

fn upload_image(appliance: &Appliance, name: &str) {
    appliance.post("/api/v1/images", json!({ "name": name, "os": "debian", "version": "12" }));
    let raw: Vec<u8> = (0..1u32 << 16).map(|i| (i % 251) as u8).collect();
    let sha = hex::encode(Sha256::digest(&raw));
    let image: Value = ureq::put(&format!("{}/api/v1/images/{name}/content", appliance.url))
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .set("Content-Type", "application/zstd")
        .set("X-Content-SHA256", &sha)
        .send_bytes(&zstd::encode_all(&raw[..], 3).unwrap())
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(image["state"], "available", "{image}");
}
