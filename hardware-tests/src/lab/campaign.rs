//! Refresh campaigns across the lab rack, as an operator runs them through
//! the API, with what was seen kept for the report.
//!
//! - `lab up --firmware-campaign VERSION`: once every node is ready, a BIOS
//!   firmware campaign through the simulated BMCs, one node at a time.
//! - `lab up --deploy lab-debian --os-refresh`: once the three nodes are one
//!   Swarm, a campaign moves them to `lab-debian` release 2, one node at a
//!   time, drained first; then a campaign to an image that cannot boot
//!   rolls its first node back and pauses.
//!
//! In the OS refresh the lab UPS goes to battery once the first node is
//! done: the campaign must hold (no new node starts; the node in progress
//! finishes) and resume by itself when mains returns. A lab BIOS update
//! takes about a second, less than Slipway's UPS poll, so the firmware
//! campaign is started with the UPS already on battery (as Slipway sees
//! it): it must hold before any node starts and go on once mains returns.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::{json, Value};

use super::{api_post, oob, progress_at, Watch, API, LAB_CLUSTER};

/// What a campaign did, for the report.
#[derive(Debug, Default, Serialize)]
pub struct CampaignFacts {
    pub id: String,
    pub state: String,
    /// Why it ended held, paused or failed, as the API says.
    pub reason: Value,
    /// Most nodes in progress at once, as polled.
    pub max_in_progress: usize,
    /// Most Swarm nodes drained at once, as the cluster's manager reported
    /// them (OS refresh only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_drained: Option<usize>,
    /// Seconds the campaign was held while the UPS was on battery.
    pub held_seconds: Option<f64>,
    /// Nodes that finished while the UPS was on battery.
    pub finished_while_on_battery: usize,
    /// Nodes that started while the campaign was held (must be 0). A node
    /// may start in the seconds before Slipway's UPS poll sees the battery;
    /// that is not a hold that failed.
    pub started_while_held: usize,
    /// Each node's progress as the API shows it.
    pub nodes: Value,
    pub seconds: f64,
}

/// The lab's firmware format (see `simulators::bmc::update`).
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

/// A BIOS firmware campaign to `version` across the lab rack.
pub fn firmware(
    watch: &mut Watch,
    version: &str,
    bin: &std::path::Path,
    timeout: Duration,
) -> anyhow::Result<CampaignFacts> {
    let name = format!("lab-bios-{version}");
    watch
        .client
        .put(&format!("{API}/api/v1/firmware/{name}"))
        .set("Authorization", &format!("Bearer {}", watch.token))
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
    let what = format!("firmware campaign {name} (BIOS {version})");
    switch_ups(bin, "battery")?;
    progress_at(watch.started, "lab UPS on battery before the campaign: it must hold from the start");
    wait_ups_seen(watch, "on_battery", timeout)?;
    run(watch, &what, &body, Cut::Before(bin), false, timeout)
}

/// An OS-refresh campaign to `image` across the lab rack, one node at a
/// time; `back_within` is its health check's bound. With `bin`, the UPS
/// goes to battery after the first node.
pub fn os_refresh(
    watch: &mut Watch,
    image: &str,
    back_within: Duration,
    bin: Option<&std::path::Path>,
    timeout: Duration,
) -> anyhow::Result<CampaignFacts> {
    let body = json!({
        "name": format!("refresh to {image}"),
        "targets": { "racks": [oob::LAB_RACK] },
        "action": { "os_refresh": { "image": image } },
        "schedule": "now",
        "rollout": { "batch_size": 1, "max_failures": 1 },
        "gates": { "ups_min_charge_percent": 50, "on_mains": true, "back_within_seconds": back_within.as_secs() },
    });
    let cut = bin.map_or(Cut::Never, Cut::AfterFirstNode);
    run(watch, &format!("OS refresh to {image}"), &body, cut, true, timeout)
}

