//! A small QMP client (QEMU Machine Protocol, JSON lines over a Unix
//! socket) and `QmpBackend`, the simulated BMC's hands on a lab VM.
//!
//! Power is QEMU's run state: the lab starts VMs with `-S` (paused before
//! the first instruction: "off") and `-no-shutdown` (a guest poweroff stops
//! the VM instead of ending QEMU). `query-status` `running` is On, anything
//! paused (`prelaunch`, `paused`, `shutdown`) is Off. On is `system_reset`
//! then `cont`; ForceOff is `stop`; GracefulOff is `system_powerdown` (the
//! guest decides); Reset is `system_reset`; Cycle is `stop`, reset, `cont`.
//!
//! Boot override: `bootindex` of the NIC (`id=nic0`) and disk (`id=disk0`)
//! devices is changed with `qom-set`; QEMU regenerates the firmware's
//! `bootorder` at every reset, so it applies to the next boot. QEMU refuses
//! two devices with the same index, so the device leaving index 1 goes to
//! -1 first. After a boot, a one-time override is put back to the default;
//! guest reboots are noticed from `RESET` events.
//!
//! Cancel safety: a command is bounded by a timeout; a partly read line is
//! kept in the connection, but after any timeout or I/O error the
//! connection is dropped (a reply may still be in flight) and the next
//! command reconnects. QEMU serves one QMP client per socket at a time, so
//! one connection per VM is shared behind a mutex.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use inventory::oob::{BootTarget, PowerAction, PowerState};

use super::backend::{bootindexes, Backend, BootOverride, DiskFact, MachineState, NicFact, SystemFacts};
use super::backend::{FirmwareKind, FirmwareVersions};
use super::{BmcConfig, SimError, Smbios};

/// How long one QMP command (or the wait for a reset) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Events kept between commands; older ones are dropped.
const MAX_EVENTS: usize = 256;
/// The device ids the lab gives the NIC and the disk.
pub const NIC_ID: &str = "nic0";
pub const DISK_ID: &str = "disk0";

struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// A line being read; kept across a cancelled read.
    line: String,
}

/// One QMP connection, opened on first use and after any failure.
pub struct QmpClient {
    socket: PathBuf,
    conn: Option<Conn>,
    events: VecDeque<Value>,
    /// Set while a command or a read is under way. Still set on entry, it
    /// means the last caller's future was dropped mid-exchange (its HTTP
    /// client gave up): the connection may hold that command's late reply
    /// or half a line, so it is opened afresh instead of read out of step.
    in_flight: bool,
}

impl QmpClient {
    pub fn new(socket: &Path) -> QmpClient {
        QmpClient { socket: socket.to_path_buf(), conn: None, events: VecDeque::new(), in_flight: false }
    }

