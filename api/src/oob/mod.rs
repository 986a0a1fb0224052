//! Out-of-band management at run time: one long-lived client per BMC (so a
//! Redfish session is reused, not opened per request), at most
//! `oob.max_requests_per_bmc` requests in flight to each, a poll task per
//! BMC and per UPS with backoff after failures. Each BMC and UPS has its
//! own task and permits, so one slow or dead device never delays another.
//!
//! Every result lands in the store, which raises the events.

pub mod client;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::OobConfig;
use crate::secrets::SecretBox;
use client::{BmcClient, Op, OpOutput};
use inventory::oob::{BmcInventory, BmcProtocol, BootTarget, Credentials, OobError, PowerAction, PowerState};
use inventory::redfish::TaskInfo;
use store::{Bmc, Store, StoreError, Ups};

/// Timings, from the config.
#[derive(Debug, Clone)]
pub struct OobSettings {
    pub timeout: Duration,
    pub max_requests_per_bmc: usize,
    pub power_poll: Duration,
    pub ups_poll: Duration,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl From<&OobConfig> for OobSettings {
    fn from(c: &OobConfig) -> Self {
        OobSettings {
            timeout: Duration::from_secs(c.request_timeout_secs.max(1)),
            max_requests_per_bmc: c.max_requests_per_bmc.max(1) as usize,
            power_poll: Duration::from_secs(c.power_poll_secs.max(1)),
            ups_poll: Duration::from_secs(c.ups_poll_secs.max(1)),
            min_backoff: Duration::from_secs(c.min_backoff_secs.max(1)),
            max_backoff: Duration::from_secs(c.max_backoff_secs.max(c.min_backoff_secs).max(1)),
        }
    }
}

/// Why an out-of-band request could not be made or failed.
#[derive(Debug, thiserror::Error)]
pub enum OobFailure {
    #[error(transparent)]
    Device(#[from] OobError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("BMC {0} is not enrolled")]
    NoBmc(String),
}

struct BmcHandle {
    bmc_id: String,
    protocol: BmcProtocol,
    address: String,
    client: tokio::sync::OnceCell<BmcClient>,
    permits: Semaphore,
}

pub struct Oob {
    store: Store,
    secrets: SecretBox,
    pub settings: OobSettings,
    discovery_timeout_ms: i64,
    handles: Mutex<HashMap<String, Arc<BmcHandle>>>,
    tasks: Mutex<HashMap<String, JoinHandle<()>>>,
    /// Pollers run only while this appliance leads (one per database);
    /// unset (tests, before `start`) means always.
    leader: std::sync::OnceLock<crate::leader::Leader>,
    /// Scheduled polls (BMC and UPS) in flight at once, over all devices:
    /// thousands of BMCs never mean thousands of requests at one moment.
    polls: Semaphore,
}

/// The most scheduled polls one appliance has in flight at once.
pub const MAX_POLLS_IN_FLIGHT: usize = 64;

/// `period` give or take a tenth, drawn afresh each time, so devices
/// enrolled (or taken over by a new leader) together drift apart.
pub fn jittered(period: Duration) -> Duration {
    period.mul_f64(rand::Rng::gen_range(&mut rand::thread_rng(), 0.9..=1.1))
}

impl std::fmt::Debug for Oob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oob").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// `timeout * 2^failures`, capped.
pub fn backoff(settings: &OobSettings, failures: u32) -> Duration {
    settings.min_backoff.saturating_mul(1u32 << failures.min(16)).min(settings.max_backoff)
}

impl Oob {
    pub fn new(store: Store, secrets: SecretBox, settings: OobSettings, discovery_timeout_ms: i64) -> Arc<Oob> {
        Arc::new(Oob {
            store,
            secrets,
            settings,
            discovery_timeout_ms,
            handles: Mutex::default(),
            tasks: Mutex::default(),
            leader: std::sync::OnceLock::new(),
            polls: Semaphore::new(MAX_POLLS_IN_FLIGHT),
        })
    }

    pub fn seal(&self, secret: &str) -> String {
        self.secrets.seal(secret)
    }

    /// A sealed secret, or one stored in clear before its column was sealed.
    pub fn open_or_clear(&self, stored: &str) -> Result<String, crate::secrets::OpenError> {
        self.secrets.open_or_clear(stored)
    }

