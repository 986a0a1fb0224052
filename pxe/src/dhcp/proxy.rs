//! proxyDHCP (PXE specification 2.1): beside an existing DHCP server we
//! hand out no addresses and answer only network-boot clients, with boot
//! information. A DISCOVER on port 67 gets a proxy OFFER (yiaddr 0.0.0.0);
//! a REQUEST to port 4011, sent once the client has its address from the
//! other server, gets a proxy ACK with the boot file.

use std::net::Ipv4Addr;

use super::decide::{policy_refusal, Decision, DhcpConfig, Outcome, Reply, ReplyKind};
use super::packet::{MessageType, Request};
use crate::boot;

/// `on_pxe_port`: the request arrived on port 4011 rather than 67.
pub fn decide_proxy(req: &Request, cfg: &DhcpConfig, known: bool, on_pxe_port: bool) -> Decision {
    let client = req.client_kind();
    let mut d = Decision { reply: None, ops: Vec::new(), outcome: Outcome::Ignored(""), client };
    if !client.is_pxe() {
        d.outcome = Outcome::Ignored("not a network-boot client (proxy mode)");
        return d;
    }
    if let Some(why) = policy_refusal(req, cfg, known) {
        d.outcome = Outcome::Ignored(why);
        return d;
    }
    let Some(boot_file) = boot::boot_file(&client, &req.mac, &cfg.boot) else {
        d.outcome = Outcome::Ignored("no boot file for this architecture");
        return d;
    };
    let (kind, outcome) = match (req.message_type, on_pxe_port) {
        (MessageType::Discover, false) => (ReplyKind::ProxyOffer, Outcome::ProxyOffered),
        (MessageType::Request | MessageType::Inform, true) => (ReplyKind::ProxyAck, Outcome::ProxyAcked),
        _ => {
            d.outcome = Outcome::Ignored("address traffic is for the other DHCP server");
            return d;
        }
    };
    d.reply = Some(Reply {
        kind,
        yiaddr: Ipv4Addr::UNSPECIFIED,
        boot_file: Some(boot_file),
        vendor_class: client.reply_vendor_class(),
        pxe_rom: client.is_pxe_rom(),
        netmask: cfg.netmask,
        router: None,
        relay_info: None,
    });
    d.outcome = outcome;
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::decide::tests_support::config;
    use crate::dhcp::packet::tests::ipxe_discover;

    fn request(options: &[u8], msg_type: u8) -> Request {
        let mut b = ipxe_discover([0x52, 0x54, 0, 0, 0, 1]);
        b.truncate(240);
        b.extend_from_slice(&[53, 1, msg_type]);
        b.extend_from_slice(options);
        b.push(255);
        Request::parse(&b).unwrap()
    }

    const PXE_UEFI: &[u8] = b"\x3c\x20PXEClient:Arch:00007:UNDI:003016\x5d\x02\x00\x07";

    #[test]
    fn pxe_discover_gets_boot_information_without_an_address() {
        let d = decide_proxy(&request(PXE_UEFI, 1), &config(), false, false);
        let reply = d.reply.unwrap();
        assert_eq!((reply.kind, reply.yiaddr), (ReplyKind::ProxyOffer, Ipv4Addr::UNSPECIFIED));
        assert_eq!(reply.boot_file.as_deref(), Some("snponly.efi"));
        assert!(d.ops.is_empty(), "proxy mode never touches leases");
    }

    #[test]
    fn port_4011_request_gets_the_boot_file() {
        let d = decide_proxy(&request(PXE_UEFI, 3), &config(), false, true);
        assert_eq!(d.outcome, Outcome::ProxyAcked);
        let d = decide_proxy(&request(PXE_UEFI, 3), &config(), false, false);
        assert_eq!(d.reply, None, "a REQUEST on 67 belongs to the other server");
    }

    #[test]
    fn ordinary_clients_are_left_to_the_other_server() {
        let d = decide_proxy(&request(b"", 1), &config(), false, false);
        assert_eq!(d.outcome, Outcome::Ignored("not a network-boot client (proxy mode)"));
    }
}
