//! The DHCP decision: a pure function from a request, the lease table, the
//! configuration and the time to a reply and the lease changes it implies.

use inventory::MacAddr;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use super::leases::{Lease, LeaseOp, LeaseState, LeaseTable};
use super::packet::{code, MessageType, Request};
use crate::boot::{self, BootConfig, ClientKind};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpConfig {
    /// Our address on the provisioning network: server identifier, TFTP
    /// next-server.
    pub server_ip: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub pool_start: Ipv4Addr,
    pub pool_end: Ipv4Addr,
    /// Subnets behind DHCP relays (one per rack), chosen by giaddr.
    pub relay_subnets: Vec<Subnet>,
    pub lease_secs: u32,
    /// How long an offered address is held for the client's REQUEST.
    pub offer_hold_secs: u32,
    pub boot: BootConfig,
    pub mode: DhcpMode,
    /// Fixed addresses by MAC (inside or outside the pool, inside the
    /// subnet); never given to another client.
    pub reservations: HashMap<MacAddr, Ipv4Addr>,
    /// MACs that are never answered.
    pub deny: HashSet<MacAddr>,
    /// Answer MACs Slipway does not know yet (discovery of new hardware).
    /// When false, only known machines and reservations get replies.
    pub answer_unknown: bool,
}

impl DhcpConfig {
    /// A small authoritative network, 10.77.0.0/24 with a pool of
    /// .100-.199 (the lab's addressing): a starting point for tests, fuzzing
    /// and examples.
    pub fn example() -> DhcpConfig {
        let server_ip = Ipv4Addr::new(10, 77, 0, 1);
        DhcpConfig {
            server_ip,
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            router: None,
            dns: vec![],
            pool_start: Ipv4Addr::new(10, 77, 0, 100),
            pool_end: Ipv4Addr::new(10, 77, 0, 199),
            relay_subnets: vec![],
            lease_secs: 600,
            offer_hold_secs: 30,
            boot: BootConfig {
                tftp_server: server_ip,
                http_base: "http://10.77.0.1:8081".into(),
                bios_file: "undionly.kpxe".into(),
                uefi_file: "snponly.efi".into(),
                uefi_signed: false,
                arm64_file: String::new(),
            },
            mode: DhcpMode::Authoritative,
            reservations: HashMap::new(),
            deny: HashSet::new(),
            answer_unknown: true,
        }
    }
}

/// A subnet we hand addresses out on: the local one, or one behind a relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    /// Any address of the subnet (a relay's giaddr matches by netmask).
    pub network: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub pool_start: Ipv4Addr,
    pub pool_end: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
}

impl Subnet {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & u32::from(self.netmask) == u32::from(self.network) & u32::from(self.netmask)
    }

    fn in_pool(&self, ip: Ipv4Addr) -> bool {
        (self.pool_start..=self.pool_end).contains(&ip)
    }
}

impl DhcpConfig {
    /// The subnet a request is for: by its relay's giaddr, else ours.
    pub fn subnet_for(&self, req: &Request) -> Option<Subnet> {
        if req.giaddr.is_unspecified() {
            return Some(Subnet {
                network: self.server_ip,
                netmask: self.netmask,
                pool_start: self.pool_start,
                pool_end: self.pool_end,
                router: self.router,
            });
        }
        self.relay_subnets.iter().find(|s| s.contains(req.giaddr)).cloned()
    }
}

/// How this network's DHCP is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DhcpMode {
    /// We hand out addresses and boot information.
    Authoritative,
    /// Another server hands out addresses; we answer PXE clients with boot
    /// information only (ports 67 and 4011).
    Proxy,
}

