//! Slipway's QEMU lab and the end-to-end tests built on it.
//!
//! The lab puts a bridge, one tap per VM, `slipway serve` and the QEMU VMs
//! inside a network namespace with no default route on a private range, so
//! nothing the lab does can leave the machine. The lab process itself
//! enters that namespace (`setns`) before it starts anything, so every
//! child inherits it and the API is reached on the namespace's loopback.
//!
//! Also here, because only the lab and tests use them: the lab's OS images
//! (`lab_image`: the tiny BIOS disk; `lab_debian` and its derived releases
//! in `lab_variant`), the benchmarks against peers (`bench`, `storm`,
//! `bench_write`) and the `slipway-lab` binary (`src/bin`), which
//! `slipway lab` and `slipway bench` run. The appliance links none of it.

pub mod attack;
pub mod bench;
pub mod bench_write;
pub mod fleet;
pub mod lab;
pub mod lab_debian;
pub mod lab_disk;
pub mod lab_image;
pub mod lab_variant;
pub mod rogue;
pub mod storm;
pub mod support;
