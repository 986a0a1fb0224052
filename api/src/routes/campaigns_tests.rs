//! Firmware campaigns end to end, in process: machines behind simulated
//! Redfish BMCs (`simulators::bmc`, in-memory machines) on loopback, the
//! boot HTTP face on loopback so the BMCs fetch firmware from Slipway,
//! the runner with short timings, and a real NUT UPS (dummy-ups) where
//! the test is about the UPS. The boot face can be shut (a gate) so a
//! test can catch a node mid-update.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use inventory::oob::{BootTarget, Credentials};
use serde_json::{json, Value};
use simulators::bmc::backend::{MachineState, NicFact};
use simulators::bmc::{MemoryBackend, SimState, Smbios, SystemFacts};
use tokio::sync::watch;

use crate::campaign::runner::{self, RunnerSettings};
use crate::routes::test_support::{app, get, get_raw, post, put_bytes, restart, TestApp};
use crate::{boot_router, AppState, BootContext};

pub(super) const BIOS_2: &[u8] = b"slipway-lab-firmware BIOS 2.0.0\nlab payload\n";

/// A simulated BMC for machine `i` (BIOS and BMC at 1.0.0, powered off).
pub(super) async fn sim_bmc(i: u8) -> (String, Arc<MemoryBackend>) {
    let uuid = format!("5f1a0000-0000-4000-8000-0000000001{i:02x}");
    let facts = SystemFacts {
        cpus: 2,
        memory_bytes: 2 << 30,
        disks: vec![],
        nics: vec![NicFact { id: "nic0".into(), mac: format!("52:54:00:cc:00:{i:02x}") }],
        smbios: Smbios {
            serial: format!("CAMP-{i}"),
            uuid: uuid.clone(),
            manufacturer: "Slipway Lab".into(),
            product: "Sim".into(),
        },
    };
    let backend = Arc::new(MemoryBackend::new(facts, MachineState::new(BootTarget::Disk, "1.0.0", "1.0.0")));
    let creds = Credentials { username: "admin".into(), password: "pw".into() };
    let router = simulators::bmc::router(SimState::new(&format!("sim{i}"), &uuid, creds, false, backend.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}"), backend)
}

/// The boot face on loopback. While the gate is shut, requests wait (a
/// BMC's firmware fetch hangs); `waiting` counts requests that arrived.
pub(super) struct BootFace {
    pub(super) url: String,
    gate: watch::Sender<bool>,
    arrived: Arc<AtomicUsize>,
}

impl BootFace {
    /// `state` with BMCs told to fetch from this face.
    pub(super) fn serving(&self, state: &AppState) -> AppState {
        let mut state = state.clone();
        let old = state.boot.clone().unwrap();
        state.boot = Some(Arc::new(BootContext {
            http_base: self.url.clone(),
            ramdisk_dir: old.ramdisk_dir.clone(),
            ipxe_dir: old.ipxe_dir.clone(),
            guard: old.guard.clone(),
            signer: old.signer.clone(),
        }));
        state
    }
}

pub(super) async fn boot_face(state: AppState) -> BootFace {
    let (gate, open) = watch::channel(true);
    let arrived = Arc::new(AtomicUsize::new(0));
    let counter = arrived.clone();
    let router = boot_router(state).layer(axum::middleware::from_fn(move |req: Request, next: Next| {
        let (mut open, counter) = (open.clone(), counter.clone());
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = open.wait_for(|o| *o).await;
            next.run(req).await
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    BootFace { url, gate, arrived }
}

struct Lab {
    t: TestApp,
    machines: Vec<String>,
    backends: Vec<Arc<MemoryBackend>>,
    boot: BootFace,
    runner: Option<Runner>,
}

/// The runner task; stopped when dropped (a test that fails stops it too).
struct Runner(tokio::task::JoinHandle<()>);

impl Drop for Runner {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `n` machines enrolled through their BMCs, all in rack `r1`.
async fn lab(n: u8) -> Lab {
    let t = app().await;
    let (mut machines, mut backends) = (vec![], vec![]);
    for i in 0..n {
        let (url, backend) = sim_bmc(i).await;
        let body =
            json!({ "address": url, "protocol": "redfish", "username": "admin", "password": "pw", "rack": "r1" });
        let (status, bmc) = post(&t.operator, "/api/v1/bmcs", &t.admin, &body).await;
        assert_eq!(status, StatusCode::CREATED, "{bmc}");
        machines.push(bmc["machine_id"].as_str().unwrap().to_string());
        backends.push(backend);
    }
    let boot = boot_face(t.state.clone()).await;
    Lab { t, machines, backends, boot, runner: None }
}

impl Lab {
    /// Starts the runner (as `serve` does), its BMCs fetching from the
    /// loopback boot face.
    fn start_runner(&mut self) {
        let state = self.boot.serving(&self.t.state);
        let settings = RunnerSettings {
            tick: Duration::from_millis(100),
            task_poll: Duration::from_millis(100),
            task_timeout: Duration::from_secs(20),
            verify_timeout: Duration::from_secs(10),
            ..Default::default()
        };
        self.runner = Some(Runner(tokio::spawn(runner::run(state, settings))));
    }

    /// The appliance dies and starts again: the runner stops, a new app
    /// opens the same database and files.
    async fn restart(self) -> Lab {
        let Lab { t, machines, backends, boot, runner } = self;
        drop(runner);
        let mut lab = Lab { t: restart(t).await, machines, backends, boot, runner: None };
        lab.start_runner();
        lab
    }

    async fn upload(&self, name: &str, content: &[u8]) {
        let path = format!("/api/v1/firmware/{name}");
        let (status, file) = put_bytes(&self.t.operator, &path, &self.t.admin, &[], content.to_vec()).await;
        assert_eq!(status, StatusCode::CREATED, "{file}");
    }

    async fn create(&self, body: Value) -> String {
        let (status, c) = post(&self.t.operator, "/api/v1/campaigns", &self.t.admin, &body).await;
        assert_eq!(status, StatusCode::CREATED, "{c}");
        c["id"].as_str().unwrap().to_string()
    }

    async fn campaign(&self, id: &str) -> Value {
        get(&self.t.operator, &format!("/api/v1/campaigns/{id}"), Some(&self.t.admin)).await.1
    }

    /// Polls until `done(campaign)`, checking that at most `batch` nodes
    /// are ever in progress.
    async fn wait(&self, id: &str, batch: u64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let c = self.campaign(id).await;
            let busy = c["summary"]["applying"].as_u64().unwrap() + c["summary"]["verifying"].as_u64().unwrap();
            assert!(busy <= batch, "more than {batch} node(s) in progress: {c}");
            if done(&c) {
                return c;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "waiting for {what}: {c:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn operate(&self, id: &str, verb: &str) -> (StatusCode, Value) {
        post(&self.t.operator, &format!("/api/v1/campaigns/{id}/{verb}"), &self.t.admin, &json!({})).await
    }

    async fn events(&self, kind: &str) -> Vec<Value> {
        let (_, events) = get(&self.t.operator, "/api/v1/events?limit=1000", Some(&self.t.admin)).await;
        events["events"].as_array().unwrap().iter().filter(|e| e["kind"] == kind).cloned().collect()
    }
}

fn bios_campaign(machines: &[String], firmware: &str, extra: Value) -> Value {
    let mut body = json!({
        "name": "bios 2.0.0",
        "targets": { "machines": machines },
        "action": { "firmware": { "component": "BIOS", "firmware": firmware, "version": "2.0.0" } },
        "rollout": { "batch_size": 1, "max_failures": 1 },
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

fn node_states(c: &Value) -> Vec<String> {
    c["nodes"].as_array().unwrap().iter().map(|n| n["state"].as_str().unwrap().to_string()).collect()
}

fn state_is(want: &'static str) -> impl Fn(&Value) -> bool {
    move |c| c["state"] == want
}

#[tokio::test]
async fn a_bios_campaign_upgrades_every_machine_one_node_at_a_time() {
    let mut lab = lab(3).await;
    lab.upload("bios-2.0.0", BIOS_2).await;
    let id = lab.create(bios_campaign(&lab.machines, "bios-2.0.0", json!({}))).await;
    assert_eq!(lab.campaign(&id).await["state"], "scheduled");
    lab.start_runner();
    let c = lab.wait(&id, 1, "completed", state_is("completed")).await;
    assert_eq!(node_states(&c), ["done", "done", "done"], "{c:#}");
    let nodes = c["nodes"].as_array().unwrap();
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!((n["old_version"].as_str(), n["new_version"].as_str()), (Some("1.0.0"), Some("2.0.0")), "{n}");
        if i > 0 {
            let (prev_done, started) = (nodes[i - 1]["finished_at"].as_str(), n["started_at"].as_str());
            assert!(started >= prev_done, "node {i} started before node {} finished: {c:#}", i - 1);
        }
    }
    for (machine, backend) in lab.machines.iter().zip(&lab.backends) {
        let (_, bmc) = get(&lab.t.operator, &format!("/api/v1/machines/{machine}/bmc"), Some(&lab.t.admin)).await;
        let bios = bmc["inventory"]["firmware"].as_array().unwrap().iter().find(|f| f["id"] == "BIOS").cloned();
        assert_eq!(bios.unwrap()["version"], "2.0.0", "{bmc}");
        assert_eq!(backend.boots().len(), 1, "one reset started the new BIOS");
        assert_eq!(bmc["power_state"], "off", "a machine that was off is off again");
    }
    assert_eq!(lab.events("campaign.started").await.len(), 1);
    assert_eq!(lab.events("campaign.node_started").await.len(), 3);
    assert_eq!(lab.events("campaign.node_done").await.len(), 3);
    assert_eq!(lab.events("campaign.completed").await.len(), 1);
    // The file the BMCs fetched is served as uploaded.
    let (_, files) = get(&lab.t.operator, "/api/v1/firmware", Some(&lab.t.admin)).await;
    assert_eq!(files["firmware"][0]["size_bytes"], BIOS_2.len(), "{files}");
    let (status, _, fetched) = get_raw(&lab.t.boot, "/boot/firmware/bios-2.0.0", &[]).await;
    assert_eq!((status, fetched.as_slice()), (StatusCode::OK, BIOS_2));
}

#[tokio::test]
async fn a_ups_on_battery_holds_new_starts_and_mains_resumes_the_campaign() {
    use simulators::ups::DummyState;
    let Some((_dir, nut)) = crate::routes::test_support::dummy_ups("rack1").await else { return };
    let mut lab = lab(3).await;
    let creds = nut.credentials();
    let ups = json!({ "name": "rack1-ups", "protocol": "nut", "address": nut.addr(), "ups": "rack1",
                      "username": creds.username, "password": creds.password, "feeds": { "racks": ["r1"] } });
    let (status, ups) = post(&lab.t.operator, "/api/v1/ups", &lab.t.admin, &ups).await;
    assert_eq!((status, ups["state"]["status"].as_str()), (StatusCode::CREATED, Some("online")), "{ups}");
    lab.upload("bios-2.0.0", BIOS_2).await;

    // The first node's fetch hangs, so it is mid-update when the mains go.
    lab.boot.gate.send_replace(false);
    let id = lab.create(bios_campaign(&lab.machines, "bios-2.0.0", json!({}))).await;
    lab.start_runner();
    lab.wait(&id, 1, "the first node applying", |c| c["nodes"][0]["state"] == "applying").await;
    nut.set(DummyState::Battery).unwrap();
    let held = lab.wait(&id, 1, "held", state_is("held")).await;
    assert!(held["reason"].as_str().unwrap().contains("UPS rack1-ups is on battery"), "{held}");
    let event = lab.events("campaign.held").await.pop().expect("a campaign.held event");
    assert_eq!(event["detail"]["ups"], "rack1-ups", "{event}");

    // The node in progress finishes; no other starts while held.
    lab.boot.gate.send_replace(true);
    lab.wait(&id, 1, "the first node done", |c| c["nodes"][0]["state"] == "done").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let c = lab.campaign(&id).await;
    assert_eq!(
        (c["state"].as_str(), node_states(&c)),
        (Some("held"), vec!["done".into(), "pending".into(), "pending".into()])
    );

    nut.set(DummyState::Online).unwrap();
    let c = lab.wait(&id, 1, "completed", state_is("completed")).await;
    assert_eq!(node_states(&c), ["done", "done", "done"]);
    assert_eq!(lab.events("campaign.resumed").await.len(), 1);
}

#[tokio::test]
async fn a_bad_firmware_file_fails_its_node_and_pauses_the_campaign() {
    let mut lab = lab(3).await;
    lab.upload("junk", b"MZ\x90\x00 this is not firmware").await;
    let id = lab.create(bios_campaign(&lab.machines, "junk", json!({}))).await;
    lab.start_runner();
    let c = lab.wait(&id, 1, "paused", state_is("paused")).await;
    assert_eq!(node_states(&c), ["failed", "pending", "pending"], "{c:#}");
    let reason = c["nodes"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("Exception") && reason.contains("not a lab firmware image"), "{reason}");
    assert!(c["reason"].as_str().unwrap().contains("max_failures 1"), "{c}");
    assert_eq!(lab.events("campaign.node_failed").await.len(), 1);
    assert_eq!(lab.events("campaign.paused").await.len(), 1);
    assert!(lab.backends.iter().all(|b| b.boots().is_empty()), "a failed update resets nothing");

    // Resumed past that failure, the next node fails the same way.
    let (status, c) = lab.operate(&id, "resume").await;
    assert_eq!(
        (status, c["state"].as_str(), c["acknowledged_failures"].as_u64()),
        (StatusCode::OK, Some("running"), Some(1))
    );
    let c = lab.wait(&id, 1, "paused again", |c| c["state"] == "paused" && c["nodes"][1]["state"] == "failed").await;
    assert_eq!(node_states(&c), ["failed", "failed", "pending"]);
    let (status, c) = lab.operate(&id, "cancel").await;
    assert_eq!((status, c["state"].as_str()), (StatusCode::OK, Some("cancelled")));
}

#[tokio::test]
async fn pause_resume_and_cancel() {
    let mut lab = lab(2).await;
    lab.upload("bios-2.0.0", BIOS_2).await;
    // Not yet due: pause, resume (back to scheduled), cancel.
    let later = json!({ "schedule": { "at": "2099-01-01T00:00:00Z" } });
    let id = lab.create(bios_campaign(&lab.machines[..1], "bios-2.0.0", later)).await;
    let c = lab.campaign(&id).await;
    assert_eq!(
        (c["state"].as_str(), c["schedule_next_open"].as_str()),
        (Some("scheduled"), Some("2099-01-01T00:00:00.000Z"))
    );
    assert_eq!(lab.operate(&id, "pause").await.1["state"], "paused");
    let (status, err) = lab.operate(&id, "pause").await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert!(err["detail"].as_str().unwrap().contains("paused"), "{err}");
    assert_eq!(lab.operate(&id, "resume").await.1["state"], "scheduled", "never started: scheduled again");
    assert_eq!(lab.operate(&id, "cancel").await.1["state"], "cancelled");
    assert_eq!(lab.operate(&id, "resume").await.0, StatusCode::CONFLICT);
    assert_eq!(lab.operate("no-such-campaign", "pause").await.0, StatusCode::NOT_FOUND);

    // Running: a pause lets the node in progress finish and starts no other.
    lab.boot.gate.send_replace(false);
    let id = lab.create(bios_campaign(&lab.machines, "bios-2.0.0", json!({}))).await;
    lab.start_runner();
    lab.wait(&id, 1, "the first node applying", |c| c["nodes"][0]["state"] == "applying").await;
    assert_eq!(lab.operate(&id, "pause").await.1["state"], "paused");
    lab.boot.gate.send_replace(true);
    lab.wait(&id, 1, "the first node done", |c| c["nodes"][0]["state"] == "done").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = lab.campaign(&id).await;
    assert_eq!((c["state"].as_str(), node_states(&c)), (Some("paused"), vec!["done".into(), "pending".into()]));
    assert_eq!(lab.operate(&id, "resume").await.1["state"], "running");
    lab.wait(&id, 1, "completed", state_is("completed")).await;
    assert_eq!(lab.operate(&id, "cancel").await.0, StatusCode::CONFLICT, "a finished campaign stays finished");
}

#[tokio::test]
async fn an_appliance_restart_mid_campaign_goes_on_without_redoing_done_nodes() {
    let mut lab = lab(3).await;
    lab.upload("bios-2.0.0", BIOS_2).await;
    let id = lab.create(bios_campaign(&lab.machines, "bios-2.0.0", json!({}))).await;
    lab.start_runner();
    lab.wait(&id, 1, "the first node done", |c| c["nodes"][0]["state"] == "done").await;
    // The second node's BMC is fetching (held at the gate) when the appliance dies.
    lab.boot.gate.send_replace(false);
    let before = lab.boot.arrived.load(Ordering::SeqCst);
    let started = Instant::now();
    while lab.boot.arrived.load(Ordering::SeqCst) == before {
        assert!(started.elapsed() < Duration::from_secs(10), "the second node's BMC never fetched");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(node_states(&lab.campaign(&id).await), ["done", "applying", "pending"]);
    let mut lab = lab.restart().await;
    lab.boot.gate.send_replace(true);
    let c = lab.wait(&id, 1, "completed after the restart", state_is("completed")).await;
    assert_eq!(node_states(&c), ["done", "done", "done"]);
    for (i, backend) in lab.backends.iter().enumerate() {
        assert_eq!(backend.boots().len(), 1, "machine {i} was reset once, not again after the restart");
    }
    let started: Vec<Value> = lab.events("campaign.node_started").await;
    let done: Vec<Value> = lab.events("campaign.node_done").await;
    assert_eq!((started.len(), done.len()), (3, 3), "each node started and finished once");
    assert_eq!(
        lab.boot.arrived.load(Ordering::SeqCst),
        3,
        "the resumed node's BMC fetched once: its task was polled again"
    );
    lab.runner.take();
}

/// A campaign pins the firmware file as uploaded when it was created: a
/// later upload under the same name changes nothing the BMC is served.
#[tokio::test]
async fn a_campaign_serves_the_firmware_it_pinned_even_after_a_new_upload() {
    use sha2::{Digest, Sha256};
    let lab = lab(1).await;
    lab.upload("bios-2.0.0", BIOS_2).await;
    let later = json!({ "schedule": { "at": "2099-01-01T00:00:00Z" } });
    let wrong = json!({ "schedule": { "at": "2099-01-01T00:00:00Z" }, "action": { "firmware": {
        "component": "BIOS", "firmware": "bios-2.0.0", "version": "2.0.0", "sha256": "00".repeat(32) } } });
    let (status, err) =
        post(&lab.t.operator, "/api/v1/campaigns", &lab.t.admin, &bios_campaign(&lab.machines, "bios-2.0.0", wrong))
            .await;
    assert_eq!((status, err["field"].as_str()), (StatusCode::BAD_REQUEST, Some("action.firmware.sha256")), "{err}");
    let id = lab.create(bios_campaign(&lab.machines, "bios-2.0.0", later)).await;
    let pinned = hex::encode(Sha256::digest(BIOS_2));
    let c = lab.campaign(&id).await;
    assert_eq!(c["action"]["firmware"]["sha256"], pinned.as_str(), "{c}");

    lab.upload("bios-2.0.0", b"something else entirely").await;
    let action: model::campaign::FirmwareAction = serde_json::from_value(c["action"]["firmware"].clone()).unwrap();
    let url = crate::campaign::firmware::image_url(&lab.t.state, &action).unwrap();
    assert!(url.ends_with(&format!("/boot/firmware/sha256/{pinned}")), "{url}");
    let path = url.split_once("8081").map(|(_, p)| p.to_string()).unwrap_or(url.clone());
    let (status, _, served) = get_raw(&lab.t.boot, &path, &[]).await;
    assert_eq!((status, served.as_slice()), (StatusCode::OK, BIOS_2), "the BMC gets exactly what was pinned");
}

/// Drain commands run as root on the nodes: an operator may not set
/// them, a viewer may not read them.
#[tokio::test]
async fn drain_commands_need_node_root_and_are_hidden_from_viewers() {
    use model::role::Role;
    let lab = lab(1).await;
    lab.upload("bios-2.0.0", BIOS_2).await;
    let drain = json!({ "schedule": { "at": "2099-01-01T00:00:00Z" },
                        "gates": { "drain": { "run": "kubectl drain s3cret", "undo": "kubectl uncordon s3cret" } } });
    let body = bios_campaign(&lab.machines, "bios-2.0.0", drain);
    let token = |name, role| crate::routes::roles_tests::token(&lab.t, name, role);
    let (operator, node_root, viewer) = (
        token("ops", Role::Operator).await,
        token("root-ops", Role::NodeRoot).await,
        token("wall", Role::Viewer).await,
    );
    let (status, err) = post(&lab.t.operator, "/api/v1/campaigns", &operator, &body).await;
    assert_eq!((status, err["field"].as_str()), (StatusCode::FORBIDDEN, Some("gates.drain")), "{err}");
    let (status, c) = post(&lab.t.operator, "/api/v1/campaigns", &node_root, &body).await;
    assert_eq!(status, StatusCode::CREATED, "{c}");
    let id = c["id"].as_str().unwrap();
    for path in [format!("/api/v1/campaigns/{id}"), "/api/v1/campaigns".to_string()] {
        let (_, seen) = get(&lab.t.operator, &path, Some(&viewer)).await;
        assert!(!seen.to_string().contains("s3cret") && seen.to_string().contains("(redacted)"), "{seen}");
    }
    let (_, full) = get(&lab.t.operator, &format!("/api/v1/campaigns/{id}"), Some(&operator)).await;
    assert_eq!(full["gates"]["drain"]["run"], "kubectl drain s3cret");
}

#[tokio::test]
async fn campaign_requests_are_checked_field_by_field() {
    let lab = lab(1).await;
    lab.upload("bios-2.0.0", BIOS_2).await;
    let m = lab.machines.clone();
    let with = |patch: Value| bios_campaign(&m, "bios-2.0.0", patch);
    for (body, field) in [
        (with(json!({ "name": "" })), "name"),
        (with(json!({ "targets": {} })), "targets"),
        (with(json!({ "targets": { "machines": ["nope"] } })), "targets.machines[0]"),
        (with(json!({ "targets": { "racks": ["r9"] } })), "targets.racks[0]"),
        (
            with(json!({ "action": { "firmware": { "component": "BIOS", "version": "2" } } })),
            "action.firmware.firmware",
        ),
        (
            with(json!({ "action": { "firmware": { "component": "BIOS", "firmware": "missing", "version": "2" } } })),
            "action.firmware.firmware",
        ),
        (
            with(json!({ "action": { "firmware": { "component": "", "firmware": "bios-2.0.0", "version": "2" } } })),
            "action.firmware.component",
        ),
        (
            with(
                json!({ "action": { "firmware": { "component": "BIOS", "image_url": "ftp://x/y", "version": "2" } } }),
            ),
            "action.firmware.image_url",
        ),
        (with(json!({ "action": { "reboot": {} } })), "action"),
        (with(json!({ "schedule": { "at": "soon" } })), "schedule.at"),
        (
            with(json!({ "schedule": { "window": { "cron": "0 2 * * FUNDAY", "minutes": 60 } } })),
            "schedule.window.cron",
        ),
        (
            with(
                json!({ "schedule": { "window": { "cron": "0 2 * * SAT", "timezone": "Mars/Olympus", "minutes": 60 } } }),
            ),
            "schedule.window.timezone",
        ),
        (with(json!({ "schedule": { "window": { "cron": "0 2 * * SAT", "minutes": 0 } } })), "schedule.window.minutes"),
        (with(json!({ "rollout": { "batch_size": 0 } })), "rollout.batch_size"),
        (with(json!({ "rollout": { "max_failure_ratio": 1.5 } })), "rollout.max_failure_ratio"),
        (with(json!({ "rollout": { "order": "random" } })), "rollout.order"),
        (with(json!({ "gates": { "ups_min_charge_percent": 120 } })), "gates.ups_min_charge_percent"),
        (with(json!({ "gates": { "drain": { "run": " ", "undo": "kubectl uncordon n1" } } })), "gates.drain.run"),
        (with(json!({ "gates": { "drain": { "run": "kubectl drain n1" } } })), "gates.drain.undo"),
        (
            with(json!({ "gates": { "drain": { "run": "kubectl drain n1", "undo": "x", "timeout_seconds": 0 } } })),
            "gates.drain.timeout_seconds",
        ),
        (with(json!({ "colour": "blue" })), "colour"),
    ] {
        let (status, err) = post(&lab.t.operator, "/api/v1/campaigns", &lab.t.admin, &body).await;
        assert_eq!((status, err["field"].as_str()), (StatusCode::BAD_REQUEST, Some(field)), "{body} -> {err}");
    }
    let os = with(json!({ "action": { "os_refresh": { "image": "debian-13" } } }));
    let (status, err) = post(&lab.t.operator, "/api/v1/campaigns", &lab.t.admin, &os).await;
    assert_eq!((status, err["field"].as_str()), (StatusCode::BAD_REQUEST, Some("action.os_refresh.image")), "{err}");
    assert!(err["detail"].as_str().unwrap().contains("no image"), "{err}");
    // A machine is in one unfinished campaign at a time.
    lab.create(with(json!({ "schedule": { "at": "2099-01-01T00:00:00Z" } }))).await;
    let (status, err) = post(&lab.t.operator, "/api/v1/campaigns", &lab.t.admin, &with(json!({}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    // Firmware names, and the token.
    let (status, err) = put_bytes(&lab.t.operator, "/api/v1/firmware/..%2Fx", &lab.t.admin, &[], b"x".to_vec()).await;
    assert_eq!((status, err["field"].as_str()), (StatusCode::BAD_REQUEST, Some("name")), "{err}");
    assert_eq!(get(&lab.t.operator, "/api/v1/campaigns", None).await.0, StatusCode::UNAUTHORIZED);
    let (_, list) = get(&lab.t.operator, "/api/v1/campaigns", Some(&lab.t.admin)).await;
    assert_eq!(list["campaigns"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(get(&lab.t.boot, "/boot/firmware/missing", None).await.0, StatusCode::NOT_FOUND);
}

/// A campaign scheduled an hour ahead waits for its time, then runs; the
/// hour passes on the appliance's clock, not in the test.
#[tokio::test]
async fn a_campaign_scheduled_for_later_starts_when_its_time_comes() {
    let mut lab = lab(1).await;
    lab.upload("bios-2.0.0", BIOS_2).await;
    let clock = lab.t.state.store.clock().clone();
    let at = store::rfc3339(clock.now_ms() + 3_600_000);
    let id = lab.create(bios_campaign(&lab.machines, "bios-2.0.0", json!({ "schedule": { "at": at } }))).await;
    lab.start_runner();
    // Several runner ticks (100 ms each) go by: nothing starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = lab.campaign(&id).await;
    assert_eq!((c["state"].as_str(), node_states(&c)), (Some("scheduled"), vec!["pending".to_string()]), "{c}");
    assert_eq!(c["schedule_next_open"].as_str(), Some(at.as_str()));
    clock.advance(Duration::from_secs(3601));
    let c = lab.wait(&id, 1, "completed", state_is("completed")).await;
    assert_eq!(node_states(&c), ["done"]);
    assert!(lab.events("campaign.started").await.len() == 1);
}
