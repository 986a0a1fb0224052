//! OS-refresh campaigns end to end, in process: four machines behind
//! simulated BMCs, deployed into one Slipway-formed Swarm (`rack7`) whose
//! manager is machine 0, and three workers refreshed by a campaign. The
//! test plays every agent the way the real ones talk: the ramdisk agent
//! (a new boot token after each BMC boot, instructions, deploy reports)
//! and the node agents (status with membership; the manager keeps the
//! member list and carries out drain, undrain and remove instructions).
//! A second fleet joins a cluster Slipway did not form (a `command` join,
//! as kubeadm or k3s would be) and is drained by the campaign's commands,
//! which the node agents run and report.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{json, Value};
use simulators::bmc::MemoryBackend;

use super::tests::sim_bmc;
use crate::campaign::runner::{self, RunnerSettings};
use crate::routes::test_support::{
    app, available_image, boot_script, delete_with_body, deployed_machine, get, post, put_bytes, ready_machine,
    token_from, TestApp,
};

/// One machine as its agents see it.
struct Sim {
    id: String,
    mac: String,
    hostname: String,
    backend: Arc<MemoryBackend>,
    boots: usize,
    /// The ramdisk agent's boot token, while it runs.
    ramdisk: Option<String>,
    /// The node agent's credential of the OS on the disk, and the image
    /// that OS was deployed from (its node agent reports it).
    node_token: Option<String>,
    image: Option<String>,
    /// Its Swarm node id (its hostname in a `command` cluster), once its
    /// OS joined.
    swarm_id: Option<String>,
    joins: u32,
    /// The last drain command's result, as its node agent reports it.
    hook: Option<Value>,
}

struct Fleet {
    t: TestApp,
    sims: Vec<Sim>,
    /// `swarm` (Slipway forms it) or `command` (a foreign cluster).
    kind: &'static str,
    /// Drain commands as the node agents ran them: (hostname, the image
    /// of the OS that ran it, the command).
    hooks: Vec<(String, String, String)>,
    /// Hostnames a drain command took out of the foreign cluster.
    cordoned: BTreeSet<String>,
    /// Node agents ignore drain commands (as if they hung) while set.
    hold_hooks: bool,
    /// The OS of this image never starts its node agent.
    silent_image: Option<&'static str>,
    /// The Swarm as its manager (machine 0) sees it.
    members: Vec<Value>,
    /// The most machines ever unavailable at once (refreshing, or drained
    /// or down in the Swarm), once a campaign runs.
    max_unavailable: usize,
    watching: bool,
    _runner: Option<Runner>,
}

struct Runner(tokio::task::JoinHandle<()>);

impl Drop for Runner {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn status(hostname: &str, image: Option<&str>, membership: Option<Value>, hook: Option<&Value>) -> Value {
    let mut s = json!({ "agent_version": "0.1.0", "hostname": hostname, "os": "Debian GNU/Linux 12 (bookworm)",
                        "kernel": "6.1.0-28-amd64", "image": image });
    if let Some(m) = membership {
        s["cluster"] = m;
    }
    if let Some(h) = hook {
        s["hook"] = h.clone();
    }
    s
}

impl Fleet {
    async fn state(&self, id: &str) -> String {
        let (_, m) = get(&self.t.operator, &format!("/api/v1/machines/{id}"), Some(&self.t.admin)).await;
        m["state"].as_str().unwrap_or_default().to_string()
    }

    /// One round of every agent.
    async fn tick(&mut self) {
        for i in 0..self.sims.len() {
            let state = self.state(&self.sims[i].id.clone()).await;
            let boots = self.sims[i].backend.boots().len();
            let sim = &mut self.sims[i];
            if boots > sim.boots {
                sim.boots = boots;
                if matches!(state.as_str(), "deploying" | "refreshing") {
                    // Rebooted into the installer: the OS on the disk is down.
                    let (_, script) = boot_script(&self.t, &sim.mac).await;
                    sim.ramdisk = Some(token_from(&script));
                    sim.node_token = None;
                    sim.hook = None;
                    if let Some(id) = sim.swarm_id.take() {
                        for m in self.members.iter_mut().filter(|m| m["id"] == id.as_str()) {
                            m["status"] = json!("Down");
                        }
                    }
                }
            }
            match state.as_str() {
                "deploying" | "refreshing" => self.installer(i).await,
                "deployed" | "joined" => self.node_agent(i).await,
                _ => {}
            }
        }
        if self.watching {
            let mut unavailable = BTreeSet::new();
            for sim in &self.sims {
                if self.state(&sim.id).await == "refreshing" {
                    unavailable.insert(sim.hostname.clone());
                }
            }
            for m in &self.members {
                if m["availability"] != "Active" || m["status"] != "Ready" {
                    unavailable.insert(m["hostname"].as_str().unwrap().to_string());
                }
            }
            unavailable.extend(self.cordoned.iter().cloned());
            self.max_unavailable = self.max_unavailable.max(unavailable.len());
        }
    }

