//! What a refresh campaign is: its targets, action, schedule, rollout
//! policy and gates as the operator asked for them, its state, and each
//! node's progress. Plain data with serde shapes (the API's and the
//! store's JSON columns) and the schedule arithmetic.
//!
//! Deciding what to do next is `engine`'s; doing it is `runner`'s;
//! storing it is `store::campaign`'s.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// A campaign with its nodes' progress, as stored and shown.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Campaign {
    pub id: String,
    pub name: String,
    pub targets: Targets,
    pub action: Action,
    pub schedule: Schedule,
    pub rollout: Rollout,
    pub gates: Gates,
    pub state: CampaignState,
    /// Why it is held, paused or failed.
    pub reason: Option<String>,
    /// Failed nodes an operator has seen and resumed past: the failure
    /// policy counts failures beyond these.
    pub acknowledged_failures: u32,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// When the first node started.
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
}

/// Which machines: listed ones and every machine in the listed racks
/// (resolved once, when the campaign is created).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    #[serde(default)]
    pub machines: Vec<String>,
    #[serde(default)]
    pub racks: Vec<String>,
}

/// What is done to each node. JSON: `{"firmware": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    Firmware(FirmwareAction),
    /// Reinstall the OS with `image`, keeping each machine's deploy
    /// settings; drain first, roll back on failure (`os_refresh`).
    OsRefresh {
        image: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FirmwareAction {
    /// The FirmwareInventory id the BMC lists (`BIOS`, `BMC`, ...).
    pub component: String,
    /// A firmware file uploaded to Slipway (`PUT /api/v1/firmware/{name}`),
    /// served to the BMC from the boot HTTP face.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    /// The SHA-256 of `firmware`, pinned when the campaign is created (the
    /// file as uploaded then): the BMC is served exactly that content,
    /// even if a file of the same name is uploaded again. Given in the
    /// request, it must match the uploaded file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub sha256: Option<String>,
    /// Or an image URL the BMC can fetch by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<String>,
    /// The version FirmwareInventory shows once the update is in place.
    pub version: String,
}

impl FirmwareAction {
    /// BMC firmware runs at once; every other component (BIOS, device
    /// firmware) starts at the host's next reset.
    pub fn needs_host_reset(&self) -> bool {
        !self.component.eq_ignore_ascii_case("BMC")
    }
}

/// When nodes may start. JSON: `"now"`, `{"at": "2025-06-07T02:00:00Z"}`
/// or `{"window": {"cron": "0 2 * * SAT", "timezone": "UTC", "minutes": 240}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    Now,
    /// From this time on (RFC 3339).
    At(String),
    /// Only inside a window: it opens at each time `cron` matches (five
    /// fields, in `timezone`) and lasts `minutes`.
    Window(Window),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub cron: String,
    #[serde(default = "utc")]
    pub timezone: String,
    pub minutes: u32,
}

fn utc() -> String {
    "UTC".into()
}

/// The longest window: a week.
pub const MAX_WINDOW_MINUTES: u32 = 7 * 24 * 60;

/// Why a schedule is not valid; `field` is relative to `schedule`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct ScheduleError {
    pub field: &'static str,
    pub detail: String,
}

/// A schedule checked once, so the engine's questions cannot fail.
#[derive(Debug, Clone)]
pub enum ParsedSchedule {
    Now,
    At(i64),
    Window { cron: Box<croner::Cron>, tz: chrono_tz::Tz, minutes: u32 },
}

