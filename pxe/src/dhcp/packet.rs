//! The one place that parses untrusted DHCP bytes.
//!
//! We parse requests ourselves rather than with `dhcproto`'s decoder: that
//! decoder stops silently at the first option it cannot parse (losing the
//! message type that follows) and some of its length checks are
//! `debug_assert!`s that panic on malformed input. Here every offset is
//! named, every length checked, and every failure is a typed [`Malformed`].

use inventory::MacAddr;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use thiserror::Error;

const OP: usize = 0;
const HTYPE: usize = 1;
const HLEN: usize = 2;
const XID: usize = 4;
const FLAGS: usize = 10;
const CIADDR: usize = 12;
const GIADDR: usize = 24;
const CHADDR: usize = 28;
const MAGIC: usize = 236;
const OPTIONS: usize = 240;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
const BOOTREQUEST: u8 = 1;
const HTYPE_ETHERNET: u8 = 1;

/// Why a datagram was dropped. The variant name is the metrics label.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Malformed {
    #[error("datagram of {0} bytes is shorter than a BOOTP header with cookie")]
    Truncated(usize),
    #[error("op {0} is not BOOTREQUEST")]
    NotRequest(u8),
    #[error("hardware type {htype} length {hlen} is not Ethernet")]
    NotEthernet { htype: u8, hlen: u8 },
    #[error("magic cookie missing")]
    NoCookie,
    #[error("option {code} runs past the end of the datagram")]
    OptionOverrun { code: u8 },
    #[error("option {code} has invalid length {len}")]
    BadOptionLength { code: u8, len: usize },
    #[error("no DHCP message type (option 53)")]
    NoMessageType,
    #[error("unknown DHCP message type {0}")]
    UnknownMessageType(u8),
}

impl Malformed {
    /// A short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Malformed::Truncated(_) => "truncated",
            Malformed::NotRequest(_) => "not_request",
            Malformed::NotEthernet { .. } => "not_ethernet",
            Malformed::NoCookie => "no_cookie",
            Malformed::OptionOverrun { .. } => "option_overrun",
            Malformed::BadOptionLength { .. } => "bad_option_length",
            Malformed::NoMessageType => "no_message_type",
            Malformed::UnknownMessageType(_) => "unknown_message_type",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Discover,
    Request,
    Decline,
    Release,
    Inform,
}

impl MessageType {
    pub fn label(self) -> &'static str {
        match self {
            MessageType::Discover => "discover",
            MessageType::Request => "request",
            MessageType::Decline => "decline",
            MessageType::Release => "release",
            MessageType::Inform => "inform",
        }
    }
}

/// A client request, validated. Options are kept raw by code; typed
/// accessors read the ones the decision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub message_type: MessageType,
    pub xid: u32,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub mac: MacAddr,
    pub options: BTreeMap<u8, Vec<u8>>,
}

pub mod code {
    pub const REQUESTED_IP: u8 = 50;
    pub const RELAY_AGENT_INFO: u8 = 82;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const VENDOR_CLASS: u8 = 60;
    pub const USER_CLASS: u8 = 77;
    pub const CLIENT_ARCH: u8 = 93;
    pub const IPXE_FEATURES: u8 = 175;
}

impl Request {
    pub fn parse(bytes: &[u8]) -> Result<Request, Malformed> {
        if bytes.len() < OPTIONS {
            return Err(Malformed::Truncated(bytes.len()));
        }
        if bytes[OP] != BOOTREQUEST {
            return Err(Malformed::NotRequest(bytes[OP]));
        }
        if bytes[HTYPE] != HTYPE_ETHERNET || bytes[HLEN] != 6 {
            return Err(Malformed::NotEthernet { htype: bytes[HTYPE], hlen: bytes[HLEN] });
        }
        if bytes[MAGIC..OPTIONS] != MAGIC_COOKIE {
            return Err(Malformed::NoCookie);
        }
        let options = parse_options(&bytes[OPTIONS..])?;
        let message_type = match options.get(&code::MESSAGE_TYPE).map(Vec::as_slice) {
            None => return Err(Malformed::NoMessageType),
            Some([t]) => match t {
                1 => MessageType::Discover,
                3 => MessageType::Request,
                4 => MessageType::Decline,
                7 => MessageType::Release,
                8 => MessageType::Inform,
                other => return Err(Malformed::UnknownMessageType(*other)),
            },
            Some(v) => return Err(Malformed::BadOptionLength { code: code::MESSAGE_TYPE, len: v.len() }),
        };
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&bytes[CHADDR..CHADDR + 6]);
        Ok(Request {
            message_type,
            xid: u32::from_be_bytes(array(bytes, XID)),
            flags: u16::from_be_bytes([bytes[FLAGS], bytes[FLAGS + 1]]),
            ciaddr: Ipv4Addr::from(array(bytes, CIADDR)),
            giaddr: Ipv4Addr::from(array(bytes, GIADDR)),
            mac: MacAddr(mac),
            options,
        })
    }

    pub fn option(&self, code: u8) -> Option<&[u8]> {
        self.options.get(&code).map(Vec::as_slice)
    }

    pub fn requested_ip(&self) -> Option<Ipv4Addr> {
        self.option(code::REQUESTED_IP).map(ipv4)
    }

    pub fn server_id(&self) -> Option<Ipv4Addr> {
        self.option(code::SERVER_ID).map(ipv4)
    }

    /// The client asked for a broadcast reply (flags bit 15).
    pub fn wants_broadcast(&self) -> bool {
        self.flags & 0x8000 != 0
    }
}

