//! The lab report: per node, what the API says and how long each step
//! took, measured from the VM's start to the appliance's event times.

use serde::Serialize;
use serde_json::Value;

use super::qemu::{Accel, NodeSpec};

#[derive(Debug, Serialize)]
pub struct LabReport {
    pub accel: &'static str,
    /// Highest resident memory of `slipway serve` seen while waiting.
    pub appliance_peak_rss_kib: u64,
    pub ramdisk: RamdiskFacts,
    pub nodes: Vec<NodeReport>,
    /// The cluster the nodes formed, as the API shows it (`--deploy lab-debian`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Value>,
    /// The lab UPS as the API shows it.
    pub ups: Value,
    /// `--firmware-campaign`: what the campaign did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign: Option<super::campaign::CampaignFacts>,
    /// `--os-refresh`: the campaign to release 2, and the one to an image
    /// that cannot boot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_refresh: Option<super::campaign::CampaignFacts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broken_refresh: Option<super::campaign::CampaignFacts>,
    /// With `--deploy` on UEFI nodes: the 422 each gave for an image that
    /// boots only under BIOS.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused_deploys: Vec<Value>,
    /// `--attack`: what each attack got, what the appliance counted, and
    /// how its database grew meanwhile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attack: Option<Value>,
}

#[derive(Debug, Serialize)]
pub struct RamdiskFacts {
    pub key: String,
    pub kernel_release: String,
    pub kernel_bytes: u64,
    pub initrd_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct NodeReport {
    pub name: String,
    pub mac: String,
    pub firmware: &'static str,
    pub machine_id: Option<String>,
    pub state: String,
    /// What QEMU was told to give the VM, to compare with `inventory`.
    pub configured: Configured,
    pub inventory: Value,
    /// The machine's BMC as the API shows it, and where its inventory and
    /// the in-band one disagree (empty: they agree).
    pub bmc: Option<BmcFacts>,
    /// The image of its deployment, as the API has it, and the image its
    /// node agent reports running (deployed nodes).
    pub image: Value,
    pub reported_image: Value,
    /// The kinds of DHCP client the node's boots were, in order, deduplicated
    /// (`pxe`, `uefi_http`, `ipxe`, `plain`), as Slipway's events recorded them.
    pub dhcp_clients: Vec<String>,
    /// What the agent said it configured after its last verified write
    /// (first-boot files, partition table, UEFI boot entry).
    pub last_write: Value,
    /// The release the node's console banner showed at its last boot of
    /// `lab-debian` (1: the base image, no release in the banner).
    pub console_release: Option<u32>,
    pub seconds: Seconds,
}

#[derive(Debug, Serialize)]
pub struct BmcFacts {
    pub address: String,
    pub power_state: Value,
    pub status: Value,
    pub bios_version: Value,
    /// Redfish `SecureBoot` as the BMC reports it (null without UEFI).
    pub secure_boot: Value,
    pub disagreements: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Configured {
    pub cpus: u32,
    pub memory_mib: u32,
    pub disk_bytes: u64,
    pub serial: String,
    pub uuid: String,
}

/// Seconds from VM start; `None` when the step never happened.
#[derive(Debug, Serialize)]
pub struct Seconds {
    pub dhcp_ack: Option<f64>,
    pub discovered: Option<f64>,
    pub ready: Option<f64>,
    /// The agent reported the image written and verified (`deployed`).
    pub image_written: Option<f64>,
    /// The node's kernel started from its own disk.
    pub disk_boot: Option<f64>,
    /// Its disk booted again after its NVRAM was reset (`--reset-nvram`).
    pub nvram_reset_boot: Option<f64>,
    /// Its disk booted again after a release and a new deploy (`--redeploy`).
    pub redeployed_disk_boot: Option<f64>,
    /// The node agent on the deployed OS first reported.
    pub agent_started: Option<f64>,
    /// The node agent reported cluster membership (`joined`).
    pub joined: Option<f64>,
    /// Back to `ready` after a release (wiped).
    pub released: Option<f64>,
}

pub fn machine_for<'a>(machines: &'a Value, mac: &str) -> Option<&'a Value> {
    machines["machines"]
        .as_array()?
        .iter()
        .find(|m| m["macs"].as_array().is_some_and(|macs| macs.iter().any(|x| x == mac)))
}

