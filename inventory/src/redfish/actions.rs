//! Actions that read or change one machine: power state and reset, the
//! one-time boot override, firmware inventory and SimpleUpdate, task
//! polling, and the UPS-like view of Redfish batteries.
//!
//! Which `ResetType` a [`PowerAction`] becomes is a pure decision
//! ([`plan_reset`]) over the values the BMC advertises, inline
//! (`ResetType@Redfish.AllowableValues`) or through `@Redfish.ActionInfo`.
//! A value the BMC does not offer is never sent.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::client::{Answer, RedfishClient};
use super::map::{self, link, text};
use super::quirks::{self, Vendor};
use crate::oob::{BootTarget, FirmwareComponent, OobError, PowerAction, PowerState, UpsState, UpsStatus};

/// How long a ForceOff-then-On cycle waits for the machine to be off.
const OFF_WAIT: Duration = Duration::from_secs(30);

/// A Redfish Task (or Dell Job) as polled by firmware campaigns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    /// `TaskState` (`New`, `Running`, `Completed`, `Exception`, ...) or
    /// Dell's `JobState`, as given.
    pub state: String,
    pub percent: Option<u32>,
    pub messages: Vec<String>,
}

impl TaskInfo {
    /// The task will not change any more.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.state.as_str(),
            "Completed" | "Exception" | "Killed" | "Cancelled" | "Interrupted" | "Failed" | "CompletedWithErrors"
        )
    }
}

/// The `ResetType`s that carry out `action`, in order (empty: nothing to
/// do). `offered` empty means the BMC did not say; the standard value is
/// then tried. `Err` carries what the BMC offered.
pub(crate) fn plan_reset(
    action: PowerAction,
    offered: &[String],
    vendor: Vendor,
    current: Option<PowerState>,
) -> Result<Vec<&'static str>, String> {
    let has = |t: &str| offered.is_empty() || offered.iter().any(|o| o == t);
    let pick = |cands: &[&'static str]| cands.iter().copied().find(|c| has(c)).map(|c| vec![c]);
    let off = current == Some(PowerState::Off);
    let plan = match action {
        PowerAction::On if current == Some(PowerState::On) => Some(vec![]),
        PowerAction::ForceOff | PowerAction::GracefulOff if off => Some(vec![]),
        PowerAction::On => pick(&["On", "ForceOn"]),
        // Off, then on: from off, that is just on.
        PowerAction::Cycle | PowerAction::Reset if off => pick(&["On", "ForceOn"]),
        PowerAction::ForceOff => pick(&["ForceOff"]),
        PowerAction::GracefulOff => pick(&["GracefulShutdown"]).or_else(|| {
            (quirks::push_button_for_graceful(vendor) && has("PushPowerButton")).then(|| vec!["PushPowerButton"])
        }),
        PowerAction::Cycle => pick(&["PowerCycle", "ForceRestart"]).or_else(|| {
            let on = ["On", "ForceOn"].into_iter().find(|c| has(c))?;
            has("ForceOff").then(|| vec!["ForceOff", on])
        }),
        PowerAction::Reset => pick(&["ForceRestart", "GracefulRestart", "PowerCycle"]),
    };
    plan.ok_or_else(|| format!("power {action:?} (ResetType offered: [{}])", offered.join(", ")))
}

