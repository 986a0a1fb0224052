//! What a simulated BMC can do to its machine (`Backend`), the boot and
//! firmware bookkeeping every backend shares (`MachineState`), and
//! `MemoryBackend`, a machine that exists only in memory, for tests of the
//! Redfish service.
//!
//! Semantics every backend follows, as real BMCs do: `On` of a running
//! machine and `ForceOff` of a stopped one change nothing; `Reset` and
//! `Cycle` of a stopped machine power it on. Each boot (power on, reset,
//! cycle, guest reboot) uses up a one-time boot override and starts a BIOS
//! that was staged by an update; a BMC update applies at once.

use std::future::Future;
use std::sync::Mutex;

use inventory::oob::{BootTarget, PowerAction, PowerState};

use super::{SimError, Smbios};

/// What the machine is made of, as far as the BMC can tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemFacts {
    pub cpus: u32,
    pub memory_bytes: u64,
    pub disks: Vec<DiskFact>,
    pub nics: Vec<NicFact>,
    pub smbios: Smbios,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskFact {
    /// The device's id (QEMU `id=disk0`).
    pub id: String,
    pub size_bytes: u64,
    pub serial: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NicFact {
    pub id: String,
    /// Lower-case, colon separated.
    pub mac: String,
}

/// A firmware component the lab can update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirmwareKind {
    Bios,
    Bmc,
}

