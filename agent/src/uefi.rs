//! The deployed OS's UEFI boot entry, written through efivarfs from the
//! ramdisk (what `efibootmgr --create` does, without shipping it).
//!
//! After an image is written, the agent finds its EFI System Partition in
//! the GPT, mounts it read-only to pick the loader (a vendor's shim or
//! GRUB, else the removable-media path), and makes sure one `Boot####`
//! variable points at it: an entry from an earlier deploy of this disk is
//! rewritten in place, a missing one is created and put in `BootOrder`
//! right after the entry the machine booted from (its network entry), so
//! a network-first machine falls through to its disk when iPXE hands
//! control back, and a disk-first one boots it directly. The image also
//! keeps `\EFI\BOOT\BOOTX64.EFI`, which firmware finds with no entry at
//! all (after an NVRAM reset).

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

/// `EFI_GLOBAL_VARIABLE`: the vendor GUID of `Boot####` and `BootOrder`.
const GLOBAL: &str = inventory::inband::EFI_GLOBAL;
/// Non-volatile, boot-service and runtime access: how firmware and
/// efibootmgr store boot entries.
const VAR_ATTRIBUTES: u32 = 0x7;
const LOAD_OPTION_ACTIVE: u32 = 0x1;
/// Every entry we write starts with this; an entry for the same partition
/// GUID is ours to replace.
const DESCRIPTION_PREFIX: &str = "Slipway";
const ESP_MOUNT: &str = "/mnt/slipway-esp";

/// Where the EFI System Partition is, as a `HD()` device path node says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Esp {
    /// 1-based partition number.
    pub number: u32,
    pub start_lba: u64,
    pub sectors: u64,
    /// The partition's unique GUID, as stored in the GPT.
    pub guid: [u8; 16],
}

/// The ESP of a GPT disk with 512-byte sectors, or `None` when the disk
/// has no GPT or no ESP. The header was checked by `grow` just before.
pub fn find_esp<D: Read + Seek>(disk: &mut D) -> Result<Option<Esp>, String> {
    use crate::grow::*;
    let header = read_sectors(disk, 1, 1)?;
    if &header[..GPT_SIGNATURE.len()] != GPT_SIGNATURE {
        return Ok(None);
    }
    let (count, size) = (u32_at(&header, GPT_ENTRY_COUNT), u32_at(&header, GPT_ENTRY_SIZE));
    let bytes = u64::from(count) * u64::from(size);
    if size < ENTRY_MIN_SIZE || count > MAX_ENTRIES || bytes > MAX_ENTRIES_BYTES {
        return Err(format!("GPT with {count} entries of {size} bytes"));
    }
    let entries = read_sectors(disk, u64_at(&header, GPT_ENTRIES_LBA), bytes.div_ceil(SECTOR))?;
    let found = entries[..bytes as usize]
        .chunks_exact(size as usize)
        .enumerate()
        .find(|(_, e)| e[ENTRY_TYPE_GUID..ENTRY_TYPE_GUID + 16] == ESP_TYPE_GUID);
    Ok(found.map(|(i, e)| {
        let (first, last) = (u64_at(e, ENTRY_FIRST_LBA), u64_at(e, ENTRY_LAST_LBA));
        Esp {
            number: i as u32 + 1,
            start_lba: first,
            sectors: last.saturating_sub(first) + 1,
            guid: e[16..32].try_into().expect("16 bytes"),
        }
    }))
}

/// The loader an entry should start, as a path on the ESP (`/EFI/...`):
/// a vendor's shim (Secure Boot ready), else its GRUB, else the removable
/// path. `root` is the mounted ESP.
pub fn pick_loader(root: &Path) -> Option<String> {
    let efi = std::fs::read_dir(root.join("EFI")).ok()?;
    let mut vendors: Vec<(String, PathBuf)> = efi
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(name, _)| !name.eq_ignore_ascii_case("BOOT"))
        .collect();
    vendors.sort();
    for wanted in ["shimx64.efi", "grubx64.efi"] {
        for (vendor, dir) in &vendors {
            let found = std::fs::read_dir(dir).ok()?.flatten().find(|f| f.file_name().eq_ignore_ascii_case(wanted));
            if let Some(file) = found {
                return Some(format!("/EFI/{vendor}/{}", file.file_name().to_string_lossy()));
            }
        }
    }
    root.join("EFI/BOOT/BOOTX64.EFI").is_file().then(|| "/EFI/BOOT/BOOTX64.EFI".to_string())
}