    fn io_err(&self, what: &str) -> impl FnOnce(std::io::Error) -> SimError + '_ {
        let what = what.to_string();
        move |source| SimError::QmpIo { socket: self.socket.clone(), what, source }
    }

    /// Runs `command` with `arguments` and returns its `return` value.
    pub async fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, SimError> {
        let timeout = SimError::QmpTimeout {
            socket: self.socket.clone(),
            command: command.into(),
            secs: COMMAND_TIMEOUT.as_secs(),
        };
        self.begin();
        let result = match tokio::time::timeout(COMMAND_TIMEOUT, self.execute_inner(command, arguments)).await {
            Ok(result) => result,
            Err(_) => Err(timeout),
        };
        if matches!(result, Err(SimError::QmpIo { .. } | SimError::QmpTimeout { .. } | SimError::Qmp { .. })) {
            self.conn = None;
        }
        self.in_flight = false;
        result
    }

    async fn execute_inner(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, SimError> {
        if self.conn.is_none() {
            self.connect().await?;
        }
        let mut msg = json!({ "execute": command });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        self.send(&msg).await?;
        self.reply(command).await
    }

    async fn connect(&mut self) -> Result<(), SimError> {
        let stream = UnixStream::connect(&self.socket).await.map_err(self.io_err("connecting"))?;
        let (r, w) = stream.into_split();
        self.conn = Some(Conn { reader: BufReader::new(r), writer: w, line: String::new() });
        let greeting = self.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(self.protocol(format!("expected the QMP greeting, got {greeting}")));
        }
        self.send(&json!({ "execute": "qmp_capabilities" })).await?;
        self.reply("qmp_capabilities").await?;
        tracing::debug!(socket = %self.socket.display(), "QMP connected");
        Ok(())
    }

    fn protocol(&self, detail: String) -> SimError {
        SimError::Qmp { socket: self.socket.clone(), detail }
    }

    async fn send(&mut self, msg: &Value) -> Result<(), SimError> {
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(b'\n');
        let socket = self.socket.clone();
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| SimError::Qmp { socket: socket.clone(), detail: "not connected".into() })?;
        conn.writer.write_all(&bytes).await.map_err(|source| SimError::QmpIo {
            socket,
            what: "sending a command".into(),
            source,
        })
    }

    /// Reads until the reply to the command just sent; events on the way
    /// are queued.
    async fn reply(&mut self, command: &str) -> Result<Value, SimError> {
        loop {
            let msg = self.read_message().await?;
            if msg.get("event").is_some() {
                self.push_event(msg);
            } else if let Some(ret) = msg.get("return") {
                return Ok(ret.clone());
            } else if let Some(err) = msg.get("error") {
                return Err(SimError::QmpCommand {
                    socket: self.socket.clone(),
                    command: command.into(),
                    class: err["class"].as_str().unwrap_or("?").into(),
                    desc: err["desc"].as_str().unwrap_or("?").into(),
                });
            } else {
                return Err(self.protocol(format!("unexpected message {msg}")));
            }
        }
    }

    fn push_event(&mut self, event: Value) {
        if self.events.len() == MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    async fn read_message(&mut self) -> Result<Value, SimError> {
        let socket = self.socket.clone();
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| SimError::Qmp { socket: socket.clone(), detail: "not connected".into() })?;
        let n = conn.reader.read_line(&mut conn.line).await.map_err(|source| SimError::QmpIo {
            socket: socket.clone(),
            what: "reading".into(),
            source,
        })?;
        if n == 0 {
            return Err(SimError::Qmp { socket, detail: "QEMU closed the connection".into() });
        }
        let line = std::mem::take(&mut conn.line);
        serde_json::from_str(&line).map_err(|e| SimError::Qmp { socket, detail: format!("bad JSON {line:?}: {e}") })
    }

    /// Waits for an event matching `wanted` (queued or new), bounded in time.
    pub async fn wait_event(&mut self, wanted: impl Fn(&Value) -> bool) -> Result<Value, SimError> {
        if let Some(i) = self.events.iter().position(&wanted) {
            return Ok(self.events.remove(i).unwrap_or_default());
        }
        self.begin();
        let result = self.wait_event_inner(wanted).await;
        self.in_flight = false;
        result
    }

    /// Starts an exchange, first dropping a connection a cancelled one left.
    fn begin(&mut self) {
        if self.in_flight {
            self.conn = None;
        }
        self.in_flight = true;
    }

    async fn wait_event_inner(&mut self, wanted: impl Fn(&Value) -> bool) -> Result<Value, SimError> {
        let deadline = tokio::time::Instant::now() + COMMAND_TIMEOUT;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.read_message()).await {
                Ok(msg) => msg?,
                Err(_) => {
                    self.conn = None;
                    return Err(SimError::QmpTimeout {
                        socket: self.socket.clone(),
                        command: "(waiting for an event)".into(),
                        secs: COMMAND_TIMEOUT.as_secs(),
                    });
                }
            };
            if wanted(&msg) {
                return Ok(msg);
            }
            if msg.get("event").is_some() {
                self.push_event(msg);
            }
        }
    }

    /// Takes the events received so far.
    pub fn take_events(&mut self) -> Vec<Value> {
        self.events.drain(..).collect()
    }
}

/// The backend of one lab VM: QMP for power, boot order and facts;
/// firmware versions and the override kept here.
pub struct QmpBackend {
    qmp: tokio::sync::Mutex<QmpClient>,
    machine: Mutex<MachineState>,
    smbios: Smbios,
    mac: String,
    disk_serial: String,
}

