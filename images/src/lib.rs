//! Slipway's images. For now: building the discovery ramdisk (Debian's
//! kernel plus an initramfs holding `slipway-agent`) from Debian packages,
//! cached by a key over every input so it is rebuilt exactly when one
//! changes. The image catalog and the streaming disk writer come later and
//! live here too.

mod cpio;
pub mod ramdisk;

pub use ramdisk::{ensure_ramdisk, Ramdisk, RamdiskError, RamdiskInputs};