/// An `EFI_LOAD_OPTION`: attributes, the device path's length, the
/// description (UCS-2), then `HD(number,GPT,guid,start,size)/File(path)/End`.
pub fn load_option(description: &str, esp: &Esp, loader: &str) -> Vec<u8> {
    let mut path = Vec::new();
    // Media device path, hard drive (type 4, subtype 1, 42 bytes).
    path.extend_from_slice(&[4, 1, 42, 0]);
    path.extend_from_slice(&esp.number.to_le_bytes());
    path.extend_from_slice(&esp.start_lba.to_le_bytes());
    path.extend_from_slice(&esp.sectors.to_le_bytes());
    path.extend_from_slice(&esp.guid);
    path.extend_from_slice(&[0x02, 0x02]); // GPT, GUID signature
                                           // Media device path, file path (type 4, subtype 4), backslashes.
    let file = ucs2(&loader.replace('/', "\\"));
    path.extend_from_slice(&[4, 4]);
    path.extend_from_slice(&((4 + file.len()) as u16).to_le_bytes());
    path.extend_from_slice(&file);
    path.extend_from_slice(&[0x7F, 0xFF, 4, 0]); // end of the whole path
    let mut option = Vec::new();
    option.extend_from_slice(&LOAD_OPTION_ACTIVE.to_le_bytes());
    option.extend_from_slice(&(path.len() as u16).to_le_bytes());
    option.extend_from_slice(&ucs2(description));
    option.extend_from_slice(&path);
    option
}

/// UCS-2 little-endian with the terminating NUL.
fn ucs2(text: &str) -> Vec<u8> {
    text.encode_utf16().chain([0]).flat_map(u16::to_le_bytes).collect()
}

/// What [`ensure_entry`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    Created(u16),
    Repaired(u16),
    Unchanged(u16),
}

/// Makes `option` a boot entry in the variables under `efivars`, reusing
/// the entry that already names this ESP (by partition GUID), and puts it
/// in `BootOrder` after `BootCurrent` when it is not there.
pub fn ensure_entry(efivars: &Path, option: &[u8], esp: &Esp) -> Result<Entry, String> {
    let var = |name: &str| efivars.join(format!("{name}-{GLOBAL}"));
    let read = |name: &str| std::fs::read(var(name)).ok().filter(|v| v.len() >= 4).map(|v| v[4..].to_vec());
    let mut numbers: Vec<u16> = std::fs::read_dir(efivars)
        .map_err(|e| format!("{}: {e}", efivars.display()))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let hex = name.strip_prefix("Boot")?.strip_suffix(&format!("-{GLOBAL}"))?;
            (hex.len() == 4).then(|| u16::from_str_radix(hex, 16).ok()).flatten()
        })
        .collect();
    numbers.sort_unstable();
    let ours = numbers.iter().copied().find(|n| {
        read(&format!("Boot{n:04X}")).is_some_and(|existing| names_esp(&existing, esp) && is_ours(&existing))
    });
    let (number, outcome) = match ours {
        Some(n) if read(&format!("Boot{n:04X}")).as_deref() == Some(option) => (n, Entry::Unchanged(n)),
        Some(n) => (n, Entry::Repaired(n)),
        None => {
            let free = (0..=0xFFFFu16).find(|n| !numbers.contains(n)).ok_or("no free Boot#### number")?;
            (free, Entry::Created(free))
        }
    };
    if !matches!(outcome, Entry::Unchanged(_)) {
        write_var(&var(&format!("Boot{number:04X}")), option)?;
    }
    let order: Vec<u16> =
        read("BootOrder").unwrap_or_default().chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    if !order.contains(&number) {
        let current = read("BootCurrent").filter(|c| c.len() >= 2).map(|c| u16::from_le_bytes([c[0], c[1]]));
        let at = current.and_then(|c| order.iter().position(|&n| n == c)).map_or(order.len(), |i| i + 1);
        let mut new_order = order.clone();
        new_order.insert(at, number);
        write_var(&var("BootOrder"), &new_order.iter().flat_map(|n| n.to_le_bytes()).collect::<Vec<u8>>())?;
    }
    Ok(outcome)
}

