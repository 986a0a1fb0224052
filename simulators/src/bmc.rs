//! The simulated BMC: a Redfish service per lab VM that really controls
//! that VM, so Slipway powers lab machines on and sets their boot device
//! through the same Redfish client it uses for real BMCs ("ship simulators
//! next to the clients").
//!
//! - `backend`: what a BMC can do to its machine (the `Backend` trait), the
//!   boot and firmware bookkeeping every backend shares, and an in-memory
//!   backend for tests.
//! - `qmp`: a small QMP client and the backend that drives a QEMU VM
//!   through it (`-S` is "off", `cont` is "on", `bootindex` changed with
//!   `qom-set` takes effect at the next reset).
//! - `redfish`: the axum Redfish service (sessions, basic auth, systems,
//!   chassis, managers, tasks); `resources` renders its JSON, `update` is
//!   `UpdateService.SimpleUpdate` with the lab firmware format.
//!
//! This module does not start QEMU (the lab does) and is not a Redfish
//! client (`inventory::redfish` is). `slipway lab vbmc --config FILE` runs the
//! BMCs described by a JSON file (`BmcConfig`) with `serve_all`; with
//! `--memory`, each drives an in-memory machine instead of a VM
//! (`serve_all_in_memory`: the API fuzz run's BMC, where no QEMU runs).

mod auth;
pub mod backend;
pub mod qmp;
pub mod redfish;
#[cfg(test)]
mod redfish_tests;
mod resources;
pub mod update;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use inventory::oob::{BootTarget, Credentials};

pub use backend::{
    Backend, BootOverride, DiskFact, FirmwareKind, FirmwareVersions, MachineState, MemoryBackend, NicFact, SystemFacts,
};
pub use qmp::{QmpBackend, QmpClient};
pub use redfish::{router, SimState};

/// SMBIOS type 1 identity of a simulated machine, as given to QEMU's
/// `-smbios` and `-uuid`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Smbios {
    pub serial: String,
    /// Lower-case, hyphenated.
    pub uuid: String,
    pub manufacturer: String,
    pub product: String,
}

/// One simulated BMC, as `slipway lab vbmc --config FILE` reads it (the
/// file is a JSON list of these).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BmcConfig {
    /// The machine's name (logs, Redfish `HostName`).
    pub name: String,
    /// Where this BMC's Redfish service listens, `IP:PORT`.
    pub listen: SocketAddr,
    /// The VM's QMP socket (`-qmp unix:PATH,server=on,wait=off`).
    pub qmp: PathBuf,
    pub username: String,
    pub password: String,
    pub smbios: Smbios,
    /// The NIC's configured MAC (used when QMP cannot tell).
    pub mac: String,
    /// The disk's configured serial (used when QMP cannot tell).
    pub disk_serial: String,
    /// The device that boots first without an override (`pxe` or `disk`).
    #[serde(default = "default_boot")]
    pub default_boot: BootTarget,
    /// The VM runs OVMF (reported as `BootSourceOverrideMode` `UEFI`).
    #[serde(default)]
    pub uefi: bool,
    /// OVMF with Secure Boot enforced.
    #[serde(default)]
    pub secure_boot: bool,
    #[serde(default = "default_version")]
    pub bios_version: String,
    #[serde(default = "default_version")]
    pub bmc_version: String,
}

fn default_boot() -> BootTarget {
    BootTarget::Pxe
}

fn default_version() -> String {
    "1.0.0".into()
}

