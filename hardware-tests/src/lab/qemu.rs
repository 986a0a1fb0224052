//! QEMU command lines for lab nodes, and choosing an accelerator.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// Debian's Secure Boot build (needs SMM) and a variable store with
/// Microsoft's keys enrolled and Secure Boot on, as servers ship.
const OVMF_SECBOOT_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
const OVMF_MS_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS with QEMU's iPXE option ROM.
    Bios,
    /// OVMF with QEMU's iPXE UEFI driver.
    Uefi,
    /// OVMF's own PXE, no iPXE ROM: the path of real UEFI hardware, which
    /// fetches `snponly.efi` over TFTP first.
    PxeUefi,
    /// OVMF's UEFI HTTP Boot with PXE switched off: DHCP (vendor class
    /// `HTTPClient`) hands it a URL, and no TFTP is used at all.
    HttpUefi,
    /// OVMF with Secure Boot enforced and its own PXE (QEMU's iPXE ROM is
    /// unsigned): only the signed shim, GRUB and kernel chain boots.
    SecureBoot,
}

impl Firmware {
    pub fn name(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
            Firmware::PxeUefi => "pxe-uefi",
            Firmware::HttpUefi => "http-uefi",
            Firmware::SecureBoot => "secureboot",
        }
    }

    pub fn is_uefi(self) -> bool {
        matches!(self, Firmware::Uefi | Firmware::PxeUefi | Firmware::HttpUefi | Firmware::SecureBoot)
    }

    /// The firmware code and the variable store each VM gets a copy of.
    fn ovmf(self) -> (&'static str, &'static str) {
        if self == Firmware::SecureBoot {
            (OVMF_SECBOOT_CODE, OVMF_MS_VARS)
        } else {
            (OVMF_CODE, OVMF_VARS)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// KVM only when the CPU advertises hardware virtualization and /dev/kvm
/// opens. Some hosts expose a /dev/kvm that cannot boot Linux guests
/// (nested PVM, no vmx/svm flag); those get TCG.
pub fn detect_accel() -> Accel {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw_virt = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    let kvm_opens = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    if hw_virt && kvm_opens {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

pub fn check_prerequisites(_nodes: usize, uefi: bool) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the lab needs root (network namespaces, bridges, taps)");
    }
    for tool in ["qemu-system-x86_64", "qemu-img", "ip"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            bail!("{tool} is not installed (apt-get install qemu-system-x86 qemu-utils iproute2 ipxe-qemu)");
        }
    }
    if uefi && ![OVMF_CODE, OVMF_VARS, OVMF_SECBOOT_CODE, OVMF_MS_VARS].iter().all(|f| Path::new(f).exists()) {
        bail!("UEFI nodes need OVMF (apt-get install ovmf)");
    }
    Ok(())
}

/// One lab VM: everything its command line needs.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub mac: String,
    pub tap: String,
    pub firmware: Firmware,
    pub memory_mib: u32,
    pub cpus: u32,
    pub disk_gib: u32,
    pub uuid: String,
    pub serial: String,
    pub dir: PathBuf,
    /// Controlled by a simulated BMC (`slipway lab vbmc`): QEMU starts
    /// paused ("off", `-S`), stays up when the guest powers off
    /// (`-no-shutdown`), serves QMP on `qmp_socket()`, and names its NIC
    /// `nic0` and disk `disk0` (boot order: NIC, then disk) so the BMC can
    /// change their `bootindex`. Without it the VM starts running at once.
    pub bmc: bool,
}

/// SMBIOS type 1 strings of every lab node.
pub const SMBIOS_MANUFACTURER: &str = "Slipway Lab";
pub const SMBIOS_PRODUCT: &str = "QEMU Lab Node";

