//! Growing the last partition of a freshly written disk.
//!
//! An OS image is a raw disk image, usually much smaller than the disk it
//! is written to: without this step everything past the image's end stays
//! unused. So after writing, the last partition is stretched to the disk's
//! end (its filesystem is grown at first boot, not here).
//!
//! GPT keeps a backup header in the disk's last sector, with a backup copy
//! of the partition entries just before it. After writing a small image
//! both sit at the image's end, in the middle of the disk, and firmware and
//! the kernel complain ("the backup GPT table is not on the end of the
//! device"); some firmware even "repairs" the table by itself. So for GPT
//! the backup is also rewritten at the disk's real end, and the primary
//! header is updated to point at it.
//!
//! Sectors are 512 bytes. Nothing here trusts the disk's contents: every
//! offset and size read from it is checked before use, and a malformed
//! table is an error, never a panic.

use std::io::{Read, Seek, SeekFrom, Write};

/// What `grow_last_partition` changed, for the deploy report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grown {
    /// Partition `number` (1-based) now ends at the disk's last usable sector; `from_sectors` -> `to_sectors` long.
    Mbr {
        number: u32,
        from_sectors: u64,
        to_sectors: u64,
    },
    Gpt {
        number: u32,
        from_sectors: u64,
        to_sectors: u64,
    },
    /// Nothing to do: no partition table, the last partition is not at the image end / already fills the disk, or (MBR) it is an extended partition.
    /// A GPT's backup header is still moved to the disk's end when it was not there (the text says so).
    Unchanged(String),
}

pub(crate) const SECTOR: u64 = 512;

// The MBR, in sector 0: four 16-byte primary entries and a signature.
const MBR_TABLE: usize = 446;
const MBR_ENTRY_LEN: usize = 16;
const MBR_SIGNATURE: usize = 510;
// Fields of an MBR entry.
const MBR_STATUS: usize = 0;
const MBR_END_CHS: usize = 5;
const MBR_TYPE: usize = 4;
const MBR_START: usize = 8;
const MBR_SECTORS: usize = 12;
const TYPE_EMPTY: u8 = 0x00;
const TYPE_GPT_PROTECTIVE: u8 = 0xEE;
const TYPES_EXTENDED: [u8; 3] = [0x05, 0x0F, 0x85];

// The GPT header, at LBA 1 (primary) and in the disk's last sector (backup).
pub(crate) const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
const GPT_REVISION: usize = 8;
const GPT_HEADER_SIZE: usize = 12;
const GPT_HEADER_CRC: usize = 16;
const GPT_MY_LBA: usize = 24;
const GPT_ALTERNATE_LBA: usize = 32;
const GPT_FIRST_USABLE: usize = 40;
const GPT_LAST_USABLE: usize = 48;
pub(crate) const GPT_ENTRIES_LBA: usize = 72;
pub(crate) const GPT_ENTRY_COUNT: usize = 80;
pub(crate) const GPT_ENTRY_SIZE: usize = 84;
const GPT_ENTRIES_CRC: usize = 88;
/// The header's defined fields end here; `header size` may not be smaller.
const GPT_MIN_HEADER_SIZE: u32 = 92;
// Fields of a GPT partition entry.
pub(crate) const ENTRY_TYPE_GUID: usize = 0;
pub(crate) const ENTRY_FIRST_LBA: usize = 32;
pub(crate) const ENTRY_LAST_LBA: usize = 40;
pub(crate) const ENTRY_MIN_SIZE: u32 = 128;
/// C12A7328-F81F-11D2-BA4B-00A0C93EC93B as GPT stores it.
pub(crate) const ESP_TYPE_GUID: [u8; 16] =
    [0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B];
pub(crate) const MAX_ENTRIES: u32 = 1024;
/// Bounds the entries array read into memory (the usual one is 16 KiB).
pub(crate) const MAX_ENTRIES_BYTES: u64 = 1 << 20;
/// A GPT image's last partition counts as "at the image's end" when it ends
/// within this many sectors (1 MiB) of the last usable LBA: partitioning
/// tools (sfdisk among them) round the last partition's end down to 1 MiB.
const IMAGE_END_SLACK: u64 = 2048;

