//! A real NUT UPS for tests and the QEMU lab: NUT's `dummy-ups` driver and
//! `upsd`, run as root from a work directory of config files, `upsd`
//! listening on a free port of 127.0.0.1. The UPS's state is a `.dev` file
//! in that directory; [`write_state`] rewrites it and the driver picks the
//! change up within about a second, so any process that knows the
//! directory can switch the UPS between online, on battery and low battery
//! (`slipway lab ups online|battery|low`).
//!
//! This module owns the config files, the two processes (killed by their
//! PID when the [`DummyNut`] is dropped) and waiting until upsd answers
//! for the UPS. It does not talk NUT beyond that readiness probe (that is
//! `nut::NutClient`), and it does not install NUT (`scripts/prereqs.sh`).
//!
//! Files in the directory: `ups.conf`, `upsd.conf` (its `LISTEN` line is
//! the address, see [`read_addr`]), `upsd.users`, `dummy.dev` (the state),
//! `driver.log` and `upsd.log` (both processes' output), and the driver's
//! socket. Blocking, std-only: it is called from tests and from the CLI.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use inventory::oob::{Credentials, UpsStatus};

/// The user `upsd.users` defines, for tests of the login path.
pub const USERNAME: &str = "slipway";
/// That user's password. A lab secret only: the UPS is on loopback.
pub const PASSWORD: &str = "slipway-lab";

/// The state file, relative to the directory.
const DEV_FILE: &str = "dummy.dev";
/// How long the driver and upsd get to come up.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Attempts with a fresh port if upsd dies during start-up (the port picked
/// free may have been taken in between).
const UPSD_ATTEMPTS: usize = 3;

/// Where Debian, Fedora and NUT's own `make install` put the driver and
/// the real upsd. Debian's `/sbin/upsd` is a wrapper that refuses to run
/// unless `/etc/nut/nut.conf` enables it, so the real binary comes first.
const DRIVER_CANDIDATES: &[&str] =
    &["/lib/nut/dummy-ups", "/usr/lib/nut/dummy-ups", "/usr/libexec/nut/dummy-ups", "/usr/local/ups/bin/dummy-ups"];
const UPSD_CANDIDATES: &[&str] = &["/lib/nut/upsd", "/usr/lib/nut/upsd", "/usr/sbin/upsd", "/usr/local/ups/sbin/upsd"];

/// The three states the lab needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DummyState {
    /// `OL`, battery full.
    Online,
    /// `OB DISCHRG`, battery at 60 %.
    Battery,
    /// `OB DISCHRG LB`, battery at 10 %.
    Low,
}

impl DummyState {
    /// What a client should read in this state.
    pub fn status(self) -> UpsStatus {
        match self {
            DummyState::Online => UpsStatus::Online,
            DummyState::Battery => UpsStatus::OnBattery,
            DummyState::Low => UpsStatus::LowBattery,
        }
    }

    /// (ups.status, battery.charge, battery.runtime, input.voltage)
    fn values(self) -> (&'static str, u32, u32, &'static str) {
        match self {
            DummyState::Online => ("OL", 100, 3600, "230.0"),
            DummyState::Battery => ("OB DISCHRG", 60, 900, "0.0"),
            DummyState::Low => ("OB DISCHRG LB", 10, 120, "0.0"),
        }
    }

    /// The `.dev` file: every variable in every state, because dummy-ups
    /// keeps a value it no longer finds in the file.
    fn dev_file(self) -> String {
        let (status, charge, runtime, voltage) = self.values();
        format!(
            "device.mfr: Slipway\ndevice.model: Lab UPS 1500\nups.mfr: Slipway\nups.model: Lab UPS 1500\n\
             ups.status: {status}\nbattery.charge: {charge}\nbattery.runtime: {runtime}\nups.load: 25\n\
             input.voltage: {voltage}\n"
        )
    }
}

impl FromStr for DummyState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "online" => Ok(DummyState::Online),
            "battery" => Ok(DummyState::Battery),
            "low" => Ok(DummyState::Low),
            other => Err(format!("unknown UPS state {other:?}: expected online, battery or low")),
        }
    }
}

impl fmt::Display for DummyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DummyState::Online => "online",
            DummyState::Battery => "battery",
            DummyState::Low => "low",
        })
    }
}

