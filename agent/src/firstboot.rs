//! First-boot configuration written straight into the deployed root
//! filesystem: the host name and root's SSH keys, a static address, the
//! containerd configuration, the node agent as a systemd service with its
//! credential, and a one-shot first-boot unit that grows the root
//! filesystem and creates users (with the image's own `useradd`, under its
//! own systemd). Images with cloud-init also get a NoCloud seed carrying
//! the same host name, users, keys, network and the operator's user-data.
//! The root is the ext4 partition of the written disk that holds
//! `etc/os-release`; an image without one (lab-tiny) is left as it is, and
//! that is reported, not hidden.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What to write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirstBoot {
    pub hostname: String,
    pub ssh_authorized_keys: Vec<String>,
    pub users: Vec<wire::User>,
    pub network: Option<wire::StaticNetwork>,
    pub user_data: Option<String>,
    /// The NIC the machine booted from; a static address goes on it.
    pub boot_mac: inventory::MacAddr,
    /// Install the node agent: this binary, with this configuration.
    pub node: Option<(std::path::PathBuf, crate::node::NodeConfig)>,
}

/// Where the configuration went, for the report.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Written { partition: String },
    NoRootFilesystem,
}

const MOUNT_POINT: &str = "/mnt/slipway-root";

/// Re-reads `disk`'s partition table, finds its root filesystem, writes
/// `config` into it and unmounts it.
pub fn apply(disk: &Path, config: &FirstBoot) -> Result<Applied, String> {
    // The kernel still has the partition table of what was on the disk
    // before the image.
    run("blockdev", &["--rereadpt", &disk.display().to_string()])?;
    std::fs::create_dir_all(MOUNT_POINT).map_err(|e| format!("{MOUNT_POINT}: {e}"))?;
    for partition in partitions(disk) {
        let dev = partition.display().to_string();
        if run("mount", &["-t", "ext4", &dev, MOUNT_POINT]).is_err() {
            continue;
        }
        let root = Path::new(MOUNT_POINT);
        let result = if root.join("etc/os-release").exists() { write_into(root, config).map(Some) } else { Ok(None) };
        let unmounted = run("umount", &[MOUNT_POINT]);
        match result {
            Ok(Some(())) => {
                unmounted?;
                return Ok(Applied::Written { partition: dev });
            }
            Ok(None) => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(Applied::NoRootFilesystem)
}

/// `/dev/vda` -> `/dev/vda1`, `/dev/vda2`, ... as the kernel lists them.
pub(crate) fn partitions(disk: &Path) -> Vec<PathBuf> {
    let name = disk.file_name().unwrap_or_default().to_string_lossy().to_string();
    let mut parts: Vec<String> = std::fs::read_dir(Path::new("/sys/class/block").join(&name))
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with(&name) && n.len() > name.len())
                .collect()
        })
        .unwrap_or_default();
    parts.sort();
    parts.into_iter().map(|p| Path::new("/dev").join(p)).collect()
}

