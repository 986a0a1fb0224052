//! `lab-tiny`: the smallest OS image that proves a deploy end to end. A
//! 64 MiB disk that boots the discovery kernel and initrd from its EFI
//! System Partition with `slipway.boot=disk` on its command line, which the
//! lab looks for on the serial console; under BIOS through syslinux, under
//! UEFI through the signed shim and GRUB (`lab_disk`). Built without
//! mounting anything, cached beside the ramdisk it was made from.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::lab_disk::{self, SignedChain};
use images::Ramdisk;

/// What the disk's kernel command line carries; the lab watches for it.
pub const DISK_BOOT_MARKER: &str = "slipway.boot=disk";

/// The ESP fills the disk but for the GPT's two copies.
const ESP_MIB: u64 = 62;

/// Returns the raw `lab-tiny` image for `ramdisk`, building it if needed.
pub fn ensure_lab_tiny(ramdisk: &Ramdisk, cache_dir: &Path) -> Result<PathBuf, String> {
    let chain = SignedChain::fetch(cache_dir).map_err(|e| e.to_string())?;
    let key = hex::encode(&Sha256::digest(format!("gpt {}", chain.versions()).as_bytes())[..4]);
    let out = cache_dir.join(format!("lab-tiny-{}-{key}.raw", ramdisk.key));
    if out.is_file() {
        return Ok(out);
    }
    lab_disk::check_tools()?;
    let work = cache_dir.join(format!("lab-tiny-{}.building", ramdisk.key));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let result = build(ramdisk, &chain, &work, &out);
    let _ = std::fs::remove_dir_all(&work);
    result.map(|()| out)
}

fn build(ramdisk: &Ramdisk, chain: &SignedChain, work: &Path, out: &Path) -> Result<(), String> {
    let (kernel, initrd) = (ramdisk.dir.join("vmlinuz"), ramdisk.dir.join("initrd.img"));
    let args = format!("console=ttyS0,115200 {DISK_BOOT_MARKER}");
    let boot = lab_disk::Boot { kernel: &kernel, initrd: &initrd, kernel_args: &args, title: "Slipway lab-tiny" };
    let esp = work.join("esp.img");
    lab_disk::make_esp(work, &esp, ESP_MIB, chain, &boot)?;
    let disk = work.join("disk.raw");
    lab_disk::assemble(&disk, &esp, ESP_MIB, None)?;
    std::fs::rename(&disk, out).map_err(|e| e.to_string())
}
