//! Versions of `lab-debian` for OS-refresh campaigns, derived from the
//! cached image instead of a second debootstrap: the disk is unpacked, one
//! partition is loop-mounted and edited, and the result packed again.
//!
//! - `Release(n)`: a new release of the same OS. `/etc/slipway-lab-release`
//!   says `n` and the console banner ends with `(release n)`, so the lab
//!   sees on each node's serial console that it booted the new bits.
//! - `BrokenBoot`: an image that writes and verifies fine but cannot boot
//!   (its bootloader names a root filesystem that does not exist): the
//!   classic bad release a health check and rollback are for.
//!
//! Needs root for the ext4 edit (a loop device and mount; the lab runs as
//! root anyway) and mtools for the FAT one.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::lab_debian::{cached, LabDebian, BOOT_MIB, ROOT_LABEL};
use crate::lab_disk::{ESP_START as BOOT_START, GRUB_CFG, SYSLINUX_CFG};
use images::catalog::{self, SourceFormat};
use images::tools::run;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Release(u32),
    BrokenBoot,
}

impl Variant {
    fn tag(self) -> String {
        match self {
            Variant::Release(n) => format!("r{n}"),
            Variant::BrokenBoot => "broken-boot".into(),
        }
    }
}

/// What a node's console shows after the banner when it runs `Release(n)`.
pub fn release_banner(n: u32) -> String {
    format!("(release {n})")
}

/// The variant's image, derived from `base` (cached beside it).
pub fn ensure_variant(base: &Path, variant: Variant, progress: &mut dyn FnMut(&str)) -> Result<LabDebian, String> {
    let stem = base.file_name().and_then(|n| n.to_str()).unwrap_or("lab-debian").trim_end_matches(".raw.zst");
    let dir = base.parent().unwrap_or(Path::new("."));
    cached(dir, &format!("{stem}-{}", variant.tag()), |work, out| derive(base, work, out, variant, progress))
}

fn derive(
    base: &Path,
    work: &Path,
    out: &Path,
    variant: Variant,
    progress: &mut dyn FnMut(&str),
) -> Result<catalog::Imported, String> {
    progress(&format!("deriving lab-debian {}: unpacking", variant.tag()));
    let disk = work.join("disk.raw");
    let mut src = std::fs::File::open(base).map_err(|e| format!("{}: {e}", base.display()))?;
    let mut dst = std::fs::File::create(&disk).map_err(|e| e.to_string())?;
    zstd::stream::copy_decode(&mut src, &mut dst).map_err(|e| format!("unpacking {}: {e}", base.display()))?;
    drop(dst);

    let boot_offset = BOOT_START * 512;
    let root_offset = (BOOT_START + BOOT_MIB * 2048) * 512;
    match variant {
        Variant::Release(n) => {
            let mnt = work.join("mnt");
            std::fs::create_dir_all(&mnt).map_err(|e| e.to_string())?;
            let mounted = Mounted::new(&disk, root_offset, &mnt)?;
            let issue = mounted.dir.join("etc/issue");
            let text = std::fs::read_to_string(&issue).map_err(|e| e.to_string())?;
            let first = text.lines().next().unwrap_or_default().trim_end();
            std::fs::write(&issue, format!("{first} {}\n\n", release_banner(n))).map_err(|e| e.to_string())?;
            std::fs::write(mounted.dir.join("etc/slipway-lab-release"), format!("{n}\n")).map_err(|e| e.to_string())?;
            mounted.unmount()?;
        }
        Variant::BrokenBoot => {
            // The ESP through mtools: this kernel may have no vfat module to
            // mount it with. Both boot loaders get the same wrong root.
            let image = format!("{}@@{boot_offset}", disk.display());
            let wanted = format!("root=LABEL={ROOT_LABEL}");
            for (i, path) in [SYSLINUX_CFG, GRUB_CFG].into_iter().enumerate() {
                let cfg = work.join(format!("boot-{i}.cfg"));
                run(Command::new("mcopy").args(["-n", "-i", &image, path]).arg(&cfg), None)?;
                let text = std::fs::read_to_string(&cfg).map_err(|e| e.to_string())?;
                if !text.contains(&wanted) {
                    return Err(format!("{path} of the base image has no {wanted}"));
                }
                std::fs::write(&cfg, text.replace(&wanted, "root=LABEL=no-such-root")).map_err(|e| e.to_string())?;
                run(Command::new("mcopy").args(["-o", "-i", &image]).arg(&cfg).arg(path), None)?;
            }
        }
    }
    progress(&format!("deriving lab-debian {}: packing (raw+zstd)", variant.tag()));
    let raw = std::fs::File::open(&disk).map_err(|e| e.to_string())?;
    catalog::import_stream(raw, SourceFormat::Raw, out, None, &mut |_| {}).map_err(|e| e.to_string())
}

/// A partition of a disk file, loop-mounted; unmounted and detached when
/// dropped (also on an error path).
struct Mounted {
    dir: PathBuf,
    loop_dev: String,
    mounted: bool,
}

impl Mounted {
    fn new(disk: &Path, offset: u64, dir: &Path) -> Result<Mounted, String> {
        let out = Command::new("losetup")
            .args(["--find", "--show", "--offset", &offset.to_string()])
            .arg(disk)
            .output()
            .map_err(|e| format!("losetup: {e}"))?;
        if !out.status.success() {
            return Err(format!("losetup: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        let loop_dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let mut m = Mounted { dir: dir.to_path_buf(), loop_dev, mounted: false };
        run(Command::new("mount").arg(&m.loop_dev).arg(dir), None)?;
        m.mounted = true;
        Ok(m)
    }

    fn unmount(mut self) -> Result<(), String> {
        self.mounted = false;
        run(Command::new("umount").arg(&self.dir), None)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.dir).status();
        }
        let _ = Command::new("losetup").args(["--detach", &self.loop_dev]).status();
    }
}
