//! `slipway-agent`: the one small binary that runs on machines.
//!
//! In the discovery ramdisk it brings up the boot NIC, says hello, posts the
//! in-band inventory with the credential it was given for this boot, then
//! follows instructions (wait, power off, reboot, deploy an image). It
//! never exits on a network error: it retries with backoff, because the
//! ramdisk has no one to report to but the appliance.

mod cmdline;
mod deploy;
mod facts;
mod firstboot;
mod grow;
mod net;
mod node;
mod uefi;

use std::time::Duration;

use wire::{DeployPhase, DeployReport, DeploySpec, Hello, Instruction, WipeMode, WipeReport};

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    match argv.get(1).map(String::as_str) {
        Some("write-image") => std::process::exit(write_image_by_hand(&argv[2..])),
        Some("node") => run_node(argv.get(2).map_or(wire::NODE_CONFIG_PATH, String::as_str)),
        _ => {}
    }
    let text = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let args = match cmdline::parse(&text) {
        Ok(args) => args,
        Err(err) => {
            // Nothing to talk to: stay visible on the console, do not spin.
            log(&format!("no usable boot parameters: {err}"));
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    };
    log(&format!("starting, api {} mac {}", args.api, args.mac));
    retry("bring the network up", || net::bring_up(args.mac));

    let client = Client::new(&args.api, &args.token, args.key.as_deref());
    let hello = Hello { mac: args.mac, agent_version: env!("CARGO_PKG_VERSION").into(), mode: "discovery".into() };
    retry("say hello", || client.post(wire::HELLO_PATH, &hello));
    let inventory = inventory::inband::collect(&facts::Sysfs);
    log(&format!(
        "inventory: {} cpus, {} MiB, {} disks, {} nics",
        inventory.cpu.count,
        inventory.memory.total_bytes >> 20,
        inventory.disks.len(),
        inventory.nics.len()
    ));
    retry("post inventory", || client.post(wire::INVENTORY_PATH, &inventory));
    log("inventory accepted; waiting for instructions");

    let mut next = None;
    loop {
        let instruction = next.take().unwrap_or_else(|| {
            client.instruction().unwrap_or_else(|err| {
                log(&format!("no instruction: {err}"));
                Instruction::Wait { poll_seconds: 10 }
            })
        });
        match instruction {
            Instruction::Wait { poll_seconds } => {
                std::thread::sleep(Duration::from_secs(poll_seconds.clamp(1, 300).into()))
            }
            Instruction::PowerOff => run_final("poweroff"),
            Instruction::Reboot => run_final("reboot"),
            Instruction::Deploy(spec) => next = Some(run_deploy(&client, &spec, &inventory, args.mac)),
            Instruction::Wipe { mode } => next = Some(run_wipe(&client, mode, &inventory)),
        }
    }
}

/// Wipes every disk and reports; returns what to do next.
fn run_wipe(client: &Client, mode: WipeMode, inventory: &inventory::Inventory) -> Instruction {
    log(&format!("wiping every disk ({})", mode.as_str()));
    let report = match deploy::wipe(&deploy::all_disks(&inventory.disks), mode == WipeMode::Full) {
        Ok(disks) => WipeReport { mode, disks, error: None },
        Err(error) => {
            log(&format!("wipe failed: {error}"));
            WipeReport { mode, disks: vec![], error: Some(error) }
        }
    };
    let mut reply = None;
    retry("report the wipe", || {
        reply = Some(client.post_for(wire::WIPED_PATH, &report)?);
        Ok(())
    });
    reply.unwrap_or(Instruction::Wait { poll_seconds: 10 })
}

