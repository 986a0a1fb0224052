//! The normalized hardware model of a machine and the pure parsers that build
//! it from in-band facts (the text of `/proc` and `/sys` files read by the
//! agent in the discovery ramdisk).
//!
//! The in-band part does no I/O: the agent reads files and hands their
//! contents here, so every parser is testable with fixture text. The
//! out-of-band model (`oob`) is plain data too. The clients that talk to
//! BMCs and UPSes (`redfish`, `ipmi`, `ups`) are behind the `oob` feature,
//! so the ramdisk agent, which needs only the parsers, does not build an
//! HTTP client stack. The simulated BMC and UPS are not here: they live in
//! the `simulators` crate, which the appliance does not link.

pub mod inband;
mod mac;
mod model;
pub mod oob;

pub use mac::{MacAddr, NotAMac};
pub use model::{Cpu, Disk, Inventory, Memory, Nic, Source, SystemInfo};

/// What changed between two inventories (an event the store raises).
#[cfg(feature = "oob")]
pub mod diff;
#[cfg(feature = "oob")]
pub mod ipmi;
#[cfg(feature = "oob")]
pub mod redfish;
#[cfg(feature = "oob")]
pub mod ups;
