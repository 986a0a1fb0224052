//! The simulated BMC's Redfish resources as JSON: pure functions of a
//! `Snapshot` of the machine, shaped after the DMTF schemas (ServiceRoot
//! v1.15, ComputerSystem v1.20, Chassis v1.23, PowerSubsystem v1.1,
//! Manager v1.18, UpdateService v1.13, SoftwareInventory v1.10) closely
//! enough for generic clients (sushy, ours) to read them.

use serde_json::{json, Value};

use inventory::oob::{BootTarget, PowerState};

use super::backend::{BootOverride, FirmwareKind, FirmwareVersions, SystemFacts};

pub const ROOT: &str = "/redfish/v1";
pub const SYSTEM: &str = "/redfish/v1/Systems/1";
pub const CHASSIS: &str = "/redfish/v1/Chassis/1";
pub const MANAGER: &str = "/redfish/v1/Managers/1";
pub const FIRMWARE_INVENTORY: &str = "/redfish/v1/UpdateService/FirmwareInventory";
pub const SESSIONS: &str = "/redfish/v1/SessionService/Sessions";
pub const TASKS: &str = "/redfish/v1/TaskService/Tasks";
pub const VENDOR: &str = "Slipway Lab";
pub const RESET_TYPES: [&str; 5] = ["On", "ForceOff", "GracefulShutdown", "ForceRestart", "PowerCycle"];
pub const BOOT_TARGETS: [&str; 3] = ["None", "Pxe", "Hdd"];

/// What the resources show, read from the backend for one request.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub name: String,
    pub uefi: bool,
    pub power: PowerState,
    pub boot: Option<BootOverride>,
    pub facts: SystemFacts,
    pub firmware: FirmwareVersions,
}

fn odata(id: &str, kind: &str) -> Value {
    json!({ "@odata.id": id, "@odata.type": kind })
}

fn merge(mut base: Value, extra: Value) -> Value {
    if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    base
}

fn link(id: &str) -> Value {
    json!({ "@odata.id": id })
}

/// A resource collection of `members` (their `@odata.id`s).
pub fn collection(id: &str, kind: &str, name: &str, members: &[String]) -> Value {
    merge(
        odata(id, &format!("#{kind}.{kind}")),
        json!({
            "Name": name,
            "Members@odata.count": members.len(),
            "Members": members.iter().map(|m| link(m)).collect::<Vec<_>>(),
        }),
    )
}

pub fn service_root(uuid: &str) -> Value {
    merge(
        odata(ROOT, "#ServiceRoot.v1_15_0.ServiceRoot"),
        json!({
            "Id": "RootService",
            "Name": "Slipway Lab simulated BMC",
            "RedfishVersion": "1.15.0",
            "UUID": uuid,
            "Vendor": VENDOR,
            "Product": "Slipway lab vBMC",
            "Systems": link("/redfish/v1/Systems"),
            "Chassis": link("/redfish/v1/Chassis"),
            "Managers": link("/redfish/v1/Managers"),
            "UpdateService": link("/redfish/v1/UpdateService"),
            "SessionService": link("/redfish/v1/SessionService"),
            "TaskService": link("/redfish/v1/TaskService"),
            "Links": { "Sessions": link(SESSIONS) },
        }),
    )
}

pub fn power_state_name(p: PowerState) -> &'static str {
    match p {
        PowerState::On => "On",
        PowerState::Off => "Off",
        PowerState::PoweringOn => "PoweringOn",
        PowerState::PoweringOff => "PoweringOff",
        PowerState::Unknown => "Unknown",
    }
}

pub fn boot_target_name(t: BootTarget) -> &'static str {
    match t {
        BootTarget::Pxe => "Pxe",
        BootTarget::Disk => "Hdd",
        BootTarget::UefiHttp => "UefiHttp",
    }
}

fn boot_mode(uefi: bool) -> &'static str {
    if uefi {
        "UEFI"
    } else {
        "Legacy"
    }
}

/// UEFI machines only: on for the lab's Secure Boot OVMF, off for the rest.
pub fn secure_boot(enabled: bool) -> Value {
    merge(
        odata(&format!("{SYSTEM}/SecureBoot"), "#SecureBoot.v1_1_0.SecureBoot"),
        json!({
            "Id": "SecureBoot",
            "Name": "UEFI Secure Boot",
            "SecureBootEnable": enabled,
            "SecureBootCurrentBoot": if enabled { "Enabled" } else { "Disabled" },
            "SecureBootMode": "UserMode",
        }),
    )
}