/// Why the dummy UPS could not start or change state.
#[derive(Debug, thiserror::Error)]
pub enum DummyNutError {
    #[error("NUT's {name} not found (looked for {searched}); install nut-server (scripts/prereqs.sh)")]
    MissingBinary { name: &'static str, searched: String },
    #[error("the dummy UPS runs dummy-ups and upsd as root; run as root")]
    NotRoot,
    #[error("invalid UPS name {0:?}: use 1 to 32 letters, digits, '-', '_' or '.'")]
    BadName(String),
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot start {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} exited during start-up ({status}); its output:\n{output}")]
    Exited { what: &'static str, status: String, output: String },
    #[error(
        "{what} not ready after {secs} s (last: {last}); driver output:\n{driver_output}\nupsd output:\n{upsd_output}"
    )]
    NotReady { what: &'static str, secs: u64, last: String, driver_output: String, upsd_output: String },
    #[error("{path}: no LISTEN line; is this a dummy UPS directory?")]
    NoAddress { path: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DummyNutError + '_ {
    move |source| DummyNutError::Io { path: path.to_path_buf(), source }
}

/// A running `dummy-ups` + `upsd` pair. Dropping it kills both.
#[derive(Debug)]
pub struct DummyNut {
    dir: PathBuf,
    ups: String,
    port: u16,
    driver: Child,
    upsd: Child,
}

impl DummyNut {
    /// Writes the config into `dir` (created if needed), starts the driver
    /// and upsd, and returns once upsd answers with the UPS's status
    /// (online). On failure the error carries the processes' output.
    pub fn start(dir: &Path, ups_name: &str) -> Result<DummyNut, DummyNutError> {
        let valid = !ups_name.is_empty()
            && ups_name.len() <= 32
            && ups_name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(DummyNutError::BadName(ups_name.to_string()));
        }
        let driver_bin = find_binary("dummy-ups", DRIVER_CANDIDATES)?;
        let upsd_bin = find_binary("upsd", UPSD_CANDIDATES)?;
        if !running_as_root() {
            return Err(DummyNutError::NotRoot);
        }
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let dir = dir.canonicalize().map_err(io_err(dir))?;
        // NUT keeps 0700/0600 config; upsd warns otherwise.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io_err(&dir))?;
        remove_leftovers(&dir, ups_name)?;
        write_file(
            &dir.join("ups.conf"),
            &format!(
                "[{ups_name}]\n  driver = dummy-ups\n  port = {DEV_FILE}\n  mode = dummy-once\n  pollinterval = 1\n  \
                 desc = \"Slipway lab UPS\"\n"
            ),
        )?;
        write_file(&dir.join("upsd.users"), &format!("[{USERNAME}]\n  password = {PASSWORD}\n"))?;
        write_state(&dir, DummyState::Online)?;

        let deadline = Instant::now() + START_TIMEOUT;
        let mut driver = spawn(&driver_bin, &["-a", ups_name, "-u", "root", "-F"], &dir, "driver.log")?;
        if let Err(e) = wait_for_driver(&dir, ups_name, &mut driver, deadline) {
            stop(&mut driver);
            return Err(e);
        }
        let mut last_err = None;
        for _ in 0..UPSD_ATTEMPTS {
            let port = match free_port() {
                Ok(p) => p,
                Err(e) => {
                    stop(&mut driver);
                    return Err(e);
                }
            };
            let started = write_file(&dir.join("upsd.conf"), &format!("LISTEN 127.0.0.1 {port}\n"))
                .and_then(|()| spawn(&upsd_bin, &["-u", "root", "-F"], &dir, "upsd.log"));
            let mut upsd = match started {
                Ok(child) => child,
                Err(e) => {
                    stop(&mut driver);
                    return Err(e);
                }
            };
            match wait_for_upsd(&dir, ups_name, port, &mut driver, &mut upsd, deadline) {
                Ok(()) => return Ok(DummyNut { dir, ups: ups_name.to_string(), port, driver, upsd }),
                Err(e @ DummyNutError::Exited { what: "upsd", .. }) => {
                    stop(&mut upsd);
                    last_err = Some(e);
                }
                Err(e) => {
                    stop(&mut upsd);
                    stop(&mut driver);
                    return Err(e);
                }
            }
        }
        stop(&mut driver);
        Err(last_err.unwrap_or(DummyNutError::NotReady {
            what: "upsd",
            secs: START_TIMEOUT.as_secs(),
            last: "no attempt".to_string(),
            driver_output: String::new(),
            upsd_output: String::new(),
        }))
    }

    /// `127.0.0.1:<port>` of upsd.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn ups_name(&self) -> &str {
        &self.ups
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The login `upsd.users` accepts.
    pub fn credentials(&self) -> Credentials {
        Credentials { username: USERNAME.to_string(), password: PASSWORD.to_string() }
    }

    /// Switches the UPS's state; clients see it within a couple of seconds.
    pub fn set(&self, state: DummyState) -> Result<(), DummyNutError> {
        write_state(&self.dir, state)
    }
}

impl Drop for DummyNut {
    fn drop(&mut self) {
        stop(&mut self.upsd);
        stop(&mut self.driver);
    }
}

/// Rewrites the state file of a dummy UPS directory, whoever started it.
/// The file is replaced atomically and its modification time moved forward
/// by at least a second, because dummy-ups re-reads a `.dev` file only
/// when its timestamp changes.
pub fn write_state(dir: &Path, state: DummyState) -> Result<(), DummyNutError> {
    let path = dir.join(DEV_FILE);
    let tmp = dir.join(format!("{DEV_FILE}.tmp"));
    let now = SystemTime::now();
    let mtime = match fs::metadata(&path).and_then(|m| m.modified()) {
        Ok(old) if old + Duration::from_secs(1) > now => old + Duration::from_secs(1),
        _ => now,
    };
    let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(state.dev_file().as_bytes()).map_err(io_err(&tmp))?;
    file.set_modified(mtime).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(io_err(&path))
}

/// The address upsd of a dummy UPS directory listens on, from its
/// `upsd.conf`.
pub fn read_addr(dir: &Path) -> Result<String, DummyNutError> {
    let path = dir.join("upsd.conf");
    let text = fs::read_to_string(&path).map_err(io_err(&path))?;
    text.lines()
        .find_map(|line| match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["LISTEN", host, port] => Some(format!("{host}:{port}")),
            _ => None,
        })
        .ok_or(DummyNutError::NoAddress { path })
}