/// Grows the last partition of the disk (or disk image file) open in `disk`, whose size is `disk_bytes`, with 512-byte sectors.
pub fn grow_last_partition<D: Read + Write + Seek>(disk: &mut D, disk_bytes: u64) -> Result<Grown, String> {
    let disk_sectors = disk_bytes / SECTOR;
    if disk_sectors < 2 {
        return Ok(Grown::Unchanged(format!("no partition table: the disk is only {disk_bytes} bytes")));
    }
    let mbr = read_sectors(disk, 0, 1)?;
    if mbr[MBR_SIGNATURE..MBR_SIGNATURE + 2] != [0x55, 0xAA] {
        return Ok(Grown::Unchanged("no partition table (no MBR signature)".into()));
    }
    let entries: Vec<&[u8]> = mbr[MBR_TABLE..MBR_SIGNATURE].chunks_exact(MBR_ENTRY_LEN).collect();
    // Like the kernel: a status other than 0x00 or 0x80 means sector 0 is
    // something else with the same signature, e.g. a FAT boot sector.
    if entries.iter().any(|e| e[MBR_STATUS] & 0x7F != 0) {
        return Ok(Grown::Unchanged("no partition table (sector 0 is not an MBR)".into()));
    }
    if entries.iter().any(|e| e[MBR_TYPE] == TYPE_GPT_PROTECTIVE) {
        grow_gpt(disk, disk_sectors, &mbr)
    } else {
        grow_mbr(disk, disk_sectors, &mbr)
    }
}

fn grow_mbr<D: Read + Write + Seek>(disk: &mut D, disk_sectors: u64, mbr: &[u8]) -> Result<Grown, String> {
    let last = (0..4)
        .map(|i| (i, &mbr[MBR_TABLE + i * MBR_ENTRY_LEN..][..MBR_ENTRY_LEN]))
        .filter(|(_, e)| e[MBR_TYPE] != TYPE_EMPTY)
        .max_by_key(|(_, e)| u32_at(e, MBR_START));
    let Some((index, entry)) = last else {
        return Ok(Grown::Unchanged("the MBR has no partitions".into()));
    };
    let number = index as u32 + 1;
    let kind = entry[MBR_TYPE];
    if TYPES_EXTENDED.contains(&kind) {
        return Ok(Grown::Unchanged(format!(
            "MBR partition {number} is an extended partition (type {kind:#04x}): its logical partitions are left alone"
        )));
    }
    let start = u64::from(u32_at(entry, MBR_START));
    let from_sectors = u64::from(u32_at(entry, MBR_SECTORS));
    if start == 0 || from_sectors == 0 || start + from_sectors > disk_sectors {
        return Err(format!(
            "MBR partition {number} (start {start}, {from_sectors} sectors) does not fit on the disk ({disk_sectors} sectors)"
        ));
    }
    // An MBR cannot tell where the image ended, so the last partition is
    // always grown; past 2 TiB it stops where a 32-bit sector count does.
    let to_sectors = (disk_sectors - start).min(u64::from(u32::MAX));
    if to_sectors <= from_sectors {
        return Ok(Grown::Unchanged(format!("MBR partition {number} already fills the disk")));
    }
    let mut new_entry = entry.to_vec();
    put_u32(&mut new_entry, MBR_SECTORS, to_sectors as u32);
    // The end CHS is made to match the new end, as fdisk writes it (0xFEFFFF,
    // "use LBA", past CHS's reach); the start CHS has not moved.
    new_entry[MBR_END_CHS..MBR_END_CHS + 3].copy_from_slice(&chs(start + to_sectors - 1));
    write_at(disk, (MBR_TABLE + index * MBR_ENTRY_LEN) as u64, &new_entry)?;
    disk.flush().map_err(|e| format!("flushing the disk: {e}"))?;
    Ok(Grown::Mbr { number, from_sectors, to_sectors })
}