pub fn system(s: &Snapshot) -> Value {
    let f = &s.facts;
    let (target, enabled) = match s.boot {
        None => ("None", "Disabled"),
        Some(o) => (boot_target_name(o.target), if o.once { "Once" } else { "Continuous" }),
    };
    merge(
        odata(SYSTEM, "#ComputerSystem.v1_20_0.ComputerSystem"),
        json!({
            "Id": "1",
            "Name": s.name,
            "HostName": s.name,
            "SystemType": "Virtual",
            "Manufacturer": f.smbios.manufacturer,
            "Model": f.smbios.product,
            "SerialNumber": f.smbios.serial,
            "UUID": f.smbios.uuid,
            "BiosVersion": s.firmware.bios,
            "PowerState": power_state_name(s.power),
            "Status": { "State": "Enabled", "Health": "OK" },
            "Boot": {
                "BootSourceOverrideTarget": target,
                "BootSourceOverrideTarget@Redfish.AllowableValues": BOOT_TARGETS,
                "BootSourceOverrideEnabled": enabled,
                "BootSourceOverrideEnabled@Redfish.AllowableValues": ["Disabled", "Once", "Continuous"],
                "BootSourceOverrideMode": boot_mode(s.uefi),
                "BootSourceOverrideMode@Redfish.AllowableValues": [boot_mode(s.uefi)],
            },
            "ProcessorSummary": {
                "Count": 1,
                "CoreCount": f.cpus,
                "LogicalProcessorCount": f.cpus,
                "Model": "QEMU Virtual CPU",
                "Status": { "State": "Enabled", "Health": "OK" },
            },
            "MemorySummary": {
                "TotalSystemMemoryGiB": f.memory_bytes as f64 / (1u64 << 30) as f64,
                "Status": { "State": "Enabled", "Health": "OK" },
            },
            "Processors": link(&format!("{SYSTEM}/Processors")),
            "Memory": link(&format!("{SYSTEM}/Memory")),
            "Storage": link(&format!("{SYSTEM}/Storage")),
            "EthernetInterfaces": link(&format!("{SYSTEM}/EthernetInterfaces")),
            "SecureBoot": if s.uefi { link(&format!("{SYSTEM}/SecureBoot")) } else { Value::Null },
            "Links": { "Chassis": [link(CHASSIS)], "ManagedBy": [link(MANAGER)] },
            "Actions": {
                "#ComputerSystem.Reset": {
                    "target": format!("{SYSTEM}/Actions/ComputerSystem.Reset"),
                    "ResetType@Redfish.AllowableValues": RESET_TYPES,
                },
            },
        }),
    )
}

pub fn processor(s: &Snapshot) -> Value {
    merge(
        odata(&format!("{SYSTEM}/Processors/1"), "#Processor.v1_18_0.Processor"),
        json!({
            "Id": "1",
            "Name": "Processor 1",
            "Socket": "CPU 1",
            "ProcessorType": "CPU",
            "ProcessorArchitecture": "x86",
            "InstructionSet": "x86-64",
            "Manufacturer": "QEMU",
            "Model": "QEMU Virtual CPU",
            "TotalCores": s.facts.cpus,
            "TotalThreads": s.facts.cpus,
            "Status": { "State": "Enabled", "Health": "OK" },
        }),
    )
}

pub fn dimm(s: &Snapshot) -> Value {
    merge(
        odata(&format!("{SYSTEM}/Memory/1"), "#Memory.v1_17_0.Memory"),
        json!({
            "Id": "1",
            "Name": "DIMM 1",
            "DeviceLocator": "DIMM 0",
            "MemoryDeviceType": "DDR4",
            "CapacityMiB": s.facts.memory_bytes >> 20,
            "OperatingSpeedMhz": 3200,
            "Manufacturer": "QEMU",
            "SerialNumber": format!("{}-DIMM0", s.facts.smbios.serial),
            "Status": { "State": "Enabled", "Health": "OK" },
        }),
    )
}

pub fn storage(s: &Snapshot) -> Value {
    let drives: Vec<Value> =
        (1..=s.facts.disks.len()).map(|n| link(&format!("{SYSTEM}/Storage/1/Drives/{n}"))).collect();
    merge(
        odata(&format!("{SYSTEM}/Storage/1"), "#Storage.v1_15_0.Storage"),
        json!({
            "Id": "1",
            "Name": "virtio block storage",
            "Drives@odata.count": drives.len(),
            "Drives": drives,
            "Status": { "State": "Enabled", "Health": "OK" },
        }),
    )
}

