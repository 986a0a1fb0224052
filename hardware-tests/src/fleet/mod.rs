//! `slipway lab fleet --machines N`: a rack row of simulated machines
//! against one real appliance, to see what Slipway does at fleet size.
//!
//! Two namespaces joined by a veth pair, nothing else: the appliance's
//! (`slipway-fleet`, 10.90.0.1, its API on its own loopback) and the racks'
//! (`slipway-fleet-racks`), where this process runs the machines. The
//! racks' side routes two /16s to its loopback (any address in them is
//! local), so each simulated BMC listens on an address of its own in
//! 10.92.0.0/16 and each machine speaks from the address the appliance's
//! DHCP server leased it in 10.91.0.0/16, through a relay (this process,
//! at 10.91.0.1), as racks behind a router do. The appliance routes both
//! back over the veth: one neighbour, whatever the fleet's size.
//!
//! The operator side (`driver`) runs on a thread in the appliance's
//! namespace and uses only the public API: it enrols every BMC with
//! commissioning on, waits for all `ready`, deploys all, releases all, and
//! samples API latency throughout. The report holds the phase times, API
//! p50/p99, the appliance's CPU seconds, peak RSS and database size, and
//! what the machines counted.

mod dhcp;
mod driver;
mod machine;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::lab::net;
pub use machine::Timing;

pub const APPLIANCE_NETNS: &str = "slipway-fleet";
pub const RACKS_NETNS: &str = "slipway-fleet-racks";
const WORK_DIR: &str = "/run/slipway-fleet";
const APPLIANCE_IP: &str = "10.90.0.1";
const RACKS_IP: &str = "10.90.0.2";
const MACHINE_NET: &str = "10.91.0.0/16";
const BMC_NET: &str = "10.92.0.0/16";
const GIADDR: Ipv4Addr = Ipv4Addr::new(10, 91, 0, 1);
const BMC_PORT: u16 = 8000;
const API: &str = "http://127.0.0.1:8080";
/// Addresses in the relayed pool (10.91.1.0 to 10.91.255.254) bound it.
pub const MAX_MACHINES: usize = 60_000;
/// Machines per rack, as the enrolment names them.
const PER_RACK: usize = 40;

pub struct FleetOptions {
    pub machines: usize,
    pub slipway_bin: PathBuf,
    pub timing: Timing,
    /// Longest wait for any one phase.
    pub timeout: Duration,
    pub report: Option<PathBuf>,
}

pub fn run(opts: &FleetOptions) -> anyhow::Result<Value> {
    if opts.machines == 0 || opts.machines > MAX_MACHINES {
        bail!("--machines {}: 1 to {MAX_MACHINES}", opts.machines);
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("the fleet needs root (network namespaces)");
    }
    let work = Path::new(WORK_DIR);
    let mut fleet = Fleet { appliance: None };
    fleet.clear_leftovers()?;
    prepare_work(work)?;
    setup_network()?;
    let token = hex::encode(rand::random::<[u8; 16]>());
    std::fs::write(work.join("slipway.toml"), config(work))?;
    fleet.appliance = Some(spawn_appliance(&opts.slipway_bin, work, &token)?);
    let pid = fleet.appliance.as_ref().map_or(0, Child::id);

    // This thread (and the runtime's workers, made next) live on the racks' side.
    net::enter(RACKS_NETNS)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let machines = build_machines(opts.machines);
    let operator = {
        let (token, timeout, n) = (token.clone(), opts.timeout, opts.machines);
        let enrolments = machines.iter().map(|(m, config)| enrolment(m.index, config)).collect();
        std::thread::spawn(move || operate(&token, enrolments, n, timeout))
    };
    let counts = runtime.block_on(async {
        let relay = dhcp::Relay::start(GIADDR, APPLIANCE_IP.parse()?).await?;
        let shared = Arc::new(machine::Shared {
            relay,
            boot_base: format!("http://{APPLIANCE_IP}:8081"),
            timing: opts.timing.clone(),
            counts: Default::default(),
        });
        let (stop_bmcs, bmcs_stopped) = tokio::sync::oneshot::channel::<()>();
        let entries = machines.iter().map(|(m, config)| (config.clone(), m.backend.clone())).collect();
        let bmcs = tokio::spawn(simulators::bmc::serve_backends(entries, async {
            let _ = bmcs_stopped.await;
        }));
        for (m, _) in machines {
            tokio::spawn(m.run(shared.clone()));
        }
        let outcome = tokio::task::spawn_blocking(move || operator.join()).await?;
        let _ = stop_bmcs.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), bmcs).await;
        let counts = shared.counts.snapshot();
        anyhow::Ok((outcome, counts, shared.relay.stray_replies.load(std::sync::atomic::Ordering::Relaxed)))
    })?;
    let (outcome, simulated, stray) = counts;
    let phases = outcome.map_err(|_| anyhow::anyhow!("the operator thread panicked"))??;
    let appliance = appliance_cost(pid, work);
    runtime.shutdown_timeout(Duration::from_secs(2));
    drop(fleet);
    let report = json!({
        "machines": opts.machines,
        "phases": phases,
        "appliance": appliance,
        "simulated": simulated,
        "relay_stray_replies": stray,
    });
    print_summary(&report);
    if let Some(path) = &opts.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(report)
}