fn is_host_reset(event: &Value) -> bool {
    event["event"] == "RESET" && event["data"]["guest"] == false
}

impl QmpBackend {
    pub fn new(config: &BmcConfig) -> QmpBackend {
        QmpBackend {
            qmp: tokio::sync::Mutex::new(QmpClient::new(&config.qmp)),
            machine: Mutex::new(MachineState::new(config.default_boot, &config.bios_version, &config.bmc_version)),
            smbios: config.smbios.clone(),
            mac: config.mac.to_ascii_lowercase(),
            disk_serial: config.disk_serial.clone(),
        }
    }

    fn machine(&self) -> std::sync::MutexGuard<'_, MachineState> {
        self.machine.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn status(qmp: &mut QmpClient) -> Result<PowerState, SimError> {
        let status = qmp.execute("query-status", None).await?;
        Ok(match status["status"].as_str().unwrap_or("") {
            "running" | "suspended" | "debug" | "guest-panicked" | "internal-error" | "watchdog" => PowerState::On,
            "prelaunch" | "paused" | "shutdown" | "save-vm" | "restore-vm" | "colo" => PowerState::Off,
            _ => PowerState::Unknown,
        })
    }

    /// Sets the NIC's and disk's `bootindex` so `first` boots first.
    async fn apply_boot_order(qmp: &mut QmpClient, first: BootTarget) -> Result<(), SimError> {
        let (nic, disk) = bootindexes(first);
        let (winner, loser, loser_index) = if nic == 1 { (NIC_ID, DISK_ID, disk) } else { (DISK_ID, NIC_ID, nic) };
        let set = |path: &str, value: i64| json!({ "path": path, "property": "bootindex", "value": value });
        // QEMU refuses an index any device holds, the device itself
        // included: clear both before handing them out.
        qmp.execute("qom-set", Some(set(loser, -1))).await?;
        qmp.execute("qom-set", Some(set(winner, -1))).await?;
        qmp.execute("qom-set", Some(set(winner, 1))).await?;
        qmp.execute("qom-set", Some(set(loser, loser_index))).await?;
        Ok(())
    }

    /// After a boot: use up a one-time override (putting the default order
    /// back) and start a staged BIOS.
    async fn after_boot(&self, qmp: &mut QmpClient) -> Result<(), SimError> {
        let (before, after) = {
            let mut m = self.machine();
            let before = m.first_boot_device();
            m.after_boot();
            (before, m.first_boot_device())
        };
        if before != after {
            Self::apply_boot_order(qmp, after).await?;
        }
        Ok(())
    }

    /// Guest reboots seen in QMP events count as boots.
    async fn follow_guest(&self, qmp: &mut QmpClient) -> Result<(), SimError> {
        let guest_resets =
            qmp.take_events().iter().filter(|e| e["event"] == "RESET" && e["data"]["guest"] == true).count();
        if guest_resets > 0 {
            tracing::debug!(socket = %qmp.socket.display(), "guest rebooted");
            self.after_boot(qmp).await?;
        }
        Ok(())
    }

    /// `system_reset`, waiting until QEMU has done it (it runs in QEMU's
    /// main loop after the command returns).
    async fn reset(qmp: &mut QmpClient) -> Result<(), SimError> {
        qmp.execute("system_reset", None).await?;
        qmp.wait_event(is_host_reset).await?;
        Ok(())
    }
}

impl Backend for QmpBackend {
    async fn power_state(&self) -> Result<PowerState, SimError> {
        let mut qmp = self.qmp.lock().await;
        let state = Self::status(&mut qmp).await?;
        self.follow_guest(&mut qmp).await?;
        Ok(state)
    }