/// Writes the image and reports the outcome; returns what the appliance
/// says to do next (reboot after `written`).
fn run_deploy(
    client: &Client,
    spec: &DeploySpec,
    inventory: &inventory::Inventory,
    mac: inventory::MacAddr,
) -> Instruction {
    log(&format!("deploying {} ({} bytes)", spec.image, spec.raw_bytes));
    let outcome = deploy::choose_disk(&inventory.disks, &spec.disk).and_then(|target| {
        let disk = target.path.display().to_string();
        let progress = |phase: DeployPhase, bytes: u64| {
            let report =
                DeployReport { phase, bytes_written: bytes, disk: Some(disk.clone()), error: None, configured: None };
            // Progress is best effort: a missed report must not stop the write.
            if let Err(err) = client.report(&report) {
                log(&format!("progress report failed: {err}"));
            }
        };
        let url = format!("{}{}", client.api, spec.url_path);
        // No overall timeout for a multi-GB stream: only per connect and read.
        let stream = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(Duration::from_secs(30))
            .build();
        deploy::write_image(&stream, &url, spec, &target, &mut |phase, bytes| progress(phase, bytes))?;
        progress(DeployPhase::Configuring, spec.raw_bytes);
        // Verified first: only then is it safe to change the table. The
        // root filesystem follows at first boot (slipway-firstboot).
        let grown = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&target.path)
            .map_err(|e| format!("{}: {e}", target.path.display()))
            .and_then(|mut disk| {
                let grown = grow::grow_last_partition(&mut disk, target.capacity)?;
                disk.sync_all().map_err(|e| format!("{}: {e}", target.path.display()))?;
                Ok(grown)
            })?;
        log(&format!("partition table: {grown:?}"));
        // The node agent is this very binary, with a credential of its own.
        let node = (!spec.node_token.is_empty()).then(|| std::env::current_exe().ok()).flatten().map(|exe| {
            (
                exe,
                node::NodeConfig {
                    api: client.api.clone(),
                    token: spec.node_token.clone(),
                    image: Some(spec.image.clone()),
                    // The key this ramdisk trusted goes on to the node agent.
                    key: client.key_hex(),
                },
            )
        });
        let config = firstboot::FirstBoot {
            hostname: spec.hostname.clone(),
            ssh_authorized_keys: spec.ssh_authorized_keys.clone(),
            users: spec.users.clone(),
            network: spec.network.clone(),
            user_data: spec.user_data.clone(),
            boot_mac: mac,
            node,
        };
        let configured = match firstboot::apply(&target.path, &config)? {
            firstboot::Applied::Written { partition } => format!(
                "host name, keys, users, network, containerd and {} written to {partition}",
                if config.node.is_some() { "the node agent" } else { "no node agent" }
            ),
            firstboot::Applied::NoRootFilesystem => {
                "no ext4 root filesystem with /etc/os-release in the image: first-boot configuration skipped".into()
            }
        };
        // A machine whose entry cannot be written still boots the image's
        // removable-media loader: say so, do not fail the deploy.
        let boot_entry = match uefi::boot_entry_for(&target.path, &spec.image) {
            Ok(None) => String::new(),
            Ok(Some(done)) => format!("; {done}"),
            Err(err) => format!("; UEFI boot entry not written: {err}"),
        };
        let configured = format!("{configured}; partition table: {grown:?}{boot_entry}");
        log(&configured);
        Ok((disk, configured))
    });
    let report = match &outcome {
        Ok((disk, configured)) => DeployReport {
            phase: DeployPhase::Written,
            bytes_written: spec.raw_bytes,
            disk: Some(disk.clone()),
            error: None,
            configured: Some(configured.clone()),
        },
        Err(error) => {
            log(&format!("deploy failed: {error}"));
            DeployReport {
                phase: DeployPhase::Failed,
                bytes_written: 0,
                disk: None,
                error: Some(error.clone()),
                configured: None,
            }
        }
    };
    // The outcome must reach the appliance: retry until it does.
    let mut reply = None;
    retry("report the deploy outcome", || {
        reply = Some(client.report(&report)?);
        Ok(())
    });
    reply.unwrap_or(Instruction::Wait { poll_seconds: 10 })
}

/// `slipway-agent node [CONFIG]`: the node agent on a deployed OS (a
/// systemd service written at deploy).
fn run_node(config_path: &str) -> ! {
    let config = std::fs::read_to_string(config_path)
        .map_err(|e| format!("{config_path}: {e}"))
        .and_then(|text| node::parse_config(&text));
    match config {
        Ok(config) => {
            log(&format!("node agent reporting to {}", config.api));
            node::run(&config)
        }
        Err(err) => {
            log(&err);
            std::process::exit(2)
        }
    }
}

