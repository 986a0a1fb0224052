//! `lab up --attack`: while the nodes deploy, a hostile host in its own
//! namespace on the lab bridge runs `slipway lab attack` against the
//! appliance (see `crate::attack`), and a rogue appliance in another
//! (`slipway lab rogue`, see `crate::rogue`) impersonates it towards the
//! first node just before the deploy is asked for. Afterwards the lab reads
//! what the appliance counted and how much its database grew, for the
//! report.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::{net, progress, Watch, BRIDGE, SERVER_IP};

pub const ATTACK_NETNS: &str = "slipway-lab-attack";
pub const ROGUE_NETNS: &str = "slipway-lab-rogue";
const ATTACKER_IP: &str = "10.77.0.66";
const ROGUE_IP: &str = "10.77.0.67";
/// How long the lab waits for the victim's agent to ask the rogue anything
/// (it long-polls every 15 s, and retries 10 s after a refused answer).
const ROGUE_FIRST_REQUEST_WITHIN: Duration = Duration::from_secs(90);
/// Metrics whose growth shows each attack was seen and refused.
const COUNTERS: [&str; 6] = [
    "slipway_boot_refusals_total",
    "slipway_tftp_busy_total",
    "slipway_http_connections_refused_total",
    "slipway_http_header_timeouts_total",
    "slipway_dhcp_received_total{type=\"decline\"}",
    "slipway_agent_refused_answers_total",
];

/// The attacker and the rogue appliance, running.
pub struct Attack {
    child: Child,
    report: PathBuf,
    rogue: Child,
    before: Snapshot,
}

impl Drop for Attack {
    fn drop(&mut self) {
        for child in [&mut self.child, &mut self.rogue] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What the appliance holds and has counted at one moment.
struct Snapshot {
    counters: Vec<f64>,
    events: usize,
    machines: usize,
    db_bytes: u64,
}

/// Puts the attacker and the rogue appliance on the bridge and starts them
/// against the machine with `victim_mac` (as the API spells it); returns
/// once the rogue has answered the victim's agent at least once, so the
/// deploy asked for next is asked while the rogue holds the victim.
pub fn start(watch: &Watch, slipway_bin: &Path, work: &Path, victim_mac: &str) -> anyhow::Result<Attack> {
    net::add_host(ATTACK_NETNS, BRIDGE, "slatk", &format!("{ATTACKER_IP}/24"))?;
    let victim_ip = lease_of(watch, victim_mac)?;
    let before = snapshot(watch, work)?;
    let report = work.join("attack.json");
    let child = spawn_in(
        ATTACK_NETNS,
        slipway_bin,
        &["attack", "--appliance", SERVER_IP, "--interface", "slatk1", "--victim-mac", victim_mac],
        &["--victim-ip", &victim_ip, "--report", &report.display().to_string()],
        &work.join("attack.log"),
    )?;
    progress(&format!("attacker at {ATTACKER_IP} on the provisioning bridge, going after {victim_mac} ({victim_ip})"));
    let rogue = start_rogue(slipway_bin, work, victim_mac, &victim_ip)?;
    let attack = Attack { child, report, rogue, before };
    wait_for_rogue(work)?;
    Ok(attack)
}

/// The rogue's namespace holds the appliance's address (a /32 beside its
/// own) but answers no ARP for it, and knows the victim's MAC without
/// asking: the only frames it sends towards machines are its forged
/// replies to the victim.
fn start_rogue(slipway_bin: &Path, work: &Path, victim_mac: &str, victim_ip: &str) -> anyhow::Result<Child> {
    let appliance_mac = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == BRIDGE)
        .and_then(|i| i.mac)
        .context("the lab bridge's MAC")?
        .to_string();
    net::add_host(ROGUE_NETNS, BRIDGE, "slrog", &format!("{ROGUE_IP}/24"))?;
    net::sysctl(ROGUE_NETNS, &["net.ipv4.conf.all.arp_ignore=8", "net.ipv4.conf.slrog1.arp_ignore=8"])?;
    net::ip(&[
        "-n",
        ROGUE_NETNS,
        "neigh",
        "replace",
        victim_ip,
        "lladdr",
        victim_mac,
        "dev",
        "slrog1",
        "nud",
        "permanent",
    ])?;
    net::ip(&["-n", ROGUE_NETNS, "addr", "add", &format!("{SERVER_IP}/32"), "dev", "slrog1"])?;
    let child = spawn_in(
        ROGUE_NETNS,
        slipway_bin,
        &["rogue", "--appliance", SERVER_IP, "--appliance-mac", &appliance_mac, "--interface", "slrog1"],
        &[
            "--victim-mac",
            victim_mac,
            "--victim-ip",
            victim_ip,
            "--report",
            &work.join("rogue.json").display().to_string(),
        ],
        &work.join("rogue.log"),
    )?;
    progress(&format!(
        "rogue appliance at {ROGUE_IP} claims {SERVER_IP} towards {victim_mac} (ARP replies to it alone)"
    ));
    Ok(child)
}

/// Waits until the rogue says it answered the victim, or ended.
fn wait_for_rogue(work: &Path) -> anyhow::Result<()> {
    let began = Instant::now();
    while began.elapsed() < ROGUE_FIRST_REQUEST_WITHIN {
        let log = std::fs::read_to_string(work.join("rogue.log")).unwrap_or_default();
        if log.contains("first request") {
            progress(&format!(
                "rogue appliance answered the victim's agent after {:.0} s",
                began.elapsed().as_secs_f64()
            ));
            return Ok(());
        }
        if work.join("rogue.json").exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("the victim's agent never asked the rogue appliance anything: its ARP cache was not poisoned (see {}/rogue.log)", work.display())
}

/// `slipway lab ARGS...` in namespace `ns`, its output to `log`.
fn spawn_in(ns: &str, slipway_bin: &Path, args: &[&str], more: &[&str], log: &Path) -> anyhow::Result<Child> {
    let log = std::fs::File::create(log)?;
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(slipway_bin)
        .arg("lab")
        .args(args)
        .args(more)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting slipway lab {}", args[0]))
}

/// Waits for the attacker to finish and says what each attack got and
/// what the appliance counted.
pub fn finish(watch: &Watch, work: &Path, mut attack: Attack) -> anyhow::Result<Value> {
    wait_for(&mut attack.child, "attacker", &work.join("attack.log"))?;
    wait_for(&mut attack.rogue, "rogue appliance", &work.join("rogue.log"))?;
    let attacker: Value = serde_json::from_slice(&std::fs::read(&attack.report)?)?;
    let rogue: Value = serde_json::from_slice(&std::fs::read(work.join("rogue.json"))?)?;
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
        "rogue": rogue,
        "appliance_counted": counted,
        "events_added": after.events.saturating_sub(before.events),
        "machines_before": before.machines,
        "machines_after": after.machines,
        "db_bytes_before": before.db_bytes,
        "db_bytes_after": after.db_bytes,
    }))
}

fn wait_for(child: &mut Child, what: &str, log: &Path) -> anyhow::Result<()> {
    let began = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if began.elapsed() > Duration::from_secs(180) {
            bail!("the {what} did not finish within 180 s (see {})", log.display());
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    if !status.success() {
        bail!("the {what} failed ({status}):\n{}", std::fs::read_to_string(log).unwrap_or_default());
    }
    Ok(())
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