/// Drive `n` (1-based), if there is one.
pub fn drive(s: &Snapshot, n: usize) -> Option<Value> {
    let d = s.facts.disks.get(n.checked_sub(1)?)?;
    Some(merge(
        odata(&format!("{SYSTEM}/Storage/1/Drives/{n}"), "#Drive.v1_17_0.Drive"),
        json!({
            "Id": n.to_string(),
            "Name": d.id,
            "Model": "QEMU VIRTUAL DISK",
            "Manufacturer": "QEMU",
            "SerialNumber": d.serial,
            "CapacityBytes": d.size_bytes,
            "MediaType": "SSD",
            "Protocol": "PCIe",
            "Status": { "State": "Enabled", "Health": "OK" },
        }),
    ))
}

/// Ethernet interface `n` (1-based), if there is one.
pub fn ethernet(s: &Snapshot, n: usize) -> Option<Value> {
    let nic = s.facts.nics.get(n.checked_sub(1)?)?;
    Some(merge(
        odata(&format!("{SYSTEM}/EthernetInterfaces/{n}"), "#EthernetInterface.v1_12_0.EthernetInterface"),
        json!({
            "Id": n.to_string(),
            "Name": nic.id,
            "MACAddress": nic.mac,
            "PermanentMACAddress": nic.mac,
            "SpeedMbps": 1000,
            "LinkStatus": "LinkUp",
            "InterfaceEnabled": true,
            "Status": { "State": "Enabled", "Health": "OK" },
        }),
    ))
}

const PSU: &str = "/redfish/v1/Chassis/1/PowerSubsystem/PowerSupplies/1";

fn psu_fields(s: &Snapshot) -> Value {
    json!({
        "Name": "PSU 1",
        "Model": "Lab PSU 500W",
        "Manufacturer": VENDOR,
        "SerialNumber": format!("{}-PSU1", s.facts.smbios.serial),
        "FirmwareVersion": "1.0",
        "Status": { "State": "Enabled", "Health": "OK" },
    })
}

pub fn chassis(s: &Snapshot) -> Value {
    merge(
        odata(CHASSIS, "#Chassis.v1_23_0.Chassis"),
        json!({
            "Id": "1",
            "Name": s.name,
            "ChassisType": "RackMount",
            "Manufacturer": s.facts.smbios.manufacturer,
            "Model": s.facts.smbios.product,
            "SerialNumber": s.facts.smbios.serial,
            "PowerState": power_state_name(s.power),
            "Status": { "State": "Enabled", "Health": "OK" },
            "PowerSubsystem": link(&format!("{CHASSIS}/PowerSubsystem")),
            "Power": link(&format!("{CHASSIS}/Power")),
            "Links": { "ComputerSystems": [link(SYSTEM)], "ManagedBy": [link(MANAGER)] },
        }),
    )
}

pub fn power_subsystem() -> Value {
    merge(
        odata(&format!("{CHASSIS}/PowerSubsystem"), "#PowerSubsystem.v1_1_0.PowerSubsystem"),
        json!({
            "Id": "PowerSubsystem",
            "Name": "Power subsystem",
            "CapacityWatts": 500.0,
            "PowerSupplies": link(&format!("{CHASSIS}/PowerSubsystem/PowerSupplies")),
            "Status": { "State": "Enabled", "Health": "OK" },
        }),
    )
}

pub fn power_supply(s: &Snapshot) -> Value {
    let input = if s.power == PowerState::On { 120.0 } else { 8.0 };
    merge(
        merge(odata(PSU, "#PowerSupply.v1_5_0.PowerSupply"), psu_fields(s)),
        json!({
            "Id": "1",
            "PowerCapacityWatts": 500.0,
            "PowerSupplyType": "AC",
            "InputRanges": [{ "NominalVoltageType": "AC200To240V", "CapacityWatts": 500.0 }],
            "Oem": { "SlipwayLab": { "InputWatts": input } },
        }),
    )
}

