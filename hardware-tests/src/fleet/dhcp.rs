//! The fleet's DHCP: every simulated machine's exchange goes to the real
//! DHCP server through one relay agent, as racks behind a router do. The
//! relay is this process: one socket on the giaddr, port 67, sends each
//! machine's DISCOVER and REQUEST (as iPXE would, option 77 `iPXE`) and
//! hands each reply to the machine waiting for its transaction id.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use dhcproto::v4::{Decodable, Decoder, DhcpOption, Encodable, Encoder, Flags, Message, MessageType, Opcode};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

/// Waits for a reply before sending again (as iPXE: 1, 2, 4, 8 s).
const BACKOFF: [u64; 4] = [1, 2, 4, 8];

pub struct Relay {
    socket: UdpSocket,
    giaddr: Ipv4Addr,
    server: SocketAddr,
    waiting: Mutex<HashMap<u32, oneshot::Sender<Message>>>,
    next_xid: AtomicU32,
    /// Replies no machine was waiting for (late retransmissions answered).
    pub stray_replies: AtomicU32,
}

impl Relay {
    /// Binds the relay on `giaddr:67` and starts reading replies.
    pub async fn start(giaddr: Ipv4Addr, server: Ipv4Addr) -> anyhow::Result<Arc<Relay>> {
        let socket =
            UdpSocket::bind((giaddr, 67)).await.with_context(|| format!("binding the relay on {giaddr}:67"))?;
        let relay = Arc::new(Relay {
            socket,
            giaddr,
            server: SocketAddr::from((server, 67)),
            waiting: Mutex::default(),
            next_xid: AtomicU32::new(0x4100_0000),
            stray_replies: AtomicU32::new(0),
        });
        let reader = relay.clone();
        tokio::spawn(async move { reader.read_replies().await });
        Ok(relay)
    }

    async fn read_replies(&self) {
        let mut buf = vec![0u8; 1500];
        loop {
            let Ok((len, _)) = self.socket.recv_from(&mut buf).await else { continue };
            let Ok(reply) = Message::decode(&mut Decoder::new(&buf[..len])) else { continue };
            let waiter = self.waiting.lock().expect("relay lock").remove(&reply.xid());
            match waiter {
                Some(tx) => {
                    let _ = tx.send(reply);
                }
                None => {
                    self.stray_replies.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// DISCOVER, OFFER, REQUEST, ACK for `mac`; the address ACKed.
    pub async fn lease(&self, mac: [u8; 6]) -> anyhow::Result<Ipv4Addr> {
        let offer = self.ask(mac, MessageType::Discover, None).await?;
        let offered = offer.yiaddr();
        let server = match offer.opts().get(dhcproto::v4::OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => *ip,
            _ => bail!("the OFFER for {} names no server", mac_text(mac)),
        };
        let ack = self.ask(mac, MessageType::Request, Some((offered, server))).await?;
        match ack.opts().msg_type() {
            Some(MessageType::Ack) if ack.yiaddr() == offered => Ok(offered),
            other => bail!("REQUEST of {offered} for {} answered {other:?}", mac_text(mac)),
        }
    }

    /// Sends one message kind, retransmitting, until a reply comes.
    async fn ask(
        &self,
        mac: [u8; 6],
        kind: MessageType,
        requested: Option<(Ipv4Addr, Ipv4Addr)>,
    ) -> anyhow::Result<Message> {
        let xid = self.next_xid.fetch_add(1, Ordering::Relaxed);
        let packet = self.packet(mac, xid, kind, requested)?;
        for wait in BACKOFF {
            let (tx, rx) = oneshot::channel();
            self.waiting.lock().expect("relay lock").insert(xid, tx);
            self.socket.send_to(&packet, self.server).await.context("relaying")?;
            if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_secs(wait), rx).await {
                return Ok(reply);
            }
        }
        self.waiting.lock().expect("relay lock").remove(&xid);
        bail!("no answer to {kind:?} for {} after {} tries", mac_text(mac), BACKOFF.len())
    }

    fn packet(
        &self,
        mac: [u8; 6],
        xid: u32,
        kind: MessageType,
        requested: Option<(Ipv4Addr, Ipv4Addr)>,
    ) -> anyhow::Result<Vec<u8>> {
        let mut msg = Message::default();
        msg.set_opcode(Opcode::BootRequest)
            .set_xid(xid)
            .set_flags(Flags::default())
            .set_giaddr(self.giaddr)
            .set_hops(1)
            .set_chaddr(&mac);
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()));
        opts.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        opts.insert(DhcpOption::ClientSystemArchitecture(dhcproto::v4::Architecture::X86_Bios));
        if let Some((ip, server)) = requested {
            opts.insert(DhcpOption::RequestedIpAddress(ip));
            opts.insert(DhcpOption::ServerIdentifier(server));
        }
        let mut bytes = Vec::with_capacity(400);
        msg.encode(&mut Encoder::new(&mut bytes)).context("encoding a DHCP request")?;
        Ok(bytes)
    }
}

pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}