/// When the lab UPS goes to battery during a campaign.
#[derive(Clone, Copy)]
enum Cut<'a> {
    Never,
    /// Already on battery when the campaign is created (`slipway` binary
    /// to switch it back).
    Before(&'a std::path::Path),
    /// Once the first node is done.
    AfterFirstNode(&'a std::path::Path),
}

/// Waits until Slipway's API shows the lab UPS in `status`.
fn wait_ups_seen(watch: &Watch, status: &str, timeout: Duration) -> anyhow::Result<()> {
    let began = Instant::now();
    loop {
        let ups = watch.api(&format!("/api/v1/ups/{}", oob::LAB_UPS))?;
        if ups["state"]["status"] == status {
            return Ok(());
        }
        if began.elapsed() > timeout {
            bail!("Slipway did not see the lab UPS {status} within {} s: {ups}", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Creates the campaign and follows it to its end (completed, failed,
/// paused or cancelled), with the mains cut once as `cut` says.
fn run(
    watch: &mut Watch,
    what: &str,
    body: &Value,
    cut: Cut,
    clustered: bool,
    timeout: Duration,
) -> anyhow::Result<CampaignFacts> {
    let created = api_post(watch.client, watch.token, "/api/v1/campaigns", body)?;
    let id = created["id"].as_str().context("campaign without an id")?.to_string();
    progress_at(watch.started, &format!("{what}: started, one node at a time"));

    let began = Instant::now();
    let mut facts = CampaignFacts { id: id.clone(), max_drained: clustered.then_some(0), ..Default::default() };
    let (mut on_battery_since, ups_bin) = match cut {
        Cut::Never => (None, None),
        Cut::Before(bin) => (Some(Instant::now()), Some(bin)),
        Cut::AfterFirstNode(bin) => (None, Some(bin)),
    };
    let mut held_at: Option<Instant> = None;
    let mut done_before_battery = 0;
    let mut started_at_hold = 0;
    let mut last_states = String::new();
    loop {
        watch.check()?;
        let c = watch.api(&format!("/api/v1/campaigns/{id}"))?;
        let nodes = c["nodes"].as_array().cloned().unwrap_or_default();
        let count = |s: &str| nodes.iter().filter(|n| n["state"] == s).count();
        let started = nodes.iter().filter(|n| n["state"] != "pending").count();
        facts.max_in_progress = facts.max_in_progress.max(count("applying") + count("verifying"));
        if let Some(max) = facts.max_drained.as_mut() {
            *max = (*max).max(drained(watch)?);
        }
        let states: Vec<&str> = nodes.iter().map(|n| n["state"].as_str().unwrap_or("?")).collect();
        let states = states.join(" ");
        if states != last_states {
            progress_at(watch.started, &format!("{what}: nodes {states}"));
            last_states = states;
        }
        let state = c["state"].as_str().unwrap_or("?").to_string();
        match (on_battery_since, ups_bin) {
            // After the first node is done, cut the mains.
            (None, Some(bin)) if count("done") >= 1 && facts.held_seconds.is_none() => {
                switch_ups(bin, "battery")?;
                progress_at(watch.started, "lab UPS on battery: the campaign must hold");
                on_battery_since = Some(Instant::now());
                done_before_battery = count("done");
            }
            (Some(since), Some(bin)) => {
                if state == "held" && held_at.is_none() {
                    held_at = Some(Instant::now());
                    started_at_hold = started;
                    progress_at(watch.started, &format!("campaign held: {}", c["reason"]));
                }
                // Hold a while (a node mid-way finishes), then mains back.
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
            _ => {}
        }
        if matches!(state.as_str(), "completed" | "failed" | "paused" | "cancelled") {
            facts.state = state;
            facts.reason = c["reason"].clone();
            facts.nodes = c["nodes"].clone();
            facts.seconds = began.elapsed().as_secs_f64();
            progress_at(watch.started, &format!("{what}: {} {}", facts.state, c["summary"]));
            return Ok(facts);
        }
        if began.elapsed() > timeout {
            bail!("{what} did not finish within {} s: {c}", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Swarm nodes the lab cluster's manager last reported drained.
fn drained(watch: &Watch) -> anyhow::Result<usize> {
    let cluster = watch.api(&format!("/api/v1/clusters/{LAB_CLUSTER}"))?;
    let members = cluster["members"].as_array().cloned().unwrap_or_default();
    Ok(members.iter().filter(|m| m["availability"].as_str().is_some_and(|a| a.eq_ignore_ascii_case("drain"))).count())
}
