//! Which firmwares an OS image can boot, read from its raw bytes as they
//! stream through an import (no second pass, nothing mounted):
//!
//! - legacy BIOS: the first sector carries boot code (an MBR loader such as
//!   GRUB's `boot.img` or syslinux's `gptmbr.bin`) and the boot signature;
//! - UEFI: the partition table (GPT, or MBR type `0xEF`) has an EFI System
//!   Partition whose FAT file system holds a loader: the removable-media
//!   path `\EFI\BOOT\BOOTX64.EFI`, or one under `\EFI\<vendor>\` that the
//!   deploy agent names in a boot entry.
//!
//! The ESP's bytes are spooled to a scratch file beside the import (ESPs are
//! tens to hundreds of MiB: not kept in memory) and read with `fatfs`.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What an image can boot under.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bootable {
    pub bios: bool,
    pub uefi: bool,
}

/// Enough of the start of a disk for its MBR, a GPT header on 512- or
/// 4096-byte sectors, and 128 partition entries.
const HEAD: usize = 1 << 20;
/// ESPs larger than this are not inspected (the UEFI spec suggests
/// 100-550 MiB).
const MAX_ESP: u64 = 2 << 30;
const ESP_GUID: [u8; 16] = guid_bytes(0xC12A7328, 0xF81F, 0x11D2, [0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B]);
const MBR_ESP_TYPE: u8 = 0xEF;

/// A GUID as GPT stores it: the first three fields little-endian.
const fn guid_bytes(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let (a, b, c) = (a.to_le_bytes(), b.to_le_bytes(), c.to_le_bytes());
    [a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]
}

/// Fed every raw byte of an image in order; [`Probe::finish`] answers.
pub struct Probe {
    head: Vec<u8>,
    /// Bytes fed so far.
    offset: u64,
    /// Decided once the head is complete.
    esp: Option<Spool>,
    head_parsed: bool,
    spool_path: PathBuf,
}

/// The ESP's byte range and the scratch file its bytes go to.
struct Spool {
    start: u64,
    end: u64,
    file: File,
}

impl Probe {
    /// `spool_path` is where the ESP's bytes are kept while the import
    /// runs; it is removed by [`Probe::finish`] (and on drop).
    pub fn new(spool_path: PathBuf) -> Probe {
        Probe { head: Vec::with_capacity(HEAD), offset: 0, esp: None, head_parsed: false, spool_path }
    }

    pub fn feed(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.head.len() < HEAD {
            let take = buf.len().min(HEAD - self.head.len());
            self.head.extend_from_slice(&buf[..take]);
        }
        let (from, to) = (self.offset, self.offset + buf.len() as u64);
        self.offset = to;
        if !self.head_parsed && self.head.len() == HEAD {
            self.start_spool()?;
        }
        if let Some(spool) = &mut self.esp {
            // What of this buffer lies in the ESP and was not in the head.
            let lo = from.max(spool.start).max(HEAD as u64);
            let hi = to.min(spool.end);
            if lo < hi {
                spool.file.write_all(&buf[(lo - from) as usize..(hi - from) as usize])?;
            }
        }
        Ok(())
    }

    /// Reads the partition table in the head and opens the spool, with
    /// whatever of the ESP the head already holds.
    fn start_spool(&mut self) -> io::Result<()> {
        self.head_parsed = true;
        let Some((start, end)) = esp_range(&self.head) else { return Ok(()) };
        if end - start > MAX_ESP {
            return Ok(());
        }
        let mut file = File::options().read(true).write(true).create(true).truncate(true).open(&self.spool_path)?;
        if start < self.head.len() as u64 {
            let hi = end.min(self.head.len() as u64);
            file.write_all(&self.head[start as usize..hi as usize])?;
        }
        self.esp = Some(Spool { start, end, file });
        Ok(())
    }

    /// What the image boots. An I/O error on the scratch file only means
    /// the ESP is not inspected.
    pub fn finish(mut self) -> Bootable {
        if !self.head_parsed {
            let _ = self.start_spool();
        }
        let bios = has_mbr_boot_code(&self.head);
        let uefi = match self.esp.take() {
            // An image that ends inside its ESP has no whole ESP to read.
            Some(spool) if self.offset >= spool.end => esp_has_loader(spool.file),
            _ => false,
        };
        Bootable { bios, uefi }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.spool_path);
    }
}