/// Whether this process's effective user is root (from `/proc`, so no
/// libc call is needed).
pub fn running_as_root() -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false)
}

fn find_binary(name: &'static str, candidates: &[&str]) -> Result<PathBuf, DummyNutError> {
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| DummyNutError::MissingBinary { name, searched: candidates.join(", ") })
}

fn write_file(path: &Path, text: &str) -> Result<(), DummyNutError> {
    let mut file = File::create(path).map_err(io_err(path))?;
    file.set_permissions(fs::Permissions::from_mode(0o600)).map_err(io_err(path))?;
    file.write_all(text.as_bytes()).map_err(io_err(path))
}

/// A driver socket or pid file left by an earlier run: a stale socket
/// would pass for readiness, and NUT signals the PID in a stale pid file.
fn remove_leftovers(dir: &Path, ups_name: &str) -> Result<(), DummyNutError> {
    for name in [format!("dummy-ups-{ups_name}"), format!("dummy-ups-{ups_name}.pid"), "upsd.pid".to_string()] {
        let path = dir.join(name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&path)(e)),
            _ => {}
        }
    }
    Ok(())
}

fn spawn(program: &Path, args: &[&str], dir: &Path, log: &str) -> Result<Child, DummyNutError> {
    let log_path = dir.join(log);
    let out = File::create(&log_path).map_err(io_err(&log_path))?;
    let err = out.try_clone().map_err(io_err(&log_path))?;
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("NUT_CONFPATH", dir)
        .env("NUT_STATEPATH", dir)
        .env("NUT_ALTPIDPATH", dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|source| DummyNutError::Spawn { program: program.to_path_buf(), source })
}

/// Kills a child by its PID and reaps it.
fn stop(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// The last few KiB of a log, for error messages.
fn tail(dir: &Path, log: &str) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(dir.join(log)) {
        let mut bytes = Vec::new();
        let _ = f.read_to_end(&mut bytes);
        let start = bytes.len().saturating_sub(4096);
        text = String::from_utf8_lossy(&bytes[start..]).into_owned();
    }
    if text.trim().is_empty() {
        "(nothing)".to_string()
    } else {
        text
    }
}

