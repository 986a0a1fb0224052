//! `slipway lab fleet --machines N [--appliances K --database postgres]`:
//! a rack row of simulated machines against real appliances, to see what
//! Slipway does at fleet size.
//!
//! The racks' namespace (`slipway-fleet-racks`) is where this process runs
//! the machines; it routes two /16s to its loopback (any address in them
//! is local), so each simulated BMC listens on an address of its own in
//! 10.92.0.0/16 and each machine speaks from the address the DHCP server
//! leased it in 10.91.0.0/16, through its rack's relay (this process), as
//! racks behind a router do. Each appliance has a namespace of its own
//! (`appliance`); racks are dealt to appliances in turn. With PostgreSQL
//! the database runs in the racks' namespace, reached over TLS
//! (`postgres`).
//!
//! The operator (`operator`) uses only the public API, of whichever
//! appliance answers: it enrols every BMC with commissioning on, waits
//! for all `ready`, deploys all, rolls an OS refresh campaign across all
//! (killing the leader mid-way if asked), releases all, and samples API
//! latency throughout. The report holds the phase times, API p50/p99,
//! each appliance's CPU seconds and peak RSS, the database's size, and
//! what the machines counted.

mod appliance;
mod dhcp;
mod driver;
mod machine;
mod operator;
mod postgres;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::lab::net;
pub use machine::Timing;

pub const RACKS_NETNS: &str = "slipway-fleet-racks";
const WORK_DIR: &str = "/run/slipway-fleet";
const MACHINE_NET: &str = "10.91.0.0/16";
const BMC_NET: &str = "10.92.0.0/16";
const BMC_PORT: u16 = 8000;
/// Machines per rack, as the enrolment names them.
const PER_RACK: usize = 40;

/// Where the appliances keep their state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Database {
    /// One SQLite file per appliance (one appliance only).
    Sqlite,
    /// One PostgreSQL server in the racks' namespace, over TLS.
    Postgres,
}

pub struct FleetOptions {
    pub machines: usize,
    pub appliances: usize,
    pub database: Database,
    /// SIGKILL the leader once a third of the refresh campaign is done,
    /// and start it again a few seconds later.
    pub kill_leader: bool,
    /// Nodes the refresh campaign takes at once.
    pub batch_size: usize,
    pub slipway_bin: PathBuf,
    pub timing: Timing,
    /// Longest wait for any one phase.
    pub timeout: Duration,
    pub report: Option<PathBuf>,
}