impl NodeSpec {
    /// Node `index` (0-based). Disk sizes differ per node so inventories
    /// can be told apart.
    pub fn lab_node(index: usize, firmware: Firmware, memory_mib: u32, dir: &Path) -> NodeSpec {
        let n = index + 1;
        NodeSpec {
            name: format!("node{n}"),
            mac: format!("52:54:00:5e:{:02x}:{:02x}", n / 256, n % 256),
            tap: format!("sltap{n}"),
            firmware,
            memory_mib,
            cpus: 1,
            disk_gib: 8 + index as u32,
            uuid: format!("5f1a0000-0000-4000-8000-{n:012}"),
            serial: format!("LAB-{n:04}"),
            dir: dir.to_path_buf(),
            bmc: false,
        }
    }

    fn disk(&self) -> PathBuf {
        self.dir.join(format!("{}.qcow2", self.name))
    }

    fn vars(&self) -> PathBuf {
        self.dir.join(format!("{}.vars.fd", self.name))
    }

    /// A blank sparse disk, and a private copy of the UEFI variable store.
    pub fn prepare_disks(&self) -> anyhow::Result<()> {
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(self.disk())
            .arg(format!("{}G", self.disk_gib))
            .output()
            .context("running qemu-img")?;
        if !out.status.success() {
            bail!("qemu-img create: {}", String::from_utf8_lossy(&out.stderr));
        }
        if self.firmware.is_uefi() {
            self.reset_vars()?;
        }
        Ok(())
    }

    /// Replaces the VM's variable store with the firmware's defaults, as
    /// shipped: no boot entries (the VM must be off).
    pub fn reset_vars(&self) -> anyhow::Result<()> {
        std::fs::copy(self.firmware.ovmf().1, self.vars()).context("resetting the OVMF variable store")?;
        Ok(())
    }

