//! A DHCP storm: N simulated PXE clients (distinct MACs) doing full DORA
//! against a real server over one socket, retransmitting as iPXE does
//! (after 1, 2, 4, 8 s). Used by `slipway bench dhcp` and by the tests that
//! kill the server mid-storm. Run it inside a namespace whose only link
//! leads to the server under test.
//!
//! Latencies end when the kernel queued the reply on the client socket
//! (`SO_TIMESTAMPNS`), not when this one thread got round to reading it:
//! 1,000 real machines each hear their own reply at once, while this
//! simulator reads a burst's replies one by one behind its own sends.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use dhcproto::v4::{Decodable, Decoder, DhcpOption, Message, MessageType, OptionCode};
use serde::Serialize;

/// Retransmission schedule (seconds after the previous send), as iPXE.
const BACKOFF: [u64; 4] = [1, 2, 4, 8];

#[derive(Debug, Clone, Copy)]
enum Phase {
    Discovering,
    Requesting { ip: Ipv4Addr, server: Ipv4Addr },
    Done,
    Failed,
}

struct Client {
    mac: [u8; 6],
    xid: u32,
    ipxe: bool,
    phase: Phase,
    /// When the exchange's first DISCOVER (or REQUEST) left, wall clock,
    /// as kernel receive timestamps are.
    first_sent: SystemTime,
    last_sent: Instant,
    attempts: usize,
    offer_ms: Option<f64>,
    ack_ms: Option<f64>,
    bound: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StormResult {
    pub clients: usize,
    pub completed: usize,
    pub failed: usize,
    pub retransmissions: usize,
    /// Addresses ACKed to more than one MAC.
    pub duplicate_addresses: usize,
    pub offer_p50_ms: f64,
    pub offer_p99_ms: f64,
    pub ack_p50_ms: f64,
    pub ack_p99_ms: f64,
    pub seconds: f64,
    /// Completed DORA exchanges per second over the whole storm.
    pub exchanges_per_sec: f64,
    /// MAC -> address, for checks across runs.
    #[serde(skip)]
    pub leases: HashMap<[u8; 6], Ipv4Addr>,
}

/// Broadcasts from `interface` (bound to it: a limited broadcast needs no
/// route then). `first_mac_byte` separates client populations across runs;
/// `ipxe_every` makes every n-th client announce itself as iPXE (0: none).
pub fn run(
    interface: &str,
    clients: usize,
    first_mac_byte: u8,
    ipxe_every: usize,
    deadline: Duration,
) -> anyhow::Result<StormResult> {
    run_spread(interface, clients, first_mac_byte, ipxe_every, Duration::ZERO, deadline)
}

/// As [`run`], with the clients' first DISCOVERs spread evenly over
/// `spread` instead of sent as one burst (racks power on over seconds).
pub fn run_spread(
    interface: &str,
    clients: usize,
    first_mac_byte: u8,
    ipxe_every: usize,
    spread: Duration,
    deadline: Duration,
) -> anyhow::Result<StormResult> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    // The storm sends its whole burst before it reads: without room for
    // every reply, the client itself would drop them and blame the server.
    if nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBufForce, &(16 << 20)).is_err() {
        socket.set_recv_buffer_size(16 << 20)?;
    }
    socket.bind_device(Some(interface.as_bytes())).context("binding to the storm interface")?;
    socket.bind(&SocketAddr::from(([0, 0, 0, 0], 68)).into()).context("binding UDP 68 (another DHCP client here?)")?;
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReceiveTimestampns, &true)?;
    let socket: UdpSocket = socket.into();
    socket.set_read_timeout(Some(Duration::from_millis(5)))?;
    let server: SocketAddr = "255.255.255.255:67".parse()?;
    let started = Instant::now();
    let mut all: Vec<Client> = (0..clients)
        .map(|i| Client {
            mac: [0x52, 0x54, first_mac_byte, (i >> 16) as u8, (i >> 8) as u8, i as u8],
            xid: 0x5100_0000 | i as u32,
            ipxe: ipxe_every > 0 && i % ipxe_every == 0,
            phase: Phase::Discovering,
            first_sent: SystemTime::now(),
            last_sent: started,
            attempts: 0,
            offer_ms: None,
            ack_ms: None,
            bound: None,
        })
        .collect();
    let by_xid: HashMap<u32, usize> = all.iter().enumerate().map(|(i, c)| (c.xid, i)).collect();
    let mut retransmissions = 0;
    let mut started_clients = 0;
    let mut buf = [0u8; 1500];
    while started.elapsed() < deadline
        && all.iter().any(|c| matches!(c.phase, Phase::Discovering | Phase::Requesting { .. }))
    {
        // Start every client whose turn has come (all at once with no spread).
        let due = if spread.is_zero() {
            clients
        } else {
            ((started.elapsed().as_secs_f64() / spread.as_secs_f64()) * clients as f64).ceil() as usize
        };
        while started_clients < due.min(clients) {
            let c = &mut all[started_clients];
            send(&socket, server, c)?;
            c.first_sent = SystemTime::now();
            c.last_sent = Instant::now();
            started_clients += 1;
        }
        if let Some((len, arrived)) = recv_stamped(&socket, &mut buf)? {
            on_reply(&buf[..len], arrived, &by_xid, &mut all, &socket, server)?;
        }
        let now = Instant::now();
        let pending =
            |c: &&mut Client| c.attempts > 0 && matches!(c.phase, Phase::Discovering | Phase::Requesting { .. });
        for c in all.iter_mut().filter(pending) {
            let wait = BACKOFF.get(c.attempts - 1).copied();
            match wait {
                Some(secs) if now.duration_since(c.last_sent) >= Duration::from_secs(secs) => {
                    send(&socket, server, c)?;
                    c.last_sent = now;
                    retransmissions += 1;
                }
                None if now.duration_since(c.last_sent) >= Duration::from_secs(8) => c.phase = Phase::Failed,
                _ => {}
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut owners: HashMap<Ipv4Addr, usize> = HashMap::new();
    for ip in all.iter().filter_map(|c| c.bound) {
        *owners.entry(ip).or_default() += 1;
    }
    let completed = all.iter().filter(|c| matches!(c.phase, Phase::Done)).count();
    let mut offers: Vec<f64> = all.iter().filter_map(|c| c.offer_ms).collect();
    let mut acks: Vec<f64> = all.iter().filter_map(|c| c.ack_ms).collect();
    Ok(StormResult {
        clients,
        completed,
        failed: clients - completed,
        retransmissions,
        duplicate_addresses: owners.values().filter(|n| **n > 1).count(),
        offer_p50_ms: percentile(&mut offers, 0.50),
        offer_p99_ms: percentile(&mut offers, 0.99),
        ack_p50_ms: percentile(&mut acks, 0.50),
        ack_p99_ms: percentile(&mut acks, 0.99),
        seconds,
        exchanges_per_sec: completed as f64 / seconds,
        leases: all.iter().filter_map(|c| c.bound.map(|ip| (c.mac, ip))).collect(),
    })
}

fn percentile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}

/// One datagram and when the kernel queued it; `None` on the read timeout.
fn recv_stamped(socket: &UdpSocket, buf: &mut [u8]) -> anyhow::Result<Option<(usize, SystemTime)>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrStorage};
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let msg = match recvmsg::<SockaddrStorage>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty()) {
        Ok(msg) => msg,
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut arrived = SystemTime::now();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmTimestampns(ts) = cmsg {
            arrived = UNIX_EPOCH + Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32);
        }
    }
    Ok(Some((msg.bytes, arrived)))
}