impl FirmwareKind {
    /// The FirmwareInventory id, also the component name in lab images.
    pub fn id(self) -> &'static str {
        match self {
            FirmwareKind::Bios => "BIOS",
            FirmwareKind::Bmc => "BMC",
        }
    }

    pub fn from_id(id: &str) -> Option<FirmwareKind> {
        match id {
            "BIOS" => Some(FirmwareKind::Bios),
            "BMC" => Some(FirmwareKind::Bmc),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirmwareVersions {
    /// The BIOS that is running.
    pub bios: String,
    pub bmc: String,
    /// A BIOS written but not yet started (it starts at the next boot).
    pub pending_bios: Option<String>,
}

/// A boot source override: boot `target` first, at the next boot only
/// (`once`) or until cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootOverride {
    pub target: BootTarget,
    pub once: bool,
}

/// A simulated machine, as its BMC controls it. Futures are `Send` so the
/// Redfish service can await them in its handlers.
pub trait Backend: Send + Sync + 'static {
    fn power_state(&self) -> impl Future<Output = Result<PowerState, SimError>> + Send;
    fn power(&self, action: PowerAction) -> impl Future<Output = Result<(), SimError>> + Send;
    /// Sets (`Some`) or clears (`None`) the boot override.
    fn set_boot(&self, target: Option<BootTarget>, once: bool) -> impl Future<Output = Result<(), SimError>> + Send;
    fn boot_override(&self) -> impl Future<Output = Result<Option<BootOverride>, SimError>> + Send;
    fn facts(&self) -> impl Future<Output = Result<SystemFacts, SimError>> + Send;
    fn firmware(&self) -> impl Future<Output = Result<FirmwareVersions, SimError>> + Send;
    /// Installs a new firmware version (already fetched and checked).
    fn update_firmware(&self, kind: FirmwareKind, version: String)
        -> impl Future<Output = Result<(), SimError>> + Send;
    /// Called every few seconds: notice what happened without a request
    /// (a guest reboot).
    fn housekeeping(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Boot order and firmware bookkeeping, shared by every backend. Pure data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineState {
    pub default_boot: BootTarget,
    pub boot_override: Option<BootOverride>,
    pub firmware: FirmwareVersions,
}

impl MachineState {
    pub fn new(default_boot: BootTarget, bios: &str, bmc: &str) -> MachineState {
        MachineState {
            default_boot,
            boot_override: None,
            firmware: FirmwareVersions { bios: bios.into(), bmc: bmc.into(), pending_bios: None },
        }
    }

    /// The device the next boot tries first.
    pub fn first_boot_device(&self) -> BootTarget {
        self.boot_override.map_or(self.default_boot, |o| o.target)
    }

    pub fn set_override(&mut self, target: Option<BootTarget>, once: bool) -> Result<(), SimError> {
        if target == Some(BootTarget::UefiHttp) {
            return Err(SimError::Unsupported("boot from UEFI HTTP (lab VMs have PXE and a disk)".into()));
        }
        self.boot_override = target.map(|target| BootOverride { target, once });
        Ok(())
    }

    pub fn install(&mut self, kind: FirmwareKind, version: String) {
        match kind {
            FirmwareKind::Bios => self.firmware.pending_bios = Some(version),
            FirmwareKind::Bmc => self.firmware.bmc = version,
        }
    }

    /// The machine booted: a one-time override is used up, a staged BIOS
    /// now runs.
    pub fn after_boot(&mut self) {
        if self.boot_override.is_some_and(|o| o.once) {
            self.boot_override = None;
        }
        if let Some(bios) = self.firmware.pending_bios.take() {
            self.firmware.bios = bios;
        }
    }
}

/// QEMU `bootindex` values (NIC, disk) that make `first` boot first.
pub fn bootindexes(first: BootTarget) -> (i64, i64) {
    match first {
        BootTarget::Disk => (2, 1),
        BootTarget::Pxe | BootTarget::UefiHttp => (1, 2),
    }
}

/// A machine in memory: power, boot override and firmware behave as the
/// QEMU backend's do, and every boot is recorded with the device it tried
/// first.
#[derive(Debug)]
pub struct MemoryBackend {
    facts: SystemFacts,
    inner: Mutex<MemoryMachine>,
}

#[derive(Debug)]
struct MemoryMachine {
    power: PowerState,
    machine: MachineState,
    boots: Vec<BootTarget>,
}

impl MemoryBackend {
    /// A powered-off machine.
    pub fn new(facts: SystemFacts, machine: MachineState) -> MemoryBackend {
        MemoryBackend { facts, inner: Mutex::new(MemoryMachine { power: PowerState::Off, machine, boots: Vec::new() }) }
    }

    /// The device each boot so far tried first.
    pub fn boots(&self) -> Vec<BootTarget> {
        self.lock().boots.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryMachine> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl MemoryMachine {
    fn boot(&mut self) {
        self.power = PowerState::On;
        self.boots.push(self.machine.first_boot_device());
        self.machine.after_boot();
    }
}

impl Backend for MemoryBackend {
    async fn power_state(&self) -> Result<PowerState, SimError> {
        Ok(self.lock().power)
    }

    async fn power(&self, action: PowerAction) -> Result<(), SimError> {
        let mut m = self.lock();
        let on = m.power == PowerState::On;
        match action {
            PowerAction::On if on => {}
            PowerAction::On | PowerAction::Reset | PowerAction::Cycle => m.boot(),
            PowerAction::ForceOff | PowerAction::GracefulOff => m.power = PowerState::Off,
        }
        Ok(())
    }

    async fn set_boot(&self, target: Option<BootTarget>, once: bool) -> Result<(), SimError> {
        self.lock().machine.set_override(target, once)
    }

    async fn boot_override(&self) -> Result<Option<BootOverride>, SimError> {
        Ok(self.lock().machine.boot_override)
    }

    async fn facts(&self) -> Result<SystemFacts, SimError> {
        Ok(self.facts.clone())
    }

    async fn firmware(&self) -> Result<FirmwareVersions, SimError> {
        Ok(self.lock().machine.firmware.clone())
    }

    async fn update_firmware(&self, kind: FirmwareKind, version: String) -> Result<(), SimError> {
        self.lock().machine.install(kind, version);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> MemoryBackend {
        MemoryBackend::new(SystemFacts::default(), MachineState::new(BootTarget::Disk, "1.0", "2.0"))
    }

    #[tokio::test]
    async fn on_boots_once_and_off_stops() {
        let m = machine();
        assert_eq!(m.power_state().await.unwrap(), PowerState::Off);
        m.power(PowerAction::On).await.unwrap();
        m.power(PowerAction::On).await.unwrap();
        assert_eq!(m.power_state().await.unwrap(), PowerState::On);
        assert_eq!(m.boots().len(), 1, "On of a running machine must not reboot it");
        m.power(PowerAction::ForceOff).await.unwrap();
        assert_eq!(m.power_state().await.unwrap(), PowerState::Off);
        m.power(PowerAction::Reset).await.unwrap();
        assert_eq!(m.power_state().await.unwrap(), PowerState::On, "Reset of a stopped machine powers it on");
        m.power(PowerAction::Cycle).await.unwrap();
        assert_eq!(m.boots().len(), 3);
    }

    #[tokio::test]
    async fn a_one_time_override_is_used_by_the_next_boot_only() {
        let m = machine();
        m.set_boot(Some(BootTarget::Pxe), true).await.unwrap();
        assert_eq!(m.boot_override().await.unwrap(), Some(BootOverride { target: BootTarget::Pxe, once: true }));
        m.power(PowerAction::On).await.unwrap();
        m.power(PowerAction::Reset).await.unwrap();
        assert_eq!(m.boots(), vec![BootTarget::Pxe, BootTarget::Disk]);
        assert_eq!(m.boot_override().await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_continuous_override_stays_until_cleared() {
        let m = machine();
        m.set_boot(Some(BootTarget::Pxe), false).await.unwrap();
        m.power(PowerAction::On).await.unwrap();
        m.power(PowerAction::Reset).await.unwrap();
        m.set_boot(None, false).await.unwrap();
        m.power(PowerAction::Reset).await.unwrap();
        assert_eq!(m.boots(), vec![BootTarget::Pxe, BootTarget::Pxe, BootTarget::Disk]);
    }

    #[tokio::test]
    async fn uefi_http_boot_is_refused() {
        let err = machine().set_boot(Some(BootTarget::UefiHttp), true).await.unwrap_err();
        assert!(matches!(err, SimError::Unsupported(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_bios_update_runs_after_the_next_boot_and_a_bmc_update_at_once() {
        let m = machine();
        m.update_firmware(FirmwareKind::Bios, "1.1".into()).await.unwrap();
        m.update_firmware(FirmwareKind::Bmc, "2.1".into()).await.unwrap();
        let fw = m.firmware().await.unwrap();
        assert_eq!((fw.bios.as_str(), fw.bmc.as_str(), fw.pending_bios.as_deref()), ("1.0", "2.1", Some("1.1")));
        m.power(PowerAction::On).await.unwrap();
        let fw = m.firmware().await.unwrap();
        assert_eq!((fw.bios.as_str(), fw.pending_bios), ("1.1", None));
    }

    #[test]
    fn bootindexes_put_the_target_first() {
        assert_eq!(bootindexes(BootTarget::Pxe), (1, 2));
        assert_eq!(bootindexes(BootTarget::Disk), (2, 1));
    }
}
