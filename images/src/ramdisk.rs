//! Builds the discovery ramdisk from Debian packages.
//!
//! Inputs: the `linux-image-*` package that `linux-image-amd64` depends on,
//! `busybox-static`, the `slipway-agent` binary with the shared libraries it
//! links, the list of kernel modules and our `/init`. Their digest names the
//! cache directory, so a changed input means a new build and an unchanged
//! one costs a hash. Debian's kernel ships drivers as modules without a
//! `modules.dep`, so we resolve dependencies from each module's `depends=`
//! string and load them in order from `/init`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tracing::info;

use crate::cpio::{Entry, Writer};

/// Bump when the layout of the ramdisk changes in a way the inputs miss.
const BUILDER_VERSION: &str = "1";

/// Drivers the discovery ramdisk loads: virtio for the lab, common Intel
/// NICs and storage controllers for real racks, ext4 for first-boot
/// configuration. Dependencies are added.
const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_scsi",
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "nvme",
    "ahci",
    "sd_mod",
    // Writing first-boot configuration into a deployed ext4 root.
    "ext4",
    "crc32c_generic",
    // UEFI variables: Secure Boot state, and the deployed OS's boot entry
    // (the loader it names is read off the image's FAT EFI System Partition).
    "efivarfs",
    "vfat",
    // FAT's default code page and I/O charset in Debian's kernel.
    "nls_cp437",
    "nls_ascii",
];

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp /run
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "slipway: discovery ramdisk, kernel $(uname -r)"
for m in $(cat /lib/slipway-modules/order); do
  insmod /lib/slipway-modules/$m.ko 2>/dev/null
done
[ -d /sys/firmware/efi/efivars ] && mount -t efivarfs efivarfs /sys/firmware/efi/efivars
ip link set lo up
# Shell stays PID 1 (reaps children); the agent is restarted if it exits.
while true; do
  /usr/bin/slipway-agent
  echo "slipway: agent exited with $?, restarting in 5 s"
  sleep 5
done
"#;

const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done ;;
esac
exit 0
"#;

#[derive(Debug, Error)]
pub enum RamdiskError {
    #[error("running {command}: {detail}")]
    Command { command: String, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Missing(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RamdiskError + '_ {
    move |source| RamdiskError::Io { path: path.to_path_buf(), source }
}

#[derive(Debug, Clone)]
pub struct RamdiskInputs {
    pub agent_binary: PathBuf,
    /// Debs and built ramdisks live here, e.g. `/var/cache/slipway`.
    pub cache_dir: PathBuf,
}

/// A built ramdisk: `dir` holds `vmlinuz`, `initrd.img` and `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ramdisk {
    pub dir: PathBuf,
    pub key: String,
    pub kernel_package: String,
    pub kernel_release: String,
    pub kernel_bytes: u64,
    pub initrd_bytes: u64,
    pub modules: Vec<String>,
}

/// Returns the cached ramdisk for these inputs, building it if needed.
pub fn ensure_ramdisk(inputs: &RamdiskInputs) -> Result<Ramdisk, RamdiskError> {
    let debs = inputs.cache_dir.join("debs");
    fs::create_dir_all(&debs).map_err(io_err(&debs))?;
    let kernel_deb = fetch_deb(&debs, &kernel_package_name()?)?;
    let busybox_deb = fetch_deb(&debs, "busybox-static")?;
    let agent = fs::read(&inputs.agent_binary).map_err(io_err(&inputs.agent_binary))?;
    let libs = shared_libraries(&inputs.agent_binary)?;

    let lib_contents = libs.iter().map(|lib| fs::read(lib).map_err(io_err(lib))).collect::<Result<Vec<_>, _>>()?;
    let deb_names =
        [&kernel_deb, &busybox_deb].map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned());
    let key = cache_key(&deb_names, &agent, &lib_contents);
    let dir = inputs.cache_dir.join(format!("ramdisk-{key}"));
    if let Ok(text) = fs::read_to_string(dir.join("manifest.json")) {
        if let Ok(ramdisk) = serde_json::from_str::<Ramdisk>(&text) {
            info!(key, dir = %dir.display(), "discovery ramdisk is cached");
            return Ok(ramdisk);
        }
    }
    info!(key, "building the discovery ramdisk");
    let work = inputs.cache_dir.join(format!("build-{key}-{}", std::process::id()));
    let result = build(&work, &dir, &key, &kernel_deb, &busybox_deb, &agent, &libs);
    let _ = fs::remove_dir_all(&work);
    result
}

