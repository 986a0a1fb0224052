//! The normalized hardware model of a machine and the pure parsers that build
//! it from in-band facts (the text of `/proc` and `/sys` files read by the
//! agent in the discovery ramdisk).
//!
//! The in-band part does no I/O: the agent reads files and hands their
//! contents here, so every parser is testable with fixture text. The
//! out-of-band model (`oob`) is plain data too. The clients that talk to
//! BMCs and UPSes (`redfish`, `ipmi`, `ups`) are behind the `oob` feature,
//! so the ramdisk agent, which needs only the parsers, does not build an
//! HTTP client stack. The simulated BMC and UPS are not here: they live in
//! the `simulators` crate, which the appliance does not link.

/// Declares a closed set of names as an enum whose serde form, `as_str`,
/// `Display` and `FromStr` all spell them the same (snake_case, as given).
/// Attributes (docs, extra derives such as `utoipa::ToSchema`) pass through.
#[macro_export]
macro_rules! closed_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant),* }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $name::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| {
                    let all: Vec<&str> = $name::ALL.iter().map(|v| v.as_str()).collect();
                    format!("{s:?} is not {}", all.join(", "))
                })
            }
        }
    };
}

pub mod identity;
pub mod inband;
mod mac;
mod model;
pub mod oob;

pub use mac::{MacAddr, NotAMac};
pub use model::{Cpu, Disk, Firmware, FirmwareMode, Inventory, Memory, Nic, Source, SystemInfo};

/// What changed between two inventories (an event the store raises).
#[cfg(feature = "oob")]
pub mod diff;
#[cfg(feature = "oob")]
pub mod ipmi;
#[cfg(feature = "oob")]
pub mod redfish;
#[cfg(feature = "oob")]
pub mod ups;