fn is_ours(option: &[u8]) -> bool {
    option.len() > 6 && {
        let description: Vec<u16> =
            option[6..].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|&c| c != 0).collect();
        String::from_utf16_lossy(&description).starts_with(DESCRIPTION_PREFIX)
    }
}

/// Whether a load option's device path holds this ESP's partition GUID.
fn names_esp(option: &[u8], esp: &Esp) -> bool {
    option.windows(16).any(|w| w == esp.guid)
}

/// efivarfs takes a variable as one write: attributes, then the data.
fn write_var(path: &Path, data: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let mut bytes = VAR_ATTRIBUTES.to_le_bytes().to_vec();
    bytes.extend_from_slice(data);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.write_all(&bytes).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// After a deploy under UEFI: the boot entry for the image on `disk`.
/// Returns what was done, for the deploy report; `None` under BIOS.
pub fn boot_entry_for(disk: &Path, image: &str) -> Result<Option<String>, String> {
    if !Path::new("/sys/firmware/efi").is_dir() {
        return Ok(None);
    }
    let efivars = Path::new("/sys/firmware/efi/efivars");
    let mut file = std::fs::File::open(disk).map_err(|e| format!("{}: {e}", disk.display()))?;
    let Some(esp) = find_esp(&mut file)? else {
        return Ok(Some("no EFI System Partition on the disk: no boot entry written".into()));
    };
    let number_of = |p: &PathBuf| {
        let name = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
        std::fs::read_to_string(format!("/sys/class/block/{name}/partition")).ok().and_then(|n| n.trim().parse().ok())
    };
    let partition = crate::firstboot::partitions(disk)
        .into_iter()
        .find(|p| number_of(p) == Some(esp.number))
        .ok_or_else(|| format!("partition {} of {} is not known to the kernel", esp.number, disk.display()))?;
    std::fs::create_dir_all(ESP_MOUNT).map_err(|e| format!("{ESP_MOUNT}: {e}"))?;
    crate::firstboot::run("mount", &["-t", "vfat", "-o", "ro", &partition.display().to_string(), ESP_MOUNT])?;
    let loader = pick_loader(Path::new(ESP_MOUNT));
    crate::firstboot::run("umount", &[ESP_MOUNT])?;
    let Some(loader) = loader else {
        return Ok(Some("no UEFI loader on the EFI System Partition: no boot entry written".into()));
    };
    let option = load_option(&format!("{DESCRIPTION_PREFIX} {image}"), &esp, &loader);
    let done = ensure_entry(efivars, &option, &esp)?;
    Ok(Some(format!("UEFI boot entry {done:?} for {loader} on partition {}", esp.number)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esp() -> Esp {
        Esp { number: 1, start_lba: 2048, sectors: 131072, guid: [0xAB; 16] }
    }

    fn var(dir: &Path, name: &str, data: &[u8]) {
        let mut bytes = VAR_ATTRIBUTES.to_le_bytes().to_vec();
        bytes.extend_from_slice(data);
        std::fs::write(dir.join(format!("{name}-{GLOBAL}")), bytes).unwrap();
    }

    fn order(dir: &Path) -> Vec<u16> {
        let raw = std::fs::read(dir.join(format!("BootOrder-{GLOBAL}"))).unwrap();
        raw[4..].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect()
    }

    #[test]
    fn the_load_option_is_what_efibootmgr_writes() {
        let option = load_option("Slipway lab", &esp(), "/EFI/debian/shimx64.efi");
        // attributes, path length, "Slipway lab\0" in UCS-2
        assert_eq!(&option[..4], &[1, 0, 0, 0]);
        let path_len = u16::from_le_bytes([option[4], option[5]]) as usize;
        let description_len = ("Slipway lab".len() + 1) * 2;
        assert_eq!(option.len(), 6 + description_len + path_len);
        let path = &option[6 + description_len..];
        assert_eq!(&path[..4], &[4, 1, 42, 0], "HD() node");
        assert_eq!(u64::from_le_bytes(path[8..16].try_into().unwrap()), 2048);
        assert_eq!(&path[24..40], &[0xAB; 16]);
        assert_eq!(&path[40..42], &[2, 2]);
        let file = &path[42..path.len() - 4];
        let text: Vec<u16> = file[4..].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        assert_eq!(String::from_utf16_lossy(&text), "\\EFI\\debian\\shimx64.efi\0");
        assert_eq!(&path[path.len() - 4..], &[0x7F, 0xFF, 4, 0]);
    }

    #[test]
    fn a_new_entry_goes_right_after_the_network_entry_that_booted() {
        let dir = tempfile::tempdir().unwrap();
        var(dir.path(), "Boot0000", &load_option("UEFI Shell", &Esp { guid: [1; 16], ..esp() }, "/shell.efi"));
        var(dir.path(), "Boot0001", b"\x01\0\x04\0P\0X\0E\0\0\0\x7f\xff\x04\0");
        var(dir.path(), "BootOrder", &[1, 0, 0, 0]);
        var(dir.path(), "BootCurrent", &[1, 0]);
        let option = load_option("Slipway lab-debian", &esp(), "/EFI/debian/shimx64.efi");
        assert_eq!(ensure_entry(dir.path(), &option, &esp()).unwrap(), Entry::Created(2));
        assert_eq!(order(dir.path()), [1, 2, 0], "after the network entry, before the rest");
        assert_eq!(ensure_entry(dir.path(), &option, &esp()).unwrap(), Entry::Unchanged(2), "idempotent");
        assert_eq!(order(dir.path()), [1, 2, 0]);

        // A redeploy of another image onto the same ESP rewrites that entry.
        let other = load_option("Slipway lab-debian-r2", &esp(), "/EFI/debian/shimx64.efi");
        assert_eq!(ensure_entry(dir.path(), &other, &esp()).unwrap(), Entry::Repaired(2));
        let stored = std::fs::read(dir.path().join(format!("Boot0002-{GLOBAL}"))).unwrap();
        assert_eq!(&stored[4..], &other[..]);
    }

    #[test]
    fn a_cleared_nvram_gets_an_entry_and_an_order() {
        let dir = tempfile::tempdir().unwrap();
        let option = load_option("Slipway x", &esp(), "/EFI/BOOT/BOOTX64.EFI");
        assert_eq!(ensure_entry(dir.path(), &option, &esp()).unwrap(), Entry::Created(0));
        assert_eq!(order(dir.path()), [0]);
    }

    #[test]
    fn the_esp_is_found_in_a_real_gpt_and_the_loader_on_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.raw");
        std::fs::File::create(&disk).unwrap().set_len(64 << 20).unwrap();
        let table = "label: gpt\nstart=2048, size=65536, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=0A0B0C0D-0E0F-1011-1213-141516171819\nstart=67584, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n";
        let mut child = std::process::Command::new("sfdisk")
            .arg("--quiet")
            .arg(&disk)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("sfdisk (fdisk) is installed by scripts/prereqs.sh");
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), table.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success());
        let found = find_esp(&mut std::fs::File::open(&disk).unwrap()).unwrap().unwrap();
        assert_eq!((found.number, found.start_lba, found.sectors), (1, 2048, 65536));
        assert_eq!(found.guid[..4], [0x0D, 0x0C, 0x0B, 0x0A], "stored mixed-endian, as the device path wants it");

        let root = dir.path().join("esp");
        std::fs::create_dir_all(root.join("EFI/BOOT")).unwrap();
        std::fs::write(root.join("EFI/BOOT/BOOTX64.EFI"), b"MZ").unwrap();
        assert_eq!(pick_loader(&root).as_deref(), Some("/EFI/BOOT/BOOTX64.EFI"));
        std::fs::create_dir_all(root.join("EFI/debian")).unwrap();
        std::fs::write(root.join("EFI/debian/grubx64.efi"), b"MZ").unwrap();
        assert_eq!(pick_loader(&root).as_deref(), Some("/EFI/debian/grubx64.efi"));
        std::fs::write(root.join("EFI/debian/shimx64.efi"), b"MZ").unwrap();
        assert_eq!(pick_loader(&root).as_deref(), Some("/EFI/debian/shimx64.efi"), "shim first: Secure Boot");
    }
}
