//! `slipway lab attack`: a hostile host on the provisioning network. The lab
//! runs it in a namespace of its own on the lab bridge while a machine
//! deploys; it tries the attacks SECURITY.md answers and reports what the
//! appliance did with each. Every attack is bounded in count and time, and
//! sends only to the appliance's lab address (or the lab bridge's
//! broadcast for DHCP).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

pub struct AttackOptions {
    /// The appliance's provisioning address.
    pub appliance: Ipv4Addr,
    pub http_port: u16,
    /// The machine under attack (it is deploying) and the address it holds.
    pub victim_mac: [u8; 6],
    pub victim_ip: Ipv4Addr,
    /// The attacker's interface (DHCP is broadcast on it).
    pub interface: String,
    /// The appliance's `http.header_timeout_secs`.
    pub header_timeout: Duration,
}

/// What each attack got. Counts are of requests sent and of the answers
/// that mean "refused".
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct AttackReport {
    /// HTTP status of `GET /boot/VICTIM.ipxe` (the machine's token).
    pub script_theft_status: u16,
    /// Whether the TFTP request for the victim's GRUB script got an error.
    pub grub_theft_refused: bool,
    /// Boot scripts asked for MACs no machine has (each would be a machine).
    pub new_mac_scripts: Tally,
    /// `written` deploy reports with made-up agent tokens.
    pub forged_reports: Tally,
    /// Node agent calls with made-up node tokens: status reports (whose
    /// answer carries a cluster's join token) and "I created the Swarm,
    /// here are its join tokens" (which would steer nodes to the attacker).
    #[serde(default)]
    pub forged_node_calls: Tally,
    /// Anonymous POSTs to paths the boot face has and has not.
    pub anonymous_writes: Tally,
    /// DHCPDECLINEs of the victim's address from other MACs.
    pub declines_sent: u32,
    /// TFTP read requests; refused = "too many transfers".
    pub tftp: Tally,
    /// Connections opened and left half-sent: refused = closed at accept
    /// (over the cap), and how many the header timeout closed.
    pub slow_connections: Tally,
    pub slow_cut_by_timeout: u32,
    pub seconds: f64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Tally {
    pub sent: u32,
    pub refused: u32,
}

pub fn run(opts: &AttackOptions) -> anyhow::Result<AttackReport> {
    let started = Instant::now();
    let mut report = AttackReport::default();
    let base = format!("http://{}:{}", opts.appliance, opts.http_port);
    let http = ureq::AgentBuilder::new().timeout(Duration::from_secs(5)).build();
    let status = |result: Result<ureq::Response, ureq::Error>| match result {
        Ok(resp) => resp.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(_) => 0,
    };
    let dashed = opts.victim_mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join("-");
    let colons = dashed.replace('-', ":");

    // 1. The victim's boot script, and with it its agent token.
    report.script_theft_status = status(http.get(&format!("{base}/boot/{dashed}.ipxe")).call());
    report.grub_theft_refused =
        matches!(tftp_start(opts.appliance, &format!("grub/{colons}.cfg"))?, TftpStart::Error(_));

    // 2. Scripts for MACs nobody has: each would create a machine.
    for i in 0..300u32 {
        let b = i.to_be_bytes();
        let path = format!("{base}/boot/02-66-00-{:02x}-{:02x}-{:02x}.ipxe", b[1], b[2], b[3]);
        report.new_mac_scripts.sent += 1;
        if status(http.get(&path).call()) == 403 {
            report.new_mac_scripts.refused += 1;
        }
    }

    // 3. Forged reports: "the image is written" with made-up tokens.
    for i in 0..200u32 {
        let body = serde_json::json!({ "phase": "written", "bytes_written": 1, "sha256": "00" });
        let req = http.post(&format!("{base}/api/v1/agent/deploy")).set("Authorization", &format!("Bearer forged{i}"));
        report.forged_reports.sent += 1;
        if status(req.send_json(body)) == 401 {
            report.forged_reports.refused += 1;
        }
    }

    // 3b. Forged node agents: ask for a cluster's join token, or hand in
    // the attacker's own as the cluster's.
    for i in 0..200u32 {
        let (path, body) = if i % 2 == 0 {
            (wire::NODE_STATUS_PATH, serde_json::json!({ "os": "Debian", "cluster": null }))
        } else {
            (wire::NODE_SWARM_PATH, serde_json::json!({ "worker_token": "SWMTKN-1-attacker", "manager_token": "x" }))
        };
        let req = http.post(&format!("{base}{path}")).set("Authorization", &format!("Bearer node-forged{i}"));
        report.forged_node_calls.sent += 1;
        if status(req.send_json(body)) == 401 {
            report.forged_node_calls.refused += 1;
        }
    }

    // 4. Anonymous writes, to paths that exist and that do not.
    for i in 0..600u32 {
        let path = match i % 3 {
            0 => format!("{base}/api/v1/agent/hello"),
            1 => format!("{base}/api/v1/machines/{i}/deploy"),
            _ => format!("{base}/nowhere/{i}"),
        };
        report.anonymous_writes.sent += 1;
        if (400..500).contains(&status(http.post(&path).send_string("{}"))) {
            report.anonymous_writes.refused += 1;
        }
    }

    // 5. DECLINE the victim's address, as if it were taken, from other MACs.
    let dhcp = dhcp_socket(&opts.interface)?;
    for i in 0..500u32 {
        let b = i.to_be_bytes();
        dhcp.send_to(
            &decline([0x02, 0x66, 0x01, b[1], b[2], b[3]], opts.victim_ip, opts.appliance),
            "255.255.255.255:67",
        )?;
        report.declines_sent += 1;
    }

    // 6. TFTP transfers by the thousand, never acknowledged.
    let mut held = Vec::new();
    for _ in 0..1500 {
        report.tftp.sent += 1;
        match tftp_start(opts.appliance, "undionly.kpxe")? {
            TftpStart::Data(socket) => held.push(socket),
            TftpStart::Error(message) if message.contains("too many") => report.tftp.refused += 1,
            TftpStart::Error(_) | TftpStart::Silent => {}
        }
    }
    drop(held);

    // 7. Connections that send half a request and wait.
    let target = SocketAddr::from((opts.appliance, opts.http_port));
    let mut slow = Vec::new();
    for _ in 0..100 {
        report.slow_connections.sent += 1;
        let Ok(mut stream) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
            report.slow_connections.refused += 1;
            continue;
        };
        let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: slow");
        slow.push(stream);
    }
    std::thread::sleep(Duration::from_millis(500));
    // Closed at accept: the read ends at once.
    let mut open = Vec::new();
    for mut stream in slow {
        if closed_within(&mut stream, Duration::from_millis(50)) {
            report.slow_connections.refused += 1;
        } else {
            open.push(stream);
        }
    }
    let deadline = Instant::now() + opts.header_timeout + Duration::from_secs(5);
    for mut stream in open {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10));
        if closed_within(&mut stream, left) {
            report.slow_cut_by_timeout += 1;
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Whether the server ended (or answered) the connection within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let _ = stream.set_read_timeout(Some(within));
    let mut buf = [0u8; 256];
    match stream.read(&mut buf) {
        // EOF (0) or an answer (an error page): either way, no longer held.
        Ok(0) | Ok(_) => true,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    }
}