impl std::fmt::Debug for BmcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BmcConfig")
            .field("name", &self.name)
            .field("listen", &self.listen)
            .field("qmp", &self.qmp)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// What went wrong inside a simulated BMC.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("QMP {socket}: {detail}")]
    Qmp { socket: PathBuf, detail: String },
    #[error("QMP {socket}: {what}")]
    QmpIo {
        socket: PathBuf,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP {socket}: `{command}` failed: {class}: {desc}")]
    QmpCommand { socket: PathBuf, command: String, class: String, desc: String },
    #[error("QMP {socket}: no answer to `{command}` within {secs} s")]
    QmpTimeout { socket: PathBuf, command: String, secs: u64 },
    #[error("not supported by this machine: {0}")]
    Unsupported(String),
    #[error("reading BMC config {path}")]
    Config {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{name}: cannot listen on {addr}")]
    Bind {
        name: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{name}: serving Redfish")]
    Serve {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// Reads a `slipway lab vbmc` config file: a JSON list of `BmcConfig`.
pub fn load_config(path: &Path) -> Result<Vec<BmcConfig>, SimError> {
    let err = |source: Box<dyn std::error::Error + Send + Sync>| SimError::Config { path: path.to_path_buf(), source };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.into()))?;
    let configs: Vec<BmcConfig> = serde_json::from_str(&text).map_err(|e| err(e.into()))?;
    let mut seen = std::collections::HashSet::new();
    for c in &configs {
        if !seen.insert(c.listen) {
            return Err(err(format!("two BMCs listen on {}", c.listen).into()));
        }
    }
    Ok(configs)
}

/// Serves one simulated BMC per config, each controlling its VM through
/// QMP, until `shutdown` completes. Every listener is bound before any is
/// served, so a taken port fails the whole start.
pub async fn serve_all(configs: Vec<BmcConfig>, shutdown: impl Future<Output = ()> + Send) -> Result<(), SimError> {
    serve_with(configs, |config| Arc::new(QmpBackend::new(config)), shutdown).await
}

/// As [`serve_all`], each BMC driving an in-memory machine (see
/// [`memory_backend`]) instead of a VM.
pub async fn serve_all_in_memory(
    configs: Vec<BmcConfig>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), SimError> {
    serve_with(configs, memory_backend, shutdown).await
}

/// The in-memory machine a BMC of `config` drives: powered off, 2 CPUs,
/// 4 GiB, one 16 GiB disk with the configured serial, one NIC with the
/// configured MAC.
pub fn memory_backend(config: &BmcConfig) -> Arc<MemoryBackend> {
    let facts = SystemFacts {
        cpus: 2,
        memory_bytes: 4 << 30,
        disks: vec![DiskFact { id: "disk0".into(), size_bytes: 16 << 30, serial: Some(config.disk_serial.clone()) }],
        nics: vec![NicFact { id: "nic0".into(), mac: config.mac.to_ascii_lowercase() }],
        smbios: config.smbios.clone(),
    };
    let machine = MachineState::new(config.default_boot, &config.bios_version, &config.bmc_version);
    Arc::new(MemoryBackend::new(facts, machine))
}

/// Serves one BMC per entry, each driving the backend given with it, so
/// the caller (the fleet simulator) watches the same machines the BMCs
/// power: as [`serve_all`] otherwise.
pub async fn serve_backends<B: Backend>(
    entries: Vec<(BmcConfig, Arc<B>)>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), SimError> {
    let backends: std::collections::HashMap<String, Arc<B>> =
        entries.iter().map(|(config, backend)| (config.name.clone(), backend.clone())).collect();
    let configs = entries.into_iter().map(|(config, _)| config).collect();
    serve_with(configs, |config| backends[&config.name].clone(), shutdown).await
}

async fn serve_with<B: Backend>(
    configs: Vec<BmcConfig>,
    backend_for: impl Fn(&BmcConfig) -> Arc<B>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), SimError> {
    let mut listeners = Vec::new();
    for config in configs {
        let listener = tokio::net::TcpListener::bind(config.listen).await.map_err(|source| SimError::Bind {
            name: config.name.clone(),
            addr: config.listen,
            source,
        })?;
        listeners.push((listener, config));
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for (listener, config) in listeners {
        let name = config.name.clone();
        let backend = backend_for(&config);
        let credentials = Credentials { username: config.username.clone(), password: config.password.clone() };
        let state = SimState::with_secure_boot(
            &config.name,
            &config.smbios.uuid,
            credentials,
            config.uefi,
            config.secure_boot,
            backend.clone(),
        );
        tracing::info!(bmc = %name, listen = %config.listen, qmp = %config.qmp.display(), "simulated BMC serving");
        let mut stop = stop_rx.clone();
        // Guest reboots are seen through QMP events; poll so a one-time
        // boot override and a staged BIOS follow them without a request.
        let mut stop_poll = stop_rx.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => backend.housekeeping().await,
                    _ = stop_poll.changed() => return Ok(()),
                }
            }
        });
        tasks.spawn(async move {
            axum::serve(listener, router(state))
                .with_graceful_shutdown(async move {
                    let _ = stop.changed().await;
                })
                .await
                .map_err(|source| SimError::Serve { name, source })
        });
    }
    tokio::select! {
        () = shutdown => {}
        Some(done) = tasks.join_next() => {
            // A server ended on its own: an error, stop the rest.
            let _ = stop_tx.send(true);
            return match done {
                Ok(result) => result,
                Err(join) => Err(SimError::Serve { name: "vbmc".into(), source: std::io::Error::other(join) }),
            };
        }
    }
    tracing::info!("simulated BMCs stopping");
    let _ = stop_tx.send(true);
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(err)) = done {
            tracing::warn!(error = ?err, "simulated BMC ended with an error");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_reads_with_defaults_and_hides_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vbmc.json");
        std::fs::write(
            &path,
            r#"[{"name": "node1", "listen": "127.0.0.1:8001", "qmp": "/run/lab/node1.qmp",
                 "username": "admin", "password": "s3cret",
                 "smbios": {"serial": "LAB-0001", "uuid": "5f1a0000-0000-4000-8000-000000000001",
                            "manufacturer": "Slipway Lab", "product": "QEMU Lab Node"},
                 "mac": "52:54:00:5e:00:01", "disk_serial": "DISK-LAB-0001"}]"#,
        )
        .unwrap();
        let configs = load_config(&path).unwrap();
        assert_eq!(configs.len(), 1);
        assert_eq!(configs[0].default_boot, BootTarget::Pxe);
        assert_eq!(configs[0].bios_version, "1.0.0");
        assert!(!format!("{:?}", configs[0]).contains("s3cret"));
    }

    /// What `hardware-tests`' `VbmcEntry` writes (its test pins the same JSON).
    #[test]
    fn the_lab_config_shape_reads() {
        let lab = r#"{"name": "node2", "listen": "10.77.0.1:8002", "qmp": "/lab/node2.qmp",
            "username": "admin", "password": "pw",
            "smbios": {"serial": "LAB-0002", "uuid": "5f1a0000-0000-4000-8000-000000000002",
                       "manufacturer": "Slipway Lab", "product": "QEMU Lab Node"},
            "mac": "52:54:00:5e:00:02", "disk_serial": "DISK-LAB-0002", "default_boot": "pxe", "uefi": true,
            "secure_boot": true}"#;
        let config: BmcConfig = serde_json::from_str(lab).unwrap();
        assert_eq!(
            (config.default_boot, config.uefi && config.secure_boot, config.smbios.serial.as_str()),
            (BootTarget::Pxe, true, "LAB-0002")
        );
    }

    #[test]
    fn config_file_refuses_unknown_fields_and_shared_ports() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vbmc.json");
        std::fs::write(&path, r#"[{"name": "x", "lisen": "127.0.0.1:1"}]"#).unwrap();
        let err = load_config(&path).unwrap_err();
        assert!(format!("{:?}", err).contains("lisen"), "{err:?}");
        let one = r#"{"name": "a", "listen": "127.0.0.1:8001", "qmp": "/q", "username": "u", "password": "p",
            "smbios": {"serial": "s", "uuid": "u", "manufacturer": "m", "product": "p"}, "mac": "m", "disk_serial": "d"}"#;
        std::fs::write(&path, format!("[{one}, {one}]")).unwrap();
        let err = load_config(&path).unwrap_err();
        assert!(format!("{:?}", err).contains("two BMCs listen on 127.0.0.1:8001"), "{err:?}");
    }
}