fn grow_gpt<D: Read + Write + Seek>(disk: &mut D, disk_sectors: u64, mbr: &[u8]) -> Result<Grown, String> {
    let mut header = read_sectors(disk, 1, 1)?;
    if &header[..GPT_SIGNATURE.len()] != GPT_SIGNATURE {
        return Err("protective MBR (type 0xEE) but no GPT header (\"EFI PART\") at LBA 1".into());
    }
    let header_size = u32_at(&header, GPT_HEADER_SIZE);
    if !(GPT_MIN_HEADER_SIZE..=SECTOR as u32).contains(&header_size) {
        return Err(format!("GPT header size {header_size} is not between {GPT_MIN_HEADER_SIZE} and {SECTOR}"));
    }
    let header_size = header_size as usize;
    let (stored, computed) = (u32_at(&header, GPT_HEADER_CRC), header_crc(&header, header_size));
    if stored != computed {
        return Err(format!("GPT header CRC mismatch (stored {stored:#010x}, computed {computed:#010x})"));
    }
    let revision = u32_at(&header, GPT_REVISION);
    if revision >> 16 != 1 {
        return Err(format!("unsupported GPT revision {revision:#010x}"));
    }
    if u64_at(&header, GPT_MY_LBA) != 1 {
        return Err("the primary GPT header's own LBA is not 1".into());
    }
    let (count, entry_size) = (u32_at(&header, GPT_ENTRY_COUNT), u32_at(&header, GPT_ENTRY_SIZE));
    if count == 0 || count > MAX_ENTRIES {
        return Err(format!("GPT has {count} partition entries (at most {MAX_ENTRIES} are accepted)"));
    }
    if entry_size < ENTRY_MIN_SIZE || entry_size % 8 != 0 {
        return Err(format!("GPT entry size {entry_size} is not a multiple of 8 of at least {ENTRY_MIN_SIZE}"));
    }
    let entries_bytes = u64::from(count) * u64::from(entry_size);
    if entries_bytes > MAX_ENTRIES_BYTES {
        return Err(format!("GPT partition entries take {entries_bytes} bytes, too many"));
    }
    let entries_sectors = entries_bytes.div_ceil(SECTOR);
    let entries_lba = u64_at(&header, GPT_ENTRIES_LBA);
    let first_usable = u64_at(&header, GPT_FIRST_USABLE);
    let last_usable = u64_at(&header, GPT_LAST_USABLE);
    if entries_lba < 2 || entries_lba.saturating_add(entries_sectors) > first_usable || first_usable > last_usable {
        return Err(format!(
            "GPT header is inconsistent: entries at LBA {entries_lba} ({entries_sectors} sectors), usable LBAs {first_usable}..={last_usable}"
        ));
    }
    // The backup header takes the last sector and the backup entries the
    // sectors just before it; everything before them is usable.
    let new_last_usable = disk_sectors.saturating_sub(2 + entries_sectors);
    if new_last_usable < last_usable {
        return Err(format!(
            "the disk ({disk_sectors} sectors) is smaller than its GPT says (last usable LBA {last_usable})"
        ));
    }
    let mut entries = read_sectors(disk, entries_lba, entries_sectors)?;
    let (stored, computed) = (u32_at(&header, GPT_ENTRIES_CRC), crc32fast::hash(&entries[..entries_bytes as usize]));
    if stored != computed {
        return Err(format!("GPT partition entries CRC mismatch (stored {stored:#010x}, computed {computed:#010x})"));
    }

    let last = entries[..entries_bytes as usize]
        .chunks_exact(entry_size as usize)
        .enumerate()
        .filter(|(_, e)| e[ENTRY_TYPE_GUID..ENTRY_TYPE_GUID + 16].iter().any(|&b| b != 0))
        .map(|(i, e)| (i, u64_at(e, ENTRY_FIRST_LBA), u64_at(e, ENTRY_LAST_LBA)))
        .max_by_key(|&(_, _, end)| end);
    let outcome = match last {
        None => Grown::Unchanged("the GPT has no partitions".into()),
        Some((index, first, end)) => {
            let number = index as u32 + 1;
            if first < first_usable || first > end || end > last_usable {
                return Err(format!(
                    "GPT partition {number} (LBAs {first}..={end}) is outside the usable LBAs {first_usable}..={last_usable}"
                ));
            }
            let type_guid = &entries[index * entry_size as usize + ENTRY_TYPE_GUID..][..16];
            if type_guid == ESP_TYPE_GUID {
                // A FAT ESP has a fixed size; stretching its partition
                // only hides the rest of the disk from whoever reads it.
                Grown::Unchanged(format!("GPT partition {number} is the EFI System Partition, never grown"))
            } else if end >= new_last_usable {
                Grown::Unchanged(format!("GPT partition {number} already fills the disk"))
            } else if end + IMAGE_END_SLACK < last_usable {
                Grown::Unchanged(format!(
                    "GPT partition {number} ends at LBA {end}, not at the image's end (last usable LBA {last_usable})"
                ))
            } else {
                let offset = index * entry_size as usize + ENTRY_LAST_LBA;
                put_u64(&mut entries, offset, new_last_usable);
                Grown::Gpt { number, from_sectors: end - first + 1, to_sectors: new_last_usable - first + 1 }
            }
        }
    };
    let backup_lba = disk_sectors - 1;
    let grown = matches!(outcome, Grown::Gpt { .. });
    if !grown && u64_at(&header, GPT_ALTERNATE_LBA) == backup_lba && last_usable == new_last_usable {
        return Ok(outcome);
    }

    put_u64(&mut header, GPT_ALTERNATE_LBA, backup_lba);
    put_u64(&mut header, GPT_LAST_USABLE, new_last_usable);
    put_u32(&mut header, GPT_ENTRIES_CRC, crc32fast::hash(&entries[..entries_bytes as usize]));
    let crc = header_crc(&header, header_size);
    put_u32(&mut header, GPT_HEADER_CRC, crc);
    let backup_entries_lba = backup_lba - entries_sectors;
    let mut backup = header.clone();
    put_u64(&mut backup, GPT_MY_LBA, backup_lba);
    put_u64(&mut backup, GPT_ALTERNATE_LBA, 1);
    put_u64(&mut backup, GPT_ENTRIES_LBA, backup_entries_lba);
    let crc = header_crc(&backup, header_size);
    put_u32(&mut backup, GPT_HEADER_CRC, crc);

    // Backup first, primary last: if this is cut short, one of the two is
    // whole and valid. The old backup at the image's end is left as it is:
    // nothing points at it any more, and it now lies inside the grown
    // partition (whose filesystem overwrites it) or in free space.
    write_at(disk, backup_entries_lba * SECTOR, &entries)?;
    write_at(disk, backup_lba * SECTOR, &backup)?;
    write_at(disk, entries_lba * SECTOR, &entries)?;
    write_at(disk, SECTOR, &header)?;
    // A protective MBR covers the whole disk (as far as 32 bits reach). A
    // hybrid MBR (0xEE beside other entries) describes partitions by hand
    // and is left alone.
    let used: Vec<usize> = (0..4).filter(|i| mbr[MBR_TABLE + i * MBR_ENTRY_LEN + MBR_TYPE] != TYPE_EMPTY).collect();
    if let [index] = used[..] {
        let mut entry = mbr[MBR_TABLE + index * MBR_ENTRY_LEN..][..MBR_ENTRY_LEN].to_vec();
        put_u32(&mut entry, MBR_SECTORS, (disk_sectors - 1).min(u64::from(u32::MAX)) as u32);
        write_at(disk, (MBR_TABLE + index * MBR_ENTRY_LEN) as u64, &entry)?;
    }
    disk.flush().map_err(|e| format!("flushing the disk: {e}"))?;
    Ok(match outcome {
        Grown::Unchanged(why) => Grown::Unchanged(format!("{why}; the backup GPT was moved to the disk's end")),
        grown => grown,
    })
}

