//! The appliance configuration: embedded defaults, then a TOML file, then
//! `SLIPWAY_*` environment variables (one per key: `api.listen` is
//! `SLIPWAY_API_LISTEN`). `slipway.example.toml` documents every key with
//! its default; a test keeps the two equal.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use inventory::oob::UpsProtocol;
use inventory::MacAddr;
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Database, generated secrets and state.
    pub data_dir: PathBuf,
    /// Built artifacts (the discovery ramdisk), shared between runs.
    pub cache_dir: PathBuf,
    /// `POST /api/v1/images` imports `source_path` from here only (a path
    /// relative to it, or an absolute one that resolves inside it). Empty:
    /// `data_dir/import`.
    pub import_dir: PathBuf,
    pub log_format: LogFormat,
    pub api: ApiConfig,
    pub http: HttpConfig,
    pub retention: RetentionConfig,
    pub database: DatabaseConfig,
    pub provisioning: ProvisioningConfig,
    pub boot: BootFilesConfig,
    pub oob: OobConfig,
}

/// Out-of-band management: BMCs and UPSes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OobConfig {
    /// 64 hex digits: the key that encrypts BMC and UPS passwords at rest.
    /// Empty: generated at first start into `data_dir/secret-key` (0600).
    /// Appliances sharing one database must share this key.
    pub secret_key: String,
    /// A file holding that key (64 hex digits), kept outside `data_dir`
    /// (`/etc/slipway/secret-key`, a systemd credential). Used when
    /// `secret_key` is empty; it must exist.
    pub secret_key_file: PathBuf,
    /// Every BMC request gives up after this long.
    pub request_timeout_secs: u64,
    /// Requests in flight to one BMC at once; more wait their turn, so a
    /// burst never locks a BMC out.
    pub max_requests_per_bmc: u32,
    /// How often each BMC's power state is read.
    pub power_poll_secs: u64,
    /// How often each UPS is read.
    pub ups_poll_secs: u64,
    /// After a failure a BMC or UPS is retried after this long, doubling
    /// up to `max_backoff_secs`.
    pub min_backoff_secs: u64,
    pub max_backoff_secs: u64,
    /// UPSes enrolled at start when not enrolled yet; the same fields as
    /// `POST /api/v1/ups`.
    pub ups: Vec<UpsEntry>,
}

inventory::closed_enum!(
    /// How `slipway serve` writes its logs: for people or for a collector.
    LogFormat { Text => "text", Json => "json" }
);

inventory::closed_enum!(
    /// What x86-64 UEFI PXE firmware is handed: Debian's signed shim and
    /// GRUB (boots with Secure Boot on or off), or iPXE (`uefi_file`,
    /// refused by Secure Boot firmware).
    UefiPxe { Signed => "signed", Ipxe => "ipxe" }
);

/// One UPS to enrol: the body of `POST /api/v1/ups`, or an `[[oob.ups]]`
/// table in the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewUps, example = json!({
    "name": "r7-ups", "protocol": "nut", "address": "10.0.1.5:3493", "ups": "eaton1", "feeds": {"racks": ["r7"]}
}))]
pub struct UpsEntry {
    /// 1-63 letters, digits, `-`, `_` or `.`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,63}$")]
    pub name: String,
    pub protocol: UpsProtocol,
    /// `host:port` (NUT 3493, SNMP 161) or a Redfish URL.
    pub address: String,
    /// NUT: the UPS's name on that upsd.
    pub ups: Option<String>,
    /// SNMP v2c community.
    pub community: Option<String>,
    /// Redfish: the battery or power equipment's name (empty: the first).
    pub resource: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    #[serde(default = "yes")]
    pub tls_verify: bool,
    pub ca_pem: Option<String>,
    #[serde(default)]
    pub feeds: store::UpsFeeds,
}

fn yes() -> bool {
    true
}

/// Limits on both HTTP faces (operator API and boot), against clients that
/// open connections and send nothing, or a byte at a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// A request's headers must arrive within this; a kept-alive
    /// connection idle this long is closed.
    pub header_timeout_secs: u64,
    /// Open connections per face, and per client address on each. A
    /// machine in discovery holds one (its long poll), so the boot face's
    /// cap is a fleet's size: `slipway lab fleet` refused half of 1,000
    /// machines at 1,024.
    pub max_connections: usize,
    pub max_connections_per_client: usize,
}