fn exited(child: &mut Child, what: &'static str, dir: &Path, log: &str) -> Option<DummyNutError> {
    match child.try_wait() {
        Ok(Some(status)) => Some(DummyNutError::Exited { what, status: status.to_string(), output: tail(dir, log) }),
        _ => None,
    }
}

fn wait_for_driver(dir: &Path, ups: &str, driver: &mut Child, deadline: Instant) -> Result<(), DummyNutError> {
    let socket = dir.join(format!("dummy-ups-{ups}"));
    loop {
        if let Some(e) = exited(driver, "dummy-ups", dir, "driver.log") {
            return Err(e);
        }
        if socket.exists() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(DummyNutError::NotReady {
                what: "dummy-ups",
                secs: START_TIMEOUT.as_secs(),
                last: format!("no socket {}", socket.display()),
                driver_output: tail(dir, "driver.log"),
                upsd_output: String::new(),
            });
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn wait_for_upsd(
    dir: &Path,
    ups: &str,
    port: u16,
    driver: &mut Child,
    upsd: &mut Child,
    deadline: Instant,
) -> Result<(), DummyNutError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        if let Some(e) = exited(upsd, "upsd", dir, "upsd.log") {
            return Err(e);
        }
        if let Some(e) = exited(driver, "dummy-ups", dir, "driver.log") {
            return Err(e);
        }
        let last = match probe(addr, ups) {
            // dummy-ups says WAIT until it has read the .dev file.
            Ok(line) if line == format!("VAR {ups} ups.status \"OL\"") => return Ok(()),
            Ok(line) => line,
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(DummyNutError::NotReady {
                what: "upsd",
                secs: START_TIMEOUT.as_secs(),
                last,
                driver_output: tail(dir, "driver.log"),
                upsd_output: tail(dir, "upsd.log"),
            });
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Asks upsd for the UPS's status; the reply line (`VAR <ups> ups.status
/// "OL"` once ready; `ERR DRIVER-NOT-CONNECTED`, `ERR DATA-STALE` or
/// `"WAIT"` before).
fn probe(addr: SocketAddr, ups: &str) -> io::Result<String> {
    let timeout = Duration::from_secs(1);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(format!("GET VAR {ups} ups.status\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream.take(4096)).read_line(&mut line)?;
    Ok(line.trim_end().to_string())
}

/// A port free on 127.0.0.1 right now.
fn free_port() -> Result<u16, DummyNutError> {
    let path = PathBuf::from("127.0.0.1:0");
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err(&path))?;
    listener.local_addr().map(|a| a.port()).map_err(io_err(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_parse_and_print() {
        for state in [DummyState::Online, DummyState::Battery, DummyState::Low] {
            assert_eq!(state.to_string().parse::<DummyState>(), Ok(state));
        }
        assert!("offline".parse::<DummyState>().is_err());
    }

    #[test]
    fn dev_files_say_what_the_client_should_read() {
        use inventory::ups::nut::state_from_vars;
        for state in [DummyState::Online, DummyState::Battery, DummyState::Low] {
            let vars: Vec<(String, String)> = state
                .dev_file()
                .lines()
                .filter_map(|l| l.split_once(": "))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(state_from_vars(&vars).status, state.status(), "{state}");
        }
    }

    #[test]
    fn write_state_moves_the_timestamp_forward_and_read_addr_finds_the_port() {
        let dir = tempfile::tempdir().unwrap();
        write_state(dir.path(), DummyState::Online).unwrap();
        let first = fs::metadata(dir.path().join(DEV_FILE)).unwrap().modified().unwrap();
        write_state(dir.path(), DummyState::Low).unwrap();
        let second = fs::metadata(dir.path().join(DEV_FILE)).unwrap().modified().unwrap();
        assert!(second >= first + Duration::from_secs(1), "{first:?} {second:?}");
        assert!(fs::read_to_string(dir.path().join(DEV_FILE)).unwrap().contains("ups.status: OB DISCHRG LB"));

        assert!(matches!(read_addr(dir.path()), Err(DummyNutError::Io { .. })));
        fs::write(dir.path().join("upsd.conf"), "# x\nLISTEN 127.0.0.1 34931\n").unwrap();
        assert_eq!(read_addr(dir.path()).unwrap(), "127.0.0.1:34931");
    }
}