/// The reply to send, before encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub kind: ReplyKind,
    pub yiaddr: Ipv4Addr,
    /// Boot file (PXE: a TFTP path; iPXE: a script URL).
    pub boot_file: Option<String>,
    /// Option 60 to echo (`PXEClient` or `HTTPClient`).
    pub vendor_class: Option<&'static [u8]>,
    /// A firmware PXE client (not iPXE yet): told to download the boot
    /// file at once instead of running PXE boot-server discovery.
    pub pxe_rom: bool,
    /// The client's subnet mask and router (its relay's subnet, if relayed).
    pub netmask: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    /// Relay agent information (option 82), echoed as RFC 3046 requires.
    pub relay_info: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    Offer,
    Ack,
    /// ACK to a DHCPINFORM: configuration only, no lease.
    InformAck,
    Nak,
    /// proxyDHCP: boot information only, no address (yiaddr 0).
    ProxyOffer,
    /// proxyDHCP on port 4011: the boot file for a client that has an
    /// address from another server.
    ProxyAck,
}

impl ReplyKind {
    /// The `kind` label of `slipway_dhcp_replies_total`.
    pub fn label(self) -> &'static str {
        match self {
            ReplyKind::Offer => "offer",
            ReplyKind::Ack => "ack",
            ReplyKind::InformAck => "inform_ack",
            ReplyKind::Nak => "nak",
            ReplyKind::ProxyOffer => "proxy_offer",
            ReplyKind::ProxyAck => "proxy_ack",
        }
    }
}

