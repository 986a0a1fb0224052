//! Real DHCP clients against `slipway serve`: busybox udhcpc (as a BIOS
//! PXE ROM and as iPXE, by their options), ISC dhclient and dhcpcd (ordinary
//! OS clients). Server and clients sit in two network namespaces joined by a
//! veth pair, on a private range with no route anywhere else.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hardware_tests::support::{lab_tests_enabled, slipway_bin};
use serde_json::Value;

struct Namespaces {
    server: String,
    client: String,
}

impl Namespaces {
    fn new() -> Namespaces {
        let id = std::process::id();
        let ns = Namespaces { server: format!("slw-dhcp-s{id}"), client: format!("slw-dhcp-c{id}") };
        ip(&["netns", "add", &ns.server]);
        ip(&["netns", "add", &ns.client]);
        ip(&[
            "link", "add", "slw-vs", "netns", &ns.server, "type", "veth", "peer", "name", "slw-vc", "netns", &ns.client,
        ]);
        ip(&["-n", &ns.server, "addr", "add", "10.79.0.1/24", "dev", "slw-vs"]);
        for (n, dev) in [(&ns.server, "slw-vs"), (&ns.client, "slw-vc")] {
            ip(&["-n", n, "link", "set", dev, "up"]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
        }
        ns
    }

    fn exec(&self, ns: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).args(args);
        cmd
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
            // Clients that daemonize (dhclient, dhcpcd's privilege-separated
            // helpers) live on in the namespace: end them first. Only this
            // test's namespaces are touched.
            kill_all_in(ns);
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn kill_all_in(ns: &str) {
    let pids = Command::new("ip").args(["netns", "pids", ns]).output().map(|o| o.stdout).unwrap_or_default();
    for pid in String::from_utf8_lossy(&pids).split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().unwrap();
    assert!(status.success(), "ip {args:?}");
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const TOKEN: &str = "dhcp-clients-test-token";

fn api_get(ns: &Namespaces, path: &str) -> Value {
    let out = ns
        .exec(
            &ns.server,
            &["curl", "-sf", "-H", &format!("Authorization: Bearer {TOKEN}"), &format!("http://127.0.0.1:18080{path}")],
        )
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// Runs udhcpc once; returns the variables its script saw on `bound`.
fn udhcpc(ns: &Namespaces, dir: &Path, name: &str, mac: &str, extra: &[&str]) -> String {
    ip(&["-n", &ns.client, "link", "set", "slw-vc", "address", mac]);
    let out = dir.join(format!("{name}.env"));
    let script = dir.join(format!("{name}.sh"));
    std::fs::write(&script, format!("#!/bin/sh\n[ \"$1\" = bound ] && env > {}\nexit 0\n", out.display())).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut args =
        vec!["udhcpc", "-i", "slw-vc", "-n", "-q", "-f", "-t", "5", "-T", "1", "-s", script.to_str().unwrap()];
    args.extend_from_slice(extra);
    let status = ns.exec(&ns.client, &args).stdout(Stdio::null()).status().unwrap();
    assert!(status.success(), "{name}: udhcpc got no lease");
    std::fs::read_to_string(out).unwrap()
}

fn var<'a>(env: &'a str, key: &str) -> Option<&'a str> {
    env.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn real_clients_get_leases_and_pxe_clients_get_boot_files() {
    if !lab_tests_enabled("dhcp_clients", &["udhcpc", "dhclient", "dhcpcd", "ip", "curl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ramdisk = dir.path().join("ramdisk");
    std::fs::create_dir(&ramdisk).unwrap();
    std::fs::write(ramdisk.join("vmlinuz"), "k").unwrap();
    std::fs::write(ramdisk.join("initrd.img"), "i").unwrap();
    let config = dir.path().join("slipway.toml");
    // BIOS clients only, and the server's namespace has no way out: no
    // signed UEFI chain to fetch from Debian at start (`uefi_pxe = "ipxe"`).
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:18080\"\ntoken = \"{TOKEN}\"\n\
             [provisioning]\ninterface = \"slw-vs\"\naddress = \"10.79.0.1\"\npool_start = \"10.79.0.100\"\npool_end = \"10.79.0.110\"\n\
             [boot]\nramdisk_dir = \"{}\"\nuefi_pxe = \"ipxe\"\n",
            dir.path().join("data").display(),
            ramdisk.display()
        ),
    )
    .unwrap();

    let ns = Namespaces::new();
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let _serve = Serve(
        ns.exec(&ns.server, &[slipway_bin().to_str().unwrap(), "serve", "--config", config.to_str().unwrap()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while api_get(&ns, "/healthz")["status"] != "ok" {
        assert!(
            Instant::now() < deadline,
            "serve did not come up: {}",
            std::fs::read_to_string(dir.path().join("serve.log")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A BIOS PXE ROM: vendor class PXEClient, architecture 0.
    let pxe = udhcpc(
        &ns,
        dir.path(),
        "pxe",
        "52:54:00:7e:00:01",
        &["-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000"],
    );
    assert!(var(&pxe, "ip").is_some_and(|ip| ip.starts_with("10.79.0.1")), "{pxe}");
    assert_eq!(var(&pxe, "boot_file"), Some("undionly.kpxe"));
    assert_eq!(var(&pxe, "siaddr"), Some("10.79.0.1"));
    assert_eq!(var(&pxe, "serverid"), Some("10.79.0.1"));

    // iPXE (user class "iPXE"): its per-machine script, never a binary.
    let ipxe = udhcpc(
        &ns,
        dir.path(),
        "ipxe",
        "52:54:00:7e:00:02",
        &["-V", "PXEClient:Arch:00007:UNDI:003016", "-x", "0x5d:0007", "-x", "0x4d:69505845"],
    );
    assert_eq!(var(&ipxe, "boot_file"), Some("http://10.79.0.1:8081/boot/52-54-00-7e-00-02.ipxe"));
    assert_ne!(var(&ipxe, "ip"), var(&pxe, "ip"), "two clients, two addresses");

    // ISC dhclient, an ordinary OS client: a lease, no boot file, no machine.
    ip(&["-n", &ns.client, "link", "set", "slw-vc", "address", "52:54:00:7e:00:03"]);
    let lease_file = dir.path().join("dhclient.leases");
    let pid_file = dir.path().join("dhclient.pid");
    let status = ns
        .exec(
            &ns.client,
            &[
                "dhclient",
                "-1",
                "-4",
                "-sf",
                "/bin/true",
                "-lf",
                lease_file.to_str().unwrap(),
                "-pf",
                pid_file.to_str().unwrap(),
                "slw-vc",
            ],
        )
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let leases = std::fs::read_to_string(&lease_file).unwrap_or_default();
    let _ = ns.exec(&ns.client, &["dhclient", "-x", "-pf", pid_file.to_str().unwrap()]).stderr(Stdio::null()).status();
    assert!(status.success(), "dhclient got no lease");
    assert!(leases.contains("fixed-address 10.79.0.1"), "{leases}");
    assert!(!leases.contains("filename"), "an OS client gets no boot file: {leases}");

    // dhcpcd in test mode: prints what it was offered, configures nothing.
    ip(&["-n", &ns.client, "link", "set", "slw-vc", "address", "52:54:00:7e:00:04"]);
    let out_path = dir.path().join("dhcpcd.out");
    let mut dhcpcd = ns
        .exec(&ns.client, &["dhcpcd", "-4", "-T", "-1", "-t", "10", "-f", "/dev/null", "slw-vc"])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut offered = String::new();
    while Instant::now() < deadline && !offered.contains("new_ip_address=") {
        std::thread::sleep(Duration::from_millis(200));
        offered = std::fs::read_to_string(&out_path).unwrap_or_default();
    }
    let _ = dhcpcd.kill();
    let _ = dhcpcd.wait();
    kill_all_in(&ns.client);
    assert!(offered.contains("new_ip_address='10.79.0.1"), "dhcpcd: {offered}");
    assert!(offered.contains("new_dhcp_server_identifier='10.79.0.1'"), "dhcpcd: {offered}");
    assert!(offered.contains("new_subnet_cidr='24'"), "dhcpcd: {offered}");

    // PXE clients became machines in discovering; the OS clients did not.
    let machines = api_get(&ns, "/api/v1/machines");
    let macs: Vec<&str> =
        machines["machines"].as_array().unwrap().iter().map(|m| m["macs"][0].as_str().unwrap()).collect();
    assert_eq!(macs.len(), 2, "{machines}");
    assert!(macs.contains(&"52:54:00:7e:00:01") && macs.contains(&"52:54:00:7e:00:02"));
    assert!(machines["machines"].as_array().unwrap().iter().all(|m| m["state"] == "discovering"));
}