    /// Polls every enrolled BMC and UPS while `leader` leads: at start-up,
    /// and every few seconds for devices enrolled through another
    /// appliance or whose poller stopped.
    pub async fn start(self: &Arc<Self>, leader: crate::leader::Leader) -> Result<(), StoreError> {
        let _ = self.leader.set(leader);
        self.watch_all().await?;
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(crate::leader::RENEW).await;
                if me.is_leader() {
                    if let Err(err) = me.watch_all().await {
                        warn!(error = %err, "listing BMCs and UPSes to poll failed");
                    }
                }
            }
        });
        Ok(())
    }

    /// Starts a poll task for each enrolled BMC and UPS that has none.
    async fn watch_all(self: &Arc<Self>) -> Result<(), StoreError> {
        let polled = |key: String| self.tasks.lock().expect("tasks lock").get(&key).is_some_and(|t| !t.is_finished());
        for bmc in self.store.bmcs().await? {
            if !polled(format!("bmc:{}", bmc.id)) {
                self.watch_bmc(&bmc.id, false);
            }
        }
        for ups in self.store.ups_list().await? {
            if !polled(format!("ups:{}", ups.name)) {
                self.watch_ups(&ups.name);
            }
        }
        Ok(())
    }

    fn is_leader(&self) -> bool {
        self.leader.get().is_none_or(crate::leader::Leader::is_leader)
    }

    fn handle(&self, bmc: &Bmc) -> Arc<BmcHandle> {
        let mut handles = self.handles.lock().expect("handles lock");
        handles
            .entry(bmc.id.clone())
            .or_insert_with(|| {
                Arc::new(BmcHandle {
                    bmc_id: bmc.id.clone(),
                    protocol: bmc.protocol,
                    address: bmc.address.clone(),
                    client: tokio::sync::OnceCell::new(),
                    permits: Semaphore::new(self.settings.max_requests_per_bmc),
                })
            })
            .clone()
    }

    /// One request to one BMC: waits for a permit (bounded), then asks.
    /// The outcome is recorded on the BMC and counted.
    async fn run(&self, bmc: &Bmc, op: Op) -> Result<OpOutput, OobFailure> {
        let handle = self.handle(bmc);
        let started = std::time::Instant::now();
        let result = self.run_on(&handle, bmc, op).await;
        metrics::histogram!("slipway_bmc_request_duration_seconds", "protocol" => handle.protocol.as_str())
            .record(started.elapsed());
        let outcome = match &result {
            Ok(_) => "ok",
            Err(err) => err.kind(),
        };
        metrics::counter!("slipway_bmc_requests_total", "protocol" => handle.protocol.as_str(), "outcome" => outcome)
            .increment(1);
        if let Err(err) = &result {
            warn!(bmc = handle.bmc_id, address = handle.address, error = %err, "BMC request failed");
            self.store.record_bmc_error(&handle.bmc_id, err.kind(), &err.to_string()).await?;
        }
        Ok(result?)
    }

    async fn run_on(&self, handle: &BmcHandle, bmc: &Bmc, op: Op) -> Result<OpOutput, OobError> {
        let wait = self.settings.timeout * 3;
        let _permit = tokio::time::timeout(wait, handle.permits.acquire())
            .await
            .map_err(|_| OobError::Timeout { peer: handle.address.clone(), secs: wait.as_secs() })?
            .expect("semaphore never closed");
        let client = handle
            .client
            .get_or_try_init(|| async {
                let password = self
                    .secrets
                    .open(&bmc.password_sealed)
                    .map_err(|e| OobError::Protocol { peer: bmc.address.clone(), detail: e.to_string() })?;
                let creds = Credentials { username: bmc.username.clone(), password };
                BmcClient::connect(bmc.protocol, &bmc.address, creds, bmc.tls.clone(), self.settings.timeout)
            })
            .await?;
        // The clients bound each request; this bounds a whole operation
        // (an inventory walks many resources).
        let whole = self.settings.timeout * 6;
        tokio::time::timeout(whole, client.run(op))
            .await
            .map_err(|_| OobError::Timeout { peer: handle.address.clone(), secs: whole.as_secs() })?
    }

    async fn bmc(&self, id: &str) -> Result<Bmc, OobFailure> {
        self.store.bmc(id).await?.ok_or_else(|| OobFailure::NoBmc(id.to_string()))
    }

    /// Reads the whole inventory now, records it (raising
    /// `inventory.changed` when it differs) and links the BMC to its
    /// machine. Returns the machine's id.
    pub async fn refresh_inventory(&self, bmc_id: &str) -> Result<(BmcInventory, String), OobFailure> {
        let bmc = self.bmc(bmc_id).await?;
        let OpOutput::Inventory(mut inv) = self.run(&bmc, Op::Inventory).await? else {
            unreachable!("an inventory op answers with an inventory")
        };
        if let Some(old) = &bmc.inventory {
            keep_unread_sections(&mut inv, old);
        }
        self.store.record_bmc_ok(bmc_id, inv.system.power_state, Some(&inv), inventory::diff::diff).await?;
        let (machine, by) = self.store.link_bmc(bmc_id, &inv, self.store.now_ms() + self.discovery_timeout_ms).await?;
        info!(bmc = bmc_id, machine, by = ?by, "BMC inventory read");
        Ok((*inv, machine))
    }

    pub async fn power_state(&self, bmc_id: &str) -> Result<PowerState, OobFailure> {
        let bmc = self.bmc(bmc_id).await?;
        let OpOutput::Power(p) = self.run(&bmc, Op::PowerState).await? else { unreachable!("power state op") };
        self.store.record_bmc_ok(bmc_id, Some(p), None, inventory::diff::diff).await?;
        Ok(p)
    }

    /// Sets the next boot (if asked), then applies the power action.
    /// Both are events on the machine.
    pub async fn power(
        &self,
        bmc_id: &str,
        action: Option<PowerAction>,
        boot: Option<(BootTarget, Option<bool>)>,
        cause: &str,
    ) -> Result<(), OobFailure> {
        let bmc = self.bmc(bmc_id).await?;
        if let Some((target, uefi)) = boot {
            self.run(&bmc, Op::Boot(target, uefi)).await?;
            self.store
                .record_event(
                    bmc.machine_id.as_deref(),
                    "boot.override",
                    serde_json::json!({ "bmc": bmc_id, "target": target, "uefi": uefi, "once": true, "cause": cause }),
                )
                .await?;
        }
        if let Some(action) = action {
            self.run(&bmc, Op::Power(action)).await?;
            self.store
                .record_event(
                    bmc.machine_id.as_deref(),
                    "power.action",
                    serde_json::json!({ "bmc": bmc_id, "action": action, "cause": cause }),
                )
                .await?;
        }
        // Read back so the API shows the effect, not the old state.
        let _ = self.power_state(bmc_id).await;
        Ok(())
    }

    /// Asks the BMC to fetch and apply a firmware image (Redfish
    /// SimpleUpdate); returns the task to poll, when the BMC gives one.
    pub async fn simple_update(
        &self,
        bmc_id: &str,
        image_uri: &str,
        targets: &[String],
    ) -> Result<Option<String>, OobFailure> {
        let bmc = self.bmc(bmc_id).await?;
        let op = Op::SimpleUpdate { image_uri: image_uri.to_string(), targets: targets.to_vec() };
        let OpOutput::Task(task) = self.run(&bmc, op).await? else { unreachable!("an update answers with a task") };
        Ok(task)
    }

    /// The state of a task [`Oob::simple_update`] returned.
    pub async fn task_state(&self, bmc_id: &str, task: &str) -> Result<TaskInfo, OobFailure> {
        let bmc = self.bmc(bmc_id).await?;
        let OpOutput::TaskState(info) = self.run(&bmc, Op::Task(task.to_string())).await? else {
            unreachable!("a task op answers with its state")
        };
        Ok(info)
    }

    /// Makes a machine network-boot now through its BMC, if it has one:
    /// PXE once, then on (when off) or a reset (when on). Returns whether
    /// a BMC was used. Used to start deploys and releases.
    pub async fn network_boot(&self, machine_id: &str, cause: &str) -> Result<bool, OobFailure> {
        let Some(bmc) = self.store.bmc_for_machine(machine_id).await? else { return Ok(false) };
        // PXE in the mode the machine last booted in (its agent saw it):
        // IPMI's default and some Redfish BMCs would otherwise PXE a UEFI
        // machine in legacy mode. Unknown: the BMC keeps its own mode.
        let mode = self.store.machine(machine_id).await?.and_then(|m| m.firmware_mode());
        let uefi = mode.map(|m| m == inventory::FirmwareMode::Uefi);
        let state = self.power_state(&bmc.id).await?;
        let action = if state == PowerState::Off { PowerAction::On } else { PowerAction::Reset };
        self.power(&bmc.id, Some(action), Some((BootTarget::Pxe, uefi)), cause).await?;
        Ok(true)
    }

    /// In the background, network-boots a machine that has a BMC so its
    /// agent picks up new work: always (`only_if_off` false: a deployed
    /// OS must reboot into the ramdisk to be released), or only when it is
    /// off (a deploy: a ready machine that is on already runs the agent).
    /// A failure is an event on the machine; the work's deadline stands.
    pub fn boot_for_work(self: &Arc<Self>, machine_id: &str, only_if_off: bool, cause: &'static str) {
        let me = self.clone();
        let machine_id = machine_id.to_string();
        tokio::spawn(async move {
            let Ok(Some(bmc)) = me.store.bmc_for_machine(&machine_id).await else { return };
            let result = async {
                if only_if_off && me.power_state(&bmc.id).await? != PowerState::Off {
                    return Ok(false);
                }
                me.network_boot(&machine_id, cause).await
            }
            .await;
            if let Err(err) = result {
                let detail = serde_json::json!({ "bmc": bmc.id, "error": err.to_string(), "cause": cause });
                let _ = me.store.record_event(Some(&machine_id), "power.failed", detail).await;
            }
        });
    }

    /// Polls the BMC's power state in its own task, backing off after
    /// failures. The first round reads the whole inventory and links it.
    pub fn watch_bmc(self: &Arc<Self>, bmc_id: &str, have_inventory: bool) {
        let me = self.clone();
        let id = bmc_id.to_string();
        let task = tokio::spawn(async move {
            let mut failures = 0u32;
            let mut have_inventory = have_inventory;
            if have_inventory {
                // Spread over one period: a restart or a new leader starts every poller at once.
                tokio::time::sleep(me.settings.power_poll.mul_f64(rand::random::<f64>())).await;
            }
            loop {
                if !me.is_leader() {
                    tokio::time::sleep(crate::leader::RENEW).await;
                    continue;
                }
                let result = {
                    let _permit = me.polls.acquire().await.expect("the poll semaphore is never closed");
                    if have_inventory {
                        me.power_state(&id).await.map(|_| ())
                    } else {
                        me.refresh_inventory(&id).await.map(|_| ())
                    }
                };
                let delay = match result {
                    Ok(()) => {
                        have_inventory = true;
                        failures = 0;
                        jittered(me.settings.power_poll)
                    }
                    Err(OobFailure::NoBmc(_)) => return,
                    Err(_) => {
                        failures += 1;
                        backoff(&me.settings, failures - 1)
                    }
                };
                tokio::time::sleep(delay).await;
            }
        });
        if let Some(old) = self.tasks.lock().expect("tasks lock").insert(format!("bmc:{bmc_id}"), task) {
            old.abort();
        }
    }

    pub fn forget_bmc(&self, bmc_id: &str) {
        self.handles.lock().expect("handles lock").remove(bmc_id);
        if let Some(task) = self.tasks.lock().expect("tasks lock").remove(&format!("bmc:{bmc_id}")) {
            task.abort();
        }
    }

    /// Reads one UPS now and records it.
    pub async fn read_ups(&self, ups: &Ups) -> Result<(), OobFailure> {
        let creds = match (&ups.username, &ups.password_sealed) {
            (Some(username), Some(sealed)) => Some(Credentials {
                username: username.clone(),
                password: self
                    .secrets
                    .open(sealed)
                    .map_err(|e| OobError::Protocol { peer: ups.address.clone(), detail: e.to_string() })?,
            }),
            _ => None,
        };
        // The SNMP community is a secret, sealed like the password.
        let target = match ups.protocol {
            inventory::oob::UpsProtocol::Snmp => self
                .secrets
                .open_or_clear(&ups.target_raw)
                .map_err(|e| OobError::Protocol { peer: ups.address.clone(), detail: e.to_string() })?,
            _ => ups.target_raw.clone(),
        };
        let result =
            client::read_ups(ups.protocol, &ups.address, &target, creds, &ups.tls, self.settings.timeout).await;
        match result {
            Ok(state) => {
                let on_battery = matches!(
                    state.status,
                    inventory::oob::UpsStatus::OnBattery | inventory::oob::UpsStatus::LowBattery
                );
                metrics::gauge!("slipway_ups_on_battery", "ups" => ups.name.clone())
                    .set(f64::from(u8::from(on_battery)));
                if let Some(charge) = state.charge_percent {
                    metrics::gauge!("slipway_ups_charge_percent", "ups" => ups.name.clone()).set(charge);
                }
                self.store.record_ups_ok(&ups.name, &state).await?;
                Ok(())
            }
            Err(err) => {
                metrics::counter!("slipway_ups_errors_total", "ups" => ups.name.clone(), "kind" => err.kind())
                    .increment(1);
                self.store.record_ups_error(&ups.name, &err.to_string()).await?;
                Err(err.into())
            }
        }
    }

    /// One scheduled read of a UPS, within the poll bound.
    async fn read_ups_scheduled(&self, ups: &Ups) -> Result<(), OobFailure> {
        let _permit = self.polls.acquire().await.expect("the poll semaphore is never closed");
        self.read_ups(ups).await
    }

    /// Reads the UPS every `ups_poll` in its own task, backing off after
    /// failures.
    pub fn watch_ups(self: &Arc<Self>, name: &str) {
        let me = self.clone();
        let name_owned = name.to_string();
        let task = tokio::spawn(async move {
            let mut failures = 0u32;
            loop {
                if !me.is_leader() {
                    tokio::time::sleep(crate::leader::RENEW).await;
                    continue;
                }
                let delay = match me.store.ups(&name_owned).await {
                    Ok(None) => return,
                    Ok(Some(ups)) => match me.read_ups_scheduled(&ups).await {
                        Ok(()) => {
                            failures = 0;
                            jittered(me.settings.ups_poll)
                        }
                        Err(_) => {
                            failures += 1;
                            backoff(&me.settings, failures - 1).min(me.settings.ups_poll * 8)
                        }
                    },
                    Err(err) => {
                        warn!(ups = name_owned, error = %err, "reading the UPS record failed");
                        me.settings.ups_poll
                    }
                };
                tokio::time::sleep(delay).await;
            }
        });
        if let Some(old) = self.tasks.lock().expect("tasks lock").insert(format!("ups:{name}"), task) {
            old.abort();
        }
    }

    pub fn forget_ups(&self, name: &str) {
        if let Some(task) = self.tasks.lock().expect("tasks lock").remove(&format!("ups:{name}")) {
            task.abort();
        }
    }
}

