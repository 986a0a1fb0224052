//! Property tests of the DHCP decision over many simulated clients: random
//! interleavings of DISCOVER, REQUEST, RELEASE and DECLINE from 40 clients
//! on a 16-address pool, with time moving on. Failing cases are kept in
//! `proptest-regressions/` next to this file.

use inventory::MacAddr;
use std::collections::HashMap;
use std::net::Ipv4Addr;

use proptest::prelude::*;
use pxe::dhcp::{decide, DhcpConfig, LeaseTable, Outcome, Request};

const CLIENTS: u8 = 40;

fn config() -> DhcpConfig {
    DhcpConfig { pool_end: Ipv4Addr::new(10, 77, 0, 115), ..DhcpConfig::example() }
}

#[derive(Debug, Clone)]
enum Step {
    Discover(u8),
    /// REQUEST for the address last offered to this client (or a stale one).
    Request(u8),
    /// REQUEST for an arbitrary address in or near the pool.
    RequestAny(u8, u8),
    Release(u8),
    Decline(u8),
    Wait(u16),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..CLIENTS).prop_map(Step::Discover),
        4 => (0..CLIENTS).prop_map(Step::Request),
        1 => (0..CLIENTS, 90u8..130).prop_map(|(c, a)| Step::RequestAny(c, a)),
        1 => (0..CLIENTS).prop_map(Step::Release),
        1 => (0..CLIENTS).prop_map(Step::Decline),
        1 => (1u16..900).prop_map(Step::Wait),
    ]
}

fn packet(client: u8, msg_type: u8, ciaddr: Option<Ipv4Addr>, options: &[(u8, Vec<u8>)]) -> Request {
    let mut b = vec![0u8; 240];
    b[0] = 1;
    b[1] = 1;
    b[2] = 6;
    b[4..8].copy_from_slice(&u32::from(client).to_be_bytes());
    if let Some(ip) = ciaddr {
        b[12..16].copy_from_slice(&ip.octets());
    }
    b[28..34].copy_from_slice(&[0x52, 0x54, 0, 0, 0x10, client]);
    b[236..240].copy_from_slice(&[99, 130, 83, 99]);
    b.extend_from_slice(&[53, 1, msg_type]);
    for (code, value) in options {
        b.push(*code);
        b.push(value.len() as u8);
        b.extend_from_slice(value);
    }
    b.push(255);
    Request::parse(&b).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn no_address_is_ever_held_by_two_clients(steps in proptest::collection::vec(step(), 1..300)) {
        let cfg = config();
        let mut table = LeaseTable::default();
        let mut now = 1_000u64;
        let mut offered: HashMap<u8, Ipv4Addr> = HashMap::new();
        for step in steps {
            let req = match step {
                Step::Wait(secs) => { now += u64::from(secs); continue; }
                Step::Discover(c) => packet(c, 1, None, &[]),
                Step::Request(c) => {
                    let ip = offered.get(&c).copied().unwrap_or(Ipv4Addr::new(10, 77, 0, 100));
                    packet(c, 3, None, &[(50, ip.octets().to_vec()), (54, vec![10, 77, 0, 1])])
                }
                Step::RequestAny(c, last) => packet(c, 3, None, &[(50, vec![10, 77, 0, last])]),
                Step::Release(c) => packet(c, 7, offered.get(&c).copied(), &[]),
                Step::Decline(c) => packet(c, 4, None, &[(50, offered.get(&c).copied().unwrap_or(Ipv4Addr::UNSPECIFIED).octets().to_vec())]),
            };
            let client = req.mac.octets()[5];
            let d = decide(&req, &table, &cfg, now, false);
            if let Some(reply) = &d.reply {
                if matches!(d.outcome, Outcome::Offered | Outcome::Acked) {
                    let ip = reply.yiaddr;
                    prop_assert!((cfg.pool_start..=cfg.pool_end).contains(&ip), "{ip} outside the pool");
                    // Nobody else holds it, unexpired, at this moment.
                    let other = table.leases().find(|l| l.ip == ip && l.mac != req.mac && l.expires_at > now);
                    prop_assert!(other.is_none(), "{ip} handed to {client} while held: {other:?}");
                    offered.insert(client, ip);
                }
            }
            if d.outcome == Outcome::Ignored("pool exhausted") {
                // Exhaustion is claimed only when no address could be given.
                let free = (100u8..=115).map(|n| Ipv4Addr::new(10, 77, 0, n)).find(|ip| table.is_free_for(*ip, &req.mac, now));
                prop_assert!(free.is_none(), "claimed exhaustion with {free:?} free");
            }
            for op in &d.ops {
                table.apply(op);
            }
            // The table itself never maps one address to two live clients.
            let mut seen: HashMap<Ipv4Addr, MacAddr> = HashMap::new();
            for lease in table.leases().filter(|l| l.expires_at > now) {
                if let Some(prev) = seen.insert(lease.ip, lease.mac) {
                    prop_assert!(false, "{} held by {:?} and {:?}", lease.ip, prev, lease.mac);
                }
            }
        }
    }
}