impl Schedule {
    pub fn parse(&self) -> Result<ParsedSchedule, ScheduleError> {
        match self {
            Schedule::Now => Ok(ParsedSchedule::Now),
            Schedule::At(at) => DateTime::parse_from_rfc3339(at)
                .map(|t| ParsedSchedule::At(t.timestamp_millis()))
                .map_err(|e| ScheduleError { field: "at", detail: format!("{at:?} is not RFC 3339: {e}") }),
            Schedule::Window(w) => {
                if w.cron.split_whitespace().count() != 5 {
                    let detail = format!("{:?}: five fields (minute hour day month weekday)", w.cron);
                    return Err(ScheduleError { field: "window.cron", detail });
                }
                let cron = croner::Cron::from_str(&w.cron)
                    .map_err(|e| ScheduleError { field: "window.cron", detail: format!("{:?}: {e}", w.cron) })?;
                let tz = chrono_tz::Tz::from_str(&w.timezone).map_err(|_| ScheduleError {
                    field: "window.timezone",
                    detail: format!("{:?} is not an IANA time zone (UTC, Europe/Berlin)", w.timezone),
                })?;
                if w.minutes == 0 || w.minutes > MAX_WINDOW_MINUTES {
                    let detail = format!("1 to {MAX_WINDOW_MINUTES} (a week)");
                    return Err(ScheduleError { field: "window.minutes", detail });
                }
                Ok(ParsedSchedule::Window { cron: Box::new(cron), tz, minutes: w.minutes })
            }
        }
    }
}

impl ParsedSchedule {
    /// May nodes start at `now_ms`?
    pub fn open_at(&self, now_ms: i64) -> bool {
        match self {
            ParsedSchedule::Now => true,
            ParsedSchedule::At(at) => now_ms >= *at,
            ParsedSchedule::Window { cron, tz, minutes } => {
                let Some(now) = tz.timestamp_millis_opt(now_ms).single() else { return false };
                // The last opening at or before now; open while it lasts.
                match cron.find_previous_occurrence(&now, true) {
                    Ok(opened) => now_ms < opened.timestamp_millis() + i64::from(*minutes) * 60_000,
                    Err(_) => false,
                }
            }
        }
    }

    /// The next time nodes may start, if not now.
    pub fn next_open(&self, now_ms: i64) -> Option<i64> {
        match self {
            _ if self.open_at(now_ms) => None,
            ParsedSchedule::Now => None,
            ParsedSchedule::At(at) => Some(*at),
            ParsedSchedule::Window { cron, tz, .. } => {
                let now = tz.timestamp_millis_opt(now_ms).single()?;
                cron.find_next_occurrence(&now, false).ok().map(|t| t.with_timezone(&Utc).timestamp_millis())
            }
        }
    }
}

/// How fast and in which order nodes go, and when failures stop it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// At most this many nodes in progress at once.
    #[serde(default = "one", alias = "max_unavailable")]
    #[schema(minimum = 1, maximum = 1000)]
    pub batch_size: u32,
    #[serde(default)]
    pub order: Order,
    /// Pause after this many failed nodes (since the last resume).
    #[serde(default = "one")]
    #[schema(minimum = 1)]
    pub max_failures: u32,
    /// Also pause when failed / finished nodes exceeds this (0 < r <= 1).
    #[serde(default)]
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    pub max_failure_ratio: Option<f64>,
}

fn one() -> u32 {
    1
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout { batch_size: 1, order: Order::Listed, max_failures: 1, max_failure_ratio: None }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Listed machines first, in the order given, then the racks' machines.
    #[default]
    Listed,
    /// Rack by rack (by name; machines without a rack last).
    ByRack,
}

/// Conditions for starting a node (a node already in progress finishes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    /// Every UPS feeding a remaining target has at least this charge.
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 100.0)]
    pub ups_min_charge_percent: Option<f64>,
    /// Every UPS feeding a remaining target is on mains (not on battery,
    /// not low, and answering).
    #[serde(default = "yes")]
    pub on_mains: bool,
    /// The health check after an OS refresh: once the new image is written,
    /// the node must be back (its node agent reporting the new image, and
    /// in its cluster when it has one) within this many seconds, or it is
    /// rolled back. Default: the machine's own join deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 10, maximum = 86400)]
    pub back_within_seconds: Option<u64>,
    /// How to drain a node of a cluster Slipway did not form (kubeadm,
    /// k3s, a `command` join, a Swarm joined by endpoint). Without it such
    /// a node is refreshed undrained; a Slipway-formed Swarm is always
    /// drained through its manager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainCommands>,
}

