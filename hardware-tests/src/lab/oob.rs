//! The lab's out-of-band side: a simulated Redfish BMC per VM (`slipway
//! lab vbmc`, each on its own address on the lab bridge) and a NUT UPS
//! feeding the lab rack (`slipway lab ups-sim`). The lab enrols both through
//! the API, and Slipway powers each VM on through its BMC (PXE once), as it
//! would a racked server: nothing starts a VM directly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::procs::{Children, VbmcEntry};
use super::qemu::NodeSpec;
use super::{api_post, net, BRIDGE};

pub const BMC_USER: &str = "admin";
const BMC_PORT: u16 = 8000;
/// The rack every lab machine is enrolled into; the lab UPS feeds it.
pub const LAB_RACK: &str = "lab";
pub const LAB_UPS: &str = "lab-ups";
/// NUT's name for the UPS, on the lab's upsd.
const NUT_UPS_NAME: &str = "lab";
/// Under the lab's work directory: the UPS's NUT config and state file,
/// which `slipway lab ups online|battery|low` rewrites.
pub const UPS_DIR: &str = "ups";

/// Node `n` (1-based)'s BMC: its own address on the lab bridge.
pub fn bmc_listen(n: usize) -> SocketAddr {
    SocketAddr::from(([10, 77, 0, 10 + n as u8], BMC_PORT))
}

pub fn bmc_url(n: usize) -> String {
    format!("http://{}", bmc_listen(n))
}

