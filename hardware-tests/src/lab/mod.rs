//! `slipway lab up` / `slipway lab down`.

mod attack;
mod campaign;
pub mod net;
mod oob;
mod procs;
mod qemu;
mod refresh;
mod report;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

pub use oob::{ups_dir, LAB_RACK, LAB_UPS};
pub use qemu::{Accel, Firmware};
pub use report::{LabReport, NodeReport};

use procs::Children;

/// The lab's namespace; one lab at a time per machine.
pub const NETNS: &str = "slipway-lab";
/// `--dhcp proxy`: the "existing" DHCP server (dnsmasq) lives here, a
/// second host on the lab bridge.
pub const DHCP_NETNS: &str = "slipway-lab-dhcp";
const DHCP_SERVER_IP: &str = "10.77.0.2";
/// `--dhcp relay`: the VMs sit on a second bridge (a second rack, 10.78.0.0/24)
/// behind ISC dhcrelay on a router host joining both bridges.
pub const RELAY_NETNS: &str = "slipway-lab-relay";
const RACK_BRIDGE: &str = "slbr1";
const RELAY_UPLINK: &str = "10.77.0.3";
const RELAY_RACK_IP: &str = "10.78.0.1";
/// Where a lab keeps its config, logs, disks and (when kept) its state.
pub const WORK_DIR: &str = "/run/slipway-lab";
const BRIDGE: &str = "slbr0";
const SERVER_IP: &str = "10.77.0.1";
const API: &str = "http://127.0.0.1:8080";

/// `--firmware mixed`: every firmware path, in the order the nodes get
/// them (three nodes: BIOS, UEFI and Secure Boot).
pub const MIXED: [Firmware; 5] =
    [Firmware::Bios, Firmware::Uefi, Firmware::SecureBoot, Firmware::PxeUefi, Firmware::HttpUefi];

/// Who hands out addresses on the lab network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DhcpChoice {
    /// Slipway.
    Authoritative,
    /// dnsmasq on another host of the bridge; Slipway is proxyDHCP.
    Proxy,
    /// VMs on a second bridge behind a DHCP relay and router.
    Relay,
}

#[derive(Debug, Clone)]
pub struct LabOptions {
    pub nodes: usize,
    pub dhcp: DhcpChoice,
    /// The nodes' firmware, cycled through (node 1 gets the first).
    pub firmware: Vec<Firmware>,
    pub report: Option<PathBuf>,
    pub keep: bool,
    /// Give up on nodes not ready after this long.
    pub timeout: Duration,
    pub accel: Option<Accel>,
    pub memory_mib: u32,
    /// The `slipway` binary to run as the appliance (normally this one).
    pub slipway_bin: PathBuf,
    /// Where the discovery ramdisk is cached.
    pub cache_dir: PathBuf,
    /// After discovery, deploy this to every node: `lab-tiny` (built here)
    /// or an image file (raw, `.zst` for raw+zstd, `.qcow2`).
    pub deploy: Option<String>,
    /// After the deploy, release every node (Slipway reboots it into the
    /// ramdisk through its BMC to wipe it) and wait until it is `ready`.
    pub release: bool,
    /// After the deploy, reset each UEFI node's NVRAM (boot entries gone)
    /// with the VM off, power it on and wait for its disk to boot again.
    pub reset_nvram: bool,
    /// After the release, deploy the image again and wait for each disk
    /// to boot.
    pub redeploy: bool,
    /// Once ready, roll this BIOS version across the rack with a firmware
    /// campaign (one node at a time), switching the UPS to battery and back
    /// mid-way.
    pub firmware_campaign: Option<String>,
    /// With `--deploy`: while the nodes deploy, a hostile host on the
    /// provisioning bridge attacks the appliance and the first node
    /// (`slipway lab attack`); the report says what each attack got.
    pub attack: bool,
    /// With `--deploy lab-debian`: once the Swarm is formed, an OS-refresh
    /// campaign to lab-debian release 2 (UPS to battery and back mid-way),
    /// then one to an image that cannot boot (rolled back, paused).
    pub os_refresh: bool,
}

