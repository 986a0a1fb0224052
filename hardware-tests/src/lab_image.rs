//! `lab-tiny`: the smallest OS image that proves a deploy end to end. A
//! 64 MiB BIOS disk (MBR, one FAT partition, syslinux) that boots the
//! discovery kernel and initrd from the disk with `slipway.boot=disk` on its
//! command line, which the lab looks for on the serial console. Built
//! without mounting anything (sfdisk, mkfs.vfat, mtools, syslinux), cached
//! beside the ramdisk it was made from.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use images::tools::{run, which};
use images::Ramdisk;

/// What the disk's kernel command line carries; the lab watches for it.
pub const DISK_BOOT_MARKER: &str = "slipway.boot=disk";

const DISK_MIB: u64 = 64;
const PART_START_SECTOR: u64 = 2048;
const MBR_BIN: &str = "/usr/lib/syslinux/mbr/mbr.bin";

/// Returns the raw `lab-tiny` image for `ramdisk`, building it if needed.
pub fn ensure_lab_tiny(ramdisk: &Ramdisk, cache_dir: &Path) -> Result<PathBuf, String> {
    let out = cache_dir.join(format!("lab-tiny-{}.raw", ramdisk.key));
    if out.is_file() {
        return Ok(out);
    }
    for tool in ["sfdisk", "mkfs.vfat", "mcopy", "syslinux"] {
        if which(tool).is_none() {
            return Err(format!(
                "{tool} is missing (apt-get install fdisk dosfstools mtools syslinux syslinux-common)"
            ));
        }
    }
    let work = cache_dir.join(format!("lab-tiny-{}.building", ramdisk.key));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let result = build(ramdisk, &work, &out);
    let _ = std::fs::remove_dir_all(&work);
    result.map(|()| out)
}

fn build(ramdisk: &Ramdisk, work: &Path, out: &Path) -> Result<(), String> {
    let disk = work.join("disk.raw");
    let part = work.join("part.img");
    let part_sectors = DISK_MIB * 2048 - PART_START_SECTOR;
    std::fs::File::create(&disk).and_then(|f| f.set_len(DISK_MIB << 20)).map_err(|e| e.to_string())?;
    run(Command::new("sfdisk").arg("--quiet").arg(&disk), Some(&format!("{PART_START_SECTOR},,6,*\n")))?;
    run(Command::new("mkfs.vfat").args(["-n", "SLIPWAY", "-C"]).arg(&part).arg((part_sectors / 2).to_string()), None)?;
    let cfg = work.join("syslinux.cfg");
    std::fs::write(
        &cfg,
        format!(
            "SERIAL 0 115200\nDEFAULT disk\nPROMPT 0\nTIMEOUT 0\nLABEL disk\n  KERNEL vmlinuz\n  APPEND initrd=initrd.img console=ttyS0,115200 {DISK_BOOT_MARKER}\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let files = [ramdisk.dir.join("vmlinuz"), ramdisk.dir.join("initrd.img"), cfg];
    run(Command::new("mcopy").arg("-i").arg(&part).args(&files).arg("::/"), None)?;
    run(Command::new("syslinux").arg("--install").arg(&part), None)?;
    // The partition goes in at its offset; syslinux's MBR code in the
    // first 440 bytes, leaving sfdisk's partition table.
    let mut image = OpenOptions::new().write(true).open(&disk).map_err(|e| e.to_string())?;
    image.seek(SeekFrom::Start(PART_START_SECTOR * 512)).map_err(|e| e.to_string())?;
    image.write_all(&std::fs::read(&part).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let mbr = std::fs::read(MBR_BIN).map_err(|e| format!("{MBR_BIN}: {e}"))?;
    image.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    image.write_all(&mbr[..mbr.len().min(440)]).map_err(|e| e.to_string())?;
    image.sync_all().map_err(|e| e.to_string())?;
    std::fs::rename(&disk, out).map_err(|e| e.to_string())
}