/// Commands the node's own agent runs (`sh -c`, as root) around a refresh
/// that takes the node down (an OS refresh, a firmware update with a
/// host reset).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainCommands {
    /// Before the node goes down, on the node while it is joined; the
    /// refresh goes on only once it exits 0. E.g. `kubectl --kubeconfig
    /// /etc/kubernetes/admin.conf drain "$(hostname)" --ignore-daemonsets
    /// --delete-emptydir-data`.
    #[schema(min_length = 1, max_length = 4096)]
    pub run: String,
    /// Once the node is back (on its new image, or after the reset), and
    /// after a failed `run`; e.g. `kubectl ... uncordon "$(hostname)"`.
    #[schema(min_length = 1, max_length = 4096)]
    pub undo: String,
    /// How long each may take (default 600).
    #[serde(default = "drain_seconds")]
    #[schema(minimum = 1, maximum = 3600)]
    pub timeout_seconds: u32,
}

fn drain_seconds() -> u32 {
    600
}

/// The longest a drain or undrain command may take: an hour (the
/// `DrainCommands` schema repeats these bounds).
pub const MAX_DRAIN_SECONDS: u32 = 3600;
/// The longest drain or undrain command text.
pub const MAX_DRAIN_COMMAND: usize = 4096;

fn yes() -> bool {
    true
}

impl Default for Gates {
    fn default() -> Self {
        Gates { ups_min_charge_percent: None, on_mains: true, back_within_seconds: None, drain: None }
    }
}

inventory::closed_enum!(
    /// `scheduled` (not started) -> `running` <-> `held` (a gate is shut),
    /// `paused` (by an operator or the failure policy; resumed by an
    /// operator), and finally `completed`, `failed` or `cancelled`.
    #[derive(utoipa::ToSchema)]
    CampaignState {
        Scheduled => "scheduled",
        Running => "running",
        Held => "held",
        Paused => "paused",
        Completed => "completed",
        Failed => "failed",
        Cancelled => "cancelled",
    }
);

impl CampaignState {
    pub fn is_final(self) -> bool {
        matches!(self, CampaignState::Completed | CampaignState::Failed | CampaignState::Cancelled)
    }
}

inventory::closed_enum!(
    /// One node: `pending` -> `applying` (the BMC fetches and flashes; an
    /// OS refresh drains and writes) -> `verifying` (reset if needed, read
    /// the version back; an OS refresh waits for the rejoin) -> `done`,
    /// `failed`, or `rolled_back` (an OS refresh that failed and is back
    /// on its previous image; a failure to the pause policy).
    #[derive(utoipa::ToSchema)]
    NodeState {
        Pending => "pending",
        Applying => "applying",
        Verifying => "verifying",
        Done => "done",
        Failed => "failed",
        RolledBack => "rolled_back",
    }
);

impl NodeState {
    pub fn in_flight(self) -> bool {
        matches!(self, NodeState::Applying | NodeState::Verifying)
    }

    pub fn finished(self) -> bool {
        matches!(self, NodeState::Done | NodeState::Failed | NodeState::RolledBack)
    }

    /// Counted by the failure policy.
    pub fn is_failure(self) -> bool {
        matches!(self, NodeState::Failed | NodeState::RolledBack)
    }
}

/// One target machine's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeProgress {
    pub machine_id: String,
    /// Its place in the rollout order.
    pub position: u32,
    pub rack: Option<String>,
    pub state: NodeState,
    /// Why it failed (or a note such as "already at 2.0").
    pub reason: Option<String>,
    /// The BMC task of the update, to poll again after a restart.
    pub task: Option<String>,
    pub old_version: Option<String>,
    pub new_version: Option<String>,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
}

impl NodeProgress {
    pub fn pending(machine_id: &str, position: u32, rack: Option<String>) -> NodeProgress {
        NodeProgress {
            machine_id: machine_id.into(),
            position,
            rack,
            state: NodeState::Pending,
            reason: None,
            task: None,
            old_version: None,
            new_version: None,
            started_at_ms: None,
            finished_at_ms: None,
        }
    }
}

