//! Slipway's QEMU lab and the end-to-end tests built on it.
//!
//! The lab puts a bridge, one tap per VM, `slipway serve` and the QEMU VMs
//! inside a network namespace with no default route on a private range, so
//! nothing the lab does can leave the machine. The lab process itself
//! enters that namespace (`setns`) before it starts anything, so every
//! child inherits it and the API is reached on the namespace's loopback.

pub mod bench;
pub mod bench_write;
pub mod lab;
pub mod storm;
pub mod support;