/// Brings the lab up, waits for every node to be `ready`, writes the
/// report, and tears everything down unless `keep` is set. Errors (and
/// Ctrl-C) tear down too.
pub fn up(opts: &LabOptions) -> anyhow::Result<LabReport> {
    if opts.nodes == 0 || opts.nodes > 64 {
        bail!("--nodes must be 1..=64");
    }
    if opts.firmware.is_empty() {
        bail!("no firmware given for the nodes");
    }
    qemu::check_prerequisites(opts.nodes, opts.firmware.iter().any(|f| f.is_uefi()))?;
    if opts.attack && opts.deploy.is_none() {
        bail!("--attack needs --deploy (the attack runs while the nodes deploy)");
    }
    if opts.os_refresh && opts.deploy.as_deref() != Some("lab-debian") {
        bail!("--os-refresh needs --deploy lab-debian (a Swarm to refresh)");
    }
    if opts.dhcp == DhcpChoice::Proxy && !Path::new("/usr/sbin/dnsmasq").exists() {
        bail!("--dhcp proxy needs dnsmasq as the network's DHCP server (apt-get install dnsmasq-base)");
    }
    if opts.dhcp == DhcpChoice::Relay && !Path::new("/usr/sbin/dhcrelay").exists() {
        bail!("--dhcp relay needs ISC dhcrelay (apt-get install isc-dhcp-relay)");
    }
    let _claim = claim()?;
    if net::netns_exists(NETNS) {
        if procs::any_alive(&Path::new(WORK_DIR).join("state.json")) {
            bail!("a lab kept with --keep is up (namespace {NETNS}); run `slipway lab down` first");
        }
        // No `lab up` holds the claim and nothing was kept: a killed lab
        // (SIGKILL, a power cut) left this behind.
        let (stopped, namespaces) = clear()?;
        progress(&format!("cleared what a killed lab left: {stopped} processes, {namespaces} namespaces"));
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    // Ctrl-C and SIGTERM only set a flag; the wait loop sees it and returns
    // an error, and the guards below tear everything down.
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));

    progress(&format!("preparing the discovery ramdisk (cache {})", opts.cache_dir.display()));
    let agent = opts.slipway_bin.with_file_name("slipway-agent");
    let ramdisk =
        images::ensure_ramdisk(&images::RamdiskInputs { agent_binary: agent, cache_dir: opts.cache_dir.clone() })
            .context("building the discovery ramdisk")?;
    progress(&format!(
        "ramdisk {} ready: kernel {} ({:.1} MiB), initrd {:.1} MiB",
        ramdisk.key,
        ramdisk.kernel_release,
        mib(ramdisk.kernel_bytes),
        mib(ramdisk.initrd_bytes)
    ));

    let deploy_image = opts.deploy.as_deref().map(|image| prepare_image(image, &ramdisk, opts)).transpose()?;
    let refresh_images = match &deploy_image {
        Some(base) if opts.os_refresh => Some(refresh::prepare(&base.path)?),
        _ => None,
    };

    let work = Path::new(WORK_DIR);
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).with_context(|| format!("creating {WORK_DIR}"))?;
    let accel = opts.accel.unwrap_or_else(qemu::detect_accel);

    // From here on, `lab` tears down whatever was set up when dropped.
    let mut lab =
        Lab { children: Children::default(), netns: false, extra_netns: vec![], keep: false, succeeded: false };
    net::create_and_enter(NETNS)?;
    lab.netns = true;
    net::setup_bridge(BRIDGE, &format!("{SERVER_IP}/24"))?;
    let mut vm_bridge = BRIDGE;
    match opts.dhcp {
        DhcpChoice::Authoritative => {}
        DhcpChoice::Proxy => {
            lab.extra_netns.push(DHCP_NETNS);
            net::add_host(DHCP_NETNS, BRIDGE, "sldhcp", &format!("{DHCP_SERVER_IP}/24"))?;
            lab.children.spawn_dnsmasq(DHCP_NETNS, "sldhcp1", work)?;
            progress(&format!("dnsmasq hands out addresses from {DHCP_SERVER_IP}; Slipway answers as proxyDHCP"));
        }
        DhcpChoice::Relay => {
            lab.extra_netns.push(RELAY_NETNS);
            net::setup_bridge(RACK_BRIDGE, "")?;
            net::add_host(RELAY_NETNS, BRIDGE, "slrly", &format!("{RELAY_UPLINK}/24"))?;
            net::add_leg(RELAY_NETNS, RACK_BRIDGE, "slrlb", &format!("{RELAY_RACK_IP}/24"))?;
            net::enable_forwarding(RELAY_NETNS)?;
            net::ip(&["route", "add", "10.78.0.0/24", "via", RELAY_UPLINK])?;
            lab.children.spawn_dhcrelay(RELAY_NETNS, "slrly1", "slrlb1", SERVER_IP, work)?;
            vm_bridge = RACK_BRIDGE;
            progress(&format!("VMs on rack bridge {RACK_BRIDGE} (10.78.0.0/24) behind dhcrelay at {RELAY_RACK_IP}"));
        }
    }

    let token = random_hex();
    let config = work.join("slipway.toml");
    std::fs::write(&config, lab_config(work, &ramdisk.dir, &opts.cache_dir, opts.dhcp))?;
    std::fs::write(work.join("admin-token"), &token)?;
    lab.children.spawn_appliance(&opts.slipway_bin, &config, &token, &work.join("serve.log"))?;
    let client = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
    wait_for_health(&client, &mut lab.children, &interrupted)?;
    progress(&format!("appliance serving in namespace {NETNS} on {SERVER_IP} ({} accel)", accel.name()));

    let memory_mib = match opts.deploy.as_deref() {
        Some("lab-debian") => opts.memory_mib.max(LAB_DEBIAN_MIN_MEMORY_MIB),
        _ => opts.memory_mib,
    };
    // Every VM starts powered off behind its own simulated BMC; Slipway
    // powers it on through that BMC once the BMC is enrolled.
    let mut specs = Vec::new();
    for i in 0..opts.nodes {
        let mut spec = qemu::NodeSpec::lab_node(i, opts.firmware[i % opts.firmware.len()], memory_mib, work);
        spec.bmc = true;
        net::add_tap(&spec.tap, vm_bridge)?;
        spec.prepare_disks()?;
        lab.children.spawn_vm(&spec, accel)?;
        specs.push(spec);
    }
    let bmc_password = random_hex();
    oob::start_bmcs(&mut lab.children, &specs, &opts.slipway_bin, work, &bmc_password)?;
    let ups = oob::start_ups(&mut lab.children, &opts.slipway_bin, work)?;
    let mut nodes = Vec::new();
    for (i, spec) in specs.into_iter().enumerate() {
        let started_ms = now_ms();
        oob::enrol_and_power_on(&client, &token, i + 1, &bmc_password)?;
        progress(&format!(
            "{} ({}, {}, {} MiB, {} GiB disk): BMC {} enrolled, powered on through it (PXE once)",
            spec.name,
            spec.mac,
            spec.firmware.name(),
            spec.memory_mib,
            spec.disk_gib,
            oob::bmc_url(i + 1),
        ));
        nodes.push((spec, started_ms));
    }
    let ups_state = oob::enrol_ups(&client, &token, &ups)?;
    progress(&format!("lab UPS {} enrolled: {}", oob::LAB_UPS, ups_state["state"]["status"]));

    let started = Instant::now();
    let mut watch = Watch {
        client: &client,
        token: &token,
        nodes: &nodes,
        children: &mut lab.children,
        interrupted: &interrupted,
        started,
        accel,
        cache_dir: &opts.cache_dir,
    };
    let mut outcome = watch.until_all("ready", opts.timeout);
    let mut disk_boots = report::DiskBoots::new(nodes.len());
    let mut refused_deploys = vec![];
    let mut attack_report = None;
    if let (Ok(()), Some(image)) = (&outcome, &deploy_image) {
        outcome = refuse_bios_only_on_uefi(&mut watch, &mut refused_deploys);
        let mut attacker = None;
        if outcome.is_ok() && opts.attack {
            lab.extra_netns.extend([attack::ATTACK_NETNS, attack::ROGUE_NETNS]);
            match attack::start(&watch, &opts.slipway_bin, work, &nodes[0].0.mac) {
                Ok(running) => attacker = Some(running),
                Err(err) => outcome = Err(err),
            }
        }
        if outcome.is_ok() {
            outcome = deploy_all(&mut watch, image, opts, &mut disk_boots);
        }
        if let (Ok(()), Some(running)) = (&outcome, attacker) {
            match attack::finish(&watch, work, running) {
                Ok(facts) => attack_report = Some(facts),
                Err(err) => outcome = Err(err),
            }
        }
        if outcome.is_ok() && opts.release {
            outcome = release_all(&mut watch, opts.timeout);
        }
        if outcome.is_ok() && opts.redeploy {
            outcome = redeploy_all(&mut watch, image, opts, &mut disk_boots);
        }
    }
    let mut campaign = None;
    if let (Ok(()), Some(version)) = (&outcome, &opts.firmware_campaign) {
        match campaign::firmware(&mut watch, version, &opts.slipway_bin, opts.timeout) {
            Ok(facts) => campaign = Some(facts),
            Err(err) => outcome = Err(err),
        }
    }
    let mut refreshes = refresh::Outcome::default();
    if let (Ok(()), Some(images)) = (&outcome, &refresh_images) {
        outcome = refresh::run(&mut watch, images, opts, &mut refreshes);
    }
    let mut report = report::build(&client, API, &token, &nodes, accel, &ramdisk, &disk_boots)?;
    report.appliance_peak_rss_kib = lab.children.peak_appliance_rss_kib;
    report.refused_deploys = refused_deploys;
    report.attack = attack_report;
    report.campaign = campaign;
    report.os_refresh = refreshes.release;
    report.broken_refresh = refreshes.broken;
    if opts.deploy.as_deref() == Some("lab-debian") {
        report.cluster = watch_cluster(&client, &token);
    }
    if let Some(path) = &opts.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    say(&report::summary(&report));
    outcome?;
    lab.succeeded = true;
    if opts.keep {
        lab.keep = true;
        lab.children.save_state(&work.join("state.json"))?;
        say(&format!(
            "\nThe lab is kept. Reach the API with:\n  ip netns exec {NETNS} curl -s -H \"Authorization: Bearer $(cat {WORK_DIR}/admin-token)\" {API}/api/v1/machines\nTear it down with: slipway lab down"
        ));
    }
    Ok(report)
}

