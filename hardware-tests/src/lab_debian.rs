//! `lab-debian`: a real OS image built from Debian packages, the way a user
//! can build their own. `debootstrap` (systemd, the kernel, containerd,
//! docker.io) into a directory, a few files of configuration, an ext4
//! root made by `mkfs.ext4 -d`, and a disk that boots under legacy BIOS and
//! UEFI, Secure Boot included (`lab_disk`: an ESP with the signed kernel,
//! shim, GRUB and syslinux). Stored as raw+zstd, cached under a digest of
//! the recipe and the signed packages' versions.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::lab_disk::{self, SignedChain};
use images::catalog::{self, Imported, SourceFormat};
use images::tools::{run, which};

/// Debian release and the packages on top of `minbase`.
pub const SUITE: &str = "bookworm";
pub const MIRROR: &str = "http://deb.debian.org/debian";
pub const PACKAGES: &[&str] =
    &["systemd-sysv", "udev", "kmod", "iproute2", "linux-image-amd64", "containerd", "docker.io"];
/// Bumped whenever the steps below change what is built.
const RECIPE: u32 = 5;
/// What the image's serial console shows once it reaches a login prompt;
/// the lab looks for it.
pub const BOOTED_MARKER: &str = "Slipway lab-debian";
pub const ROOT_LABEL: &str = "slipway-root";
/// The kernel command line both boot loaders pass.
const KERNEL_ARGS: &str = "root=LABEL=slipway-root ro console=ttyS0,115200";

/// Room for the kernel and Debian's initramfs (~45 MiB together) and the
/// UEFI loaders (~3 MiB).
pub(crate) const BOOT_MIB: u64 = 64;

/// The cached image and what the catalog needs to know of it.
#[derive(Debug, Clone)]
pub struct LabDebian {
    /// raw+zstd.
    pub path: PathBuf,
    pub imported: Imported,
}

fn key(chain: &SignedChain) -> String {
    let recipe = format!("{RECIPE} {SUITE} {MIRROR} {} {}", PACKAGES.join(","), chain.versions());
    hex::encode(&Sha256::digest(recipe.as_bytes())[..8])
}

/// Returns the cached image, building it (a few minutes: debootstrap) if
/// needed. `progress` hears each step.
pub fn ensure_lab_debian(cache_dir: &Path, progress: &mut dyn FnMut(&str)) -> Result<LabDebian, String> {
    let chain = SignedChain::fetch(cache_dir).map_err(|e| e.to_string())?;
    cached(cache_dir, &format!("lab-debian-{}", key(&chain)), |work, out| {
        lab_disk::check_tools()?;
        for tool in ["debootstrap", "mkfs.ext4"] {
            if which(tool).is_none() {
                return Err(format!("{tool} is missing (scripts/prereqs.sh installs it)"));
            }
        }
        build(work, out, &chain, progress)
    })
}

