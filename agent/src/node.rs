//! `slipway-agent node`: the agent as a systemd service on a deployed OS.
//!
//! Every heartbeat it reports the OS, kernel, container runtime versions
//! and its cluster membership as the cluster itself reports it, and does
//! what the appliance answers: create a Swarm and hand back its join
//! tokens, join one, or run a join command; on a Swarm manager, also
//! drain, undrain or remove another node for an OS refresh (workers
//! cannot change nodes, so the appliance asks a manager's agent). It never claims membership it
//! did not read from the cluster (`docker info`, or the join spec's check
//! command), so `joined` in the API means the cluster agrees.

use std::net::{ToSocketAddrs, UdpSocket};
use std::process::Command;
use std::time::Duration;

use wire::{HookResult, Member, Membership, MembershipKind, NodeInstruction, NodeStatus, SwarmCreated};

/// What `/etc/slipway/agent.env` holds (written at deploy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub api: String,
    pub token: String,
    /// The image this OS was deployed from (absent in configs written
    /// before it was recorded).
    pub image: Option<String>,
    /// The appliance's public key (hex), pinned at deploy: every
    /// instruction must be signed with it.
    pub key: Option<String>,
}

/// Parses `KEY=VALUE` lines (a systemd `EnvironmentFile`).
pub fn parse_config(text: &str) -> Result<NodeConfig, String> {
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("{key} missing from {}", wire::NODE_CONFIG_PATH))
    };
    Ok(NodeConfig {
        api: get("SLIPWAY_API")?,
        token: get("SLIPWAY_TOKEN")?,
        image: get("SLIPWAY_IMAGE").ok(),
        key: get("SLIPWAY_KEY").ok(),
    })
}

/// The config file's text, as the ramdisk agent writes it.
pub fn render_config(config: &NodeConfig) -> String {
    let mut text = format!("SLIPWAY_API={}\nSLIPWAY_TOKEN={}\n", config.api, config.token);
    if let Some(image) = &config.image {
        text.push_str(&format!("SLIPWAY_IMAGE={image}\n"));
    }
    if let Some(key) = &config.key {
        text.push_str(&format!("SLIPWAY_KEY={key}\n"));
    }
    text
}

/// Runs forever: report, act, wait.
pub fn run(config: &NodeConfig) -> ! {
    let client = crate::Client::new(&config.api, &config.token, config.key.as_deref());
    let mut join_error: Option<String> = None;
    // The check command of a `command` join, once the appliance sent one.
    let mut check: Option<String> = None;
    // Reported until the next hook runs: the appliance may miss a report.
    let mut hook: Option<HookResult> = None;
    let mut backoff = 1;
    loop {
        let status = collect(config, check.as_deref(), join_error.take(), hook.clone());
        let instruction = match client.post_for::<_, NodeInstruction>(wire::NODE_STATUS_PATH, &status) {
            Ok(instruction) => {
                backoff = 1;
                instruction
            }
            Err(err) => {
                crate::log(&format!("status report failed: {err}; retrying in {backoff} s"));
                std::thread::sleep(Duration::from_secs(backoff));
                backoff = (backoff * 2).min(60);
                continue;
            }
        };
        let outcome = match instruction {
            NodeInstruction::Wait { poll_seconds } => {
                std::thread::sleep(Duration::from_secs(poll_seconds.clamp(1, 300).into()));
                Ok(())
            }
            NodeInstruction::SwarmInit => swarm_init(status.address.as_deref())
                .and_then(|created| client.post_for::<_, NodeInstruction>(wire::NODE_SWARM_PATH, &created).map(|_| ())),
            NodeInstruction::SwarmJoin { endpoint, token } => swarm_join(&endpoint, &token),
            NodeInstruction::Command { run, check: c } => {
                check = Some(c.clone());
                if sh(&c).is_ok() {
                    Ok(())
                } else {
                    crate::log(&format!("joining: {run}"));
                    sh(&run)
                }
            }
            // Only a manager is asked; the appliance waits for the change
            // to show in this agent's next member list.
            NodeInstruction::NodeAvailability { node, availability } => node_update(&node, &availability),
            NodeInstruction::NodeRemove { node } => {
                crate::log(&format!("removing Swarm node {node}, which was reinstalled"));
                // A manager's entry leaves the Raft group first (`rm` refuses
                // a manager); a worker's demote fails harmlessly.
                let _ = docker(&["node", "demote", &node]);
                docker(&["node", "rm", "--force", &node]).map(|_| ())
            }
            NodeInstruction::RunHook { id, run, timeout_seconds } => {
                crate::log(&format!("refresh campaign command {id}: {run}"));
                let result = run_hook(&id, &run, timeout_seconds);
                crate::log(&format!("refresh campaign command {id} exited {}", result.exit_code));
                hook = Some(result);
                Ok(())
            }
        };
        if let Err(err) = outcome {
            crate::log(&format!("cluster join: {err}"));
            join_error = Some(err);
            std::thread::sleep(Duration::from_secs(5));
        }
    }
}

