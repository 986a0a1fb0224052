//! Who may ask for a machine's boot script, and so for its agent token.
//!
//! Firmware holds no secret, so a boot script cannot ask for a password.
//! What the appliance does know is the network: where it is the DHCP server
//! (alone or behind relays) it knows which address each MAC holds, and a
//! script is handed only to the address holding that MAC's lease. Where
//! another server hands out addresses (proxyDHCP) it knows only that a MAC
//! network-booted: each observed boot buys one script, and a machine whose
//! agent is mid-job is not handed a token that would replace its own.
//!
//! The token a script carries is bound to the address that fetched it, and
//! every agent call must come from there (`auth::AgentMachine`).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use inventory::MacAddr;
use pxe::dhcp::{DhcpMode, LeaseOp, LeaseState, LeaseTable};

/// An observed boot is good for a script this long (firmware asks within
/// seconds; TCG-emulated firmware within a minute).
const OBSERVED_BOOT_TTL: Duration = Duration::from_secs(300);
/// An agent that called this recently is mid-job (it long-polls every
/// 15 s at most, and reports progress while writing).
const AGENT_ALIVE: Duration = Duration::from_secs(45);
/// Entries kept in each in-memory map at most: a flood of spoofed boots
/// costs a bounded amount of memory, never a database row.
const MAX_TRACKED: usize = 65_536;

/// Why a script (or an agent call) was refused; the label is the metrics
/// label and the event's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Authoritative mode: the caller's address does not hold this MAC's lease.
    NotLeaseHolder,
    /// Proxy mode: no network boot of this MAC was seen (or its one script was taken).
    NoObservedBoot,
    /// Proxy mode: the machine's agent is working; a new token would cut it off.
    AgentMidJob,
    /// `provisioning.deny` names the MAC.
    Denied,
    /// `provisioning.answer_unknown = false` and the MAC belongs to no machine.
    Unknown,
    /// An agent call from another address than the one its token was handed to.
    WrongAddress,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::NotLeaseHolder => "not_lease_holder",
            Refusal::NoObservedBoot => "no_observed_boot",
            Refusal::AgentMidJob => "agent_mid_job",
            Refusal::Denied => "denied",
            Refusal::Unknown => "unknown_mac",
            Refusal::WrongAddress => "wrong_address",
        }
    }

    pub fn detail(self) -> &'static str {
        match self {
            Refusal::NotLeaseHolder => "this address does not hold the MAC's DHCP lease",
            Refusal::NoObservedBoot => "no network boot of this MAC was seen, or its script was already handed out",
            Refusal::AgentMidJob => "the machine's agent is working; its token is not replaced",
            Refusal::Denied => "the MAC is on the deny list",
            Refusal::Unknown => "unknown MACs are not answered (provisioning.answer_unknown = false)",
            Refusal::WrongAddress => "the agent token was handed to another address",
        }
    }
}

#[derive(Debug)]
pub struct BootGuard {
    mode: DhcpMode,
    deny: HashSet<MacAddr>,
    answer_unknown: bool,
    /// Authoritative mode: a copy of the committed lease table, kept from
    /// the lease ops the DHCP server writes.
    leases: Mutex<LeaseTable>,
    /// Proxy mode: MACs seen network-booting, not yet handed a script.
    observed: Mutex<HashMap<MacAddr, Instant>>,
    /// Machines whose agent called lately (machine id), for proxy mode.
    agents_seen: Mutex<HashMap<String, Instant>>,
    /// The refused-answer count each machine's agent last reported.
    refused_answers: Mutex<HashMap<String, u32>>,
}

impl BootGuard {
    pub fn new(mode: DhcpMode, deny: HashSet<MacAddr>, answer_unknown: bool) -> BootGuard {
        BootGuard {
            mode,
            deny,
            answer_unknown,
            leases: Mutex::default(),
            observed: Mutex::default(),
            agents_seen: Mutex::default(),
            refused_answers: Mutex::default(),
        }
    }

