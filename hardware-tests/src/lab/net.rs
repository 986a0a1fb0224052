//! The lab's network: a namespace with a bridge and taps, made with
//! iproute2. The namespace gets no default route and no link to the host,
//! so lab traffic cannot leave the machine.

use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Moves this thread into an existing namespace; children inherit it.
pub fn enter(name: &str) -> anyhow::Result<()> {
    let file = std::fs::File::open(Path::new("/run/netns").join(name)).context("opening the namespace")?;
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .context("entering the namespace (are you root?)")
}

/// Creates the namespace and moves this thread into it. Call from the main
/// thread before starting children: they inherit the namespace.
pub fn create_and_enter(name: &str) -> anyhow::Result<()> {
    ip(&["netns", "add", name])?;
    enter(name)?;
    ip(&["link", "set", "lo", "up"])
}

/// A bridge, with our address `cidr` on it unless `cidr` is empty.
pub fn setup_bridge(bridge: &str, cidr: &str) -> anyhow::Result<()> {
    ip(&["link", "add", bridge, "type", "bridge"])?;
    if !cidr.is_empty() {
        ip(&["addr", "add", cidr, "dev", bridge])?;
    }
    ip(&["link", "set", bridge, "up"])
}

pub fn add_tap(tap: &str, bridge: &str) -> anyhow::Result<()> {
    ip(&["tuntap", "add", "dev", tap, "mode", "tap"])?;
    ip(&["link", "set", tap, "master", bridge])?;
    ip(&["link", "set", tap, "up"])
}

/// Removes the namespace; its bridge and taps go with it once the last
/// process in it has exited.
pub fn delete(name: &str) -> anyhow::Result<()> {
    ip(&["netns", "del", name])
}

/// A second host on the bridge: namespace `ns` joined by a veth pair
/// (`{prefix}0` on the bridge, `{prefix}1` in `ns` with `cidr`).
pub fn add_host(ns: &str, bridge: &str, prefix: &str, cidr: &str) -> anyhow::Result<()> {
    ip(&["netns", "add", ns])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    add_leg(ns, bridge, prefix, cidr)
}

/// Joins existing namespace `ns` to another bridge the same way.
pub fn add_leg(ns: &str, bridge: &str, prefix: &str, cidr: &str) -> anyhow::Result<()> {
    let (near, far) = (format!("{prefix}0"), format!("{prefix}1"));
    ip(&["link", "add", &near, "type", "veth", "peer", "name", &far, "netns", ns])?;
    ip(&["link", "set", &near, "master", bridge])?;
    ip(&["link", "set", &near, "up"])?;
    ip(&["-n", ns, "addr", "add", cidr, "dev", &far])?;
    ip(&["-n", ns, "link", "set", &far, "up"])
}

/// Lets namespace `ns` route between its legs (the relay host is the
/// rack's router). Only that namespace's setting changes.
pub fn enable_forwarding(ns: &str) -> anyhow::Result<()> {
    sysctl(ns, &["net.ipv4.ip_forward=1"])
}

/// Sets kernel parameters (`name=value`) in namespace `ns` only.
pub fn sysctl(ns: &str, settings: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(["netns", "exec", ns, "sysctl", "-qw"]).args(settings).output()?;
    if !out.status.success() {
        bail!("sysctl in {ns}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Ends every process living in namespace `name` (SIGKILL) and returns how
/// many. Only a lab puts processes there, so this ends only what a lab
/// started: QEMU, the appliance, BMC simulators, dnsmasq or dhcrelay that
/// a killed `lab up` could not stop.
pub fn kill_members(name: &str) -> anyhow::Result<usize> {
    use std::os::unix::fs::MetadataExt;
    let target = std::fs::metadata(Path::new("/run/netns").join(name))
        .with_context(|| format!("reading namespace {name}"))?
        .ino();
    let wanted = format!("net:[{target}]");
    let me = std::process::id();
    let mut killed = 0;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if pid as u32 == me {
            continue;
        }
        let in_ns =
            std::fs::read_link(entry.path().join("ns/net")).is_ok_and(|link| link.as_os_str() == wanted.as_str());
        if in_ns && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).is_ok() {
            killed += 1;
        }
    }
    Ok(killed)
}