impl HttpConfig {
    pub fn limits(&self) -> crate::http_serve::HttpLimits {
        crate::http_serve::HttpLimits {
            header_timeout: std::time::Duration::from_secs(self.header_timeout_secs.max(1)),
            max_connections: self.max_connections.max(1),
            max_connections_per_client: self.max_connections_per_client.max(1),
        }
    }
}

/// How long events and audit entries are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    pub events_days: u32,
    pub audit_days: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// Admin bearer token. Empty: one is generated at first start, stored
    /// in `data_dir/admin-token` and printed once.
    pub token: String,
    /// `off` (plain HTTP: for loopback only), `self-signed` (a certificate
    /// generated at first start and reused) or `files` (`tls_cert` and
    /// `tls_key`, e.g. from an internal CA).
    pub tls: String,
    /// PEM certificate chain. With `self-signed`, where the generated one
    /// is kept (empty: `data_dir/api-tls-cert.pem`).
    pub tls_cert: String,
    /// PEM private key (empty with `self-signed`: `data_dir/api-tls-key.pem`,
    /// mode 0600).
    pub tls_key: String,
    /// Host names and IP addresses the self-signed certificate is valid
    /// for, besides `localhost`, the loopback addresses, the listen address
    /// and this host's name.
    pub tls_names: Vec<String>,
}