pub fn run(opts: &FleetOptions) -> anyhow::Result<Value> {
    if opts.appliances == 0 || opts.appliances > appliance::MAX_APPLIANCES {
        bail!("--appliances {}: 1 to {}", opts.appliances, appliance::MAX_APPLIANCES);
    }
    if opts.appliances > 1 && opts.database == Database::Sqlite {
        bail!("--appliances {} share one database: add --database postgres", opts.appliances);
    }
    if opts.kill_leader && opts.appliances < 2 {
        bail!("--kill-leader needs another appliance to take over: --appliances 2 or more");
    }
    let max = opts.appliances * appliance::MAX_MACHINES_EACH;
    if opts.machines == 0 || opts.machines > max {
        bail!("--machines {}: 1 to {max} with {} appliance(s)", opts.machines, opts.appliances);
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("the fleet needs root (network namespaces)");
    }
    raise_open_files(opts.machines)?;
    let work = Path::new(WORK_DIR);
    let mut fleet = Fleet { appliances: None, postgres: None };
    fleet.clear_leftovers()?;
    prepare_work(work)?;
    let sites: Vec<appliance::Site> =
        (1..=opts.appliances).map(|index| appliance::Site { index, work: work.join(format!("a{index}")) }).collect();
    setup_network(&sites)?;
    let secret_key = hex::encode(rand::random::<[u8; 32]>());
    if opts.database == Database::Postgres {
        let addresses: Vec<String> = sites.iter().map(|s| s.racks_ip().to_string()).collect();
        fleet.postgres = Some(postgres::Postgres::start(&work.join("pg"), RACKS_NETNS, &addresses)?);
    }
    for site in &sites {
        let url = fleet.postgres.as_ref().map(|pg| pg.url(&site.racks_ip().to_string()));
        site.write_config(url.as_deref(), &secret_key)?;
    }
    let token = hex::encode(rand::random::<[u8; 16]>());
    let appliances = Arc::new(appliance::Appliances::start(&opts.slipway_bin, &token, sites.clone())?);
    fleet.appliances = Some(appliances.clone());

    // This thread, the runtime's workers and the operator's thread (made
    // next) live on the racks' side, which reaches every appliance.
    net::enter(RACKS_NETNS)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let machines = build_machines(opts.machines, opts.appliances);
    let operator = {
        let script = operator::Script {
            token: token.clone(),
            apis: sites.iter().map(appliance::Site::api).collect(),
            machines: opts.machines,
            racks: opts.machines.div_ceil(PER_RACK),
            batch_size: opts.batch_size,
            kill_leader: opts.kill_leader.then(|| appliances.clone()),
            timeout: opts.timeout,
        };
        let enrolments = machines.iter().map(|(m, config)| enrolment(m.index, config)).collect();
        std::thread::spawn(move || script.run(enrolments))
    };
    let counts = runtime.block_on(async {
        let mut relays = Vec::new();
        for site in &sites {
            relays.push(dhcp::Relay::start(site.giaddr(), site.ip()).await?);
        }
        let shared = Arc::new(machine::Shared {
            relays,
            boot_bases: sites.iter().map(appliance::Site::boot_base).collect(),
            timing: opts.timing.clone(),
            counts: Default::default(),
            writes: Default::default(),
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
        let mut counts = shared.counts.snapshot();
        counts["images_written_twice"] = json!(shared.written_twice());
        let stray: u32 = shared.relays.iter().map(|r| r.stray_replies.load(std::sync::atomic::Ordering::Relaxed)).sum();
        anyhow::Ok((outcome, counts, stray))
    })?;
    let (outcome, simulated, stray) = counts;
    let phases = outcome.map_err(|_| anyhow::anyhow!("the operator thread panicked"))??;
    let costs = appliances.costs();
    let database_mib = match &fleet.postgres {
        Some(pg) => pg.size_bytes() as f64 / 1048576.0,
        None => costs.iter().map(|c| c["sqlite_mib"].as_f64().unwrap_or(0.0)).sum(),
    };
    runtime.shutdown_timeout(Duration::from_secs(2));
    drop(fleet);
    let report = json!({
        "machines": opts.machines,
        "appliances": opts.appliances,
        "database": format!("{:?}", opts.database).to_lowercase(),
        "phases": phases,
        "appliance": costs,
        "database_mib": database_mib,
        "simulated": simulated,
        "relay_stray_replies": stray,
    });
    print_summary(&report);
    if let Some(path) = &opts.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(report)
}

/// Each machine holds a BMC listener and its agents' connections here, and
/// each appliance (which inherits the limit) a connection per agent: as
/// root, lift the open-file limit to fit.
fn raise_open_files(machines: usize) -> anyhow::Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let wanted = machines as u64 * 3 + 4096;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    // Past the hard limit only with CAP_SYS_RESOURCE; else as far as it goes.
    if soft < wanted && setrlimit(Resource::RLIMIT_NOFILE, wanted, hard.max(wanted)).is_err() {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("raising the open-file limit")?;
        if hard < wanted {
            eprintln!("fleet: the open-file limit is {hard}; {machines} machines want about {wanted} (3 per machine)");
        }
    }
    Ok(())
}

/// The appliances, the database and every namespace, ended on drop.
struct Fleet {
    appliances: Option<Arc<appliance::Appliances>>,
    postgres: Option<postgres::Postgres>,
}

/// Every namespace a fleet may have made (this one's or an older layout's).
fn namespaces() -> Vec<String> {
    let mut all = vec!["slipway-fleet".to_string(), RACKS_NETNS.to_string()];
    all.extend((1..=appliance::MAX_APPLIANCES).map(|j| format!("slipway-fleet-a{j}")));
    all
}

impl Fleet {
    fn clear_leftovers(&self) -> anyhow::Result<()> {
        for ns in namespaces() {
            if net::netns_exists(&ns) {
                let killed = net::kill_members(&ns)?;
                net::delete(&ns)?;
                eprintln!("fleet: removed a leftover namespace {ns} ({killed} processes ended)");
            }
        }
        Ok(())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(appliances) = self.appliances.take() {
            appliances.stop_all();
        }
        self.postgres.take();
        for ns in namespaces() {
            if net::netns_exists(&ns) {
                let _ = net::kill_members(&ns);
                let _ = net::delete(&ns);
            }
        }
    }
}

fn prepare_work(work: &Path) -> anyhow::Result<()> {
    if work.exists() {
        std::fs::remove_dir_all(work).with_context(|| format!("clearing {}", work.display()))?;
    }
    std::fs::create_dir_all(work.join("ramdisk"))?;
    // Simulated machines never fetch the ramdisk: the appliance only needs
    // the files to exist to serve boot scripts.
    for file in ["vmlinuz", "initrd.img"] {
        std::fs::write(work.join("ramdisk").join(file), "fleet simulator: never booted")?;
    }
    Ok(())
}

fn setup_network(sites: &[appliance::Site]) -> anyhow::Result<()> {
    net::ip(&["netns", "add", RACKS_NETNS])?;
    net::ip(&["-n", RACKS_NETNS, "link", "set", "lo", "up"])?;
    for prefix in [MACHINE_NET, BMC_NET] {
        net::ip(&["-n", RACKS_NETNS, "route", "add", "local", prefix, "dev", "lo"])?;
    }
    // Appliances fetch image content from each other through the racks.
    net::enable_forwarding(RACKS_NETNS)?;
    for site in sites {
        site.setup_network()?;
    }
    Ok(())
}

/// Machine `i`'s identity: MAC 02:5f:..:i (locally administered), serials
/// and UUID from `i`, its BMC at 10.92.x.y; its rack's appliance, racks
/// dealt in turn.
fn build_machines(n: usize, appliances: usize) -> Vec<(machine::Machine, simulators::bmc::BmcConfig)> {
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
                appliance: (i / PER_RACK) % appliances,
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
        rack: rack_name(i / PER_RACK),
    }
}