/// The appliance process and both namespaces, ended on drop.
struct Fleet {
    appliance: Option<Child>,
}

impl Fleet {
    fn clear_leftovers(&self) -> anyhow::Result<()> {
        for ns in [APPLIANCE_NETNS, RACKS_NETNS] {
            if net::netns_exists(ns) {
                let killed = net::kill_members(ns)?;
                net::delete(ns)?;
                eprintln!("fleet: removed a leftover namespace {ns} ({killed} processes ended)");
            }
        }
        Ok(())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(mut child) = self.appliance.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in [APPLIANCE_NETNS, RACKS_NETNS] {
            if net::netns_exists(ns) {
                let _ = net::kill_members(ns);
                let _ = net::delete(ns);
            }
        }
    }
}

fn prepare_work(work: &Path) -> anyhow::Result<()> {
    if work.exists() {
        std::fs::remove_dir_all(work).with_context(|| format!("clearing {}", work.display()))?;
    }
    for dir in ["data", "import", "ramdisk"] {
        std::fs::create_dir_all(work.join(dir))?;
    }
    // Simulated machines never fetch the ramdisk: the appliance only needs
    // the files to exist to serve boot scripts.
    for file in ["vmlinuz", "initrd.img"] {
        std::fs::write(work.join("ramdisk").join(file), "fleet simulator: never booted")?;
    }
    Ok(())
}

fn setup_network() -> anyhow::Result<()> {
    for ns in [APPLIANCE_NETNS, RACKS_NETNS] {
        net::ip(&["netns", "add", ns])?;
        net::ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    net::ip(&[
        "link",
        "add",
        "flt0",
        "netns",
        APPLIANCE_NETNS,
        "type",
        "veth",
        "peer",
        "name",
        "flt1",
        "netns",
        RACKS_NETNS,
    ])?;
    net::ip(&["-n", APPLIANCE_NETNS, "addr", "add", &format!("{APPLIANCE_IP}/24"), "dev", "flt0"])?;
    net::ip(&["-n", RACKS_NETNS, "addr", "add", &format!("{RACKS_IP}/24"), "dev", "flt1"])?;
    for (ns, dev) in [(APPLIANCE_NETNS, "flt0"), (RACKS_NETNS, "flt1")] {
        net::ip(&["-n", ns, "link", "set", dev, "up"])?;
    }
    for prefix in [MACHINE_NET, BMC_NET] {
        net::ip(&["-n", APPLIANCE_NETNS, "route", "add", prefix, "via", RACKS_IP])?;
        net::ip(&["-n", RACKS_NETNS, "route", "add", "local", prefix, "dev", "lo"])?;
    }
    Ok(())
}

fn config(work: &Path) -> String {
    format!(
        r#"data_dir = "{data}"
import_dir = "{import}"
log_format = "json"

[api]
listen = "127.0.0.1:8080"

[provisioning]
interface = "flt0"
dhcp_mode = "authoritative"
address = "{APPLIANCE_IP}"
prefix_len = 24
pool_start = "10.90.0.100"
pool_end = "10.90.0.199"
lease_secs = 86400
discovery_timeout_secs = 1800
relay_subnets = [{{ subnet = "{MACHINE_NET}", pool_start = "10.91.1.0", pool_end = "10.91.255.254", router = "{GIADDR}" }}]

[boot]
ramdisk_dir = "{ramdisk}"
"#,
        data = work.join("data").display(),
        import = work.join("import").display(),
        ramdisk = work.join("ramdisk").display(),
    )
}

fn spawn_appliance(bin: &Path, work: &Path, token: &str) -> anyhow::Result<Child> {
    let log = std::fs::File::create(work.join("serve.log"))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", APPLIANCE_NETNS]).arg(bin).arg("serve").arg("--config").arg(work.join("slipway.toml"));
    // The fleet's config is the whole truth: drop the caller's overrides.
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SLIPWAY_")) {
        cmd.env_remove(key);
    }
    cmd.env("SLIPWAY_API_TOKEN", token).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    cmd.spawn().context("starting the appliance")
}

