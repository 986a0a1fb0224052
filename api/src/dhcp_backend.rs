//! Connects the DHCP server to the appliance: leases persist in the lease
//! journal on local disk, and a PXE client's first ACK creates its machine
//! (in `discovering`) in the database.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pxe::boot::ClientKind;
use pxe::dhcp::server::DhcpBackend;
use pxe::dhcp::{LeaseJournal, LeaseOp, LeaseTable};
use tokio::sync::mpsc;

use crate::boot_guard::BootGuard;
use inventory::MacAddr;
use store::{DhcpBinding, Store};

/// Bindings waiting to be recorded. A storm beyond this drops bookkeeping
/// (counted), never a reply: the boot script request creates the machine
/// too.
const BOOKKEEPING_QUEUE: usize = 4096;
/// Bindings recorded per transaction at most.
const BOOKKEEPING_BATCH: usize = 512;
/// Bookkeeping waits for a pause this long in the bindings, so that in a
/// storm the database work (a worker thread, commits) does not take the
/// CPU from the replies still to be sent...
const BOOKKEEPING_QUIET: Duration = Duration::from_millis(25);
/// ...but never longer than this after the first binding waiting.
const BOOKKEEPING_MAX_DELAY: Duration = Duration::from_secs(1);

pub struct StoreBackend {
    store: Store,
    journal: std::sync::Mutex<LeaseJournal>,
    bookkeeping: mpsc::Sender<DhcpBinding>,
    /// Told of each committed lease change and each observed network boot.
    guard: Arc<BootGuard>,
}

impl StoreBackend {
    /// Starts the task that records bindings beside the DHCP loop.
    pub fn start(
        store: Store,
        journal: LeaseJournal,
        discovery_timeout_ms: i64,
        guard: Arc<BootGuard>,
    ) -> StoreBackend {
        let (tx, mut rx) = mpsc::channel::<DhcpBinding>(BOOKKEEPING_QUEUE);
        let recorder = store.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BOOKKEEPING_BATCH);
            while rx.recv_many(&mut batch, BOOKKEEPING_BATCH).await > 0 {
                // Collect by looking every QUIET rather than being woken for
                // each binding: a wake-up per ACK batch would cost the DHCP
                // loop a cross-thread hand-off each time.
                let first = Instant::now();
                while batch.len() < BOOKKEEPING_BATCH && first.elapsed() < BOOKKEEPING_MAX_DELAY {
                    tokio::time::sleep(BOOKKEEPING_QUIET).await;
                    let before = batch.len();
                    while batch.len() < BOOKKEEPING_BATCH {
                        match rx.try_recv() {
                            Ok(binding) => batch.push(binding),
                            Err(_) => break,
                        }
                    }
                    if batch.len() == before {
                        break;
                    }
                }
                if let Err(err) = recorder.record_dhcp_bindings(&batch, discovery_timeout_ms).await {
                    tracing::warn!(bindings = batch.len(), error = %err, "recording DHCP bindings failed");
                }
                batch.clear();
            }
        });
        StoreBackend { store, journal: std::sync::Mutex::new(journal), bookkeeping: tx, guard }
    }
}

impl DhcpBackend for StoreBackend {
    async fn save(&self, ops: &[LeaseOp], table: &LeaseTable) -> Result<(), String> {
        // One write (and fdatasync) of a few KiB: short enough to do in
        // place; the DHCP loop waits for it either way.
        let mut journal = self.journal.lock().map_err(|_| "lease journal lock poisoned".to_string())?;
        journal.append(ops).map_err(|e| format!("appending to the lease journal: {e}"))?;
        if journal.wants_compaction(table) {
            let started = std::time::Instant::now();
            journal.compact(table).map_err(|e| format!("compacting the lease journal: {e}"))?;
            tracing::info!(leases = table.len(), ms = started.elapsed().as_millis() as u64, "lease journal compacted");
        }
        drop(journal);
        self.guard.leases_changed(ops);
        Ok(())
    }

    async fn known(&self, mac: MacAddr) -> bool {
        // A database error counts as unknown: refusing to answer is safer
        // than booting a machine we cannot see.
        matches!(self.store.machine_id_by_mac(mac).await, Ok(Some(_)))
    }

    fn bound(&self, mac: MacAddr, ip: Ipv4Addr, client: ClientKind) {
        let detail = serde_json::json!({ "mac": mac.to_string(), "ip": ip.to_string(), "client": client.label(), "firmware": client.firmware.label() });
        if client.is_pxe() {
            self.guard.boot_observed(mac);
        }
        // Only network boots create machines: a laptop on the provisioning
        // network is not a server to inventory.
        let binding = DhcpBinding { mac, ip, network_boot: client.is_pxe(), detail };
        if self.bookkeeping.try_send(binding).is_err() {
            metrics::counter!("slipway_dhcp_bookkeeping_dropped_total").increment(1);
        }
    }
}
