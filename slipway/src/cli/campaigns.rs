//! `slipway campaigns` and `slipway firmware`: refresh campaigns (create,
//! follow, pause, resume, cancel) and the firmware files they roll out.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::client::seg;
use super::{connect, print, views, ApiArgs, CliError};

#[derive(Subcommand, Debug, Clone)]
pub enum CampaignsCmd {
    /// All of them, with node counts (the default).
    List,
    /// One campaign and each node's progress.
    Show { id: String },
    /// Start a firmware or OS-refresh campaign.
    Create(Box<CampaignCreate>),
    /// Start no more nodes (one in progress finishes).
    Pause { id: String },
    /// Go on after a pause; the failures so far are accepted.
    Resume { id: String },
    /// Start no more nodes, for good.
    Cancel { id: String },
}

#[derive(Args, Debug, Clone)]
pub struct CampaignCreate {
    name: String,
    /// Machines by id or MAC (repeat or comma-separate).
    #[arg(long, value_delimiter = ',')]
    machines: Vec<String>,
    /// Every machine in these racks.
    #[arg(long, value_delimiter = ',')]
    racks: Vec<String>,
    /// OS refresh: reinstall each machine with this image, keeping its
    /// deploy settings.
    #[arg(long, value_name = "IMAGE", conflicts_with = "firmware", required_unless_present = "firmware")]
    os_image: Option<String>,
    /// Firmware: an uploaded firmware file (`slipway firmware upload`).
    #[arg(long, value_name = "NAME", requires = "version")]
    firmware: Option<String>,
    /// The FirmwareInventory id the firmware is for.
    #[arg(long, default_value = "BIOS", requires = "firmware")]
    component: String,
    /// The version the BMC shows once the firmware is in place.
    #[arg(long, requires = "firmware")]
    version: Option<String>,
    /// Start at this time (RFC 3339) instead of now.
    #[arg(long, value_name = "TIME", conflicts_with = "window")]
    at: Option<String>,
    /// Only inside a maintenance window: five-field cron for when it opens.
    #[arg(long, value_name = "CRON", requires = "window_minutes")]
    window: Option<String>,
    /// How long each window lasts.
    #[arg(long, value_name = "MINUTES", requires = "window")]
    window_minutes: Option<u32>,
    /// The window's IANA time zone.
    #[arg(long, default_value = "UTC", requires = "window")]
    timezone: String,
    /// Nodes in progress at once.
    #[arg(long, default_value_t = 1)]
    batch_size: u32,
    /// Pause after this many failed nodes.
    #[arg(long, default_value_t = 1)]
    max_failures: u32,
    /// Start no node unless every UPS feeding the targets has this charge.
    #[arg(long, value_name = "PERCENT")]
    min_charge: Option<f64>,
    /// Start nodes even while a UPS feeding them is on battery.
    #[arg(long)]
    ignore_mains: bool,
    /// OS refresh: a node not back on the new image this long after it is
    /// written is rolled back.
    #[arg(long, value_name = "SECS")]
    back_within: Option<u64>,
    /// For nodes of a cluster Slipway did not form (kubeadm, k3s, ...): a
    /// command their own agent runs before the node goes down.
    #[arg(long, value_name = "COMMAND", requires = "undrain")]
    drain: Option<String>,
    /// ... and the one it runs once the node is back.
    #[arg(long, value_name = "COMMAND", requires = "drain")]
    undrain: Option<String>,
    /// Kubernetes (kubeadm, k3s): drain with `kubectl drain "$(hostname)"`
    /// and `kubectl uncordon` on the node, using this kubeconfig there.
    #[arg(long, value_name = "KUBECONFIG", conflicts_with = "drain")]
    kubectl_drain: Option<String>,
    /// How long each of them may take.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    drain_timeout: u32,
}