/// Writes the files under `root` (a mounted root filesystem).
pub fn write_into(root: &Path, config: &FirstBoot) -> Result<(), String> {
    let put = |rel: &str, text: &str, mode: u32| -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        let path = root.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    let host = &config.hostname;
    let short = host.split('.').next().unwrap_or(host);
    put("etc/hostname", &format!("{host}\n"), 0o644)?;
    put(
        "etc/hosts",
        &format!("127.0.0.1 localhost\n127.0.1.1 {host} {short}\n::1 localhost ip6-localhost ip6-loopback\n"),
        0o644,
    )?;
    if !config.ssh_authorized_keys.is_empty() {
        let keys: String = config.ssh_authorized_keys.iter().map(|k| format!("{}\n", k.trim())).collect();
        put("root/.ssh/authorized_keys", &keys, 0o600)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.join("root/.ssh"), std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("root/.ssh: {e}"))?;
    }
    if let Some(net) = &config.network {
        // Sorts before the image's own DHCP catch-all, so it wins.
        put("etc/systemd/network/10-slipway.network", &networkd_file(config.boot_mac, net), 0o644)?;
    }
    if root.join("usr/bin/containerd").exists() {
        put("etc/containerd/config.toml", CONTAINERD_CONFIG, 0o644)?;
    }
    put("usr/local/lib/slipway/firstboot.sh", &firstboot_script(&config.users), 0o755)?;
    put("etc/systemd/system/slipway-firstboot.service", FIRSTBOOT_UNIT, 0o644)?;
    enable(root, "slipway-firstboot.service")?;
    if let Some((binary, node)) = &config.node {
        let target = root.join("usr/local/bin/slipway-agent");
        std::fs::create_dir_all(root.join("usr/local/bin")).map_err(|e| format!("usr/local/bin: {e}"))?;
        std::fs::copy(binary, &target).map_err(|e| format!("{} -> {}: {e}", binary.display(), target.display()))?;
        put(wire::NODE_CONFIG_PATH.trim_start_matches('/'), &crate::node::render_config(node), 0o600)?;
        put("etc/systemd/system/slipway-agent.service", AGENT_UNIT, 0o644)?;
        enable(root, "slipway-agent.service")?;
    }
    if root.join("usr/bin/cloud-init").exists() {
        for (name, text) in nocloud_seed(config) {
            put(&format!("var/lib/cloud/seed/nocloud/{name}"), &text, 0o600)?;
        }
    }
    Ok(())
}

/// `systemctl enable` without systemd running: the wants symlink.
fn enable(root: &Path, unit: &str) -> Result<(), String> {
    let dir = root.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let link = dir.join(unit);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(format!("/etc/systemd/system/{unit}"), &link)
        .map_err(|e| format!("{}: {e}", link.display()))
}

/// containerd with the systemd cgroup driver, as kubelet and Docker on a
/// systemd host expect; everything else is containerd's default.
const CONTAINERD_CONFIG: &str = r#"# Written by Slipway at deploy.
version = 2

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = true
"#;

const AGENT_UNIT: &str = "[Unit]
Description=Slipway node agent
Wants=network-online.target docker.service containerd.service
After=network-online.target docker.service containerd.service slipway-firstboot.service

[Service]
ExecStart=/usr/local/bin/slipway-agent node /etc/slipway/agent.env
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
";

const FIRSTBOOT_UNIT: &str = "[Unit]
Description=Slipway first-boot configuration (grow the root filesystem, create users)
ConditionPathExists=!/var/lib/slipway/firstboot.done
After=local-fs.target
Before=slipway-agent.service ssh.service

[Service]
Type=oneshot
ExecStart=/usr/local/lib/slipway/firstboot.sh
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
";

/// Single-quoted for `sh`.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// Grows the root filesystem into its partition (the agent grew the
/// partition to the disk), then creates each user with its groups and keys.
pub fn firstboot_script(users: &[wire::User]) -> String {
    let mut s = String::from(
        "#!/bin/sh\n# Written by Slipway at deploy; runs once (slipway-firstboot.service).\n\
         root=$(findmnt -no SOURCE /)\n\
         resize2fs \"$root\" || echo \"slipway: growing $root failed\" >&2\n",
    );
    for user in users {
        let name = quote(&user.name);
        s += &format!("id {name} >/dev/null 2>&1 || useradd -m -s /bin/bash {name}\n");
        for group in &user.groups {
            let group = quote(group);
            s += &format!("getent group {group} >/dev/null && usermod -aG {group} {name}\n");
        }
        if !user.ssh_authorized_keys.is_empty() {
            s += &format!(
                "home=$(getent passwd {name} | cut -d: -f6)\ninstall -d -m 700 -o {name} -g {name} \"$home/.ssh\"\n"
            );
            let keys: String = user.ssh_authorized_keys.iter().map(|k| format!("{}\n", k.trim())).collect();
            s += &format!("printf %s {} > \"$home/.ssh/authorized_keys\"\n", quote(&keys));
            s += &format!("chown {name}: \"$home/.ssh/authorized_keys\" && chmod 600 \"$home/.ssh/authorized_keys\"\n");
        }
    }
    s + "mkdir -p /var/lib/slipway && touch /var/lib/slipway/firstboot.done\n"
}

