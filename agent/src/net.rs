//! Brings up the NIC the machine booted from, with busybox `udhcpc`.

use std::process::Command;

/// Finds the interface with `mac`, sets it up and leases an address.
pub fn bring_up(mac: inventory::MacAddr) -> Result<(), String> {
    let iface = std::fs::read_dir("/sys/class/net")
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| {
            std::fs::read_to_string(format!("/sys/class/net/{name}/address")).is_ok_and(|a| a.parse() == Ok(mac))
        })
        .ok_or_else(|| format!("no interface has MAC {mac} (driver not loaded?)"))?;
    run("ip", &["link", "set", &iface, "up"])?;
    // -n: fail instead of backgrounding; -q: exit once bound; retries 10 x 2 s.
    run("udhcpc", &["-i", &iface, "-n", "-q", "-t", "10", "-T", "2", "-s", "/usr/share/udhcpc/default.script"])
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let status = Command::new(cmd).args(args).status().map_err(|e| format!("{cmd}: {e}"))?;
    status.success().then_some(()).ok_or_else(|| format!("{cmd} {}: {status}", args.join(" ")))
}
