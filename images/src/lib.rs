//! Slipway's images: the discovery ramdisk (Debian's kernel plus an
//! initramfs holding `slipway-agent`) built from Debian packages and cached
//! by a key over every input, and the import of OS images into the
//! catalog's store (`catalog`).

pub mod bootable;
pub mod catalog;
mod cpio;
pub mod ramdisk;
pub mod signed_boot;
pub mod tools;

pub use ramdisk::{ensure_ramdisk, Ramdisk, RamdiskError, RamdiskInputs};
