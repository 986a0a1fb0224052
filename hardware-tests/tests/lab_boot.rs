//! The whole discovery path with real QEMU VMs: DHCP -> iPXE -> HTTP ->
//! ramdisk -> agent -> API, for a BIOS iPXE, a UEFI iPXE, a Secure Boot
//! node and a UEFI native PXE node (both through the signed shim and GRUB
//! over TFTP) and a UEFI HTTP Boot node (a URL from DHCP, no TFTP) at
//! once, with
//! Slipway as the DHCP server, as proxyDHCP beside dnsmasq, and behind a
//! DHCP relay, exactly as a user runs it (`slipway lab up`), checked
//! against what QEMU was given; and the deploy path to a disk boot.

use std::process::Command;

use hardware_tests::support::{lab_tests_enabled, slipway_bin};
use serde_json::Value;

#[test]
fn every_firmware_path_network_boots_to_ready_with_its_hardware() {
    if !lab_tests_enabled("lab_boot", &["qemu-system-x86_64", "qemu-img", "ip"]) {
        return;
    }
    // The last is UEFI HTTP Boot: a URL from DHCP, no TFTP at all.
    let report = run_lab(&["--nodes", "5", "--firmware", "mixed", "--firmware-campaign", "2.0.0"]);
    assert_every_node_ready_with_its_hardware(&report, &["bios", "uefi", "secureboot", "pxe-uefi", "http-uefi"]);
    // How each first asked DHCP: the iPXE ROMs as iPXE, native PXE (Secure
    // Boot or not) as a PXE client (then shim and GRUB over TFTP), HTTP
    // Boot as an HTTPClient (a URL, never PXE).
    let clients: Vec<&Value> = report["nodes"].as_array().unwrap().iter().map(|n| &n["dhcp_clients"]).collect();
    let first: Vec<&str> = clients.iter().map(|c| c[0].as_str().unwrap_or("none")).collect();
    assert_eq!(first, ["ipxe", "ipxe", "pxe", "pxe", "uefi_http"], "{clients:?}");
    assert!(!clients[4].as_array().unwrap().iter().any(|c| c == "pxe"), "HTTP Boot never used PXE: {clients:?}");
    assert_secure_boot(&report);
    // Then a BIOS campaign through the simulated BMCs, one node at a
    // time; started with the UPS on battery it was held with no node
    // started, and mains resumed it.
    let c = &report["campaign"];
    assert_eq!(c["state"], "completed", "{c}");
    assert_eq!(c["max_in_progress"], 1, "batch size 1: {c}");
    assert!(c["held_seconds"].as_f64().is_some_and(|s| s > 0.0), "held while on battery: {c}");
    assert_eq!(c["started_while_held"], 0, "no node starts while held: {c}");
    for node in report["nodes"].as_array().unwrap() {
        assert_eq!(node["bmc"]["bios_version"], "2.0.0", "{}", node["name"]);
    }
    assert_torn_down();
}

/// proxyDHCP beside a real DHCP server (dnsmasq on another host of the
/// bridge, handing out the addresses): BIOS, UEFI iPXE and UEFI native PXE
/// (handed iPXE here: GRUB would look for its server in dnsmasq's ACK)
/// still boot.
#[test]
fn proxy_dhcp_beside_dnsmasq_boots_every_firmware() {
    if !lab_tests_enabled("lab_proxy", &["qemu-system-x86_64", "qemu-img", "ip", "dnsmasq"]) {
        return;
    }
    let report = run_lab(&["--nodes", "3", "--firmware", "bios,uefi,pxe-uefi", "--dhcp", "proxy"]);
    assert_every_node_ready_with_its_hardware(&report, &["bios", "uefi", "pxe-uefi"]);
    assert!(!std::path::Path::new("/run/netns/slipway-lab-dhcp").exists(), "the DHCP host is gone");
    assert_torn_down();
}