    async fn installer(&mut self, i: usize) {
        let Some(token) = self.sims[i].ramdisk.clone() else { return };
        let (_, instruction) = get(&self.t.boot, wire::INSTRUCTIONS_PATH, Some(&token)).await;
        if instruction["action"] != "deploy" {
            return;
        }
        self.sims[i].node_token = instruction["node_token"].as_str().map(str::to_string);
        self.sims[i].image = instruction["image"].as_str().map(str::to_string);
        let report = if instruction["image"] == "broken" {
            json!({ "phase": "failed", "bytes_written": 1u64 << 20, "disk": "/dev/vda",
                    "error": "verify: sha256 of /dev/vda is 00ff..., the image's is 9a3c..." })
        } else {
            json!({ "phase": "written", "bytes_written": 1u64 << 20, "disk": "/dev/vda" })
        };
        let (status, reply) = post(&self.t.boot, wire::DEPLOY_PATH, &token, &report).await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        if reply["action"] == "reboot" {
            self.sims[i].ramdisk = None;
        }
    }

    async fn node_agent(&mut self, i: usize) {
        let Some(token) = self.sims[i].node_token.clone() else { return };
        if self.silent_image.is_some() && self.sims[i].image.as_deref() == self.silent_image {
            return;
        }
        let (hostname, swarm_id) = (self.sims[i].hostname.clone(), self.sims[i].swarm_id.clone());
        let image = self.sims[i].image.clone();
        let membership = swarm_id.map(|id| {
            let manager = i == 0 && self.kind == "swarm";
            let members = if manager { json!(self.members) } else { json!([]) };
            json!({ "kind": self.kind, "node_id": id, "manager": manager, "members": members })
        });
        let report = status(&hostname, image.as_deref(), membership, self.sims[i].hook.as_ref());
        let (code, reply) = post(&self.t.boot, wire::NODE_STATUS_PATH, &token, &report).await;
        if code == StatusCode::CONFLICT {
            // The runner moved the machine on (to refreshing) between this
            // round's state read and the report; the real agent backs off
            // and reports again, as this one does next round.
            return;
        }
        assert_eq!(code, StatusCode::OK, "{reply}");
        let member = |id: &str, manager| json!({ "id": id, "hostname": hostname, "status": "Ready", "availability": "Active", "manager": manager });
        match reply["action"].as_str().unwrap_or_default() {
            "swarm_init" => {
                let created =
                    json!({ "endpoint": "10.77.0.100:2377", "worker_token": "SWMTKN-w", "manager_token": "SWMTKN-m" });
                assert_eq!(post(&self.t.boot, wire::NODE_SWARM_PATH, &token, &created).await.0, StatusCode::OK);
                self.members.push(member("mgr", true));
                self.sims[i].swarm_id = Some("mgr".into());
            }
            "swarm_join" => {
                let sim = &mut self.sims[i];
                sim.joins += 1;
                let id = format!("{}-{}", sim.hostname, sim.joins);
                self.members.push(member(&id, false));
                sim.swarm_id = Some(id);
            }
            "node_availability" => {
                let availability = match reply["availability"].as_str() {
                    Some("drain") => "Drain",
                    _ => "Active",
                };
                for m in self.members.iter_mut().filter(|m| m["id"] == reply["node"]) {
                    m["availability"] = json!(availability);
                }
            }
            "node_remove" => self.members.retain(|m| m["id"] != reply["node"]),
            // The join command ran; the check passes from the next report.
            "command" => self.sims[i].swarm_id = Some(hostname),
            "run_hook" if !self.hold_hooks => {
                let run = reply["run"].as_str().unwrap().to_string();
                let failing = run.contains("exit 1");
                match run.split_whitespace().next() {
                    Some("drain-node") if !failing => self.cordoned.insert(hostname.clone()),
                    Some("undrain-node") => self.cordoned.remove(&hostname),
                    _ => false,
                };
                self.hooks.push((hostname, image.unwrap_or_default(), run));
                let output = if failing { "error: cannot evict pod db-0: PodDisruptionBudget" } else { "drained" };
                self.sims[i].hook =
                    Some(json!({ "id": reply["id"], "exit_code": i32::from(failing), "output": output }));
            }
            _ => {}
        }
    }

