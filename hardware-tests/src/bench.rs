//! `slipway bench dhcp`: the same DHCP storm against Slipway, Kea (memfile)
//! and dnsmasq, one after another on this machine, each in a fresh server
//! namespace joined by a veth pair to the namespace the storm runs in.
//! A report, not a test: numbers side by side.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::lab::net::ip;
use crate::storm::{self, StormResult};

const SERVER_NS: &str = "slipway-bench-srv";
const CLIENT_NS: &str = "slipway-bench-cli";
const SERVER_IF: &str = "slbsrv0";
/// The storm's interface in the client namespace.
pub const CLIENT_IF: &str = "slbcli0";

#[derive(Debug, Serialize)]
pub struct ServerResult {
    pub server: String,
    pub storm: Option<StormResult>,
    pub peak_rss_kib: u64,
    pub error: Option<String>,
}

/// The bench network: a server namespace and a client namespace joined by
/// a veth pair on 10.90.0.0/21. Removed when dropped.
pub struct BenchNet;

impl BenchNet {
    /// Creates the namespaces and moves the calling thread into the client
    /// one (threads it starts later inherit that).
    pub fn create() -> anyhow::Result<BenchNet> {
        for ns in [SERVER_NS, CLIENT_NS] {
            if crate::lab::net::netns_exists(ns) {
                bail!("namespace {ns} exists: is another bench running?");
            }
        }
        let net = BenchNet;
        ip(&["netns", "add", SERVER_NS])?;
        ip(&["netns", "add", CLIENT_NS])?;
        ip(&[
            "link", "add", SERVER_IF, "netns", SERVER_NS, "type", "veth", "peer", "name", CLIENT_IF, "netns", CLIENT_NS,
        ])?;
        ip(&["-n", SERVER_NS, "addr", "add", "10.90.0.1/21", "dev", SERVER_IF])?;
        ip(&["-n", CLIENT_NS, "addr", "add", "10.90.0.2/21", "dev", CLIENT_IF])?;
        for (ns, dev) in [(SERVER_NS, SERVER_IF), (CLIENT_NS, CLIENT_IF)] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        crate::lab::net::enter(CLIENT_NS)?;
        Ok(net)
    }
}

impl Drop for BenchNet {
    fn drop(&mut self) {
        for ns in [SERVER_NS, CLIENT_NS] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

pub struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn peak_rss_kib(&self) -> u64 {
        crate::support::peak_rss_kib(self.child.id())
    }
}

/// Runs the storm against each of `servers` (`slipway`, `kea`, `dnsmasq`).
pub fn run_dhcp(
    clients: usize,
    spread: Duration,
    servers: &[String],
    slipway_bin: &Path,
) -> anyhow::Result<Vec<ServerResult>> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the bench needs root (network namespaces)");
    }
    let work = tempfile_dir()?;
    let _net = BenchNet::create()?;

    let mut results = Vec::new();
    let all = [("slipway", 1u8), ("slipway-nofsync", 4), ("kea", 2), ("dnsmasq", 3)];
    for (name, round) in all.into_iter().filter(|(n, _)| servers.iter().any(|s| s == n)) {
        eprintln!("bench: {name}: starting");
        let server = match start(name, slipway_bin, &work.join(name)) {
            Ok(s) => s,
            Err(err) => {
                results.push(ServerResult {
                    server: name.into(),
                    storm: None,
                    peak_rss_kib: 0,
                    error: Some(format!("{err:#}")),
                });
                continue;
            }
        };
        // Ready when one probe client completes DORA.
        let ready = wait_ready(round * 16 + 1);
        let result = match ready {
            Err(err) => {
                ServerResult { server: name.into(), storm: None, peak_rss_kib: 0, error: Some(format!("{err:#}")) }
            }
            Ok(()) => {
                eprintln!("bench: {name}: {clients} clients");
                let storm = storm::run_spread(CLIENT_IF, clients, round * 16, 2, spread, Duration::from_secs(60))?;
                ServerResult {
                    server: name.into(),
                    peak_rss_kib: server.peak_rss_kib(),
                    storm: Some(storm),
                    error: None,
                }
            }
        };
        results.push(result);
        drop(server);
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(results)
}