/// What happened, for the log line and the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    ProxyOffered,
    ProxyAcked,
    Offered,
    Acked,
    Informed,
    Naked(&'static str),
    Released,
    Declined,
    Ignored(&'static str),
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::ProxyOffered => "proxy_offer",
            Outcome::ProxyAcked => "proxy_ack",
            Outcome::Offered => "offer",
            Outcome::Acked => "ack",
            Outcome::Informed => "inform_ack",
            Outcome::Naked(_) => "nak",
            Outcome::Released => "release",
            Outcome::Declined => "decline",
            Outcome::Ignored(_) => "ignored",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub reply: Option<Reply>,
    pub ops: Vec<LeaseOp>,
    pub outcome: Outcome,
    pub client: ClientKind,
}

/// How long a declined address stays out of the pool.
const QUARANTINE_SECS: u64 = 600;

/// `known`: the MAC belongs to a machine Slipway already has (only
/// consulted when `cfg.answer_unknown` is false).
pub fn decide(req: &Request, leases: &LeaseTable, cfg: &DhcpConfig, now: u64, known: bool) -> Decision {
    let client = req.client_kind();
    let mut d = Decision { reply: None, ops: Vec::new(), outcome: Outcome::Ignored(""), client };
    if let Some(why) = policy_refusal(req, cfg, known) {
        d.outcome = Outcome::Ignored(why);
        return d;
    }
    let reserved = cfg.reservations.get(&req.mac).copied();
    let Some(subnet) = cfg.subnet_for(req) else {
        d.outcome = Outcome::Ignored("relayed from a subnet we have no pool for");
        return d;
    };
    let boot_file = boot::boot_file(&client, &req.mac, &cfg.boot);
    let reply = |kind, yiaddr| Reply {
        kind,
        yiaddr,
        boot_file: boot_file.clone(),
        vendor_class: client.reply_vendor_class(),
        pxe_rom: client.is_pxe_rom(),
        netmask: subnet.netmask,
        router: subnet.router,
        relay_info: req.option(code::RELAY_AGENT_INFO).map(<[u8]>::to_vec),
    };
    let bind =
        |ip, state, secs: u32| LeaseOp::Upsert(Lease { mac: req.mac, ip, expires_at: now + u64::from(secs), state });

    match req.message_type {
        MessageType::Discover => match pick_address(req, leases, cfg, &subnet, now) {
            Some(ip) => {
                // Keep a bound lease bound; a fresh address is only offered.
                let state = match leases.by_mac(&req.mac) {
                    Some(l) if l.ip == ip && l.state == LeaseState::Bound && l.expires_at > now => LeaseState::Bound,
                    _ => LeaseState::Offered,
                };
                let secs = if state == LeaseState::Bound { cfg.lease_secs } else { cfg.offer_hold_secs };
                d.ops.push(bind(ip, state, secs));
                d.reply = Some(reply(ReplyKind::Offer, ip));
                d.outcome = Outcome::Offered;
            }
            None => d.outcome = Outcome::Ignored("pool exhausted"),
        },
        MessageType::Request => {
            if let Some(sid) = req.server_id() {
                if sid != cfg.server_ip {
                    // The client chose another server's offer: free ours.
                    if leases.by_mac(&req.mac).is_some_and(|l| l.state == LeaseState::Offered) {
                        d.ops.push(LeaseOp::Remove { mac: req.mac });
                    }
                    d.outcome = Outcome::Ignored("client chose another server");
                    return d;
                }
            }
            // SELECTING / INIT-REBOOT name the address in option 50;
            // RENEWING / REBINDING put it in ciaddr.
            let wanted = req.requested_ip().or((!req.ciaddr.is_unspecified()).then_some(req.ciaddr));
            let Some(ip) = wanted else {
                d.reply = Some(reply(ReplyKind::Nak, Ipv4Addr::UNSPECIFIED));
                d.outcome = Outcome::Naked("no address requested");
                return d;
            };
            if reserved.is_some_and(|r| r != ip) {
                d.reply = Some(reply(ReplyKind::Nak, Ipv4Addr::UNSPECIFIED));
                d.outcome = Outcome::Naked("client has a different reserved address");
            } else if reserved.is_none() && !subnet.in_pool(ip) {
                d.reply = Some(reply(ReplyKind::Nak, Ipv4Addr::UNSPECIFIED));
                d.outcome = Outcome::Naked("address outside our pool");
            } else if reserved_for_another(ip, &req.mac, cfg) {
                d.reply = Some(reply(ReplyKind::Nak, Ipv4Addr::UNSPECIFIED));
                d.outcome = Outcome::Naked("address reserved for another client");
            } else if !leases.is_free_for(ip, &req.mac, now) {
                d.reply = Some(reply(ReplyKind::Nak, Ipv4Addr::UNSPECIFIED));
                d.outcome = Outcome::Naked("address held by another client");
            } else {
                // Authoritative: a free address in our pool is granted even
                // without a record (a client rebooting after we lost state).
                d.ops.push(bind(ip, LeaseState::Bound, cfg.lease_secs));
                d.reply = Some(reply(ReplyKind::Ack, ip));
                d.outcome = Outcome::Acked;
            }
        }
        MessageType::Release => {
            if leases.by_mac(&req.mac).is_some_and(|l| l.ip == req.ciaddr) {
                d.ops.push(LeaseOp::Remove { mac: req.mac });
                d.outcome = Outcome::Released;
            } else {
                d.outcome = Outcome::Ignored("release of a lease we do not hold");
            }
        }
        // Only the client we gave the address to may say it is in use: a
        // DECLINE from anyone else would let one host empty the pool.
        MessageType::Decline => match req.requested_ip() {
            Some(ip) if !subnet.in_pool(ip) => d.outcome = Outcome::Ignored("decline without an address of ours"),
            Some(ip) if leases.by_mac(&req.mac).is_some_and(|l| l.ip == ip) => {
                d.ops.push(LeaseOp::Quarantine { ip, until: now + QUARANTINE_SECS });
                d.outcome = Outcome::Declined;
            }
            Some(_) => d.outcome = Outcome::Ignored("decline of an address the client was not given"),
            None => d.outcome = Outcome::Ignored("decline without an address of ours"),
        },
        MessageType::Inform => {
            d.reply = Some(reply(ReplyKind::InformAck, Ipv4Addr::UNSPECIFIED));
            d.outcome = Outcome::Informed;
        }
    }
    d
}

/// Why this network does not answer this MAC at all, if it does not.
pub(super) fn policy_refusal(req: &Request, cfg: &DhcpConfig, known: bool) -> Option<&'static str> {
    if cfg.deny.contains(&req.mac) {
        Some("denied MAC")
    } else if !cfg.answer_unknown && !known && !cfg.reservations.contains_key(&req.mac) {
        Some("unknown MAC (answer_unknown is off)")
    } else {
        None
    }
}

fn reserved_for_another(ip: Ipv4Addr, mac: &MacAddr, cfg: &DhcpConfig) -> bool {
    cfg.reservations.iter().any(|(m, r)| *r == ip && m != mac)
}