/// Gives each node's BMC an address on the bridge, starts the simulated
/// BMCs and waits until each answers its Redfish service root.
pub fn start_bmcs(
    children: &mut Children,
    nodes: &[NodeSpec],
    bin: &Path,
    work: &Path,
    password: &str,
) -> anyhow::Result<()> {
    let mut entries = Vec::new();
    for (i, spec) in nodes.iter().enumerate() {
        let listen = bmc_listen(i + 1);
        net::ip(&["addr", "add", &format!("{}/24", listen.ip()), "dev", BRIDGE])?;
        entries.push(VbmcEntry::for_node(spec, listen, BMC_USER, password));
    }
    children.spawn_vbmc(bin, &entries, work)?;
    let client = ureq::AgentBuilder::new().timeout(Duration::from_secs(2)).build();
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in 1..=nodes.len() {
        let root = format!("{}/redfish/v1", bmc_url(n));
        while client.get(&root).call().is_err() {
            children.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "the simulated BMC at {root} did not answer within 30 s; see {}",
                    work.join("vbmc.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Starts the lab UPS (a real NUT upsd + dummy-ups, online) and returns
/// what enrolling it needs (`address`, `username`, `password`) once upsd
/// answers.
pub fn start_ups(children: &mut Children, bin: &Path, work: &Path) -> anyhow::Result<Value> {
    let dir = work.join(UPS_DIR);
    children.spawn_ups_sim(bin, &dir, NUT_UPS_NAME, work)?;
    let ready = dir.join("ready");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            return serde_json::from_str(&text).with_context(|| format!("reading {}", ready.display()));
        }
        children.check_alive()?;
        if Instant::now() > deadline {
            bail!("the lab UPS did not start within 30 s; see {}", work.join("ups.log").display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn ups_dir() -> PathBuf {
    Path::new(super::WORK_DIR).join(UPS_DIR)
}

/// Enrols the lab UPS (as `start_ups` described it), feeding the lab rack.
pub fn enrol_ups(client: &ureq::Agent, token: &str, ups: &Value) -> anyhow::Result<Value> {
    let body = json!({
        "name": LAB_UPS, "protocol": "nut", "address": ups["address"], "ups": NUT_UPS_NAME,
        "username": ups["username"], "password": ups["password"], "feeds": { "racks": [LAB_RACK] },
    });
    api_post(client, token, "/api/v1/ups", &body).context("enrolling the lab UPS")
}

/// Enrols node `n`'s BMC with `commission`: Slipway links it to a new
/// machine (by the VM's MAC) and powers it on with PXE for the next boot.
pub fn enrol_and_power_on(client: &ureq::Agent, token: &str, n: usize, password: &str) -> anyhow::Result<Value> {
    let body = json!({
        "address": bmc_url(n), "protocol": "redfish", "username": BMC_USER, "password": password,
        "rack": LAB_RACK, "commission": true,
    });
    let bmc = api_post(client, token, "/api/v1/bmcs", &body).with_context(|| format!("enrolling node{n}'s BMC"))?;
    if bmc["status"] != "ok" {
        bail!("node{n}'s BMC enrolled with an error: {}", bmc["last_error"]);
    }
    Ok(bmc)
}

/// Where the BMC's view and the agent's in-band view of one machine
/// disagree (MAC, serial, UUID, CPUs, memory, disk). Empty when they agree.
pub fn disagreements(in_band: &Value, bmc: &Value) -> Vec<String> {
    let oob = &bmc["inventory"];
    let mut out = vec![];
    let mut same = |what: &str, a: &Value, b: &Value| {
        if a != b {
            out.push(format!("{what}: in-band {a}, BMC {b}"));
        }
    };
    same("serial", &in_band["system"]["serial"], &oob["system"]["serial"]);
    same("uuid", &in_band["system"]["uuid"], &oob["system"]["uuid"]);
    same("mac", &in_band["nics"][0]["mac"], &oob["nics"][0]["mac"]);
    same("disk serial", &in_band["disks"][0]["serial"], &oob["drives"][0]["serial"]);
    same("disk bytes", &in_band["disks"][0]["size_bytes"], &oob["drives"][0]["size_bytes"]);
    same("firmware mode", &in_band["firmware"]["mode"], &oob["system"]["firmware_mode"]);
    if in_band["firmware"]["mode"] == "uefi" {
        same("secure boot", &in_band["firmware"]["secure_boot"], &oob["system"]["secure_boot"]);
    }
    let threads: u64 = oob["processors"].as_array().into_iter().flatten().filter_map(|p| p["threads"].as_u64()).sum();
    same("cpus", &in_band["cpu"]["count"], &json!(threads));
    // The kernel sees a little less memory than is installed (MemTotal).
    let (seen, installed) = (
        in_band["memory"]["total_bytes"].as_u64().unwrap_or(0),
        oob["memory"].as_array().into_iter().flatten().filter_map(|d| d["size_bytes"].as_u64()).sum::<u64>(),
    );
    if !(seen <= installed && seen * 10 >= installed * 8) {
        out.push(format!("memory: in-band {seen} bytes usable, BMC {installed} bytes installed"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bmcs_get_their_own_addresses_outside_the_pool() {
        assert_eq!(bmc_url(1), "http://10.77.0.11:8000");
        assert_eq!(bmc_listen(64).ip().to_string(), "10.77.0.74");
    }

    #[test]
    fn inventories_agree_or_the_difference_is_named() {
        let in_band = json!({
            "system": { "serial": "LAB-0001", "uuid": "u" }, "cpu": { "count": 1 }, "memory": { "total_bytes": 480u64 << 20 },
            "disks": [{ "serial": "DISK-LAB-0001", "size_bytes": 8u64 << 30 }], "nics": [{ "mac": "52:54:00:5e:00:01" }],
        });
        let bmc = json!({ "inventory": {
            "system": { "serial": "LAB-0001", "uuid": "u" }, "processors": [{ "threads": 1 }], "memory": [{ "size_bytes": 512u64 << 20 }],
            "drives": [{ "serial": "DISK-LAB-0001", "size_bytes": 8u64 << 30 }], "nics": [{ "mac": "52:54:00:5e:00:01" }],
        }});
        assert!(disagreements(&in_band, &bmc).is_empty(), "{:?}", disagreements(&in_band, &bmc));
        let mut other = bmc.clone();
        other["inventory"]["drives"][0]["serial"] = json!("X");
        assert_eq!(disagreements(&in_band, &other), ["disk serial: in-band \"DISK-LAB-0001\", BMC \"X\""]);
    }
}