fn array(bytes: &[u8], at: usize) -> [u8; 4] {
    [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]
}

/// Only called on options whose length was checked to be 4.
fn ipv4(v: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(v[0], v[1], v[2], v[3])
}

/// Walks the TLV options. Repeated options are concatenated (RFC 3396).
fn parse_options(mut rest: &[u8]) -> Result<BTreeMap<u8, Vec<u8>>, Malformed> {
    let mut options: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
    loop {
        match rest {
            // A missing END is common enough (truncated padding) to accept.
            [] | [255, ..] => break,
            [0, tail @ ..] => rest = tail,
            [code, len, tail @ ..] => {
                let len = *len as usize;
                if tail.len() < len {
                    return Err(Malformed::OptionOverrun { code: *code });
                }
                options.entry(*code).or_default().extend_from_slice(&tail[..len]);
                rest = &tail[len..];
            }
            [code] => return Err(Malformed::OptionOverrun { code: *code }),
        }
    }
    for (code, value) in &options {
        let ok = match *code {
            code::REQUESTED_IP | code::SERVER_ID => value.len() == 4,
            code::CLIENT_ARCH => !value.is_empty() && value.len() % 2 == 0,
            _ => true,
        };
        if !ok {
            return Err(Malformed::BadOptionLength { code: *code, len: value.len() });
        }
    }
    Ok(options)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A DHCPDISCOVER as QEMU's BIOS iPXE sends it (options from the brief).
    pub(crate) fn ipxe_discover(mac: impl Into<MacAddr>) -> Vec<u8> {
        let mac: MacAddr = mac.into();
        let mut b = vec![0u8; OPTIONS];
        b[OP] = 1;
        b[HTYPE] = 1;
        b[HLEN] = 6;
        b[XID..XID + 4].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        b[FLAGS] = 0x80;
        b[CHADDR..CHADDR + 6].copy_from_slice(&mac.octets());
        b[MAGIC..OPTIONS].copy_from_slice(&MAGIC_COOKIE);
        let class = b"PXEClient:Arch:00000:UNDI:002001";
        b.extend_from_slice(&[53, 1, 1]);
        b.extend_from_slice(&[60, class.len() as u8]);
        b.extend_from_slice(class);
        b.extend_from_slice(&[77, 4]);
        b.extend_from_slice(b"iPXE");
        b.extend_from_slice(&[93, 2, 0, 0]);
        b.extend_from_slice(&[175, 3, 0x13, 1, 1]);
        b.push(255);
        b
    }

    #[test]
    fn parses_an_ipxe_discover() {
        let req = Request::parse(&ipxe_discover([0x52, 0x54, 0, 1, 2, 3])).unwrap();
        assert_eq!(req.message_type, MessageType::Discover);
        assert_eq!(req.xid, 0x1234_5678);
        assert!(req.wants_broadcast());
        assert_eq!(req.mac.to_string(), "52:54:00:01:02:03");
        assert_eq!(req.option(code::USER_CLASS), Some(&b"iPXE"[..]));
        assert_eq!(req.option(code::CLIENT_ARCH), Some(&[0u8, 0][..]));
    }

    fn check(bytes: &[u8], expected: Malformed) {
        assert_eq!(Request::parse(bytes), Err(expected));
    }

    #[test]
    fn rejects_malformed_datagrams() {
        let good = ipxe_discover([2, 0, 0, 0, 0, 1]);
        check(&[], Malformed::Truncated(0));
        check(&good[..239], Malformed::Truncated(239));
        let mut reply = good.clone();
        reply[OP] = 2;
        check(&reply, Malformed::NotRequest(2));
        let mut token_ring = good.clone();
        token_ring[HTYPE] = 6;
        check(&token_ring, Malformed::NotEthernet { htype: 6, hlen: 6 });
        let mut no_cookie = good.clone();
        no_cookie[MAGIC] = 0;
        check(&no_cookie, Malformed::NoCookie);
        let mut overrun = good[..OPTIONS].to_vec();
        overrun.extend_from_slice(&[53, 1, 1, 60, 200, b'P']);
        check(&overrun, Malformed::OptionOverrun { code: 60 });
        let mut bad_ip = good[..OPTIONS].to_vec();
        bad_ip.extend_from_slice(&[53, 1, 3, 50, 3, 10, 0, 0, 255]);
        check(&bad_ip, Malformed::BadOptionLength { code: 50, len: 3 });
        let mut no_type = good[..OPTIONS].to_vec();
        no_type.push(255);
        check(&no_type, Malformed::NoMessageType);
        let mut offer = good[..OPTIONS].to_vec();
        offer.extend_from_slice(&[53, 1, 2, 255]);
        check(&offer, Malformed::UnknownMessageType(2));
    }

    #[test]
    fn random_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let good = ipxe_discover([2, 0, 0, 0, 0, 1]);
        for _ in 0..20_000 {
            let mut b = good.clone();
            for _ in 0..rng.gen_range(1..8) {
                let i = rng.gen_range(0..b.len());
                b[i] = rng.gen();
            }
            b.truncate(rng.gen_range(0..=b.len()));
            let _ = Request::parse(&b);
        }
    }
}
