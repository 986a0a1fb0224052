//! The IPMI v2.0 (RMCP+) client: power state and control, one-time boot
//! device, and an inventory (FRU identity, SDR sensors, BMC firmware,
//! system GUID) of one BMC, normalized into [`crate::oob`].
//!
//! Decision: shell out to `ipmitool -I lanplus`, as Ironic and MAAS do,
//! rather than speak RMCP+ ourselves. The `ipmi` crate speaks only cipher
//! suite 3, and ipmitool is the reference client every BMC vendor tests
//! against, so its quirks are already handled there. The password goes
//! through the environment (`-E`, `IPMI_PASSWORD`), never on the command
//! line where `ps` would show it; it is never logged nor put in an error.
//!
//! What it owns: the ipmitool arguments, running them (`run`: a deadline,
//! the child killed when the call times out or its future is dropped) and
//! one retry of a transient failure, and the pure parsers of ipmitool's
//! text (`parse`, tested with captured output). What it does not own:
//! deciding when to power or boot a machine (the lifecycle engine),
//! polling schedules, Redfish, and IPMI's serial-over-LAN.
//!
//! Timeouts: the client's `timeout` bounds each ipmitool invocation,
//! including its one retry; [`IpmiClient::inventory`] runs five of them.
//! ipmitool's own `-N`/`-R` are set from the remaining time so that it
//! gives up (and reports why) before the deadline kills it.
//!
//! Retries: only failures before a session exists (no answer to the
//! session set-up, or "insufficient resources for session") are retried,
//! so a command the BMC may already have carried out (a power cycle) is
//! never sent twice. A refused login is never retried: BMCs lock users out.
//!
//! Cipher suite: by default ipmitool picks the best suite the BMC offers
//! (17 where supported). A BMC that does not implement Get Channel Cipher
//! Suites (ipmi_sim) makes that take ten seconds; name the suite with
//! [`IpmiClient::with_cipher_suite`] for those.
//!
//! Cancel safety: every method is cancel-safe in the sense that dropping
//! its future kills the running ipmitool; a power action already sent may
//! still be carried out by the BMC.

pub mod parse;
mod run;

use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use crate::oob::{BmcInventory, BootTarget, Credentials, OobError, PowerAction, PowerState, SectionError};
use crate::Source;
use parse::Failure;

/// A retry is attempted only if at least this much time is left.
const MIN_RETRY: Duration = Duration::from_secs(2);

/// One BMC reached with `ipmitool -I lanplus`.
#[derive(Debug, Clone)]
pub struct IpmiClient {
    host: String,
    port: u16,
    creds: Credentials,
    timeout: Duration,
    cipher_suite: Option<u8>,
    ipmitool: PathBuf,
}

/// How one ipmitool invocation is run and judged.
#[derive(Debug, Clone, Copy)]
struct Mode {
    /// Pass `-v` so that a failed session says why (RAKP errors). Only for
    /// commands whose stdout `-v` leaves alone: not `sdr list` (it turns
    /// into the verbose listing) nor `fru print` (vendor multi-records);
    /// `inventory` asks for the power state first, with `-v`, so a dead
    /// BMC or a refused login is still told apart there.
    verbose: bool,
    /// A failed command whose stdout is not empty is still parsed (`fru
    /// print` fails when one of many FRU devices is absent).
    partial_ok: bool,
}

const STRICT: Mode = Mode { verbose: true, partial_ok: false };

impl IpmiClient {
    /// A client for the BMC at `host:port` (623 is IPMI's port). `timeout`
    /// bounds each ipmitool run, including its one retry.
    pub fn new(host: String, port: u16, creds: Credentials, timeout: Duration) -> Self {
        IpmiClient { host, port, creds, timeout, cipher_suite: None, ipmitool: PathBuf::from("ipmitool") }
    }

    /// Use this RMCP+ cipher suite (`-C`) instead of ipmitool's choice.
    pub fn with_cipher_suite(mut self, suite: u8) -> Self {
        self.cipher_suite = Some(suite);
        self
    }

    /// Run this ipmitool instead of the one on `PATH`.
    pub fn with_ipmitool(mut self, program: impl Into<PathBuf>) -> Self {
        self.ipmitool = program.into();
        self
    }

