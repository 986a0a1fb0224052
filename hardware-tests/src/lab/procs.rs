//! The lab's child processes: the appliance, one QEMU per node and the
//! simulated BMCs (`slipway lab vbmc`) that drive them. Each
//! runs in its own process group (a terminal's Ctrl-C reaches only us, and
//! we stop them in order) with its output in a log file.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::qemu::{Accel, NodeSpec, SMBIOS_MANUFACTURER, SMBIOS_PRODUCT};

struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

#[derive(Default)]
pub struct Children {
    procs: Vec<Proc>,
    /// Highest resident memory of the appliance seen by `check_alive`.
    pub peak_appliance_rss_kib: u64,
}

#[derive(Serialize, Deserialize)]
struct Saved {
    name: String,
    pid: u32,
}

impl Children {
    fn spawn(&mut self, name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<()> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).process_group(0);
        let child = cmd.spawn().with_context(|| format!("starting {name}: {cmd:?}"))?;
        self.procs.push(Proc { name: name.to_string(), child, log: log.to_path_buf() });
        Ok(())
    }

    pub fn spawn_appliance(&mut self, bin: &Path, config: &Path, token: &str, log: &Path) -> anyhow::Result<()> {
        let mut cmd = Command::new(bin);
        cmd.arg("serve").arg("--config").arg(config);
        // The lab's config is the whole truth: drop the caller's overrides.
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SLIPWAY_")) {
            cmd.env_remove(key);
        }
        cmd.env("SLIPWAY_API_TOKEN", token);
        self.spawn("appliance", cmd, log)
    }

    /// dnsmasq as the network's own DHCP server (no DNS, no PXE options),
    /// inside namespace `ns`.
    pub fn spawn_dnsmasq(&mut self, ns: &str, interface: &str, work: &Path) -> anyhow::Result<()> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", "--log-dhcp"])
            .arg(format!("--interface={interface}"))
            .args([
                "--bind-interfaces",
                "--dhcp-range=10.77.0.150,10.77.0.199,255.255.255.0,1h",
                "--dhcp-authoritative",
            ])
            .arg(format!("--dhcp-leasefile={}", work.join("dnsmasq.leases").display()));
        self.spawn("dnsmasq", cmd, &work.join("dnsmasq.log"))
    }

    /// ISC dhcrelay in namespace `ns`, relaying from `downstream` to
    /// `server` through `upstream`, adding relay agent information (82).
    pub fn spawn_dhcrelay(
        &mut self,
        ns: &str,
        upstream: &str,
        downstream: &str,
        server: &str,
        work: &Path,
    ) -> anyhow::Result<()> {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns", "exec", ns, "dhcrelay", "-d", "-4", "-a", "--no-pid", "-iu", upstream, "-id", downstream, server,
        ]);
        self.spawn("dhcrelay", cmd, &work.join("dhcrelay.log"))
    }

    /// `slipway lab vbmc`: one Redfish BMC per entry, each driving its VM
    /// through QMP. The config (passwords included) goes to
    /// `work/vbmc.json`, readable by root only; output to `work/vbmc.log`.
    pub fn spawn_vbmc(&mut self, bin: &Path, entries: &[VbmcEntry], work: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let config = work.join("vbmc.json");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&config)
            .with_context(|| format!("creating {}", config.display()))?;
        file.write_all(serde_json::to_string_pretty(entries)?.as_bytes())
            .with_context(|| format!("writing {}", config.display()))?;
        let mut cmd = Command::new(bin);
        cmd.args(["lab", "vbmc", "--config"]).arg(&config);
        self.spawn("vbmc", cmd, &work.join("vbmc.log"))
    }

    /// `slipway lab ups-sim`: the lab's NUT UPS (upsd + dummy-ups) with its
    /// config and state in `dir`; writes `dir/ready` once upsd answers.
    pub fn spawn_ups_sim(&mut self, bin: &Path, dir: &Path, ups: &str, work: &Path) -> anyhow::Result<()> {
        let mut cmd = Command::new(bin);
        cmd.args(["lab", "ups-sim", "--dir"]).arg(dir).args(["--name", ups]);
        self.spawn("ups", cmd, &work.join("ups.log"))
    }

    pub fn spawn_vm(&mut self, spec: &NodeSpec, accel: Accel) -> anyhow::Result<()> {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(spec.args(accel));
        self.spawn(&spec.name, cmd, &spec.dir.join(format!("{}.qemu.log", spec.name)))
    }

    /// Ends the VM `name` at once (SIGKILL: a power cut) and forgets it.
    pub fn stop_vm(&mut self, name: &str) {
        if let Some(at) = self.procs.iter().position(|p| p.name == name) {
            let mut p = self.procs.remove(at);
            let _ = killpg(Pid::from_raw(p.child.id() as i32), Signal::SIGKILL);
            let _ = p.child.wait();
        }
    }

    /// Resident memory of the appliance process, from /proc.
    fn appliance_rss_kib(&self) -> Option<u64> {
        let p = self.procs.iter().find(|p| p.name == "appliance")?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", p.child.id())).ok()?;
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()
    }

    /// Fails if any child has exited, quoting the end of its log.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.peak_appliance_rss_kib = self.peak_appliance_rss_kib.max(self.appliance_rss_kib().unwrap_or(0));
        for p in &mut self.procs {
            if let Some(status) = p.child.try_wait()? {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                bail!(
                    "{} exited ({status}); last lines of {}:\n{}",
                    p.name,
                    p.log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        Ok(())
    }

    /// Stops VMs first, then the appliance: SIGTERM, then SIGKILL after 5 s,
    /// each to the child's whole process group (the lab UPS's upsd and
    /// driver, `ip netns exec`'s dnsmasq).
    pub fn stop_all(&mut self) {
        for p in self.procs.iter().rev() {
            let _ = killpg(Pid::from_raw(p.child.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for p in self.procs.iter_mut().rev() {
            while Instant::now() < deadline && matches!(p.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(p.child.try_wait(), Ok(None)) {
                let _ = p.child.kill();
            }
            let _ = p.child.wait();
            // Anything the child left in its group goes with it.
            let _ = killpg(Pid::from_raw(p.child.id() as i32), Signal::SIGKILL);
        }
        self.procs.clear();
    }

    pub fn save_state(&self, path: &Path) -> anyhow::Result<()> {
        let saved: Vec<Saved> = self.procs.iter().map(|p| Saved { name: p.name.clone(), pid: p.child.id() }).collect();
        std::fs::write(path, serde_json::to_string_pretty(&saved)?)?;
        Ok(())
    }
}

/// One simulated BMC as `slipway lab vbmc --config` reads it: the JSON
/// shape of `simulators::bmc::BmcConfig` (`hardware-tests` does not depend
/// on `inventory`; `vbmc_entry_has_the_sim_config_shape` pins the fields).
#[derive(Debug, Clone, Serialize)]
pub struct VbmcEntry {
    pub name: String,
    pub listen: std::net::SocketAddr,
    pub qmp: PathBuf,
    pub username: String,
    pub password: String,
    pub smbios: VbmcSmbios,
    pub mac: String,
    pub disk_serial: String,
    /// `pxe` or `disk`: what boots first without an override.
    pub default_boot: &'static str,
    pub uefi: bool,
    pub secure_boot: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct VbmcSmbios {
    pub serial: String,
    pub uuid: String,
    pub manufacturer: String,
    pub product: String,
}

impl VbmcEntry {
    /// The BMC of a node started with `bmc: true`, listening on `listen`.
    pub fn for_node(spec: &NodeSpec, listen: std::net::SocketAddr, username: &str, password: &str) -> VbmcEntry {
        VbmcEntry {
            name: spec.name.clone(),
            listen,
            qmp: spec.qmp_socket(),
            username: username.into(),
            password: password.into(),
            smbios: VbmcSmbios {
                serial: spec.serial.clone(),
                uuid: spec.uuid.clone(),
                manufacturer: SMBIOS_MANUFACTURER.into(),
                product: SMBIOS_PRODUCT.into(),
            },
            mac: spec.mac.clone(),
            disk_serial: spec.disk_serial(),
            default_boot: "pxe",
            uefi: spec.firmware.is_uefi(),
            secure_boot: spec.firmware == crate::lab::qemu::Firmware::SecureBoot,
        }
    }
}

/// Stops processes recorded by `save_state`, if they are still ours (their
/// command line names qemu or slipway: PIDs get reused). Returns how many.
/// Whether any process a kept lab saved is still running.
pub fn any_alive(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let saved: Vec<Saved> = serde_json::from_str(&text).unwrap_or_default();
    saved.iter().any(|s| lab_process(s.pid))
}

/// Whether `pid` is a process a lab starts (its PID may have been reused).
fn lab_process(pid: u32) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    ["qemu-system", "slipway", "dnsmasq", "dhcrelay"].iter().any(|name| cmdline.contains(name))
}

pub fn stop_saved(path: &Path) -> anyhow::Result<usize> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(0);
    };
    let saved: Vec<Saved> = serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
    let mut stopped = 0;
    for s in saved {
        if !lab_process(s.pid) {
            continue;
        }
        let pid = Pid::from_raw(s.pid as i32);
        let _ = killpg(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && Path::new(&format!("/proc/{}", s.pid)).exists() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = killpg(pid, Signal::SIGKILL);
        stopped += 1;
    }
    Ok(stopped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::qemu::Firmware;

    #[test]
    fn vbmc_entry_has_the_sim_config_shape() {
        let spec = NodeSpec::lab_node(1, Firmware::Uefi, 512, Path::new("/lab"));
        let entry = VbmcEntry::for_node(&spec, "10.77.0.1:8002".parse().unwrap(), "admin", "pw");
        let json = serde_json::to_value(&entry).unwrap();
        let expected = serde_json::json!({
            "name": "node2", "listen": "10.77.0.1:8002", "qmp": "/lab/node2.qmp",
            "username": "admin", "password": "pw",
            "smbios": { "serial": "LAB-0002", "uuid": "5f1a0000-0000-4000-8000-000000000002",
                        "manufacturer": "Slipway Lab", "product": "QEMU Lab Node" },
            "mac": "52:54:00:5e:00:02", "disk_serial": "DISK-LAB-0002", "default_boot": "pxe", "uefi": true,
            "secure_boot": false,
        });
        assert_eq!(json, expected);
    }
}