    /// Plays the agents until `done` holds for the campaign (or every
    /// machine, with `None`).
    async fn drive(&mut self, campaign: Option<&str>, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            self.tick().await;
            let seen = match campaign {
                Some(id) => get(&self.t.operator, &format!("/api/v1/campaigns/{id}"), Some(&self.t.admin)).await.1,
                None => get(&self.t.operator, "/api/v1/machines", Some(&self.t.admin)).await.1,
            };
            if done(&seen) {
                return seen;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "waiting for {what}: {seen:#} {:#?}", self.members);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Plays the agents until machine `i`'s BMC has booted it `boots`
    /// times (and the round that saw the last boot is over).
    async fn tick_until_booted(&mut self, i: usize, boots: usize, what: &str) {
        let started = Instant::now();
        while self.sims[i].boots < boots {
            assert!(started.elapsed() < Duration::from_secs(60), "{what} never started");
            self.tick().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn start_runner(&mut self) {
        let state = self.t.state.clone();
        self.start_runner_on(state);
    }

    /// The runner on `state` (a firmware campaign's BMCs fetch from a
    /// loopback boot face).
    fn start_runner_on(&mut self, state: crate::AppState) {
        let settings = RunnerSettings {
            tick: Duration::from_millis(100),
            task_poll: Duration::from_millis(50),
            drain_timeout: Duration::from_secs(10),
            ..Default::default()
        };
        self.watching = true;
        self._runner = Some(Runner(tokio::spawn(runner::run(state, settings))));
    }

    /// A campaign refreshing the three workers to `image`.
    async fn create(&self, image: &str) -> String {
        let targets: Vec<&str> = self.sims[1..].iter().map(|s| s.id.as_str()).collect();
        self.create_for(&targets, image).await
    }

    async fn create_for(&self, targets: &[&str], image: &str) -> String {
        self.create_with(targets, image, json!({})).await
    }

    async fn create_with(&self, targets: &[&str], image: &str, gates: Value) -> String {
        let body = json!({ "name": format!("refresh to {image}"), "targets": { "machines": targets },
                           "action": { "os_refresh": { "image": image } },
                           "rollout": { "batch_size": 1, "max_failures": 1 }, "gates": gates });
        let (status, c) = post(&self.t.operator, "/api/v1/campaigns", &self.t.admin, &body).await;
        assert_eq!(status, StatusCode::CREATED, "{c}");
        c["id"].as_str().unwrap().to_string()
    }

    async fn events(&self, id: &str) -> Vec<Value> {
        let (_, events) =
            get(&self.t.operator, &format!("/api/v1/machines/{id}/events?limit=1000"), Some(&self.t.admin)).await;
        events["events"].as_array().unwrap().clone()
    }
}

/// Four machines with BMCs, deployed with img-1 into Swarm rack7 and
/// joined; machine 0 (the first to report) created it and manages it.
async fn joined_fleet() -> Fleet {
    joined_fleet_in("swarm", json!({ "kind": "swarm", "cluster": "rack7" })).await
}

/// Four machines as above, joined to a cluster Slipway did not form.
async fn foreign_fleet() -> Fleet {
    let cluster = json!({ "kind": "command", "run": "kubeadm join 10.77.0.5:6443", "check": "kubectl get node" });
    joined_fleet_in("command", cluster).await
}

async fn joined_fleet_in(kind: &'static str, cluster: Value) -> Fleet {
    let t = app().await;
    for image in ["img-1", "img-2", "broken"] {
        available_image(&t, image).await;
    }
    let mut sims = vec![];
    for i in 0..4u8 {
        let (url, backend) = sim_bmc(i).await;
        let body =
            json!({ "address": url, "protocol": "redfish", "username": "admin", "password": "pw", "rack": "r1" });
        let (status, bmc) = post(&t.operator, "/api/v1/bmcs", &t.admin, &body).await;
        assert_eq!(status, StatusCode::CREATED, "{bmc}");
        let mac = format!("52:54:00:cc:00:{i:02x}");
        let (id, token) = ready_machine(&t, &mac).await;
        let hostname = format!("node{i}");
        let req = json!({ "image": "img-1", "hostname": hostname, "ssh_authorized_keys": ["ssh-ed25519 AAAA ops"],
                          "cluster": cluster });
        let (status, d) = post(&t.operator, &format!("/api/v1/machines/{id}/deploy"), &t.admin, &req).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{d}");
        let boots = backend.boots().len();
        sims.push(Sim {
            id,
            mac,
            hostname,
            backend,
            boots,
            ramdisk: Some(token),
            node_token: None,
            image: None,
            swarm_id: None,
            joins: 0,
            hook: None,
        });
    }
    let mut fleet = Fleet {
        t,
        sims,
        kind,
        hooks: vec![],
        cordoned: BTreeSet::new(),
        hold_hooks: false,
        silent_image: None,
        members: vec![],
        max_unavailable: 0,
        watching: false,
        _runner: None,
    };
    fleet
        .drive(None, "every machine joined", |m| {
            m["machines"].as_array().unwrap().iter().all(|m| m["state"] == "joined")
        })
        .await;
    assert_eq!(fleet.members.len(), if kind == "swarm" { 4 } else { 0 });
    fleet
}

fn node_states(c: &Value) -> Vec<String> {
    c["nodes"].as_array().unwrap().iter().map(|n| n["state"].as_str().unwrap().to_string()).collect()
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e["kind"].as_str().unwrap() {
            "state.changed" => format!("state.changed:{}", e["detail"]["to"].as_str().unwrap()),
            k => k.to_string(),
        })
        .collect()
}

/// `want` occurs in `have` in this order (others may come between).
fn in_order(have: &[String], want: &[&str]) -> bool {
    let mut it = have.iter();
    want.iter().all(|w| it.any(|h| h == w))
}

#[tokio::test]
async fn an_os_refresh_moves_every_node_to_the_new_image_one_drained_node_at_a_time() {
    let mut fleet = joined_fleet().await;
    let id = fleet.create("img-2").await;
    fleet.start_runner();
    let c = fleet.drive(Some(&id), "completed", |c| c["state"] == "completed").await;
    assert_eq!(node_states(&c), ["done", "done", "done"], "{c:#}");
    assert_eq!(fleet.max_unavailable, 1, "never more than one node drained, down or refreshing");
    for n in c["nodes"].as_array().unwrap() {
        assert_eq!((n["old_version"].as_str(), n["new_version"].as_str()), (Some("img-1"), Some("img-2")), "{n}");
    }
    for sim in &fleet.sims[1..] {
        assert_eq!(fleet.state(&sim.id).await, "joined");
        let (_, d) =
            get(&fleet.t.operator, &format!("/api/v1/machines/{}/deployment", sim.id), Some(&fleet.t.admin)).await;
        assert_eq!((d["image"].as_str(), d["spec"]["hostname"].as_str()), (Some("img-2"), Some(sim.hostname.as_str())));
        assert_eq!(d["spec"]["ssh_authorized_keys"][0], "ssh-ed25519 AAAA ops", "the deploy settings are kept");
        assert_eq!(d["spec"]["cluster"]["cluster"], "rack7");
        let story = kinds(&fleet.events(&sim.id).await);
        let want = [
            "campaign.node_started",
            "campaign.node_drained",
            "state.changed:refreshing",
            "deploy.requested",
            "power.action",
            "state.changed:deployed",
            "state.changed:joined",
            "campaign.node_done",
        ];
        assert!(in_order(&story, &want), "{story:?}");
    }
    // The Swarm: the manager and three reinstalled workers, all active; no
    // stale entries of the old installs.
    let ids: BTreeSet<&str> = fleet.members.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, BTreeSet::from(["mgr", "node1-2", "node2-2", "node3-2"]), "{:#?}", fleet.members);
    assert!(fleet.members.iter().all(|m| m["availability"] == "Active"));
}

#[tokio::test]
async fn a_broken_image_rolls_the_first_node_back_where_it_rejoins_and_the_campaign_pauses() {
    let mut fleet = joined_fleet().await;
    let id = fleet.create("broken").await;
    fleet.start_runner();
    let c = fleet.drive(Some(&id), "paused", |c| c["state"] == "paused").await;
    assert_eq!(node_states(&c), ["rolled_back", "pending", "pending"], "{c:#}");
    let reason = c["nodes"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("sha256") && reason.contains("rolled back to img-1"), "{reason}");
    assert!(c["reason"].as_str().unwrap().contains("max_failures 1"), "{c}");
    assert_eq!(c["summary"]["rolled_back"], 1);
    assert_eq!(fleet.max_unavailable, 1);
    // The paused campaign still needs its image (it may be resumed).
    let (status, err) = delete_with_body(&fleet.t.operator, "/api/v1/images/broken", &fleet.t.admin).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert!(err.contains("unfinished campaign"), "{err}");
    // Back on the old image, joined again (as a new Swarm node), undrained.
    let first = &fleet.sims[1];
    assert_eq!(fleet.state(&first.id).await, "joined");
    let (_, d) =
        get(&fleet.t.operator, &format!("/api/v1/machines/{}/deployment", first.id), Some(&fleet.t.admin)).await;
    assert_eq!(d["image"], "img-1");
    let ids: BTreeSet<&str> = fleet.members.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, BTreeSet::from(["mgr", "node1-2", "node2-1", "node3-1"]), "{:#?}", fleet.members);
    assert!(fleet.members.iter().all(|m| m["availability"] == "Active"));
    let story = kinds(&fleet.events(&first.id).await);
    let want = [
        "campaign.node_drained",
        "state.changed:refreshing",
        "deploy.requested",
        "deploy.phase",
        "campaign.node_rolling_back",
        "deploy.requested",
        "state.changed:deployed",
        "state.changed:joined",
        "campaign.node_rolled_back",
    ];
    assert!(in_order(&story, &want), "{story:?}");
    assert!(!story.contains(&"state.changed:failed".to_string()), "a rolled-back machine never failed: {story:?}");
    for sim in &fleet.sims[2..] {
        assert_eq!(fleet.state(&sim.id).await, "joined", "the rest were never touched");
    }
}

/// A BIOS update resets the host: each joined worker is drained first and
/// made active again once its node agent reports after the reset.
#[tokio::test]
async fn a_firmware_campaign_drains_each_joined_node_around_its_reset() {
    use super::tests::{boot_face, BIOS_2};
    let mut fleet = joined_fleet().await;
    let (status, _) =
        put_bytes(&fleet.t.operator, "/api/v1/firmware/bios-2.0.0", &fleet.t.admin, &[], BIOS_2.to_vec()).await;
    assert_eq!(status, StatusCode::CREATED);
    let targets: Vec<&str> = fleet.sims[1..].iter().map(|s| s.id.as_str()).collect();
    let body = json!({ "name": "bios", "targets": { "machines": targets },
                       "action": { "firmware": { "component": "BIOS", "firmware": "bios-2.0.0", "version": "2.0.0" } } });
    let (status, c) = post(&fleet.t.operator, "/api/v1/campaigns", &fleet.t.admin, &body).await;
    assert_eq!(status, StatusCode::CREATED, "{c}");
    let id = c["id"].as_str().unwrap().to_string();
    let boot = boot_face(fleet.t.state.clone()).await;
    fleet.start_runner_on(boot.serving(&fleet.t.state));
    let c = fleet.drive(Some(&id), "completed", |c| c["state"] == "completed").await;
    assert_eq!(node_states(&c), ["done", "done", "done"], "{c:#}");
    assert_eq!(fleet.max_unavailable, 1, "one node drained at a time");
    assert!(fleet.members.iter().all(|m| m["availability"] == "Active"), "{:#?}", fleet.members);
    for sim in &fleet.sims[1..] {
        let story = kinds(&fleet.events(&sim.id).await);
        let want = [
            "campaign.node_started",
            "campaign.node_drained",
            "power.action",
            "campaign.node_undrained",
            "campaign.node_done",
        ];
        assert!(in_order(&story, &want), "{story:?}");
        assert_eq!(fleet.state(&sim.id).await, "joined");
    }
}

/// Machine 0 is the Swarm's only manager: reinstalling it would end the
/// Swarm, so it is refused before anything is drained.
#[tokio::test]
async fn the_only_manager_is_not_refreshed() {
    let mut fleet = joined_fleet().await;
    let manager = fleet.sims[0].id.clone();
    let id = fleet.create_for(&[&manager], "img-2").await;
    fleet.start_runner();
    let c = fleet.drive(Some(&id), "failed", |c| c["state"] == "failed").await;
    let reason = c["nodes"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("manager") && reason.contains("0 of 1 managers"), "{reason}");
    assert_eq!(fleet.state(&manager).await, "joined");
    let story = kinds(&fleet.events(&manager).await);
    assert!(!story.contains(&"campaign.node_drained".to_string()), "{story:?}");
    assert!(!story.contains(&"state.changed:refreshing".to_string()), "{story:?}");
    assert!(fleet.members.iter().all(|m| m["availability"] == "Active"), "nothing drained");
}

#[tokio::test]
async fn a_machine_without_a_bmc_is_not_refreshed() {
    let t = app().await;
    let (id, _) = deployed_machine(&t, "52:54:00:00:00:51", "node1", None).await;
    available_image(&t, "img-2").await;
    let body =
        json!({ "name": "r", "targets": { "machines": [id] }, "action": { "os_refresh": { "image": "img-2" } } });
    let (status, c) = post(&t.operator, "/api/v1/campaigns", &t.admin, &body).await;
    assert_eq!(status, StatusCode::CREATED, "{c}");
    let cid = c["id"].as_str().unwrap().to_string();
    let settings = RunnerSettings { tick: Duration::from_millis(50), ..Default::default() };
    let _runner = Runner(tokio::spawn(runner::run(t.state.clone(), settings)));
    let started = Instant::now();
    let c = loop {
        let (_, c) = get(&t.operator, &format!("/api/v1/campaigns/{cid}"), Some(&t.admin)).await;
        if c["state"] == "failed" {
            break c;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{c:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(c["nodes"][0]["reason"].as_str().unwrap().contains("needs a BMC"), "{c}");
    let (_, m) = get(&t.operator, &format!("/api/v1/machines/{id}"), Some(&t.admin)).await;
    assert_eq!(m["state"], "deployed", "nothing was touched");
}

const DRAIN: &str = "drain-node --ignore-daemonsets";
const UNDRAIN: &str = "undrain-node";

fn drain_gates(run: &str) -> Value {
    json!({ "drain": { "run": run, "undo": UNDRAIN, "timeout_seconds": 30 } })
}

/// A cluster Slipway did not form (kubeadm, k3s, a join command): each
/// node's own agent runs the campaign's drain command on the old OS and
/// the undrain command on the new one, one node at a time.
#[tokio::test]
async fn a_foreign_cluster_is_drained_and_undrained_by_the_campaigns_commands() {
    let mut fleet = foreign_fleet().await;
    let targets: Vec<String> = fleet.sims[1..].iter().map(|s| s.id.clone()).collect();
    let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
    let id = fleet.create_with(&targets, "img-2", drain_gates(DRAIN)).await;
    fleet.start_runner();
    let c = fleet.drive(Some(&id), "completed", |c| c["state"] == "completed").await;
    assert_eq!(node_states(&c), ["done", "done", "done"], "{c:#}");
    assert_eq!(fleet.max_unavailable, 1, "never more than one node drained or refreshing");
    assert!(fleet.cordoned.is_empty(), "every node undrained: {:?}", fleet.cordoned);
    let mut want = vec![];
    for sim in &fleet.sims[1..] {
        want.push((sim.hostname.clone(), "img-1".to_string(), DRAIN.to_string()));
        want.push((sim.hostname.clone(), "img-2".to_string(), UNDRAIN.to_string()));
        assert_eq!(fleet.state(&sim.id).await, "joined");
        let story = kinds(&fleet.events(&sim.id).await);
        let want = [
            "campaign.node_drained",
            "state.changed:refreshing",
            "state.changed:joined",
            "campaign.node_undrained",
            "campaign.node_done",
        ];
        assert!(in_order(&story, &want), "{story:?}");
    }
    assert_eq!(fleet.hooks, want, "drained on the old OS, undrained on the new one, node by node");
}

/// A drain command that fails (a PodDisruptionBudget) stops that node
/// before anything is reinstalled, runs the undo, and pauses the campaign.
#[tokio::test]
async fn a_failing_drain_command_fails_its_node_untouched_and_pauses() {
    let mut fleet = foreign_fleet().await;
    let targets: Vec<String> = fleet.sims[1..].iter().map(|s| s.id.clone()).collect();
    let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
    let id = fleet.create_with(&targets, "img-2", drain_gates("drain-node; exit 1")).await;
    fleet.start_runner();
    let c = fleet.drive(Some(&id), "paused", |c| c["state"] == "paused").await;
    assert_eq!(node_states(&c), ["failed", "pending", "pending"], "{c:#}");
    let reason = c["nodes"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("not drained: the drain command exited 1: error: cannot evict"), "{reason}");
    let first = &fleet.sims[1];
    let run: Vec<&str> = fleet.hooks.iter().map(|h| h.2.as_str()).collect();
    assert_eq!(run, ["drain-node; exit 1", UNDRAIN], "the undo runs after a failed drain");
    assert_eq!(fleet.state(&first.id).await, "joined");
    let (_, d) =
        get(&fleet.t.operator, &format!("/api/v1/machines/{}/deployment", first.id), Some(&fleet.t.admin)).await;
    assert_eq!(d["image"], "img-1", "nothing was reinstalled");
    assert!(!kinds(&fleet.events(&first.id).await).contains(&"state.changed:refreshing".to_string()));
}

/// An appliance restart while a node waits for its drain continues the
/// node (waits for that same command, refreshes it) instead of failing it
/// or running the command twice.
#[tokio::test]
async fn a_restart_mid_drain_continues_the_node() {
    let mut fleet = foreign_fleet().await;
    let target = fleet.sims[1].id.clone();
    let id = fleet.create_with(&[&target], "img-2", drain_gates(DRAIN)).await;
    fleet.hold_hooks = true;
    fleet.start_runner();
    fleet
        .drive(Some(&id), "the node waiting for its drain", |c| {
            c["nodes"][0]["state"] == "applying" && c["nodes"][0]["old_version"] == "img-1"
        })
        .await;
    // The appliance stops (the runner ends); the agent,
    // handed the command before that, runs it and reports meanwhile.
    fleet._runner = None;
    fleet.hold_hooks = false;
    fleet.tick().await;
    fleet.tick().await;
    fleet.start_runner();
    let c = fleet.drive(Some(&id), "completed", |c| c["state"] == "completed").await;
    assert_eq!(node_states(&c), ["done"], "{c:#}");
    let run: Vec<(&str, &str)> = fleet.hooks.iter().map(|h| (h.1.as_str(), h.2.as_str())).collect();
    assert_eq!(run, [("img-1", DRAIN), ("img-2", UNDRAIN)]);
    let (_, d) = get(&fleet.t.operator, &format!("/api/v1/machines/{target}/deployment"), Some(&fleet.t.admin)).await;
    assert_eq!(d["image"], "img-2");
}

/// An appliance restart while a node is being reinstalled: the new runner
/// waits for it, and removes the old Swarm entry (its id is kept with the
/// node's phase).
#[tokio::test]
async fn a_restart_mid_reinstall_finishes_the_node_and_its_swarm_tidy() {
    let mut fleet = joined_fleet().await;
    let target = fleet.sims[1].id.clone();
    let id = fleet.create_for(&[&target], "img-2").await;
    let boots = fleet.sims[1].boots;
    fleet.start_runner();
    // Rebooted into the installer through its BMC, which writes the image;
    // the new OS has not reported yet.
    fleet.tick_until_booted(1, boots + 1, "the reinstall").await;
    fleet._runner = None;
    fleet.start_runner();
    let c = fleet.drive(Some(&id), "completed", |c| c["state"] == "completed").await;
    assert_eq!(node_states(&c), ["done"], "{c:#}");
    let events = fleet.events(&target).await;
    let done = events.iter().find(|e| e["kind"] == "campaign.node_done").unwrap();
    assert_eq!(done["detail"]["note"], "reinstalled, verified and back", "{done}");
    // The second runner went on from the stored phase: nothing was drained
    // or reinstalled again.
    let story = kinds(&events);
    let count = |kind: &str| story.iter().filter(|k| *k == kind).count();
    assert_eq!((count("campaign.node_drained"), count("deploy.requested")), (1, 2), "{story:?}");
    let ids: BTreeSet<&str> = fleet.members.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, BTreeSet::from(["mgr", "node1-2", "node2-1", "node3-1"]), "{:#?}", fleet.members);
}

/// An appliance restart while a node is being rolled back: the new runner
/// finishes the rollback instead of trying the broken image again.
#[tokio::test]
async fn a_restart_mid_rollback_finishes_the_rollback() {
    let mut fleet = joined_fleet().await;
    let target = fleet.sims[1].id.clone();
    let id = fleet.create_for(&[&target], "broken").await;
    let boots = fleet.sims[1].boots;
    fleet.start_runner();
    // Booted into the installer twice: the broken write, then the rollback's.
    fleet.tick_until_booted(1, boots + 2, "the rollback").await;
    fleet._runner = None;
    fleet.start_runner();
    // Its only node rolled back: the campaign ends failed.
    let c = fleet.drive(Some(&id), "failed", |c| c["state"] == "failed").await;
    assert_eq!(node_states(&c), ["rolled_back"], "{c:#}");
    let reason = c["nodes"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("sha256") && reason.ends_with("rolled back to img-1"), "{reason}");
    assert_eq!(fleet.state(&target).await, "joined");
    let events = fleet.events(&target).await;
    let installs: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "deploy.requested")
        .map(|e| e["detail"]["image"].as_str().unwrap())
        .collect();
    assert_eq!(installs, ["img-1", "broken", "img-1"], "the broken image was tried once");
}

/// The restart came between a refresh's new deployment and its BMC reboot,
/// on an appliance from before refresh phases were stored (the store has
/// the node's previous image and the new deployment, no saga): the node is
/// adopted and asks for the reboot again instead of waiting out the deploy
/// deadline (ten minutes here) for an installer that never runs. (With a
/// stored saga the same restart is `model::refresh`'s
/// `a_deployment_made_before_a_restart_is_not_made_twice`.)
#[tokio::test]
async fn a_restart_before_the_bmc_reboot_reboots_again() {
    use model::campaign::CampaignState;
    let mut fleet = joined_fleet().await;
    let target = fleet.sims[1].id.clone();
    let id = fleet.create_for(&[&target], "img-2").await;
    // What the store held when the first appliance stopped.
    let store = fleet.t.state.store.clone();
    let moved = store
        .transition_campaign(
            &id,
            &[CampaignState::Scheduled],
            CampaignState::Running,
            None,
            "campaign.started",
            json!({}),
            false,
        )
        .await
        .unwrap();
    assert!(moved.is_some());
    assert!(store.start_campaign_node(&id, &target).await.unwrap());
    store.note_campaign_node(&id, &target, Some("img-1"), false).await.unwrap();
    let image = store.image("img-2").await.unwrap().unwrap();
    let spec = store.deployment(&target).await.unwrap().unwrap().spec.with_image("img-2");
    let deadline = store.now_ms() + 600_000;
    store.start_refresh(&target, &image, &spec, deadline, "campaign: OS refresh to img-2").await.unwrap();
    let boots = fleet.sims[1].backend.boots().len();

    fleet.start_runner();
    let c = fleet.drive(Some(&id), "completed", |c| c["state"] == "completed").await;
    assert_eq!(node_states(&c), ["done"], "{c:#}");
    assert_eq!(fleet.sims[1].backend.boots().len(), boots + 1, "rebooted into the installer once, by the new runner");
    let (_, d) = get(&fleet.t.operator, &format!("/api/v1/machines/{target}/deployment"), Some(&fleet.t.admin)).await;
    assert_eq!(d["image"], "img-2");
}

/// The new OS is written but its node agent never reports: once the
/// campaign's health check (`back_within_seconds`) has passed on the
/// appliance's clock, the node is rolled back to its previous image.
#[tokio::test]
async fn a_node_not_back_within_its_health_check_is_rolled_back() {
    let mut fleet = joined_fleet().await;
    let target = fleet.sims[1].id.clone();
    let id = fleet.create_with(&[&target], "img-2", json!({ "back_within_seconds": 60 })).await;
    fleet.silent_image = Some("img-2");
    fleet.start_runner();
    fleet.drive(Some(&id), "the node written", |c| c["nodes"][0]["state"] == "verifying").await;
    // Several runner ticks with the node silent: it waits.
    for _ in 0..5 {
        fleet.tick().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fleet.state(&target).await, "deployed");
    fleet.t.state.store.clock().advance(Duration::from_secs(61));
    let c = fleet.drive(Some(&id), "failed", |c| c["state"] == "failed").await;
    assert_eq!(node_states(&c), ["rolled_back"], "{c:#}");
    let reason = c["nodes"][0]["reason"].as_str().unwrap();
    assert!(reason.starts_with("img-2 did not come back within 60 s: no node agent reported"), "{reason}");
    assert!(reason.ends_with("rolled back to img-1"), "{reason}");
    assert_eq!(fleet.state(&target).await, "joined");
    let ids: BTreeSet<&str> = fleet.members.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, BTreeSet::from(["mgr", "node1-2", "node2-1", "node3-1"]), "{:#?}", fleet.members);
}
