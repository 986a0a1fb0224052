//! One simulated machine: the in-memory machine its simulated BMC powers,
//! and what runs on it. When the BMC (or the machine itself) boots it, it
//! waits a randomised firmware delay, leases an address through the relay,
//! and, network first, asks the appliance for its boot script from that
//! address; a discovery script runs the simulated ramdisk agent, a local
//! one (or a disk boot) the simulated node agent of whatever the last
//! deploy left on the disk. Both speak the real protocols (`wire`), nonce
//! and signature checks included. Only the disk write is simulated: the
//! image is really downloaded and hashed, then "written" for a configured
//! time with progress reports, as a real agent would report them.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use inventory::oob::{BootTarget, PowerAction};
use rand::Rng;
use sha2::{Digest, Sha256};
use simulators::bmc::{Backend, MemoryBackend};
use wire::{DeployPhase, DeployReport, DeploySpec, Instruction, NodeInstruction, NodeStatus, WipeReport};

use super::dhcp::{mac_text, Relay};

/// How a simulated machine behaves: randomised like Ironic's fake driver,
/// so a rack's boots do not arrive in lockstep.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Firmware time from power-on to the first DHCP packet, drawn evenly
    /// from this range.
    pub firmware_ms: (u64, u64),
    /// How long the image write takes, drawn evenly from this range.
    pub write_secs: (u64, u64),
    /// How often a node agent reports.
    pub node_report_secs: u64,
}

/// What every machine shares: each appliance's relay and boot face,
/// timings, and the counters the report prints.
pub struct Shared {
    /// By appliance: the relay its racks sit behind.
    pub relays: Vec<Arc<Relay>>,
    /// By appliance: `http://ADDRESS:PORT` of its boot face.
    pub boot_bases: Vec<String>,
    pub timing: Timing,
    pub counts: Counts,
    /// Verified writes by machine and image: a node refreshed (or rolled
    /// back) twice shows as a count above 1.
    pub writes: std::sync::Mutex<std::collections::HashMap<(usize, String), u32>>,
}

impl Shared {
    /// (machine, image) pairs written more than once.
    pub fn written_twice(&self) -> usize {
        self.writes.lock().expect("writes lock").values().filter(|&&n| n > 1).count()
    }
}

/// How long a simulated machine keeps trying what a real one retries
/// (DHCP and its boot script, as firmware does; the ramdisk agent's
/// hello, inventory and outcome reports, as the real agent does).
const KEEP_TRYING: Duration = Duration::from_secs(120);

/// Runs `op` until it succeeds or [`KEEP_TRYING`] has passed, waiting 1,
/// 2, 4 s (then 4 s) between tries; the last error otherwise.
async fn retrying<T, F, Fut>(mut op: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let began = Instant::now();
    let mut wait = 1;
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(err) if began.elapsed() > KEEP_TRYING => return Err(err),
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(wait)).await;
                wait = (wait * 2).min(4);
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct Counts {
    pub boots: AtomicU64,
    pub leases: AtomicU64,
    pub dhcp_failures: AtomicU64,
    pub scripts: AtomicU64,
    pub scripts_refused: AtomicU64,
    pub images_fetched: AtomicU64,
    pub written: AtomicU64,
    pub wiped: AtomicU64,
    pub node_reports: AtomicU64,
    /// Answers whose signature did not verify: must stay 0.
    pub bad_signatures: AtomicU64,
    pub http_errors: AtomicU64,
}

impl Counts {
    pub fn snapshot(&self) -> serde_json::Value {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "boots": n(&self.boots), "leases": n(&self.leases), "dhcp_failures": n(&self.dhcp_failures),
            "scripts": n(&self.scripts), "scripts_refused": n(&self.scripts_refused),
            "images_fetched": n(&self.images_fetched), "written": n(&self.written), "wiped": n(&self.wiped),
            "node_reports": n(&self.node_reports), "bad_signatures": n(&self.bad_signatures),
            "http_errors": n(&self.http_errors),
        })
    }
}

