//! Which kind of network-boot client a DHCP request comes from: the
//! DHCP side of [`crate::boot`], which decides what each kind is handed.

use crate::boot::{ClientKind, Firmware};
use crate::dhcp::packet::code;
use crate::dhcp::Request;

impl Request {
    /// What kind of network-boot client sent this request, from its
    /// architecture (93), user class (77), iPXE features (175) and vendor
    /// class (60).
    pub fn client_kind(&self) -> ClientKind {
        let arch = self.option(code::CLIENT_ARCH).map(|v| u16::from_be_bytes([v[0], v[1]]));
        let firmware = match arch {
            None | Some(0) => Firmware::Bios,
            Some(7 | 9 | 16) => Firmware::UefiX64,
            Some(11 | 19) => Firmware::Arm64,
            Some(other) => Firmware::Other(other),
        };
        // iPXE sends option 77 as the raw bytes "iPXE", not RFC 3004 framing.
        let ipxe = self.option(code::USER_CLASS).is_some_and(|v| v.ends_with(b"iPXE"))
            || self.option(code::IPXE_FEATURES).is_some();
        let class = self.option(code::VENDOR_CLASS).unwrap_or_default();
        let pxe = class.starts_with(b"PXEClient");
        let http = class.starts_with(b"HTTPClient");
        ClientKind { firmware, pxe, ipxe, http }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use inventory::MacAddr;

    use crate::boot::{boot_file, BootConfig};
    use crate::dhcp::packet::tests::ipxe_discover;
    use crate::dhcp::Request;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 1]);

    fn cfg() -> BootConfig {
        BootConfig {
            tftp_server: Ipv4Addr::new(10, 77, 0, 1),
            http_base: "http://10.77.0.1:8081".into(),
            bios_file: "undionly.kpxe".into(),
            uefi_file: "snponly.efi".into(),
            uefi_signed: false,
            arm64_file: String::new(),
        }
    }

    /// A DISCOVER with the given options after 53.
    fn discover(options: &[u8]) -> Request {
        let mut b = ipxe_discover(MAC);
        b.truncate(240);
        b.extend_from_slice(&[53, 1, 1]);
        b.extend_from_slice(options);
        b.push(255);
        Request::parse(&b).unwrap()
    }

    fn check(options: &[u8], expected: Option<&str>) {
        let req = discover(options);
        assert_eq!(boot_file(&req.client_kind(), &MAC, &cfg()).as_deref(), expected, "options {options:?}");
    }

    const PXE_BIOS: &[u8] = b"\x3c\x20PXEClient:Arch:00000:UNDI:002001\x5d\x02\x00\x00";
    const PXE_UEFI: &[u8] = b"\x3c\x20PXEClient:Arch:00007:UNDI:003016\x5d\x02\x00\x07";

    #[test]
    fn boot_file_by_client() {
        // BIOS PXE ROM (not iPXE): undionly.kpxe over TFTP.
        check(PXE_BIOS, Some("undionly.kpxe"));
        // OVMF's own PXE: snponly.efi.
        check(PXE_UEFI, Some("snponly.efi"));
        // BIOS iPXE (77 = raw "iPXE"): the script, never a binary again.
        check(&[PXE_BIOS, b"\x4d\x04iPXE"].concat(), Some("http://10.77.0.1:8081/boot/52-54-00-ab-cd-01.ipxe"));
        // UEFI iPXE identified only by its feature option 175.
        check(&[PXE_UEFI, b"\xaf\x03\x13\x01\x01"].concat(), Some("http://10.77.0.1:8081/boot/52-54-00-ab-cd-01.ipxe"));
        // A plain DHCP client (udhcpc in an OS): no boot file.
        check(b"", None);
        // arm64 UEFI (11) with no arm64 binary configured: nothing.
        check(b"\x3c\x09PXEClient\x5d\x02\x00\x0b", None);
        // UEFI HTTP Boot (vendor class HTTPClient, arch 16): a URL.
        check(
            b"\x3c\x21HTTPClient:Arch:00016:UNDI:003001\x5d\x02\x00\x10",
            Some("http://10.77.0.1:8081/boot/ipxe/snponly.efi"),
        );
        // An architecture nobody supports (RISC-V 64 = 27).
        check(b"\x3c\x09PXEClient\x5d\x02\x00\x1b", None);
    }

    #[test]
    fn arm64_gets_its_configured_binary() {
        let mut c = cfg();
        c.arm64_file = "arm64/snponly.efi".into();
        let req = discover(b"\x3c\x09PXEClient\x5d\x02\x00\x0b");
        assert_eq!(boot_file(&req.client_kind(), &MAC, &c).as_deref(), Some("arm64/snponly.efi"));
    }
}