/// `dir/NAME.raw.zst` with its catalog facts in `dir/NAME.json`: found, or
/// made by `make(work, out)` in a scratch directory removed afterwards.
/// The facts are written last, so a half-made image is never taken.
pub(crate) fn cached(
    dir: &Path,
    name: &str,
    make: impl FnOnce(&Path, &Path) -> Result<Imported, String>,
) -> Result<LabDebian, String> {
    let path = dir.join(format!("{name}.raw.zst"));
    let meta = dir.join(format!("{name}.json"));
    if let (true, Ok(text)) = (path.is_file(), std::fs::read_to_string(&meta)) {
        if let Ok((raw_bytes, sha256, bootable)) = serde_json::from_str(&text) {
            let stored_bytes = std::fs::metadata(&path).map_err(|e| e.to_string())?.len();
            return Ok(LabDebian { path, imported: Imported { raw_bytes, sha256, stored_bytes, bootable } });
        }
    }
    let work = dir.join(format!("{name}.building"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let result = make(&work, &path);
    let _ = std::fs::remove_dir_all(&work);
    let imported = result?;
    let facts = (imported.raw_bytes, &imported.sha256, imported.bootable);
    std::fs::write(&meta, serde_json::to_string(&facts).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    Ok(LabDebian { path, imported })
}

fn build(work: &Path, out: &Path, chain: &SignedChain, progress: &mut dyn FnMut(&str)) -> Result<Imported, String> {
    let root = work.join("root");
    progress(&format!("debootstrap {SUITE} with {}", PACKAGES.join(", ")));
    run(
        Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--include={}", PACKAGES.join(",")))
            .arg(SUITE)
            .arg(&root)
            .arg(MIRROR),
        None,
    )?;
    progress("configuring the root filesystem");
    configure(&root)?;
    let (kernel, initrd) = boot_files(&root)?;
    let staged_kernel = work.join("vmlinuz");
    let staged_initrd = work.join("initrd.img");
    std::fs::copy(&kernel, &staged_kernel).map_err(|e| e.to_string())?;
    std::fs::copy(&initrd, &staged_initrd).map_err(|e| e.to_string())?;
    progress("leaving out what a virtual machine never loads");
    let used = slim(&root, &work.join("unused"))?;
    progress(&format!("root filesystem {} MiB", used >> 20));

    progress("making the EFI System Partition (shim, GRUB, syslinux)");
    let boot = work.join("boot.img");
    let contents = lab_disk::Boot {
        kernel: &staged_kernel,
        initrd: &staged_initrd,
        kernel_args: KERNEL_ARGS,
        title: BOOTED_MARKER,
    };
    lab_disk::make_esp(work, &boot, BOOT_MIB, chain, &contents)?;

    progress("making the ext4 root (mkfs.ext4 -d)");
    // Little slack: the agent grows the partition to the disk at deploy and
    // the image grows its root filesystem at first boot, so every byte
    // here is only written (and verified) on every node.
    let root_mib = ((used * 11 / 10) >> 20) + 128;
    let root_img = work.join("root.img");
    run(
        Command::new("mkfs.ext4")
            .args(["-q", "-L", ROOT_LABEL, "-d"])
            .arg(&root)
            .arg(&root_img)
            .arg(format!("{root_mib}M")),
        None,
    )?;

    progress("assembling the disk (GPT)");
    let disk = work.join("disk.raw");
    lab_disk::assemble(&disk, &boot, BOOT_MIB, Some((&root_img, root_mib)))?;

    progress("compressing (raw+zstd)");
    let raw = File::open(&disk).map_err(|e| e.to_string())?;
    catalog::import_stream(raw, SourceFormat::Raw, out, None, &mut |_| {}).map_err(|e| e.to_string())
}

/// What differs from a plain debootstrap: networking by DHCP on every NIC,
/// a root without password on the console (a lab), a fresh machine-id per
/// node, and a console banner the lab recognises.
fn configure(root: &Path) -> Result<(), String> {
    write(&root.join("etc/fstab"), &format!("LABEL={ROOT_LABEL} / ext4 errors=remount-ro 0 1\n"))?;
    write(&root.join("etc/hostname"), "lab-debian\n")?;
    write(&root.join("etc/hosts"), "127.0.0.1 localhost\n127.0.1.1 lab-debian\n")?;
    write(&root.join("etc/issue"), &format!("{BOOTED_MARKER} \\n \\l\n\n"))?;
    write(&root.join("etc/systemd/network/80-dhcp.network"), "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n")?;
    for (unit, wants) in
        [("systemd-networkd.service", "multi-user.target.wants"), ("systemd-networkd.socket", "sockets.target.wants")]
    {
        let dir = root.join("etc/systemd/system").join(wants);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let link = dir.join(unit);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("/lib/systemd/system/{unit}"), &link).map_err(|e| e.to_string())?;
    }
    let shadow = root.join("etc/shadow");
    let text = std::fs::read_to_string(&shadow).map_err(|e| e.to_string())?;
    let text: String =
        text.lines()
            .map(|l| {
                if l.starts_with("root:") {
                    format!("root::{}", l.splitn(3, ':').nth(2).unwrap_or(""))
                } else {
                    l.into()
                }
            })
            .map(|l| l + "\n")
            .collect();
    write(&shadow, &text)?;
    write(&root.join("etc/machine-id"), "")?;
    let _ = std::fs::remove_file(root.join("var/lib/dbus/machine-id"));
    // Downloaded packages are not part of the image.
    if let Ok(entries) = std::fs::read_dir(root.join("var/cache/apt/archives")) {
        for e in entries.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "deb")) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// Kernel modules for hardware a QEMU machine does not have. Kept: virtio,
/// block, filesystems, and all of `net/` (netfilter, bridge, vxlan, ipvs:
/// what Docker and Swarm overlay networks load).
const UNUSED: &[&str] = &[
    "sound",
    "drivers/gpu",
    "drivers/media",
    "drivers/infiniband",
    "drivers/iio",
    "drivers/staging",
    "drivers/usb",
    "drivers/hwmon",
    "drivers/isdn",
    "drivers/bluetooth",
    "drivers/scsi",
    "drivers/mtd",
    "drivers/input",
    "drivers/hid",
    "drivers/video",
    "drivers/net/wireless",
    "drivers/net/ethernet",
    "drivers/net/can",
    "drivers/net/usb",
    "net/wireless",
    "net/mac80211",
    "net/bluetooth",
];

/// Moves out of the root what a lab node never loads or reads (the
/// modules above, documentation, translations, the copy of the kernel the
/// boot partition holds): every byte left is written and read back on
/// every reinstall. Returns the bytes the root holds afterwards.
fn slim(root: &Path, unused: &Path) -> Result<u64, String> {
    let modules = root.join("usr/lib/modules");
    let releases: Vec<PathBuf> = std::fs::read_dir(&modules)
        .map_err(|e| format!("{}: {e}", modules.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    let mut moved = vec![];
    for release in &releases {
        moved.extend(UNUSED.iter().map(|dir| release.join("kernel").join(dir)));
    }
    moved.extend(["usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info"].map(|d| root.join(d)));
    // The kernel and initramfs are read from the boot partition.
    for entry in std::fs::read_dir(root.join("boot")).map_err(|e| e.to_string())?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("vmlinuz") || name.starts_with("initrd.img") {
            moved.push(entry.path());
        }
    }
    std::fs::create_dir_all(unused).map_err(|e| e.to_string())?;
    for (i, path) in moved.iter().filter(|p| p.exists()).enumerate() {
        std::fs::rename(path, unused.join(i.to_string())).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    for release in &releases {
        let version = release.file_name().unwrap_or_default();
        // The image's own depmod (kmod is one of its packages).
        run(Command::new("chroot").arg(root).arg("depmod").arg("-a").arg(version), None)?;
    }
    du_bytes(root)
}

/// The kernel and initramfs Debian installed (`/boot/vmlinuz-*`).
fn boot_files(root: &Path) -> Result<(PathBuf, PathBuf), String> {
    let boot = root.join("boot");
    let mut kernels: Vec<PathBuf> = std::fs::read_dir(&boot)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .collect();
    kernels.sort();
    let kernel = kernels.pop().ok_or("no kernel in /boot of the image")?;
    let release = kernel.file_name().unwrap_or_default().to_string_lossy().trim_start_matches("vmlinuz-").to_string();
    let initrd = boot.join(format!("initrd.img-{release}"));
    if !initrd.is_file() {
        return Err(format!("no initramfs for {release} in /boot of the image"));
    }
    Ok((kernel, initrd))
}

fn du_bytes(dir: &Path) -> Result<u64, String> {
    let out = Command::new("du").arg("-sb").arg(dir).output().map_err(|e| e.to_string())?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("du {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr)))
}

use lab_disk::write;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_image_is_made_once_and_a_failed_make_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let made = |work: &Path, out: &Path| {
            assert!(work.is_dir(), "a scratch directory to work in");
            std::fs::write(out, b"zstd bytes").map_err(|e| e.to_string())?;
            Ok(Imported { raw_bytes: 42, sha256: "ab".into(), stored_bytes: 10, bootable: Default::default() })
        };
        let first = cached(dir.path(), "img", made).unwrap();
        assert_eq!(first.path, dir.path().join("img.raw.zst"));
        assert!(!dir.path().join("img.building").exists(), "the scratch directory is gone");
        let again = cached(dir.path(), "img", |_, _| panic!("made twice")).unwrap();
        assert_eq!((again.imported.raw_bytes, again.imported.sha256.as_str()), (42, "ab"));
        assert_eq!(again.imported.stored_bytes, 10);

        let failed = cached(dir.path(), "other", |_, _| Err("disk full".into()));
        assert_eq!(failed.err().as_deref(), Some("disk full"));
        assert!(!dir.path().join("other.json").exists() && !dir.path().join("other.building").exists());
    }
}