    /// The address an agent token is bound to, for a script fetched from
    /// `peer`: where Slipway hands out the addresses (by MAC), the
    /// ramdisk's DHCP gets the one its firmware had; under proxyDHCP the
    /// other server may hand it another, so there the token is not bound.
    pub fn token_address(&self, peer: Option<IpAddr>) -> Option<IpAddr> {
        (self.mode == DhcpMode::Authoritative).then_some(peer).flatten()
    }

    /// The lease table restored from the journal at start.
    pub fn seed(&self, table: &LeaseTable) {
        *self.leases.lock().expect("lease view lock") = table.clone();
    }

    /// Lease ops the DHCP server has just committed (offers are not among
    /// them: they are never written).
    pub fn leases_changed(&self, ops: &[LeaseOp]) {
        let mut leases = self.leases.lock().expect("lease view lock");
        for op in ops {
            leases.apply(op);
        }
    }

    /// A network boot of `mac` was answered (proxyDHCP): it may fetch one script.
    pub fn boot_observed(&self, mac: MacAddr) {
        if self.mode != DhcpMode::Proxy {
            return;
        }
        insert_bounded(&mut self.observed.lock().expect("observed boots lock"), mac, OBSERVED_BOOT_TTL);
    }

    /// An agent of machine `id` made a call.
    pub fn agent_called(&self, id: &str) {
        let mut seen = self.agents_seen.lock().expect("agents seen lock");
        if let Some(at) = seen.get_mut(id) {
            *at = Instant::now();
        } else {
            insert_bounded(&mut seen, id.to_string(), AGENT_ALIVE);
        }
    }

    /// Machine `id`'s agent says it has refused `count` answers this boot;
    /// returns how many are new since it last said so (a lower count is a
    /// new boot, all new).
    pub fn answers_refused(&self, id: &str, count: u32) -> Option<u32> {
        let mut reported = self.refused_answers.lock().expect("refused answers lock");
        let last = reported.get(id).copied().unwrap_or(0);
        if count == last {
            return None;
        }
        if reported.len() >= MAX_TRACKED && !reported.contains_key(id) {
            reported.clear();
        }
        reported.insert(id.to_string(), count);
        Some(if count > last { count - last } else { count })
    }

    /// Whether `peer` may have `mac`'s boot script now. `known` says whether
    /// a machine has that MAC; `discovery` whether the script would carry
    /// a token. In proxy mode an allowed request uses up the observed boot.
    pub fn may_fetch_script(
        &self,
        mac: MacAddr,
        peer: Option<IpAddr>,
        known_machine: Option<&str>,
        discovery: bool,
        now_secs: u64,
    ) -> Result<(), Refusal> {
        if self.deny.contains(&mac) {
            return Err(Refusal::Denied);
        }
        if !self.answer_unknown && known_machine.is_none() {
            return Err(Refusal::Unknown);
        }
        match self.mode {
            DhcpMode::Authoritative => {
                let leases = self.leases.lock().expect("lease view lock");
                match (leases.by_mac(&mac), peer) {
                    (Some(lease), Some(IpAddr::V4(from)))
                        if lease.state == LeaseState::Bound && lease.ip == from && lease.expires_at > now_secs =>
                    {
                        Ok(())
                    }
                    _ => Err(Refusal::NotLeaseHolder),
                }
            }
            DhcpMode::Proxy => {
                if discovery && known_machine.is_some_and(|id| self.agent_is_alive(id)) {
                    return Err(Refusal::AgentMidJob);
                }
                let mut observed = self.observed.lock().expect("observed boots lock");
                match observed.remove(&mac) {
                    Some(at) if at.elapsed() < OBSERVED_BOOT_TTL => Ok(()),
                    _ => Err(Refusal::NoObservedBoot),
                }
            }
        }
    }

    fn agent_is_alive(&self, id: &str) -> bool {
        self.agents_seen.lock().expect("agents seen lock").get(id).is_some_and(|at| at.elapsed() < AGENT_ALIVE)
    }
}