/// A second rack behind a real DHCP relay (ISC dhcrelay, adding option 82)
/// and router: addresses come from the relayed subnet's pool, and every
/// firmware path boots through the router.
#[test]
fn relayed_rack_boots_every_firmware() {
    if !lab_tests_enabled("lab_relay", &["qemu-system-x86_64", "qemu-img", "ip", "dhcrelay"]) {
        return;
    }
    let report = run_lab(&["--nodes", "3", "--firmware", "mixed", "--dhcp", "relay"]);
    assert_every_node_ready_with_its_hardware(&report, &["bios", "uefi", "secureboot"]);
    assert!(!std::path::Path::new("/run/netns/slipway-lab-relay").exists(), "the relay host is gone");
    assert_torn_down();
}

/// The deploy path end to end: a BIOS and a UEFI node discovered,
/// `lab-tiny` registered through the API, deployed to both at once, each
/// written and verified by its agent, rebooted, handed local-disk boot by
/// iPXE, and running the kernel from its own disk; the UEFI node again
/// after an NVRAM reset; both released, deployed again and booting their
/// disks once more.
#[test]
fn deploys_lab_tiny_and_each_node_boots_its_disk() {
    if !lab_tests_enabled("lab_deploy", &["qemu-system-x86_64", "qemu-img", "ip", "syslinux", "mcopy", "sfdisk"]) {
        return;
    }
    // One BIOS node and one UEFI node (network first in its boot order):
    // the same GPT image boots both from their disks. Then the UEFI node's
    // NVRAM is reset (its boot entries gone) and it still boots its disk.
    // Last, both are released (wiped through their BMCs) and deployed again.
    // While they first deploy, a hostile host on the provisioning bridge
    // attacks the appliance and node1.
    let report = run_lab(&[
        "--nodes",
        "2",
        "--firmware",
        "mixed",
        "--deploy",
        "lab-tiny",
        "--reset-nvram",
        "--release",
        "--redeploy",
        "--attack",
    ]);
    assert_firmware_modes(&report, &["bios", "uefi"]);
    assert_attacks_refused(&report);
    assert_boot_entries(&report, "Created");
    for node in report["nodes"].as_array().unwrap() {
        let s = &node["seconds"];
        let after_reset = s["nvram_reset_boot"].as_f64();
        if node["firmware"] == "bios" {
            assert_eq!(after_reset, None, "BIOS has no NVRAM boot entries to reset: {s}");
        } else {
            let (disk_boot, released) = (s["disk_boot"].as_f64().unwrap(), s["released"].as_f64().unwrap());
            assert!(
                after_reset.is_some_and(|t| disk_boot < t && t < released),
                "booted its disk again after the NVRAM reset, before the release: {s}"
            );
        }
        // Released afterwards (Slipway rebooted it into the ramdisk through
        // its BMC, the agent wiped the disk, it was ready again), then
        // deployed anew, and it boots its disk again.
        assert_eq!(node["state"], "deployed", "{node}");
        let steps = ["ready", "disk_boot", "released", "redeployed_disk_boot"].map(|k| s[k].as_f64());
        assert!(
            steps.iter().all(Option::is_some) && steps.windows(2).all(|w| w[0] < w[1]),
            "ready, booted from disk, released, booted from disk again: {s}"
        );
    }
    assert_torn_down();
}