    async fn power(&self, action: PowerAction) -> Result<(), SimError> {
        let mut qmp = self.qmp.lock().await;
        let qmp = &mut *qmp;
        let on = Self::status(qmp).await? == PowerState::On;
        self.follow_guest(qmp).await?;
        tracing::info!(socket = %qmp.socket.display(), ?action, was_on = on, "power action");
        match action {
            PowerAction::On if on => return Ok(()),
            PowerAction::ForceOff | PowerAction::GracefulOff if !on => return Ok(()),
            PowerAction::ForceOff => {
                qmp.execute("stop", None).await?;
                return Ok(());
            }
            PowerAction::GracefulOff => {
                qmp.execute("system_powerdown", None).await?;
                return Ok(());
            }
            PowerAction::Reset if on => Self::reset(qmp).await?,
            PowerAction::Cycle if on => {
                qmp.execute("stop", None).await?;
                Self::reset(qmp).await?;
                qmp.execute("cont", None).await?;
            }
            // Off, or paused after a guest poweroff (which needs a reset
            // before `cont`): power on.
            PowerAction::On | PowerAction::Reset | PowerAction::Cycle => {
                Self::reset(qmp).await?;
                qmp.execute("cont", None).await?;
            }
        }
        self.after_boot(qmp).await
    }

    async fn set_boot(&self, target: Option<BootTarget>, once: bool) -> Result<(), SimError> {
        let mut qmp = self.qmp.lock().await;
        let first = {
            let mut m = self.machine();
            m.set_override(target, once)?;
            m.first_boot_device()
        };
        Self::apply_boot_order(&mut qmp, first).await
    }

    async fn boot_override(&self) -> Result<Option<BootOverride>, SimError> {
        Ok(self.machine().boot_override)
    }

    async fn facts(&self) -> Result<SystemFacts, SimError> {
        let mut qmp = self.qmp.lock().await;
        let qmp = &mut *qmp;
        let cpus = qmp.execute("query-cpus-fast", None).await?.as_array().map_or(0, Vec::len) as u32;
        let mem = qmp.execute("query-memory-size-summary", None).await?;
        let memory_bytes = mem["base-memory"].as_u64().unwrap_or(0) + mem["plugged-memory"].as_u64().unwrap_or(0);
        let mut disks = Vec::new();
        for block in qmp.execute("query-block", None).await?.as_array().cloned().unwrap_or_default() {
            let Some(size) = block["inserted"]["image"]["virtual-size"].as_u64() else {
                continue; // an empty removable drive
            };
            // `qdev` is `/machine/peripheral/disk0/virtio-backend` for a device with an id.
            let qdev = block["qdev"].as_str().unwrap_or("");
            let id = qdev.strip_prefix("/machine/peripheral/").and_then(|p| p.split('/').next()).unwrap_or(qdev);
            let id = if id.is_empty() { block["device"].as_str().unwrap_or("disk").to_string() } else { id.into() };
            let serial = match qmp.execute("qom-get", Some(json!({ "path": id, "property": "serial" }))).await {
                Ok(Value::String(s)) if !s.is_empty() => Some(s),
                _ if id == DISK_ID => Some(self.disk_serial.clone()),
                _ => None,
            };
            disks.push(DiskFact { id, size_bytes: size, serial });
        }
        let mac = match qmp.execute("query-rx-filter", Some(json!({ "name": NIC_ID }))).await {
            Ok(filters) => filters[0]["main-mac"].as_str().map_or_else(|| self.mac.clone(), str::to_ascii_lowercase),
            Err(_) => self.mac.clone(),
        };
        let mut smbios = self.smbios.clone();
        if let Ok(uuid) = qmp.execute("query-uuid", None).await {
            if let Some(u) = uuid["UUID"].as_str().filter(|u| !u.starts_with("00000000-0000-0000")) {
                smbios.uuid = u.to_ascii_lowercase();
            }
        }
        self.follow_guest(qmp).await?;
        Ok(SystemFacts { cpus, memory_bytes, disks, nics: vec![NicFact { id: NIC_ID.into(), mac }], smbios })
    }

    async fn firmware(&self) -> Result<FirmwareVersions, SimError> {
        Ok(self.machine().firmware.clone())
    }

    async fn update_firmware(&self, kind: FirmwareKind, version: String) -> Result<(), SimError> {
        self.machine().install(kind, version);
        Ok(())
    }

    async fn housekeeping(&self) {
        let mut qmp = self.qmp.lock().await;
        // Any command reads the events queued since the last one.
        let result = match Self::status(&mut qmp).await {
            Ok(_) => self.follow_guest(&mut qmp).await,
            Err(err) => Err(err),
        };
        if let Err(err) = result {
            tracing::debug!(error = %err, "QMP housekeeping");
        }
    }
}
