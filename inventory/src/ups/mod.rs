//! UPS clients: what a UPS says about mains power and its battery, read
//! over NUT's upsd protocol (`nut`) or SNMP v2c UPS-MIB (`snmp`), and
//! normalized into [`crate::oob::UpsState`].
//!
//! Each client module owns its protocol's sockets and a pure mapping from
//! the protocol's values to `UpsState`, so the mappings are tested with
//! data and the sockets against real peers (`tests/ups_peers.rs`).
//! A real NUT UPS for those tests and the lab (`dummy-ups` + `upsd`) is
//! the `simulators` crate's `ups`.
//!
//! Not here: polling schedules, campaign gates and what to do when the
//! battery runs low (the callers decide), and Redfish power equipment
//! (the `redfish` module).

pub mod nut;
pub mod snmp;

pub use nut::NutClient;
pub use snmp::SnmpUps;
