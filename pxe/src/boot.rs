//! Who is booting, what to hand them, and the iPXE script for their state.
//!
//! The chain is: firmware PXE (no iPXE yet) gets an iPXE binary over TFTP;
//! iPXE gets the URL of this machine's script; the script depends on the
//! machine's lifecycle state. An iPXE client is never handed an iPXE binary,
//! which is what keeps the chain from looping.

use inventory::MacAddr;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    pub tftp_server: Ipv4Addr,
    /// Base URL of the boot HTTP server as clients reach it, no trailing `/`.
    pub http_base: String,
    /// TFTP path of the iPXE binary for BIOS PXE ROMs.
    pub bios_file: String,
    /// TFTP path of the iPXE binary for x86-64 UEFI PXE.
    pub uefi_file: String,
    /// TFTP path of the iPXE binary for arm64 UEFI; empty when there is
    /// none (Debian 12 ships no arm64 iPXE), and arm64 clients get no file.
    pub arm64_file: String,
}

/// URL path under the boot HTTP server where the iPXE binaries are served
/// to UEFI HTTP Boot clients.
pub const IPXE_HTTP_DIR: &str = "/boot/ipxe";

/// Client system architecture (RFC 4578 option 93, IANA registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    /// x86-64 UEFI (7, 9; 16 for HTTP Boot).
    UefiX64,
    /// arm64 UEFI (11; 19 for HTTP Boot).
    Arm64,
    Other(u16),
}

impl Firmware {
    pub fn label(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::UefiX64 => "uefi",
            Firmware::Arm64 => "arm64",
            Firmware::Other(_) => "other",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientKind {
    pub firmware: Firmware,
    /// Announced itself as a PXE client (vendor class `PXEClient...`).
    pub pxe: bool,
    /// Is already iPXE (user class `iPXE` or iPXE's feature option 175).
    pub ipxe: bool,
    /// UEFI HTTP Boot (vendor class `HTTPClient...`): wants a URL.
    pub http: bool,
}

impl ClientKind {
    /// A network-boot client of any kind (creates a machine record).
    pub fn is_pxe(&self) -> bool {
        self.pxe || self.ipxe || self.http
    }

    /// The vendor class our reply must carry: UEFI HTTP Boot and PXE
    /// clients ignore replies without theirs.
    pub fn reply_vendor_class(&self) -> Option<&'static [u8]> {
        if self.http && !self.ipxe {
            Some(b"HTTPClient")
        } else if self.is_pxe() {
            Some(b"PXEClient")
        } else {
            None
        }
    }

    /// Firmware PXE, not iPXE yet.
    pub fn is_pxe_rom(&self) -> bool {
        self.pxe && !self.ipxe && !self.http
    }

    pub fn label(&self) -> &'static str {
        match (self.ipxe, self.http, self.pxe) {
            (true, _, _) => "ipxe",
            (false, true, _) => "uefi_http",
            (false, false, true) => "pxe",
            (false, false, false) => "plain",
        }
    }
}

/// The DHCP boot file for this client, or `None` for non-PXE clients and
/// architectures we have no binary for.
pub fn boot_file(client: &ClientKind, mac: &MacAddr, cfg: &BootConfig) -> Option<String> {
    if client.ipxe {
        return Some(script_url(&cfg.http_base, mac));
    }
    if !client.pxe && !client.http {
        return None;
    }
    let file = match client.firmware {
        Firmware::Bios if !client.http => &cfg.bios_file,
        Firmware::UefiX64 => &cfg.uefi_file,
        Firmware::Arm64 if !cfg.arm64_file.is_empty() => &cfg.arm64_file,
        _ => return None,
    };
    // HTTP Boot fetches the same iPXE binary by URL instead of TFTP.
    Some(if client.http { format!("{}{IPXE_HTTP_DIR}/{file}", cfg.http_base) } else { file.clone() })
}