/// The client's current address, else the one it asks for, else a free
/// address found by probing the pool from a point set by the MAC (as
/// dnsmasq does): a client tends to get the same address again even after
/// its lease is gone, and in a storm each DISCOVER probes a few addresses
/// instead of walking past every lease handed out before it.
fn pick_address(req: &Request, leases: &LeaseTable, cfg: &DhcpConfig, subnet: &Subnet, now: u64) -> Option<Ipv4Addr> {
    if let Some(ip) = cfg.reservations.get(&req.mac) {
        return leases.is_free_for(*ip, &req.mac, now).then_some(*ip);
    }
    let usable = |ip: Ipv4Addr| {
        subnet.in_pool(ip) && !reserved_for_another(ip, &req.mac, cfg) && leases.is_free_for(ip, &req.mac, now)
    };
    if let Some(lease) = leases.by_mac(&req.mac) {
        if usable(lease.ip) {
            return Some(lease.ip);
        }
    }
    if let Some(ip) = req.requested_ip().filter(|ip| usable(*ip)) {
        return Some(ip);
    }
    let (start, end) = (u32::from(subnet.pool_start), u32::from(subnet.pool_end));
    let size = u64::from(end.checked_sub(start)?) + 1;
    let first = mac_hash(&req.mac) % size;
    (0..size).map(|i| Ipv4Addr::from(start + ((first + i) % size) as u32)).find(|ip| usable(*ip))
}

