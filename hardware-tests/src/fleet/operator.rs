//! The fleet operator's script, through the public API only: enrol every
//! BMC with commissioning on, wait for all `ready`, deploy all, roll an OS
//! refresh campaign across every rack (with the leader killed mid-way if
//! asked), release all; latency and event-stream lag sampled throughout.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::appliance::Appliances;
use super::driver::{self, Driver, Enrolment};

/// How long a killed leader stays down before its supervisor restarts it.
const DOWN: Duration = Duration::from_secs(3);

pub struct Script {
    pub token: String,
    pub apis: Vec<String>,
    pub machines: usize,
    pub racks: usize,
    pub batch_size: usize,
    /// Kill the leader a third of the way through the campaign.
    pub kill_leader: Option<Arc<Appliances>>,
    pub timeout: Duration,
}

impl Script {
    pub fn run(self, enrolments: Vec<Enrolment>) -> anyhow::Result<Value> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(self.operate(enrolments))
    }

    async fn operate(self, enrolments: Vec<Enrolment>) -> anyhow::Result<Value> {
        let (n, timeout) = (self.machines, self.timeout);
        let driver = Arc::new(Driver::new(self.apis.clone(), &self.token)?);
        driver.wait_healthy().await?;
        driver.upload_image("fleet", "1", super::fleet_image(1)).await?;
        driver.progress("image fleet available");
        let latencies = Arc::new(Mutex::new(driver::Latencies::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = tokio::spawn(driver.clone().sample_latency(latencies.clone(), stop.clone()));
        let lag = tokio::spawn(driver.clone().sample_sse_lag(latencies.clone(), stop.clone()));

        let began = Instant::now();
        driver.enrol(enrolments).await.context("enrolling the BMCs")?;
        let enrolled = began.elapsed().as_secs_f64();
        driver.progress(&format!("{n} BMCs enrolled in {enrolled:.1} s (commissioning: each powered on, PXE once)"));
        driver.until_all("ready", n, timeout).await?;
        let ready = began.elapsed().as_secs_f64();

        let began_deploy = Instant::now();
        let deploys = driver
            .ids_in("ready")
            .await?
            .into_iter()
            .map(|id| {
                let body = json!({ "image": "fleet", "hostname": format!("fleet-{}", &id[..8]) });
                (format!("/api/v1/machines/{id}/deploy"), body)
            })
            .collect();
        driver.post_all(deploys).await.context("asking for the deploys")?;
        driver.progress(&format!("{n} deploys asked for"));
        driver.until_all("deployed", n, timeout).await?;
        let deployed = began_deploy.elapsed().as_secs_f64();
        let ids = driver.ids_in("deployed").await?;
        driver.until_reported(ids.clone(), timeout).await?;
        let reporting = began_deploy.elapsed().as_secs_f64();

        let began_campaign = Instant::now();
        let killed = self.refresh(&driver).await?;
        let campaign = began_campaign.elapsed().as_secs_f64();

        let began_release = Instant::now();
        let releases =
            ids.into_iter().map(|id| (format!("/api/v1/machines/{id}/release"), json!({ "wipe": "quick" }))).collect();
        driver.post_all(releases).await.context("asking for the releases")?;
        driver.progress(&format!("{n} releases asked for"));
        driver.until_all("ready", n, timeout).await?;
        let released = began_release.elapsed().as_secs_f64();

        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = sampler.await;
        let _ = lag.await;
        let l = latencies.lock().expect("latency lock");
        let summary = |v: &[f64]| json!({ "n": v.len(), "p50_ms": driver::quantile(v, 0.5), "p99_ms": driver::quantile(v, 0.99) });
        Ok(json!({
            "seconds": {
                "enrol": enrolled, "enrolment_to_ready": ready, "deploy_to_deployed": deployed,
                "deploy_to_nodes_reporting": reporting, "campaign": campaign,
                "release_to_ready": released,
            },
            "leader_killed": killed,
            "api": {
                "list_machines": summary(&l.list), "show_machine": summary(&l.show),
                "events_page": summary(&l.events), "sse_lag": summary(&l.sse_lag), "errors": l.errors,
            },
        }))
    }

    /// An OS refresh of every rack to a second image (uploaded to the
    /// first appliance, so the others fetch it from there), followed to
    /// `completed`; every node must end `done`. Returns what the leader
    /// kill did, if there was one.
    async fn refresh(&self, driver: &Arc<Driver>) -> anyhow::Result<Value> {
        let n = self.machines;
        driver.upload_image("fleet-2", "2", super::fleet_image(2)).await?;
        let racks: Vec<String> = (0..self.racks).map(super::rack_name).collect();
        let body = json!({
            "name": "fleet refresh to fleet-2",
            "targets": { "racks": racks },
            "action": { "os_refresh": { "image": "fleet-2" } },
            "schedule": "now",
            "rollout": { "batch_size": self.batch_size, "max_failures": 1 },
            "gates": { "back_within_seconds": 600 },
        });
        let created = driver.post("/api/v1/campaigns", &body).await.context("creating the campaign")?;
        let id = created["id"].as_str().context("a campaign without an id")?.to_string();
        driver.progress(&format!("refresh campaign {id}: {n} nodes, {} at a time", self.batch_size));
        let began = Instant::now();
        let mut killed = Value::Null;
        let mut kill_at: Option<(Instant, usize)> = None;
        let mut last_said = Instant::now();
        loop {
            let c = driver.get(&format!("/api/v1/campaigns/{id}")).await?;
            let nodes = c["nodes"].as_array().cloned().unwrap_or_default();
            let count = |s: &str| nodes.iter().filter(|node| node["state"] == s).count();
            let done = count("done");
            if let Some((at, before)) = kill_at {
                if done > before && killed["next_node_done_after_s"].is_null() {
                    killed["next_node_done_after_s"] = json!(at.elapsed().as_secs_f64());
                }
            }
            match c["state"].as_str() {
                Some("completed") if done == n => {
                    driver.progress(&format!("campaign completed: {done}/{n} nodes done"));
                    return Ok(killed);
                }
                Some(state @ ("completed" | "failed" | "paused" | "cancelled")) => {
                    let worst = |node: &&Value| !matches!(node["state"].as_str(), Some("failed" | "rolled_back"));
                    let mut bad: Vec<&Value> = nodes.iter().filter(|node| node["state"] != "done").collect();
                    bad.sort_by_key(worst);
                    bad.truncate(3);
                    bail!("campaign {state} ({}) with {done}/{n} done; for example {bad:?}", c["reason"]);
                }
                _ => {}
            }
            if let (Some(appliances), None) = (&self.kill_leader, kill_at) {
                if done >= n / 3 {
                    let leader = driver.leader().await.context("no appliance says it leads")?;
                    driver.progress(&format!("SIGKILL to the leader, appliance {}, with {done}/{n} done", leader + 1));
                    kill_at = Some((Instant::now(), done));
                    let (appliances, api) = (appliances.clone(), driver.api(leader).to_string());
                    tokio::task::spawn_blocking(move || {
                        appliances.kill_and_restart(leader + 1, DOWN)?;
                        super::appliance::wait_healthy(&api, Duration::from_secs(60))
                    })
                    .await??;
                    let now = driver.leader().await.map(|i| i + 1);
                    driver.progress(&format!("appliance {} restarted; leader now appliance {now:?}", leader + 1));
                    killed = json!({ "appliance": leader + 1, "nodes_done": done, "down_s": DOWN.as_secs(),
                                     "leader_after": now, "next_node_done_after_s": null });
                }
            }
            if began.elapsed() > self.timeout {
                bail!("campaign not completed within {} s: {done}/{n} done", self.timeout.as_secs());
            }
            if last_said.elapsed() > Duration::from_secs(10) {
                let busy = count("applying") + count("verifying");
                driver.progress(&format!("campaign: {done}/{n} done, {busy} in progress"));
                last_said = Instant::now();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