/// The drain and undrain commands for a Kubernetes node, run on the node
/// with `kubeconfig` (its node name is its host name, as kubeadm and k3s
/// register it).
fn kubectl_commands(kubeconfig: &str, timeout: u32) -> (String, String) {
    let kubectl = format!("kubectl --kubeconfig '{}'", kubeconfig.replace('\'', r"'\''"));
    (
        format!(
            r#"{kubectl} drain "$(hostname)" --ignore-daemonsets --delete-emptydir-data --timeout={}s"#,
            timeout.saturating_sub(10).max(1)
        ),
        format!(r#"{kubectl} uncordon "$(hostname)""#),
    )
}

#[derive(Subcommand, Debug, Clone)]
pub enum FirmwareCmd {
    /// Uploaded firmware files (the default).
    List,
    /// Upload a firmware file under a name; BMCs fetch it from the appliance.
    Upload { name: String, file: PathBuf },
}

/// The API's create request for these flags.
fn create_body(c: CampaignCreate) -> Value {
    let action = match (c.os_image, c.firmware) {
        (Some(image), _) => json!({ "os_refresh": { "image": image } }),
        (None, firmware) => json!({ "firmware": {
            "component": c.component, "firmware": firmware, "version": c.version.unwrap_or_default() } }),
    };
    let schedule = match (c.at, c.window) {
        (Some(at), _) => json!({ "at": at }),
        (None, Some(cron)) => json!({ "window": {
            "cron": cron, "timezone": c.timezone, "minutes": c.window_minutes.unwrap_or_default() } }),
        (None, None) => json!("now"),
    };
    let mut gates = json!({ "on_mains": !c.ignore_mains });
    if let Some(min) = c.min_charge {
        gates["ups_min_charge_percent"] = json!(min);
    }
    if let Some(secs) = c.back_within {
        gates["back_within_seconds"] = json!(secs);
    }
    let commands = match (c.drain, c.undrain, c.kubectl_drain) {
        (Some(run), Some(undo), _) => Some((run, undo)),
        (_, _, Some(kubeconfig)) => Some(kubectl_commands(&kubeconfig, c.drain_timeout)),
        _ => None,
    };
    if let Some((run, undo)) = commands {
        gates["drain"] = json!({ "run": run, "undo": undo, "timeout_seconds": c.drain_timeout });
    }
    json!({
        "name": c.name,
        "targets": { "machines": c.machines, "racks": c.racks },
        "action": action,
        "schedule": schedule,
        "rollout": { "batch_size": c.batch_size, "max_failures": c.max_failures },
        "gates": gates,
    })
}

pub fn campaigns(api: &ApiArgs, cmd: CampaignsCmd) -> Result<(), CliError> {
    let client = connect(api)?;
    let path = |id: &str, what: &str| format!("/api/v1/campaigns/{}{what}", seg(id));
    let shown = match cmd {
        CampaignsCmd::List => {
            print(api, &client.get("/api/v1/campaigns")?, views::campaigns);
            return Ok(());
        }
        CampaignsCmd::Show { id } => client.get(&path(&id, ""))?,
        CampaignsCmd::Create(c) => client.post("/api/v1/campaigns", &create_body(*c))?,
        CampaignsCmd::Pause { id } => client.post(&path(&id, "/pause"), &json!({}))?,
        CampaignsCmd::Resume { id } => client.post(&path(&id, "/resume"), &json!({}))?,
        CampaignsCmd::Cancel { id } => client.post(&path(&id, "/cancel"), &json!({}))?,
    };
    print(api, &shown, views::campaign);
    Ok(())
}

pub fn firmware(api: &ApiArgs, cmd: FirmwareCmd) -> Result<(), CliError> {
    let client = connect(api)?;
    match cmd {
        FirmwareCmd::List => print(api, &client.get("/api/v1/firmware")?, views::firmware),
        FirmwareCmd::Upload { name, file } => {
            let open = |source| CliError::File { what: "reading firmware", path: file.clone(), source };
            let f = std::fs::File::open(&file).map_err(open)?;
            let len = f.metadata().map_err(open)?.len();
            let uploaded = client.put_stream(&format!("/api/v1/firmware/{}", seg(&name)), &[], len, f)?;
            print(api, &uploaded, |v| {
                format!("firmware {}: {}, sha256 {}\n", name, views::bytes(len), views::text(v, "/sha256"))
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: CampaignsCmd,
    }

    fn body(args: &[&str]) -> Value {
        let cli = Cli::try_parse_from(["campaigns"].iter().chain(args)).unwrap();
        let CampaignsCmd::Create(c) = cli.cmd else { panic!() };
        create_body(*c)
    }

    #[test]
    fn flags_make_the_apis_request() {
        let b = body(&["create", "r7 to 12.8", "--racks", "r7", "--os-image", "debian-12.8", "--back-within", "600"]);
        assert_eq!(b["action"], json!({ "os_refresh": { "image": "debian-12.8" } }));
        assert_eq!(b["targets"], json!({ "machines": [], "racks": ["r7"] }));
        assert_eq!(b["schedule"], "now");
        assert_eq!(b["gates"], json!({ "on_mains": true, "back_within_seconds": 600 }));
        assert_eq!(b["rollout"], json!({ "batch_size": 1, "max_failures": 1 }));
        let b = body(&[
            "create",
            "k8s",
            "--os-image",
            "d",
            "--drain",
            "kubectl drain n",
            "--undrain",
            "kubectl uncordon n",
        ]);
        let drain = json!({ "run": "kubectl drain n", "undo": "kubectl uncordon n", "timeout_seconds": 600 });
        assert_eq!(b["gates"]["drain"], drain);
        let only_drain = Cli::try_parse_from(["campaigns", "create", "k", "--os-image", "d", "--drain", "x"]);
        assert!(only_drain.is_err(), "a drain without its undo is refused");
        let b = body(&["create", "k8s", "--os-image", "d", "--kubectl-drain", "/etc/rancher/k3s/k3s.yaml"]);
        let kubectl = "kubectl --kubeconfig '/etc/rancher/k3s/k3s.yaml'";
        let drain = json!({
            "run": format!(r#"{kubectl} drain "$(hostname)" --ignore-daemonsets --delete-emptydir-data --timeout=590s"#),
            "undo": format!(r#"{kubectl} uncordon "$(hostname)""#),
            "timeout_seconds": 600 });
        assert_eq!(b["gates"]["drain"], drain);
        let (run, _) = kubectl_commands("/tmp/it's.yaml", 60);
        assert!(run.starts_with(r"kubectl --kubeconfig '/tmp/it'\''s.yaml' drain"), "{run}");

        let b = body(&[
            "create",
            "bios",
            "--machines",
            "m1,m2",
            "--firmware",
            "bios-2.1",
            "--version",
            "2.1",
            "--window",
            "0 2 * * SAT",
            "--window-minutes",
            "240",
            "--timezone",
            "Europe/Berlin",
            "--batch-size",
            "2",
            "--min-charge",
            "50",
        ]);
        assert_eq!(
            b["action"],
            json!({ "firmware": { "component": "BIOS", "firmware": "bios-2.1", "version": "2.1" } })
        );
        assert_eq!(b["targets"]["machines"], json!(["m1", "m2"]));
        assert_eq!(
            b["schedule"]["window"],
            json!({ "cron": "0 2 * * SAT", "timezone": "Europe/Berlin", "minutes": 240 })
        );
        assert_eq!(b["gates"], json!({ "on_mains": true, "ups_min_charge_percent": 50.0 }));
        assert_eq!(b["rollout"]["batch_size"], 2);
    }

    #[test]
    fn an_action_is_required_and_only_one() {
        for args in [
            &["create", "x", "--racks", "r7"][..],
            &["create", "x", "--os-image", "a", "--firmware", "f", "--version", "1"],
            &["create", "x", "--firmware", "f"],
        ] {
            assert!(Cli::try_parse_from(["campaigns"].iter().chain(args)).is_err(), "{args:?}");
        }
    }
}