/// A read with failed sections (a BMC busy with a reboot) does not wipe
/// what an earlier read saw there: a section that came back empty while
/// some section failed keeps its previous contents. Processors and memory
/// are kept whenever they come back empty: no machine runs without them,
/// so none listed is a BMC that has not collected them yet (BMCs do this
/// while the host is in POST).
fn keep_unread_sections(new: &mut BmcInventory, old: &BmcInventory) {
    fn keep<T: Clone>(new: &mut Vec<T>, old: &[T]) {
        if new.is_empty() {
            *new = old.to_vec();
        }
    }
    keep(&mut new.processors, &old.processors);
    keep(&mut new.memory, &old.memory);
    if new.errors.is_empty() {
        return;
    }
    keep(&mut new.drives, &old.drives);
    keep(&mut new.nics, &old.nics);
    keep(&mut new.power_supplies, &old.power_supplies);
    keep(&mut new.firmware, &old.firmware);
}

impl OobFailure {
    pub fn kind(&self) -> &'static str {
        match self {
            OobFailure::Device(e) => e.kind(),
            OobFailure::Store(_) => "store",
            OobFailure::NoBmc(_) => "not_enrolled",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_read_keeps_what_the_last_one_saw() {
        use inventory::oob::{Dimm, Drive, Processor, SectionError};
        let old = BmcInventory {
            processors: vec![Processor::default()],
            memory: vec![Dimm::default()],
            drives: vec![Drive::default()],
            ..Default::default()
        };
        let mut clean = BmcInventory::default();
        keep_unread_sections(&mut clean, &old);
        assert_eq!((clean.processors.len(), clean.memory.len()), (1, 1), "no machine has no CPUs or memory");
        assert!(clean.drives.is_empty(), "a clean read may show no drives");
        let error = SectionError { section: "Storage".into(), error: "timed out".into() };
        let mut failed = BmcInventory { errors: vec![error], ..Default::default() };
        keep_unread_sections(&mut failed, &old);
        assert_eq!(failed.drives.len(), 1, "a section that failed keeps its last contents");
    }

    #[test]
    fn poll_periods_drift_within_a_tenth() {
        let period = Duration::from_secs(30);
        let drawn: Vec<Duration> = (0..200).map(|_| jittered(period)).collect();
        assert!(drawn.iter().all(|d| (Duration::from_secs(27)..=Duration::from_secs(33)).contains(d)), "{drawn:?}");
        let (min, max) = (drawn.iter().min().unwrap(), drawn.iter().max().unwrap());
        assert!(*max - *min > Duration::from_secs(3), "polls started together drift apart: {min:?}..{max:?}");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = OobSettings {
            timeout: Duration::from_secs(1),
            max_requests_per_bmc: 1,
            power_poll: Duration::from_secs(30),
            ups_poll: Duration::from_secs(2),
            min_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(60),
        };
        let secs: Vec<u64> = (0..6).map(|n| backoff(&s, n).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 60, 60]);
    }
}