/// A Redfish Battery as a UPS: NUT-style flags from `ChargeState`, the
/// charge and `StateOfHealthPercent`/`Status.Health`.
pub(crate) fn battery_ups(b: &Value) -> UpsState {
    let charge = map::battery_charge(b);
    let mut flags: Vec<String> = Vec::new();
    let mut flag = |f: &str| flags.push(f.to_owned());
    let on_battery = matches!(b.get("ChargeState").and_then(Value::as_str), Some("Discharging"));
    match b.get("ChargeState").and_then(Value::as_str) {
        Some("Discharging") => {
            flag("OB");
            flag("DISCHRG");
        }
        Some("Charging") => {
            flag("OL");
            flag("CHRG");
        }
        Some(_) => flag("OL"),
        None => {}
    }
    if on_battery && charge.is_some_and(|c| c <= 20.0) {
        flag("LB");
    }
    let worn = map::num(b, "StateOfHealthPercent").is_some_and(|h| h < 50.0);
    let critical = b.pointer("/Status/Health").and_then(Value::as_str) == Some("Critical");
    if worn || (critical && !on_battery) {
        flag("RB");
    }
    UpsState {
        status: UpsStatus::from_flags(&flags),
        flags,
        charge_percent: charge,
        runtime_secs: None,
        load_percent: None,
        input_voltage: None,
        manufacturer: text(b, "Manufacturer"),
        model: text(b, "Model"),
    }
}

impl RedfishClient {
    /// The first System's path and its answer (with the ETag).
    async fn system_answer(&self) -> Result<(String, Answer), OobError> {
        let root = self.service_root().await?;
        let systems = link(&root, &["Systems"])
            .ok_or_else(|| OobError::Unsupported { peer: self.peer().into(), what: "Systems".into() })?;
        for m in self.members(systems).await? {
            let answer = self.get_answer(&m).await?;
            let ty = answer.body.get("@odata.type").and_then(Value::as_str).unwrap_or("#ComputerSystem");
            if ty.contains("ComputerSystem") {
                return Ok((m, answer));
            }
        }
        Err(self.malformed(systems, "no ComputerSystem member"))
    }

    /// The machine's power as the BMC reports it.
    pub async fn power_state(&self) -> Result<PowerState, OobError> {
        let (path, sys) = self.system_answer().await?;
        sys.body.get("PowerState").and_then(map::power_state).ok_or_else(|| self.malformed(&path, "no PowerState"))
    }

    /// Carries out `action` with the ResetTypes this BMC offers. A Cycle
    /// without PowerCycle/ForceRestart is ForceOff, wait for Off, On.
    pub async fn power(&self, action: PowerAction) -> Result<(), OobError> {
        let (path, sys) = self.system_answer().await?;
        let vendor = Vendor::detect(&*self.service_root().await?, Some(&sys.body));
        let unsupported = |what: String| OobError::Unsupported { peer: self.peer().into(), what };
        let reset = sys
            .body
            .pointer("/Actions/#ComputerSystem.Reset")
            .ok_or_else(|| unsupported("ComputerSystem.Reset".into()))?;
        let target = reset
            .get("target")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{path}/Actions/ComputerSystem.Reset"));
        let offered = self.reset_types(reset).await;
        let current = sys.body.get("PowerState").and_then(map::power_state);
        let plan = plan_reset(action, &offered, vendor, current).map_err(unsupported)?;
        tracing::info!(bmc = %self.peer(), ?action, ?plan, "power");
        for (i, reset_type) in plan.iter().enumerate() {
            if i > 0 {
                self.wait_off().await?;
            }
            self.request(Method::POST, &target, Some(&json!({ "ResetType": reset_type })), None).await?;
        }
        Ok(())
    }

