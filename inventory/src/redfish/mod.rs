//! The Redfish client: one BMC at a time, over HTTPS (or HTTP for
//! simulators), filling the out-of-band model of [`crate::oob`].
//!
//! What it owns: transport and authentication (`client`), walking the
//! resource tree into a [`BmcInventory`](crate::oob::BmcInventory)
//! (`walk`), the pure JSON-to-model mapping (`map`), the actions that
//! change a machine (power, one-time boot, firmware update, in `actions`)
//! and the vendor quirks, kept as data (`quirks`). What it does not own:
//! deciding *when* to act (the lifecycle engine in `api`), retries across
//! calls, and the IPMI and UPS protocols.
//!
//! Crate decision: a thin client over `reqwest` + `serde_json::Value`
//! rather than a Redfish crate. `redfish` 0.3 has no TLS settings, so it
//! cannot reach a BMC with a factory self-signed certificate. `nv-redfish`
//! 0.22 is complete and has vendor quirks, but it generates its types from
//! the DMTF CSDL schemas in a build script (a long build on the shared
//! build machine), requires Rust 1.95 while the workspace declares 1.87,
//! and deserializes into strict schema types, while we read about fifteen
//! properties from resources that vendors shape differently. Reading
//! `Value`s tolerantly (a missing or oddly typed property becomes `None`,
//! never a failed inventory) keeps the mapping small, testable with
//! fixture trees, and lets one broken section be recorded in
//! `BmcInventory::errors` instead of failing the whole read.
//!
//! Cancel safety: every method only reads or sends a single request at a
//! time; dropping a future mid-way leaves at most an unused session on the
//! BMC (closed by [`RedfishClient::logout`] or the BMC's session timeout).
//! A power `Cycle` emulated as ForceOff-then-On is the one multi-step
//! action: cancelled between the steps, the machine stays off.

mod actions;
mod client;
mod map;
pub mod quirks;
mod walk;

pub use actions::TaskInfo;
pub use client::RedfishClient;
pub use map::normalize_uuid;
pub use quirks::{Quirk, Vendor, QUIRKS};