/// `api.tls`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiTls {
    Off,
    SelfSigned { cert: PathBuf, key: PathBuf, names: Vec<String> },
    Files { cert: PathBuf, key: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Empty: SQLite at `data_dir/slipway.db`.
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningConfig {
    /// Interface the boot services listen on. Empty: DHCP, TFTP and boot
    /// HTTP are off.
    pub interface: String,
    /// `authoritative` (we hand out addresses) or `proxy` (another DHCP
    /// server does; we answer network-boot clients with boot information
    /// only, on ports 67 and 4011).
    pub dhcp_mode: String,
    /// Our IPv4 address on that interface.
    pub address: String,
    pub prefix_len: u8,
    pub pool_start: String,
    pub pool_end: String,
    /// Default gateway handed to clients; empty for none.
    pub router: String,
    pub dns: Vec<String>,
    pub lease_secs: u32,
    /// fdatasync the lease journal (`data_dir/dhcp-leases`) before each
    /// batch of ACKs leaves: leases survive a power cut, not only a crash.
    pub lease_fsync: bool,
    pub dhcp_port: u16,
    pub tftp_port: u16,
    /// TFTP transfers at once, all clients together; more are refused
    /// ("too many transfers", `slipway_tftp_busy_total`).
    pub tftp_max_sessions: usize,
    /// TFTP transfers at once from one address (firmware opens one or
    /// two): one host cannot take the server's sessions.
    pub tftp_sessions_per_client: usize,
    /// Boot files, iPXE scripts and the agent API are served here.
    pub http_port: u16,
    /// Send IPv6 router advertisements (no prefix, lifetime 0) so iPXE
    /// does not wait ~13 s for one on every boot.
    pub router_advertisements: bool,
    /// Answer MACs Slipway does not know yet (discovery of new hardware).
    /// Off: only machines already in the API and reservations are answered.
    pub answer_unknown: bool,
    /// MACs never answered.
    pub deny: Vec<String>,
    /// Fixed addresses, as `"MAC=IPv4"`.
    pub reservations: Vec<String>,
    /// Subnets behind DHCP relays (one per rack), chosen by the relay's
    /// giaddr.
    pub relay_subnets: Vec<RelaySubnetConfig>,
    /// A machine still `discovering` after this long is marked failed.
    pub discovery_timeout_secs: u64,
    /// A machine still `deploying` (or `releasing`) after this long is
    /// marked failed.
    pub deploy_timeout_secs: u64,
    /// A deployed machine asked to join a cluster and not a member after
    /// this long is marked failed.
    pub join_timeout_secs: u64,
    /// How a release wipes disks unless the request says: `quick`
    /// (partition tables and signatures) or `full` (every byte).
    pub release_wipe: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySubnetConfig {
    /// `10.78.0.0/24`
    pub subnet: String,
    pub pool_start: String,
    pub pool_end: String,
    /// The relay's address on that subnet, handed out as the gateway.
    pub router: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootFilesConfig {
    /// Served over TFTP: Debian's `ipxe` package.
    pub ipxe_dir: PathBuf,
    pub bios_file: String,
    pub uefi_file: String,
    pub uefi_pxe: UefiPxe,
    /// Holds `shimx64.efi` and `grubx64.efi` (GRUB's network image) for
    /// `uefi_pxe = "signed"`. Empty: taken from Debian's `shim-signed` and
    /// `grub-efi-amd64-signed` packages at start, cached in `cache_dir`.
    pub signed_dir: String,
    /// iPXE for arm64 UEFI, relative to `ipxe_dir`; empty: arm64 clients
    /// get no boot file (Debian 12 packages none).
    pub arm64_file: String,
    /// A directory with `vmlinuz` and `initrd.img`. Empty: build the
    /// discovery ramdisk (cached in `cache_dir`) at start.
    pub ramdisk_dir: String,
    /// Empty: `slipway-agent` next to the running binary.
    pub agent_binary: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: "./slipway-data".into(),
            cache_dir: "/var/cache/slipway".into(),
            import_dir: PathBuf::new(),
            log_format: LogFormat::Text,
            api: ApiConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
                token: String::new(),
                tls: "off".into(),
                tls_cert: String::new(),
                tls_key: String::new(),
                tls_names: vec![],
            },
            http: HttpConfig { header_timeout_secs: 30, max_connections: 16_384, max_connections_per_client: 64 },
            retention: RetentionConfig { events_days: 90, audit_days: 400 },
            database: DatabaseConfig { url: String::new() },
            provisioning: ProvisioningConfig {
                interface: String::new(),
                dhcp_mode: "authoritative".into(),
                address: String::new(),
                prefix_len: 24,
                pool_start: String::new(),
                pool_end: String::new(),
                router: String::new(),
                dns: vec![],
                lease_secs: 3600,
                lease_fsync: true,
                dhcp_port: 67,
                tftp_port: 69,
                tftp_max_sessions: 1024,
                tftp_sessions_per_client: 8,
                http_port: 8081,
                router_advertisements: true,
                answer_unknown: true,
                deny: vec![],
                reservations: vec![],
                relay_subnets: vec![],
                discovery_timeout_secs: 900,
                deploy_timeout_secs: 3600,
                join_timeout_secs: 1800,
                release_wipe: "quick".into(),
            },
            boot: BootFilesConfig {
                ipxe_dir: "/usr/lib/ipxe".into(),
                bios_file: "undionly.kpxe".into(),
                uefi_file: "snponly.efi".into(),
                uefi_pxe: UefiPxe::Signed,
                signed_dir: String::new(),
                arm64_file: String::new(),
                ramdisk_dir: String::new(),
                agent_binary: String::new(),
            },
            oob: OobConfig {
                secret_key: String::new(),
                secret_key_file: PathBuf::new(),
                request_timeout_secs: 10,
                max_requests_per_bmc: 2,
                power_poll_secs: 30,
                ups_poll_secs: 2,
                min_backoff_secs: 5,
                max_backoff_secs: 300,
                ups: vec![],
            },
        }
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

fn invalid(origin: impl Into<String>, message: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid { origin: origin.into(), message: message.to_string() }
}

/// The boot network, validated.
#[derive(Debug, Clone)]
pub struct Provisioning {
    pub interface: String,
    pub address: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub pool_start: Ipv4Addr,
    pub pool_end: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub reservations: HashMap<MacAddr, Ipv4Addr>,
    pub deny: HashSet<MacAddr>,
    pub mode: pxe::dhcp::DhcpMode,
    pub relay_subnets: Vec<pxe::dhcp::Subnet>,
}

impl Config {
    /// Defaults, overlaid by `file` (if given), overlaid by the environment.
    pub fn load(file: Option<&Path>, env: impl Iterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let mut value = toml::Value::try_from(Config::default()).map_err(|e| invalid("defaults", e))?;
        if let Some(path) = file {
            let text =
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
            let overlay: toml::Value = text
                .parse::<toml::Table>()
                .map(toml::Value::Table)
                .map_err(|e| invalid(path.display().to_string(), e))?;
            merge(&mut value, overlay);
        }
        let env: std::collections::BTreeMap<String, String> = env.filter(|(k, _)| k.starts_with("SLIPWAY_")).collect();
        apply_env(&mut value, &mut Vec::new(), &env)?;
        let origin = file.map_or("environment".to_string(), |p| p.display().to_string());
        value.try_into().map_err(|e| invalid(origin, e))
    }

    pub fn database_url(&self) -> String {
        if self.database.url.is_empty() {
            format!("sqlite://{}?mode=rwc", self.data_dir.join("slipway.db").display())
        } else {
            self.database.url.clone()
        }
    }

    /// `api.tls` with its files, checked.
    pub fn api_tls(&self) -> Result<ApiTls, ConfigError> {
        let api = &self.api;
        let path = |value: &str, default: &str| {
            if value.is_empty() {
                self.data_dir.join(default)
            } else {
                PathBuf::from(value)
            }
        };
        match api.tls.as_str() {
            "off" => Ok(ApiTls::Off),
            "self-signed" => Ok(ApiTls::SelfSigned {
                cert: path(&api.tls_cert, "api-tls-cert.pem"),
                key: path(&api.tls_key, "api-tls-key.pem"),
                names: api.tls_names.clone(),
            }),
            "files" => {
                for (key, value) in [("api.tls_cert", &api.tls_cert), ("api.tls_key", &api.tls_key)] {
                    if value.is_empty() {
                        return Err(invalid(key, "api.tls = \"files\" needs a PEM file here"));
                    }
                }
                Ok(ApiTls::Files { cert: api.tls_cert.clone().into(), key: api.tls_key.clone().into() })
            }
            other => Err(invalid("api.tls", format!("{other:?} is not off, self-signed or files"))),
        }
    }

    /// `provisioning.release_wipe`, checked.
    pub fn release_wipe(&self) -> Result<wire::WipeMode, ConfigError> {
        let text = &self.provisioning.release_wipe;
        wire::WipeMode::parse(text)
            .ok_or_else(|| invalid("provisioning.release_wipe", format!("{text:?} is not quick or full")))
    }

    /// `None` when boot services are off.
    pub fn provisioning(&self) -> Result<Option<Provisioning>, ConfigError> {
        let p = &self.provisioning;
        if p.interface.is_empty() {
            return Ok(None);
        }
        let ip = |key: &str, v: &str| {
            v.parse::<Ipv4Addr>()
                .map_err(|_| invalid(format!("provisioning.{key}"), format!("{v:?} is not an IPv4 address")))
        };
        let mode = match p.dhcp_mode.as_str() {
            "authoritative" => pxe::dhcp::DhcpMode::Authoritative,
            "proxy" => pxe::dhcp::DhcpMode::Proxy,
            other => return Err(invalid("provisioning.dhcp_mode", format!("{other:?} is not authoritative or proxy"))),
        };
        if p.prefix_len == 0 || p.prefix_len > 30 {
            return Err(invalid("provisioning.prefix_len", "must be 1..=30"));
        }
        let address = ip("address", &p.address)?;
        let (pool_start, pool_end) = (ip("pool_start", &p.pool_start)?, ip("pool_end", &p.pool_end)?);
        let netmask = Ipv4Addr::from(u32::MAX << (32 - p.prefix_len));
        let net = |a: Ipv4Addr| u32::from(a) & u32::from(netmask);
        if net(pool_start) != net(address) || net(pool_end) != net(address) || pool_start > pool_end {
            return Err(invalid(
                "provisioning.pool_start",
                "the pool must be an ascending range inside the provisioning subnet",
            ));
        }
        if (pool_start..=pool_end).contains(&address) {
            return Err(invalid("provisioning.address", "our own address lies inside the pool"));
        }
        let router = if p.router.is_empty() { None } else { Some(ip("router", &p.router)?) };
        let dns = p.dns.iter().map(|d| ip("dns", d)).collect::<Result<_, _>>()?;
        let mac = |key: &str, v: &str| {
            v.parse::<MacAddr>().map_err(|e| invalid(format!("provisioning.{key}"), e.to_string()))
        };
        let deny = p.deny.iter().map(|m| mac("deny", m)).collect::<Result<_, _>>()?;
        let mut reservations = HashMap::new();
        let mut taken = HashSet::new();
        for entry in &p.reservations {
            let (m, a) = entry
                .split_once('=')
                .ok_or_else(|| invalid("provisioning.reservations", format!("{entry:?} is not MAC=IPv4")))?;
            let (m, a) = (mac("reservations", m)?, ip("reservations", a.trim())?);
            if net(a) != net(address) || a == address {
                return Err(invalid("provisioning.reservations", format!("{a} is not a client address in our subnet")));
            }
            if !taken.insert(a) || reservations.insert(m, a).is_some() {
                return Err(invalid("provisioning.reservations", format!("{entry:?} repeats a MAC or an address")));
            }
        }
        let mut relay_subnets = Vec::new();
        for r in &p.relay_subnets {
            let key = "provisioning.relay_subnets";
            let (net_text, len) = r
                .subnet
                .split_once('/')
                .ok_or_else(|| invalid(key, format!("{:?} is not ADDRESS/PREFIX", r.subnet)))?;
            let len: u8 = len
                .parse()
                .ok()
                .filter(|l| (1..=30).contains(l))
                .ok_or_else(|| invalid(key, format!("bad prefix in {:?}", r.subnet)))?;
            let subnet = pxe::dhcp::Subnet {
                network: ip("relay_subnets", net_text)?,
                netmask: Ipv4Addr::from(u32::MAX << (32 - len)),
                pool_start: ip("relay_subnets", &r.pool_start)?,
                pool_end: ip("relay_subnets", &r.pool_end)?,
                router: Some(ip("relay_subnets", &r.router)?),
            };
            if !subnet.contains(subnet.pool_start)
                || !subnet.contains(subnet.pool_end)
                || subnet.pool_start > subnet.pool_end
            {
                return Err(invalid(key, format!("the pool of {} must be an ascending range inside it", r.subnet)));
            }
            relay_subnets.push(subnet);
        }
        Ok(Some(Provisioning {
            interface: p.interface.clone(),
            address,
            netmask,
            pool_start,
            pool_end,
            router,
            dns,
            reservations,
            deny,
            mode,
            relay_subnets,
        }))
    }
}

fn merge(base: &mut toml::Value, overlay: toml::Value) {
    match (base, overlay) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v); // unknown keys are reported by deserialization
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Overrides each leaf from `SLIPWAY_<PATH>`, parsed as the type of the
/// default (strings taken verbatim, others as TOML literals).
fn apply_env(
    value: &mut toml::Value,
    path: &mut Vec<String>,
    env: &std::collections::BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    if let toml::Value::Table(table) = value {
        for (k, v) in table.iter_mut() {
            path.push(k.clone());
            apply_env(v, path, env)?;
            path.pop();
        }
        return Ok(());
    }
    let name = format!("SLIPWAY_{}", path.join("_").to_ascii_uppercase());
    let Some(raw) = env.get(&name) else {
        return Ok(());
    };
    *value = match value {
        toml::Value::String(_) => toml::Value::String(raw.clone()),
        _ => format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .ok_or_else(|| invalid(&name, format!("{raw:?} is not a valid value")))?,
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>().into_iter()
    }

    #[test]
    fn no_config_means_defaults() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.api.listen.to_string(), "127.0.0.1:8080");
        assert!(c.provisioning().unwrap().is_none(), "boot services are off by default");
    }

    #[test]
    fn environment_overrides_every_kind_of_key() {
        let c = Config::load(
            None,
            env(&[
                ("SLIPWAY_API_LISTEN", "127.0.0.1:9000"),
                ("SLIPWAY_DATA_DIR", "/tmp/x"),
                ("SLIPWAY_PROVISIONING_LEASE_SECS", "600"),
                ("SLIPWAY_PROVISIONING_DNS", "[\"10.0.0.53\"]"),
                ("OTHER_API_LISTEN", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(c.api.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.provisioning.lease_secs, 600);
        assert_eq!(c.provisioning.dns, vec!["10.0.0.53".to_string()]);
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = Config::load(None, env(&[("SLIPWAY_PROVISIONING_LEASE_SECS", "soon")])).unwrap_err();
        assert!(err.to_string().contains("SLIPWAY_PROVISIONING_LEASE_SECS"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[api]\nlisen = \"x\"\n").unwrap();
        let err = Config::load(Some(&file), env(&[])).unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
        let ups = "[[oob.ups]]\nname = \"r1\"\nprotocol = \"modbus\"\naddress = \"10.0.1.5:502\"\n";
        std::fs::write(&file, ups).unwrap();
        let err = Config::load(Some(&file), env(&[])).unwrap_err().to_string();
        assert!(err.contains("modbus") && err.contains("nut"), "{err}");
    }

    #[test]
    fn provisioning_is_validated() {
        let mut c = Config::default();
        c.provisioning.interface = "br0".into();
        c.provisioning.address = "10.77.0.1".into();
        c.provisioning.pool_start = "10.77.0.100".into();
        c.provisioning.pool_end = "10.77.0.199".into();
        let p = c.provisioning().unwrap().unwrap();
        assert_eq!(p.netmask, Ipv4Addr::new(255, 255, 255, 0));
        c.provisioning.reservations = vec!["52:54:00:00:00:01=10.77.0.50".into()];
        c.provisioning.deny = vec!["52-54-00-00-00-02".into()];
        let p = c.provisioning().unwrap().unwrap();
        assert_eq!(p.reservations[&MacAddr([0x52, 0x54, 0, 0, 0, 1])], Ipv4Addr::new(10, 77, 0, 50));
        assert!(p.deny.contains(&MacAddr([0x52, 0x54, 0, 0, 0, 2])));
        for (bad, key) in [
            ("52:54:00:00:00:01=10.99.0.5", "reservations"),
            ("52:54:00:00:00:01", "reservations"),
            ("nonsense=10.77.0.5", "reservations"),
        ] {
            c.provisioning.reservations = vec![bad.into()];
            assert!(c.provisioning().unwrap_err().to_string().contains(key), "{bad}");
        }
        c.provisioning.reservations = vec![];
        let rack2 = RelaySubnetConfig {
            subnet: "10.78.0.0/24".into(),
            pool_start: "10.78.0.100".into(),
            pool_end: "10.78.0.199".into(),
            router: "10.78.0.1".into(),
        };
        c.provisioning.relay_subnets = vec![rack2.clone()];
        assert_eq!(c.provisioning().unwrap().unwrap().relay_subnets[0].netmask, Ipv4Addr::new(255, 255, 255, 0));
        c.provisioning.relay_subnets = vec![RelaySubnetConfig { pool_end: "10.79.0.5".into(), ..rack2 }];
        assert!(c.provisioning().unwrap_err().to_string().contains("relay_subnets"));
        c.provisioning.relay_subnets = vec![];
        c.provisioning.pool_end = "10.78.0.1".into();
        assert!(c.provisioning().unwrap_err().to_string().contains("pool"));
    }

    #[test]
    fn api_tls_is_validated() {
        let mut c = Config { data_dir: "/srv/slipway".into(), ..Config::default() };
        assert_eq!(c.api_tls().unwrap(), ApiTls::Off, "plain HTTP on loopback by default");
        c.api.tls = "self-signed".into();
        c.api.tls_names = vec!["slipway.rack7".into()];
        assert_eq!(
            c.api_tls().unwrap(),
            ApiTls::SelfSigned {
                cert: "/srv/slipway/api-tls-cert.pem".into(),
                key: "/srv/slipway/api-tls-key.pem".into(),
                names: vec!["slipway.rack7".into()],
            }
        );
        c.api.tls = "files".into();
        assert!(c.api_tls().unwrap_err().to_string().contains("api.tls_cert"));
        c.api.tls_cert = "/etc/slipway/api.crt".into();
        assert!(c.api_tls().unwrap_err().to_string().contains("api.tls_key"));
        c.api.tls_key = "/etc/slipway/api.key".into();
        assert_eq!(
            c.api_tls().unwrap(),
            ApiTls::Files { cert: "/etc/slipway/api.crt".into(), key: "/etc/slipway/api.key".into() }
        );
        c.api.tls = "on".into();
        assert!(c.api_tls().unwrap_err().to_string().contains("api.tls"));
        let c = Config::load(None, env(&[("SLIPWAY_API_TLS", "self-signed")])).unwrap();
        assert!(matches!(c.api_tls().unwrap(), ApiTls::SelfSigned { .. }));
    }

    /// The example file documents every key with its default value.
    #[test]
    fn example_file_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../slipway.example.toml");
        assert_eq!(Config::load(Some(&path), env(&[])).unwrap(), Config::default());
        let text = std::fs::read_to_string(&path).unwrap();
        let example: toml::Value = text.parse::<toml::Table>().unwrap().into();
        assert_eq!(example, toml::Value::try_from(Config::default()).unwrap(), "every key is in the example");
    }
}
