//! Simulated peers for tests and the QEMU lab, kept out of the appliance:
//! `slipway` (the serving binary) does not link this crate; the lab binary
//! (`slipway-lab`) and test targets do.
//!
//! - `bmc`: a Redfish BMC that really controls a lab VM through QMP (or an
//!   in-memory machine), so Slipway drives lab machines through the same
//!   Redfish client it uses for real BMCs.
//! - `ups`: a real NUT UPS (`dummy-ups` + `upsd`) whose state the lab and
//!   tests switch between mains, battery and low battery.
//!
//! Not here: the Redfish, IPMI and UPS clients (`inventory`), starting
//! QEMU or the lab network (`hardware-tests`).

pub mod bmc;
pub mod ups;
