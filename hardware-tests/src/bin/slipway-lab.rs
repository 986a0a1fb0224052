//! `slipway-lab`: the QEMU lab (`lab up`, `down`, `ups`), the simulated
//! peers it runs (`lab vbmc`, `lab ups-sim`) and the benchmarks against
//! real peers (`bench`). Users run it as `slipway lab ...` and `slipway
//! bench ...`: the appliance binary hands those commands to this one, so
//! the serving binary links no simulator and no lab code.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use hardware_tests::lab::{self, Accel, DhcpChoice, Firmware, LabOptions};

#[derive(Parser)]
#[command(name = "slipway", bin_name = "slipway", version, about = "Slipway's QEMU lab and benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The QEMU lab: VMs that network-boot from a Slipway in a private
    /// network namespace.
    Lab {
        #[command(subcommand)]
        command: LabCmd,
    },
    /// Benchmarks against real peers, side by side (a report, not a test).
    Bench {
        #[command(subcommand)]
        command: BenchCmd,
    },
}

#[derive(Subcommand)]
enum LabCmd {
    /// Boot N VMs through Slipway and wait until each is ready in the API
    /// (and, with --deploy, deployed and booted from its disk).
    Up {
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// The nodes' firmware; a comma-separated list is cycled through
        /// (`bios,uefi`: node 1 BIOS, node 2 UEFI, node 3 BIOS, ...).
        #[arg(long, value_enum, value_delimiter = ',', default_value = "bios")]
        firmware: Vec<FirmwareArg>,
        /// Who hands out addresses and how requests reach Slipway.
        #[arg(long, value_enum, default_value_t = DhcpArg::Authoritative)]
        dhcp: DhcpArg,
        /// Write the JSON report here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Leave the lab running; `slipway lab down` removes it.
        #[arg(long)]
        keep: bool,
        /// Seconds to wait for every node to be ready.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        #[arg(long, value_enum)]
        accel: Option<AccelArg>,
        #[arg(long, default_value_t = 512)]
        memory_mib: u32,
        #[arg(long, default_value = "/var/cache/slipway")]
        cache_dir: PathBuf,
        /// Once ready, deploy this to every node and wait until each runs from
        /// its disk: `lab-tiny` (a 64 MiB BIOS disk built here) or an image
        /// file (raw, .zst, .qcow2). Needs --firmware bios.
        #[arg(long)]
        deploy: Option<String>,
        /// After --deploy, release every node (wiped, through its BMC) and
        /// wait until each is ready again.
        #[arg(long, requires = "deploy")]
        release: bool,
        /// After --deploy, reset each UEFI node's variable store to the
        /// firmware's defaults (no boot entries: an NVRAM reset) with the
        /// VM off, power it on through its BMC and wait until its disk
        /// boots again.
        #[arg(long, requires = "deploy")]
        reset_nvram: bool,
        /// After --release, deploy the image again and wait until each node
        /// boots its disk once more.
        #[arg(long, requires = "release")]
        redeploy: bool,
        /// Once ready, roll this BIOS version across the rack with a
        /// firmware campaign through the BMCs (the UPS goes to battery and
        /// back mid-way: the campaign holds, then resumes).
        #[arg(long)]
        firmware_campaign: Option<String>,
        /// With `--deploy lab-debian`: once the Swarm is formed, roll the
        /// nodes to lab-debian release 2 with an OS-refresh campaign (UPS to
        /// battery and back mid-way), then try an image that cannot boot
        /// (its first node is rolled back and the campaign pauses).
        #[arg(long)]
        os_refresh: bool,
        /// With --deploy: while the nodes deploy, a hostile host on the
        /// provisioning bridge attacks the appliance and the first node;
        /// the report says what each attack got.
        #[arg(long)]
        attack: bool,
    },
    /// Tear down a lab left by `lab up --keep`.
    Down,
    /// Build (or find cached) the lab's `lab-debian` OS image and print its
    /// path: raw+zstd, ready for `slipway images import`.
    Image {
        /// `base`, `r2` (release 2, for OS refreshes) or `broken-boot`.
        #[arg(long, default_value = "base")]
        variant: String,
        #[arg(long, default_value = "/var/cache/slipway")]
        cache_dir: PathBuf,
    },
    /// Switch the lab UPS (kept with --keep) to mains, battery or low
    /// battery; Slipway sees the change within seconds.
    Ups {
        /// online, battery or low
        state: String,
    },
    /// Run the lab's NUT UPS (upsd + dummy-ups) until SIGTERM; `lab up`
    /// starts it.
    #[command(hide = true)]
    UpsSim {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// A hostile host on the provisioning network: tries each attack
    /// SECURITY.md answers against the appliance and one machine, bounded
    /// in count and time, and writes what each got; `lab up --attack`
    /// runs it in a namespace of its own.
    #[command(hide = true)]
    Attack {
        #[arg(long)]
        appliance: std::net::Ipv4Addr,
        #[arg(long, default_value_t = 8081)]
        http_port: u16,
        #[arg(long)]
        victim_mac: String,
        #[arg(long)]
        victim_ip: std::net::Ipv4Addr,
        #[arg(long)]
        interface: String,
        /// The appliance's http.header_timeout_secs.
        #[arg(long, default_value_t = 30)]
        header_timeout_secs: u64,
        #[arg(long)]
        report: PathBuf,
    },
    /// A row of simulated machines against one real appliance: each with a
    /// simulated Redfish BMC and agents speaking the real protocols, DHCP
    /// through the real server via a relay. Enrols, commissions, deploys
    /// and releases all of them through the API and reports the times, API
    /// latency and the appliance's cost. Needs root (namespaces).
    Fleet {
        /// How many machines.
        #[arg(long, default_value_t = 100)]
        machines: usize,
        /// How many appliances share the machines (racks dealt in turn);
        /// more than one needs `--database postgres`.
        #[arg(long, default_value_t = 1)]
        appliances: usize,
        /// SQLite (one appliance) or one PostgreSQL over TLS for all.
        #[arg(long, value_enum, default_value = "sqlite")]
        database: hardware_tests::fleet::Database,
        /// SIGKILL the leader a third of the way through the refresh
        /// campaign and start it again 3 s later.
        #[arg(long)]
        kill_leader: bool,
        /// Nodes the refresh campaign takes at once.
        #[arg(long, default_value_t = 20)]
        batch_size: usize,
        /// Firmware time from power-on to DHCP, ms, drawn from MIN-MAX.
        #[arg(long, default_value = "1000-5000")]
        firmware_ms: String,
        /// Seconds each simulated image write takes, drawn from MIN-MAX.
        #[arg(long, default_value = "10-30")]
        write_secs: String,
        /// How often each deployed node's agent reports.
        #[arg(long, default_value_t = 15)]
        node_report_secs: u64,
        /// Longest wait for any one phase.
        #[arg(long, default_value_t = 1800)]
        timeout_secs: u64,
        /// Write the report (JSON) here.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// A rogue appliance on the provisioning network: poisons one machine's
    /// ARP cache for the appliance's address and answers its agent with
    /// forged instructions, then puts the cache back; `lab up --attack`
    /// runs it in a namespace of its own that holds the appliance's address.
    #[command(hide = true)]
    Rogue {
        #[arg(long)]
        appliance: std::net::Ipv4Addr,
        #[arg(long)]
        appliance_mac: String,
        #[arg(long, default_value_t = 8081)]
        http_port: u16,
        #[arg(long)]
        victim_mac: String,
        #[arg(long)]
        victim_ip: std::net::Ipv4Addr,
        #[arg(long)]
        interface: String,
        /// Seconds to keep answering after the victim's first request
        /// (its agent waits 10 s after a refused answer: one is enough).
        #[arg(long, default_value_t = 6)]
        after_first_secs: u64,
        /// Seconds to wait for a first request before giving up.
        #[arg(long, default_value_t = 90)]
        give_up_secs: u64,
        #[arg(long)]
        report: PathBuf,
    },
    /// Run the simulated BMCs (Redfish, driving lab VMs through QMP)
    /// described by a JSON file until SIGTERM; `lab up` starts it.
    #[command(hide = true)]
    Vbmc {
        /// A JSON list of BMCs (`simulators::bmc::BmcConfig`).
        #[arg(long)]
        config: PathBuf,
        /// Drive in-memory machines instead of VMs (no QMP, no QEMU).
        #[arg(long)]
        memory: bool,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// A DHCP storm (full DORA, PXE options, half iPXE) against Slipway,
    /// Kea (memfile) and dnsmasq in turn.
    Dhcp {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Spread the clients' first DISCOVERs over this many milliseconds
        /// (0: one burst).
        #[arg(long, default_value_t = 0)]
        spread_ms: u64,
        /// Which servers, comma separated (`slipway-nofsync`: leases not
        /// fsynced, durable across kill -9 but not power loss, as Kea's memfile).
        #[arg(long, value_delimiter = ',', default_value = "slipway,slipway-nofsync,kea,dnsmasq")]
        servers: Vec<String>,
        /// Write the results as JSON here.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// The node's image write pipeline (fetch, zstd, verify, write) against
    /// `curl | zstd -d | dd`, same image from nginx on loopback.
    Write {
        /// Raw image size.
        #[arg(long, default_value_t = 2048)]
        size_mib: u64,
        #[arg(long, default_value = "/var/cache/slipway")]
        cache_dir: PathBuf,
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// atftp fetching snponly.efi from Slipway and from tftpd-hpa, 1 and
    /// --parallel at a time, at blksize 512/1468 and windowsize 1/16.
    Tftp {
        #[arg(long, default_value_t = 200)]
        parallel: usize,
        #[arg(long)]
        report: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum FirmwareArg {
    /// SeaBIOS with QEMU's iPXE ROM.
    Bios,
    /// OVMF with QEMU's iPXE UEFI driver.
    Uefi,
    /// OVMF's own PXE (no iPXE ROM), as real UEFI hardware: the signed shim and GRUB over TFTP.
    PxeUefi,
    /// OVMF's UEFI HTTP Boot with PXE off: a URL from DHCP, no TFTP at all.
    HttpUefi,
    /// OVMF with Secure Boot enforced (Microsoft's keys) and its own PXE:
    /// the signed shim, GRUB and kernel over TFTP.
    Secureboot,
    /// Cycling bios, uefi, secureboot, pxe-uefi, http-uefi.
    Mixed,
}

#[derive(Clone, Copy, ValueEnum)]
enum DhcpArg {
    /// Slipway hands out the addresses.
    Authoritative,
    /// dnsmasq hands out addresses; Slipway is proxyDHCP.
    Proxy,
    /// VMs on a second rack bridge behind ISC dhcrelay.
    Relay,
}

#[derive(Clone, Copy, ValueEnum)]
enum AccelArg {
    Kvm,
    Tcg,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // A fleet's thousands of simulated BMCs would log every power action.
    let fleet = matches!(cli.command, Cmd::Lab { command: LabCmd::Fleet { .. } });
    init_tracing(if fleet { "warn" } else { "info" });
    // The appliance binary sits beside this one (cargo and packages install
    // both into one directory); the lab runs it as `slipway serve`.
    let slipway_bin = std::env::current_exe()?.with_file_name("slipway");
    match cli.command {
        Cmd::Lab {
            command:
                LabCmd::Up {
                    nodes,
                    firmware,
                    dhcp,
                    report,
                    keep,
                    timeout,
                    accel,
                    memory_mib,
                    cache_dir,
                    deploy,
                    release,
                    reset_nvram,
                    redeploy,
                    firmware_campaign,
                    os_refresh,
                    attack,
                },
        } => {
            let opts = LabOptions {
                nodes,
                dhcp: match dhcp {
                    DhcpArg::Authoritative => DhcpChoice::Authoritative,
                    DhcpArg::Proxy => DhcpChoice::Proxy,
                    DhcpArg::Relay => DhcpChoice::Relay,
                },
                firmware: firmware
                    .iter()
                    .flat_map(|f| match f {
                        FirmwareArg::Bios => vec![Firmware::Bios],
                        FirmwareArg::Uefi => vec![Firmware::Uefi],
                        FirmwareArg::PxeUefi => vec![Firmware::PxeUefi],
                        FirmwareArg::HttpUefi => vec![Firmware::HttpUefi],
                        FirmwareArg::Secureboot => vec![Firmware::SecureBoot],
                        FirmwareArg::Mixed => lab::MIXED.to_vec(),
                    })
                    .collect(),
                report,
                keep,
                timeout: Duration::from_secs(timeout),
                accel: accel.map(|a| match a {
                    AccelArg::Kvm => Accel::Kvm,
                    AccelArg::Tcg => Accel::Tcg,
                }),
                memory_mib,
                slipway_bin,
                cache_dir,
                deploy,
                release,
                reset_nvram,
                redeploy,
                firmware_campaign,
                os_refresh,
                attack,
            };
            lab::up(&opts).map(|_| ())
        }
        Cmd::Lab { command: LabCmd::Down } => lab::down(),
        Cmd::Lab {
            command:
                LabCmd::Attack { appliance, http_port, victim_mac, victim_ip, interface, header_timeout_secs, report },
        } => {
            let opts = hardware_tests::attack::AttackOptions {
                appliance,
                http_port,
                victim_mac: parse_mac("--victim-mac", &victim_mac)?,
                victim_ip,
                interface,
                header_timeout: std::time::Duration::from_secs(header_timeout_secs),
            };
            let outcome = hardware_tests::attack::run(&opts)?;
            std::fs::write(&report, serde_json::to_string_pretty(&outcome)?)?;
            Ok(())
        }
        Cmd::Lab {
            command:
                LabCmd::Rogue {
                    appliance,
                    appliance_mac,
                    http_port,
                    victim_mac,
                    victim_ip,
                    interface,
                    after_first_secs,
                    give_up_secs,
                    report,
                },
        } => {
            let opts = hardware_tests::rogue::RogueOptions {
                appliance,
                appliance_mac: parse_mac("--appliance-mac", &appliance_mac)?,
                http_port,
                victim_mac: parse_mac("--victim-mac", &victim_mac)?,
                victim_ip,
                interface,
                after_first: std::time::Duration::from_secs(after_first_secs),
                give_up: std::time::Duration::from_secs(give_up_secs),
            };
            let outcome = hardware_tests::rogue::run(&opts)?;
            std::fs::write(&report, serde_json::to_string_pretty(&outcome)?)?;
            Ok(())
        }
        Cmd::Lab {
            command:
                LabCmd::Fleet {
                    machines,
                    appliances,
                    database,
                    kill_leader,
                    batch_size,
                    firmware_ms,
                    write_secs,
                    node_report_secs,
                    timeout_secs,
                    report,
                },
        } => {
            let opts = hardware_tests::fleet::FleetOptions {
                machines,
                appliances,
                database,
                kill_leader,
                batch_size,
                slipway_bin: slipway_bin.clone(),
                timing: hardware_tests::fleet::Timing {
                    firmware_ms: parse_range("--firmware-ms", &firmware_ms)?,
                    write_secs: parse_range("--write-secs", &write_secs)?,
                    node_report_secs,
                },
                timeout: std::time::Duration::from_secs(timeout_secs),
                report,
            };
            hardware_tests::fleet::run(&opts).map(|_| ())
        }
        Cmd::Lab { command: LabCmd::Image { variant, cache_dir } } => {
            use hardware_tests::{lab_debian, lab_variant};
            let mut progress = |step: &str| eprintln!("lab image: {step}");
            let base = lab_debian::ensure_lab_debian(&cache_dir, &mut progress).map_err(anyhow::Error::msg)?;
            let image = match variant.as_str() {
                "base" => base,
                "r2" => lab_variant::ensure_variant(&base.path, lab_variant::Variant::Release(2), &mut progress)
                    .map_err(anyhow::Error::msg)?,
                "broken-boot" => {
                    lab_variant::ensure_variant(&base.path, lab_variant::Variant::BrokenBoot, &mut progress)
                        .map_err(anyhow::Error::msg)?
                }
                other => anyhow::bail!("--variant {other}: use base, r2 or broken-boot"),
            };
            println!(
                "{} sha256={} raw_bytes={}",
                image.path.display(),
                image.imported.sha256,
                image.imported.raw_bytes
            );
            Ok(())
        }
        Cmd::Lab { command: LabCmd::Ups { state } } => {
            let state: simulators::ups::DummyState = state.parse().map_err(anyhow::Error::msg)?;
            let dir = lab::ups_dir();
            if !dir.join("ready").exists() {
                anyhow::bail!("no lab UPS at {}: is a lab up (slipway lab up --keep)?", dir.display());
            }
            simulators::ups::write_state(&dir, state)?;
            println!("lab UPS: {state}");
            Ok(())
        }
        Cmd::Lab { command: LabCmd::UpsSim { dir, name } } => {
            let ups = simulators::ups::DummyNut::start(&dir, &name)?;
            let creds = ups.credentials();
            let ready =
                serde_json::json!({ "address": ups.addr(), "username": creds.username, "password": creds.password });
            std::fs::write(dir.join("ready"), ready.to_string())?;
            tracing::info!(address = ups.addr(), ups = name, "lab UPS online");
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(terminated());
            drop(ups);
            Ok(())
        }
        Cmd::Lab { command: LabCmd::Vbmc { config, memory } } => {
            let bmcs = simulators::bmc::load_config(&config)?;
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            if memory {
                runtime.block_on(simulators::bmc::serve_all_in_memory(bmcs, terminated()))?;
            } else {
                runtime.block_on(simulators::bmc::serve_all(bmcs, terminated()))?;
            }
            Ok(())
        }
        Cmd::Bench { command: BenchCmd::Tftp { parallel, report } } => {
            let results = hardware_tests::bench::run_tftp(parallel, &slipway_bin)?;
            print!("{}", hardware_tests::bench::tftp_table(&results));
            write_report(report, &results)
        }
        Cmd::Bench { command: BenchCmd::Dhcp { clients, spread_ms, servers, report } } => {
            let spread = Duration::from_millis(spread_ms);
            let results = hardware_tests::bench::run_dhcp(clients, spread, &servers, &slipway_bin)?;
            print!("{}", hardware_tests::bench::table(&results));
            write_report(report, &results)
        }
        Cmd::Bench { command: BenchCmd::Write { size_mib, cache_dir, report } } => {
            let agent = slipway_bin.with_file_name("slipway-agent");
            let results = hardware_tests::bench_write::run(size_mib, &agent, &cache_dir)?;
            print!("{}", hardware_tests::bench_write::table(&results));
            write_report(report, &results)
        }
    }
}

fn write_report(path: Option<PathBuf>, results: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(&path, serde_json::to_string_pretty(results)?)?;
    }
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C.
async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot watch SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLIPWAY_LOG").unwrap_or_else(|_| default.into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// `52:54:00:12:34:56` (or with dashes) as bytes; `flag` names it in the error.
fn parse_mac(flag: &str, text: &str) -> anyhow::Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split([':', '-'])
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("{flag} {text:?} is not a MAC address"))?;
    bytes.try_into().map_err(|_| anyhow::anyhow!("{flag} {text:?} is not a MAC address"))
}

/// `MIN-MAX` (or one number) as an inclusive range.
fn parse_range(flag: &str, text: &str) -> anyhow::Result<(u64, u64)> {
    let (lo, hi) = text.split_once('-').unwrap_or((text, text));
    let parse =
        |v: &str| v.trim().parse::<u64>().map_err(|_| anyhow::anyhow!("{flag} {text:?}: MIN-MAX in whole numbers"));
    let (lo, hi) = (parse(lo)?, parse(hi)?);
    if lo > hi {
        anyhow::bail!("{flag} {text:?}: MIN is above MAX");
    }
    Ok((lo, hi))
}
