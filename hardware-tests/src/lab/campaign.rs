//! `lab up --firmware-campaign VERSION`: once every node is ready, a BIOS
//! firmware campaign rolls across the lab rack through the simulated BMCs,
//! one node at a time. Mid-campaign the lab UPS goes to battery, the
//! campaign must hold (no new node starts), and it resumes by itself when
//! mains returns. The report keeps what was seen.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::json;

use super::{api_post, oob, progress_at, Watch, API};

/// What the campaign did, for the report.
#[derive(Debug, Default, Serialize)]
pub struct CampaignFacts {
    pub id: String,
    pub state: String,
    /// Most nodes in progress at once, as polled.
    pub max_in_progress: usize,
    /// Seconds the campaign was held while the UPS was on battery.
    pub held_seconds: Option<f64>,
    /// Nodes that finished while the UPS was on battery.
    pub finished_while_on_battery: usize,
    /// Nodes that started while the campaign was held (must be 0). A node
    /// may start in the seconds before Slipway's UPS poll sees the battery;
    /// that is not a hold that failed.
    pub started_while_held: usize,
    pub seconds: f64,
}

/// The lab's firmware format (see `inventory::sim::update`).
fn firmware_file(version: &str) -> Vec<u8> {
    format!("slipway-lab-firmware BIOS {version}\nlab BIOS image\n").into_bytes()
}

fn switch_ups(bin: &std::path::Path, state: &str) -> anyhow::Result<()> {
    let out =
        std::process::Command::new(bin).args(["lab", "ups", state]).output().context("running slipway lab ups")?;
    if !out.status.success() {
        bail!("slipway lab ups {state}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

pub fn run(
    watch: &mut Watch,
    version: &str,
    bin: &std::path::Path,
    timeout: Duration,
) -> anyhow::Result<CampaignFacts> {
    let name = format!("lab-bios-{version}");
    let auth = format!("Bearer {}", watch.token);
    watch
        .client
        .put(&format!("{API}/api/v1/firmware/{name}"))
        .set("Authorization", &auth)
        .send_bytes(&firmware_file(version))
        .with_context(|| format!("uploading firmware {name}"))?;
    let body = json!({
        "name": name,
        "targets": { "racks": [oob::LAB_RACK] },
        "action": { "firmware": { "component": "BIOS", "firmware": name, "version": version } },
        "schedule": "now",
        "rollout": { "batch_size": 1, "max_failures": 1 },
        "gates": { "ups_min_charge_percent": 50, "on_mains": true },
    });
    let created = api_post(watch.client, watch.token, "/api/v1/campaigns", &body)?;
    let id = created["id"].as_str().context("campaign without an id")?.to_string();
    progress_at(watch.started, &format!("firmware campaign {name} started: BIOS {version}, one node at a time"));

    let began = Instant::now();
    let mut facts = CampaignFacts { id: id.clone(), ..Default::default() };
    let mut on_battery_since: Option<Instant> = None;
    let mut held_at: Option<Instant> = None;
    let mut done_before_battery = 0;
    let mut started_at_hold = 0;
    loop {
        watch.check()?;
        let c = watch.api(&format!("/api/v1/campaigns/{id}"))?;
        let nodes = c["nodes"].as_array().cloned().unwrap_or_default();
        let count = |s: &str| nodes.iter().filter(|n| n["state"] == s).count();
        let started = nodes.iter().filter(|n| n["state"] != "pending").count();
        facts.max_in_progress = facts.max_in_progress.max(count("applying") + count("verifying"));
        let state = c["state"].as_str().unwrap_or("?").to_string();
        match on_battery_since {
            // After the first node is done, cut the mains.
            None if count("done") >= 1 && facts.held_seconds.is_none() => {
                switch_ups(bin, "battery")?;
                progress_at(watch.started, "lab UPS on battery: the campaign must hold");
                on_battery_since = Some(Instant::now());
                done_before_battery = count("done");
            }
            Some(since) => {
                if state == "held" && held_at.is_none() {
                    held_at = Some(Instant::now());
                    started_at_hold = started;
                    progress_at(watch.started, &format!("campaign held: {}", c["reason"]));
                }
                // Hold a while (the node mid-flash finishes), then mains back.
                if held_at.is_some_and(|h| h.elapsed() > Duration::from_secs(6))
                    || since.elapsed() > Duration::from_secs(60)
                {
                    facts.started_while_held = started.saturating_sub(started_at_hold);
                    facts.finished_while_on_battery = count("done").saturating_sub(done_before_battery);
                    facts.held_seconds = held_at.map(|h| h.elapsed().as_secs_f64());
                    switch_ups(bin, "online")?;
                    progress_at(watch.started, "lab UPS back on mains");
                    on_battery_since = None;
                }
            }
            None => {}
        }
        if matches!(state.as_str(), "completed" | "failed" | "paused" | "cancelled") {
            facts.state = state;
            facts.seconds = began.elapsed().as_secs_f64();
            progress_at(watch.started, &format!("firmware campaign {}: {}", facts.state, c["summary"]));
            return Ok(facts);
        }
        if began.elapsed() > timeout {
            bail!("the firmware campaign did not finish within {} s: {c}", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