/// Orders resolved targets (`(machine, rack)` in listed order) for the
/// rollout.
pub fn order_nodes(mut machines: Vec<(String, Option<String>)>, order: Order) -> Vec<NodeProgress> {
    if order == Order::ByRack {
        // Stable: listed order within a rack.
        machines.sort_by(|a, b| match (&a.1, &b.1) {
            (Some(x), Some(y)) => x.cmp(y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        });
    }
    machines.into_iter().enumerate().map(|(i, (id, rack))| NodeProgress::pending(&id, i as u32, rack)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp_millis()
    }

    fn window(cron: &str, tz: &str, minutes: u32) -> ParsedSchedule {
        Schedule::Window(Window { cron: cron.into(), timezone: tz.into(), minutes }).parse().unwrap()
    }

    #[test]
    fn windows_open_at_their_cron_time_for_their_length() {
        // 2025-06-07 is a Saturday.
        let sat2 = window("0 2 * * SAT", "UTC", 240);
        for (at, open) in [
            ("2025-06-07T01:59:59Z", false),
            ("2025-06-07T02:00:00Z", true),
            ("2025-06-07T05:59:59Z", true),
            ("2025-06-07T06:00:00Z", false),
            ("2025-06-08T03:00:00Z", false),
            ("2025-06-14T03:00:00Z", true),
        ] {
            assert_eq!(sat2.open_at(ms(at)), open, "{at}");
        }
        assert_eq!(sat2.next_open(ms("2025-06-07T07:00:00Z")), Some(ms("2025-06-14T02:00:00Z")));
        assert_eq!(sat2.next_open(ms("2025-06-07T03:00:00Z")), None);
        // In Berlin (summer time, UTC+2) 02:00 is 00:00 UTC.
        let berlin = window("0 2 * * SAT", "Europe/Berlin", 60);
        assert!(berlin.open_at(ms("2025-06-07T00:30:00Z")));
        assert!(!berlin.open_at(ms("2025-06-07T02:30:00Z")));
    }

    #[test]
    fn schedules_are_checked_field_by_field() {
        let check = |s: Schedule, field: &str| assert_eq!(s.parse().unwrap_err().field, field, "{s:?}");
        let w = |cron: &str, tz: &str, minutes| {
            Schedule::Window(Window { cron: cron.into(), timezone: tz.into(), minutes })
        };
        check(Schedule::At("tomorrow".into()), "at");
        check(w("0 2 * *", "UTC", 60), "window.cron");
        check(w("0 2 * * FUNDAY", "UTC", 60), "window.cron");
        check(w("0 2 * * SAT", "Mars/Olympus", 60), "window.timezone");
        check(w("0 2 * * SAT", "UTC", 0), "window.minutes");
        check(w("0 2 * * SAT", "UTC", MAX_WINDOW_MINUTES + 1), "window.minutes");
        let at = Schedule::At("2025-06-07T02:00:00+02:00".into()).parse().unwrap();
        assert!(at.open_at(ms("2025-06-07T00:00:00Z")) && !at.open_at(ms("2025-06-06T23:59:59Z")));
    }

    #[test]
    fn shapes_in_json() {
        let s: Schedule = serde_json::from_str(r#""now""#).unwrap();
        assert_eq!(s, Schedule::Now);
        let s: Schedule = serde_json::from_str(r#"{"window": {"cron": "0 2 * * SAT", "minutes": 240}}"#).unwrap();
        assert_eq!(s, Schedule::Window(Window { cron: "0 2 * * SAT".into(), timezone: "UTC".into(), minutes: 240 }));
        let a: Action =
            serde_json::from_str(r#"{"firmware": {"component": "BIOS", "firmware": "b2", "version": "2.0"}}"#).unwrap();
        assert!(matches!(&a, Action::Firmware(f) if f.needs_host_reset() && f.firmware.as_deref() == Some("b2")));
        let r: Rollout = serde_json::from_str(r#"{"max_unavailable": 3, "order": "by_rack"}"#).unwrap();
        assert_eq!((r.batch_size, r.order, r.max_failures), (3, Order::ByRack, 1));
    }

    #[test]
    fn by_rack_keeps_listed_order_within_a_rack() {
        let m = |id: &str, rack: Option<&str>| (id.to_string(), rack.map(str::to_string));
        let nodes =
            order_nodes(vec![m("a", Some("r2")), m("b", None), m("c", Some("r1")), m("d", Some("r2"))], Order::ByRack);
        let ids: Vec<_> = nodes.iter().map(|n| (n.machine_id.as_str(), n.position)).collect();
        assert_eq!(ids, [("c", 0), ("a", 1), ("d", 2), ("b", 3)]);
    }
}