fn networkd_file(mac: inventory::MacAddr, net: &wire::StaticNetwork) -> String {
    let mut s =
        format!("# Written by Slipway at deploy.\n[Match]\nMACAddress={mac}\n\n[Network]\nAddress={}\n", net.address);
    if let Some(gw) = &net.gateway {
        s += &format!("Gateway={gw}\n");
    }
    for dns in &net.dns {
        s += &format!("DNS={dns}\n");
    }
    s
}

/// cloud-init NoCloud seed: meta-data, user-data and (static addressing)
/// network-config. The operator's user-data wins when given.
pub fn nocloud_seed(config: &FirstBoot) -> Vec<(&'static str, String)> {
    let json = |v: &str| serde_json::to_string(v).unwrap_or_default();
    let mut seed = vec![(
        "meta-data",
        format!(
            "instance-id: slipway-{}\nlocal-hostname: {}\n",
            config.boot_mac.to_string().replace(':', ""),
            config.hostname
        ),
    )];
    let user_data = config.user_data.clone().unwrap_or_else(|| {
        let mut s = format!("#cloud-config\nhostname: {}\n", json(&config.hostname));
        if !config.ssh_authorized_keys.is_empty() {
            s += "disable_root: false\nssh_authorized_keys:\n";
            s += &config.ssh_authorized_keys.iter().map(|k| format!("  - {}\n", json(k.trim()))).collect::<String>();
        }
        if !config.users.is_empty() {
            s += "users:\n  - default\n";
            for u in &config.users {
                s += &format!("  - name: {}\n    shell: /bin/bash\n", json(&u.name));
                if !u.groups.is_empty() {
                    s += &format!("    groups: {}\n", json(&u.groups.join(",")));
                }
                if !u.ssh_authorized_keys.is_empty() {
                    s += "    ssh_authorized_keys:\n";
                    s += &u
                        .ssh_authorized_keys
                        .iter()
                        .map(|k| format!("      - {}\n", json(k.trim())))
                        .collect::<String>();
                }
            }
        }
        s
    });
    seed.push(("user-data", user_data));
    if let Some(net) = &config.network {
        let mut s = format!(
            "version: 2\nethernets:\n  boot:\n    match:\n      macaddress: {}\n    addresses: [{}]\n",
            json(&config.boot_mac.to_string()),
            json(&net.address)
        );
        if let Some(gw) = &net.gateway {
            s += &format!("    gateway4: {}\n", json(gw));
        }
        if !net.dns.is_empty() {
            let list: Vec<String> = net.dns.iter().map(|d| json(d)).collect();
            s += &format!("    nameservers:\n      addresses: [{}]\n", list.join(", "));
        }
        seed.push(("network-config", s));
    }
    seed
}

