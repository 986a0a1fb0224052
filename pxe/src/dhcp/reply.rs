//! Encoding a [`Reply`] into wire bytes with `dhcproto`'s encoder.

use dhcproto::v4::{self, DhcpOption, Encodable, Flags, Message, Opcode};

use super::decide::{DhcpConfig, Reply, ReplyKind};
use super::packet::Request;

/// PXE vendor options (option 43): PXE_DISCOVERY_CONTROL (6) = 8, "boot
/// the file named in this reply, no discovery". Without it UEFI firmware
/// (edk2/OVMF) treats a reply with a boot file as a BINL offer, asks port
/// 4011 for the file and gives up with PXE-E16.
const PXE_VENDOR_OPTIONS: [u8; 4] = [6, 1, 8, 255];

/// The BOOTP `file` field holds at most 128 bytes; longer names go in
/// option 67 only.
const FILE_FIELD_LEN: usize = 128;

pub fn encode_reply(req: &Request, reply: &Reply, cfg: &DhcpConfig) -> Vec<u8> {
    let mut msg = Message::new_with_id(
        req.xid,
        req.ciaddr,
        reply.yiaddr,
        if reply.kind == ReplyKind::Nak { std::net::Ipv4Addr::UNSPECIFIED } else { cfg.boot.tftp_server },
        req.giaddr,
        &req.mac.octets(),
    );
    msg.set_opcode(Opcode::BootReply);
    msg.set_flags(Flags::new(req.flags));
    let opts = msg.opts_mut();
    let ty = match reply.kind {
        ReplyKind::Offer | ReplyKind::ProxyOffer => v4::MessageType::Offer,
        ReplyKind::Ack | ReplyKind::InformAck | ReplyKind::ProxyAck => v4::MessageType::Ack,
        ReplyKind::Nak => v4::MessageType::Nak,
    };
    let proxy = matches!(reply.kind, ReplyKind::ProxyOffer | ReplyKind::ProxyAck);
    opts.insert(DhcpOption::MessageType(ty));
    opts.insert(DhcpOption::ServerIdentifier(cfg.server_ip));
    if reply.kind != ReplyKind::Nak {
        if matches!(reply.kind, ReplyKind::Offer | ReplyKind::Ack) {
            opts.insert(DhcpOption::AddressLeaseTime(cfg.lease_secs));
            opts.insert(DhcpOption::Renewal(cfg.lease_secs / 2));
            opts.insert(DhcpOption::Rebinding(cfg.lease_secs / 8 * 7));
        }
        // A proxy reply carries boot information only: the network
        // configuration is the other server's.
        if !proxy {
            opts.insert(DhcpOption::SubnetMask(reply.netmask));
            if let Some(router) = reply.router {
                opts.insert(DhcpOption::Router(vec![router]));
            }
            if !cfg.dns.is_empty() {
                opts.insert(DhcpOption::DomainNameServer(cfg.dns.clone()));
            }
        }
        if let Some(class) = reply.vendor_class {
            opts.insert(DhcpOption::ClassIdentifier(class.to_vec()));
        }
        if reply.pxe_rom && reply.boot_file.is_some() {
            opts.insert(DhcpOption::VendorExtensions(PXE_VENDOR_OPTIONS.to_vec()));
        }
        if let Some(file) = &reply.boot_file {
            opts.insert(DhcpOption::BootfileName(file.as_bytes().to_vec()));
        }
    }
    if let Some(info) = &reply.relay_info {
        opts.insert(DhcpOption::Unknown(v4::UnknownOption::new(v4::OptionCode::from(82u8), info.clone())));
    }
    if let Some(file) = reply.boot_file.as_ref().filter(|f| f.len() < FILE_FIELD_LEN) {
        if reply.kind != ReplyKind::Nak {
            msg.set_fname_str(file);
        }
    }
    // Encoding a message we built from validated values cannot fail; an
    // empty datagram would be dropped by the sender.
    msg.to_vec().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::packet::tests::ipxe_discover;
    use crate::dhcp::{decide, LeaseTable};
    use dhcproto::v4::Decodable;

    /// OVMF's own PXE gives up (PXE-E16) on an offer with a boot file but
    /// no PXE vendor options; iPXE needs none.
    #[test]
    fn regression_uefi_pxe_rom_gets_discovery_control() {
        let cfg = crate::dhcp::decide::tests_support::config();
        let mut ovmf = crate::dhcp::packet::tests::ipxe_discover([0x52, 0x54, 0, 0, 0, 8]);
        ovmf.truncate(240);
        ovmf.extend_from_slice(b"\x35\x01\x01\x3c\x20PXEClient:Arch:00007:UNDI:003016\x5d\x02\x00\x07\xff");
        for (bytes, expect_43) in [(ovmf, true), (ipxe_discover([0x52, 0x54, 0, 0, 0, 9]), false)] {
            let req = Request::parse(&bytes).unwrap();
            let d = decide(&req, &LeaseTable::default(), &cfg, 0, false);
            let msg =
                Message::decode(&mut v4::Decoder::new(&encode_reply(&req, d.reply.as_ref().unwrap(), &cfg))).unwrap();
            let vendor = msg.opts().get(v4::OptionCode::VendorExtensions);
            assert_eq!(vendor.is_some(), expect_43, "{:?}", d.client);
            if let Some(DhcpOption::VendorExtensions(v)) = vendor {
                assert_eq!(v, &PXE_VENDOR_OPTIONS);
            }
        }
    }

    #[test]
    fn offer_carries_address_and_script_url() {
        let req = Request::parse(&ipxe_discover([0x52, 0x54, 0, 0, 0, 9])).unwrap();
        let cfg = crate::dhcp::decide::tests_support::config();
        let d = decide(&req, &LeaseTable::default(), &cfg, 0, false);
        let bytes = encode_reply(&req, d.reply.as_ref().unwrap(), &cfg);
        let msg = Message::decode(&mut v4::Decoder::new(&bytes)).unwrap();
        assert_eq!(msg.opcode(), Opcode::BootReply);
        assert_eq!(msg.xid(), 0x1234_5678);
        assert_eq!(msg.yiaddr(), std::net::Ipv4Addr::new(10, 77, 0, 100));
        assert_eq!(msg.siaddr(), cfg.server_ip);
        assert_eq!(msg.opts().msg_type(), Some(v4::MessageType::Offer));
        // The BOOTP file field (offset 108): the URL, NUL-terminated.
        let url = b"http://10.77.0.1:8081/boot/52-54-00-00-00-09.ipxe";
        assert_eq!(&bytes[108..108 + url.len()], url);
        assert_eq!(bytes[108 + url.len()], 0);
        assert!(matches!(
            msg.opts().get(v4::OptionCode::ServerIdentifier),
            Some(DhcpOption::ServerIdentifier(ip)) if *ip == cfg.server_ip
        ));
    }
}