/// Digest of every input of a build: our recipe, the package files (their
/// names carry their versions), the agent and the libraries it links.
fn cache_key(deb_names: &[String], agent: &[u8], libs: &[Vec<u8>]) -> String {
    let mut h = Sha256::new();
    for part in [BUILDER_VERSION, INIT, UDHCPC_SCRIPT, &MODULES.join(",")] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for name in deb_names {
        h.update(name.as_bytes());
        h.update([0]);
    }
    h.update(agent);
    for lib in libs {
        h.update(lib);
    }
    hex::encode(&h.finalize()[..8])
}

fn build(
    work: &Path,
    dir: &Path,
    key: &str,
    kernel_deb: &Path,
    busybox_deb: &Path,
    agent: &[u8],
    libs: &[PathBuf],
) -> Result<Ramdisk, RamdiskError> {
    fs::create_dir_all(work).map_err(io_err(work))?;
    let kernel_tree = work.join("kernel");
    let busybox_tree = work.join("busybox");
    run(Command::new("dpkg-deb").arg("-x").arg(kernel_deb).arg(&kernel_tree))?;
    run(Command::new("dpkg-deb").arg("-x").arg(busybox_deb).arg(&busybox_tree))?;

    let modules_root = kernel_tree.join("lib/modules");
    let release = single_entry(&modules_root)?;
    let module_files = index_modules(&modules_root.join(&release))?;
    let order = resolve_modules(&module_files, MODULES)?;

    let staged = work.join("out");
    fs::create_dir_all(&staged).map_err(io_err(&staged))?;
    let initrd_path = staged.join("initrd.img");
    let mut zstd = Command::new("zstd")
        .args(["-q", "-12", "-T0", "-o"])
        .arg(&initrd_path)
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| RamdiskError::Command { command: "zstd".into(), detail: e.to_string() })?;
    {
        let stdin = zstd.stdin.take().ok_or_else(|| RamdiskError::Missing("zstd stdin".into()))?;
        let mut w = Writer::new(std::io::BufWriter::new(stdin));
        let mut add = |path: &str, entry: Entry<'_>| w.add(path, entry).map_err(io_err(Path::new(path)));
        for d in [
            "bin",
            "sbin",
            "etc",
            "lib",
            "lib/slipway-modules",
            "lib64",
            "usr",
            "usr/bin",
            "usr/share",
            "usr/share/udhcpc",
            "proc",
            "sys",
            "dev",
            "tmp",
            "run",
        ] {
            add(d, Entry::Dir)?;
        }
        let busybox = fs::read(busybox_tree.join("bin/busybox")).map_err(io_err(&busybox_tree))?;
        add("bin/busybox", Entry::File { data: &busybox, executable: true })?;
        add("bin/sh", Entry::Symlink { target: "busybox" })?;
        add("init", Entry::File { data: INIT.as_bytes(), executable: true })?;
        add("usr/share/udhcpc/default.script", Entry::File { data: UDHCPC_SCRIPT.as_bytes(), executable: true })?;
        add("usr/bin/slipway-agent", Entry::File { data: agent, executable: true })?;
        let mut lib_dirs = std::collections::BTreeSet::new();
        for lib in libs {
            let rel = lib.strip_prefix("/").unwrap_or(lib).to_string_lossy().into_owned();
            if let Some(parent) = Path::new(&rel).parent() {
                let mut acc = PathBuf::new();
                for c in parent.components() {
                    acc.push(c);
                    let d = acc.to_string_lossy().into_owned();
                    if !["lib", "lib64", "usr"].contains(&d.as_str()) && lib_dirs.insert(d.clone()) {
                        add(&d, Entry::Dir)?;
                    }
                }
            }
            let data = fs::read(lib).map_err(io_err(lib))?;
            add(&rel, Entry::File { data: &data, executable: true })?;
        }
        for name in &order {
            let path = &module_files[name];
            let data = fs::read(path).map_err(io_err(path))?;
            add(&format!("lib/slipway-modules/{name}.ko"), Entry::File { data: &data, executable: false })?;
        }
        let order_text = order.join("\n") + "\n";
        add("lib/slipway-modules/order", Entry::File { data: order_text.as_bytes(), executable: false })?;
        w.finish().and_then(|mut out| out.flush()).map_err(io_err(&initrd_path))?;
    }
    let status = zstd.wait().map_err(io_err(&initrd_path))?;
    if !status.success() {
        return Err(RamdiskError::Command { command: "zstd".into(), detail: status.to_string() });
    }
    let vmlinuz = kernel_tree.join(format!("boot/vmlinuz-{release}"));
    fs::copy(&vmlinuz, staged.join("vmlinuz")).map_err(io_err(&vmlinuz))?;

    let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let ramdisk = Ramdisk {
        dir: dir.to_path_buf(),
        key: key.to_string(),
        kernel_package: kernel_deb.file_name().unwrap_or_default().to_string_lossy().into_owned(),
        kernel_release: release,
        kernel_bytes: size(&staged.join("vmlinuz")),
        initrd_bytes: size(&initrd_path),
        modules: order,
    };
    let manifest = serde_json::to_string_pretty(&ramdisk).unwrap_or_default();
    fs::write(staged.join("manifest.json"), manifest).map_err(io_err(&staged))?;
    // Publish atomically: a crash mid-build never leaves a half ramdisk
    // that looks cached.
    let _ = fs::remove_dir_all(dir);
    fs::rename(&staged, dir).map_err(io_err(dir))?;
    info!(key, kernel_bytes = ramdisk.kernel_bytes, initrd_bytes = ramdisk.initrd_bytes, "discovery ramdisk built");
    Ok(ramdisk)
}