/// Legacy BIOS runs the first sector's code when it ends in 55 AA; a disk
/// with no loader there has zeros (a protective MBR written by most GPT
/// tools alone).
fn has_mbr_boot_code(head: &[u8]) -> bool {
    head.len() >= 512 && head[510..512] == [0x55, 0xAA] && head[..440].iter().any(|&b| b != 0)
}

/// The ESP's byte range from a GPT (512- or 4096-byte sectors) or, failing
/// that, from the MBR's partition entries.
fn esp_range(head: &[u8]) -> Option<(u64, u64)> {
    for sector in [512usize, 4096] {
        if let Some(range) = gpt_esp(head, sector) {
            return Some(range);
        }
    }
    mbr_esp(head)
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn gpt_esp(head: &[u8], sector: usize) -> Option<(u64, u64)> {
    let header = head.get(sector..sector + 92)?;
    if &header[..8] != b"EFI PART" {
        return None;
    }
    let entries_lba = le64(header, 72)?;
    let count = le32(header, 80)? as usize;
    let size = le32(header, 84)? as usize;
    if size < 128 {
        return None;
    }
    let first = usize::try_from(entries_lba).ok()?.checked_mul(sector)?;
    (0..count.min(256)).find_map(|i| {
        let entry = head.get(first + i * size..first + i * size + 128)?;
        if entry[..16] != ESP_GUID {
            return None;
        }
        let (first_lba, last_lba) = (le64(entry, 32)?, le64(entry, 40)?);
        (last_lba >= first_lba).then(|| (first_lba * sector as u64, (last_lba + 1) * sector as u64))
    })
}

fn mbr_esp(head: &[u8]) -> Option<(u64, u64)> {
    if head.len() < 512 || head[510..512] != [0x55, 0xAA] {
        return None;
    }
    (0..4).find_map(|i| {
        let entry = &head[446 + i * 16..446 + (i + 1) * 16];
        let (start, sectors) = (le32(entry, 8)? as u64, le32(entry, 12)? as u64);
        (entry[4] == MBR_ESP_TYPE && sectors > 0).then(|| (start * 512, (start + sectors) * 512))
    })
}

/// Whether the FAT file system in `file` holds a UEFI loader for x86-64.
fn esp_has_loader(mut file: File) -> bool {
    if file.seek(SeekFrom::Start(0)).is_err() {
        return false;
    }
    let Ok(fs) = fatfs::FileSystem::new(file, fatfs::FsOptions::new()) else { return false };
    let Ok(efi) = fs.root_dir().open_dir("EFI") else { return false };
    if efi.open_file("BOOT/BOOTX64.EFI").is_ok() {
        return true;
    }
    let found = efi.iter().flatten().filter(|e| e.is_dir() && !e.file_name().starts_with('.')).any(|vendor| {
        vendor.to_dir().iter().flatten().any(|f| f.is_file() && f.file_name().to_ascii_lowercase().ends_with("x64.efi"))
    });
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A disk image made with the tools an image builder uses (sfdisk,
    /// mkfs.vfat, mtools), or `None` where they are missing.
    fn disk(dir: &Path, table: &str, files: &[&str], boot_code: bool) -> Option<Vec<u8>> {
        use std::process::Command;
        let have =
            |t: &str| Command::new("sh").args(["-c", &format!("command -v {t}")]).status().is_ok_and(|s| s.success());
        if !["sfdisk", "mkfs.vfat", "mcopy", "mmd"].iter().all(|t| have(t)) {
            eprintln!("skipped: sfdisk, mkfs.vfat or mtools missing");
            return None;
        }
        let path = dir.join("disk.raw");
        File::create(&path).unwrap().set_len(48 << 20).unwrap();
        let mut child =
            Command::new("sfdisk").arg("--quiet").arg(&path).stdin(std::process::Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(table.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success());
        let esp = dir.join("esp.img");
        let _ = std::fs::remove_file(&esp);
        assert!(Command::new("mkfs.vfat").args(["-C"]).arg(&esp).arg("32768").output().unwrap().status.success());
        let img = esp.to_string_lossy().into_owned();
        for f in files {
            let parent = Path::new(f).parent().unwrap().to_string_lossy().into_owned();
            let mut acc = String::new();
            for part in parent.split('/').filter(|p| !p.is_empty()) {
                acc = format!("{acc}/{part}");
                let _ = Command::new("mmd").args(["-i", &img, &format!("::{acc}")]).output();
            }
            std::fs::write(dir.join("f"), b"MZ").unwrap();
            let copied = Command::new("mcopy").args(["-i", &img]).arg(dir.join("f")).arg(format!("::{f}")).output();
            assert!(copied.unwrap().status.success());
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let esp_bytes = std::fs::read(&esp).unwrap();
        bytes[1 << 20..(1 << 20) + esp_bytes.len()].copy_from_slice(&esp_bytes);
        if boot_code {
            bytes[..3].copy_from_slice(&[0xEB, 0x63, 0x90]);
        }
        Some(bytes)
    }

    fn probe(dir: &Path, bytes: &[u8], chunk: usize) -> Bootable {
        let mut p = Probe::new(dir.join("spool"));
        for piece in bytes.chunks(chunk) {
            p.feed(piece).unwrap();
        }
        let found = p.finish();
        assert!(!dir.join("spool").exists(), "the spool is removed");
        found
    }

    const GPT_ESP: &str = "label: gpt\nstart=2048, size=65536, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\nstart=67584, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n";

    #[test]
    fn a_gpt_disk_with_the_removable_loader_and_mbr_code_boots_both() {
        let dir = tempfile::tempdir().unwrap();
        let Some(bytes) = disk(dir.path(), GPT_ESP, &["/EFI/BOOT/BOOTX64.EFI"], true) else { return };
        // Chunk sizes that straddle the head and the ESP's edges.
        for chunk in [4096, 1 << 20, 777_777] {
            assert_eq!(probe(dir.path(), &bytes, chunk), Bootable { bios: true, uefi: true }, "chunk {chunk}");
        }
    }

    #[test]
    fn a_vendor_loader_counts_and_a_protective_mbr_is_not_bios() {
        let dir = tempfile::tempdir().unwrap();
        let Some(bytes) = disk(dir.path(), GPT_ESP, &["/EFI/debian/shimx64.efi"], false) else { return };
        assert_eq!(probe(dir.path(), &bytes, 65536), Bootable { bios: false, uefi: true });
    }

    #[test]
    fn an_esp_without_a_loader_or_an_mbr_disk_with_code_is_bios_only() {
        let dir = tempfile::tempdir().unwrap();
        let Some(bytes) = disk(dir.path(), GPT_ESP, &["/EFI/debian/grub.cfg"], true) else { return };
        assert_eq!(probe(dir.path(), &bytes, 65536), Bootable { bios: true, uefi: false });
        let mbr = "label: dos\nstart=2048, size=65536, type=83, bootable\n";
        let Some(bytes) = disk(dir.path(), mbr, &["/EFI/BOOT/BOOTX64.EFI"], true) else { return };
        assert_eq!(probe(dir.path(), &bytes, 65536), Bootable { bios: true, uefi: false }, "type 83 is no ESP");
    }

    #[test]
    fn an_mbr_esp_boots_uefi_and_garbage_boots_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mbr = "label: dos\nstart=2048, size=65536, type=ef\n";
        let Some(bytes) = disk(dir.path(), mbr, &["/EFI/BOOT/BOOTX64.EFI"], false) else { return };
        assert_eq!(probe(dir.path(), &bytes, 65536), Bootable { bios: false, uefi: true });
        let noise: Vec<u8> = (0..3 << 20).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        assert_eq!(probe(dir.path(), &noise, 65536), Bootable { bios: false, uefi: false });
        assert_eq!(probe(dir.path(), b"tiny", 2), Bootable::default(), "shorter than a sector");
    }

    #[test]
    fn a_gpt_entry_pointing_past_the_head_or_backwards_is_ignored() {
        let mut head = vec![0u8; HEAD];
        head[512..520].copy_from_slice(b"EFI PART");
        head[512 + 72..512 + 80].copy_from_slice(&u64::MAX.to_le_bytes());
        head[512 + 80..512 + 84].copy_from_slice(&128u32.to_le_bytes());
        head[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
        assert_eq!(esp_range(&head), None, "entries LBA overflows");
        head[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
        head[1024..1040].copy_from_slice(&ESP_GUID);
        head[1024 + 32..1024 + 40].copy_from_slice(&100u64.to_le_bytes());
        head[1024 + 40..1024 + 48].copy_from_slice(&10u64.to_le_bytes());
        assert_eq!(esp_range(&head), None, "last before first");
    }
}
