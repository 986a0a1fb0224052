//! The IPMI client against a real BMC simulator (`ipmi_sim` from OpenIPMI,
//! spoken to by the real `ipmitool`) on 127.0.0.1, and its parsers over
//! captured and vendor-shaped ipmitool output (`tests/fixtures/ipmi/`).
//!
//! Peer tests skip with a message when ipmitool or ipmi_sim is missing,
//! and fail instead when `SLIPWAY_LAB_TESTS=1`.

#![cfg(feature = "oob")]

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use inventory::ipmi::parse::{self, Failure};
use inventory::ipmi::IpmiClient;
use inventory::oob::{BootTarget, Credentials, OobError, PowerAction, PowerState, Sensor, SensorKind};
use inventory::Source;

const USER: &str = "slipway";
const PASSWORD: &str = "sim-secret-1";

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ipmi")
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixture_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

// ---------------------------------------------------------------------
// The simulator.

fn have(tool: &str) -> bool {
    let found =
        Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(std::env::var("SLIPWAY_LAB_TESTS").as_deref() != Ok("1"), "{tool} is required (SLIPWAY_LAB_TESTS=1)");
        eprintln!("skipped: {tool} is not installed (set SLIPWAY_LAB_TESTS=1 to make this a failure)");
    }
    found
}

/// A running `ipmi_sim` on 127.0.0.1, killed by PID when dropped.
struct IpmiSim {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl IpmiSim {
    /// Starts the simulator, or `None` (after saying so) when the tools
    /// are missing and the lab tests are not required.
    fn start() -> Option<IpmiSim> {
        if !have("ipmitool") || !have("ipmi_sim") {
            return None;
        }
        // The port is chosen by binding port 0 and letting go: another
        // process may take it in between, so try a few.
        let mut last = String::new();
        for _ in 0..3 {
            match IpmiSim::try_start() {
                Ok(sim) => return Some(sim),
                Err(e) => last = e,
            }
        }
        panic!("ipmi_sim did not come up: {last}");
    }

    fn try_start() -> Result<IpmiSim, String> {
        let port = UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map_err(|e| e.to_string())?.port();
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let d = dir.path();
        let conf = fixture("lan.conf.in").replace("@PORT@", &port.to_string()).replace("@DIR@", d.to_str().unwrap());
        std::fs::write(d.join("lan.conf"), conf).map_err(|e| e.to_string())?;
        std::fs::copy(fixture_dir().join("chassis.sh"), d.join("chassis.sh")).map_err(|e| e.to_string())?;
        std::fs::create_dir(d.join("state")).map_err(|e| e.to_string())?;
        let child = Command::new("ipmi_sim")
            .current_dir(d)
            .arg("-c")
            .arg(d.join("lan.conf"))
            .arg("-f")
            .arg(fixture_dir().join("sim.emu"))
            .arg("-s")
            .arg(d.join("state"))
            .arg("-n")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("ipmi_sim.err")).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("spawn ipmi_sim: {e}"))?;
        let mut sim = IpmiSim { child, port, dir };
        // Ready when `mc info` answers; bounded to 15 s.
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            if let Ok(Some(status)) = sim.child.try_wait() {
                let err = std::fs::read_to_string(sim.dir.path().join("ipmi_sim.err")).unwrap_or_default();
                return Err(format!("ipmi_sim exited with {status}: {err}"));
            }
            if sim.ipmitool(&["mc", "info"]).status.success() {
                return Ok(sim);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err("mc info did not answer within 15 s".into())
    }

    /// Runs ipmitool directly against the simulator (for checks the
    /// client does not offer).
    fn ipmitool(&self, cmd: &[&str]) -> std::process::Output {
        Command::new("ipmitool")
            .args(["-I", "lanplus", "-H", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER, "-E", "-C", "3"])
            .args(["-N", "1", "-R", "1"])
            .args(cmd)
            .env("IPMI_PASSWORD", PASSWORD)
            .output()
            .expect("run ipmitool")
    }

    fn client(&self, password: &str) -> IpmiClient {
        let creds = Credentials { username: USER.into(), password: password.into() };
        IpmiClient::new("127.0.0.1".into(), self.port, creds, Duration::from_secs(10)).with_cipher_suite(3)
    }
}

impl Drop for IpmiSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------
// Against ipmi_sim.