    /// How errors name this BMC: `host:port` (`[v6]:port` for IPv6).
    pub fn peer(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Chassis power as the BMC reports it (`chassis power status`).
    pub async fn power_state(&self) -> Result<PowerState, OobError> {
        let out = self.call(&["chassis", "power", "status"], STRICT).await?;
        parse::parse_power_status(&out).ok_or_else(|| self.malformed("chassis power status", &out))
    }

    /// Asks for a power change (`chassis power on|soft|off|cycle|reset`).
    /// Returns once the BMC accepted it; the machine may take a while.
    pub async fn power(&self, action: PowerAction) -> Result<(), OobError> {
        self.call(&["chassis", "power", parse::power_command(action)], STRICT).await.map(drop)
    }

    /// Boot from `target` on the next boot only (`chassis bootdev pxe|disk`,
    /// with `options=efiboot` when `uefi`). IPMI has no UEFI HTTP boot
    /// device: [`BootTarget::UefiHttp`] is [`OobError::Unsupported`].
    pub async fn set_boot_once(&self, target: BootTarget, uefi: bool) -> Result<(), OobError> {
        let device = match target {
            BootTarget::Pxe => "pxe",
            BootTarget::Disk => "disk",
            BootTarget::UefiHttp => {
                return Err(OobError::Unsupported { peer: self.peer(), what: "UEFI HTTP boot over IPMI".into() })
            }
        };
        let mut cmd = vec!["chassis", "bootdev", device];
        if uefi {
            cmd.push("options=efiboot");
        }
        self.call(&cmd, STRICT).await.map(drop)
    }

    /// What the BMC says about its machine: FRU identity, SDR sensors,
    /// power state, BMC firmware and system GUID. A section that fails is
    /// named in `errors` and the rest is still returned; only a BMC that
    /// does not answer or refuses the login fails the whole call (found
    /// by the first command, the power state).
    pub async fn inventory(&self) -> Result<BmcInventory, OobError> {
        let mut inv = BmcInventory::default();
        inv.system.source = Some(Source::Ipmi);
        match self.power_state().await {
            Ok(state) => inv.system.power_state = Some(state),
            Err(e @ (OobError::Timeout { .. } | OobError::Auth { .. } | OobError::Connect { .. })) => return Err(e),
            Err(e) => section(&mut inv, "power", e),
        }
        match self.call(&["mc", "info"], STRICT).await {
            Ok(out) => match parse::parse_mc_info(&out) {
                Some(fw) => inv.firmware.push(fw),
                None => section(&mut inv, "firmware", self.malformed("mc info", &out)),
            },
            Err(e) => section(&mut inv, "firmware", e),
        }
        match self.call(&["mc", "guid"], STRICT).await {
            Ok(out) => inv.system.uuid = parse::parse_mc_guid(&out),
            // Get System GUID is optional in IPMI: a BMC without it is not an error.
            Err(OobError::Protocol { detail, .. }) if detail.to_ascii_lowercase().contains("invalid command") => {}
            Err(e) => section(&mut inv, "guid", e),
        }
        match self.call(&["fru", "print"], Mode { verbose: false, partial_ok: true }).await {
            Ok(out) => {
                let fru = parse::parse_fru(&out);
                inv.system.manufacturer = fru.manufacturer;
                inv.system.model = fru.model;
                inv.system.serial = fru.serial;
            }
            Err(e) => section(&mut inv, "fru", e),
        }
        match self.call(&["sdr", "list", "full"], Mode { verbose: false, partial_ok: true }).await {
            Ok(out) => inv.sensors = parse::parse_sdr_list(&out),
            Err(e) => section(&mut inv, "sensors", e),
        }
        Ok(inv)
    }

    /// ipmitool's arguments for one attempt with `remaining` time left.
    /// Never contains the password (`-E` reads it from the environment).
    fn args(&self, remaining: Duration, cmd: &[&str], verbose: bool) -> Vec<String> {
        // ipmitool waits about N * (R + 1) seconds for a dead BMC: with
        // R = 1 and N a quarter of the time left, it gives up halfway,
        // leaving room for our one retry.
        let per_try = (remaining.as_secs() / 4).clamp(1, 10);
        let mut args: Vec<String> =
            ["-I", "lanplus", "-H", &self.host, "-p", &self.port.to_string()].into_iter().map(String::from).collect();
        args.extend(["-U".into(), self.creds.username.clone(), "-E".into()]);
        args.extend(["-N".into(), per_try.to_string(), "-R".into(), "1".into()]);
        if let Some(suite) = self.cipher_suite {
            args.extend(["-C".into(), suite.to_string()]);
        }
        if verbose {
            args.push("-v".into());
        }
        args.extend(cmd.iter().map(|s| s.to_string()));
        args
    }

    /// Runs one ipmitool command and returns its stdout, retrying once a
    /// failure that happened before any session existed.
    async fn call(&self, cmd: &[&str], mode: Mode) -> Result<String, OobError> {
        let deadline = Instant::now() + self.timeout;
        let mut attempt = 1;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let args = self.args(remaining, cmd, mode.verbose);
            let captured = match run::run(&self.ipmitool, &args, &self.creds.password, deadline).await {
                Ok(c) => c,
                Err(run::RunError::Deadline) => return Err(self.timed_out()),
                Err(run::RunError::Spawn(e)) => {
                    return Err(OobError::Protocol {
                        peer: self.peer(),
                        detail: format!("cannot run {}: {e}", self.ipmitool.display()),
                    })
                }
            };
            if captured.success {
                return Ok(captured.stdout);
            }
            let failure = parse::classify_failure(&captured.stderr);
            let detail = self.redact(parse::trim_stderr(&captured.stderr));
            let left = deadline.saturating_duration_since(Instant::now());
            match failure {
                Failure::Auth => return Err(OobError::Auth { peer: self.peer() }),
                Failure::NoAnswer | Failure::Busy if attempt == 1 && left >= MIN_RETRY => {
                    tracing::debug!(peer = %self.peer(), command = %cmd.join(" "), %detail, "ipmitool failed before a session; retrying once");
                    attempt += 1;
                }
                Failure::NoAnswer => return Err(self.timed_out()),
                Failure::Busy | Failure::Session => return Err(OobError::Connect { peer: self.peer(), detail }),
                Failure::Command if mode.partial_ok && !captured.stdout.trim().is_empty() => {
                    tracing::debug!(peer = %self.peer(), command = %cmd.join(" "), %detail, "ipmitool failed part-way; using its output");
                    return Ok(captured.stdout);
                }
                Failure::Command => {
                    return Err(OobError::Protocol {
                        peer: self.peer(),
                        detail: format!("{}: {detail}", cmd.join(" ")),
                    })
                }
            }
        }
    }