fn dhcp_socket(interface: &str) -> anyhow::Result<UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    socket.bind_device(Some(interface.as_bytes())).context("binding to the attacker's interface")?;
    socket.bind(&SocketAddr::from(([0, 0, 0, 0], 68)).into()).context("binding UDP 68")?;
    Ok(socket.into())
}

/// A DHCPDECLINE of `ip` from `mac`, naming `server`.
fn decline(mac: [u8; 6], ip: Ipv4Addr, server: Ipv4Addr) -> Vec<u8> {
    let mut b = vec![0u8; 240];
    b[0] = 1; // BOOTREQUEST
    b[1] = 1;
    b[2] = 6;
    b[4..8].copy_from_slice(&u32::from_be_bytes([0x66, mac[3], mac[4], mac[5]]).to_be_bytes());
    b[28..34].copy_from_slice(&mac);
    b[236..240].copy_from_slice(&[99, 130, 83, 99]);
    b.extend_from_slice(&[53, 1, 4, 50, 4]);
    b.extend_from_slice(&ip.octets());
    b.extend_from_slice(&[54, 4]);
    b.extend_from_slice(&server.octets());
    b.push(255);
    b
}

enum TftpStart {
    /// The first block came: the session is open (and left waiting).
    Data(UdpSocket),
    Error(String),
    Silent,
}

fn tftp_start(server: Ipv4Addr, name: &str) -> anyhow::Result<TftpStart> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(Duration::from_millis(300)))?;
    let mut rrq = vec![0, 1];
    rrq.extend_from_slice(name.as_bytes());
    rrq.extend_from_slice(b"\0octet\0");
    socket.send_to(&rrq, (server, 69))?;
    let mut buf = [0u8; 1600];
    Ok(match socket.recv_from(&mut buf) {
        Ok((n, _)) if n >= 4 && buf[1] == 3 => TftpStart::Data(socket),
        Ok((n, _)) if n >= 4 && buf[1] == 5 => TftpStart::Error(String::from_utf8_lossy(&buf[4..n]).into_owned()),
        _ => TftpStart::Silent,
    })
}