/// `slipway-agent write-image URL SHA256 RAW_BYTES TARGET`: the deploy's
/// write pipeline by hand (benchmarks, recovering a disk). Exit 0 only when
/// the target verified.
fn write_image_by_hand(args: &[String]) -> i32 {
    let [url, sha256, raw_bytes, target] = args else {
        eprintln!("usage: slipway-agent write-image URL SHA256 RAW_BYTES TARGET");
        return 2;
    };
    let Ok(raw_bytes) = raw_bytes.parse::<u64>() else {
        eprintln!("RAW_BYTES must be a number");
        return 2;
    };
    let path = std::path::PathBuf::from(target);
    let capacity = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    // A block device reports 0 here; the kernel refuses writes past its end.
    let capacity = if capacity == 0 { u64::MAX } else { capacity };
    let spec = DeploySpec {
        image: url.clone(),
        url_path: String::new(),
        sha256: sha256.clone(),
        raw_bytes,
        ..Default::default()
    };
    let http = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .timeout_read(Duration::from_secs(30))
        .build();
    let target = deploy::Target { path, capacity };
    match deploy::write_image(&http, url, &spec, &target, &mut |phase, bytes| {
        log(&format!("{}: {} MiB", phase.as_str(), bytes >> 20))
    }) {
        Ok(()) => {
            log("written and verified");
            0
        }
        Err(err) => {
            log(&err);
            1
        }
    }
}

fn log(msg: &str) {
    eprintln!("slipway-agent: {msg}");
}

/// Retries `op` with backoff from 1 s to 30 s until it succeeds.
fn retry(what: &str, mut op: impl FnMut() -> Result<(), String>) {
    let mut delay = 1;
    loop {
        match op() {
            Ok(()) => return,
            Err(err) => {
                log(&format!("could not {what}: {err}; retrying in {delay} s"));
                std::thread::sleep(Duration::from_secs(delay));
                delay = (delay * 2).min(30);
            }
        }
    }
}

fn run_final(command: &str) {
    log(&format!("instructed to {command}"));
    let _ = std::process::Command::new(command).arg("-f").status();
}

struct Client {
    agent: ureq::Agent,
    api: String,
    auth: String,
    /// The appliance's pinned key: answers not signed with it are refused.
    key: Option<ed25519_dalek::VerifyingKey>,
    /// Answers refused so far this boot; every request tells the appliance,
    /// so that an impersonator on the network shows up in its events.
    refused: std::sync::atomic::AtomicU32,
}

/// The largest answer read; instructions are a few KiB.
const MAX_ANSWER_BYTES: u64 = 1 << 20;

