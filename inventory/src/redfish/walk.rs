//! Walking a BMC's resource tree into a [`BmcInventory`].
//!
//! Only links the BMC gives are followed (a System without `Processors`
//! is not asked for `/Processors`), one request at a time (BMCs are slow
//! and some drop concurrent requests). A section that fails (HTTP error,
//! malformed JSON, timeout) is recorded in `errors` and the walk goes on;
//! only an unreachable service root, a refused connection or a refused
//! login fail the call. The mapping itself is in `map`.

use serde_json::Value;

use super::client::RedfishClient;
use super::map::{self, link, links};
use super::quirks::{self, Vendor};
use crate::oob::{BmcInventory, Drive, OobError, SectionError, SensorKind};

struct Walk<'a> {
    c: &'a RedfishClient,
    inv: BmcInventory,
}

impl Walk<'_> {
    /// Records a section failure, or passes on the ones that end the walk.
    fn record(&mut self, section: &str, e: OobError) -> Result<(), OobError> {
        if matches!(e, OobError::Auth { .. } | OobError::Connect { .. }) {
            return Err(e);
        }
        tracing::warn!(bmc = %self.c.peer(), section, error = %e, "inventory section failed");
        self.inv.errors.push(SectionError { section: section.to_owned(), error: e.to_string() });
        Ok(())
    }

    async fn get(&mut self, section: &str, path: &str) -> Result<Option<Value>, OobError> {
        match self.c.get(path).await {
            Ok(v) => Ok(Some(v)),
            Err(e) => self.record(section, e).map(|()| None),
        }
    }

    /// The members of a collection that could be read.
    async fn collection(&mut self, section: &str, path: &str) -> Result<Vec<Value>, OobError> {
        let members = match self.c.members(path).await {
            Ok(m) => m,
            Err(e) => return self.record(section, e).map(|()| Vec::new()),
        };
        let mut out = Vec::with_capacity(members.len());
        for m in members {
            if let Some(v) = self.get(section, &m).await? {
                out.push(v);
            }
        }
        Ok(out)
    }

    async fn system(&mut self, root: &Value) -> Result<Option<Value>, OobError> {
        let Some(systems) = link(root, &["Systems"]) else {
            return Ok(None);
        };
        let members = match self.c.members(systems).await {
            Ok(m) => m,
            Err(e) => return self.record("system", e).map(|()| None),
        };
        for m in members {
            let Some(sys) = self.get("system", &m).await? else { continue };
            let ty = sys.get("@odata.type").and_then(Value::as_str).unwrap_or("#ComputerSystem");
            if ty.contains("ComputerSystem") {
                return Ok(Some(sys));
            }
        }
        Ok(None)
    }

    async fn storage(&mut self, sys: &Value) -> Result<(), OobError> {
        if let Some(path) = link(sys, &["Storage"]) {
            for ctrl in self.collection("storage", path).await? {
                for d in links(&ctrl, &["Drives"]) {
                    if let Some(drive) = self.get("storage", d).await?.as_ref().and_then(map::drive) {
                        self.inv.drives.push(drive);
                    }
                }
            }
        }
        if let Some(path) = link(sys, &["SimpleStorage"]) {
            // Devices already read as Storage drives are not counted twice.
            let from_storage = self.inv.drives.len();
            for ctrl in self.collection("simple_storage", path).await? {
                let devices = ctrl.get("Devices").and_then(Value::as_array).into_iter().flatten();
                for d in devices.filter_map(map::simple_device) {
                    let dup = |x: &Drive| x.model == d.model && x.size_bytes == d.size_bytes;
                    if !self.inv.drives[..from_storage].iter().any(dup) {
                        self.inv.drives.push(d);
                    }
                }
            }
        }
        Ok(())
    }

    async fn chassis(&mut self, root: &Value, sys: Option<&Value>) -> Result<(), OobError> {
        let mut paths: Vec<String> =
            sys.map(|s| links(s, &["Links", "Chassis"])).unwrap_or_default().into_iter().map(str::to_owned).collect();
        if paths.is_empty() {
            if let Some(coll) = link(root, &["Chassis"]) {
                match self.c.members(coll).await {
                    Ok(m) => paths = m,
                    Err(e) => self.record("chassis", e)?,
                }
            }
        }
        for path in paths {
            let Some(ch) = self.get("chassis", &path).await? else { continue };
            self.power(&ch).await?;
            self.thermal(&ch).await?;
        }
        Ok(())
    }

    async fn power(&mut self, ch: &Value) -> Result<(), OobError> {
        let before = self.inv.power_supplies.len();
        if let Some(sub_path) = link(ch, &["PowerSubsystem"]) {
            if let Some(sub) = self.get("power_subsystem", sub_path).await? {
                if let Some(p) = link(&sub, &["PowerSupplies"]) {
                    let psus = self.collection("power_supplies", p).await?;
                    self.inv.power_supplies.extend(psus.iter().filter_map(map::power_supply));
                }
                if let Some(p) = link(&sub, &["Batteries"]) {
                    let batteries = self.collection("batteries", p).await?;
                    self.inv.batteries.extend(batteries.iter().map(map::battery));
                }
            }
        }
        if let Some(power_path) = link(ch, &["Power"]) {
            if let Some(power) = self.get("power", power_path).await? {
                let arr = |k: &str| power.get(k).and_then(Value::as_array).cloned().unwrap_or_default();
                if self.inv.power_supplies.len() == before {
                    self.inv.power_supplies.extend(arr("PowerSupplies").iter().filter_map(map::power_supply));
                }
                let sensors = &mut self.inv.sensors;
                sensors.extend(arr("PowerControl").iter().filter_map(|s| map::sensor(s, SensorKind::Power)));
                sensors.extend(arr("Voltages").iter().filter_map(|s| map::sensor(s, SensorKind::Voltage)));
            }
        }
        Ok(())
    }

    async fn thermal(&mut self, ch: &Value) -> Result<(), OobError> {
        if let Some(path) = link(ch, &["Thermal"]) {
            if let Some(th) = self.get("thermal", path).await? {
                let arr = |k: &str| th.get(k).and_then(Value::as_array).cloned().unwrap_or_default();
                let sensors = &mut self.inv.sensors;
                sensors.extend(arr("Temperatures").iter().filter_map(|s| map::sensor(s, SensorKind::Temperature)));
                sensors.extend(arr("Fans").iter().filter_map(|s| map::sensor(s, SensorKind::Fan)));
            }
            return Ok(());
        }
        let Some(path) = link(ch, &["ThermalSubsystem"]) else { return Ok(()) };
        let Some(sub) = self.get("thermal_subsystem", path).await? else { return Ok(()) };
        if let Some(p) = link(&sub, &["Fans"]) {
            let fans = self.collection("fans", p).await?;
            self.inv.sensors.extend(fans.iter().filter_map(|s| map::sensor(s, SensorKind::Fan)));
        }
        if let Some(p) = link(&sub, &["ThermalMetrics"]) {
            if let Some(m) = self.get("thermal_metrics", p).await? {
                let temps = m.get("TemperatureReadingsCelsius").and_then(Value::as_array).into_iter().flatten();
                self.inv.sensors.extend(temps.filter_map(|t| {
                    let mut t = t.clone();
                    if t.get("Name").is_none() {
                        t["Name"] = t.get("DeviceName").cloned().unwrap_or(Value::Null);
                    }
                    map::sensor(&t, SensorKind::Temperature)
                }));
            }
        }
        Ok(())
    }

    async fn firmware(&mut self, root: &Value, vendor: Vendor) -> Result<(), OobError> {
        let Some(path) = link(root, &["UpdateService"]) else { return Ok(()) };
        let Some(us) = self.get("firmware", path).await? else { return Ok(()) };
        let Some(fi) = link(&us, &["FirmwareInventory"]) else { return Ok(()) };
        let all = self.collection("firmware", fi).await?;
        self.inv
            .firmware
            .extend(all.iter().filter_map(map::firmware).filter(|f| !quirks::skip_firmware_entry(vendor, &f.id)));
        Ok(())
    }
}

