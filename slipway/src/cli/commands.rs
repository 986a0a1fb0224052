//! The operator commands: their arguments and what each asks the API.
//! Images (`images`: uploads stream a file) and BMCs and UPSes (`oob`:
//! passwords) have their own modules.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use super::campaigns::{self, CampaignsCmd, FirmwareCmd};
use super::client::seg;
use super::images::{self, ImagesCmd};
use super::oob::{self, BmcsCmd, UpsCmd};
use super::{connect, print, views, ApiArgs, CliError, Output};

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Machines: list (default), show one, its events.
    Machines {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        cmd: Option<MachinesCmd>,
    },
    /// BMCs: list (default), show, enrol, remove, re-read inventory.
    Bmcs {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        cmd: Option<BmcsCmd>,
    },
    /// UPSes: list (default), show, enrol, remove.
    Ups {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        cmd: Option<UpsCmd>,
    },
    /// OS images: list (default), show, upload, import, delete.
    Images {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        cmd: Option<ImagesCmd>,
    },
    /// Deploy an image to a ready machine.
    Deploy {
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        args: Box<DeployArgs>,
    },
    /// Release a deployed (or failed) machine: wipe its disks, back to ready.
    Release {
        #[command(flatten)]
        api: ApiArgs,
        /// Machine id or any of its MACs.
        machine: String,
        /// quick: partition tables and signatures; full: every byte
        /// [default: the appliance's provisioning.release_wipe].
        #[arg(long, value_enum)]
        wipe: Option<Wipe>,
    },
    /// Power a machine through its BMC.
    Power {
        #[command(flatten)]
        api: ApiArgs,
        machine: String,
        #[arg(value_enum)]
        action: PowerArg,
        /// Network-boot (PXE) once, before the action.
        #[arg(long)]
        pxe: bool,
    },
    /// Events, oldest first; --follow keeps printing new ones until Ctrl-C.
    Events {
        #[command(flatten)]
        api: ApiArgs,
        /// Only this machine's (id or MAC).
        #[arg(long)]
        machine: Option<String>,
        #[arg(short, long)]
        follow: bool,
    },
    /// Refresh campaigns: list (default), show, create, pause, resume, cancel.
    Campaigns {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        cmd: Option<CampaignsCmd>,
    },
    /// Firmware files for campaigns: list (default), upload.
    Firmware {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        cmd: Option<FirmwareCmd>,
    },
    /// API tokens: list (default), create, revoke.
    Tokens {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        cmd: Option<TokensCmd>,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum MachinesCmd {
    /// All of them (the default).
    List,
    /// One machine, by id or any of its MACs.
    Show { id: String },
    /// One machine's events.
    Events { id: String },
}

#[derive(Subcommand, Debug, Clone)]
pub enum TokensCmd {
    /// All of them (the default).
    List,
    /// Create a token; it is printed this once.
    Create {
        name: String,
        #[arg(long)]
        role: String,
        /// Lifetime in seconds [default: no expiry].
        #[arg(long, value_name = "SECS")]
        expires_in: Option<u64>,
    },
    Revoke {
        id: String,
    },
}

#[derive(Args, Debug, Clone)]
pub struct DeployArgs {
    /// Machine id or any of its MACs.
    machine: String,
    #[arg(long)]
    image: String,
    #[arg(long)]
    hostname: String,
    /// root's authorized keys: an OpenSSH public key file (repeatable).
    #[arg(long = "ssh-key", value_name = "FILE")]
    ssh_keys: Vec<PathBuf>,
    /// `swarm:NAME` (Slipway forms or joins the Swarm NAME), a join spec
    /// as JSON, or @FILE holding one.
    #[arg(long, value_name = "SPEC")]
    cluster: Option<String>,
    /// Disk choice: its serial number (default: the largest disk).
    #[arg(long)]
    disk_serial: Option<String>,
    /// cloud-init user-data, for images with cloud-init.
    #[arg(long, value_name = "FILE")]
    user_data: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Wipe {
    Quick,
    Full,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum PowerArg {
    On,
    /// ACPI shutdown: the OS decides.
    Off,
    ForceOff,
    Cycle,
    Reset,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub(super) fn read_file(what: &'static str, path: &PathBuf) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|source| CliError::File { what, path: path.clone(), source })
}

pub fn run(command: Command) -> Result<(), CliError> {
    match command {
        Command::Machines { api, cmd } => machines(&api, cmd.unwrap_or(MachinesCmd::List)),
        Command::Bmcs { api, cmd } => oob::bmcs(&api, cmd.unwrap_or(BmcsCmd::List)),
        Command::Ups { api, cmd } => oob::ups(&api, cmd.unwrap_or(UpsCmd::List)),
        Command::Images { api, cmd } => images::run(&api, connect(&api)?, cmd.unwrap_or(ImagesCmd::List)),
        Command::Deploy { api, args } => deploy(&api, *args),
        Command::Release { api, machine, wipe } => {
            let body = match wipe {
                Some(w) => json!({ "wipe": if matches!(w, Wipe::Full) { "full" } else { "quick" } }),
                None => json!({}),
            };
            let m = connect(&api)?.post(&format!("/api/v1/machines/{}/release", seg(&machine)), &body)?;
            print(&api, &m, |m| format!("machine {}: {}\n", views::text(m, "/id"), views::text(m, "/state")));
            Ok(())
        }
        Command::Power { api, machine, action, pxe } => {
            let action = match action {
                PowerArg::On => "on",
                PowerArg::Off => "graceful_off",
                PowerArg::ForceOff => "force_off",
                PowerArg::Cycle => "cycle",
                PowerArg::Reset => "reset",
            };
            let mut body = json!({ "action": action });
            if pxe {
                body["boot"] = json!("pxe");
            }
            let r = connect(&api)?.post(&format!("/api/v1/machines/{}/power", seg(&machine)), &body)?;
            print(&api, &r, |r| {
                let t = |p| views::text(r, p);
                format!(
                    "machine {}: {action} sent through BMC {}; power {}\n",
                    t("/machine"),
                    t("/bmc"),
                    t("/power_state")
                )
            });
            Ok(())
        }
        Command::Events { api, machine, follow } => events(&api, machine, follow),
        Command::Tokens { api, cmd } => tokens(&api, cmd.unwrap_or(TokensCmd::List)),
        Command::Campaigns { api, cmd } => campaigns::campaigns(&api, cmd.unwrap_or(CampaignsCmd::List)),
        Command::Firmware { api, cmd } => campaigns::firmware(&api, cmd.unwrap_or(FirmwareCmd::List)),
    }
}

fn machines(api: &ApiArgs, cmd: MachinesCmd) -> Result<(), CliError> {
    let client = connect(api)?;
    match cmd {
        MachinesCmd::List => print(api, &client.get("/api/v1/machines")?, |v| views::machines(v, now_ms())),
        MachinesCmd::Show { id } => print(api, &client.get(&format!("/api/v1/machines/{}", seg(&id)))?, views::machine),
        MachinesCmd::Events { id } => return events(api, Some(id), false),
    }
    Ok(())
}

/// Pages through events (1,000 at a time); with `follow`, then polls for
/// newer ones every second until interrupted.
fn events(api: &ApiArgs, machine: Option<String>, follow: bool) -> Result<(), CliError> {
    let client = connect(api)?;
    let path = match &machine {
        Some(id) => format!("/api/v1/machines/{}/events", seg(id)),
        None => "/api/v1/events".to_string(),
    };
    let mut after = String::new();
    let mut all = vec![];
    if api.output == Output::Table {
        print!("{}", views::event_header());
    }
    loop {
        let page = client.get_query(&path, &[("after", &after), ("limit", "1000")])?;
        let batch = views::items(&page, "events").to_vec();
        if let Some(last) = batch.last() {
            after = views::text(last, "/id");
        }
        match api.output {
            Output::Table => batch.iter().for_each(|e| print!("{}", views::event_line(e))),
            // One JSON document per line when following; one list otherwise.
            Output::Json if follow => batch.iter().for_each(|e| println!("{e}")),
            Output::Json => all.extend(batch.iter().cloned()),
        }
        if batch.len() < 1000 {
            if !follow {
                break;
            }
            std::io::Write::flush(&mut std::io::stdout()).ok();
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    if api.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&json!({ "events": all })).unwrap_or_default());
    }
    Ok(())
}

/// `swarm:NAME`, inline JSON, or `@FILE` with JSON.
fn cluster_spec(spec: &str) -> Result<Value, CliError> {
    if let Some(name) = spec.strip_prefix("swarm:") {
        return Ok(json!({ "kind": "swarm", "cluster": name }));
    }
    let text = match spec.strip_prefix('@') {
        Some(path) => read_file("reading the cluster spec", &PathBuf::from(path))?,
        None => spec.to_string(),
    };
    serde_json::from_str(&text)
        .map_err(|e| CliError::Usage(format!("--cluster: swarm:NAME, a JSON join spec or @FILE ({e})")))
}

fn deploy(api: &ApiArgs, args: DeployArgs) -> Result<(), CliError> {
    let mut keys = vec![];
    for path in &args.ssh_keys {
        let text = read_file("reading the SSH key", path)?;
        keys.extend(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string));
    }
    let mut body = json!({ "image": args.image, "hostname": args.hostname, "ssh_authorized_keys": keys });
    if let Some(spec) = &args.cluster {
        body["cluster"] = cluster_spec(spec)?;
    }
    if let Some(serial) = &args.disk_serial {
        body["disk"] = json!({ "serial": serial });
    }
    if let Some(path) = &args.user_data {
        body["user_data"] = json!(read_file("reading user-data", path)?);
    }
    let client = connect(api)?;
    let deployment = client.post(&format!("/api/v1/machines/{}/deploy", seg(&args.machine)), &body)?;
    print(api, &deployment, views::deployment);
    Ok(())
}

fn tokens(api: &ApiArgs, cmd: TokensCmd) -> Result<(), CliError> {
    let client = connect(api)?;
    match cmd {
        TokensCmd::List => print(api, &client.get("/api/v1/tokens")?, views::tokens),
        TokensCmd::Create { name, role, expires_in } => {
            let mut body = json!({ "name": name, "role": role });
            if let Some(secs) = expires_in {
                body["expires_in_secs"] = json!(secs);
            }
            let created = client.post("/api/v1/tokens", &body)?;
            // The token alone on stdout, so TOKEN=$(slipway tokens create ...) works.
            print(api, &created, |c| {
                eprintln!(
                    "token {} ({}, role {}) created; it is shown this once:",
                    views::text(c, "/id"),
                    views::text(c, "/name"),
                    views::text(c, "/role")
                );
                // The tokens API calls it `secret`; `token` in its first draft.
                match views::text(c, "/secret") {
                    secret if secret.is_empty() => format!("{}\n", views::text(c, "/token")),
                    secret => format!("{secret}\n"),
                }
            });
        }
        TokensCmd::Revoke { id } => {
            client.delete(&format!("/api/v1/tokens/{}", seg(&id)))?;
            eprintln!("token {id} revoked");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::cluster_spec;
    use serde_json::json;

    #[test]
    fn cluster_specs() {
        assert_eq!(cluster_spec("swarm:rack7").unwrap(), json!({"kind": "swarm", "cluster": "rack7"}));
        let spec = r#"{"kind":"k3s","endpoint":"https://10.0.0.5:6443","token":"K10"}"#;
        assert_eq!(cluster_spec(spec).unwrap()["kind"], "k3s");
        assert!(cluster_spec("rack7").unwrap_err().to_string().contains("swarm:NAME"));
    }
}
