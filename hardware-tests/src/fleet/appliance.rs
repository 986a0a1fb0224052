//! The fleet's appliances: each `slipway serve` in a namespace of its own
//! (`slipway-fleet-aJ`, 10.90.J.1), linked to the racks' namespace by a
//! veth (10.90.J.2 on the racks' side, which forwards between the links,
//! so appliances reach each other and the shared database). Appliance J
//! serves the racks given to it: its relay's giaddr is 10.91.(64(J-1)).1
//! and its DHCP pool the /18 behind it. A killed appliance is restarted as
//! a supervisor would, with the same configuration.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};

use super::RACKS_NETNS;
use crate::lab::net;

/// Appliances one fleet can run: each takes a /18 of 10.91.0.0/16.
pub const MAX_APPLIANCES: usize = 4;
/// Machines one appliance can lease addresses to (its /18 less the first /24).
pub const MAX_MACHINES_EACH: usize = 63 * 256 - 2;
pub const API_PORT: u16 = 8080;
const BOOT_PORT: u16 = 8081;

/// One appliance's place in the fleet (`index` from 1).
#[derive(Clone)]
pub struct Site {
    pub index: usize,
    pub work: PathBuf,
}

impl Site {
    pub fn netns(&self) -> String {
        format!("slipway-fleet-a{}", self.index)
    }

    pub fn ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 90, self.index as u8, 1)
    }

    /// The racks' side of this appliance's link.
    pub fn racks_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 90, self.index as u8, 2)
    }

    pub fn giaddr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 91, (64 * (self.index - 1)) as u8, 1)
    }

    pub fn api(&self) -> String {
        format!("http://{}:{API_PORT}", self.ip())
    }

    pub fn boot_base(&self) -> String {
        format!("http://{}:{BOOT_PORT}", self.ip())
    }

    /// Its namespace and link (the racks' namespace exists already).
    pub fn setup_network(&self) -> anyhow::Result<()> {
        let (ns, j) = (self.netns(), self.index);
        let (here, there) = (format!("fa{j}"), format!("fr{j}"));
        net::ip(&["netns", "add", &ns])?;
        net::ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        net::ip(&["link", "add", &here, "netns", &ns, "type", "veth", "peer", "name", &there, "netns", RACKS_NETNS])?;
        net::ip(&["-n", &ns, "addr", "add", &format!("{}/24", self.ip()), "dev", &here])?;
        net::ip(&["-n", RACKS_NETNS, "addr", "add", &format!("{}/24", self.racks_ip()), "dev", &there])?;
        net::ip(&["-n", &ns, "link", "set", &here, "up"])?;
        net::ip(&["-n", RACKS_NETNS, "link", "set", &there, "up"])?;
        // Machines, BMCs, the other appliances and the database: all through the racks.
        for prefix in [super::MACHINE_NET, super::BMC_NET, "10.90.0.0/16"] {
            net::ip(&["-n", &ns, "route", "add", prefix, "via", &self.racks_ip().to_string()])?;
        }
        Ok(())
    }

    /// `slipway.toml` for this appliance; `database` is a PostgreSQL URL,
    /// or None for SQLite in its data directory.
    pub fn write_config(&self, database: Option<&str>, secret_key: &str) -> anyhow::Result<()> {
        for dir in ["data", "import"] {
            std::fs::create_dir_all(self.work.join(dir))?;
        }
        let third = 64 * (self.index - 1);
        let database = database.map_or(String::new(), |url| format!("\n[database]\nurl = \"{url}\"\n"));
        let config = format!(
            r#"data_dir = "{data}"
import_dir = "{import}"
log_format = "json"

[api]
listen = "{ip}:{API_PORT}"
{database}
[oob]
secret_key = "{secret_key}"

[provisioning]
interface = "fa{j}"
dhcp_mode = "authoritative"
address = "{ip}"
prefix_len = 24
pool_start = "10.90.{j}.100"
pool_end = "10.90.{j}.199"
lease_secs = 86400
discovery_timeout_secs = 1800
relay_subnets = [{{ subnet = "10.91.{third}.0/18", pool_start = "10.91.{first}.0", pool_end = "10.91.{last}.254", router = "{giaddr}" }}]

[boot]
ramdisk_dir = "{ramdisk}"
# Simulated machines boot as BIOS iPXE; nothing to fetch from Debian.
uefi_pxe = "ipxe"
"#,
            data = self.work.join("data").display(),
            import = self.work.join("import").display(),
            ip = self.ip(),
            j = self.index,
            first = third + 1,
            last = third + 63,
            giaddr = self.giaddr(),
            ramdisk = self.work.parent().expect("the fleet's work directory").join("ramdisk").display(),
        );
        std::fs::write(self.work.join("slipway.toml"), config)?;
        Ok(())
    }

    fn spawn(&self, bin: &Path, token: &str) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.work.join("serve.log"))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns()])
            .arg(bin)
            .arg("serve")
            .arg("--config")
            .arg(self.work.join("slipway.toml"));
        // The fleet's config is the whole truth: drop the caller's overrides.
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SLIPWAY_")) {
            cmd.env_remove(key);
        }
        cmd.env("SLIPWAY_API_TOKEN", token).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        cmd.spawn().with_context(|| format!("starting appliance {}", self.index))
    }
}