    fn timed_out(&self) -> OobError {
        OobError::Timeout { peer: self.peer(), secs: self.timeout.as_secs_f64().ceil() as u64 }
    }

    fn malformed(&self, what: &str, out: &str) -> OobError {
        let first = out.lines().next().unwrap_or("").trim();
        OobError::Malformed {
            peer: self.peer(),
            what: what.to_string(),
            detail: format!("unexpected output: {:?}", self.redact(first.chars().take(120).collect())),
        }
    }

    /// Belt and braces: ipmitool does not echo the password, but nothing
    /// it prints reaches an error with the password in it.
    fn redact(&self, text: String) -> String {
        if self.creds.password.is_empty() {
            text
        } else {
            text.replace(&self.creds.password, "<redacted>")
        }
    }
}

fn section(inv: &mut BmcInventory, name: &str, e: OobError) {
    tracing::debug!(section = name, error = %e, "IPMI inventory section failed");
    inv.errors.push(SectionError { section: name.to_string(), error: e.to_string() });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> IpmiClient {
        let creds = Credentials { username: "admin".into(), password: "hunter2-secret".into() };
        IpmiClient::new("bmc7.lab".into(), 623, creds, Duration::from_secs(10))
    }

    #[test]
    fn the_password_is_never_an_argument() {
        let c = client().with_cipher_suite(17);
        let args = c.args(Duration::from_secs(10), &["chassis", "power", "status"], true);
        assert!(args.iter().all(|a| !a.contains("hunter2")), "{args:?}");
        assert!(args.contains(&"-E".to_string()));
        assert_eq!(&args[args.len() - 4..], ["-v", "chassis", "power", "status"]);
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn ipmitool_gives_up_within_half_the_time_left() {
        let c = client();
        let n = |secs| {
            let args = c.args(Duration::from_secs(secs), &["mc", "info"], false);
            let i = args.iter().position(|a| a == "-N").unwrap();
            (args[i + 1].parse::<u64>().unwrap(), args[i + 3].parse::<u64>().unwrap())
        };
        assert_eq!(n(10), (2, 1));
        assert_eq!(n(3), (1, 1));
        assert_eq!(n(0), (1, 1));
        assert_eq!(n(600), (10, 1));
    }

    #[test]
    fn errors_name_the_bmc_and_hide_the_password() {
        let c = client();
        assert_eq!(c.peer(), "bmc7.lab:623");
        assert_eq!(c.redact("echo hunter2-secret".into()), "echo <redacted>");
        let v6 = IpmiClient::new("fd00::7".into(), 623, c.creds.clone(), Duration::from_secs(1));
        assert_eq!(v6.peer(), "[fd00::7]:623");
        assert_eq!(v6.timed_out().to_string(), "[fd00::7]:623: no answer within 1 s");
    }
}