#[tokio::test]
async fn inventory_has_the_fru_serial_sensors_firmware_and_guid() {
    let Some(sim) = IpmiSim::start() else { return };
    let inv = sim.client(PASSWORD).inventory().await.unwrap();
    assert!(inv.errors.is_empty(), "{:?}", inv.errors);
    let s = &inv.system;
    assert_eq!(s.source, Some(Source::Ipmi));
    assert_eq!(s.serial.as_deref(), Some("SLW-SIM-0042"));
    assert_eq!(s.manufacturer.as_deref(), Some("Slipway Labs"));
    assert_eq!(s.model.as_deref(), Some("SimServer 1U"));
    assert_eq!(s.uuid.as_deref(), Some("7e1a2b3c-4d5e-4f60-a1b2-c3d4e5f60718"));
    assert_eq!(s.power_state, Some(PowerState::On));
    assert_eq!(inv.firmware.len(), 1);
    assert_eq!((inv.firmware[0].id.as_str(), inv.firmware[0].version.as_deref()), ("BMC", Some("2.47")));
    let names: Vec<&str> = inv.sensors.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["CPU Temp", "FAN1", "12V", "PSU1 Power", "PSU1 Current"]);
    let cpu = &inv.sensors[0];
    assert_eq!((cpu.kind, cpu.reading, cpu.units.as_deref()), (SensorKind::Temperature, Some(45.0), Some("Cel")));
    assert_eq!(cpu.health.as_deref(), Some("OK"));
    assert_eq!(inv.sensors[1].reading, Some(4800.0));
    assert_eq!(inv.sensors[4].units.as_deref(), Some("A"));
}

#[tokio::test]
async fn power_off_then_on_is_what_status_reports() {
    let Some(sim) = IpmiSim::start() else { return };
    let c = sim.client(PASSWORD);
    assert_eq!(c.power_state().await.unwrap(), PowerState::On);
    c.power(PowerAction::ForceOff).await.unwrap();
    assert_eq!(c.power_state().await.unwrap(), PowerState::Off);
    c.power(PowerAction::On).await.unwrap();
    assert_eq!(c.power_state().await.unwrap(), PowerState::On);
    // The chassis script powers off on a soft shutdown request, as an OS would.
    c.power(PowerAction::GracefulOff).await.unwrap();
    assert_eq!(c.power_state().await.unwrap(), PowerState::Off);
    c.power(PowerAction::On).await.unwrap();
    c.power(PowerAction::Reset).await.unwrap();
    assert_eq!(c.power_state().await.unwrap(), PowerState::On);
    // Cycle: ipmi_sim powers off, then back on after a second.
    c.power(PowerAction::Cycle).await.unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while c.power_state().await.unwrap() != PowerState::On {
        assert!(Instant::now() < until, "still off 10 s after a power cycle");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn pxe_boot_once_is_in_the_boot_flags() {
    let Some(sim) = IpmiSim::start() else { return };
    let c = sim.client(PASSWORD);
    c.set_boot_once(BootTarget::Pxe, true).await.unwrap();
    let flags = sim.ipmitool(&["chassis", "bootparam", "get", "5"]);
    let text = String::from_utf8_lossy(&flags.stdout);
    assert!(text.contains("Boot Device Selector : Force PXE"), "{text}");
    c.set_boot_once(BootTarget::Disk, false).await.unwrap();
    let text = String::from_utf8_lossy(&sim.ipmitool(&["chassis", "bootparam", "get", "5"]).stdout).into_owned();
    assert!(text.contains("Force Boot from default Hard-Drive"), "{text}");
    let err = c.set_boot_once(BootTarget::UefiHttp, true).await.unwrap_err();
    assert!(matches!(err, OobError::Unsupported { .. }), "{err}");
    assert!(err.to_string().starts_with(&format!("127.0.0.1:{}", sim.port)), "{err}");
}

#[tokio::test]
async fn a_wrong_password_is_an_auth_error_naming_the_bmc_quickly() {
    let Some(sim) = IpmiSim::start() else { return };
    let started = Instant::now();
    let err = sim.client("not-the-password").inventory().await.unwrap_err();
    assert!(matches!(err, OobError::Auth { .. }), "{err:?}");
    assert_eq!(err.to_string(), format!("127.0.0.1:{}: login refused", sim.port));
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    let wrong_user = Credentials { username: "nobody".into(), password: PASSWORD.into() };
    let c = IpmiClient::new("127.0.0.1".into(), sim.port, wrong_user, Duration::from_secs(10)).with_cipher_suite(3);
    assert!(matches!(c.power_state().await, Err(OobError::Auth { .. })));
}

#[tokio::test]
async fn nothing_listening_times_out_within_the_configured_time() {
    if !have("ipmitool") {
        return;
    }
    // A port that was free a moment ago: nothing answers there.
    let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let creds = Credentials { username: USER.into(), password: PASSWORD.into() };
    let timeout = Duration::from_secs(3);
    let c = IpmiClient::new("127.0.0.1".into(), port, creds, timeout).with_cipher_suite(3);
    let started = Instant::now();
    let err = c.inventory().await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, OobError::Timeout { .. }), "{err:?}");
    assert_eq!(err.to_string(), format!("127.0.0.1:{port}: no answer within 3 s"));
    assert!(took <= timeout + Duration::from_millis(500), "took {took:?}");
}

