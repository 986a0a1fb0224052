//! The DHCP socket loop: the only DHCP code that does I/O.
//!
//! Requests are handled one at a time in arrival order: decide, persist the
//! lease ops through [`DhcpBackend`], apply them in memory, then send. A
//! reply is never sent for a lease that could not be stored. Nothing here
//! is cancelled mid-request except by dropping the whole task, which loses
//! at most the reply being built (the client retransmits).

use inventory::MacAddr;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use super::decide::{decide, DhcpConfig, DhcpMode, Outcome, ReplyKind};
use super::leases::{LeaseOp, LeaseTable};
use super::packet::Request;
use super::proxy::decide_proxy;
use super::reply::encode_reply;
use crate::boot::ClientKind;

/// Where leases are stored and who hears about bound clients.
pub trait DhcpBackend: Send + Sync + 'static {
    /// Makes `ops` durable. Called before the replies they belong to are
    /// sent, with the table they have been applied to (for compaction).
    fn save(&self, ops: &[LeaseOp], table: &LeaseTable) -> impl Future<Output = Result<(), String>> + Send;
    /// Whether `mac` belongs to a machine Slipway knows. Asked only when
    /// the network does not answer unknown clients.
    fn known(&self, mac: MacAddr) -> impl Future<Output = bool> + Send;
    /// A client was ACKed an address, or (proxy mode, `ip` unspecified)
    /// offered boot information. Called inside the DHCP loop: it must only
    /// queue its work, never wait on it.
    fn bound(&self, mac: MacAddr, ip: Ipv4Addr, client: ClientKind);
}

/// Counters readable by tests and exported as metrics.
#[derive(Debug, Default)]
pub struct DhcpStats {
    pub received: AtomicU64,
    pub replied: AtomicU64,
    pub dropped_malformed: AtomicU64,
    pub ignored: AtomicU64,
    pub store_errors: AtomicU64,
}

/// UDP ports; fixed by the protocol, configurable so tests can run
/// unprivileged on loopback.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub server: u16,
    pub client: u16,
    /// Replies to a relay (giaddr set) go to this port.
    pub relay: u16,
    /// proxyDHCP's second port (PXE boot server).
    pub pxe: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Ports { server: 67, client: 68, relay: 67, pxe: 4011 }
    }
}

pub struct DhcpServer<B> {
    cfg: DhcpConfig,
    ports: Ports,
    table: Mutex<LeaseTable>,
    backend: B,
    pub stats: DhcpStats,
}

impl<B: DhcpBackend> DhcpServer<B> {
    pub fn new(cfg: DhcpConfig, ports: Ports, table: LeaseTable, backend: B) -> Arc<Self> {
        Arc::new(DhcpServer { cfg, ports, table: Mutex::new(table), backend, stats: DhcpStats::default() })
    }

    pub fn mode(&self) -> DhcpMode {
        self.cfg.mode
    }

    /// Handles one datagram from `from` (arriving on the proxyDHCP port
    /// when `on_pxe_port`); returns the reply and where to send it.
    pub async fn handle(
        self: &Arc<Self>,
        bytes: &[u8],
        now: u64,
        from: SocketAddr,
        on_pxe_port: bool,
    ) -> Option<(Vec<u8>, SocketAddr)> {
        self.handle_batch(&[(bytes.to_vec(), from)], now, on_pxe_port, &mut |_, _| false).await.pop()
    }

