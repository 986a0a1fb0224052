//! First-boot configuration written straight into the deployed root
//! filesystem (for images without cloud-init): the host name and root's SSH
//! keys. The root is the ext4 partition of the written disk that holds
//! `etc/os-release`; an image without one (lab-tiny) is left as it is, and
//! that is reported, not hidden.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstBoot {
    pub hostname: String,
    pub ssh_authorized_keys: Vec<String>,
}

/// Where the configuration went, for the report.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Written { partition: String },
    NoRootFilesystem,
}

const MOUNT_POINT: &str = "/mnt/slipway-root";

/// Re-reads `disk`'s partition table, finds its root filesystem, writes
/// `config` into it and unmounts it.
pub fn apply(disk: &Path, config: &FirstBoot) -> Result<Applied, String> {
    // The kernel still has the partition table of what was on the disk
    // before the image.
    run("blockdev", &["--rereadpt", &disk.display().to_string()])?;
    std::fs::create_dir_all(MOUNT_POINT).map_err(|e| format!("{MOUNT_POINT}: {e}"))?;
    for partition in partitions(disk) {
        let dev = partition.display().to_string();
        if run("mount", &["-t", "ext4", &dev, MOUNT_POINT]).is_err() {
            continue;
        }
        let root = Path::new(MOUNT_POINT);
        let result = if root.join("etc/os-release").exists() { write_into(root, config).map(Some) } else { Ok(None) };
        let unmounted = run("umount", &[MOUNT_POINT]);
        match result {
            Ok(Some(())) => {
                unmounted?;
                return Ok(Applied::Written { partition: dev });
            }
            Ok(None) => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(Applied::NoRootFilesystem)
}

/// `/dev/vda` -> `/dev/vda1`, `/dev/vda2`, ... as the kernel lists them.
fn partitions(disk: &Path) -> Vec<PathBuf> {
    let name = disk.file_name().unwrap_or_default().to_string_lossy().to_string();
    let mut parts: Vec<String> = std::fs::read_dir(Path::new("/sys/class/block").join(&name))
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with(&name) && n.len() > name.len())
                .collect()
        })
        .unwrap_or_default();
    parts.sort();
    parts.into_iter().map(|p| Path::new("/dev").join(p)).collect()
}

/// Writes the files under `root` (a mounted root filesystem).
pub fn write_into(root: &Path, config: &FirstBoot) -> Result<(), String> {
    let put = |rel: &str, text: &str, mode: u32| -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let path = root.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    let host = &config.hostname;
    let short = host.split('.').next().unwrap_or(host);
    put("etc/hostname", &format!("{host}\n"), 0o644)?;
    put(
        "etc/hosts",
        &format!("127.0.0.1 localhost\n127.0.1.1 {host} {short}\n::1 localhost ip6-localhost ip6-loopback\n"),
        0o644,
    )?;
    if !config.ssh_authorized_keys.is_empty() {
        let keys: String = config.ssh_authorized_keys.iter().map(|k| format!("{}\n", k.trim())).collect();
        put("root/.ssh/authorized_keys", &keys, 0o600)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.join("root/.ssh"), std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("root/.ssh: {e}"))?;
    }
    Ok(())
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_hostname_and_keys_with_safe_modes() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let config =
            FirstBoot { hostname: "node1.rack7".into(), ssh_authorized_keys: vec!["ssh-ed25519 AAAA op@desk".into()] };
        write_into(root.path(), &config).unwrap();
        assert_eq!(std::fs::read_to_string(root.path().join("etc/hostname")).unwrap(), "node1.rack7\n");
        assert!(std::fs::read_to_string(root.path().join("etc/hosts"))
            .unwrap()
            .contains("127.0.1.1 node1.rack7 node1"));
        let keys = root.path().join("root/.ssh/authorized_keys");
        assert_eq!(std::fs::read_to_string(&keys).unwrap(), "ssh-ed25519 AAAA op@desk\n");
        assert_eq!(std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(root.path().join("root/.ssh")).unwrap().permissions().mode() & 0o777, 0o700);
    }
}