/// CRC32 of a GPT header's first `size` bytes, with its own CRC field as zero.
fn header_crc(header: &[u8], size: usize) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[..GPT_HEADER_CRC]);
    hasher.update(&[0; 4]);
    hasher.update(&header[GPT_HEADER_CRC + 4..size]);
    hasher.finalize()
}

/// The CHS bytes of `lba` in the 255-head, 63-sector geometry fdisk uses,
/// or 1023/254/63 (0xFEFFFF) when its cylinder does not fit in 10 bits.
fn chs(lba: u64) -> [u8; 3] {
    const HEADS: u64 = 255;
    const SECTORS: u64 = 63;
    let cylinder = lba / (HEADS * SECTORS);
    if cylinder > 1023 {
        return [0xFE, 0xFF, 0xFF];
    }
    let head = (lba / SECTORS) % HEADS;
    let sector = lba % SECTORS + 1;
    [head as u8, sector as u8 | ((cylinder >> 2) as u8 & 0xC0), cylinder as u8]
}

pub(crate) fn read_sectors<D: Read + Seek>(disk: &mut D, lba: u64, count: u64) -> Result<Vec<u8>, String> {
    let mut buf = vec![0; (count * SECTOR) as usize];
    disk.seek(SeekFrom::Start(lba * SECTOR))
        .and_then(|_| disk.read_exact(&mut buf))
        .map_err(|e| format!("reading {count} sector(s) at LBA {lba}: {e}"))?;
    Ok(buf)
}