fn run(cmd: &mut Command) -> Result<String, RamdiskError> {
    let out = cmd.output().map_err(|e| RamdiskError::Command { command: format!("{cmd:?}"), detail: e.to_string() })?;
    if !out.status.success() {
        return Err(RamdiskError::Command {
            command: format!("{cmd:?}"),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The versioned kernel package behind the `linux-image-amd64` metapackage.
fn kernel_package_name() -> Result<String, RamdiskError> {
    let out = run(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_string)
        .ok_or_else(|| RamdiskError::Missing("apt-cache knows no linux-image-amd64 (run apt-get update)".into()))
}

/// Downloads the candidate version of `package` into `debs` unless present.
pub fn fetch_deb(debs: &Path, package: &str) -> Result<PathBuf, RamdiskError> {
    let policy = run(Command::new("apt-cache").args(["policy", package]))?;
    let version = policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate: "))
        .filter(|v| *v != "(none)")
        .ok_or_else(|| RamdiskError::Missing(format!("no candidate version of {package}")))?;
    // apt names files NAME_VERSION_ARCH.deb with ':' in the epoch escaped.
    let prefix = format!("{package}_{}_", version.replace(':', "%3a"));
    let find = || -> Option<PathBuf> {
        fs::read_dir(debs)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix)))
    };
    if let Some(path) = find() {
        return Ok(path);
    }
    info!(package, version, "downloading");
    run(Command::new("apt-get").args(["download", "-q", &format!("{package}={version}")]).current_dir(debs))?;
    find().ok_or_else(|| RamdiskError::Missing(format!("apt-get download left no {prefix}*.deb")))
}

/// Shared libraries (and the loader) the dynamically linked agent needs.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, RamdiskError> {
    let out = run(Command::new("ldd").arg(binary));
    let Ok(out) = out else { return Ok(vec![]) }; // "not a dynamic executable"
    let mut libs: Vec<PathBuf> = out
        .lines()
        .filter_map(|l| {
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect();
    libs.sort();
    libs.dedup();
    Ok(libs)
}

fn single_entry(dir: &Path) -> Result<String, RamdiskError> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.pop().ok_or_else(|| RamdiskError::Missing(format!("nothing in {}", dir.display())))
}

/// Module name (`virtio_net`, `nvme-core`) -> its `.ko` file.
fn index_modules(dir: &Path) -> Result<BTreeMap<String, PathBuf>, RamdiskError> {
    let mut index = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(io_err(&d))?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(name) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".ko")) {
                index.insert(name.to_string(), path);
            }
        }
    }
    Ok(index)
}

