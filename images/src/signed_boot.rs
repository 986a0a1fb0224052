//! Debian's signed UEFI boot chain: shim (signed by Microsoft, so Secure
//! Boot firmware with the usual keys runs it) and GRUB (signed by Debian,
//! which shim trusts), taken from their packages without installing them
//! (their maintainer scripts would run grub-install on this machine).
//!
//! The lab's disks carry the disk GRUB; the appliance serves the network
//! GRUB over TFTP to UEFI PXE firmware ([`ensure_netboot`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ramdisk::{fetch_deb, RamdiskError};

const SHIM_DEB: &str = "shim-signed";
const GRUB_DEB: &str = "grub-efi-amd64-signed";
/// Paths inside the packages.
pub const SHIM_EFI: &str = "usr/lib/shim/shimx64.efi.signed";
pub const GRUB_EFI: &str = "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed";
pub const GRUB_NET_EFI: &str = "usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed";

/// The signed shim and GRUB packages, downloaded into a cache.
pub struct SignedChain {
    pub shim: PathBuf,
    pub grub: PathBuf,
}

impl SignedChain {
    /// Downloads (once) the candidate versions into `cache_dir/debs`.
    pub fn fetch(cache_dir: &Path) -> Result<SignedChain, RamdiskError> {
        let debs = cache_dir.join("debs");
        fs::create_dir_all(&debs).map_err(|source| RamdiskError::Io { path: debs.clone(), source })?;
        Ok(SignedChain { shim: fetch_deb(&debs, SHIM_DEB)?, grub: fetch_deb(&debs, GRUB_DEB)? })
    }

    /// The packages' file names, which carry their versions: part of a
    /// cache key.
    pub fn versions(&self) -> String {
        [&self.shim, &self.grub].map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned()).join(",")
    }

    /// Unpacks both packages into `dir`; the files are then at
    /// `dir/`[`SHIM_EFI`] and so on.
    pub fn unpack(&self, dir: &Path) -> Result<(), String> {
        for deb in [&self.shim, &self.grub] {
            crate::tools::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir), None)?;
        }
        Ok(())
    }
}

/// File names in the network boot directory: shim loads `grubx64.efi`
/// from the directory it was itself loaded from.
pub const NET_SHIM: &str = "shimx64.efi";
pub const NET_GRUB: &str = "grubx64.efi";

/// A directory holding [`NET_SHIM`] and [`NET_GRUB`] (Debian's GRUB
/// network image), made once per package versions in `cache_dir`.
pub fn ensure_netboot(cache_dir: &Path) -> Result<PathBuf, RamdiskError> {
    let chain = SignedChain::fetch(cache_dir)?;
    use sha2::Digest as _;
    let digest = hex::encode(sha2::Sha256::digest(chain.versions().as_bytes()));
    let dir = cache_dir.join(format!("signed-netboot-{}", &digest[..16]));
    if dir.join(NET_SHIM).is_file() && dir.join(NET_GRUB).is_file() {
        return Ok(dir);
    }
    let work = cache_dir.join(format!(".signed-netboot-{}.partial", std::process::id()));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RamdiskError::Io { path, source }
    };
    let _ = fs::remove_dir_all(&work);
    let unpacked = work.join("unpacked");
    fs::create_dir_all(&unpacked).map_err(io(&unpacked))?;
    chain.unpack(&unpacked).map_err(|detail| RamdiskError::Command { command: "dpkg-deb -x".into(), detail })?;
    let out = work.join("out");
    fs::create_dir(&out).map_err(io(&out))?;
    fs::copy(unpacked.join(SHIM_EFI), out.join(NET_SHIM)).map_err(io(&unpacked.join(SHIM_EFI)))?;
    fs::copy(unpacked.join(GRUB_NET_EFI), out.join(NET_GRUB)).map_err(io(&unpacked.join(GRUB_NET_EFI)))?;
    // Complete or absent: another start may have won the race.
    if fs::rename(&out, &dir).is_err() && !dir.join(NET_GRUB).is_file() {
        return Err(RamdiskError::Missing(format!("could not place {}", dir.display())));
    }
    let _ = fs::remove_dir_all(&work);
    Ok(dir)
}