/// Tears down a lab kept with `--keep` (or left by a killed `lab up`).
pub fn down() -> anyhow::Result<()> {
    let (stopped, namespaces) = clear()?;
    println!("lab down: stopped {stopped} processes, removed {namespaces} namespaces");
    Ok(())
}

/// Stops a kept lab's processes and whatever still lives in the lab's
/// namespaces, removes them and the work directory. Returns the processes
/// stopped and the namespaces removed.
fn clear() -> anyhow::Result<(usize, usize)> {
    let mut stopped = procs::stop_saved(&Path::new(WORK_DIR).join("state.json"))?;
    let mut namespaces = 0;
    for ns in [NETNS, DHCP_NETNS, RELAY_NETNS, attack::ATTACK_NETNS, attack::ROGUE_NETNS] {
        if net::netns_exists(ns) {
            stopped += net::kill_members(ns)?;
            net::delete(ns)?;
            namespaces += 1;
        }
    }
    let _ = std::fs::remove_dir_all(WORK_DIR);
    Ok((stopped, namespaces))
}

/// Held by a running `lab up` (an advisory lock the kernel drops when the
/// process dies, however it dies), so a second `lab up` can tell a running
/// lab from the leftovers of a killed one.
fn claim() -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    const CLAIM: &str = "/run/slipway-lab.lock";
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(CLAIM)
        .with_context(|| format!("opening {CLAIM}"))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(claim) => Ok(claim),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            bail!("a lab is already up: another `slipway lab up` holds {CLAIM}")
        }
        Err((_, err)) => Err(err).with_context(|| format!("locking {CLAIM}")),
    }
}