impl Client {
    /// A key that is not 32 bytes of hex is not a key: such a client
    /// refuses every answer rather than trust any.
    fn new(api: &str, token: &str, key: Option<&str>) -> Client {
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(20)).build();
        let key = key.map(|hex_key| {
            let bytes: Option<[u8; 32]> = hex::decode(hex_key).ok().and_then(|b| b.try_into().ok());
            bytes.and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(&b).ok()).unwrap_or_else(|| {
                log(&format!("the appliance key {hex_key:?} is not an Ed25519 key: every answer will be refused"));
                // The identity point (y = 1): verify_strict rejects every signature.
                let mut identity = [0u8; 32];
                identity[0] = 1;
                ed25519_dalek::VerifyingKey::from_bytes(&identity).expect("the identity point")
            })
        });
        Client { agent, api: api.to_string(), auth: format!("Bearer {token}"), key, refused: Default::default() }
    }

    fn key_hex(&self) -> Option<String> {
        self.key.map(|k| hex::encode(k.as_bytes()))
    }

    /// A request to the appliance with this boot's credential.
    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let request = self.agent.request(method, &format!("{}{path}", self.api)).set("Authorization", &self.auth);
        match self.refused.load(std::sync::atomic::Ordering::Relaxed) {
            0 => request,
            n => request.set(wire::REFUSED_ANSWERS_HEADER, &n.to_string()),
        }
    }

    fn post<T: serde::Serialize>(&self, path: &str, body: &T) -> Result<(), String> {
        self.request("POST", path).send_json(body).map(|_| ()).map_err(describe)
    }

    fn report(&self, report: &DeployReport) -> Result<Instruction, String> {
        self.post_for(wire::DEPLOY_PATH, report)
    }

    /// Posts `body`; the reply is the next instruction.
    fn post_for<T: serde::Serialize, R: serde::de::DeserializeOwned>(&self, path: &str, body: &T) -> Result<R, String> {
        let request = self.request("POST", path);
        let body = serde_json::to_value(body).map_err(|e| e.to_string())?;
        self.answer(request, |r| r.send_json(body).map_err(describe))
    }

    fn instruction(&self) -> Result<Instruction, String> {
        // Held open by the appliance until there is work (long poll).
        let request = self.request("GET", &format!("{}?wait_seconds=15", wire::INSTRUCTIONS_PATH));
        self.answer(request, |r| r.call().map_err(describe))
    }

    /// Sends `request` with a fresh nonce and reads the answer, which must
    /// be signed with the pinned key (when there is one) for that nonce.
    fn answer<R: serde::de::DeserializeOwned>(
        &self,
        request: ureq::Request,
        send: impl FnOnce(ureq::Request) -> Result<ureq::Response, String>,
    ) -> Result<R, String> {
        let nonce = self.key.map(|_| nonce());
        let request = match &nonce {
            Some(n) => request.set(wire::NONCE_HEADER, n),
            None => request,
        };
        let response = send(request)?;
        let signature = response.header(wire::SIGNATURE_HEADER).map(str::to_string);
        let mut body = Vec::new();
        let mut reader = std::io::Read::take(response.into_reader(), MAX_ANSWER_BYTES);
        std::io::Read::read_to_end(&mut reader, &mut body).map_err(|e| e.to_string())?;
        if let (Some(key), Some(nonce)) = (&self.key, &nonce) {
            if let Err(refusal) = verify(key, nonce, &body, signature.as_deref()) {
                self.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(refusal);
            }
        }
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    }
}

/// Whether `signature` (hex) is the appliance's over this nonce and body.
fn verify(key: &ed25519_dalek::VerifyingKey, nonce: &str, body: &[u8], signature: Option<&str>) -> Result<(), String> {
    let refused = |why: &str| Err(format!("answer refused: {why} (not this appliance, or tampered with)"));
    let Some(signature) = signature else { return refused("it is not signed") };
    let bytes: Option<[u8; 64]> = hex::decode(signature).ok().and_then(|b| b.try_into().ok());
    let Some(bytes) = bytes else { return refused("its signature is malformed") };
    let signature = ed25519_dalek::Signature::from_bytes(&bytes);
    match key.verify_strict(&wire::signed_bytes(nonce, body), &signature) {
        Ok(()) => Ok(()),
        Err(_) => refused("its signature does not match the appliance's key"),
    }
}

/// 16 random bytes in hex, from the kernel.
fn nonce() -> String {
    let mut bytes = [0u8; 16];
    if let Err(err) =
        std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
    {
        log(&format!("reading /dev/urandom failed ({err}); the nonce is the clock"));
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        bytes = now.as_nanos().to_le_bytes();
    }
    hex::encode(bytes)
}