    /// Handles datagrams that arrived together, in order, and commits all
    /// their lease changes in one write (group commit). A reply whose own
    /// decision changed nothing durable (an OFFER, a NAK, proxyDHCP) is
    /// handed to `send_now` at once, so it does not wait for the write;
    /// the rest are returned once the write succeeded. If the write fails,
    /// they go unanswered and the in-memory table is restored: clients
    /// retransmit. `send_now` returns false when it could not send; that
    /// reply is returned with the others.
    pub async fn handle_batch(
        self: &Arc<Self>,
        datagrams: &[(Vec<u8>, SocketAddr)],
        now: u64,
        on_pxe_port: bool,
        send_now: &mut (dyn FnMut(&[u8], SocketAddr) -> bool + Send),
    ) -> Vec<(Vec<u8>, SocketAddr)> {
        let mut table = self.table.lock().await;
        // Taken before the first change that must be written, so a batch of
        // offers alone (a DISCOVER burst) never copies the table.
        let mut snapshot = None;
        let mut durable = Vec::new();
        let mut replies = Vec::new();
        let mut bound = Vec::new();
        let mut kinds = Vec::new();
        for (bytes, from) in datagrams {
            self.stats.received.fetch_add(1, Ordering::Relaxed);
            let req = match Request::parse(bytes) {
                Ok(req) => req,
                Err(err) => {
                    self.stats.dropped_malformed.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("slipway_dhcp_dropped_total", "reason" => err.label()).increment(1);
                    debug!(%err, len = bytes.len(), "dropped malformed DHCP datagram");
                    continue;
                }
            };
            metrics::counter!("slipway_dhcp_received_total", "type" => req.message_type.label()).increment(1);
            let known = !self.cfg.answer_unknown && self.backend.known(req.mac).await;
            let decision = match self.cfg.mode {
                DhcpMode::Authoritative => decide(&req, &table, &self.cfg, now, known),
                DhcpMode::Proxy => decide_proxy(&req, &self.cfg, known, on_pxe_port),
            };
            log_decision(&req, &decision);
            // Offers are held in memory only: losing one in a crash costs
            // the client a retransmitted DISCOVER.
            let written_before = durable.len();
            durable.extend(decision.ops.iter().filter(|op| !is_offer(op)).cloned());
            let needs_write = durable.len() > written_before;
            if needs_write && snapshot.is_none() {
                snapshot = Some(table.clone());
            }
            for op in &decision.ops {
                table.apply(op);
            }
            let Some(reply) = decision.reply else {
                self.stats.ignored.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if matches!(reply.kind, ReplyKind::Ack | ReplyKind::ProxyOffer) {
                bound.push((req.mac, reply.yiaddr, decision.client));
            }
            let dest = if reply.kind == ReplyKind::ProxyAck { *from } else { self.destination(&req, reply.kind) };
            kinds.push(reply.kind.label());
            let bytes = encode_reply(&req, &reply, &self.cfg);
            if needs_write || !send_now(&bytes, dest) {
                replies.push((bytes, dest));
            }
        }
        if !durable.is_empty() {
            if let Err(err) = self.backend.save(&durable, &table).await {
                self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                warn!(requests = datagrams.len(), error = %err, "lease store failed; not replying to this batch");
                metrics::counter!("slipway_dhcp_dropped_total", "reason" => "lease_store_failed")
                    .increment(replies.len() as u64);
                self.stats.replied.fetch_add((kinds.len() - replies.len()) as u64, Ordering::Relaxed);
                if let Some(before) = snapshot {
                    *table = before;
                }
                return Vec::new();
            }
        }
        drop(table);
        // Bookkeeping (machine record, event) is queued to run beside the
        // loop, not in front of the next client's reply.
        for (mac, ip, client) in bound {
            self.backend.bound(mac, ip, client);
        }
        self.stats.replied.fetch_add(kinds.len() as u64, Ordering::Relaxed);
        for kind in kinds {
            metrics::counter!("slipway_dhcp_replies_total", "kind" => kind).increment(1);
        }
        replies
    }

    fn destination(&self, req: &Request, kind: ReplyKind) -> SocketAddr {
        let addr = if !req.giaddr.is_unspecified() {
            SocketAddrV4::new(req.giaddr, self.ports.relay)
        } else if !req.ciaddr.is_unspecified() && kind != ReplyKind::Nak {
            SocketAddrV4::new(req.ciaddr, self.ports.client)
        } else {
            // Without a relay and without an address the client can only
            // hear a broadcast (we cannot write its ARP entry from here).
            SocketAddrV4::new(Ipv4Addr::BROADCAST, self.ports.client)
        };
        SocketAddr::V4(addr)
    }

    /// Serves until the socket fails. Whatever has queued on the socket
    /// while a batch was being written forms the next batch. Cancel-safe at
    /// every await: dropping the future loses at most one batch's replies.
    pub async fn run(self: Arc<Self>, socket: UdpSocket, on_pxe_port: bool) -> std::io::Result<()> {
        let mut buf = vec![0u8; 1500];
        loop {
            let (len, from) = socket.recv_from(&mut buf).await?;
            let mut batch = vec![(buf[..len].to_vec(), from)];
            while batch.len() < MAX_BATCH {
                match socket.try_recv_from(&mut buf) {
                    Ok((len, from)) => batch.push((buf[..len].to_vec(), from)),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            // UDP sends rarely block; one that would is sent after the batch.
            let mut send_now = |bytes: &[u8], dest: SocketAddr| socket.try_send_to(bytes, dest).is_ok();
            for (bytes, dest) in self.handle_batch(&batch, unix_now(), on_pxe_port, &mut send_now).await {
                if let Err(err) = socket.send_to(&bytes, dest).await {
                    warn!(%dest, error = %err, "sending DHCP reply failed");
                    metrics::counter!("slipway_dhcp_dropped_total", "reason" => "send_failed").increment(1);
                }
            }
        }
    }
}

/// Most requests answered per lease write.
const MAX_BATCH: usize = 256;

fn log_decision(req: &Request, decision: &super::decide::Decision) {
    let reply_ip = decision.reply.as_ref().map_or_else(String::new, |r| r.yiaddr.to_string());
    info!(
        mac = %req.mac,
        xid = req.xid,
        msg_type = req.message_type.label(),
        client = decision.client.label(),
        firmware = decision.client.firmware.label(),
        outcome = decision.outcome.label(),
        reason = outcome_reason(decision.outcome),
        ip = reply_ip,
        "dhcp decision"
    );
    metrics::counter!(
        "slipway_dhcp_decisions_total",
        "outcome" => decision.outcome.label(),
        "reason" => outcome_reason(decision.outcome),
        "client" => decision.client.label()
    )
    .increment(1);
}

fn is_offer(op: &LeaseOp) -> bool {
    matches!(op, LeaseOp::Upsert(lease) if lease.state == super::leases::LeaseState::Offered)
}

fn outcome_reason(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Naked(r) | Outcome::Ignored(r) => r,
        _ => "",
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A UDP socket on `0.0.0.0:port` bound to `interface` (when given) that
/// may send broadcasts: the DHCP server's socket.
pub fn bind_socket(interface: Option<&str>, addr: SocketAddrV4) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    // Room for a PXE storm's burst (1,000 DISCOVERs arrive within
    // milliseconds) while a batch is being written. As root, force past
    // net.core.rmem_max; otherwise take what the kernel allows.
    if nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBufForce, &(8 << 20)).is_err() {
        let _ = socket.set_recv_buffer_size(8 << 20);
    }
    if let Some(iface) = interface {
        socket.bind_device(Some(iface.as_bytes()))?;
    }
    socket.bind(&SocketAddr::V4(addr).into())?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::packet::tests::ipxe_discover;
    use std::sync::Mutex as StdMutex;

    #[derive(Default)]
    struct Recorder {
        saved: StdMutex<Vec<LeaseOp>>,
        fail: bool,
    }

    impl DhcpBackend for Arc<Recorder> {
        async fn save(&self, ops: &[LeaseOp], _: &LeaseTable) -> Result<(), String> {
            if self.fail {
                return Err("disk full".into());
            }
            self.saved.lock().unwrap().extend_from_slice(ops);
            Ok(())
        }
        async fn known(&self, _: MacAddr) -> bool {
            false
        }
        fn bound(&self, _: MacAddr, _: Ipv4Addr, _: ClientKind) {}
    }

    /// Our test config plus a relayed subnet on loopback, so a test can
    /// play the relay and receive replies at giaddr 127.0.0.1.
    fn config() -> DhcpConfig {
        let mut cfg = crate::dhcp::decide::tests_support::config();
        cfg.relay_subnets.push(crate::dhcp::Subnet {
            network: Ipv4Addr::new(127, 0, 0, 0),
            netmask: Ipv4Addr::new(255, 0, 0, 0),
            pool_start: Ipv4Addr::new(127, 0, 9, 100),
            pool_end: Ipv4Addr::new(127, 0, 9, 199),
            router: None,
        });
        cfg
    }

    const FROM: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68));