/// Owns what `up` created; dropping it tears the lab down unless kept.
struct Lab {
    children: Children,
    netns: bool,
    /// Other hosts' namespaces (DHCP server, relay) created for this lab.
    extra_netns: Vec<&'static str>,
    keep: bool,
    /// On failure the work directory (logs, serial consoles) is kept.
    succeeded: bool,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        self.children.stop_all();
        let ours = self.netns.then_some(NETNS).into_iter().chain(self.extra_netns.iter().copied());
        for ns in ours {
            if let Err(err) = net::delete(ns) {
                eprintln!("lab: removing namespace {ns}: {err:#}");
            }
        }
        if self.succeeded {
            let _ = std::fs::remove_dir_all(WORK_DIR);
        } else {
            eprintln!("lab: logs and serial consoles are in {WORK_DIR}");
        }
    }
}

/// `path` where the appliance may import it from: as it is when it lies in
/// the cache (the import directory), else a copy there.
fn importable(cache_dir: &Path, path: &Path) -> anyhow::Result<PathBuf> {
    let real = path.canonicalize().with_context(|| format!("reading {}", path.display()))?;
    if real.starts_with(cache_dir.canonicalize()?) {
        return Ok(real);
    }
    let dir = cache_dir.join("lab-import");
    std::fs::create_dir_all(&dir)?;
    let copy = dir.join(real.file_name().context("an image file name")?);
    progress(&format!("copying {} into the import directory {}", path.display(), dir.display()));
    std::fs::copy(&real, &copy).with_context(|| format!("copying {} to {}", real.display(), copy.display()))?;
    Ok(copy)
}

/// The appliance's configuration. Its import directory is the cache,
/// where the lab's images are built.
fn lab_config(work: &Path, ramdisk_dir: &Path, cache_dir: &Path, dhcp: DhcpChoice) -> String {
    let (mode, relay_subnets) = match dhcp {
        DhcpChoice::Authoritative => ("authoritative", ""),
        DhcpChoice::Proxy => ("proxy", ""),
        DhcpChoice::Relay => (
            "authoritative",
            r#"relay_subnets = [{ subnet = "10.78.0.0/24", pool_start = "10.78.0.100", pool_end = "10.78.0.199", router = "10.78.0.1" }]"#,
        ),
    };
    format!(
        r#"data_dir = "{data}"
import_dir = "{import}"
log_format = "json"

[api]
listen = "127.0.0.1:8080"

[provisioning]
interface = "{BRIDGE}"
dhcp_mode = "{mode}"
address = "{SERVER_IP}"
prefix_len = 24
pool_start = "10.77.0.100"
pool_end = "10.77.0.199"
lease_secs = 3600
discovery_timeout_secs = 900
{relay_subnets}

[boot]
ramdisk_dir = "{ramdisk}"
"#,
        data = work.join("data").display(),
        import = cache_dir.display(),
        ramdisk = ramdisk_dir.display(),
    )
}

fn wait_for_health(client: &ureq::Agent, children: &mut Children, interrupted: &AtomicBool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if interrupted.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        children.check_alive()?;
        if client.get(&format!("{API}/healthz")).call().is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("the appliance did not answer /healthz within 60 s; see {WORK_DIR}/serve.log")
}