fn write_at<D: Write + Seek>(disk: &mut D, offset: u64, bytes: &[u8]) -> Result<(), String> {
    disk.seek(SeekFrom::Start(offset))
        .and_then(|_| disk.write_all(bytes))
        .map_err(|e| format!("writing {} bytes at offset {offset}: {e}", bytes.len()))
}

pub(crate) fn u32_at(buf: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(buf[offset..offset + 4].try_into().expect("4 bytes"))
}

pub(crate) fn u64_at(buf: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(buf[offset..offset + 8].try_into().expect("8 bytes"))
}

fn put_u32(buf: &mut [u8], offset: usize, value: u32) {
    buf[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(buf: &mut [u8], offset: usize, value: u64) {
    buf[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{File, OpenOptions};
    use std::io::Cursor;
    use std::path::Path;
    use std::process::Command;

    const IMAGE: u64 = 64 << 20;
    const DISK: u64 = 256 << 20;
    const DISK_SECTORS: u64 = DISK / SECTOR;

    /// Runs a partitioning tool, failing clearly when it is not installed.
    fn run(tool: &str, package: &str, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        use std::process::Stdio;
        let path = ["/usr/sbin", "/sbin", "/usr/bin"].iter().map(|d| Path::new(d).join(tool)).find(|p| p.exists());
        let path = path.unwrap_or_else(|| panic!("{tool} is required for this test: apt-get install {package}"));
        let mut child = Command::new(path)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(text) = stdin {
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    fn text(out: &std::process::Output) -> String {
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    /// A 64 MiB image partitioned by sfdisk with `script`, on a 256 MiB "disk".
    fn image(script: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        File::create(&path).unwrap().set_len(IMAGE).unwrap();
        let out = run("sfdisk", "fdisk", &["--quiet", path.to_str().unwrap()], Some(script));
        assert!(out.status.success(), "sfdisk failed: {}", text(&out));
        File::options().write(true).open(&path).unwrap().set_len(DISK).unwrap();
        (dir, path)
    }

    fn grow(path: &Path) -> Result<Grown, String> {
        let mut file = OpenOptions::new().read(true).write(true).open(path).unwrap();
        let size = file.metadata().unwrap().len();
        grow_last_partition(&mut file, size)
    }

    /// sfdisk's view: (last usable LBA for GPT, [(start, size)]).
    fn sfdisk_json(path: &Path) -> (Option<u64>, Vec<(u64, u64)>) {
        let out = run("sfdisk", "fdisk", &["--json", path.to_str().unwrap()], None);
        assert!(out.status.success(), "sfdisk --json failed: {}", text(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let table = &json["partitiontable"];
        let parts = table["partitions"].as_array().unwrap();
        let parts = parts.iter().map(|p| (p["start"].as_u64().unwrap(), p["size"].as_u64().unwrap())).collect();
        (table["lastlba"].as_u64(), parts)
    }

    fn sfdisk_verify(path: &Path) -> String {
        let out = run("sfdisk", "fdisk", &["--verify", path.to_str().unwrap()], None);
        let report = text(&out);
        assert!(out.status.success(), "sfdisk --verify failed: {report}");
        report
    }

    /// Checks a GPT with sfdisk and gdisk's `sgdisk -v`.
    fn assert_gpt_clean(path: &Path) {
        let report = sfdisk_verify(path);
        // Before the fix sfdisk says "1 error detected", "GPT PMBR size
        // mismatch" and "The backup GPT table is not on the end of the device".
        assert!(report.contains("No errors detected"), "sfdisk --verify: {report}");
        for bad in ["mismatch", "not on the end", "corrupt"] {
            assert!(!report.contains(bad), "sfdisk --verify: {report}");
        }
        let out = run("sgdisk", "gdisk", &["-v", path.to_str().unwrap()], None);
        let report = text(&out);
        assert!(out.status.success() && report.contains("No problems found"), "sgdisk -v: {report}");
    }

    #[test]
    fn grow_mbr_last_partition_to_the_disk_end() {
        let (_dir, path) = image("label: dos\n,32M\n,\n");
        let (_, before) = sfdisk_json(&path);
        let (start, size) = before[1];
        assert_eq!(start + size, IMAGE / SECTOR, "sfdisk put the last partition at the image's end");
        let grown = grow(&path).unwrap();
        assert_eq!(grown, Grown::Mbr { number: 2, from_sectors: size, to_sectors: DISK_SECTORS - start });
        let (_, after) = sfdisk_json(&path);
        assert_eq!(after, vec![before[0], (start, DISK_SECTORS - start)]);
        let report = sfdisk_verify(&path);
        assert!(report.contains("No errors detected"), "sfdisk --verify: {report}");
        // The end CHS matches the new end, as sfdisk itself would write it.
        let mut mbr = [0; 512];
        File::open(&path).unwrap().read_exact(&mut mbr).unwrap();
        assert_eq!(mbr[MBR_TABLE + MBR_ENTRY_LEN + MBR_END_CHS..][..3], chs(DISK_SECTORS - 1));

        assert!(matches!(grow(&path).unwrap(), Grown::Unchanged(why) if why.contains("already fills")));
    }

    #[test]
    fn grow_mbr_leaves_an_extended_partition_alone() {
        let (_dir, path) = image("label: dos\n,16M\n,,E\n,8M\n");
        let before = std::fs::read(&path).unwrap();
        assert!(matches!(grow(&path).unwrap(), Grown::Unchanged(why) if why.contains("extended")));
        assert!(std::fs::read(&path).unwrap() == before, "nothing was written");
    }

    #[test]
    fn grow_gpt_last_partition_and_move_the_backup_to_the_disk_end() {
        let (_dir, path) = image("label: gpt\n,32M\n,\n");
        let (_, before) = sfdisk_json(&path);
        let (start, size) = before[1];
        let last_usable = DISK_SECTORS - 1 - 32 - 1;
        let grown = grow(&path).unwrap();
        assert_eq!(grown, Grown::Gpt { number: 2, from_sectors: size, to_sectors: last_usable - start + 1 });
        let (lastlba, after) = sfdisk_json(&path);
        assert_eq!(lastlba, Some(last_usable));
        assert_eq!(after, vec![before[0], (start, last_usable - start + 1)]);
        assert_gpt_clean(&path);
        let mut mbr = [0; 512];
        File::open(&path).unwrap().read_exact(&mut mbr).unwrap();
        assert_eq!(u32_at(&mbr, MBR_TABLE + MBR_SECTORS) as u64, DISK_SECTORS - 1, "protective MBR size");

        let before = std::fs::read(&path).unwrap();
        assert!(matches!(grow(&path).unwrap(), Grown::Unchanged(why) if why.contains("already fills")));
        assert!(std::fs::read(&path).unwrap() == before, "the second run wrote nothing");
    }

    #[test]
    fn grow_gpt_moves_the_backup_even_when_the_last_partition_is_not_at_the_image_end() {
        let (_dir, path) = image("label: gpt\n,16M\n,16M\n");
        let (_, before) = sfdisk_json(&path);
        let grown = grow(&path).unwrap();
        assert!(matches!(&grown, Grown::Unchanged(why) if why.contains("not at the image's end")), "{grown:?}");
        let (lastlba, after) = sfdisk_json(&path);
        assert_eq!((lastlba, after), (Some(DISK_SECTORS - 34), before));
        assert_gpt_clean(&path);
    }

    #[test]
    fn an_esp_as_the_last_partition_is_not_grown_but_the_backup_moves() {
        let (_dir, path) = image("label: gpt\nstart=2048, size=8192, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n");
        let grown = grow(&path).unwrap();
        assert!(matches!(&grown, Grown::Unchanged(why) if why.contains("EFI System Partition")), "{grown:?}");
        assert_eq!(sfdisk_json(&path).1, [(2048, 8192)]);
        assert_gpt_clean(&path);
    }

    #[test]
    fn grow_rejects_a_corrupted_gpt() {
        let (_dir, path) = image("label: gpt\n,32M\n,\n");
        let pristine = std::fs::read(&path).unwrap();
        // A byte of the disk GUID, in the primary header.
        let mut file = OpenOptions::new().write(true).open(&path).unwrap();
        write_at(&mut file, SECTOR + 60, &[pristine[SECTOR as usize + 60] ^ 1]).unwrap();
        drop(file);
        assert!(grow(&path).unwrap_err().contains("GPT header CRC mismatch"));
        // A byte of the first partition's name, in the entries.
        std::fs::write(&path, &pristine).unwrap();
        let mut file = OpenOptions::new().write(true).open(&path).unwrap();
        write_at(&mut file, 2 * SECTOR + 100, &[0x41]).unwrap();
        drop(file);
        assert!(grow(&path).unwrap_err().contains("GPT partition entries CRC mismatch"));
    }

    #[test]
    fn grow_leaves_a_disk_without_a_partition_table_alone() {
        let mut zeros = Cursor::new(vec![0; IMAGE as usize]);
        assert!(matches!(grow_last_partition(&mut zeros, DISK), Ok(Grown::Unchanged(_))));
        assert!(zeros.get_ref().iter().all(|&b| b == 0));
        let mut tiny = Cursor::new(vec![0; 100]);
        assert!(matches!(grow_last_partition(&mut tiny, 100), Ok(Grown::Unchanged(_))));
    }

    /// xorshift64*: deterministic garbage without another dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        /// Any value, or one small enough to be a plausible LBA or count.
        fn small(&mut self) -> u64 {
            match self.below(3) {
                0 => self.next(),
                1 => self.below(64),
                _ => self.below(8192),
            }
        }
    }

    /// A 2 MiB image partitioned by sfdisk, in memory.
    fn small_image(script: &str) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("small.img");
        File::create(&path).unwrap().set_len(2 << 20).unwrap();
        let out = run("sfdisk", "fdisk", &["--quiet", path.to_str().unwrap()], Some(script));
        assert!(out.status.success(), "sfdisk failed: {}", text(&out));
        std::fs::read(&path).unwrap()
    }

    #[test]
    fn grow_never_panics_on_garbage() {
        let gpt = small_image("label: gpt\n,512K\n,\n");
        let mbr = small_image("label: dos\n,512K\n,\n");
        let header_fields = [
            (GPT_REVISION, 4),
            (GPT_HEADER_SIZE, 4),
            (GPT_MY_LBA, 8),
            (GPT_ALTERNATE_LBA, 8),
            (GPT_FIRST_USABLE, 8),
            (GPT_LAST_USABLE, 8),
            (GPT_ENTRIES_LBA, 8),
            (GPT_ENTRY_COUNT, 4),
            (GPT_ENTRY_SIZE, 4),
        ];
        let (mut grown, mut refused) = (0, 0);
        let mut rng = Rng(0x5EED);
        for round in 0..1000 {
            let mut disk = match round % 4 {
                // Noise, sometimes with the MBR signature, a 0xEE entry and "EFI PART".
                0 => {
                    let mut d: Vec<u8> = (0..64 * 1024).map(|_| rng.next() as u8).collect();
                    if rng.below(2) == 0 {
                        d[MBR_SIGNATURE..MBR_SIGNATURE + 2].copy_from_slice(&[0x55, 0xAA]);
                        (0..4).for_each(|i| d[MBR_TABLE + i * MBR_ENTRY_LEN] &= 0x80);
                    }
                    if rng.below(2) == 0 {
                        d[MBR_TABLE + MBR_TYPE] = TYPE_GPT_PROTECTIVE;
                        d[SECTOR as usize..][..8].copy_from_slice(GPT_SIGNATURE);
                    }
                    d
                }
                // A real GPT with header fields or entries changed, and its CRCs made right.
                1 | 2 => {
                    let mut d = gpt.clone();
                    let header = SECTOR as usize;
                    if round % 4 == 1 {
                        for _ in 0..rng.below(3) {
                            let (at, width) = header_fields[rng.below(header_fields.len() as u64) as usize];
                            let value = rng.small();
                            d[header + at..][..width].copy_from_slice(&value.to_le_bytes()[..width]);
                        }
                    } else {
                        let at = 2 * SECTOR as usize + rng.below(3 * 128 - 8) as usize;
                        let value = rng.small();
                        d[at..at + 8].copy_from_slice(&value.to_le_bytes());
                    }
                    let entries_crc = crc32fast::hash(&d[2 * SECTOR as usize..][..128 * 128]);
                    put_u32(&mut d, header + GPT_ENTRIES_CRC, entries_crc);
                    let size = (u32_at(&d, header + GPT_HEADER_SIZE) as usize).clamp(92, 512);
                    let crc = header_crc(&d[header..header + 512], size);
                    put_u32(&mut d, header + GPT_HEADER_CRC, crc);
                    d
                }
                // A real MBR with a partition entry changed.
                _ => {
                    let mut d = mbr.clone();
                    let entry = MBR_TABLE + rng.below(4) as usize * MBR_ENTRY_LEN;
                    let at = entry + [MBR_TYPE, MBR_START, MBR_SECTORS][rng.below(3) as usize];
                    let value = rng.small() as u32;
                    d[at..at + 4].copy_from_slice(&value.to_le_bytes());
                    d[entry + MBR_STATUS] &= 0x80;
                    d
                }
            };
            let disk_bytes = if rng.below(2) == 0 { rng.below(6 << 20) } else { rng.next() };
            let mut cursor = Cursor::new(std::mem::take(&mut disk));
            // A disk size past the end of the buffer can only end in a read error.
            match grow_last_partition(&mut cursor, disk_bytes.min(6 << 20)) {
                Ok(Grown::Mbr { .. } | Grown::Gpt { .. }) => grown += 1,
                Ok(Grown::Unchanged(_)) => {}
                Err(_) => refused += 1,
            }
        }
        // The mutations must reach the growing code, not only the first checks.
        assert!(grown > 50 && refused > 50, "grown {grown}, refused {refused}");
    }
}