fn collect(
    config: &NodeConfig,
    check: Option<&str>,
    join_error: Option<String>,
    hook: Option<HookResult>,
) -> NodeStatus {
    let api = config.api.as_str();
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default().trim().to_string();
    let os = os_pretty_name(&read("/etc/os-release"));
    let cluster = swarm_membership().or_else(|| {
        let check = check?;
        sh(check).ok()?;
        let node_id = read("/proc/sys/kernel/hostname");
        Some(Membership { kind: MembershipKind::Command, node_id, manager: false, members: vec![] })
    });
    NodeStatus {
        agent_version: env!("CARGO_PKG_VERSION").into(),
        hostname: read("/proc/sys/kernel/hostname"),
        os,
        kernel: read("/proc/sys/kernel/osrelease"),
        image: config.image.clone(),
        address: source_address(api),
        containerd_version: output("containerd", &["--version"]).and_then(|v| containerd_version(&v)),
        docker_version: output("docker", &["version", "--format", "{{.Server.Version}}"]),
        cluster,
        join_error,
        hook,
    }
}

/// Runs a refresh campaign's command under coreutils `timeout` (killed 10 s
/// after its time if it ignores TERM); the end of its output is kept.
pub fn run_hook(id: &str, run: &str, timeout_seconds: u32) -> HookResult {
    let out = Command::new("timeout")
        .args(["--kill-after=10", &timeout_seconds.max(1).to_string(), "sh", "-c", run])
        .stdin(std::process::Stdio::null())
        .output();
    let (exit_code, text) = match out {
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            (out.status.code().unwrap_or(-1), text)
        }
        Err(err) => (-1, format!("timeout/sh: {err}")),
    };
    HookResult { id: id.into(), exit_code, output: tail(text.trim(), wire::HOOK_OUTPUT_MAX).into() }
}

/// The last `max` bytes of `text`, cut at a character boundary.
fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

pub fn os_pretty_name(os_release: &str) -> String {
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// `containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1`
/// -> `1.6.20~ds1`.
pub fn containerd_version(line: &str) -> Option<String> {
    line.split_whitespace().nth(2).map(str::to_string)
}

/// The local address the kernel would use to reach the appliance: the
/// node's address on the provisioning network, where the Swarm listens.
fn source_address(api: &str) -> Option<String> {
    let host_port = api.split("://").nth(1)?.split('/').next()?;
    let target = host_port.to_socket_addrs().ok()?.next()?;
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect(target).ok()?;
    Some(socket.local_addr().ok()?.ip().to_string())
}

/// Swarm membership from `docker info`; none when Docker is absent, down,
/// or the node is in no Swarm.
fn swarm_membership() -> Option<Membership> {
    let info = output("docker", &["info", "--format", "{{json .Swarm}}"])?;
    let mut membership = parse_swarm_info(&info)?;
    if membership.manager {
        let nodes = output("docker", &["node", "ls", "--format", "{{json .}}"]).unwrap_or_default();
        membership.members = parse_node_ls(&nodes);
    }
    Some(membership)
}

pub fn parse_swarm_info(json: &str) -> Option<Membership> {
    let swarm: serde_json::Value = serde_json::from_str(json).ok()?;
    let node_id = swarm["NodeID"].as_str().filter(|id| !id.is_empty())?;
    if swarm["LocalNodeState"] != "active" {
        return None;
    }
    Some(Membership {
        kind: MembershipKind::Swarm,
        node_id: node_id.into(),
        manager: swarm["ControlAvailable"].as_bool().unwrap_or(false),
        members: vec![],
    })
}

/// One JSON object per line, as `docker node ls --format '{{json .}}'`.
pub fn parse_node_ls(lines: &str) -> Vec<Member> {
    lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|n| Member {
            id: n["ID"].as_str().unwrap_or_default().into(),
            hostname: n["Hostname"].as_str().unwrap_or_default().into(),
            status: n["Status"].as_str().unwrap_or_default().into(),
            availability: n["Availability"].as_str().unwrap_or_default().into(),
            manager: !n["ManagerStatus"].as_str().unwrap_or_default().is_empty(),
        })
        .collect()
}

fn swarm_init(address: Option<&str>) -> Result<SwarmCreated, String> {
    let address = address.ok_or("no address on the provisioning network to advertise")?;
    if swarm_membership().is_none() {
        crate::log(&format!("creating a Swarm advertised on {address}"));
        docker(&["swarm", "init", "--advertise-addr", address])?;
    }
    Ok(SwarmCreated {
        endpoint: format!("{address}:2377"),
        worker_token: docker(&["swarm", "join-token", "-q", "worker"])?,
        manager_token: docker(&["swarm", "join-token", "-q", "manager"])?,
    })
}