/// Inserts `key` now; at the cap, entries older than `ttl` go first, and
/// if none has, the new one is not kept (and counted).
fn insert_bounded<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Instant>, key: K, ttl: Duration) {
    if map.len() >= MAX_TRACKED && !map.contains_key(&key) {
        map.retain(|_, at| at.elapsed() < ttl);
        if map.len() >= MAX_TRACKED {
            metrics::counter!("slipway_boot_guard_full_total").increment(1);
            return;
        }
    }
    map.insert(key, Instant::now());
}

/// Refusal events written a minute at most; the rest are counted only.
static REFUSAL_EVENTS: crate::rate::MinuteBudget = crate::rate::MinuteBudget::new(60);

/// The address a request came from (the boot face is served with
/// `ConnectInfo`; a request without it is from nowhere we can check).
pub fn peer_of(extensions: &axum::http::Extensions) -> Option<IpAddr> {
    extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|info| info.0.ip())
}

/// Logs and counts a refusal, and records it as a `boot.refused` event
/// within a budget, so a flood of refusals does not grow the database;
/// returns it for the caller's answer (`ApiError::Refused`).
pub async fn refused(
    state: &crate::AppState,
    refusal: Refusal,
    what: &'static str,
    mac: Option<MacAddr>,
    machine: Option<&str>,
    peer: Option<IpAddr>,
) -> Refusal {
    let peer_text = peer.map(|p| p.to_string());
    tracing::warn!(reason = refusal.label(), what, mac = ?mac.map(|m| m.to_string()), machine, peer = ?peer_text, "boot network request refused");
    metrics::counter!("slipway_boot_refusals_total", "reason" => refusal.label(), "what" => what).increment(1);
    if REFUSAL_EVENTS.take(state.store.now_ms()) {
        let detail = serde_json::json!({
            "reason": refusal.label(), "what": what, "mac": mac.map(|m| m.to_string()), "peer": peer_text,
        });
        if let Err(err) = state.store.record_event(machine, "boot.refused", detail).await {
            tracing::warn!(error = %err, "recording a refusal failed");
        }
    }
    refusal
}