fn describe(err: ureq::Error) -> String {
    match err {
        ureq::Error::Status(code, resp) => {
            format!("HTTP {code}: {}", resp.into_string().unwrap_or_default())
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn signed(key: &SigningKey, nonce: &str, body: &[u8]) -> String {
        hex::encode(key.sign(&wire::signed_bytes(nonce, body)).to_bytes())
    }

    #[test]
    fn only_the_pinned_appliance_answer_to_this_request_is_accepted() {
        let appliance = SigningKey::from_bytes(&[7; 32]);
        let pinned = appliance.verifying_key();
        let body = br#"{"action":"wait","poll_seconds":10}"#;
        let good = signed(&appliance, "00112233445566778899", body);
        assert_eq!(verify(&pinned, "00112233445566778899", body, Some(&good)), Ok(()));
        // A replayed answer (another request's nonce), a changed body, no
        // signature, a rogue appliance's key: all refused.
        assert!(verify(&pinned, "ffeeddccbbaa99887766", body, Some(&good)).is_err());
        assert!(verify(&pinned, "00112233445566778899", br#"{"action":"wipe"}"#, Some(&good)).is_err());
        assert!(verify(&pinned, "00112233445566778899", body, None).is_err());
        assert!(verify(&pinned, "00112233445566778899", body, Some("zz")).is_err());
        let rogue = signed(&SigningKey::from_bytes(&[8; 32]), "00112233445566778899", body);
        assert!(verify(&pinned, "00112233445566778899", body, Some(&rogue)).is_err());
    }

    /// An appliance on a socket that answers one request, signing its
    /// answer with `key` for the nonce the request carried (or not at all);
    /// it returns the request's nonce and refused-answers headers.
    fn appliance(key: Option<SigningKey>) -> (String, std::thread::JoinHandle<(String, String)>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut nonce, mut refused) = (String::new(), String::new());
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let line_lower = line.to_ascii_lowercase();
                if let Some(v) = line_lower.strip_prefix(&format!("{}:", wire::NONCE_HEADER)) {
                    nonce = v.trim().to_string();
                }
                if let Some(v) = line_lower.strip_prefix(&format!("{}:", wire::REFUSED_ANSWERS_HEADER)) {
                    refused = v.trim().to_string();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let body = r#"{"action":"wait","poll_seconds":3}"#;
            let signature =
                key.map(|k| format!("{}: {}\r\n", wire::SIGNATURE_HEADER, signed(&k, &nonce, body.as_bytes())));
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n",
                body.len(),
                signature.unwrap_or_default()
            );
            let mut stream = stream;
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(body.as_bytes()).unwrap();
            (nonce, refused)
        });
        (url, handle)
    }

    /// The client end to end: it sends a fresh nonce and acts only on the
    /// pinned appliance's answer; a rogue or unsigned one is an error.
    #[test]
    fn the_client_acts_only_on_the_pinned_appliance() {
        let appliance_key = SigningKey::from_bytes(&[7; 32]);
        let pinned = hex::encode(appliance_key.verifying_key().as_bytes());
        let (url, served) = appliance(Some(appliance_key.clone()));
        let mut client = Client::new(&url, "t", Some(&pinned));
        let answer = client.instruction();
        assert!(matches!(answer, Ok(Instruction::Wait { poll_seconds: 3 })), "{answer:?}");
        let (nonce, refused) = served.join().unwrap();
        assert!(wire::valid_nonce(&nonce), "the request carried a nonce");
        assert_eq!(refused, "", "nothing refused yet, nothing said");

        for rogue in [Some(SigningKey::from_bytes(&[8; 32])), None] {
            let (url, served) = appliance(rogue);
            client.api = url;
            let answer = client.instruction();
            assert!(answer.as_ref().is_err_and(|e| e.contains("answer refused")), "{answer:?}");
            served.join().unwrap();
        }
        // The real appliance hears how many answers were refused.
        let (url, served) = appliance(Some(appliance_key));
        client.api = url;
        assert!(client.instruction().is_ok());
        assert_eq!(served.join().unwrap().1, "2");

        // Without a pinned key (an older appliance) answers are taken as they come.
        let (url, served) = appliance(None);
        assert!(Client::new(&url, "t", None).instruction().is_ok());
        assert_eq!(served.join().unwrap().0, "", "and no nonce is sent");
    }

    #[test]
    fn a_key_that_is_not_one_refuses_everything() {
        let client = Client::new("http://127.0.0.1:9", "t", Some("not-hex"));
        let appliance = SigningKey::from_bytes(&[7; 32]);
        let body = b"{}";
        let any = signed(&appliance, "00112233445566778899", body);
        assert!(verify(&client.key.unwrap(), "00112233445566778899", body, Some(&any)).is_err());
        assert!(wire::valid_nonce(&nonce()), "{}", nonce());
    }
}