/// FNV-1a: stable across builds and releases (std's hasher is not).
fn mac_hash(mac: &MacAddr) -> u64 {
    mac.octets().iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
pub(crate) mod tests_support {
    pub(crate) use super::tests::config;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::packet::tests::ipxe_discover;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
    const OTHER: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 2]);

    /// Two addresses in the pool (so exhaustion is easy to reach) and a
    /// relayed rack.
    pub(crate) fn config() -> DhcpConfig {
        DhcpConfig {
            pool_end: Ipv4Addr::new(10, 77, 0, 101),
            relay_subnets: vec![Subnet {
                network: Ipv4Addr::new(10, 78, 0, 0),
                netmask: Ipv4Addr::new(255, 255, 255, 0),
                pool_start: Ipv4Addr::new(10, 78, 0, 100),
                pool_end: Ipv4Addr::new(10, 78, 0, 199),
                router: Some(Ipv4Addr::new(10, 78, 0, 1)),
            }],
            lease_secs: 3600,
            offer_hold_secs: 60,
            ..DhcpConfig::example()
        }
    }

    fn request(mac: impl Into<MacAddr>, ty: u8, extra: &[u8]) -> Request {
        let mut b = ipxe_discover(mac);
        b.truncate(240);
        b.extend_from_slice(&[53, 1, ty]);
        b.extend_from_slice(extra);
        b.push(255);
        Request::parse(&b).unwrap()
    }

    fn run(table: &mut LeaseTable, req: &Request, now: u64) -> Decision {
        let d = decide(req, table, &config(), now, false);
        for op in &d.ops {
            table.apply(op);
        }
        d
    }

    #[test]
    fn discover_request_binds_the_offered_address() {
        let mut t = LeaseTable::default();
        let offer = run(&mut t, &request(MAC, 1, &[]), 1000);
        let ip = offer.reply.unwrap().yiaddr;
        assert_eq!(ip, Ipv4Addr::new(10, 77, 0, 100));
        assert_eq!(t.by_mac(&MAC).unwrap().state, LeaseState::Offered);

        let ack = run(&mut t, &request(MAC, 3, &[50, 4, 10, 77, 0, 100, 54, 4, 10, 77, 0, 1]), 1001);
        assert_eq!(ack.outcome, Outcome::Acked);
        let lease = t.by_mac(&MAC).unwrap();
        assert_eq!((lease.state, lease.expires_at), (LeaseState::Bound, 1001 + 3600));
    }

    #[test]
    fn two_clients_never_share_an_address() {
        let mut t = LeaseTable::default();
        let a = run(&mut t, &request(MAC, 1, &[]), 0).reply.unwrap().yiaddr;
        let b = run(&mut t, &request(OTHER, 1, &[]), 0).reply.unwrap().yiaddr;
        assert_ne!(a, b);
        // OTHER asking for MAC's address is refused.
        let nak = run(&mut t, &request(OTHER, 3, &[50, 4, 10, 77, 0, 100]), 1);
        assert_eq!(nak.outcome, Outcome::Naked("address held by another client"));
    }

    #[test]
    fn exhausted_pool_is_silent_until_an_offer_expires() {
        let mut t = LeaseTable::default();
        run(&mut t, &request(MAC, 1, &[]), 0);
        run(&mut t, &request(OTHER, 1, &[]), 0);
        let third = MacAddr([0x52, 0x54, 0, 0, 0, 3]);
        assert_eq!(run(&mut t, &request(third, 1, &[]), 10).outcome, Outcome::Ignored("pool exhausted"));
        assert_eq!(run(&mut t, &request(third, 1, &[]), 61).outcome, Outcome::Offered);
    }

    #[test]
    fn request_for_another_server_frees_our_offer() {
        let mut t = LeaseTable::default();
        run(&mut t, &request(MAC, 1, &[]), 0);
        let d = run(&mut t, &request(MAC, 3, &[50, 4, 192, 168, 9, 9, 54, 4, 192, 168, 9, 1]), 1);
        assert_eq!(d.reply, None);
        assert!(t.by_mac(&MAC).is_none());
    }

    #[test]
    fn request_outside_the_pool_is_naked() {
        let d = run(&mut LeaseTable::default(), &request(MAC, 3, &[50, 4, 192, 168, 1, 5]), 0);
        assert_eq!(d.reply.unwrap().kind, ReplyKind::Nak);
    }

    #[test]
    fn init_reboot_after_lost_state_is_granted() {
        let d = run(&mut LeaseTable::default(), &request(MAC, 3, &[50, 4, 10, 77, 0, 101]), 0);
        assert_eq!((d.outcome, d.reply.unwrap().yiaddr), (Outcome::Acked, Ipv4Addr::new(10, 77, 0, 101)));
    }

    #[test]
    fn only_the_holder_of_an_address_may_decline_it() {
        let mut t = LeaseTable::default();
        run(&mut t, &request(MAC, 1, &[]), 0);
        run(&mut t, &request(MAC, 3, &[50, 4, 10, 77, 0, 100]), 1);
        let other = MacAddr([0x52, 0x54, 0, 0xee, 0xee, 0xee]);
        let forged = run(&mut t, &request(other, 4, &[50, 4, 10, 77, 0, 100]), 2);
        assert!(matches!(forged.outcome, Outcome::Ignored(_)), "{:?}", forged.outcome);
        assert!(forged.ops.is_empty(), "nothing quarantined, nothing removed");
        // A free address nobody was given cannot be declined either.
        let free = run(&mut t, &request(other, 4, &[50, 4, 10, 77, 0, 150]), 3);
        assert!(matches!(free.outcome, Outcome::Ignored(_)) && free.ops.is_empty(), "{:?}", free.outcome);
        let renew = run(&mut t, &request(MAC, 3, &[50, 4, 10, 77, 0, 100]), 4);
        assert_eq!((renew.outcome, renew.reply.unwrap().yiaddr), (Outcome::Acked, Ipv4Addr::new(10, 77, 0, 100)));
    }

    #[test]
    fn decline_quarantines_and_release_frees() {
        let mut t = LeaseTable::default();
        run(&mut t, &request(MAC, 1, &[]), 0);
        run(&mut t, &request(MAC, 4, &[50, 4, 10, 77, 0, 100]), 1);
        let next = run(&mut t, &request(MAC, 1, &[]), 2).reply.unwrap().yiaddr;
        assert_eq!(next, Ipv4Addr::new(10, 77, 0, 101), "declined address is skipped");

        run(&mut t, &request(MAC, 3, &[50, 4, 10, 77, 0, 101]), 3);
        let mut release = request(MAC, 7, &[]);
        release.ciaddr = Ipv4Addr::new(10, 77, 0, 101);
        assert_eq!(run(&mut t, &release, 4).outcome, Outcome::Released);
        assert!(t.is_empty());
    }
}