/// Seconds from `start_ms` to the first event matching `pred`.
fn first(events: &[Value], start_ms: i64, pred: impl Fn(&Value) -> bool) -> Option<f64> {
    events.iter().find(|e| pred(e)).and_then(|e| e["at_ms"].as_i64()).map(|at| (at - start_ms) as f64 / 1000.0)
}

/// When each node's console showed its deployed OS (unix ms), per node.
pub struct DiskBoots {
    pub first: Vec<Option<i64>>,
    /// Again, after its NVRAM was reset (UEFI nodes, `--reset-nvram`).
    pub after_nvram_reset: Vec<Option<i64>>,
    /// Again, released and deployed anew (`--redeploy`).
    pub after_redeploy: Vec<Option<i64>>,
}

impl DiskBoots {
    pub fn new(nodes: usize) -> DiskBoots {
        DiskBoots { first: vec![None; nodes], after_nvram_reset: vec![None; nodes], after_redeploy: vec![None; nodes] }
    }
}

pub fn build(
    client: &ureq::Agent,
    api: &str,
    token: &str,
    nodes: &[(NodeSpec, i64)],
    accel: Accel,
    ramdisk: &images::Ramdisk,
    disk_boots: &DiskBoots,
) -> anyhow::Result<LabReport> {
    let secs = |boots: &[Option<i64>], i: usize, start_ms: i64| {
        boots.get(i).copied().flatten().map(|at| (at - start_ms) as f64 / 1000.0)
    };
    let auth = format!("Bearer {token}");
    let machines: Value =
        client.get(&format!("{api}/api/v1/machines")).set("Authorization", &auth).call()?.into_json()?;
    let mut out = Vec::new();
    for (i, (spec, start_ms)) in nodes.iter().enumerate() {
        let machine = machine_for(&machines, &spec.mac);
        let id = machine.and_then(|m| m["id"].as_str()).map(str::to_string);
        let events: Vec<Value> = match &id {
            Some(id) => client
                .get(&format!("{api}/api/v1/machines/{id}/events?limit=1000"))
                .set("Authorization", &auth)
                .call()?
                .into_json::<Value>()?["events"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            None => vec![],
        };
        let get = |what: &str| -> Option<Value> {
            let url = format!("{api}/api/v1/machines/{}/{what}", id.as_deref()?);
            client.get(&url).set("Authorization", &auth).call().ok()?.into_json().ok()
        };
        let bmc = get("bmc");
        let image = get("deployment").map(|d| d["image"].clone()).unwrap_or(Value::Null);
        let reported_image = get("node").map(|n| n["status"]["image"].clone()).unwrap_or(Value::Null);
        let inventory = machine.map(|m| m["inventory"].clone()).unwrap_or(Value::Null);
        let bmc = bmc.map(|b| BmcFacts {
            address: b["address"].as_str().unwrap_or_default().to_string(),
            power_state: b["power_state"].clone(),
            status: b["status"].clone(),
            bios_version: b["inventory"]["system"]["bios_version"].clone(),
            secure_boot: b["inventory"]["system"]["secure_boot"].clone(),
            disagreements: if inventory.is_null() { vec![] } else { super::oob::disagreements(&inventory, &b) },
        });
        out.push(NodeReport {
            name: spec.name.clone(),
            mac: spec.mac.clone(),
            firmware: spec.firmware.name(),
            machine_id: id,
            state: machine.and_then(|m| m["state"].as_str()).unwrap_or("absent").to_string(),
            configured: Configured {
                cpus: spec.cpus,
                memory_mib: spec.memory_mib,
                disk_bytes: u64::from(spec.disk_gib) << 30,
                serial: spec.serial.clone(),
                uuid: spec.uuid.clone(),
            },
            inventory,
            bmc,
            image,
            reported_image,
            dhcp_clients: events
                .iter()
                .filter(|e| e["kind"] == "dhcp.ack" || e["kind"] == "dhcp.proxy")
                .filter_map(|e| e["detail"]["client"].as_str())
                .fold(vec![], |mut seen: Vec<String>, c| {
                    if seen.last().map(String::as_str) != Some(c) {
                        seen.push(c.to_string());
                    }
                    seen
                }),
            last_write: events
                .iter()
                .rev()
                .find(|e| e["kind"] == "deploy.phase" && e["detail"]["phase"] == "written")
                .map(|e| e["detail"]["configured"].clone())
                .unwrap_or(Value::Null),
            console_release: console_release(&std::fs::read(spec.serial_log()).unwrap_or_default()),
            seconds: Seconds {
                // In proxy mode another server ACKs; our proxy answer stands in.
                dhcp_ack: first(&events, *start_ms, |e| e["kind"] == "dhcp.ack" || e["kind"] == "dhcp.proxy"),
                discovered: first(&events, *start_ms, |e| e["kind"] == "agent.hello"),
                ready: first(&events, *start_ms, |e| e["kind"] == "state.changed" && e["detail"]["to"] == "ready"),
                image_written: first(&events, *start_ms, |e| {
                    e["kind"] == "state.changed" && e["detail"]["to"] == "deployed"
                }),
                disk_boot: secs(&disk_boots.first, i, *start_ms),
                nvram_reset_boot: secs(&disk_boots.after_nvram_reset, i, *start_ms),
                redeployed_disk_boot: secs(&disk_boots.after_redeploy, i, *start_ms),
                agent_started: first(&events, *start_ms, |e| e["kind"] == "node.agent_started"),
                joined: first(&events, *start_ms, |e| e["kind"] == "state.changed" && e["detail"]["to"] == "joined"),
                released: first(&events, *start_ms, |e| {
                    e["kind"] == "state.changed" && e["detail"]["from"] == "releasing" && e["detail"]["to"] == "ready"
                }),
            },
        });
    }
    Ok(LabReport {
        accel: accel.name(),
        appliance_peak_rss_kib: 0,
        ramdisk: RamdiskFacts {
            key: ramdisk.key.clone(),
            kernel_release: ramdisk.kernel_release.clone(),
            kernel_bytes: ramdisk.kernel_bytes,
            initrd_bytes: ramdisk.initrd_bytes,
        },
        nodes: out,
        cluster: None,
        campaign: None,
        os_refresh: None,
        broken_refresh: None,
        refused_deploys: vec![],
        attack: None,
        ups: client
            .get(&format!("{api}/api/v1/ups/{}", super::oob::LAB_UPS))
            .set("Authorization", &auth)
            .call()
            .ok()
            .and_then(|r| r.into_json().ok())
            .unwrap_or(Value::Null),
    })
}

/// The release in the last `lab-debian` banner of a serial log.
fn console_release(log: &[u8]) -> Option<u32> {
    let text = String::from_utf8_lossy(log);
    let line = text.lines().rfind(|l| l.contains(crate::lab_debian::BOOTED_MARKER))?;
    let release = line.split("(release ").nth(1).and_then(|r| r.split(')').next()?.parse().ok());
    Some(release.unwrap_or(1))
}

/// The human summary printed at the end of `lab up`.
pub fn summary(report: &LabReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nappliance peak RSS {:.1} MiB; ramdisk: kernel {:.1} MiB + initrd {:.1} MiB; accel {}",
        report.appliance_peak_rss_kib as f64 / 1024.0,
        report.ramdisk.kernel_bytes as f64 / (1u64 << 20) as f64,
        report.ramdisk.initrd_bytes as f64 / (1u64 << 20) as f64,
        report.accel
    );
    let deployed = report.nodes.iter().any(|n| n.seconds.image_written.is_some());
    let joined = report.nodes.iter().any(|n| n.seconds.joined.is_some());
    let _ = write!(
        out,
        "\n{:<7} {:<18} {:<8} {:<12} {:>4} {:>8} {:>9} {:>8} {:>11} {:>7}",
        "node", "mac", "fw", "state", "cpus", "mem MiB", "disk GiB", "dhcp s", "discovered s", "ready s"
    );
    let _ = writeln!(
        out,
        "{}",
        match (deployed, joined) {
            (true, true) => format!(" {:>9} {:>11} {:>8}", "written s", "disk boot s", "joined s"),
            (true, false) => format!(" {:>9} {:>11}", "written s", "disk boot s"),
            _ => String::new(),
        }
    );
    let secs = |s: Option<f64>| s.map_or("-".to_string(), |v| format!("{v:.1}"));
    for n in &report.nodes {
        let inv = &n.inventory;
        let disk_gib = inv["disks"]
            .as_array()
            .and_then(|d| d.first())
            .and_then(|d| d["size_bytes"].as_u64())
            .map_or("-".into(), |b| format!("{:.1}", b as f64 / (1u64 << 30) as f64));
        let _ = write!(
            out,
            "{:<7} {:<18} {:<8} {:<12} {:>4} {:>8} {:>9} {:>8} {:>11} {:>7}",
            n.name,
            n.mac,
            n.firmware,
            n.state,
            inv["cpu"]["count"].as_u64().map_or("-".into(), |c| c.to_string()),
            inv["memory"]["total_bytes"].as_u64().map_or("-".into(), |b| (b >> 20).to_string()),
            disk_gib,
            secs(n.seconds.dhcp_ack),
            secs(n.seconds.discovered),
            secs(n.seconds.ready),
        );
        let mut deploy_cols = format!(" {:>9} {:>11}", secs(n.seconds.image_written), secs(n.seconds.disk_boot));
        if joined {
            deploy_cols += &format!(" {:>8}", secs(n.seconds.joined));
        }
        let _ = writeln!(out, "{}", if deployed { deploy_cols } else { String::new() });
    }
    for n in &report.nodes {
        if let Some(b) = &n.bmc {
            let agree = if b.disagreements.is_empty() {
                "inventory agrees with in-band".to_string()
            } else {
                format!("DISAGREES with in-band: {}", b.disagreements.join("; "))
            };
            let _ = writeln!(
                out,
                "{}: BMC {} ({}), power {}, BIOS {}, {agree}",
                n.name, b.address, b.status, b.power_state, b.bios_version
            );
        }
    }
    for (what, c) in [
        ("firmware campaign", &report.campaign),
        ("OS refresh", &report.os_refresh),
        ("refresh to a broken image", &report.broken_refresh),
    ] {
        let Some(c) = c else { continue };
        let _ = write!(
            out,
            "{what}: {} in {:.0} s, at most {} node(s) at once, held {} s on battery ({} started while held)",
            c.state,
            c.seconds,
            c.max_in_progress,
            c.held_seconds.map_or("-".into(), |s| format!("{s:.0}")),
            c.started_while_held
        );
        match c.max_drained {
            Some(d) => {
                let _ = writeln!(out, ", at most {d} drained");
            }
            None => {
                let _ = writeln!(out);
            }
        }
    }
    for n in report.nodes.iter().filter(|n| !n.image.is_null()) {
        let _ = writeln!(
            out,
            "{}: image {}, its node agent reports {}, console release {}",
            n.name,
            n.image,
            n.reported_image,
            n.console_release.map_or("-".into(), |r| r.to_string())
        );
    }
    if let Some(a) = &report.attack {
        let (att, seen) = (&a["attacker"], &a["appliance_counted"]);
        let tally = |t: &Value| format!("{}/{}", t["refused"], t["sent"]);
        let _ = writeln!(
            out,
            "attack: victim's script {} (TFTP GRUB script refused: {}); refused: new-MAC scripts {}, forged reports {}, forged node calls {}, \
             anonymous writes {}, TFTP {}, slow connections {} (+{} cut by the header timeout); {} DECLINEs sent",
            att["script_theft_status"],
            att["grub_theft_refused"],
            tally(&att["new_mac_scripts"]),
            tally(&att["forged_reports"]),
            tally(&att["forged_node_calls"]),
            tally(&att["anonymous_writes"]),
            tally(&att["tftp"]),
            tally(&att["slow_connections"]),
            att["slow_cut_by_timeout"],
            att["declines_sent"],
        );
        let rogue = &a["rogue"];
        let _ = writeln!(
            out,
            "rogue appliance: {} ARP replies to the victim, its requests {}, forged instructions {}, forged image fetched {} times",
            rogue["arp_replies_sent"],
            rogue["requests"],
            rogue["forged_instructions"],
            rogue["forged_image_fetches"],
        );
        let _ = writeln!(
            out,
            "attack: the appliance counted {seen}; events +{}, machines {} -> {}, database {} -> {} KiB",
            a["events_added"],
            a["machines_before"],
            a["machines_after"],
            a["db_bytes_before"].as_u64().unwrap_or(0) / 1024,
            a["db_bytes_after"].as_u64().unwrap_or(0) / 1024,
        );
    }
    if !report.ups.is_null() {
        let s = &report.ups["state"];
        let _ = writeln!(
            out,
            "UPS {}: {} ({}), charge {}%",
            report.ups["name"], s["status"], s["flags"], s["charge_percent"]
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_release_is_the_last_banners() {
        let log = b"Slipway lab-debian node1 ttyS0\r\nreboot\r\nSlipway lab-debian node1 ttyS0 (release 2)\r\n";
        assert_eq!(console_release(log), Some(2));
        assert_eq!(console_release(b"Slipway lab-debian node1 ttyS0\r\n"), Some(1));
        assert_eq!(console_release(b"iPXE 1.21\r\n"), None);
    }

    #[test]
    fn summary_snapshot() {
        let report = LabReport {
            accel: "tcg",
            appliance_peak_rss_kib: 11_264,
            ramdisk: RamdiskFacts {
                key: "k".into(),
                kernel_release: "6.1.0-56-amd64".into(),
                kernel_bytes: 8 << 20,
                initrd_bytes: 3 << 20,
            },
            nodes: vec![NodeReport {
                name: "node1".into(),
                mac: "52:54:00:5e:00:01".into(),
                firmware: "bios",
                machine_id: Some("m1".into()),
                state: "ready".into(),
                configured: Configured {
                    cpus: 1,
                    memory_mib: 512,
                    disk_bytes: 8 << 30,
                    serial: "LAB-0001".into(),
                    uuid: "u".into(),
                },
                bmc: None,
                image: Value::Null,
                reported_image: Value::Null,
                dhcp_clients: vec![],
                last_write: Value::Null,
                console_release: None,
                inventory: serde_json::json!({
                    "cpu": { "count": 1 }, "memory": { "total_bytes": 479_641_600u64 },
                    "disks": [{ "size_bytes": 8u64 << 30 }]
                }),
                seconds: Seconds {
                    dhcp_ack: Some(2.25),
                    discovered: Some(11.9),
                    ready: None,
                    image_written: None,
                    disk_boot: None,
                    nvram_reset_boot: None,
                    redeployed_disk_boot: None,
                    agent_started: None,
                    joined: None,
                    released: None,
                },
            }],
            cluster: None,
            campaign: None,
            os_refresh: None,
            broken_refresh: None,
            refused_deploys: vec![],
            attack: None,
            ups: Value::Null,
        };
        let expected = "
appliance peak RSS 11.0 MiB; ramdisk: kernel 8.0 MiB + initrd 3.0 MiB; accel tcg

node    mac                fw       state        cpus  mem MiB  disk GiB   dhcp s discovered s ready s
node1   52:54:00:5e:00:01  bios     ready           1      457       8.0      2.2        11.9       -
";
        assert_eq!(summary(&report), expected);
    }
}
