//! `lab up --attack`: while the nodes deploy, a hostile host in its own
//! namespace on the lab bridge runs `slipway lab attack` against the
//! appliance (see `crate::attack`). Afterwards the lab reads what the
//! appliance counted and how much its database grew, for the report.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::{net, progress, Watch, BRIDGE, SERVER_IP};

pub const ATTACK_NETNS: &str = "slipway-lab-attack";
const ATTACKER_IP: &str = "10.77.0.66";
/// Metrics whose growth shows each attack was seen and refused.
const COUNTERS: [&str; 5] = [
    "slipway_boot_refusals_total",
    "slipway_tftp_busy_total",
    "slipway_http_connections_refused_total",
    "slipway_http_header_timeouts_total",
    "slipway_dhcp_received_total{type=\"decline\"}",
];

/// The attacker, running.
pub struct Attack {
    child: Child,
    report: PathBuf,
    before: Snapshot,
}

impl Drop for Attack {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the appliance holds and has counted at one moment.
struct Snapshot {
    counters: Vec<f64>,
    events: usize,
    machines: usize,
    db_bytes: u64,
}

/// Puts the attacker on the bridge and starts it against the machine with
/// `victim_mac` (as the API spells it).
pub fn start(watch: &Watch, slipway_bin: &Path, work: &Path, victim_mac: &str) -> anyhow::Result<Attack> {
    net::add_host(ATTACK_NETNS, BRIDGE, "slatk", &format!("{ATTACKER_IP}/24"))?;
    let victim_ip = lease_of(watch, victim_mac)?;
    let before = snapshot(watch, work)?;
    let report = work.join("attack.json");
    let log = std::fs::File::create(work.join("attack.log"))?;
    let child = Command::new("ip")
        .args(["netns", "exec", ATTACK_NETNS])
        .arg(slipway_bin)
        .args(["lab", "attack", "--appliance", SERVER_IP, "--interface", "slatk1"])
        .args(["--victim-mac", victim_mac, "--victim-ip", &victim_ip, "--report"])
        .arg(&report)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the attacker")?;
    progress(&format!("attacker at {ATTACKER_IP} on the provisioning bridge, going after {victim_mac} ({victim_ip})"));
    Ok(Attack { child, report, before })
}

/// Waits for the attacker to finish and says what each attack got and
/// what the appliance counted.
pub fn finish(watch: &Watch, work: &Path, mut attack: Attack) -> anyhow::Result<Value> {
    let began = Instant::now();
    let status = loop {
        if let Some(status) = attack.child.try_wait()? {
            break status;
        }
        if began.elapsed() > Duration::from_secs(180) {
            bail!("the attacker did not finish within 180 s (see {}/attack.log)", work.display());
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    if !status.success() {
        let log = std::fs::read_to_string(work.join("attack.log")).unwrap_or_default();
        bail!("the attacker failed ({status}):\n{log}");
    }
    let attacker: Value = serde_json::from_slice(&std::fs::read(&attack.report)?)?;
    let after = snapshot(watch, work)?;
    let before = &attack.before;
    let counted: serde_json::Map<String, Value> = COUNTERS
        .iter()
        .zip(before.counters.iter().zip(&after.counters))
        .map(|(name, (b, a))| (name.to_string(), json!(a - b)))
        .collect();
    progress(&format!("attacker done in {:.0} s", attacker["seconds"].as_f64().unwrap_or(0.0)));
    Ok(json!({
        "attacker": attacker,
        "appliance_counted": counted,
        "events_added": after.events.saturating_sub(before.events),
        "machines_before": before.machines,
        "machines_after": after.machines,
        "db_bytes_before": before.db_bytes,
        "db_bytes_after": after.db_bytes,
    }))
}

/// The address the appliance leased to `mac`, from its last `dhcp.ack`.
fn lease_of(watch: &Watch, mac: &str) -> anyhow::Result<String> {
    let events = watch.api(&format!("/api/v1/machines/{mac}/events?limit=1000"))?;
    events["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == "dhcp.ack")
        .filter_map(|e| e["detail"]["ip"].as_str())
        .next_back()
        .map(str::to_string)
        .with_context(|| format!("no dhcp.ack event for {mac}"))
}

fn snapshot(watch: &Watch, work: &Path) -> anyhow::Result<Snapshot> {
    let metrics = watch
        .client
        .get(&format!("{}/metrics", super::API))
        .set("Authorization", &format!("Bearer {}", watch.token))
        .call()?
        .into_string()?;
    let counters = COUNTERS.iter().map(|name| sum_of(&metrics, name)).collect();
    let mut events = 0;
    let mut after = String::new();
    loop {
        let page = watch.api(&format!("/api/v1/events?limit=1000{after}"))?;
        events += page["events"].as_array().map_or(0, Vec::len);
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    let machines = watch.api("/api/v1/machines?limit=1000")?["machines"].as_array().map_or(0, Vec::len);
    let data = work.join("data");
    let db_bytes = ["slipway.db", "slipway.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(data.join(f)).ok())
        .map(|m| m.len())
        .sum();
    Ok(Snapshot { counters, events, machines, db_bytes })
}

/// The sum of every series of `name` (a bare name, or one series with its
/// labels) in Prometheus text.
fn sum_of(metrics: &str, name: &str) -> f64 {
    let (bare, labels) = name.split_once('{').map_or((name, None), |(n, l)| (n, Some(l.trim_end_matches('}'))));
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
            series_name == bare && labels.is_none_or(|l| series_labels.contains(l))
        })
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_series_by_name_and_by_label() {
        let text = "# TYPE a counter\na{reason=\"x\"} 2\na{reason=\"y\"} 3\nab 7\nb{type=\"decline\"} 5\nb{type=\"discover\"} 1\n";
        assert_eq!(super::sum_of(text, "a"), 5.0);
        assert_eq!(super::sum_of(text, "b{type=\"decline\"}"), 5.0);
        assert_eq!(super::sum_of(text, "c"), 0.0);
    }
}