fn rack_name(rack: usize) -> String {
    format!("row1-rack{rack:03}")
}

/// A 1 MiB image the catalog reads as BIOS-bootable (boot code and the
/// 0x55AA signature in its first sector), the rest pseudo-random by
/// `version`.
fn fleet_image(version: u32) -> Vec<u8> {
    let mut image: Vec<u8> =
        (0..1u32 << 20).map(|i| (i.wrapping_add(version).wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    image[..440].fill(0x90);
    image[440..510].fill(0);
    image[510] = 0x55;
    image[511] = 0xAA;
    image
}

fn print_summary(report: &Value) {
    let (s, api) = (&report["phases"]["seconds"], &report["phases"]["api"]);
    let n = report["machines"].as_u64().unwrap_or(0);
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    println!(
        "fleet of {n} on {} appliance(s), {}: enrolment to all ready {:.0} s; deploy to all deployed {:.0} s, to every node agent reporting {:.0} s; refresh campaign {:.0} s; release to all ready {:.0} s",
        report["appliances"],
        report["database"].as_str().unwrap_or("?"),
        f(&s["enrolment_to_ready"]),
        f(&s["deploy_to_deployed"]),
        f(&s["deploy_to_nodes_reporting"]),
        f(&s["campaign"]),
        f(&s["release_to_ready"]),
    );
    if let Some(kill) = report["phases"]["leader_killed"].as_object() {
        println!(
            "  leader (appliance {}) killed with {} of {n} nodes done; campaign moved again {:.1} s later",
            kill["appliance"],
            kill["nodes_done"],
            f(&kill["next_node_done_after_s"])
        );
    }
    for what in ["list_machines", "show_machine", "events_page", "sse_lag"] {
        let l = &api[what];
        println!("  API {what}: p50 {:.1} ms, p99 {:.1} ms ({} samples)", f(&l["p50_ms"]), f(&l["p99_ms"]), l["n"]);
    }
    for a in report["appliance"].as_array().into_iter().flatten() {
        println!(
            "  appliance {}: {:.1} CPU s, peak RSS {:.0} MiB, restarts {}",
            a["appliance"],
            f(&a["cpu_seconds"]),
            f(&a["peak_rss_mib"]),
            a["restarts"]
        );
    }
    println!("  database {:.1} MiB; machines counted {}", f(&report["database_mib"]), report["simulated"]);
}
