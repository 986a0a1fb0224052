//! Who is booting, what to hand them, and the script for their state.
//!
//! The chain is: firmware PXE (no iPXE yet) gets an iPXE binary over TFTP;
//! iPXE gets the URL of this machine's script; the script depends on the
//! machine's lifecycle state. An iPXE client is never handed an iPXE binary,
//! which is what keeps the chain from looping.
//!
//! x86-64 UEFI PXE firmware may instead be handed the signed chain, which
//! Secure Boot firmware accepts where it refuses iPXE: Debian's shim
//! (signed by Microsoft), which loads Debian's signed GRUB network image
//! from its own TFTP directory; GRUB reads [`GRUB_CFG`] from its prefix,
//! which sources this machine's GRUB script by MAC ([`grub_script_name`],
//! rendered by [`render_grub`] for the same targets as the iPXE script).

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
    /// TFTP path of the iPXE binary for x86-64 UEFI PXE (and, by HTTP,
    /// UEFI HTTP Boot).
    pub uefi_file: String,
    /// Hand x86-64 UEFI PXE firmware the signed shim ([`SHIM_FILE`])
    /// instead of `uefi_file`.
    pub uefi_signed: bool,
    /// TFTP path of the iPXE binary for arm64 UEFI; empty when there is
    /// none (Debian 12 ships no arm64 iPXE), and arm64 clients get no file.
    pub arm64_file: String,
}

/// URL path under the boot HTTP server where the iPXE binaries are served
/// to UEFI HTTP Boot clients.
pub const IPXE_HTTP_DIR: &str = "/boot/ipxe";

/// TFTP directory of the signed chain: shim looks for `grubx64.efi`
/// beside itself, and GRUB's kernel and initrd are read from here too.
pub const SIGNED_DIR: &str = "slipway";
pub const SHIM_FILE: &str = "slipway/shimx64.efi";
pub const GRUB_FILE: &str = "slipway/grubx64.efi";
/// Debian's GRUB network image has the prefix `/grub` on its boot server
/// and reads `grub.cfg` there.
pub const GRUB_CFG: &str = "grub/grub.cfg";

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
    let file: &str = match client.firmware {
        Firmware::Bios if !client.http => &cfg.bios_file,
        Firmware::UefiX64 if cfg.uefi_signed && !client.http => SHIM_FILE,
        Firmware::UefiX64 => &cfg.uefi_file,
        Firmware::Arm64 if !cfg.arm64_file.is_empty() => &cfg.arm64_file,
        _ => return None,
    };
    // HTTP Boot fetches the same iPXE binary by URL instead of TFTP.
    Some(if client.http { format!("{}{IPXE_HTTP_DIR}/{file}", cfg.http_base) } else { file.to_string() })
}

/// `http://host:port/boot/52-54-00-00-00-01.ipxe`
pub fn script_url(http_base: &str, mac: &MacAddr) -> String {
    format!("{http_base}/boot/{}.ipxe", mac.dashed())
}

/// What a machine's script should do, decided from its lifecycle state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptTarget {
    /// Boot the discovery ramdisk; `token` is the agent's credential for
    /// this boot only, `key` the appliance's public key (hex) the agent
    /// checks every instruction against.
    Discovery { token: String, key: String },
    /// Deployed machines boot from their own disk, never reinstall.
    LocalDisk,
}

/// File names of the ramdisk under `{http_base}/boot/files/`.
pub const KERNEL_FILE: &str = "vmlinuz";
pub const INITRD_FILE: &str = "initrd.img";

/// The discovery ramdisk's kernel command line, the same whichever loader
/// starts it.
fn discovery_args(token: &str, key: &str, mac: &MacAddr, http_base: &str) -> String {
    format!(
        "console=tty0 console=ttyS0,115200 quiet panic=30 slipway.api={http_base} slipway.token={token} slipway.key={key} slipway.mac={}",
        mac.dashed()
    )
}