/// Machine `i`'s identity: MAC 02:5f:..:i (locally administered), serials
/// and UUID from `i`, its BMC at 10.92.x.y.
fn build_machines(n: usize) -> Vec<(machine::Machine, simulators::bmc::BmcConfig)> {
    (0..n)
        .map(|i| {
            let mac = [0x02, 0x5f, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8];
            let serial = format!("FLEET-{i:05}");
            let uuid = format!("f1ee0000-0000-4000-8000-{i:012x}");
            let config = simulators::bmc::BmcConfig {
                name: format!("fleet{i:05}"),
                listen: std::net::SocketAddr::from((bmc_address(i), BMC_PORT)),
                qmp: PathBuf::new(),
                username: "admin".into(),
                password: format!("fleet-bmc-{i}"),
                smbios: simulators::bmc::Smbios {
                    serial: serial.clone(),
                    uuid: uuid.clone(),
                    manufacturer: "Slipway Fleet".into(),
                    product: "Simulated Node".into(),
                },
                mac: dhcp::mac_text(mac),
                disk_serial: format!("FLEET-DISK-{i:05}"),
                default_boot: inventory::oob::BootTarget::Pxe,
                uefi: false,
                secure_boot: false,
                bios_version: "1.0.0".into(),
                bmc_version: "1.0.0".into(),
            };
            let machine = machine::Machine {
                index: i,
                mac,
                serial,
                disk_serial: config.disk_serial.clone(),
                uuid,
                backend: simulators::bmc::memory_backend(&config),
            };
            (machine, config)
        })
        .collect()
}

fn bmc_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 92, (1 + i / 250) as u8, (1 + i % 250) as u8)
}

fn enrolment(i: usize, config: &simulators::bmc::BmcConfig) -> driver::Enrolment {
    driver::Enrolment {
        url: format!("http://{}", config.listen),
        username: config.username.clone(),
        password: config.password.clone(),
        rack: format!("row1-rack{:03}", i / PER_RACK),
    }
}