#[tokio::test]
async fn a_missing_ipmitool_is_an_error_naming_the_bmc() {
    let creds = Credentials { username: USER.into(), password: PASSWORD.into() };
    let c =
        IpmiClient::new("127.0.0.1".into(), 9, creds, Duration::from_secs(2)).with_ipmitool("/nonexistent/ipmitool");
    let err = c.power_state().await.unwrap_err();
    assert!(err.to_string().starts_with("127.0.0.1:9: cannot run /nonexistent/ipmitool"), "{err}");
}

// ---------------------------------------------------------------------
// Parsers over fixture text.

#[test]
fn power_status_from_ipmi_sim() {
    assert_eq!(parse::parse_power_status(&fixture("sim_power_status_on.txt")), Some(PowerState::On));
    assert_eq!(parse::parse_power_status(&fixture("sim_power_status_off.txt")), Some(PowerState::Off));
    assert_eq!(parse::parse_power_status("Chassis Power is Standby\n"), Some(PowerState::Unknown));
    assert_eq!(parse::parse_power_status("Error: Unable to establish IPMI v2 / RMCP+ session\n"), None);
}

#[test]
fn power_actions_are_ipmitool_words() {
    let words: Vec<&str> =
        [PowerAction::On, PowerAction::GracefulOff, PowerAction::ForceOff, PowerAction::Cycle, PowerAction::Reset]
            .into_iter()
            .map(parse::power_command)
            .collect();
    assert_eq!(words, ["on", "soft", "off", "cycle", "reset"]);
}

#[test]
fn fru_from_ipmi_sim_uses_the_product_area() {
    let s = parse::parse_fru(&fixture("sim_fru_print.txt"));
    assert_eq!(s.manufacturer.as_deref(), Some("Slipway Labs"));
    assert_eq!(s.model.as_deref(), Some("SimServer 1U"));
    assert_eq!(s.serial.as_deref(), Some("SLW-SIM-0042"));
    assert_eq!((s.source, s.uuid, s.power_state), (None, None, None));
}

#[test]
fn supermicro_placeholder_product_serial_falls_back_to_the_chassis_serial() {
    let s = parse::parse_fru(&fixture("vendor_fru_print_supermicro.txt"));
    assert_eq!(s.serial.as_deref(), Some("C8190LH46NA0123"));
    assert_eq!(s.manufacturer.as_deref(), Some("Supermicro"));
    assert_eq!(s.model.as_deref(), Some("SYS-1029U-TRTP"));
}

#[test]
fn dell_fru_takes_the_builtin_device_not_the_dimms() {
    let s = parse::parse_fru(&fixture("vendor_fru_print_dell.txt"));
    assert_eq!(s.serial.as_deref(), Some("7XK9F23"));
    assert_eq!(s.manufacturer.as_deref(), Some("DELL"));
    assert_eq!(s.model.as_deref(), Some("PowerEdge R640"));
}

#[test]
fn fru_with_only_a_board_area_uses_the_board() {
    let text = "FRU Device Description : Builtin FRU Device (ID 0)\n Board Mfg             : Acme\n \
                Board Product         : B1\n Board Serial          : BS-9\n";
    let s = parse::parse_fru(text);
    assert_eq!(
        (s.manufacturer.as_deref(), s.model.as_deref(), s.serial.as_deref()),
        (Some("Acme"), Some("B1"), Some("BS-9"))
    );
    assert_eq!(parse::parse_fru(""), Default::default());
}

#[test]
fn placeholders_are_dropped() {
    for p in ["To be filled by O.E.M.", " 0123456789 ", "Default string", "", "N/A"] {
        assert_eq!(parse::clean_fru_value(p), None, "{p:?}");
    }
    assert_eq!(parse::clean_fru_value(" SLW-1 "), Some("SLW-1".into()));
}

fn sensor(name: &str, kind: SensorKind, reading: f64, units: &str) -> Sensor {
    Sensor { name: name.into(), kind, reading: Some(reading), units: Some(units.into()), health: Some("OK".into()) }
}

#[test]
fn sdr_list_from_ipmi_sim() {
    let sensors = parse::parse_sdr_list(&fixture("sim_sdr_list_full.txt"));
    assert_eq!(
        sensors,
        [
            sensor("CPU Temp", SensorKind::Temperature, 45.0, "Cel"),
            sensor("FAN1", SensorKind::Fan, 4800.0, "RPM"),
            sensor("12V", SensorKind::Voltage, 12.0, "V"),
            sensor("PSU1 Power", SensorKind::Power, 200.0, "W"),
            sensor("PSU1 Current", SensorKind::Current, 1.5, "A"),
        ]
    );
}