pub fn render_script(target: &ScriptTarget, mac: &MacAddr, http_base: &str) -> String {
    let mut s = String::from("#!ipxe\n");
    let mac_text = mac.dashed();
    match target {
        ScriptTarget::Discovery { token, key } => {
            let files = format!("{http_base}/boot/files");
            // initrd=NAME is required by UEFI iPXE for the kernel to find its
            // initramfs; harmless under BIOS. On any failure, fetch a fresh
            // script (and token) rather than looping on a stale one.
            let _ = write!(
                s,
                "# Slipway discovery for {mac_text}\n\
                 kernel {files}/{KERNEL_FILE} initrd={INITRD_FILE} {args} || goto failed\n\
                 initrd --name {INITRD_FILE} {files}/{INITRD_FILE} || goto failed\n\
                 boot || goto failed\n\
                 :failed\n\
                 echo Slipway: discovery boot failed, retrying in 5 s\n\
                 sleep 5\n\
                 chain --replace --autofree {url}\n",
                url = script_url(http_base, mac),
                args = discovery_args(token, key, mac, http_base),
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

/// `grub/52:54:00:ab:cd:01.cfg`: GRUB names the boot NIC's MAC
/// `${net_default_mac}`, lower case with colons.
pub fn grub_script_name(mac: &MacAddr) -> String {
    format!("grub/{mac}.cfg")
}

/// The MAC of a [`grub_script_name`], or `None` for any other name.
pub fn grub_script_mac(name: &str) -> Option<MacAddr> {
    let mac = name.trim_start_matches('/').strip_prefix("grub/")?.strip_suffix(".cfg")?;
    // Only the canonical spelling: one file per machine, no aliases.
    mac.parse::<MacAddr>().ok().filter(|m| m.to_string() == mac)
}

/// GRUB's `grub.cfg`: the same for every machine, it sources the
/// machine's own script; if that fails (a lost datagram, the appliance
/// restarting) it tries again rather than drop to a GRUB prompt.
pub const GRUB_MENU: &str = "# Slipway: every machine's GRUB reads its own script, named by its MAC
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=0
source $prefix/${net_default_mac}.cfg
echo \"Slipway: no boot script for ${net_default_mac}, retrying in 5 s\"
sleep 5
configfile $prefix/grub.cfg
";

/// A machine's GRUB script: what [`render_script`] does, in GRUB.
///
/// Discovery loads the ramdisk over TFTP (Debian 12's GRUB speaks HTTP on
/// port 80 only). A deployed machine chains the disk's own loader at the
/// removable-media path: GRUB cannot return a failure to the firmware
/// (its `exit` reports success, which sends OVMF to its boot menu), so
/// it cannot simply hand over to the next boot entry as iPXE does. The
/// disk becomes GRUB's root first: `chainloader` gives the loader its
/// root device, not the file's, and shim finds its GRUB through it.
pub fn render_grub(target: &ScriptTarget, mac: &MacAddr, http_base: &str) -> String {
    let mac_text = mac.dashed();
    match target {
        ScriptTarget::Discovery { token, key } => format!(
            "# Slipway discovery for {mac_text}\n\
             echo \"Slipway: loading the discovery ramdisk\"\n\
             linux /{SIGNED_DIR}/{KERNEL_FILE} {args}\n\
             initrd /{SIGNED_DIR}/{INITRD_FILE}\n\
             boot\n\
             echo \"Slipway: discovery boot failed, retrying in 5 s\"\n\
             sleep 5\n\
             configfile $prefix/grub.cfg\n",
            args = discovery_args(token, key, mac, http_base),
        ),
        ScriptTarget::LocalDisk => format!(
            "# Slipway: {mac_text} is deployed, booting from local disk\n\
             if search --no-floppy --set=root --file /EFI/BOOT/BOOTX64.EFI; then\n\
             \x20 chainloader /EFI/BOOT/BOOTX64.EFI\n\
             \x20 boot\n\
             fi\n\
             echo \"Slipway: no disk with a UEFI boot loader; handing back to the firmware\"\n\
             sleep 5\n\
             exit\n"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 1]);

    #[test]
    fn discovery_script_snapshot() {
        let script = render_script(
            &ScriptTarget::Discovery { token: "tok123".into(), key: "k1".into() },
            &MAC,
            "http://10.77.0.1:8081",
        );
        let expected = "#!ipxe
# Slipway discovery for 52-54-00-ab-cd-01
kernel http://10.77.0.1:8081/boot/files/vmlinuz initrd=initrd.img console=tty0 console=ttyS0,115200 quiet panic=30 slipway.api=http://10.77.0.1:8081 slipway.token=tok123 slipway.key=k1 slipway.mac=52-54-00-ab-cd-01 || goto failed
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

    #[test]
    fn grub_scripts_do_what_the_ipxe_scripts_do() {
        let base = "http://10.77.0.1:8081";
        let discovery = render_grub(&ScriptTarget::Discovery { token: "tok123".into(), key: "k1".into() }, &MAC, base);
        let ipxe = render_script(&ScriptTarget::Discovery { token: "tok123".into(), key: "k1".into() }, &MAC, base);
        let args = "console=tty0 console=ttyS0,115200 quiet panic=30 slipway.api=http://10.77.0.1:8081 slipway.token=tok123 slipway.key=k1 slipway.mac=52-54-00-ab-cd-01";
        assert!(discovery.contains(&format!("linux /slipway/vmlinuz {args}\n")), "{discovery}");
        assert!(ipxe.contains(&format!("initrd=initrd.img {args} ||")), "one command line for both loaders: {ipxe}");
        assert!(discovery.contains("initrd /slipway/initrd.img\nboot\n"));
        assert!(discovery.ends_with("configfile $prefix/grub.cfg\n"), "a failed boot fetches a fresh script");

        let local = render_grub(&ScriptTarget::LocalDisk, &MAC, base);
        assert!(!local.contains("linux"), "a deployed machine never gets a kernel");
        assert!(
            local.contains(
                "--set=root --file /EFI/BOOT/BOOTX64.EFI; then\n  chainloader /EFI/BOOT/BOOTX64.EFI\n  boot\n"
            ),
            "{local}"
        );
    }

    #[test]
    fn grub_script_names_round_trip_in_one_spelling_only() {
        assert_eq!(grub_script_name(&MAC), "grub/52:54:00:ab:cd:01.cfg");
        assert_eq!(grub_script_mac("grub/52:54:00:ab:cd:01.cfg"), Some(MAC));
        assert_eq!(grub_script_mac("/grub/52:54:00:ab:cd:01.cfg"), Some(MAC), "PXE clients may add a slash");
        for other in [
            "grub/52-54-00-ab-cd-01.cfg",
            "grub/52:54:00:AB:CD:01.cfg",
            "grub/grub.cfg",
            "grub/x.cfg",
            "52:54:00:ab:cd:01.cfg",
        ] {
            assert_eq!(grub_script_mac(other), None, "{other}");
        }
        assert!(GRUB_MENU.contains("source $prefix/${net_default_mac}.cfg"));
    }

    #[test]
    fn uefi_pxe_firmware_gets_the_signed_shim_when_configured() {
        let mut cfg = BootConfig {
            tftp_server: Ipv4Addr::new(10, 77, 0, 1),
            http_base: "http://10.77.0.1:8081".into(),
            bios_file: "undionly.kpxe".into(),
            uefi_file: "snponly.efi".into(),
            uefi_signed: true,
            arm64_file: String::new(),
        };
        let kind = |firmware, http: bool| ClientKind { firmware, pxe: !http, ipxe: false, http };
        assert_eq!(boot_file(&kind(Firmware::UefiX64, false), &MAC, &cfg).as_deref(), Some(SHIM_FILE));
        assert_eq!(boot_file(&kind(Firmware::Bios, false), &MAC, &cfg).as_deref(), Some("undionly.kpxe"));
        assert_eq!(
            boot_file(&kind(Firmware::UefiX64, true), &MAC, &cfg).as_deref(),
            Some("http://10.77.0.1:8081/boot/ipxe/snponly.efi"),
            "HTTP Boot keeps iPXE"
        );
        cfg.uefi_signed = false;
        assert_eq!(boot_file(&kind(Firmware::UefiX64, false), &MAC, &cfg).as_deref(), Some("snponly.efi"));
    }
}