/// A number drawn evenly from `lo..=hi` (the thread's generator is not
/// held across an await).
fn random(lo: u64, hi: u64) -> u64 {
    rand::thread_rng().gen_range(lo..=hi)
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What the last deploy left on the disk.
#[derive(Debug, Clone)]
struct OnDisk {
    image: String,
    hostname: String,
    node_token: String,
}

pub struct Machine {
    pub index: usize,
    /// Which appliance's racks it is in (from 0).
    pub appliance: usize,
    pub mac: [u8; 6],
    pub serial: String,
    pub disk_serial: String,
    pub uuid: String,
    pub backend: Arc<MemoryBackend>,
}

/// Why a boot's work stopped.
enum Ended {
    /// The machine was reset or powered off under it (by the BMC or itself).
    Interrupted,
    /// Nothing more to do until the next boot.
    Idle,
}

impl Machine {
    /// Runs the machine for ever (the fleet ends by dropping the runtime).
    pub async fn run(self, shared: Arc<Shared>) {
        let mut seen = 0;
        let mut disk: Option<OnDisk> = None;
        loop {
            let first = loop {
                let boots = self.backend.boots();
                if boots.len() > seen {
                    seen = boots.len();
                    break *boots.last().expect("a boot");
                }
                tokio::time::sleep(Duration::from_millis(random(200, 600))).await;
            };
            bump(&shared.counts.boots);
            let delay = random(shared.timing.firmware_ms.0, shared.timing.firmware_ms.1);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let boot = Boot { machine: &self, shared: &shared, seen };
            let ended = match boot.run(first, &mut disk).await {
                Ok(ended) => ended,
                Err(err) => {
                    tracing::warn!(machine = self.index, error = %format!("{err:#}"), "simulated boot failed");
                    Ended::Idle
                }
            };
            if matches!(ended, Ended::Idle) {
                // Sits there (a halted ramdisk, an empty disk) until the BMC acts.
                while self.backend.boots().len() == seen {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// One boot of one machine.
struct Boot<'a> {
    machine: &'a Machine,
    shared: &'a Shared,
    /// The boot count this boot is: a higher one means it was reset.
    seen: usize,
}

impl Boot<'_> {
    fn current(&self) -> bool {
        self.machine.backend.boots().len() == self.seen
    }

    async fn run(&self, first: BootTarget, disk: &mut Option<OnDisk>) -> anyhow::Result<Ended> {
        let counts = &self.shared.counts;
        let (relay, boot_base) =
            (&self.shared.relays[self.machine.appliance], &self.shared.boot_bases[self.machine.appliance]);
        // Firmware and, later, the OS both lease an address this way.
        let ip = match retrying(|| relay.lease(self.machine.mac)).await {
            Ok(ip) => ip,
            Err(err) => {
                bump(&counts.dhcp_failures);
                return Err(err);
            }
        };
        bump(&counts.leases);
        let http = reqwest::Client::builder()
            .local_address(IpAddr::V4(ip))
            .timeout(Duration::from_secs(60))
            .build()
            .context("an HTTP client")?;
        if first == BootTarget::Pxe {
            let url = format!("{boot_base}/boot/{}.ipxe", mac_text(self.machine.mac).replace(':', "-"));
            let resp =
                retrying(|| async { Ok(http.get(&url).send().await?) }).await.context("fetching the boot script")?;
            if !resp.status().is_success() {
                bump(&counts.scripts_refused);
                bail!("boot script: HTTP {}", resp.status());
            }
            bump(&counts.scripts);
            let script = resp.text().await?;
            if let Some(token) = kernel_arg(&script, "slipway.token=") {
                let key = kernel_arg(&script, "slipway.key=").context("a discovery script without a key")?;
                let agent = Agent::new(http, boot_base, token, &key, counts)?;
                return self.ramdisk(&agent, disk).await;
            }
        }
        match disk.clone() {
            Some(on_disk) if !on_disk.node_token.is_empty() => self.node(&http, ip, boot_base, &on_disk).await,
            _ => Ok(Ended::Idle),
        }
    }

    /// The discovery ramdisk's agent: hello, inventory, then instructions.
    async fn ramdisk(&self, agent: &Agent<'_>, disk: &mut Option<OnDisk>) -> anyhow::Result<Ended> {
        let m = self.machine;
        let hello =
            wire::Hello { mac: mac_text(m.mac).parse()?, agent_version: "fleet".into(), mode: "discovery".into() };
        retrying(|| agent.post(wire::HELLO_PATH, &hello)).await?;
        let facts = inventory(m);
        retrying(|| agent.post(wire::INVENTORY_PATH, &facts)).await?;
        let mut next: Option<Instruction> = None;
        loop {
            if !self.current() {
                return Ok(Ended::Interrupted);
            }
            let instruction = match next.take() {
                Some(i) => i,
                None => match agent.instruction().await {
                    Ok(i) => i,
                    Err(err) => {
                        self.note(&err);
                        Instruction::Wait { poll_seconds: 5 }
                    }
                },
            };
            match instruction {
                Instruction::Wait { poll_seconds } => {
                    tokio::time::sleep(Duration::from_secs(poll_seconds.clamp(1, 30).into())).await
                }
                Instruction::PowerOff => {
                    m.backend.power(PowerAction::ForceOff).await?;
                    return Ok(Ended::Interrupted);
                }
                Instruction::Reboot => {
                    m.backend.power(PowerAction::Reset).await?;
                    return Ok(Ended::Interrupted);
                }
                Instruction::Deploy(spec) => next = Some(self.deploy(agent, &spec, disk).await?),
                Instruction::Wipe { mode } => {
                    *disk = None;
                    bump(&self.shared.counts.wiped);
                    let report = WipeReport { mode, disks: vec!["/dev/sda".into()], error: None };
                    let sent =
                        retrying(|| agent.answer(agent.request(reqwest::Method::POST, wire::WIPED_PATH).json(&report)));
                    next = Some(sent.await?);
                }
            }
        }
    }

    /// Downloads and checks the image for real, then "writes" it for the
    /// configured time, reporting progress every 2 s as the agent does.
    async fn deploy(
        &self,
        agent: &Agent<'_>,
        spec: &DeploySpec,
        disk: &mut Option<OnDisk>,
    ) -> anyhow::Result<Instruction> {
        let report = |phase, bytes, error: Option<String>| DeployReport {
            phase,
            bytes_written: bytes,
            disk: Some("/dev/sda".into()),
            error,
            configured: (phase == DeployPhase::Written).then(|| "fleet simulator: first-boot configuration".into()),
        };
        let compressed = retrying(|| agent.get_bytes(&spec.url_path)).await.context("fetching the image")?;
        bump(&self.shared.counts.images_fetched);
        let raw = zstd::decode_all(&compressed[..]).context("decompressing the image")?;
        let digest = hex::encode(Sha256::digest(&raw));
        if digest != spec.sha256 || raw.len() as u64 != spec.raw_bytes {
            let error = format!("checksum mismatch: got {digest}, want {}", spec.sha256);
            return agent.report(&report(DeployPhase::Failed, 0, Some(error))).await;
        }
        let timing = &self.shared.timing;
        let seconds = random(timing.write_secs.0, timing.write_secs.1).max(1);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(seconds) {
            if !self.current() {
                bail!("reset mid-write");
            }
            let done = started.elapsed().as_secs_f64() / seconds as f64;
            let bytes = (spec.raw_bytes as f64 * done) as u64;
            if let Err(err) = agent.report(&report(DeployPhase::Writing, bytes, None)).await {
                self.note(&err);
            }
            tokio::time::sleep(Duration::from_secs(2).min(Duration::from_secs(seconds))).await;
        }
        if let Err(err) = agent.report(&report(DeployPhase::Verifying, spec.raw_bytes, None)).await {
            self.note(&err);
        }
        *self
            .shared
            .writes
            .lock()
            .expect("writes lock")
            .entry((self.machine.index, spec.image.clone()))
            .or_default() += 1;
        *disk = Some(OnDisk {
            image: spec.image.clone(),
            hostname: spec.hostname.clone(),
            node_token: spec.node_token.clone(),
        });
        bump(&self.shared.counts.written);
        // The outcome must reach the appliance, as the real agent makes sure.
        let written = report(DeployPhase::Written, spec.raw_bytes, None);
        retrying(|| agent.report(&written)).await
    }

    /// The node agent of the deployed OS: status every few seconds.
    async fn node(&self, http: &reqwest::Client, ip: Ipv4Addr, base: &str, on_disk: &OnDisk) -> anyhow::Result<Ended> {
        let every = self.shared.timing.node_report_secs.max(1);
        let url = format!("{base}{}", wire::NODE_STATUS_PATH);
        let status = NodeStatus {
            agent_version: "fleet".into(),
            hostname: on_disk.hostname.clone(),
            os: "Fleet Linux 1".into(),
            kernel: "6.1.0-fleet".into(),
            image: Some(on_disk.image.clone()),
            address: Some(ip.to_string()),
            containerd_version: Some("1.7.0".into()),
            docker_version: None,
            cluster: None,
            join_error: None,
            hook: None,
        };
        loop {
            if !self.current() {
                return Ok(Ended::Interrupted);
            }
            let sent = http.post(&url).bearer_auth(&on_disk.node_token).json(&status).send().await;
            match sent {
                Ok(resp) if resp.status().is_success() => {
                    bump(&self.shared.counts.node_reports);
                    // A node with no cluster is only ever told to wait.
                    let _: Option<NodeInstruction> = resp.json().await.ok();
                }
                Ok(resp) => self.note(&anyhow::anyhow!("node status: HTTP {}", resp.status())),
                Err(err) => self.note(&err.into()),
            }
            let jitter = random(0, 999);
            tokio::time::sleep(Duration::from_secs(every) + Duration::from_millis(jitter)).await;
        }
    }

    fn note(&self, err: &anyhow::Error) {
        bump(&self.shared.counts.http_errors);
        tracing::debug!(machine = self.machine.index, error = %format!("{err:#}"), "simulated agent call failed");
    }
}

/// `NAME=VALUE` from a boot script's kernel line.
fn kernel_arg(script: &str, name: &str) -> Option<String> {
    script.split(name).nth(1)?.split_whitespace().next().map(str::to_string)
}

/// What the ramdisk agent would read from this machine: the same facts its
/// simulated BMC reports, so the two views agree.
fn inventory(m: &Machine) -> serde_json::Value {
    serde_json::json!({
        "source": "in_band",
        "system": { "vendor": "Slipway Fleet", "product": "Simulated Node", "serial": m.serial, "uuid": m.uuid },
        "cpu": { "model": "Simulated CPU", "count": 2 },
        "memory": { "total_bytes": 4u64 << 30 },
        "disks": [{ "name": "sda", "size_bytes": 16u64 << 30, "model": "Simulated Disk", "serial": m.disk_serial, "rotational": false }],
        "nics": [{ "name": "eth0", "mac": mac_text(m.mac), "link": true, "speed_mbps": 10000 }],
        "firmware": { "mode": "bios", "secure_boot": false }
    })
}

/// The ramdisk agent's client: its token, and the appliance key every
/// answer it acts on must be signed with.
struct Agent<'a> {
    http: reqwest::Client,
    base: String,
    token: String,
    key: ed25519_dalek::VerifyingKey,
    counts: &'a Counts,
}

impl<'a> Agent<'a> {
    fn new(
        http: reqwest::Client,
        base: &str,
        token: String,
        key_hex: &str,
        counts: &'a Counts,
    ) -> anyhow::Result<Agent<'a>> {
        let bytes: [u8; 32] = hex::decode(key_hex)?.try_into().map_err(|_| anyhow::anyhow!("a key of 32 bytes"))?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)?;
        Ok(Agent { http, base: base.to_string(), token, key, counts })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token)
    }

    async fn post<T: serde::Serialize>(&self, path: &str, body: &T) -> anyhow::Result<()> {
        let resp = self.request(reqwest::Method::POST, path).json(body).send().await?;
        if !resp.status().is_success() {
            bail!("POST {path}: HTTP {}: {}", resp.status(), resp.text().await.unwrap_or_default());
        }
        Ok(())
    }

    async fn instruction(&self) -> anyhow::Result<Instruction> {
        let path = format!("{}?wait_seconds=15", wire::INSTRUCTIONS_PATH);
        self.answer(self.request(reqwest::Method::GET, &path)).await
    }

    async fn report(&self, report: &DeployReport) -> anyhow::Result<Instruction> {
        self.answer(self.request(reqwest::Method::POST, wire::DEPLOY_PATH).json(report)).await
    }

    async fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let resp = self.http.get(format!("{}{path}", self.base)).send().await?;
        if !resp.status().is_success() {
            bail!("GET {path}: HTTP {}", resp.status());
        }
        Ok(resp.bytes().await?.to_vec())
    }

    /// Sends with a fresh nonce; acts only on an answer signed for it.
    async fn answer<R: serde::de::DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> anyhow::Result<R> {
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let resp = request.header(wire::NONCE_HEADER, &nonce).send().await?;
        let status = resp.status();
        let signature = resp.headers().get(wire::SIGNATURE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = resp.bytes().await?;
        if !status.is_success() {
            bail!("HTTP {status}: {}", String::from_utf8_lossy(&body));
        }
        let signature: Option<[u8; 64]> = signature.and_then(|s| hex::decode(s).ok()).and_then(|b| b.try_into().ok());
        let verified = signature.is_some_and(|s| {
            self.key
                .verify_strict(&wire::signed_bytes(&nonce, &body), &ed25519_dalek::Signature::from_bytes(&s))
                .is_ok()
        });
        if !verified {
            bump(&self.counts.bad_signatures);
            bail!("answer refused: not signed by the appliance for this nonce");
        }
        Ok(serde_json::from_slice(&body)?)
    }
}