#[test]
fn vendor_sdr_list_keeps_unreadable_sensors_and_maps_status() {
    let sensors = parse::parse_sdr_list(&fixture("vendor_sdr_list_full.txt"));
    let find = |n: &str| sensors.iter().find(|s| s.name == n).unwrap_or_else(|| panic!("{n} missing"));
    assert_eq!(sensors.len(), 14);
    let fan2 = find("Fan2 RPM");
    assert_eq!((fan2.reading, fan2.health.as_deref()), (None, None));
    assert_eq!(find("Temp").health.as_deref(), Some("Critical"));
    assert_eq!(find("Vcpu1").health.as_deref(), Some("Warning"));
    assert_eq!((find("VBAT").reading, find("VBAT").health.as_deref()), (Some(-3.05), Some("Critical")));
    let f = find("Ambient F");
    assert_eq!((f.kind, f.units.as_deref(), f.reading), (SensorKind::Temperature, Some("Cel"), Some(25.0)));
    assert_eq!(find("PS2 Input Power").reading, None);
    let air = find("Airflow");
    assert_eq!((air.kind, air.units.as_deref(), air.reading), (SensorKind::Other, Some("CFM"), Some(24.0)));
    let intrusion = find("Intrusion");
    assert_eq!((intrusion.kind, intrusion.reading, intrusion.units.as_deref()), (SensorKind::Other, None, None));
    let pct = parse::parse_sdr_list("CPU Usage        | 12 percent        | ok\n");
    assert_eq!((pct[0].units.as_deref(), pct[0].reading), (Some("%"), Some(12.0)));
}

#[test]
fn mc_info_gives_the_bmc_firmware() {
    let fw = parse::parse_mc_info(&fixture("sim_mc_info.txt")).unwrap();
    assert_eq!((fw.id.as_str(), fw.version.as_deref()), ("BMC", Some("2.47")));
    assert_eq!(fw.name.as_deref(), Some("MontaVista Software, Inc. BMC firmware"));
    let dell = parse::parse_mc_info(&fixture("vendor_mc_info.txt")).unwrap();
    assert_eq!(dell.version.as_deref(), Some("4.40"));
    assert_eq!(parse::parse_mc_info("Device ID : 0\n"), None);
}

#[test]
fn mc_guid_is_lower_case_and_hyphenated() {
    assert_eq!(
        parse::parse_mc_guid(&fixture("sim_mc_guid.txt")).as_deref(),
        Some("7e1a2b3c-4d5e-4f60-a1b2-c3d4e5f60718")
    );
    assert_eq!(
        parse::parse_mc_guid(&fixture("vendor_mc_guid_smbios.txt")).as_deref(),
        Some("4c4c4544-0052-3910-8034-b7c04f4d3032")
    );
    assert_eq!(
        parse::normalize_guid("{4C4C45440052391080 34B7C04F4D3032}").as_deref(),
        Some("4c4c4544-0052-3910-8034-b7c04f4d3032")
    );
    assert_eq!(parse::parse_mc_guid("System GUID  : 00000000-0000-0000-0000-000000000000\n"), None);
    assert_eq!(parse::normalize_guid("not-a-guid"), None);
}

#[test]
fn stderr_tells_a_refused_login_from_a_dead_bmc() {
    assert_eq!(parse::classify_failure(&fixture("sim_stderr_wrong_password.txt")), Failure::Auth);
    assert_eq!(parse::classify_failure(&fixture("sim_stderr_wrong_user.txt")), Failure::Auth);
    assert_eq!(parse::classify_failure(&fixture("sim_stderr_no_answer.txt")), Failure::NoAnswer);
    assert_eq!(parse::classify_failure("Error: Unable to establish IPMI v2 / RMCP+ session\n"), Failure::Session);
    assert_eq!(
        parse::classify_failure("Error in open session response message : insufficient resources for session\n"),
        Failure::Busy
    );
    assert_eq!(
        parse::classify_failure("Set Chassis Power Control to Cycle failed: Command not supported in present state\n"),
        Failure::Command
    );
}

#[test]
fn stderr_is_trimmed_to_its_last_meaningful_lines() {
    assert_eq!(
        parse::trim_stderr(&fixture("sim_stderr_wrong_password.txt")),
        "RAKP 2 HMAC is invalid; Error: Unable to establish IPMI v2 / RMCP+ session"
    );
    assert_eq!(parse::trim_stderr(""), "ipmitool failed without a message");
    assert!(parse::trim_stderr(&"x".repeat(1000)).len() <= 304);
}
