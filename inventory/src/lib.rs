//! The normalized hardware model of a machine and the pure parsers that build
//! it from in-band facts (the text of `/proc` and `/sys` files read by the
//! agent in the discovery ramdisk).
//!
//! This crate does no I/O: the agent reads files and hands their contents
//! here, so every parser is testable with fixture text. Out-of-band clients
//! (Redfish, IPMI, UPS) will live here too, behind their own modules, and fill
//! the same model with the source of each fact recorded.

pub mod inband;
mod model;

pub use model::{Cpu, Disk, Inventory, Memory, Nic, Source, SystemInfo};
