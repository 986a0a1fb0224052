//! Disks that boot under legacy BIOS and UEFI (with or without Secure
//! Boot), assembled without mounting anything; `lab-tiny` and `lab-debian`
//! are both made this way.
//!
//! - GPT, with one FAT EFI System Partition (ESP) that both firmwares
//!   read: it holds the kernel (Debian's, signed) and its initramfs;
//! - UEFI: Debian's signed shim (Microsoft-signed) and signed GRUB at the
//!   removable-media path `\EFI\BOOT\BOOTX64.EFI` (found with no boot
//!   entry at all) and at `\EFI\debian\shimx64.efi` (what the deploy
//!   agent's boot entry names), GRUB's configuration in
//!   `\EFI\debian\grub.cfg`, which GRUB reads from its prefix whichever
//!   path shim ran from;
//! - BIOS: syslinux's GPT MBR code, which starts the partition marked
//!   "legacy BIOS bootable" (the ESP), where syslinux is installed. One
//!   partition serves both, so no BIOS boot partition is needed;
//! - optionally a second partition (the root file system), written as is.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

pub use images::signed_boot::SignedChain;
use images::signed_boot::{GRUB_EFI, SHIM_EFI};
use images::tools::{run, which};

/// Where each boot loader's configuration lives on the ESP.
pub const SYSLINUX_CFG: &str = "::/syslinux.cfg";
pub const GRUB_CFG: &str = "::/EFI/debian/grub.cfg";
/// Tools the disks are made with.
pub const TOOLS: &[&str] = &["sfdisk", "mkfs.vfat", "mcopy", "mmd", "syslinux", "dpkg-deb"];

/// The first partition starts at 1 MiB.
pub const ESP_START: u64 = 2048;
/// Syslinux's MBR code for GPT disks: it boots the partition whose
/// "legacy BIOS bootable" attribute is set.
const GPT_MBR_BIN: &str = "/usr/lib/syslinux/mbr/gptmbr.bin";
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const LINUX_FS_TYPE: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// Every tool in [`TOOLS`] is installed, or which one is not.
pub fn check_tools() -> Result<(), String> {
    match TOOLS.iter().find(|t| which(t).is_none()) {
        Some(tool) => Err(format!("{tool} is missing (scripts/prereqs.sh installs it)")),
        None => Ok(()),
    }
}

/// What the ESP boots: a kernel and initramfs with a command line, under
/// a menu title both loaders show.
pub struct Boot<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub kernel_args: &'a str,
    pub title: &'a str,
}

/// Makes the FAT ESP image `esp` (`mib` MiB) in `work`.
pub fn make_esp(work: &Path, esp: &Path, mib: u64, chain: &SignedChain, boot: &Boot) -> Result<(), String> {
    let signed = work.join("signed");
    chain.unpack(&signed)?;
    let (shim, grub) = (signed.join(SHIM_EFI), signed.join(GRUB_EFI));
    run(Command::new("mkfs.vfat").args(["-n", "BOOT", "-C"]).arg(esp).arg((mib * 1024).to_string()), None)?;
    let args = boot.kernel_args;
    let syslinux_cfg = work.join("syslinux.cfg");
    write(
        &syslinux_cfg,
        &format!(
            "SERIAL 0 115200\nDEFAULT boot\nPROMPT 0\nTIMEOUT 0\nLABEL boot\n  KERNEL vmlinuz\n  \
             APPEND initrd=initrd.img {args}\n"
        ),
    )?;
    let grub_cfg = work.join("grub.cfg");
    write(
        &grub_cfg,
        &format!(
            "serial --unit=0 --speed=115200\nterminal_input serial console\nterminal_output serial console\n\
             set timeout=0\nmenuentry \"{}\" {{\n  linux /vmlinuz {args}\n  initrd /initrd.img\n}}\n",
            boot.title
        ),
    )?;
    let image = esp.to_string_lossy().into_owned();
    let copy = |from: &Path, to: &str| run(Command::new("mcopy").args(["-i", &image]).arg(from).arg(to), None);
    run(Command::new("mmd").args(["-i", &image, "::/EFI", "::/EFI/BOOT", "::/EFI/debian"]), None)?;
    copy(boot.kernel, "::/vmlinuz")?;
    copy(boot.initrd, "::/initrd.img")?;
    copy(&syslinux_cfg, SYSLINUX_CFG)?;
    copy(&shim, "::/EFI/BOOT/BOOTX64.EFI")?;
    copy(&grub, "::/EFI/BOOT/grubx64.efi")?;
    copy(&shim, "::/EFI/debian/shimx64.efi")?;
    copy(&grub, "::/EFI/debian/grubx64.efi")?;
    copy(&grub_cfg, GRUB_CFG)?;
    run(Command::new("syslinux").arg("--install").arg(esp), None)
}

/// Writes `disk`: a GPT with the ESP image (`esp_mib`) at [`ESP_START`],
/// and after it `root` (an image of `root_mib`), if given, and the GPT
/// MBR code. Room is left at the end for the backup GPT.
pub fn assemble(disk: &Path, esp: &Path, esp_mib: u64, root: Option<(&Path, u64)>) -> Result<(), String> {
    let root_start = ESP_START + esp_mib * 2048;
    let root_mib = root.map_or(0, |(_, mib)| mib);
    let total = (root_start * 512) + (root_mib << 20) + (1 << 20);
    File::create(disk).and_then(|f| f.set_len(total)).map_err(|e| e.to_string())?;
    let mut table = format!(
        "label: gpt\nstart={ESP_START}, size={}, type={ESP_TYPE}, name=\"EFI System\", attrs=\"LegacyBIOSBootable\"\n",
        esp_mib * 2048
    );
    if root.is_some() {
        table += &format!("start={root_start}, size={}, type={LINUX_FS_TYPE}, name=\"root\"\n", root_mib * 2048);
    }
    run(Command::new("sfdisk").arg("--quiet").arg(disk), Some(&table))?;
    let mut image = OpenOptions::new().write(true).open(disk).map_err(|e| e.to_string())?;
    let parts = [Some((ESP_START, esp)), root.map(|(path, _)| (root_start, path))];
    for (start, part) in parts.into_iter().flatten() {
        image.seek(SeekFrom::Start(start * 512)).map_err(|e| e.to_string())?;
        std::io::copy(&mut File::open(part).map_err(|e| e.to_string())?, &mut image).map_err(|e| e.to_string())?;
    }
    // Boot code only: the protective MBR's partition entry stays.
    let mbr = std::fs::read(GPT_MBR_BIN).map_err(|e| format!("{GPT_MBR_BIN}: {e}"))?;
    image.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    image.write_all(&mbr[..mbr.len().min(440)]).map_err(|e| e.to_string())?;
    image.sync_all().map_err(|e| e.to_string())
}

pub fn write(path: &Path, text: &str) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}
