//! A MAC address, one type from the DHCP parser to the database. Shown and
//! stored as lower-case colon-separated text (`52:54:00:ab:cd:01`); iPXE
//! script URLs and the kernel command line use the dashed form
//! (`52-54-00-ab-cd-01`), which has no character a URL path escapes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address (six hex pairs separated by ':' or '-', three quads by '.', or 12 hex digits)")]
pub struct NotAMac(pub String);

impl MacAddr {
    pub const fn octets(self) -> [u8; 6] {
        self.0
    }

    /// `00:00:00:00:00:00`, which BMCs and virtual devices report for "no
    /// address": never a machine's identity.
    pub fn is_zero(self) -> bool {
        self.0 == [0; 6]
    }

    /// `52-54-00-ab-cd-01`, as in iPXE script URLs and `slipway.mac=`.
    pub fn dashed(self) -> String {
        self.joined('-')
    }

    /// Parses only the dashed lower- or upper-case form: a script URL's
    /// file name, where nothing else may pass.
    pub fn parse_dashed(text: &str) -> Option<MacAddr> {
        (text.len() == 17 && text.as_bytes().iter().skip(2).step_by(3).all(|b| *b == b'-'))
            .then(|| text.parse().ok())
            .flatten()
    }

    fn joined(self, sep: char) -> String {
        let mut out = String::with_capacity(17);
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(sep);
            }
            out.push_str(&format!("{b:02x}"));
        }
        out
    }
}

impl FromStr for MacAddr {
    type Err = NotAMac;

    /// Accepts `aa:bb:cc:dd:ee:ff`, `AA-BB-CC-DD-EE-FF`, `aabb.ccdd.eeff`
    /// and `aabbccddeeff`, surrounding white space ignored; one separator
    /// throughout, in its places.
    fn from_str(text: &str) -> Result<MacAddr, NotAMac> {
        let t = text.trim();
        let hex: String = match t.len() {
            17 => {
                let sep = t.as_bytes()[2];
                let separated = matches!(sep, b':' | b'-')
                    && t.bytes().enumerate().all(|(i, b)| if i % 3 == 2 { b == sep } else { b.is_ascii_hexdigit() });
                if !separated {
                    return Err(NotAMac(text.into()));
                }
                t.chars().filter(|c| c.is_ascii_hexdigit()).collect()
            }
            14 if t.as_bytes()[4] == b'.' && t.as_bytes()[9] == b'.' => t.replace('.', ""),
            12 => t.into(),
            _ => return Err(NotAMac(text.into())),
        };
        if hex.len() != 12 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(NotAMac(text.into()));
        }
        let mut mac = [0u8; 6];
        for (i, byte) in mac.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).map_err(|_| NotAMac(text.into()))?;
        }
        Ok(MacAddr(mac))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.joined(':'))
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(bytes: [u8; 6]) -> MacAddr {
        MacAddr(bytes)
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MacAddr, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 1]);

    #[test]
    fn every_spelling_parses_to_one_mac_shown_one_way() {
        for text in ["52:54:00:ab:cd:01", "52-54-00-AB-CD-01", "5254.00ab.cd01", "525400abcd01", " 52:54:00:AB:CD:01\n"]
        {
            assert_eq!(text.parse::<MacAddr>(), Ok(MAC), "{text:?}");
        }
        assert_eq!(MAC.to_string(), "52:54:00:ab:cd:01");
        assert_eq!(MAC.dashed(), "52-54-00-ab-cd-01");
        assert_eq!(serde_json::to_value(MAC).unwrap(), "52:54:00:ab:cd:01");
        assert_eq!(serde_json::from_value::<MacAddr>("52-54-00-ab-cd-01".into()).unwrap(), MAC);
    }

    #[test]
    fn anything_else_is_refused() {
        for text in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:01:02",
            "52:54-00:ab:cd:01",
            "5:254:00:ab:cd:01",
            "zz:54:00:ab:cd:01",
            "52:54:00:ab:cd:0g",
            "+2:54:00:ab:cd:01",
            "../../etc/passwd",
        ] {
            assert!(text.parse::<MacAddr>().is_err(), "{text:?}");
        }
        assert!(serde_json::from_value::<MacAddr>("nope".into()).is_err());
    }

    #[test]
    fn script_names_take_the_dashed_form_only() {
        assert_eq!(MacAddr::parse_dashed(&MAC.dashed()), Some(MAC));
        assert_eq!(MacAddr::parse_dashed("52:54:00:ab:cd:01"), None);
        assert_eq!(MacAddr::parse_dashed("525400abcd01"), None);
        assert_eq!(MacAddr::parse_dashed("52-54-00-ab-cd"), None);
        assert_eq!(MacAddr::parse_dashed("../../etc/passwd"), None);
    }

    #[test]
    fn zero_is_no_address() {
        assert!(MacAddr::default().is_zero());
        assert!(!MAC.is_zero());
    }
}