/// The product's main job, and its later life: three machines from
/// power-on to one Docker Swarm, then refreshed to a new OS release.
///
/// `lab-debian` (debootstrap with systemd, the kernel, containerd and
/// docker.io; built once and cached) is written and verified by each
/// node's agent; each boots its own disk to a login prompt with its host
/// name; its node agent starts, and Slipway forms a Swarm (three managers)
/// on the first node to report and hands the join token to the other two.
///
/// Then an OS-refresh campaign (batch size 1) moves the three to release 2
/// of the image: drained, reinstalled through the BMC, back and rejoined
/// one at a time, the lab UPS on battery mid-way holding it. Then a
/// campaign to an image that cannot boot rolls its first node back to
/// release 2, where it rejoins, and pauses.
#[test]
fn three_nodes_form_one_swarm_and_roll_to_a_new_os_release() {
    if !lab_tests_enabled(
        "lab_debian",
        &["qemu-system-x86_64", "ip", "debootstrap", "mkfs.ext4", "syslinux", "losetup"],
    ) {
        return;
    }
    // A mixed rack: legacy BIOS, UEFI through the NIC's iPXE ROM, and UEFI
    // with Secure Boot enforced (signed shim, GRUB and kernel over TFTP),
    // network first in each.
    // While they deploy and join, the hostile host and the rogue appliance
    // of `--attack` go after node1 (forged node agents included).
    let report = run_lab_within(
        900,
        &["--nodes", "3", "--firmware", "mixed", "--deploy", "lab-debian", "--os-refresh", "--attack"],
    );
    assert_firmware_modes(&report, &["bios", "uefi", "uefi"]);
    assert_secure_boot(&report);
    // The last write was a reinstall (the refresh or its rollback): the
    // entry the first deploy created is rewritten, not added again.
    assert_boot_entries(&report, "Repaired");
    assert_attacks_refused(&report);
    for node in report["nodes"].as_array().unwrap() {
        assert_eq!(node["state"], "joined", "{node}");
        let s = &node["seconds"];
        let steps = ["ready", "image_written", "disk_boot", "agent_started", "joined"].map(|k| s[k].as_f64());
        assert!(
            steps.iter().all(Option::is_some) && steps.windows(2).all(|w| w[0] <= w[1]),
            "ready, written, Debian's login prompt, node agent, joined, in that order: {s}"
        );
        // On release 2: as the API has it, as its node agent reports it, and
        // as the console banner of its last boot shows it.
        assert_eq!(node["image"], "lab-debian-r2", "{}", node["name"]);
        assert_eq!(node["reported_image"], "lab-debian-r2", "{}", node["name"]);
        assert_eq!(node["console_release"], 2, "{}", node["name"]);
    }

    let refresh = &report["os_refresh"];
    assert_eq!(refresh["state"], "completed", "{refresh}");
    let states: Vec<&str> = refresh["nodes"].as_array().unwrap().iter().map(|n| n["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["done", "done", "done"], "{refresh}");
    assert_eq!(refresh["max_in_progress"], 1, "batch size 1: {refresh}");
    assert_eq!(refresh["max_drained"], 1, "never more than one node drained: {refresh}");
    assert!(refresh["held_seconds"].as_f64().is_some_and(|s| s > 0.0), "held while on battery: {refresh}");
    assert_eq!(refresh["started_while_held"], 0, "no node starts while held: {refresh}");

    let broken = &report["broken_refresh"];
    assert_eq!(broken["state"], "paused", "{broken}");
    let nodes = broken["nodes"].as_array().unwrap();
    let states: Vec<&str> = nodes.iter().map(|n| n["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["rolled_back", "pending", "pending"], "the first is rolled back, the rest untouched: {broken}");
    let reason = nodes[0]["reason"].as_str().unwrap();
    assert!(reason.contains("did not come back") && reason.contains("rolled back to lab-debian-r2"), "{reason}");
    assert_eq!(broken["max_drained"], 1, "{broken}");

    let cluster = &report["cluster"];
    let members = cluster["members"].as_array().expect("the manager reports the cluster's members");
    let mut hostnames: Vec<&str> = members.iter().map(|m| m["hostname"].as_str().unwrap()).collect();
    hostnames.sort();
    assert_eq!(
        hostnames,
        ["node1", "node2", "node3"],
        "one Swarm of all three, no entries left by the reinstalls: {cluster}"
    );
    assert!(members.iter().all(|m| m["status"] == "Ready" && m["availability"] == "Active"), "{cluster}");
    assert!(members.iter().all(|m| m["manager"] == true), "three managers: {cluster}");
    assert!(!cluster.to_string().contains("SWMTKN"), "join tokens never leave the appliance");
    assert_torn_down();
}

/// Runs `slipway lab up ARGS --report FILE`; returns the report after
/// asserting the command succeeded.
fn run_lab(args: &[&str]) -> Value {
    run_lab_within(480, args)
}

/// [`run_lab`] with each wait bounded by `timeout` seconds.
fn run_lab_within(timeout: u32, args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let report_path = dir.path().join("report.json");
    let status = Command::new(slipway_bin())
        .args(["lab", "up", "--timeout", &timeout.to_string()])
        .args(args)
        .arg("--report")
        .arg(&report_path)
        .status()
        .expect("running slipway lab up");
    let report: Value =
        serde_json::from_slice(&std::fs::read(&report_path).expect("the lab writes its report")).unwrap();
    println!("{}", serde_json::to_string_pretty(&report["nodes"]).unwrap());
    assert!(status.success(), "slipway lab up {args:?} failed: {status}");
    report
}

/// Each node is ready and its inventory is what QEMU was told to give it.
fn assert_every_node_ready_with_its_hardware(report: &Value, firmwares: &[&str]) {
    let nodes = report["nodes"].as_array().unwrap();
    let got: Vec<&str> = nodes.iter().map(|n| n["firmware"].as_str().unwrap()).collect();
    assert_eq!(got, firmwares);
    assert_eq!(report["ups"]["state"]["status"], "online", "the lab UPS feeds the rack: {}", report["ups"]);
    assert_eq!(report["ups"]["feeds_machines"].as_array().map(Vec::len), Some(nodes.len()), "{}", report["ups"]);
    for node in nodes {
        let name = node["name"].as_str().unwrap();
        let (inv, cfg) = (&node["inventory"], &node["configured"]);
        assert_eq!(node["state"], "ready", "{name}");
        assert_eq!(inv["cpu"]["count"], cfg["cpus"], "{name}: vCPUs");
        let mem = inv["memory"]["total_bytes"].as_u64().unwrap();
        let given = cfg["memory_mib"].as_u64().unwrap() << 20;
        assert!(mem <= given && mem > given - (128 << 20), "{name}: MemTotal {mem} vs {given} given");
        assert_eq!(inv["disks"][0]["size_bytes"], cfg["disk_bytes"], "{name}: disk size");
        assert_eq!(
            inv["disks"][0]["serial"],
            format!("DISK-{}", cfg["serial"].as_str().unwrap()),
            "{name}: disk serial"
        );
        assert_eq!(inv["nics"][0]["mac"], node["mac"], "{name}: boot NIC");
        assert_eq!(inv["system"]["serial"], cfg["serial"], "{name}: DMI serial");
        assert_eq!(inv["system"]["uuid"], cfg["uuid"], "{name}: system UUID");
        // Powered on by Slipway through the node's simulated BMC, linked to
        // the same machine record, and both views of the hardware agree.
        let bmc = &node["bmc"];
        assert_eq!((bmc["status"].as_str(), bmc["power_state"].as_str()), (Some("ok"), Some("on")), "{name}: {bmc}");
        assert_eq!(bmc["disagreements"], serde_json::json!([]), "{name}: out-of-band vs in-band");
        let s = &node["seconds"];
        let (ack, hello, ready) =
            (s["dhcp_ack"].as_f64().unwrap(), s["discovered"].as_f64().unwrap(), s["ready"].as_f64().unwrap());
        assert!(0.0 < ack && ack <= hello && hello <= ready, "{name}: steps out of order: {s}");
    }
}

/// Ctrl-C while VMs are booting tears everything down and says so.
#[test]
fn interrupted_lab_leaves_nothing_behind() {
    use std::io::{BufRead, BufReader};
    if !lab_tests_enabled("lab_interrupt", &["qemu-system-x86_64", "qemu-img", "ip"]) {
        return;
    }
    // What a lab killed with SIGKILL (or a power cut) leaves: its namespace
    // with a process still in it. The next `lab up` must clear it, not refuse.
    let ip = |args: &[&str]| assert!(Command::new("ip").args(args).status().unwrap().success(), "ip {args:?}");
    ip(&["netns", "add", "slipway-lab"]);
    let mut leftover = Command::new("ip").args(["netns", "exec", "slipway-lab", "sleep", "600"]).spawn().unwrap();
    let mut child = Command::new(slipway_bin())
        .args(["lab", "up", "--nodes", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("running slipway lab up");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut cleared = false;
    for line in lines.by_ref() {
        let line = line.unwrap();
        cleared |= line.contains("cleared what a killed lab left: 1 processes, 1 namespaces");
        if line.contains("powered on through it") {
            break;
        }
    }
    let leftover_ended = leftover.try_wait().unwrap().is_some();
    let _ = leftover.kill();
    assert!(cleared && leftover_ended, "lab up cleared the killed lab's namespace and ended its process");
    // Keep reading so the lab's output never hits a closed pipe.
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    assert!(std::path::Path::new("/run/netns/slipway-lab").exists(), "the lab is up");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    let rest = drain.join().unwrap();
    assert!(!status.success(), "an interrupted lab exits non-zero");
    assert!(!rest.iter().any(|l| l.contains("panicked")), "{rest:?}");
    assert_torn_down();
}

/// Each node's agent saw the firmware its VM was given, and every UEFI
/// node refused an image that boots only under BIOS with a 422 naming both.
fn assert_firmware_modes(report: &serde_json::Value, modes: &[&str]) {
    let nodes = report["nodes"].as_array().unwrap();
    let seen: Vec<&str> = nodes.iter().map(|n| n["inventory"]["firmware"]["mode"].as_str().unwrap_or("?")).collect();
    assert_eq!(seen, modes, "firmware modes as the API shows them");
    let uefi: Vec<&str> = nodes
        .iter()
        .filter(|n| n["inventory"]["firmware"]["mode"] == "uefi")
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    let refused = report["refused_deploys"].as_array().cloned().unwrap_or_default();
    let refused_nodes: Vec<&str> = refused.iter().map(|r| r["node"].as_str().unwrap()).collect();
    assert_eq!(refused_nodes, uefi, "every UEFI node refused the BIOS-only image: {refused:?}");
    for r in &refused {
        let detail = r["detail"].as_str().unwrap_or_default();
        assert!(
            r["status"] == 422 && r["field"] == "image" && detail.contains("bios only") && detail.contains("uefi"),
            "{r}"
        );
    }
}

/// The Secure Boot node's agent (and its BMC) report Secure Boot enabled,
/// every other UEFI node disabled; BIOS nodes have no Secure Boot.
fn assert_secure_boot(report: &Value) {
    let nodes = report["nodes"].as_array().unwrap();
    assert!(nodes.iter().any(|n| n["firmware"] == "secureboot"), "a Secure Boot node is in the lab");
    for node in nodes {
        let (name, firmware) = (node["name"].as_str().unwrap(), &node["inventory"]["firmware"]);
        let wanted = match node["firmware"].as_str().unwrap() {
            "bios" => serde_json::json!(null),
            "secureboot" => serde_json::json!(true),
            _ => serde_json::json!(false),
        };
        assert_eq!(firmware["secure_boot"], wanted, "{name}: in-band {firmware}");
        if firmware["mode"] == "uefi" {
            assert_eq!(node["bmc"]["secure_boot"], wanted, "{name}: as its BMC reports it");
        }
    }
}

/// Each UEFI node's agent wrote the deployed OS's boot entry (naming the
/// ESP's shim) at its last deploy; BIOS nodes got none.
fn assert_boot_entries(report: &Value, done: &str) {
    for node in report["nodes"].as_array().unwrap() {
        let last = node["last_write"].as_str().unwrap_or_default();
        if node["inventory"]["firmware"]["mode"] == "uefi" {
            let wanted = format!("UEFI boot entry {done}(");
            assert!(last.contains(&wanted) && last.contains("/EFI/debian/shimx64.efi"), "{}: {last}", node["name"]);
        } else {
            assert!(!last.is_empty() && !last.contains("UEFI"), "{}: {last}", node["name"]);
        }
    }
}

/// No lab namespace and no lab VM left.
/// Each attack `--attack` tried was refused and counted, and the flood
/// neither created machines nor grew the database or the appliance.
fn assert_attacks_refused(report: &Value) {
    let a = &report["attack"];
    let (att, seen) = (&a["attacker"], &a["appliance_counted"]);
    assert_eq!(att["script_theft_status"], 403, "the victim's boot script went to the attacker: {a}");
    assert_eq!(att["grub_theft_refused"], true, "the victim's GRUB script went to the attacker: {a}");
    for what in ["new_mac_scripts", "forged_reports", "forged_node_calls", "anonymous_writes"] {
        assert_eq!(att[what]["refused"], att[what]["sent"], "{what}: {a}");
    }
    let n = |v: &Value| v.as_f64().unwrap_or(0.0);
    assert!(n(&att["tftp"]["refused"]) >= n(&att["tftp"]["sent"]) / 2.0, "TFTP flood not capped: {a}");
    let slow = &att["slow_connections"];
    assert!(n(&slow["refused"]) >= 30.0, "more than the per-client cap of connections held: {a}");
    assert_eq!(n(&slow["refused"]) + n(&att["slow_cut_by_timeout"]), n(&slow["sent"]), "a half-sent request held: {a}");
    // Seen by the appliance too, where an operator looks.
    assert!(n(&seen["slipway_boot_refusals_total"]) >= 1.0 + n(&att["new_mac_scripts"]["sent"]), "{a}");
    assert!(n(&seen["slipway_tftp_busy_total"]) >= n(&att["tftp"]["refused"]), "{a}");
    assert!(n(&seen["slipway_http_connections_refused_total"]) >= n(&slow["refused"]), "{a}");
    assert!(n(&seen["slipway_dhcp_received_total{type=\"decline\"}"]) >= n(&att["declines_sent"]) * 0.9, "{a}");
    assert_eq!(a["machines_after"], a["machines_before"], "the flood created machines: {a}");
    // The rogue appliance held the victim's traffic (its agent asked it for
    // instructions) and handed out forged deploys: none was acted on, and
    // the agent told the real appliance what it had refused.
    let rogue = &a["rogue"];
    assert!(n(&rogue["requests"]["GET /api/v1/agent/instructions"]) >= 1.0, "the rogue never held the victim: {a}");
    assert!(n(&rogue["forged_instructions"]) >= 1.0, "{a}");
    assert_eq!(rogue["forged_image_fetches"], 0, "the victim's agent followed a forged instruction: {a}");
    assert!(
        n(&seen["slipway_agent_refused_answers_total"]) >= n(&rogue["forged_instructions"]),
        "the agent did not report the answers it refused: {a}"
    );
    // The deploy itself writes events (phases, DHCP, BMC); refusals are
    // recorded at most 60 a minute.
    assert!(n(&a["events_added"]) < 400.0, "events grew with the flood: {a}");
    let grew = n(&a["db_bytes_after"]) - n(&a["db_bytes_before"]);
    assert!(grew < 4.0 * 1048576.0, "the database grew by {grew} bytes: {a}");
    assert!(
        n(&report["appliance_peak_rss_kib"]) < 128.0 * 1024.0,
        "appliance RSS: {}",
        report["appliance_peak_rss_kib"]
    );
}

fn assert_torn_down() {
    for ns in ["slipway-lab", "slipway-lab-attack", "slipway-lab-rogue"] {
        assert!(!std::path::Path::new("/run/netns").join(ns).exists(), "namespace {ns} is gone");
    }
    let leftovers = Command::new("pgrep").args(["-f", "ifname=sltap"]).output().unwrap();
    assert!(leftovers.stdout.is_empty(), "QEMU processes left: {}", String::from_utf8_lossy(&leftovers.stdout));
}
