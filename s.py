import sushy, time
from sushy import auth
for a in (auth.SessionAuth(username="admin", password="pw"), auth.BasicAuth(username="admin", password="pw")):
    root = sushy.Sushy("http://127.0.0.1:18601/redfish/v1", auth=a)
    print("vendor", root.vendor, type(a).__name__)
sysm = root.get_system("/redfish/v1/Systems/1")
print("power", sysm.power_state, "uuid", sysm.uuid, "serial", sysm.serial_number, "bios", sysm.bios_version)
print("allowed resets", sorted(sysm.get_allowed_reset_system_values()))
print("boot targets", sorted(sysm.get_allowed_system_boot_source_values()))
sysm.set_system_boot_options(sushy.BootSource.PXE, enabled=sushy.BootSourceOverrideEnabled.ONCE)
sysm.reset_system(sushy.ResetType.ON)
sysm.refresh()
print("power", sysm.power_state, "boot", sysm.boot.target, sysm.boot.enabled)
print("mem GiB", sysm.memory_summary.size_gib, "cpus", sysm.processors.summary)
print("macs", [e.mac_address for e in sysm.ethernet_interfaces.get_members()])
st = sysm.storage.get_members()[0]
print("drives", [(d.capacity_bytes, d.serial_number) for d in st.drives])
ch = root.get_chassis("/redfish/v1/Chassis/1")
print("chassis", ch.serial_number, ch.power_state)
try:
    ps = ch.power_subsystem
    print("psus", [p.name for p in ps.power_supplies.get_members()])
except Exception as e: print("power_subsystem", e)
mgr = root.get_manager("/redfish/v1/Managers/1"); print("mgr fw", mgr.firmware_version)
us = root.get_update_service()
print("fw", [(f.identity, f.version) for f in us.software_inventory.get_members()] if hasattr(us, "software_inventory") else None, [(f.identity, f.version) for f in us.firmware_inventory.get_members()])
sysm.reset_system(sushy.ResetType.FORCE_OFF); sysm.refresh(); print("power", sysm.power_state)