impl RedfishClient {
    /// Everything the BMC reports about its machine: the first System (or
    /// the only one), its parts, the chassis' power and thermal readings,
    /// batteries and firmware. Broken sections end up in `errors`.
    pub async fn inventory(&self) -> Result<BmcInventory, OobError> {
        let root = self.service_root().await?;
        let mut w = Walk { c: self, inv: BmcInventory::default() };
        let sys = w.system(&root).await?;
        let vendor = Vendor::detect(&root, sys.as_ref());
        tracing::debug!(bmc = %self.peer(), ?vendor, "walking inventory");
        if let Some(sys) = &sys {
            w.inv.system = map::system(sys);
            if let Some(p) = link(sys, &["SecureBoot"]) {
                w.inv.system.secure_boot = w.get("secure_boot", p).await?.as_ref().and_then(map::secure_boot);
            }
            if let Some(p) = link(sys, &["Processors"]) {
                let cpus = w.collection("processors", p).await?;
                w.inv.processors = cpus.iter().filter_map(map::processor).collect();
            }
            if let Some(p) = link(sys, &["Memory"]) {
                let dimms = w.collection("memory", p).await?;
                w.inv.memory = dimms.iter().filter_map(map::dimm).collect();
            }
            w.storage(sys).await?;
            if let Some(p) = link(sys, &["EthernetInterfaces"]) {
                let nics = w.collection("nics", p).await?;
                w.inv.nics = nics.iter().filter_map(map::nic).collect();
            }
        } else if !w.inv.errors.iter().any(|e| e.section == "system") {
            w.record("system", self.malformed("/redfish/v1/Systems", "no ComputerSystem member"))?;
        }
        w.chassis(&root, sys.as_ref()).await?;
        w.firmware(&root, vendor).await?;
        Ok(w.inv)
    }
}
