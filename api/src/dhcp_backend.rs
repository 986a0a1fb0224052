//! Connects the DHCP server to the store: leases persist in the database,
//! and a PXE client's first ACK creates its machine in `discovering`.

use std::net::Ipv4Addr;

use pxe::boot::ClientKind;
use pxe::dhcp::server::DhcpBackend;
use pxe::dhcp::LeaseOp;

use crate::store::{mac_text, Store};

pub struct StoreBackend {
    pub store: Store,
    pub discovery_timeout_ms: i64,
}

impl DhcpBackend for StoreBackend {
    async fn save(&self, ops: &[LeaseOp]) -> Result<(), String> {
        self.store.save_lease_ops(ops).await.map_err(|e| e.to_string())
    }

    async fn known(&self, mac: [u8; 6]) -> bool {
        // A database error counts as unknown: refusing to answer is safer
        // than booting a machine we cannot see.
        matches!(self.store.machine_id_by_mac(&mac_text(&mac)).await, Ok(Some(_)))
    }

    async fn bound(&self, mac: [u8; 6], ip: Ipv4Addr, client: ClientKind) {
        let mac = mac_text(&mac);
        // Only network boots create machines: a laptop on the provisioning
        // network is not a server to inventory.
        let id = if client.is_pxe() {
            self.store
                .ensure_machine(&mac, "network boot (DHCP)", self.discovery_timeout_ms)
                .await
                .map(|(id, _)| Some(id))
        } else {
            self.store.machine_id_by_mac(&mac).await
        };
        let detail = serde_json::json!({ "mac": mac, "ip": ip.to_string(), "client": client.label(), "firmware": client.firmware.label() });
        // Proxy mode answers with boot information only (no address).
        let kind = if ip.is_unspecified() { "dhcp.proxy" } else { "dhcp.ack" };
        let result = match id {
            Ok(Some(id)) => self.store.record_event(Some(&id), kind, detail).await,
            Ok(None) => Ok(()),
            Err(err) => Err(err),
        };
        if let Err(err) = result {
            tracing::warn!(mac, error = %err, "recording a DHCP lease event failed");
        }
    }
}