/// Waits until a probe client (MACs `52:54:probe_mac_byte:...`) completes
/// DORA.
pub fn wait_ready(probe_mac_byte: u8) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let probe = storm::run(CLIENT_IF, 1, probe_mac_byte, 0, Duration::from_secs(2))?;
        if probe.completed == 1 {
            return Ok(());
        }
    }
    bail!("no DHCP answer within 20 s")
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("slipway-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Starts `slipway`, `kea` or `dnsmasq` as the server under test, with its
/// state in `dir`.
pub fn start(name: &str, slipway_bin: &Path, dir: &Path) -> anyhow::Result<Server> {
    std::fs::create_dir_all(dir)?;
    let log = std::fs::File::create(dir.join("server.log"))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", SERVER_NS]);
    match name {
        // `slipway-nofsync`: leases written but not fsynced, so durable
        // across kill -9 (the page cache keeps them) but not power loss: as
        // Kea's memfile.
        // Every bench client sends from the one address of the bench's
        // client namespace: the per-client TFTP cap is lifted.
        "slipway" | "slipway-nofsync" => {
            let fsync = name == "slipway";
            let ramdisk = dir.join("ramdisk");
            std::fs::create_dir_all(&ramdisk)?;
            for f in ["vmlinuz", "initrd.img"] {
                std::fs::write(ramdisk.join(f), f)?;
            }
            let config = dir.join("slipway.toml");
            std::fs::write(
                &config,
                format!(
                    "data_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:18095\"\ntoken = \"bench\"\n[provisioning]\ninterface = \"{SERVER_IF}\"\n\
                     address = \"10.90.0.1\"\nprefix_len = 21\npool_start = \"10.90.1.0\"\npool_end = \"10.90.7.254\"\n\
                     router_advertisements = false\nlease_fsync = {fsync}\n\
                     tftp_sessions_per_client = 100000\n[boot]\nramdisk_dir = \"{}\"\nuefi_pxe = \"ipxe\"\n",
                    dir.join("data").display(),
                    ramdisk.display()
                ),
            )?;
            cmd.arg(slipway_bin).args(["serve", "--config"]).arg(&config).env("SLIPWAY_LOG", "warn");
        }
        "kea" => {
            let config = dir.join("kea.json");
            let leases = dir.join("kea.leases");
            std::fs::write(
                &config,
                serde_json::json!({ "Dhcp4": {
                    "interfaces-config": { "interfaces": [SERVER_IF] },
                    "lease-database": { "type": "memfile", "persist": true, "name": leases, "lfc-interval": 0 },
                    "valid-lifetime": 3600,
                    "subnet4": [{ "id": 1, "subnet": "10.90.0.0/21", "pools": [{ "pool": "10.90.1.0 - 10.90.7.254" }] }],
                    "loggers": [{ "name": "kea-dhcp4", "output_options": [{ "output": "stderr" }], "severity": "WARN" }]
                }})
                .to_string(),
            )?;
            cmd.args(["kea-dhcp4", "-c"]).arg(&config).env("KEA_PIDFILE_DIR", dir).env("KEA_LOCKFILE_DIR", dir);
        }
        "tftpd-hpa" => {
            cmd.args(["in.tftpd", "--foreground", "--secure", "--address", "10.90.0.1:69", "/usr/lib/ipxe"]);
        }
        "dnsmasq" => {
            cmd.args([
                "dnsmasq",
                "--no-daemon",
                "--conf-file=/dev/null",
                "--port=0",
                "--bind-interfaces",
                "--dhcp-authoritative",
                // Otherwise it pings each address before offering it and
                // answers a burst one ping wait at a time.
                "--no-ping",
            ])
            .arg(format!("--interface={SERVER_IF}"))
            .args(["--dhcp-range=10.90.1.0,10.90.7.254,255.255.248.0,1h", "--dhcp-lease-max=5000"])
            .arg(format!("--dhcp-leasefile={}", dir.join("dnsmasq.leases").display()));
        }
        other => bail!("unknown server {other}"),
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Server { child })
}

/// The side-by-side table.
pub fn table(results: &[ServerResult]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:>7} {:>7} {:>8} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "server",
        "clients",
        "done",
        "retrans",
        "dups",
        "offer p50",
        "offer p99",
        "ack p50",
        "ack p99",
        "DORA/s",
        "peak RSS"
    );
    for r in results {
        match &r.storm {
            Some(s) => {
                let _ = writeln!(
                    out,
                    "{:<8} {:>7} {:>7} {:>8} {:>5} {:>7.2}ms {:>7.2}ms {:>7.2}ms {:>7.2}ms {:>9.0} {:>5.1}MiB",
                    r.server,
                    s.clients,
                    s.completed,
                    s.retransmissions,
                    s.duplicate_addresses,
                    s.offer_p50_ms,
                    s.offer_p99_ms,
                    s.ack_p50_ms,
                    s.ack_p99_ms,
                    s.exchanges_per_sec,
                    r.peak_rss_kib as f64 / 1024.0
                );
            }
            None => {
                let _ = writeln!(out, "{:<8} failed: {}", r.server, r.error.as_deref().unwrap_or("?"));
            }
        }
    }
    out
}

