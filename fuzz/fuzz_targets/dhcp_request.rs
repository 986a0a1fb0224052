//! One untrusted datagram through everything the DHCP server does with it:
//! parse, decide (authoritative and proxy, on both ports), encode. Beyond
//! "no panic": every reply we encode must decode as a DHCP message, and an
//! address we hand out must come from the pool and not be another
//! client's.

#![no_main]

use std::net::Ipv4Addr;

use dhcproto::{Decodable, Decoder};
use libfuzzer_sys::fuzz_target;
use pxe::dhcp::{decide, decide_proxy, encode_reply, DhcpConfig, Lease, LeaseState, LeaseTable, Request};

fuzz_target!(|data: &[u8]| {
    let Ok(req) = Request::parse(data) else { return };
    let cfg = DhcpConfig::example();
    // A table with a neighbour in it, so decisions meet a held address.
    let neighbour = Lease {
        mac: [2, 0, 0, 0, 0, 1].into(),
        ip: Ipv4Addr::new(10, 77, 0, 150),
        expires_at: 2000,
        state: LeaseState::Bound,
    };
    let table = LeaseTable::from_leases([neighbour.clone()]);
    for known in [false, true] {
        let decision = decide(&req, &table, &cfg, 1000, known);
        if let Some(reply) = &decision.reply {
            if !reply.yiaddr.is_unspecified() && req.giaddr.is_unspecified() {
                let ip = u32::from(reply.yiaddr);
                assert!(
                    (u32::from(cfg.pool_start)..=u32::from(cfg.pool_end)).contains(&ip),
                    "{} outside the pool",
                    reply.yiaddr
                );
                // Only the neighbour itself (its MAC) may be given its address.
                if req.mac != neighbour.mac {
                    assert_ne!(reply.yiaddr, neighbour.ip, "the neighbour's address handed out");
                }
            }
            decodes(&encode_reply(&req, reply, &cfg));
        }
        for on_pxe_port in [false, true] {
            if let Some(reply) = decide_proxy(&req, &cfg, known, on_pxe_port).reply {
                decodes(&encode_reply(&req, &reply, &cfg));
            }
        }
    }
});

fn decodes(bytes: &[u8]) {
    if let Err(err) = dhcproto::v4::Message::decode(&mut Decoder::new(bytes)) {
        panic!("our own reply does not decode: {err}");
    }
}