/// The running appliances, shared by the fleet (which ends them) and the
/// operator (which kills and restarts one mid-campaign).
pub struct Appliances {
    bin: PathBuf,
    token: String,
    pub sites: Vec<Site>,
    running: Mutex<Vec<Running>>,
}

struct Running {
    child: Option<Child>,
    /// CPU seconds of processes of this appliance that were killed.
    cpu_before: f64,
    peak_rss_mib: f64,
    restarts: u32,
}

impl Appliances {
    pub fn start(bin: &Path, token: &str, sites: Vec<Site>) -> anyhow::Result<Appliances> {
        let mut running = Vec::new();
        for site in &sites {
            let child = site.spawn(bin, token)?;
            running.push(Running { child: Some(child), cpu_before: 0.0, peak_rss_mib: 0.0, restarts: 0 });
        }
        Ok(Appliances { bin: bin.to_path_buf(), token: token.to_string(), sites, running: Mutex::new(running) })
    }

    /// Kills appliance `index` (from 1) with SIGKILL, waits `down`, and
    /// starts it again.
    pub fn kill_and_restart(&self, index: usize, down: Duration) -> anyhow::Result<()> {
        {
            let mut running = self.running.lock().expect("appliances lock");
            let r = &mut running[index - 1];
            if let Some(mut child) = r.child.take() {
                let (cpu, rss) = cost(child.id());
                r.cpu_before += cpu;
                r.peak_rss_mib = r.peak_rss_mib.max(rss);
                child.kill().context("SIGKILL")?;
                let _ = child.wait();
            }
        }
        std::thread::sleep(down);
        let child = self.sites[index - 1].spawn(&self.bin, &self.token)?;
        let mut running = self.running.lock().expect("appliances lock");
        running[index - 1].child = Some(child);
        running[index - 1].restarts += 1;
        Ok(())
    }

    /// CPU seconds (killed processes included), peak RSS and restarts of
    /// each appliance, and each one's SQLite file if it has one.
    pub fn costs(&self) -> Vec<Value> {
        let running = self.running.lock().expect("appliances lock");
        running
            .iter()
            .zip(&self.sites)
            .map(|(r, site)| {
                let (cpu, rss) = r.child.as_ref().map_or((0.0, 0.0), |c| cost(c.id()));
                let sqlite: u64 = ["slipway.db", "slipway.db-wal"]
                    .iter()
                    .filter_map(|f| std::fs::metadata(site.work.join("data").join(f)).ok())
                    .map(|m| m.len())
                    .sum();
                json!({
                    "appliance": site.index,
                    "cpu_seconds": r.cpu_before + cpu,
                    "peak_rss_mib": r.peak_rss_mib.max(rss),
                    "restarts": r.restarts,
                    "sqlite_mib": sqlite as f64 / 1048576.0,
                })
            })
            .collect()
    }

    pub fn stop_all(&self) {
        let mut running = self.running.lock().expect("appliances lock");
        for r in running.iter_mut() {
            if let Some(mut child) = r.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// CPU seconds and peak RSS (MiB) of process `pid`, while it runs. `ip
/// netns exec` execs the appliance, so the child's pid is the appliance's.
fn cost(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are
    // the 12th and 13th there, in USER_HZ (100 on Linux).
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    (ticks as f64 / 100.0, crate::support::peak_rss_kib(pid) as f64 / 1024.0)
}

/// Waits until `url`'s /healthz answers.
pub fn wait_healthy(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let began = Instant::now();
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(2)).build();
    while agent.get(&format!("{url}/healthz")).call().is_err() {
        if began.elapsed() > timeout {
            anyhow::bail!("{url} did not answer /healthz within {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