/// A machine's agent refused `new` answers not signed by this appliance:
/// something on its network answered in the appliance's name.
pub async fn impersonation_reported(state: &crate::AppState, machine: &str, count: u32, new: u32) {
    tracing::warn!(machine, count, new, "an agent refused answers not signed by this appliance");
    metrics::counter!("slipway_agent_refused_answers_total").increment(new.into());
    if REFUSAL_EVENTS.take(state.store.now_ms()) {
        let detail = serde_json::json!({ "count": count, "new": new });
        if let Err(err) = state.store.record_event(Some(machine), "agent.answers_refused", detail).await {
            tracing::warn!(error = %err, "recording refused answers failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pxe::dhcp::Lease;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
    const OTHER: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 2]);

    fn bound(mac: MacAddr, ip: [u8; 4], expires_at: u64) -> LeaseOp {
        LeaseOp::Upsert(Lease { mac, ip: ip.into(), expires_at, state: LeaseState::Bound })
    }

    fn peer(ip: [u8; 4]) -> Option<IpAddr> {
        Some(IpAddr::from(ip))
    }

    #[test]
    fn refused_answers_are_reported_once_each() {
        let guard = BootGuard::new(DhcpMode::Authoritative, HashSet::new(), true);
        assert_eq!(guard.answers_refused("m1", 2), Some(2));
        assert_eq!(guard.answers_refused("m1", 2), None, "the same count again is nothing new");
        assert_eq!(guard.answers_refused("m1", 5), Some(3));
        assert_eq!(guard.answers_refused("m1", 1), Some(1), "a lower count is a new boot");
        assert_eq!(guard.answers_refused("m2", 1), Some(1));
    }

    #[test]
    fn only_the_lease_holder_gets_the_script() {
        let guard = BootGuard::new(DhcpMode::Authoritative, HashSet::new(), true);
        assert_eq!(guard.may_fetch_script(MAC, peer([10, 0, 0, 5]), None, true, 100), Err(Refusal::NotLeaseHolder));
        guard.leases_changed(&[bound(MAC, [10, 0, 0, 5], 1000)]);
        assert_eq!(guard.may_fetch_script(MAC, peer([10, 0, 0, 5]), None, true, 100), Ok(()));
        assert_eq!(guard.may_fetch_script(MAC, peer([10, 0, 0, 5]), None, true, 100), Ok(()), "and again");
        assert_eq!(guard.may_fetch_script(MAC, peer([10, 0, 0, 6]), None, true, 100), Err(Refusal::NotLeaseHolder));
        assert_eq!(guard.may_fetch_script(MAC, None, None, true, 100), Err(Refusal::NotLeaseHolder));
        assert_eq!(
            guard.may_fetch_script(MAC, peer([10, 0, 0, 5]), None, true, 1000),
            Err(Refusal::NotLeaseHolder),
            "expired"
        );
        // The address moves to another MAC; an offer changes nothing; a release ends it.
        guard.leases_changed(&[bound(OTHER, [10, 0, 0, 5], 1000)]);
        assert_eq!(guard.may_fetch_script(MAC, peer([10, 0, 0, 5]), None, true, 100), Err(Refusal::NotLeaseHolder));
        let offer = Lease { mac: MAC, ip: [10, 0, 0, 7].into(), expires_at: 1000, state: LeaseState::Offered };
        guard.leases_changed(&[LeaseOp::Upsert(offer)]);
        assert_eq!(guard.may_fetch_script(MAC, peer([10, 0, 0, 7]), None, true, 100), Err(Refusal::NotLeaseHolder));
        guard.leases_changed(&[LeaseOp::Remove { mac: OTHER }]);
        assert_eq!(guard.may_fetch_script(OTHER, peer([10, 0, 0, 5]), None, true, 100), Err(Refusal::NotLeaseHolder));
    }

    #[test]
    fn deny_list_and_unknown_macs_apply_to_scripts() {
        let deny = HashSet::from([MAC]);
        let guard = BootGuard::new(DhcpMode::Authoritative, deny, false);
        guard.leases_changed(&[bound(MAC, [10, 0, 0, 5], 1000), bound(OTHER, [10, 0, 0, 6], 1000)]);
        assert_eq!(guard.may_fetch_script(MAC, peer([10, 0, 0, 5]), Some("m1"), true, 1), Err(Refusal::Denied));
        assert_eq!(guard.may_fetch_script(OTHER, peer([10, 0, 0, 6]), None, true, 1), Err(Refusal::Unknown));
        assert_eq!(guard.may_fetch_script(OTHER, peer([10, 0, 0, 6]), Some("m2"), true, 1), Ok(()));
    }

    #[test]
    fn in_proxy_mode_each_observed_boot_buys_one_script_and_a_working_agent_keeps_its_token() {
        let guard = BootGuard::new(DhcpMode::Proxy, HashSet::new(), true);
        let anyone = peer([10, 0, 0, 9]);
        assert_eq!(guard.may_fetch_script(MAC, anyone, None, true, 1), Err(Refusal::NoObservedBoot));
        guard.boot_observed(MAC);
        assert_eq!(guard.may_fetch_script(MAC, anyone, None, true, 1), Ok(()));
        assert_eq!(guard.may_fetch_script(MAC, anyone, None, true, 1), Err(Refusal::NoObservedBoot), "used up");

        guard.boot_observed(MAC);
        guard.agent_called("m1");
        assert_eq!(guard.may_fetch_script(MAC, anyone, Some("m1"), true, 1), Err(Refusal::AgentMidJob));
        // A deployed machine's local-disk script carries no token to protect.
        assert_eq!(guard.may_fetch_script(MAC, anyone, Some("m1"), false, 1), Ok(()));
    }

    #[test]
    fn a_flood_of_observed_boots_is_bounded() {
        let guard = BootGuard::new(DhcpMode::Proxy, HashSet::new(), true);
        for i in 0..(MAX_TRACKED as u32 + 10) {
            let b = i.to_be_bytes();
            guard.boot_observed(MacAddr([2, 0, b[0], b[1], b[2], b[3]]));
        }
        assert_eq!(guard.observed.lock().unwrap().len(), MAX_TRACKED);
    }
}