#[cfg(test)]
mod policy_tests {
    use super::tests_support::config;
    use super::*;
    use crate::dhcp::packet::tests::ipxe_discover;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);

    fn discover(mac: impl Into<MacAddr>) -> Request {
        Request::parse(&ipxe_discover(mac)).unwrap()
    }

    #[test]
    fn denied_macs_are_never_answered() {
        let mut cfg = config();
        cfg.deny.insert(MAC);
        let d = decide(&discover(MAC), &LeaseTable::default(), &cfg, 0, true);
        assert_eq!((d.reply, d.outcome), (None, Outcome::Ignored("denied MAC")));
    }

    #[test]
    fn known_only_networks_ignore_strangers() {
        let mut cfg = config();
        cfg.answer_unknown = false;
        assert_eq!(decide(&discover(MAC), &LeaseTable::default(), &cfg, 0, false).reply, None);
        assert_eq!(decide(&discover(MAC), &LeaseTable::default(), &cfg, 0, true).outcome, Outcome::Offered);
        cfg.reservations.insert(MAC, Ipv4Addr::new(10, 77, 0, 50));
        assert_eq!(
            decide(&discover(MAC), &LeaseTable::default(), &cfg, 0, false).outcome,
            Outcome::Offered,
            "a reservation makes a MAC known"
        );
    }

    #[test]
    fn reservations_are_kept_for_their_owner() {
        let mut cfg = config();
        let other = MacAddr([0x52, 0x54, 0, 0, 0, 2]);
        cfg.reservations.insert(other, Ipv4Addr::new(10, 77, 0, 100)); // inside the pool
        cfg.reservations.insert(MAC, Ipv4Addr::new(10, 77, 0, 50)); // outside it
        let d = decide(&discover(MAC), &LeaseTable::default(), &cfg, 0, true);
        assert_eq!(d.reply.unwrap().yiaddr, Ipv4Addr::new(10, 77, 0, 50));
        let third = decide(&discover([0x52, 0x54, 0, 0, 0, 3]), &LeaseTable::default(), &cfg, 0, true);
        assert_eq!(third.reply.unwrap().yiaddr, Ipv4Addr::new(10, 77, 0, 101), "the reserved pool address is skipped");
        let mut steal = ipxe_discover([0x52, 0x54, 0, 0, 0, 3]);
        steal.truncate(240);
        steal.extend_from_slice(&[53, 1, 3, 50, 4, 10, 77, 0, 100, 255]);
        let d = decide(&Request::parse(&steal).unwrap(), &LeaseTable::default(), &cfg, 0, true);
        assert_eq!(d.outcome, Outcome::Naked("address reserved for another client"));
    }
}

#[cfg(test)]
mod relay_tests {
    use super::tests_support::config;
    use super::*;
    use crate::dhcp::packet::tests::ipxe_discover;

    fn relayed(giaddr: [u8; 4]) -> Request {
        let mut b = ipxe_discover([0x52, 0x54, 0, 0, 0, 1]);
        b[24..28].copy_from_slice(&giaddr);
        b.truncate(b.len() - 1);
        b.extend_from_slice(&[82, 6, 1, 4, b'r', b'k', b'0', b'1', 255]); // circuit id "rk01"
        Request::parse(&b).unwrap()
    }

    #[test]
    fn relayed_requests_get_their_subnet_pool_and_router() {
        let d = decide(&relayed([10, 78, 0, 1]), &LeaseTable::default(), &config(), 0, false);
        let reply = d.reply.unwrap();
        assert_eq!(reply.yiaddr, Ipv4Addr::new(10, 78, 0, 100));
        assert_eq!(reply.router, Some(Ipv4Addr::new(10, 78, 0, 1)));
        assert_eq!(reply.relay_info.as_deref(), Some(&[1, 4, b'r', b'k', b'0', b'1'][..]), "option 82 is echoed");
    }

    #[test]
    fn unknown_relay_subnets_are_ignored() {
        let d = decide(&relayed([192, 168, 5, 1]), &LeaseTable::default(), &config(), 0, false);
        assert_eq!(d.outcome, Outcome::Ignored("relayed from a subnet we have no pool for"));
    }
}