    fn relayed(mut bytes: Vec<u8>) -> Vec<u8> {
        bytes[24..28].copy_from_slice(&[127, 0, 0, 1]); // giaddr: the reply comes back to us
        bytes
    }

    /// Malformed, truncated and unknown datagrams are dropped and counted
    /// over a real socket, and the server keeps answering good requests.
    #[tokio::test]
    async fn garbage_is_dropped_and_counted_without_disturbing_service() {
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let ports = Ports { server: 0, client: 0, relay: client.local_addr().unwrap().port(), pxe: 0 };
        let server_socket = bind_socket(None, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
        let server_addr = server_socket.local_addr().unwrap();
        let recorder = Arc::new(Recorder::default());
        let server = DhcpServer::new(config(), ports, LeaseTable::default(), recorder.clone());
        let task = tokio::spawn(server.clone().run(server_socket, false));

        let good = relayed(ipxe_discover([0x52, 0x54, 0, 0, 0, 7]));
        let mut unknown_type = good.clone();
        unknown_type[242] = 42; // option 53's value
        let garbage: Vec<Vec<u8>> =
            vec![vec![], vec![0xff; 3], good[..200].to_vec(), good[..241].to_vec(), unknown_type, vec![1; 576]];
        for bytes in &garbage {
            client.send_to(bytes, server_addr).await.unwrap();
        }
        client.send_to(&good, server_addr).await.unwrap();
        let mut buf = [0u8; 1500];
        let (len, _) = tokio::time::timeout(std::time::Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .expect("the good request is answered")
            .unwrap();
        assert!(len > 240);
        assert_eq!(buf[0], 2, "a BOOTREPLY");
        assert_eq!(server.stats.dropped_malformed.load(Ordering::Relaxed), garbage.len() as u64);
        assert_eq!(server.stats.received.load(Ordering::Relaxed), garbage.len() as u64 + 1);
        assert_eq!(server.stats.replied.load(Ordering::Relaxed), 1);
        task.abort();
    }

    #[tokio::test]
    async fn no_ack_when_the_lease_cannot_be_stored() {
        let recorder = Arc::new(Recorder { fail: true, ..Default::default() });
        let server = DhcpServer::new(config(), Ports::default(), LeaseTable::default(), recorder);
        // The offer needs no disk; the ACK does.
        assert!(server.handle(&ipxe_discover([2, 0, 0, 0, 0, 1]), 0, FROM, false).await.is_some());
        let mut request = ipxe_discover([2, 0, 0, 0, 0, 1]);
        request.truncate(240);
        request.extend_from_slice(&[53, 1, 3, 50, 4, 10, 77, 0, 100, 255]);
        assert!(server.handle(&request, 0, FROM, false).await.is_none());
        assert_eq!(server.stats.store_errors.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_batch_commits_once_and_fails_whole() {
        let request = |last: u8| {
            let mut b = ipxe_discover([2, 0, 0, 0, 0, last]);
            b.truncate(240);
            b.extend_from_slice(&[53, 1, 3, 50, 4, 10, 77, 0, 99 + last, 255]);
            (b, FROM)
        };
        let recorder = Arc::new(Recorder::default());
        let server = DhcpServer::new(config(), Ports::default(), LeaseTable::default(), recorder.clone());
        let mut sent_early = vec![];
        let mut send_now = |bytes: &[u8], _: SocketAddr| {
            sent_early.push(bytes.to_vec());
            true
        };
        let replies = server.handle_batch(&[request(1), request(2)], 0, false, &mut send_now).await;
        assert_eq!(replies.len(), 2, "ACKs wait for the write");
        assert_eq!(recorder.saved.lock().unwrap().len(), 2, "both leases stored");

        let failing = Arc::new(Recorder { fail: true, ..Default::default() });
        let server = DhcpServer::new(config(), Ports::default(), LeaseTable::default(), failing);
        let discover = (ipxe_discover([2, 0, 0, 0, 0, 3]), FROM);
        let replies = server.handle_batch(&[request(1), discover], 0, false, &mut send_now).await;
        assert!(replies.is_empty(), "no ACK leaves unstored");
        assert!(server.table.lock().await.is_empty(), "memory is rolled back with the write");
        assert_eq!(sent_early.len(), 1, "the OFFER needed no write and did not wait for it");
        use dhcproto::v4::{Decodable, Decoder, Message, MessageType};
        let early = Message::decode(&mut Decoder::new(&sent_early[0])).unwrap();
        assert_eq!(early.opts().msg_type(), Some(MessageType::Offer));
    }

    #[tokio::test]
    async fn replies_are_broadcast_unless_relayed() {
        let server = DhcpServer::new(config(), Ports::default(), LeaseTable::default(), Arc::new(Recorder::default()));
        let (_, dest) = server.handle(&ipxe_discover([2, 0, 0, 0, 0, 1]), 0, FROM, false).await.unwrap();
        assert_eq!(dest, "255.255.255.255:68".parse().unwrap());
        let (_, dest) = server.handle(&relayed(ipxe_discover([2, 0, 0, 0, 0, 2])), 0, FROM, false).await.unwrap();
        assert_eq!(dest, "127.0.0.1:67".parse().unwrap());
    }
}