/// The operator's script, on a thread of its own in the appliance's
/// namespace (where the API listens on loopback).
fn operate(token: &str, enrolments: Vec<driver::Enrolment>, n: usize, timeout: Duration) -> anyhow::Result<Value> {
    net::enter(APPLIANCE_NETNS)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let driver = Arc::new(driver::Driver::new(API, token)?);
        driver.wait_healthy().await?;
        driver.upload_image("fleet", fleet_image()).await?;
        driver.progress("image fleet available");
        let latencies = Arc::new(Mutex::new(driver::Latencies::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = tokio::spawn(driver.clone().sample_latency(latencies.clone(), stop.clone()));

        let began = Instant::now();
        driver.enrol(enrolments).await.context("enrolling the BMCs")?;
        let enrolled = began.elapsed().as_secs_f64();
        driver.progress(&format!("{n} BMCs enrolled in {enrolled:.1} s (commissioning: each powered on, PXE once)"));
        driver.until_all("ready", n, timeout).await?;
        let ready = began.elapsed().as_secs_f64();

        let began_deploy = Instant::now();
        let deploys = driver
            .ids_in("ready")
            .await?
            .into_iter()
            .map(|id| {
                let body = json!({ "image": "fleet", "hostname": format!("fleet-{}", &id[..8]) });
                (format!("/api/v1/machines/{id}/deploy"), body)
            })
            .collect();
        driver.post_all(deploys).await.context("asking for the deploys")?;
        driver.progress(&format!("{n} deploys asked for"));
        driver.until_all("deployed", n, timeout).await?;
        let deployed = began_deploy.elapsed().as_secs_f64();
        let ids = driver.ids_in("deployed").await?;
        driver.until_reported(ids.clone(), timeout).await?;
        let reporting = began_deploy.elapsed().as_secs_f64();

        let began_release = Instant::now();
        let releases =
            ids.into_iter().map(|id| (format!("/api/v1/machines/{id}/release"), json!({ "wipe": "quick" }))).collect();
        driver.post_all(releases).await.context("asking for the releases")?;
        driver.progress(&format!("{n} releases asked for"));
        driver.until_all("ready", n, timeout).await?;
        let released = began_release.elapsed().as_secs_f64();

        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = sampler.await;
        let l = latencies.lock().expect("latency lock");
        let summary = |v: &[f64]| {
            json!({ "n": v.len(), "p50_ms": driver::quantile(v, 0.5), "p99_ms": driver::quantile(v, 0.99) })
        };
        Ok(json!({
            "seconds": {
                "enrol": enrolled, "enrolment_to_ready": ready, "deploy_to_deployed": deployed,
                "deploy_to_nodes_reporting": reporting,
                "release_to_ready": released,
            },
            "api": {
                "list_machines": summary(&l.list), "show_machine": summary(&l.show),
                "events_page": summary(&l.events), "errors": l.errors,
            },
        }))
    })
}

/// A 1 MiB image the catalog reads as BIOS-bootable (boot code and the
/// 0x55AA signature in its first sector), the rest pseudo-random.
fn fleet_image() -> Vec<u8> {
    let mut image: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    image[..440].fill(0x90);
    image[440..510].fill(0);
    image[510] = 0x55;
    image[511] = 0xAA;
    image
}

/// CPU seconds and peak RSS of the appliance (while it still runs), and
/// its database's size.
fn appliance_cost(pid: u32, work: &Path) -> Value {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are
    // the 12th and 13th there, in USER_HZ (100 on Linux).
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let db_bytes: u64 = ["slipway.db", "slipway.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(work.join("data").join(f)).ok())
        .map(|m| m.len())
        .sum();
    json!({
        "cpu_seconds": ticks as f64 / 100.0,
        "peak_rss_mib": peak_kib as f64 / 1024.0,
        "database_mib": db_bytes as f64 / 1048576.0,
    })
}

fn print_summary(report: &Value) {
    let (s, api, a) = (&report["phases"]["seconds"], &report["phases"]["api"], &report["appliance"]);
    let n = report["machines"].as_u64().unwrap_or(0);
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    println!(
        "fleet of {n}: enrolment to all ready {:.0} s; deploy to all deployed {:.0} s, to every node agent reporting {:.0} s; release to all ready {:.0} s",
        f(&s["enrolment_to_ready"]),
        f(&s["deploy_to_deployed"]),
        f(&s["deploy_to_nodes_reporting"]),
        f(&s["release_to_ready"]),
    );
    for what in ["list_machines", "show_machine", "events_page"] {
        let l = &api[what];
        println!("  API {what}: p50 {:.1} ms, p99 {:.1} ms ({} samples)", f(&l["p50_ms"]), f(&l["p99_ms"]), l["n"]);
    }
    println!(
        "  appliance: {:.1} CPU s, peak RSS {:.0} MiB, database {:.1} MiB; machines counted {}",
        f(&a["cpu_seconds"]),
        f(&a["peak_rss_mib"]),
        f(&a["database_mib"]),
        report["simulated"],
    );
}