fn on_reply(
    bytes: &[u8],
    arrived: SystemTime,
    by_xid: &HashMap<u32, usize>,
    all: &mut [Client],
    socket: &UdpSocket,
    server: SocketAddr,
) -> anyhow::Result<()> {
    let Ok(msg) = Message::decode(&mut Decoder::new(bytes)) else { return Ok(()) };
    let Some(&i) = by_xid.get(&msg.xid()) else { return Ok(()) };
    let c = &mut all[i];
    if msg.chaddr().get(..6) != Some(&c.mac[..]) {
        return Ok(());
    }
    let elapsed_ms = arrived.duration_since(c.first_sent).unwrap_or_default().as_secs_f64() * 1000.0;
    let server_id = match msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => *ip,
        _ => return Ok(()),
    };
    match (c.phase, msg.opts().msg_type()) {
        (Phase::Discovering, Some(MessageType::Offer)) => {
            c.offer_ms = Some(elapsed_ms);
            c.phase = Phase::Requesting { ip: msg.yiaddr(), server: server_id };
            c.attempts = 0;
            send(socket, server, c)?;
            c.last_sent = Instant::now();
            // Offer latency is from the first DISCOVER; ack latency from the
            // first REQUEST.
            c.first_sent = SystemTime::now();
        }
        (Phase::Requesting { ip, .. }, Some(MessageType::Ack)) if msg.yiaddr() == ip => {
            c.ack_ms = Some(elapsed_ms);
            c.bound = Some(ip);
            c.phase = Phase::Done;
        }
        (Phase::Requesting { .. }, Some(MessageType::Nak)) => {
            c.phase = Phase::Discovering;
            c.attempts = 0;
            send(socket, server, c)?;
            c.last_sent = Instant::now();
        }
        _ => {}
    }
    Ok(())
}

fn send(socket: &UdpSocket, server: SocketAddr, c: &mut Client) -> anyhow::Result<()> {
    c.attempts += 1;
    let mut b = vec![0u8; 240];
    b[0] = 1;
    b[1] = 1;
    b[2] = 6;
    b[4..8].copy_from_slice(&c.xid.to_be_bytes());
    b[10] = 0x80; // broadcast replies: we have no address yet
    b[28..34].copy_from_slice(&c.mac);
    b[236..240].copy_from_slice(&[99, 130, 83, 99]);
    let class = b"PXEClient:Arch:00000:UNDI:002001";
    match c.phase {
        Phase::Discovering => b.extend_from_slice(&[53, 1, 1]),
        Phase::Requesting { ip, server } => {
            b.extend_from_slice(&[53, 1, 3, 50, 4]);
            b.extend_from_slice(&ip.octets());
            b.extend_from_slice(&[54, 4]);
            b.extend_from_slice(&server.octets());
        }
        Phase::Done | Phase::Failed => return Ok(()),
    }
    b.extend_from_slice(&[60, class.len() as u8]);
    b.extend_from_slice(class);
    b.extend_from_slice(&[93, 2, 0, 0, 57, 2, 5, 192, 55, 4, 1, 3, 6, 67]);
    if c.ipxe {
        b.extend_from_slice(&[77, 4]);
        b.extend_from_slice(b"iPXE");
        b.extend_from_slice(&[175, 3, 0x13, 1, 1]);
    }
    b.push(255);
    socket.send_to(&b, server)?;
    Ok(())
}