/// The older `Chassis/1/Power` resource, for clients that read it.
pub fn legacy_power(s: &Snapshot) -> Value {
    let input = if s.power == PowerState::On { 120.0 } else { 8.0 };
    merge(
        odata(&format!("{CHASSIS}/Power"), "#Power.v1_7_1.Power"),
        json!({
            "Id": "Power",
            "Name": "Power",
            "PowerControl": [{
                "@odata.id": format!("{CHASSIS}/Power#/PowerControl/0"),
                "MemberId": "0",
                "Name": "System power",
                "PowerConsumedWatts": input,
                "PowerCapacityWatts": 500.0,
            }],
            "PowerSupplies": [merge(
                json!({
                    "@odata.id": format!("{CHASSIS}/Power#/PowerSupplies/0"),
                    "MemberId": "0",
                    "PowerCapacityWatts": 500.0,
                    "PowerInputWatts": input,
                    "PowerSupplyType": "AC",
                }),
                psu_fields(s),
            )],
        }),
    )
}

pub fn manager(s: &Snapshot) -> Value {
    merge(
        odata(MANAGER, "#Manager.v1_18_0.Manager"),
        json!({
            "Id": "1",
            "Name": format!("{} BMC", s.name),
            "ManagerType": "BMC",
            "Manufacturer": VENDOR,
            "Model": "Slipway lab vBMC",
            "FirmwareVersion": s.firmware.bmc,
            "PowerState": "On",
            "Status": { "State": "Enabled", "Health": "OK" },
            "Links": { "ManagerForServers": [link(SYSTEM)], "ManagerForChassis": [link(CHASSIS)] },
        }),
    )
}

pub fn update_service() -> Value {
    merge(
        odata("/redfish/v1/UpdateService", "#UpdateService.v1_13_0.UpdateService"),
        json!({
            "Id": "UpdateService",
            "Name": "Update service",
            "ServiceEnabled": true,
            "FirmwareInventory": link(FIRMWARE_INVENTORY),
            "Actions": {
                "#UpdateService.SimpleUpdate": {
                    "target": "/redfish/v1/UpdateService/Actions/UpdateService.SimpleUpdate",
                    "TransferProtocol@Redfish.AllowableValues": ["HTTP"],
                },
            },
            "Status": { "State": "Enabled", "Health": "OK" },
        }),
    )
}

pub fn firmware_component(fw: &FirmwareVersions, kind: FirmwareKind) -> Value {
    let id = kind.id();
    let (name, version) = match kind {
        FirmwareKind::Bios => ("System BIOS", &fw.bios),
        FirmwareKind::Bmc => ("BMC firmware", &fw.bmc),
    };
    merge(
        odata(&format!("{FIRMWARE_INVENTORY}/{id}"), "#SoftwareInventory.v1_10_0.SoftwareInventory"),
        json!({
            "Id": id,
            "Name": name,
            "Version": version,
            "Updateable": true,
            "Manufacturer": VENDOR,
            "Status": { "State": "Enabled", "Health": "OK" },
        }),
    )
}

pub fn session_service() -> Value {
    merge(
        odata("/redfish/v1/SessionService", "#SessionService.v1_1_9.SessionService"),
        json!({
            "Id": "SessionService",
            "Name": "Session service",
            "ServiceEnabled": true,
            "SessionTimeout": 1800,
            "Sessions": link(SESSIONS),
        }),
    )
}

pub fn session(id: &str, user: &str) -> Value {
    merge(
        odata(&format!("{SESSIONS}/{id}"), "#Session.v1_7_0.Session"),
        json!({ "Id": id, "Name": format!("Session {id}"), "UserName": user }),
    )
}

pub fn task_service() -> Value {
    merge(
        odata("/redfish/v1/TaskService", "#TaskService.v1_2_0.TaskService"),
        json!({
            "Id": "TaskService",
            "Name": "Task service",
            "ServiceEnabled": true,
            "CompletedTaskOverWritePolicy": "Oldest",
            "Tasks": link(TASKS),
        }),
    )
}