/// The `depends=` entry of a module's `.modinfo` strings.
fn module_depends(ko: &[u8]) -> Vec<String> {
    let key = b"depends=";
    ko.windows(key.len())
        .position(|w| w == key)
        .map(|at| {
            let rest = &ko[at + key.len()..];
            let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end]).split(',').filter(|s| !s.is_empty()).map(str::to_string).collect()
        })
        .unwrap_or_default()
}

/// Wanted modules plus their dependencies, dependencies first. Modules the
/// kernel builds in (absent as files) are skipped.
fn resolve_modules(index: &BTreeMap<String, PathBuf>, wanted: &[&str]) -> Result<Vec<String>, RamdiskError> {
    fn visit(
        name: &str,
        index: &BTreeMap<String, PathBuf>,
        order: &mut Vec<String>,
        seen: &mut std::collections::BTreeSet<String>,
    ) -> Result<(), RamdiskError> {
        // depends= uses '_' or '-' as the file does; try both spellings.
        let key = [name.to_string(), name.replace('_', "-"), name.replace('-', "_")]
            .into_iter()
            .find(|k| index.contains_key(k));
        let Some(key) = key else { return Ok(()) };
        if !seen.insert(key.clone()) {
            return Ok(());
        }
        let data = fs::read(&index[&key]).map_err(io_err(&index[&key]))?;
        for dep in module_depends(&data) {
            visit(&dep, index, order, seen)?;
        }
        order.push(key);
        Ok(())
    }
    let mut order = Vec::new();
    let mut seen = Default::default();
    for name in wanted {
        visit(name, index, &mut order, &mut seen)?;
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_changes_with_every_input() {
        let debs =
            ["linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb".to_string(), "busybox-static_1.35_amd64.deb".to_string()];
        let base = cache_key(&debs, b"agent-v1", &[b"libc".to_vec()]);
        assert_eq!(base, cache_key(&debs, b"agent-v1", &[b"libc".to_vec()]), "stable for the same inputs");
        assert_ne!(base, cache_key(&debs, b"agent-v2", &[b"libc".to_vec()]), "a new agent");
        assert_ne!(base, cache_key(&debs, b"agent-v1", &[b"libc2".to_vec()]), "a new libc");
        let newer = ["linux-image-6.1.0-57-amd64_6.1.193-1_amd64.deb".to_string(), debs[1].clone()];
        assert_ne!(base, cache_key(&newer, b"agent-v1", &[b"libc".to_vec()]), "a new kernel");
    }

    #[test]
    fn dependencies_load_first() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, deps: &str| {
            let path = dir.path().join(format!("{name}.ko"));
            fs::write(&path, format!("\x7fELF junk\0license=GPL\0depends={deps}\0vermagic=6.1\0")).unwrap();
            (name.to_string(), path)
        };
        let index: BTreeMap<_, _> = [
            write("virtio_net", "virtio_ring,virtio,net_failover"),
            write("net_failover", "failover"),
            write("failover", ""),
            write("virtio", ""),
            write("virtio_ring", ""),
            write("nvme-core", ""),
            write("nvme", "nvme-core"),
        ]
        .into();
        let order = resolve_modules(&index, &["virtio_net", "nvme", "not_a_module"]).unwrap();
        assert_eq!(order, ["virtio_ring", "virtio", "failover", "net_failover", "virtio_net", "nvme-core", "nvme"]);
    }
}