    async fn reset_types(&self, reset: &Value) -> Vec<String> {
        let strings = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect()
        };
        let inline = strings(reset.get("ResetType@Redfish.AllowableValues"));
        if !inline.is_empty() {
            return inline;
        }
        let Some(info) = reset.get("@Redfish.ActionInfo").and_then(Value::as_str) else { return inline };
        match self.get(info).await {
            Ok(doc) => {
                let params = doc.get("Parameters").and_then(Value::as_array).into_iter().flatten();
                let p = params.into_iter().find(|p| p.get("Name").and_then(Value::as_str) == Some("ResetType"));
                strings(p.and_then(|p| p.get("AllowableValues")))
            }
            Err(e) => {
                tracing::warn!(bmc = %self.peer(), error = %e, "cannot read reset ActionInfo");
                inline
            }
        }
    }

    async fn wait_off(&self) -> Result<(), OobError> {
        let start = Instant::now();
        while start.elapsed() < OFF_WAIT {
            if self.power_state().await? == PowerState::Off {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(OobError::Protocol {
            peer: self.peer().into(),
            detail: format!("not off {} s after ForceOff", OFF_WAIT.as_secs()),
        })
    }

    /// Boots `target` next time only. The mode (UEFI or Legacy) is sent when
    /// the BMC shows one (always on Supermicro); `If-Match` carries the
    /// ETag when the BMC gives one. The System is read back afterwards.
    pub async fn set_boot_once(&self, target: BootTarget, uefi: bool) -> Result<(), OobError> {
        self.set_boot_once_in(target, Some(uefi)).await
    }

    /// [`Self::set_boot_once`] keeping the boot mode the BMC shows now
    /// (UEFI stays UEFI): for callers that do not know the machine's mode.
    pub async fn set_boot_once_keep_mode(&self, target: BootTarget) -> Result<(), OobError> {
        self.set_boot_once_in(target, None).await
    }

    async fn set_boot_once_in(&self, target: BootTarget, uefi: Option<bool>) -> Result<(), OobError> {
        let (path, sys) = self.system_answer().await?;
        let vendor = Vendor::detect(&*self.service_root().await?, Some(&sys.body));
        let boot = sys
            .body
            .get("Boot")
            .ok_or_else(|| OobError::Unsupported { peer: self.peer().into(), what: "Boot override".into() })?;
        let want = match target {
            BootTarget::Pxe => "Pxe",
            BootTarget::UefiHttp => "UefiHttp",
            BootTarget::Disk => "Hdd",
        };
        let allowed: Vec<&str> = boot
            .get("BootSourceOverrideTarget@Redfish.AllowableValues")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !allowed.is_empty() && !allowed.contains(&want) {
            let what = format!("boot target {want} (offered: [{}])", allowed.join(", "));
            return Err(OobError::Unsupported { peer: self.peer().into(), what });
        }
        let forced_mode = quirks::boot_mode_always(vendor);
        let mut fields = json!({ "BootSourceOverrideTarget": want, "BootSourceOverrideEnabled": "Once" });
        let current_mode = boot.get("BootSourceOverrideMode").and_then(Value::as_str).map(str::to_string);
        if current_mode.is_some() || forced_mode {
            let mode = match (uefi, current_mode) {
                (Some(true), _) => "UEFI".to_string(),
                (Some(false), _) => "Legacy".to_string(),
                (None, Some(mode)) => mode,
                (None, None) => "UEFI".to_string(),
            };
            fields["BootSourceOverrideMode"] = json!(mode);
        }
        let etag = sys.etag();
        let result = self.request(Method::PATCH, &path, Some(&json!({ "Boot": fields })), etag.as_deref()).await;
        match result {
            Ok(_) => {}
            Err(OobError::Http { status: 412 | 428, .. }) => {
                // Stale or missing ETag: read it again and retry once.
                let fresh = self.get_answer(&path).await?.etag();
                self.request(Method::PATCH, &path, Some(&json!({ "Boot": fields })), fresh.as_deref()).await?;
            }
            Err(OobError::Http { status: 400, .. })
                if fields.get("BootSourceOverrideMode").is_some() && !forced_mode =>
            {
                // Some BMCs refuse the mode in the same PATCH: send the minimum.
                fields.as_object_mut().map(|o| o.remove("BootSourceOverrideMode"));
                tracing::info!(bmc = %self.peer(), "boot PATCH with mode refused: retrying without");
                let fresh = self.get_answer(&path).await?.etag();
                self.request(Method::PATCH, &path, Some(&json!({ "Boot": fields })), fresh.as_deref()).await?;
            }
            Err(e) => return Err(e),
        }
        let after = self.get(&path).await?;
        let shown = after.pointer("/Boot/BootSourceOverrideTarget").and_then(Value::as_str).unwrap_or("none");
        if shown != want {
            return Err(OobError::Protocol {
                peer: self.peer().into(),
                detail: format!("boot override to {want} accepted but {path} shows {shown}"),
            });
        }
        Ok(())
    }

    /// The firmware components the UpdateService lists (running versions).
    pub async fn firmware(&self) -> Result<Vec<FirmwareComponent>, OobError> {
        let root = self.service_root().await?;
        let vendor = Vendor::detect(&root, None);
        let us = self.update_service(&root).await?;
        let Some(fi) = link(&us, &["FirmwareInventory"]) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for m in self.members(fi).await? {
            if let Some(f) = map::firmware(&self.get(&m).await?) {
                if !quirks::skip_firmware_entry(vendor, &f.id) {
                    out.push(f);
                }
            }
        }
        Ok(out)
    }

    async fn update_service(&self, root: &Value) -> Result<Value, OobError> {
        let path = link(root, &["UpdateService"])
            .ok_or_else(|| OobError::Unsupported { peer: self.peer().into(), what: "UpdateService".into() })?;
        self.get(path).await
    }

    /// Asks the BMC to fetch and apply `image_uri` (UpdateService.SimpleUpdate),
    /// on `targets` (resource URIs) if any. Returns the task to poll with
    /// [`RedfishClient::task_state`] when the BMC gives one.
    pub async fn simple_update(&self, image_uri: &str, targets: &[String]) -> Result<Option<String>, OobError> {
        let root = self.service_root().await?;
        let us = self.update_service(&root).await?;
        let unsupported = |what: String| OobError::Unsupported { peer: self.peer().into(), what };
        let action =
            us.pointer("/Actions/#UpdateService.SimpleUpdate").ok_or_else(|| unsupported("SimpleUpdate".into()))?;
        let target = action.get("target").and_then(Value::as_str).ok_or_else(|| unsupported("SimpleUpdate".into()))?;
        let offered: Vec<&str> = action
            .get("TransferProtocol@Redfish.AllowableValues")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let scheme = image_uri.split_once("://").map(|(s, _)| s.to_ascii_uppercase()).unwrap_or_default();
        if !offered.is_empty() && !offered.iter().any(|p| p.eq_ignore_ascii_case(&scheme)) {
            return Err(unsupported(format!("SimpleUpdate over {scheme} (offered: [{}])", offered.join(", "))));
        }
        let mut body = json!({ "ImageURI": image_uri });
        if !targets.is_empty() {
            body["Targets"] = json!(targets);
        }
        let answer = self.request(Method::POST, target, Some(&body), None).await?;
        let task = answer.location().or_else(|| {
            let is_task = answer.body.get("@odata.type").and_then(Value::as_str).is_some_and(|t| t.contains("Task"));
            is_task.then(|| map::odata_id(&answer.body).map(str::to_owned)).flatten()
        });
        tracing::info!(bmc = %self.peer(), status = %answer.status, ?task, "SimpleUpdate accepted");
        Ok(task)
    }

    /// The state of a task (or Dell job) returned by [`Self::simple_update`].
    pub async fn task_state(&self, uri: &str) -> Result<TaskInfo, OobError> {
        let answer = self.request(Method::GET, uri, None, None).await?;
        let b = &answer.body;
        let state = text(b, "TaskState").or_else(|| text(b, "JobState"));
        let state = match state {
            Some(s) => s,
            // A task monitor answers with the operation's result once done.
            None if answer.status == StatusCode::OK || answer.status == StatusCode::NO_CONTENT => "Completed".into(),
            None => return Err(self.malformed(uri, "no TaskState")),
        };
        let messages = b.get("Messages").and_then(Value::as_array).into_iter().flatten();
        Ok(TaskInfo {
            state,
            percent: map::num(b, "PercentComplete").map(|p| p.clamp(0.0, 100.0) as u32),
            messages: messages.filter_map(|m| text(m, "Message")).collect(),
        })
    }

    /// Batteries the BMC knows as UPS-like sources, keyed by `@odata.id`:
    /// those of `/redfish/v1/PowerEquipment` power shelves and of each
    /// chassis' `PowerSubsystem/Batteries`. Empty when there are none.
    pub async fn power_equipment_ups(&self) -> Result<Vec<(String, UpsState)>, OobError> {
        let root = self.service_root().await?;
        let mut batteries: Vec<String> = Vec::new();
        if let Some(pe) = link(&root, &["PowerEquipment"]) {
            let pe = self.get(pe).await?;
            if let Some(shelves) = link(&pe, &["PowerShelves"]) {
                for shelf in self.members(shelves).await? {
                    if let Some(b) = link(&self.get(&shelf).await?, &["Batteries"]) {
                        batteries.extend(self.members(b).await?);
                    }
                }
            }
        }
        if let Some(chassis) = link(&root, &["Chassis"]) {
            for ch in self.members(chassis).await? {
                let ch = self.get(&ch).await?;
                let Some(sub) = link(&ch, &["PowerSubsystem"]) else { continue };
                if let Some(b) = link(&self.get(sub).await?, &["Batteries"]) {
                    batteries.extend(self.members(b).await?);
                }
            }
        }
        let mut out = Vec::with_capacity(batteries.len());
        for b in batteries {
            let doc = self.get(&b).await?;
            out.push((b, battery_ups(&doc)));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(
        action: PowerAction,
        offered: &[&str],
        vendor: Vendor,
        cur: PowerState,
    ) -> Result<Vec<&'static str>, String> {
        let offered: Vec<String> = offered.iter().map(|s| s.to_string()).collect();
        plan_reset(action, &offered, vendor, Some(cur))
    }

    #[test]
    fn reset_types_come_from_what_the_bmc_offers() {
        use PowerAction::*;
        use PowerState::{Off, On as Running};
        let ilo5 = ["On", "ForceOff", "GracefulShutdown", "ForceRestart", "Nmi", "PushPowerButton"];
        assert_eq!(plan(Cycle, &ilo5, Vendor::Hpe, Running), Ok(vec!["ForceRestart"]));
        assert_eq!(plan(Cycle, &["On", "ForceOff", "PowerCycle"], Vendor::Other, Running), Ok(vec!["PowerCycle"]));
        assert_eq!(plan(Cycle, &["On", "ForceOff"], Vendor::Other, Running), Ok(vec!["ForceOff", "On"]));
        assert_eq!(plan(Cycle, &ilo5, Vendor::Hpe, Off), Ok(vec!["On"]));
        assert_eq!(plan(GracefulOff, &["On", "PushPowerButton"], Vendor::Hpe, Running), Ok(vec!["PushPowerButton"]));
        assert!(plan(GracefulOff, &["On", "PushPowerButton"], Vendor::Dell, Running)
            .unwrap_err()
            .contains("PushPowerButton"));
        assert_eq!(plan(On, &ilo5, Vendor::Hpe, Running), Ok(vec![]));
        assert_eq!(plan(Reset, &[], Vendor::Other, Running), Ok(vec!["ForceRestart"]));
        assert_eq!(plan(Reset, &["GracefulRestart", "On"], Vendor::Dell, Running), Ok(vec!["GracefulRestart"]));
    }

    #[test]
    fn batteries_read_as_ups_flags() {
        let b = json!({"ChargeState": "Discharging", "CapacityRemainingPercent": 12, "Status": {"Health": "Warning"}});
        let s = battery_ups(&b);
        assert_eq!(
            (s.status, s.flags.clone()),
            (UpsStatus::LowBattery, vec!["OB".into(), "DISCHRG".into(), "LB".into()])
        );
        let b = json!({"ChargeState": "Charging", "ChargePercent": {"Reading": 80.0}, "StateOfHealthPercent": {"Reading": 40}});
        let s = battery_ups(&b);
        assert_eq!((s.status, s.charge_percent), (UpsStatus::Online, Some(80.0)));
        assert!(s.flags.contains(&"RB".to_string()));
    }
}