/// What the wait loops need: the API, the nodes, and the processes and
/// Ctrl-C flag to check while waiting.
struct Watch<'a> {
    client: &'a ureq::Agent,
    token: &'a str,
    nodes: &'a [(qemu::NodeSpec, i64)],
    children: &'a mut Children,
    interrupted: &'a AtomicBool,
    started: Instant,
    accel: Accel,
    /// The appliance's import directory: images are registered from here.
    cache_dir: &'a Path,
}

impl Watch<'_> {
    fn check(&mut self) -> anyhow::Result<()> {
        if self.interrupted.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        self.children.check_alive()
    }

    fn api(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self
            .client
            .get(&format!("{API}{path}"))
            .set("Authorization", &format!("Bearer {}", self.token))
            .call()
            .with_context(|| format!("GET {path}"))?
            .into_json()?)
    }

    fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        api_post(self.client, self.token, path, body)
    }

    /// Waits until every node's machine is in `target`, printing changes; a
    /// node that fails ends the wait with its reason.
    fn until_all(&mut self, target: &str, timeout: Duration) -> anyhow::Result<()> {
        let nodes = self.nodes;
        let mut last: Vec<String> = nodes.iter().map(|_| String::new()).collect();
        let mut last_line = Instant::now();
        let began = Instant::now();
        loop {
            self.check()?;
            let machines = self.api("/api/v1/machines")?;
            for (i, (spec, _)) in nodes.iter().enumerate() {
                let machine = report::machine_for(&machines, &spec.mac);
                let state = machine.and_then(|m| m["state"].as_str()).unwrap_or("booting").to_string();
                if state != last[i] && !last[i].is_empty() {
                    progress_at(self.started, &format!("{} {}: {} -> {}", spec.name, spec.mac, last[i], state));
                }
                if state == "failed" && target != "failed" {
                    let failure = machine.map(|m| m["failure"].to_string()).unwrap_or_default();
                    bail!("{} failed while waiting for {target}: {failure}", spec.name);
                }
                last[i] = state;
            }
            if last.iter().all(|s| target.split('|').any(|t| t == s)) {
                return Ok(());
            }
            if began.elapsed() > timeout {
                bail!(
                    "not every node was {target} after {} s: {:?} (serial logs in {WORK_DIR})",
                    timeout.as_secs(),
                    last
                );
            }
            if last_line.elapsed() > Duration::from_secs(15) {
                let done = last.iter().filter(|s| target.split('|').any(|t| t == s.as_str())).count();
                progress_at(self.started, &format!("waiting: {done}/{} {target}", nodes.len()));
                last_line = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Releases every node and waits until each is wiped and `ready` again:
/// Slipway network-boots each through its BMC; nobody touches a VM.
fn release_all(watch: &mut Watch, timeout: Duration) -> anyhow::Result<()> {
    let machines = watch.api("/api/v1/machines")?;
    for (spec, _) in watch.nodes {
        let id = report::machine_for(&machines, &spec.mac).and_then(|m| m["id"].as_str()).context("a node vanished")?;
        watch.post(&format!("/api/v1/machines/{id}/release"), &serde_json::json!({ "wipe": "quick" }))?;
        progress_at(watch.started, &format!("{}: releasing (wipe, through its BMC)", spec.name));
    }
    watch.until_all("ready", timeout)
}

/// POSTs JSON to the lab appliance's API as the admin.
fn api_post(client: &ureq::Agent, token: &str, path: &str, body: &Value) -> anyhow::Result<Value> {
    let resp = client.post(&format!("{API}{path}")).set("Authorization", &format!("Bearer {token}")).send_json(body);
    match resp {
        Ok(resp) => Ok(resp.into_json()?),
        Err(ureq::Error::Status(code, resp)) => {
            bail!("POST {path}: HTTP {code}: {}", resp.into_string().unwrap_or_default())
        }
        Err(err) => Err(err).with_context(|| format!("POST {path}")),
    }
}

impl DeployImage {
    /// The console line that shows `spec` runs this image.
    fn console_line(&self, marker: &str, spec: &qemu::NodeSpec) -> String {
        if self.marker_has_hostname {
            format!("{marker} {} ", spec.name)
        } else {
            marker.to_string()
        }
    }
}

/// An image ready to register: built (lab-tiny, lab-debian) or given.
struct DeployImage {
    name: String,
    path: PathBuf,
    format: &'static str,
    /// The console line that shows a node runs it, when the image is ours.
    marker: Option<&'static str>,
    /// The console line carries the node's host name after the marker
    /// (written by first-boot configuration), which is checked too.
    marker_has_hostname: bool,
    /// The join spec every node is deployed with; the lab then waits
    /// until each is `joined`.
    cluster: Option<Value>,
}

/// The Swarm `--deploy lab-debian` forms: Slipway creates it on the first
/// node to report and hands its token to the rest.
pub const LAB_CLUSTER: &str = "lab";
/// A node running Docker wants more than the ramdisk's 512 MiB.
const LAB_DEBIAN_MIN_MEMORY_MIB: u32 = 1024;

/// Builds or finds the image for `--deploy`; runs before the lab enters its
/// namespace, where there is no route to Debian's mirror.
fn prepare_image(image: &str, ramdisk: &images::Ramdisk, opts: &LabOptions) -> anyhow::Result<DeployImage> {
    Ok(match image {
        "lab-tiny" => {
            progress("building the lab-tiny disk image (cached)");
            let path = crate::lab_image::ensure_lab_tiny(ramdisk, &opts.cache_dir).map_err(anyhow::Error::msg)?;
            DeployImage {
                name: "lab-tiny".into(),
                path,
                format: "raw",
                marker: Some(crate::lab_image::DISK_BOOT_MARKER),
                marker_has_hostname: false,
                cluster: None,
            }
        }
        "lab-debian" => {
            progress("building lab-debian from Debian packages (cached; a few minutes the first time)");
            let built = crate::lab_debian::ensure_lab_debian(&opts.cache_dir, &mut |step| {
                progress(&format!("lab-debian: {step}"))
            })
            .map_err(anyhow::Error::msg)?;
            progress(&format!(
                "lab-debian: {} MiB raw, {} MiB stored",
                built.imported.raw_bytes >> 20,
                built.imported.stored_bytes >> 20
            ));
            DeployImage {
                name: "lab-debian".into(),
                path: built.path,
                format: "raw+zstd",
                marker: Some(crate::lab_debian::BOOTED_MARKER),
                marker_has_hostname: true,
                // Three managers: Raft keeps a quorum while one is away
                // (an OS refresh reinstalls one node at a time).
                cluster: Some(serde_json::json!({ "kind": "swarm", "cluster": LAB_CLUSTER, "role": "manager" })),
            }
        }
        file => {
            let path = std::fs::canonicalize(file)
                .with_context(|| format!("--deploy {file}: not lab-tiny, lab-debian or a file"))?;
            let format = match path.extension().and_then(|e| e.to_str()) {
                Some("qcow2") => "qcow2",
                Some("zst") => "raw+zstd",
                _ => "raw",
            };
            let stem =
                path.file_name().and_then(|n| n.to_str()).unwrap_or("image").split('.').next().unwrap_or("image");
            let name: String =
                stem.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
            DeployImage { name, path, format, marker: None, marker_has_hostname: false, cluster: None }
        }
    })
}

/// Registers an image file through the API and waits until the appliance
/// has imported it.
fn register_image(watch: &mut Watch, name: &str, version: &str, format: &str, path: &Path) -> anyhow::Result<()> {
    let path = importable(watch.cache_dir, path)?;
    let body =
        serde_json::json!({ "name": name, "os": "lab", "version": version, "format": format, "source_path": path });
    watch.post("/api/v1/images", &body)?;
    let began = Instant::now();
    loop {
        watch.check()?;
        let img = watch.api(&format!("/api/v1/images/{name}"))?;
        match img["state"].as_str() {
            Some("available") => {
                progress_at(
                    watch.started,
                    &format!(
                        "image {name} available: {} bytes, sha256 {}",
                        img["raw_bytes"],
                        img["sha256"].as_str().unwrap_or("?")
                    ),
                );
                return Ok(());
            }
            Some("failed") => bail!("importing {}: {}", path.display(), img["error"]),
            _ if began.elapsed() > Duration::from_secs(600) => {
                bail!("importing {} took over 10 minutes", path.display())
            }
            _ => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

/// Before the real deploy: an image that boots only under BIOS (MBR boot
/// code, no EFI System Partition) is offered to every node whose agent saw
/// UEFI firmware, and each must refuse it with a 422 naming both; the node
/// stays ready. Returns nothing when no node is UEFI.
fn refuse_bios_only_on_uefi(watch: &mut Watch, refused: &mut Vec<Value>) -> anyhow::Result<()> {
    const NAME: &str = "lab-bios-only";
    let machines = watch.api("/api/v1/machines")?;
    let uefi: Vec<(String, String)> = watch
        .nodes
        .iter()
        .filter_map(|(spec, _)| {
            let machine = report::machine_for(&machines, &spec.mac)?;
            (machine["inventory"]["firmware"]["mode"] == "uefi")
                .then(|| (spec.name.clone(), machine["id"].as_str().unwrap_or_default().to_string()))
        })
        .collect();
    if uefi.is_empty() {
        return Ok(());
    }
    let path = watch.cache_dir.join(format!("{NAME}.raw"));
    let mut disk = vec![0u8; 1 << 20];
    disk[..440].copy_from_slice(&std::fs::read("/usr/lib/syslinux/mbr/mbr.bin")?[..440]);
    disk[510..512].copy_from_slice(&[0x55, 0xAA]);
    std::fs::write(&path, &disk)?;
    register_image(watch, NAME, "1", "raw", &path)?;
    for (node, id) in uefi {
        let request = serde_json::json!({ "image": NAME, "hostname": node });
        let answer = watch
            .client
            .post(&format!("{API}/api/v1/machines/{id}/deploy"))
            .set("Authorization", &format!("Bearer {}", watch.token))
            .send_json(&request);
        let (status, body) = match answer {
            Ok(resp) => (resp.status(), resp.into_json::<Value>().unwrap_or_default()),
            Err(ureq::Error::Status(code, resp)) => (code, resp.into_json::<Value>().unwrap_or_default()),
            Err(err) => return Err(err).context("POST deploy of the BIOS-only image"),
        };
        if status != 422 {
            bail!("{node} (UEFI): deploying a BIOS-only image answered {status}, not 422: {body}");
        }
        progress_at(watch.started, &format!("{node}: BIOS-only image refused ({status}): {}", body["detail"]));
        refused.push(
            serde_json::json!({ "node": node, "status": status, "field": body["field"], "detail": body["detail"] }),
        );
    }
    Ok(())
}

/// Registers the image, deploys it to every node, waits until each is
/// `deployed` and (for lab-tiny) has booted its disk.
/// How often `line` appears on `spec`'s console so far.
fn console_count(spec: &qemu::NodeSpec, line: &str) -> usize {
    String::from_utf8_lossy(&std::fs::read(spec.serial_log()).unwrap_or_default()).matches(line).count()
}

/// Waits until each node in `which` shows `wanted` on its console once
/// more than `seen[i]` times (its console before this boot), noting when
/// in `boot_ms`.
fn wait_for_disk_boots(
    watch: &mut Watch,
    which: &[usize],
    wanted: &dyn Fn(&qemu::NodeSpec) -> String,
    seen: &[usize],
    timeout: Duration,
    boot_ms: &mut [Option<i64>],
    note: &str,
) -> anyhow::Result<()> {
    let began = Instant::now();
    while which.iter().any(|&i| boot_ms[i].is_none()) {
        watch.check()?;
        for &i in which {
            let spec = &watch.nodes[i].0;
            if boot_ms[i].is_none() && console_count(spec, &wanted(spec)) > seen[i] {
                boot_ms[i] = Some(now_ms());
                progress_at(watch.started, &format!("{}: {note}", spec.name));
            }
        }
        if began.elapsed() > timeout {
            bail!("not every node {note} within {} s (serial logs in {WORK_DIR})", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

/// What an operator's "reset BIOS settings" or a flat CMOS battery does to
/// UEFI boot entries: each node's VM is stopped (the power cut), its
/// variable store replaced by the firmware's defaults, and it is started
/// off and powered on through Slipway and its BMC, network first as
/// before. Only the image's removable-media path can boot it now.
fn reset_nvram(watch: &mut Watch, which: &[usize]) -> anyhow::Result<()> {
    let machines = watch.api("/api/v1/machines")?;
    for &i in which {
        let spec = &watch.nodes[i].0;
        watch.children.stop_vm(&spec.name);
        spec.reset_vars()?;
        watch.children.spawn_vm(spec, watch.accel)?;
        let id = report::machine_for(&machines, &spec.mac).and_then(|m| m["id"].as_str()).context("a node vanished")?;
        // The BMC's QMP connection went with the old VM: its first try may
        // fail while it reconnects.
        let power_on = |_| watch.post(&format!("/api/v1/machines/{id}/power"), &serde_json::json!({ "action": "on" }));
        retry(3, Duration::from_secs(2), power_on)?;
        progress_at(watch.started, &format!("{}: NVRAM reset to the firmware's defaults, powered on", spec.name));
    }
    Ok(())
}

/// `f` until it succeeds, at most `tries` times, `pause` apart.
fn retry<T>(tries: u32, pause: Duration, mut f: impl FnMut(u32) -> anyhow::Result<T>) -> anyhow::Result<T> {
    let mut attempt = 1;
    loop {
        match f(attempt) {
            Err(_) if attempt < tries => std::thread::sleep(pause),
            result => return result,
        }
        attempt += 1;
    }
}

/// Asks for `image` on every node and waits until each is written.
fn deploy_nodes(watch: &mut Watch, image: &DeployImage, opts: &LabOptions) -> anyhow::Result<()> {
    let (name, cluster) = (&image.name, &image.cluster);
    let machines = watch.api("/api/v1/machines")?;
    for (spec, _) in watch.nodes {
        let id = report::machine_for(&machines, &spec.mac)
            .and_then(|m| m["id"].as_str())
            .context("a ready node vanished")?;
        let mut request = serde_json::json!({ "image": name, "hostname": spec.name });
        if let Some(cluster) = cluster {
            request["cluster"] = cluster.clone();
        }
        watch.post(&format!("/api/v1/machines/{id}/deploy"), &request)?;
        progress_at(watch.started, &format!("{}: deploying {name}", spec.name));
    }
    // With a join spec a node moves on from `deployed` by itself.
    watch.until_all(if cluster.is_some() { "deployed|joined" } else { "deployed" }, opts.timeout)
}

/// [`deploy_nodes`], then waits until each node's console shows the
/// image running from its disk (when we know what that looks like).
fn deploy_and_boot(
    watch: &mut Watch,
    image: &DeployImage,
    opts: &LabOptions,
    boot_ms: &mut [Option<i64>],
    note: &str,
) -> anyhow::Result<()> {
    let wanted = |spec: &qemu::NodeSpec| image.marker.map(|marker| image.console_line(marker, spec));
    // A redeployed node's console still shows its last disk boot.
    let seen: Vec<usize> =
        watch.nodes.iter().map(|(spec, _)| wanted(spec).map_or(0, |line| console_count(spec, &line))).collect();
    deploy_nodes(watch, image, opts)?;
    let Some(marker) = image.marker else { return Ok(()) };
    let all: Vec<usize> = (0..watch.nodes.len()).collect();
    wait_for_disk_boots(watch, &all, &|spec| image.console_line(marker, spec), &seen, opts.timeout, boot_ms, note)
}

/// After a release: the same image again on every node, each booting its
/// disk once more.
fn redeploy_all(
    watch: &mut Watch,
    image: &DeployImage,
    opts: &LabOptions,
    disk_boots: &mut report::DiskBoots,
) -> anyhow::Result<()> {
    let note = format!("booted {} from its disk again, redeployed", image.name);
    deploy_and_boot(watch, image, opts, &mut disk_boots.after_redeploy, &note)
}

fn deploy_all(
    watch: &mut Watch,
    image: &DeployImage,
    opts: &LabOptions,
    disk_boots: &mut report::DiskBoots,
) -> anyhow::Result<()> {
    let DeployImage { name, path, format, marker, cluster, .. } = image;
    register_image(watch, name, "1", format, path)?;
    deploy_and_boot(watch, image, opts, &mut disk_boots.first, &format!("booted {name} from its disk"))?;
    let Some(marker) = marker else {
        return Ok(());
    };
    let wanted = |spec: &qemu::NodeSpec| image.console_line(marker, spec);
    if opts.reset_nvram {
        let uefi: Vec<usize> = (0..watch.nodes.len()).filter(|&i| watch.nodes[i].0.firmware.is_uefi()).collect();
        reset_nvram(watch, &uefi)?;
        let note = format!("booted {name} from its disk after the NVRAM reset");
        // The restarted VM's console starts empty.
        let seen = vec![0; watch.nodes.len()];
        wait_for_disk_boots(watch, &uefi, &wanted, &seen, opts.timeout, &mut disk_boots.after_nvram_reset, &note)?;
    }
    if cluster.is_some() {
        watch.until_all("joined", opts.timeout)?;
        wait_for_members(watch, opts.timeout)?;
    }
    Ok(())
}

/// Waits until the cluster's manager reports every node `Ready`: the
/// cluster's own view, not only each node's.
fn wait_for_members(watch: &mut Watch, timeout: Duration) -> anyhow::Result<()> {
    let began = Instant::now();
    loop {
        watch.check()?;
        let cluster = watch.api(&format!("/api/v1/clusters/{LAB_CLUSTER}"))?;
        let members = cluster["members"].as_array().cloned().unwrap_or_default();
        let ready = members.iter().filter(|m| m["status"] == "Ready").count();
        if ready == watch.nodes.len() {
            progress_at(watch.started, &format!("cluster {LAB_CLUSTER}: its manager sees {ready} nodes Ready"));
            return Ok(());
        }
        if began.elapsed() > timeout {
            bail!(
                "cluster {LAB_CLUSTER}: {ready}/{} nodes Ready after {} s: {cluster}",
                watch.nodes.len(),
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The lab cluster as the API shows it, for the report.
fn watch_cluster(client: &ureq::Agent, token: &str) -> Option<Value> {
    let url = format!("{API}/api/v1/clusters/{LAB_CLUSTER}");
    client.get(&url).set("Authorization", &format!("Bearer {token}")).call().ok()?.into_json().ok()
}

/// Progress goes to stdout; a closed pipe (`lab up | head`) must not stop
/// the lab before it tears down, so write errors are ignored.
fn say(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{text}");
}

fn progress(msg: &str) {
    say(&format!("lab: {msg}"));
}

fn progress_at(started: Instant, msg: &str) {
    say(&format!("lab: [{:6.1}s] {msg}", started.elapsed().as_secs_f64()));
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn random_hex() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}