pub(crate) fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_hostname_and_keys_with_safe_modes() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let config = FirstBoot {
            hostname: "node1.rack7".into(),
            ssh_authorized_keys: vec!["ssh-ed25519 AAAA op@desk".into()],
            ..Default::default()
        };
        write_into(root.path(), &config).unwrap();
        assert_eq!(std::fs::read_to_string(root.path().join("etc/hostname")).unwrap(), "node1.rack7\n");
        assert!(std::fs::read_to_string(root.path().join("etc/hosts"))
            .unwrap()
            .contains("127.0.1.1 node1.rack7 node1"));
        let keys = root.path().join("root/.ssh/authorized_keys");
        assert_eq!(std::fs::read_to_string(&keys).unwrap(), "ssh-ed25519 AAAA op@desk\n");
        assert_eq!(std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(root.path().join("root/.ssh")).unwrap().permissions().mode() & 0o777, 0o700);
    }

    fn full_config(root: &Path) -> FirstBoot {
        let agent = root.join("agent-binary");
        std::fs::write(&agent, b"\x7fELF").unwrap();
        FirstBoot {
            hostname: "node2".into(),
            ssh_authorized_keys: vec!["ssh-ed25519 AAAA op@desk".into()],
            users: vec![wire::User {
                name: "ops".into(),
                ssh_authorized_keys: vec!["ssh-ed25519 BBBB it's@laptop".into()],
                groups: vec!["sudo".into(), "docker".into()],
            }],
            network: Some(wire::StaticNetwork {
                address: "10.77.0.50/24".into(),
                gateway: Some("10.77.0.1".into()),
                dns: vec!["10.77.0.1".into()],
            }),
            user_data: None,
            boot_mac: "52:54:00:5e:00:02".parse().unwrap(),
            node: Some((
                agent,
                crate::node::NodeConfig {
                    api: "http://10.77.0.1:8081".into(),
                    token: "secret".into(),
                    image: Some("debian-12".into()),
                    key: None,
                },
            )),
        }
    }

    #[test]
    fn installs_the_node_agent_containerd_config_network_and_first_boot_unit() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::write(root.join("usr/bin/containerd"), b"").unwrap();
        write_into(&root, &full_config(dir.path())).unwrap();

        let env = root.join("etc/slipway/agent.env");
        assert_eq!(
            std::fs::read_to_string(&env).unwrap(),
            "SLIPWAY_API=http://10.77.0.1:8081\nSLIPWAY_TOKEN=secret\nSLIPWAY_IMAGE=debian-12\n"
        );
        assert_eq!(
            std::fs::metadata(&env).unwrap().permissions().mode() & 0o777,
            0o600,
            "the credential is root's only"
        );
        assert_eq!(std::fs::read(root.join("usr/local/bin/slipway-agent")).unwrap(), b"\x7fELF");
        for unit in ["slipway-agent.service", "slipway-firstboot.service"] {
            let link = root.join("etc/systemd/system/multi-user.target.wants").join(unit);
            assert_eq!(
                std::fs::read_link(&link).unwrap(),
                Path::new("/etc/systemd/system").join(unit),
                "{unit} enabled"
            );
        }
        assert!(std::fs::read_to_string(root.join("etc/containerd/config.toml"))
            .unwrap()
            .contains("SystemdCgroup = true"));
        let network = std::fs::read_to_string(root.join("etc/systemd/network/10-slipway.network")).unwrap();
        assert!(
            network.contains("MACAddress=52:54:00:5e:00:02") && network.contains("Address=10.77.0.50/24"),
            "{network}"
        );
        assert!(!root.join("var/lib/cloud").exists(), "no cloud-init in the image: no seed");

        // The first-boot script is valid shell, quotes what it is given,
        // and creates the user with its groups and keys.
        let script = root.join("usr/local/lib/slipway/firstboot.sh");
        let check = std::process::Command::new("sh").arg("-n").arg(&script).output().unwrap();
        assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
        let text = std::fs::read_to_string(&script).unwrap();
        assert!(
            text.contains("useradd -m -s /bin/bash 'ops'") && text.contains("usermod -aG 'docker' 'ops'"),
            "{text}"
        );
        assert!(text.contains("it'\\''s@laptop"), "a quote in a key cannot end the string: {text}");
        assert!(text.contains("resize2fs"), "{text}");
    }

    #[test]
    fn images_with_cloud_init_get_a_nocloud_seed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::write(root.join("usr/bin/cloud-init"), b"").unwrap();
        let mut config = full_config(dir.path());
        write_into(&root, &config).unwrap();
        let seed = root.join("var/lib/cloud/seed/nocloud");
        let meta = std::fs::read_to_string(seed.join("meta-data")).unwrap();
        assert!(meta.contains("local-hostname: node2"), "{meta}");
        let user_data = std::fs::read_to_string(seed.join("user-data")).unwrap();
        assert!(user_data.starts_with("#cloud-config\n") && user_data.contains("name: \"ops\""), "{user_data}");
        let network = std::fs::read_to_string(seed.join("network-config")).unwrap();
        assert!(network.contains("addresses: [\"10.77.0.50/24\"]"), "{network}");

        config.user_data = Some("#cloud-config\nruncmd: [touch /ok]\n".into());
        write_into(&root, &config).unwrap();
        assert_eq!(
            std::fs::read_to_string(seed.join("user-data")).unwrap(),
            "#cloud-config\nruncmd: [touch /ok]\n",
            "the operator's user-data is passed as given"
        );
    }
}
