//! The lease table: plain data, changed only by applying [`LeaseOp`]s, so the
//! same ops that change memory are the ones persisted to disk.

use inventory::MacAddr;
use std::collections::HashMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    /// Offered, held briefly for the client's REQUEST.
    Offered,
    Bound,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    /// Unix seconds.
    pub expires_at: u64,
    pub state: LeaseState,
}

/// A change to the lease table. The server persists ops before it sends the
/// reply they belong to, so an ACKed lease survives a crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOp {
    Upsert(Lease),
    Remove {
        mac: MacAddr,
    },
    /// Another host answered on this address (DHCPDECLINE): keep it out of
    /// the pool until `until`.
    Quarantine {
        ip: Ipv4Addr,
        until: u64,
    },
}

#[derive(Debug, Default, Clone)]
pub struct LeaseTable {
    by_mac: HashMap<MacAddr, Lease>,
    by_ip: HashMap<Ipv4Addr, MacAddr>,
    quarantined: HashMap<Ipv4Addr, u64>,
}

impl LeaseTable {
    pub fn from_leases(leases: impl IntoIterator<Item = Lease>) -> LeaseTable {
        let mut table = LeaseTable::default();
        for lease in leases {
            table.apply(&LeaseOp::Upsert(lease));
        }
        table
    }

    pub fn by_mac(&self, mac: &MacAddr) -> Option<&Lease> {
        self.by_mac.get(mac)
    }

    /// True when `ip` may be given to `mac`: nobody else holds an unexpired
    /// lease on it and it is not quarantined.
    pub fn is_free_for(&self, ip: Ipv4Addr, mac: &MacAddr, now: u64) -> bool {
        if self.quarantined.get(&ip).is_some_and(|until| *until > now) {
            return false;
        }
        match self.by_ip.get(&ip) {
            None => true,
            Some(holder) if holder == mac => true,
            Some(holder) => self.by_mac.get(holder).is_none_or(|l| l.expires_at <= now),
        }
    }

    pub fn apply(&mut self, op: &LeaseOp) {
        match op {
            LeaseOp::Upsert(lease) => {
                if let Some(old) = self.by_mac.insert(lease.mac, lease.clone()) {
                    if old.ip != lease.ip && self.by_ip.get(&old.ip) == Some(&lease.mac) {
                        self.by_ip.remove(&old.ip);
                    }
                }
                // An expired holder of the same address loses it.
                if let Some(prev) = self.by_ip.insert(lease.ip, lease.mac) {
                    if prev != lease.mac {
                        self.by_mac.remove(&prev);
                    }
                }
            }
            LeaseOp::Remove { mac } => {
                if let Some(old) = self.by_mac.remove(mac) {
                    self.by_ip.remove(&old.ip);
                }
            }
            LeaseOp::Quarantine { ip, until } => {
                if let Some(mac) = self.by_ip.remove(ip) {
                    self.by_mac.remove(&mac);
                }
                self.quarantined.insert(*ip, *until);
            }
        }
    }

    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.by_mac.values()
    }

    /// The table as the ops that rebuild it (for rewriting the journal).
    pub fn as_ops(&self) -> Vec<LeaseOp> {
        let leases = self.by_mac.values().cloned().map(LeaseOp::Upsert);
        let quarantined = self.quarantined.iter().map(|(ip, until)| LeaseOp::Quarantine { ip: *ip, until: *until });
        // Quarantines last: replaying one drops any lease on its address.
        leases.chain(quarantined).collect()
    }

    pub fn len(&self) -> usize {
        self.by_mac.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_mac.is_empty()
    }
}