/// One TFTP measurement: `parallel` curl clients each fetching `file` once.
#[derive(Debug, Serialize)]
pub struct TftpResult {
    pub server: String,
    pub blksize: u32,
    pub windowsize: u32,
    pub parallel: usize,
    pub completed: usize,
    pub failed: usize,
    pub seconds: f64,
    /// Aggregate payload throughput.
    pub mbytes_per_sec: f64,
}

/// Fetches `/usr/lib/ipxe/snponly.efi` with atftp from Slipway's TFTP
/// server and from tftpd-hpa, 1 and `parallel` clients at a time, at
/// blksize 512 and 1468 and windowsize 1 and 16 (tftpd-hpa 5.2 does not
/// implement windowsize and answers such requests with windowsize 1).
pub fn run_tftp(parallel: usize, slipway_bin: &Path) -> anyhow::Result<Vec<TftpResult>> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the bench needs root (network namespaces)");
    }
    let size = std::fs::metadata("/usr/lib/ipxe/snponly.efi").context("snponly.efi (apt-get install ipxe)")?.len();
    let work = tempfile_dir()?;
    let _net = BenchNet::create()?;
    let mut results = Vec::new();
    for name in ["slipway", "tftpd-hpa"] {
        let _server = start(name, slipway_bin, &work.join(name))?;
        std::thread::sleep(Duration::from_millis(800));
        for (blksize, windowsize) in [(512u32, 1u32), (1468, 1), (1468, 16)] {
            for clients in [1, parallel] {
                let started = Instant::now();
                let children: Vec<Child> = (0..clients)
                    .map(|i| {
                        let out = work.join(format!("got-{i}"));
                        Command::new("atftp")
                            .args(["--option", &format!("blksize {blksize}")])
                            .args(["--option", &format!("windowsize {windowsize}")])
                            .args(["-g", "-r", "snponly.efi", "-l"])
                            .arg(out)
                            .args(["10.90.0.1", "69"])
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .spawn()
                    })
                    .collect::<Result<_, _>>()?;
                let mut completed = 0;
                for (i, mut child) in children.into_iter().enumerate() {
                    let got = work.join(format!("got-{i}"));
                    if child.wait()?.success() && std::fs::metadata(&got).map(|m| m.len()).ok() == Some(size) {
                        completed += 1;
                    }
                    let _ = std::fs::remove_file(got);
                }
                let seconds = started.elapsed().as_secs_f64();
                results.push(TftpResult {
                    server: name.into(),
                    blksize,
                    windowsize,
                    parallel: clients,
                    completed,
                    failed: clients - completed,
                    seconds,
                    mbytes_per_sec: (completed as u64 * size) as f64 / seconds / 1e6,
                });
            }
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(results)
}

pub fn tftp_table(results: &[TftpResult]) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "{:<10} {:>7} {:>6} {:>8} {:>9} {:>6} {:>8} {:>8}\n",
        "server", "blksize", "window", "parallel", "completed", "failed", "seconds", "MB/s"
    );
    for r in results {
        let _ = writeln!(
            out,
            "{:<10} {:>7} {:>6} {:>8} {:>9} {:>6} {:>8.2} {:>8.1}",
            r.server, r.blksize, r.windowsize, r.parallel, r.completed, r.failed, r.seconds, r.mbytes_per_sec
        );
    }
    out
}