/// `http://host:port/boot/52-54-00-00-00-01.ipxe`
pub fn script_url(http_base: &str, mac: &MacAddr) -> String {
    format!("{http_base}/boot/{}.ipxe", mac.dashed())
}

/// What a machine's script should do, decided from its lifecycle state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptTarget {
    /// Boot the discovery ramdisk; `token` is the agent's credential for
    /// this boot only.
    Discovery { token: String },
    /// Deployed machines boot from their own disk, never reinstall.
    LocalDisk,
}

/// File names of the ramdisk under `{http_base}/boot/files/`.
pub const KERNEL_FILE: &str = "vmlinuz";
pub const INITRD_FILE: &str = "initrd.img";

pub fn render_script(target: &ScriptTarget, mac: &MacAddr, http_base: &str) -> String {
    let mut s = String::from("#!ipxe\n");
    let mac_text = mac.dashed();
    match target {
        ScriptTarget::Discovery { token } => {
            let files = format!("{http_base}/boot/files");
            // initrd=NAME is required by UEFI iPXE for the kernel to find its
            // initramfs; harmless under BIOS. On any failure, fetch a fresh
            // script (and token) rather than looping on a stale one.
            let _ = write!(
                s,
                "# Slipway discovery for {mac_text}\n\
                 kernel {files}/{KERNEL_FILE} initrd={INITRD_FILE} console=tty0 console=ttyS0,115200 \
                 quiet panic=30 slipway.api={http_base} slipway.token={token} slipway.mac={mac_text} \
                 || goto failed\n\
                 initrd --name {INITRD_FILE} {files}/{INITRD_FILE} || goto failed\n\
                 boot || goto failed\n\
                 :failed\n\
                 echo Slipway: discovery boot failed, retrying in 5 s\n\
                 sleep 5\n\
                 chain --replace --autofree {url}\n",
                url = script_url(http_base, mac),
            );
        }
        ScriptTarget::LocalDisk => {
            // BIOS: boot the first disk's MBR. UEFI has no such call: iPXE
            // hands control back to the firmware, which tries its next boot
            // entry (the disk). `exit 1`, not `exit`: firmware takes a
            // successful return as "stop here" and opens its boot menu.
            let _ = write!(
                s,
                "# Slipway: {mac_text} is deployed, booting from local disk\n\
                 iseq ${{platform}} efi && goto firmware ||\n\
                 sanboot --no-describe --drive 0x80 || goto firmware\n\
                 :firmware\n\
                 exit 1\n"
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 1]);

    #[test]
    fn discovery_script_snapshot() {
        let script = render_script(&ScriptTarget::Discovery { token: "tok123".into() }, &MAC, "http://10.77.0.1:8081");
        let expected = "#!ipxe
# Slipway discovery for 52-54-00-ab-cd-01
kernel http://10.77.0.1:8081/boot/files/vmlinuz initrd=initrd.img console=tty0 console=ttyS0,115200 quiet panic=30 slipway.api=http://10.77.0.1:8081 slipway.token=tok123 slipway.mac=52-54-00-ab-cd-01 || goto failed
initrd --name initrd.img http://10.77.0.1:8081/boot/files/initrd.img || goto failed
boot || goto failed
:failed
echo Slipway: discovery boot failed, retrying in 5 s
sleep 5
chain --replace --autofree http://10.77.0.1:8081/boot/52-54-00-ab-cd-01.ipxe
";
        assert_eq!(script, expected);
    }

    #[test]
    fn deployed_machines_boot_locally() {
        let script = render_script(&ScriptTarget::LocalDisk, &MAC, "http://x");
        let expected = "#!ipxe
# Slipway: 52-54-00-ab-cd-01 is deployed, booting from local disk
iseq ${platform} efi && goto firmware ||
sanboot --no-describe --drive 0x80 || goto firmware
:firmware
exit 1
";
        assert_eq!(script, expected, "UEFI returns to the firmware with a failure, so it boots the next entry");
        assert!(!script.contains("kernel"), "a deployed machine never gets a kernel");
    }
}