fn swarm_join(endpoint: &str, token: &str) -> Result<(), String> {
    if swarm_membership().is_some() {
        return Ok(());
    }
    crate::log(&format!("joining the Swarm at {endpoint}"));
    docker(&["swarm", "join", "--token", token, endpoint]).map(|_| ())
}

/// `docker node update --availability drain|active|pause NODE`, for an OS
/// refresh of NODE (this node or another; only managers may).
fn node_update(node: &str, availability: &str) -> Result<(), String> {
    if !matches!(availability, "drain" | "active" | "pause") {
        return Err(format!("unknown Swarm availability {availability:?}"));
    }
    crate::log(&format!("setting Swarm node {node} to {availability}"));
    docker(&["node", "update", "--availability", availability, node]).map(|_| ())
}

/// Runs docker; its trimmed stdout, or its stderr as the error.
fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker").args(args).output().map_err(|e| format!("docker: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!("docker {}: {}", args.first().unwrap_or(&""), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn sh(script: &str) -> Result<(), String> {
    let out = Command::new("sh").arg("-c").arg(script).output().map_err(|e| format!("sh: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`{script}` exited {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips() {
        let config = NodeConfig { api: "http://10.77.0.1:8081".into(), token: "abc".into(), image: None, key: None };
        assert_eq!(parse_config(&render_config(&config)), Ok(config.clone()));
        let config = NodeConfig { image: Some("debian-12.7".into()), key: Some("00ff".into()), ..config };
        assert_eq!(parse_config(&render_config(&config)), Ok(config));
        assert!(parse_config("SLIPWAY_API=x\n").unwrap_err().contains("SLIPWAY_TOKEN"));
    }

    #[test]
    fn hooks_report_their_exit_code_and_the_end_of_their_output() {
        let ok = run_hook("c1:drain", "echo draining; echo evicted >&2", 5);
        assert_eq!((ok.id.as_str(), ok.exit_code, ok.output.as_str()), ("c1:drain", 0, "draining\nevicted"));
        let failed = run_hook("c1:drain", "echo 'node busy' >&2; exit 3", 5);
        assert_eq!((failed.exit_code, failed.output.as_str()), (3, "node busy"));
        let started = std::time::Instant::now();
        let slow = run_hook("c1:drain", "sleep 30", 1);
        assert_eq!(slow.exit_code, 124, "its time ran out");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let long = run_hook("c1:drain", "head -c 5000 /dev/zero | tr '\\0' x; echo; echo last line", 5);
        assert_eq!(long.output.len(), wire::HOOK_OUTPUT_MAX);
        assert!(long.output.ends_with("x\nlast line"), "{}", &long.output[2000..]);
        assert_eq!(tail("añb", 2), "b", "never cut inside a character");
    }

    #[test]
    fn reads_what_docker_and_debian_print() {
        // `docker info --format '{{json .Swarm}}'` on a Swarm manager (docker.io 20.10).
        let info = r#"{"NodeID":"k2x7","NodeAddr":"10.77.0.101","LocalNodeState":"active","ControlAvailable":true,"Error":"","RemoteManagers":null,"Nodes":3,"Managers":1}"#;
        let m = parse_swarm_info(info).unwrap();
        assert_eq!((m.kind.as_str(), m.node_id.as_str(), m.manager), ("swarm", "k2x7", true));
        let inactive = r#"{"NodeID":"","NodeAddr":"","LocalNodeState":"inactive","ControlAvailable":false}"#;
        assert_eq!(parse_swarm_info(inactive), None);
        let pending = r#"{"NodeID":"k2x7","LocalNodeState":"pending","ControlAvailable":false}"#;
        assert_eq!(parse_swarm_info(pending), None, "joining is not joined");

        let ls = concat!(
            r#"{"Availability":"Active","EngineVersion":"20.10.24+dfsg1","Hostname":"node1","ID":"a","ManagerStatus":"Leader","Self":true,"Status":"Ready","TLSStatus":"Ready"}"#,
            "\n",
            r#"{"Availability":"Drain","EngineVersion":"20.10.24+dfsg1","Hostname":"node2","ID":"b","ManagerStatus":"","Self":false,"Status":"Down","TLSStatus":"Ready"}"#
        );
        let members = parse_node_ls(ls);
        assert_eq!(members.len(), 2);
        assert!(members[0].manager && !members[1].manager);
        assert_eq!((members[1].status.as_str(), members[1].availability.as_str()), ("Down", "Drain"));
        assert_eq!((members[0].id.as_str(), members[1].id.as_str()), ("a", "b"), "refreshes name nodes by id");
        assert!(node_update("b", "sideways").is_err(), "only Swarm's availabilities reach docker");

        assert_eq!(
            containerd_version("containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1").as_deref(),
            Some("1.6.20~ds1")
        );
        assert_eq!(
            os_pretty_name("NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"),
            "Debian GNU/Linux 12 (bookworm)"
        );
    }
}