/// A Redfish error body (`Base` message registry).
pub fn error(message_id: &str, message: &str) -> Value {
    json!({
        "error": {
            "code": format!("Base.1.16.{message_id}"),
            "message": message,
            "@Message.ExtendedInfo": [{
                "@odata.type": "#Message.v1_1_1.Message",
                "MessageId": format!("Base.1.16.{message_id}"),
                "Message": message,
                "Severity": "Warning",
            }],
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bmc::backend::{DiskFact, NicFact};
    use crate::bmc::Smbios;

    fn snapshot() -> Snapshot {
        Snapshot {
            name: "node1".into(),
            uefi: false,
            power: PowerState::Off,
            boot: Some(BootOverride { target: BootTarget::Pxe, once: true }),
            facts: SystemFacts {
                cpus: 2,
                memory_bytes: 512 << 20,
                disks: vec![DiskFact { id: "disk0".into(), size_bytes: 8 << 30, serial: Some("DISK-1".into()) }],
                nics: vec![NicFact { id: "nic0".into(), mac: "52:54:00:5e:00:01".into() }],
                smbios: Smbios {
                    serial: "LAB-0001".into(),
                    uuid: "5f1a0000-0000-4000-8000-000000000001".into(),
                    manufacturer: "Slipway Lab".into(),
                    product: "QEMU Lab Node".into(),
                },
            },
            firmware: FirmwareVersions { bios: "1.0".into(), bmc: "2.0".into(), pending_bios: Some("1.1".into()) },
        }
    }

    #[test]
    fn system_shows_power_boot_identity_and_the_running_bios() {
        let v = system(&snapshot());
        assert_eq!(v["@odata.id"], SYSTEM);
        assert_eq!(v["PowerState"], "Off");
        assert_eq!(v["Boot"]["BootSourceOverrideTarget"], "Pxe");
        assert_eq!(v["Boot"]["BootSourceOverrideEnabled"], "Once");
        assert_eq!(v["Boot"]["BootSourceOverrideMode"], "Legacy");
        assert_eq!(v["SerialNumber"], "LAB-0001");
        assert_eq!(v["UUID"], "5f1a0000-0000-4000-8000-000000000001");
        assert_eq!(v["BiosVersion"], "1.0", "a staged BIOS is not running yet");
        assert_eq!(v["ProcessorSummary"]["LogicalProcessorCount"], 2);
        assert_eq!(v["MemorySummary"]["TotalSystemMemoryGiB"], 0.5);
        let reset = &v["Actions"]["#ComputerSystem.Reset"];
        assert_eq!(reset["target"], "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset");
        assert_eq!(reset["ResetType@Redfish.AllowableValues"].as_array().unwrap().len(), 5);
    }

    #[test]
    fn no_override_reads_as_disabled() {
        let mut s = snapshot();
        s.boot = None;
        s.uefi = true;
        let boot = &system(&s)["Boot"];
        assert_eq!(
            (boot["BootSourceOverrideTarget"].as_str(), boot["BootSourceOverrideEnabled"].as_str()),
            (Some("None"), Some("Disabled"))
        );
        assert_eq!(boot["BootSourceOverrideMode"], "UEFI");
    }

    #[test]
    fn drives_and_nics_are_numbered_from_one() {
        let s = snapshot();
        assert!(drive(&s, 0).is_none() && drive(&s, 2).is_none());
        let d = drive(&s, 1).unwrap();
        assert_eq!((d["CapacityBytes"].as_u64(), d["SerialNumber"].as_str()), (Some(8 << 30), Some("DISK-1")));
        assert_eq!(ethernet(&s, 1).unwrap()["MACAddress"], "52:54:00:5e:00:01");
        assert_eq!(storage(&s)["Drives"][0]["@odata.id"], "/redfish/v1/Systems/1/Storage/1/Drives/1");
    }

    #[test]
    fn collections_count_their_members() {
        let c = collection("/redfish/v1/Systems", "ComputerSystemCollection", "Systems", &[SYSTEM.to_string()]);
        assert_eq!(c["@odata.type"], "#ComputerSystemCollection.ComputerSystemCollection");
        assert_eq!(c["Members@odata.count"], 1);
        assert_eq!(c["Members"][0]["@odata.id"], SYSTEM);
    }

    #[test]
    fn firmware_inventory_and_errors_have_their_schema_shape() {
        let s = snapshot();
        assert_eq!(firmware_component(&s.firmware, FirmwareKind::Bmc)["Version"], "2.0");
        assert_eq!(
            firmware_component(&s.firmware, FirmwareKind::Bios)["@odata.id"],
            format!("{FIRMWARE_INVENTORY}/BIOS")
        );
        let e = error("ResourceNotFound", "no such thing");
        assert_eq!(e["error"]["@Message.ExtendedInfo"][0]["MessageId"], "Base.1.16.ResourceNotFound");
        assert_eq!(service_root("u")["Vendor"], VENDOR);
    }
}