    /// An empty `romfile` removes QEMU's iPXE option ROM from the NIC.
    fn nic_rom(&self) -> &'static str {
        match self.firmware {
            Firmware::PxeUefi | Firmware::HttpUefi | Firmware::SecureBoot => ",romfile=",
            _ => "",
        }
    }

    /// The QMP socket a simulated BMC drives (with `bmc`).
    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.join(format!("{}.qmp", self.name))
    }

    pub fn disk_serial(&self) -> String {
        format!("DISK-{}", self.serial)
    }

    /// Everything the VM writes to its serial console.
    pub fn serial_log(&self) -> PathBuf {
        self.dir.join(format!("{}.serial.log", self.name))
    }

    /// `id=ID,` for a device the simulated BMC addresses.
    fn bmc_id(&self, id: &str) -> String {
        if self.bmc {
            format!("id={id},")
        } else {
            String::new()
        }
    }

    /// The disk boots second when a BMC may reorder (QEMU needs both
    /// devices to have an index to swap them).
    fn disk_boot(&self) -> &'static str {
        if self.bmc {
            ",bootindex=2"
        } else {
            ""
        }
    }

    pub fn args(&self, accel: Accel) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "-name".into(),
            self.name.clone(),
            "-machine".into(),
            // Secure Boot's variable store is only safe with SMM.
            if self.firmware == Firmware::SecureBoot { "q35,smm=on" } else { "q35" }.into(),
            "-accel".into(),
            accel.name().into(),
            "-m".into(),
            self.memory_mib.to_string(),
            "-smp".into(),
            self.cpus.to_string(),
            "-display".into(),
            "none".into(),
            "-monitor".into(),
            "none".into(),
            "-serial".into(),
            format!("file:{}", self.serial_log().display()),
            "-uuid".into(),
            self.uuid.clone(),
            "-smbios".into(),
            format!("type=1,manufacturer={SMBIOS_MANUFACTURER},product={SMBIOS_PRODUCT},serial={}", self.serial),
            "-netdev".into(),
            format!("tap,id=n0,ifname={},script=no,downscript=no", self.tap),
            "-device".into(),
            format!("virtio-net-pci,netdev=n0,{}mac={},bootindex=1{}", self.bmc_id("nic0"), self.mac, self.nic_rom()),
            "-drive".into(),
            format!("file={},if=none,id=d0,format=qcow2", self.disk().display()),
            "-device".into(),
            format!(
                "virtio-blk-pci,drive=d0,{}serial={}{}",
                self.bmc_id("disk0"),
                self.disk_serial(),
                self.disk_boot()
            ),
        ];
        if self.bmc {
            a.extend([
                "-S".into(),
                "-no-shutdown".into(),
                "-qmp".into(),
                format!("unix:{},server=on,wait=off", self.qmp_socket().display()),
            ]);
        }
        if self.firmware.is_uefi() {
            a.extend([
                "-drive".into(),
                format!("if=pflash,format=raw,unit=0,readonly=on,file={}", self.firmware.ovmf().0),
                "-drive".into(),
                format!("if=pflash,format=raw,unit=1,file={}", self.vars().display()),
                // Network boot over IPv4 only, as racks are usually set up:
                // with IPv6 on, a deployed node whose iPXE hands control back
                // waits out DHCPv6 for PXEv6 and HTTPv6 before its disk.
                "-fw_cfg".into(),
                "name=opt/org.tianocore/IPv6Support,string=no".into(),
            ]);
        }
        if self.firmware == Firmware::HttpUefi {
            a.extend(["-fw_cfg".into(), "name=opt/org.tianocore/IPv4PXESupport,string=no".into()]);
        }
        if self.firmware == Firmware::SecureBoot {
            a.extend(["-global".into(), "driver=cfi.pflash01,property=secure,value=on".into()]);
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uefi_nodes_get_their_own_variable_store() {
        let spec = NodeSpec::lab_node(1, Firmware::Uefi, 512, Path::new("/lab"));
        let args = spec.args(Accel::Tcg).join(" ");
        assert!(args.contains("mac=52:54:00:5e:00:02,bootindex=1"));
        assert!(args.contains("if=pflash,format=raw,unit=1,file=/lab/node2.vars.fd"));
        assert!(args.contains("-fw_cfg name=opt/org.tianocore/IPv6Support,string=no"), "{args}");
        assert!(args.contains("-accel tcg"));
        let bios = NodeSpec::lab_node(0, Firmware::Bios, 512, Path::new("/lab")).args(Accel::Kvm).join(" ");
        assert!(!bios.contains("pflash"));
        let native = NodeSpec::lab_node(2, Firmware::PxeUefi, 512, Path::new("/lab")).args(Accel::Tcg).join(" ");
        assert!(native.contains("bootindex=1,romfile= ") && native.contains("pflash"), "{native}");
        assert!(!native.contains("IPv4PXESupport"), "{native}");
        let secure = NodeSpec::lab_node(4, Firmware::SecureBoot, 512, Path::new("/lab")).args(Accel::Tcg).join(" ");
        assert!(secure.contains("q35,smm=on") && secure.contains("OVMF_CODE_4M.secboot.fd"), "{secure}");
        assert!(secure.contains("driver=cfi.pflash01,property=secure,value=on") && secure.contains("romfile= "));
        let http = NodeSpec::lab_node(3, Firmware::HttpUefi, 512, Path::new("/lab")).args(Accel::Tcg).join(" ");
        assert!(
            http.contains("romfile= ") && http.contains("name=opt/org.tianocore/IPv4PXESupport,string=no"),
            "{http}"
        );
        assert!(!args.contains(" -S ") && !args.contains("-qmp") && !args.contains("id=nic0"));
    }

    #[test]
    fn bmc_nodes_start_off_with_qmp_and_named_boot_devices() {
        let mut spec = NodeSpec::lab_node(0, Firmware::Bios, 512, Path::new("/lab"));
        spec.bmc = true;
        let args = spec.args(Accel::Tcg).join(" ");
        assert!(args.contains(" -S -no-shutdown -qmp unix:/lab/node1.qmp,server=on,wait=off"), "{args}");
        assert!(args.contains("virtio-net-pci,netdev=n0,id=nic0,mac=52:54:00:5e:00:01,bootindex=1"), "{args}");
        assert!(args.contains("virtio-blk-pci,drive=d0,id=disk0,serial=DISK-LAB-0001,bootindex=2"), "{args}");
    }
}
