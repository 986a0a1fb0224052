//! IPv6 router advertisements on the provisioning network.
//!
//! iPXE waits about 13 s for a router advertisement after DHCPv4 before it
//! continues without IPv6, on every boot. We answer its router solicitation
//! at once, and advertise every few seconds, with an RA that carries no
//! prefix, no M/O flags and a router lifetime of 0: iPXE (and any other
//! host) learns that there is no IPv6 configuration here and no default
//! router, and stops waiting.

use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tracing::{debug, info};

const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
/// Unsolicited advertisements, for clients whose solicitation we missed.
const PERIOD: Duration = Duration::from_secs(4);

/// The ICMPv6 router advertisement (RFC 4861 4.2) we send. The checksum is
/// left zero: the kernel fills it in for raw ICMPv6 sockets.
pub fn router_advertisement() -> [u8; 16] {
    let mut ra = [0u8; 16];
    ra[0] = ROUTER_ADVERTISEMENT;
    // code 0, checksum 0, cur hop limit 0 (unspecified), flags 0 (no DHCPv6),
    // router lifetime 0 (not a default router), reachable 0, retrans 0.
    ra
}

/// Raw ICMPv6 sockets deliver the ICMPv6 message without the IPv6 header.
pub fn is_router_solicitation(message: &[u8]) -> bool {
    message.first() == Some(&ROUTER_SOLICITATION) && message.get(1) == Some(&0)
}

/// From the kernel (netlink), not from /sys: a process that entered a
/// network namespace with setns still sees the old namespace's /sys.
fn ifindex(interface: &str) -> std::io::Result<u32> {
    nix::ifaddrs::getifaddrs()?
        .filter(|a| a.interface_name == interface)
        .find_map(|a| a.address?.as_link_addr()?.ifindex().try_into().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("no interface {interface}")))
}

/// Advertises on `interface` until the socket fails.
pub async fn run(interface: String) -> std::io::Result<()> {
    let step = |what: &'static str| move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{what}: {e}"));
    let index = ifindex(&interface).map_err(step("interface index"))?;
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).map_err(step("raw ICMPv6 socket"))?;
    socket.bind_device(Some(interface.as_bytes())).map_err(step("bind to interface"))?;
    socket.set_multicast_hops_v6(255).map_err(step("hop limit"))?; // RFC 4861: 255 or it is ignored
    socket.set_multicast_if_v6(index).map_err(step("multicast interface"))?;
    socket.set_multicast_loop_v6(false).map_err(step("multicast loop"))?;
    socket.join_multicast_v6(&ALL_ROUTERS, index).map_err(step("join ff02::2"))?;
    socket.set_nonblocking(true)?;
    // A raw ICMPv6 socket speaks sendto/recvfrom like a datagram socket, so
    // tokio's UdpSocket drives it without any unsafe registration.
    let socket = UdpSocket::from_std(std::net::UdpSocket::from(socket))?;
    let dest = std::net::SocketAddr::V6(SocketAddrV6::new(ALL_NODES, 0, 0, index));
    let ra = router_advertisement();
    let mut tick = tokio::time::interval(PERIOD);
    let mut buf = [0u8; 1500];
    info!(interface, "sending IPv6 router advertisements (no prefix, lifetime 0)");
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            received = socket.recv_from(&mut buf) => {
                let (len, _) = received?;
                if !is_router_solicitation(&buf[..len]) {
                    continue;
                }
                metrics::counter!("slipway_ra_solicitations_total").increment(1);
            }
        }
        // Before the interface has a link-local address, sending fails;
        // the next tick or solicitation tries again.
        if let Err(err) = socket.send_to(&ra, dest).await {
            debug!(interface, %err, "router advertisement not sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertisement_says_no_router_and_no_dhcpv6() {
        let ra = router_advertisement();
        assert_eq!(ra[0], 134);
        assert_eq!(ra[5] & 0xc0, 0, "M and O flags clear");
        assert_eq!(&ra[6..8], &[0, 0], "router lifetime 0");
    }

    #[test]
    fn recognizes_solicitations_only() {
        assert!(is_router_solicitation(&[133, 0, 0x12, 0x34, 0, 0, 0, 0]));
        assert!(!is_router_solicitation(&[134, 0]));
        assert!(!is_router_solicitation(&[133, 1]));
        assert!(!is_router_solicitation(&[]));
    }
}
