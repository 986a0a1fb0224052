use expect_test::{expect, Expect};
use serde_json::{json, Value};

use super::*;

/// 2026-01-02T03:04:05Z
const NOW_MS: i64 = 1_767_323_045_000;

fn ready_machine() -> Value {
    json!({
        "id": "0b7e3c52-6d0c-4f7e-9a51-3f1d2c4b5a69", "state": "ready", "failure": null,
        "macs": ["52:54:00:5e:00:01", "52:54:00:5e:00:11"], "system_uuid": "6c7f-uuid", "serial": "SN-1",
        "rack": "r7", "state_deadline": null,
        "inventory": {
            "source": "in_band",
            "system": {"vendor": "QEMU", "product": "Standard PC", "serial": "SN-1", "uuid": "6c7f-uuid"},
            "cpu": {"model": "QEMU Virtual CPU", "count": 2},
            "memory": {"total_bytes": 1_006_632_960u64},
            "disks": [{"name": "vda", "size_bytes": 8_589_934_592u64, "model": null, "serial": "DISK-1", "rotational": true},
                      {"name": "vdb", "size_bytes": 1_073_741_824u64, "model": null, "serial": null, "rotational": null}],
            "nics": [{"name": "ens3", "mac": "52:54:00:5e:00:01", "link": true, "speed_mbps": null}]
        },
        "created_at": "2026-01-02T02:54:05.000Z", "updated_at": "2026-01-02T03:00:00.000Z"
    })
}

fn failed_machine() -> Value {
    json!({
        "id": "m2", "state": "failed", "failure": {"phase": "deploying", "reason": "checksum mismatch"},
        "macs": ["52:54:00:5e:00:02"], "inventory": null, "created_at": "2025-12-29T03:04:05.000Z"
    })
}

fn check(actual: String, expected: Expect) {
    expected.assert_eq(&actual);
}

#[test]
fn machine_list() {
    check(
        machines(&json!({"machines": []}), NOW_MS),
        expect![[r#"
        ID   STATE   MAC   CPUS   MEMORY   DISKS   RACK   AGE
    "#]],
    );
    check(
        machines(&json!({"machines": [ready_machine(), failed_machine()]}), NOW_MS),
        expect![[r#"
        ID                                     STATE                MAC                      CPUS   MEMORY      DISKS         RACK   AGE
        0b7e3c52-6d0c-4f7e-9a51-3f1d2c4b5a69   ready                52:54:00:5e:00:01 (+1)   2      960.0 MiB   2 (9.0 GiB)   r7     10m
        m2                                     failed (deploying)   52:54:00:5e:00:02                                                4d
    "#]],
    );
}

#[test]
fn machine_details() {
    check(
        machine(&ready_machine()),
        expect![[r#"
        ID:            0b7e3c52-6d0c-4f7e-9a51-3f1d2c4b5a69
        State:         ready
        Failure:
        MACs:          52:54:00:5e:00:01, 52:54:00:5e:00:11
        System:        QEMU Standard PC
        Serial:        SN-1
        System UUID:   6c7f-uuid
        Rack:          r7
        CPU:           2 x QEMU Virtual CPU
        Memory:        960.0 MiB
        Disks:
          vda  8.0 GiB  DISK-1
          vdb  1.0 GiB
        NICs:          ens3  52:54:00:5e:00:01  link up
        Deadline:
        Created:       2026-01-02T02:54:05.000Z
        Updated:       2026-01-02T03:00:00.000Z
    "#]],
    );
    check(
        machine(&failed_machine()),
        expect![[r#"
        ID:            m2
        State:         failed
        Failure:       deploying: checksum mismatch
        MACs:          52:54:00:5e:00:02
        System:
        Serial:
        System UUID:
        Rack:
        CPU:
        Memory:
        Disks:
        NICs:
        Deadline:
        Created:       2025-12-29T03:04:05.000Z
        Updated:
    "#]],
    );
}

#[test]
fn events_have_fixed_columns() {
    let with_machine = json!({"id": "e1", "machine_id": "m2", "at": "2026-01-02T03:04:05.123Z", "kind": "state.changed",
                              "detail": {"from": "deploying", "to": "failed"}});
    let without = json!({"id": "e2", "machine_id": null, "at": "2026-01-02T03:04:06.000Z", "kind": "ups.status_changed", "detail": {}});
    check(
        event_header() + &event_line(&with_machine) + &event_line(&without),
        expect![[r#"
        TIME                       MACHINE                                KIND                     DETAIL
        2026-01-02T03:04:05.123Z   m2                                     state.changed            {"from":"deploying","to":"failed"}
        2026-01-02T03:04:06.000Z   -                                      ups.status_changed
    "#]],
    );
}

#[test]
fn images_and_one_image() {
    let img = json!({"name": "debian-12", "os": "debian", "version": "12", "arch": "x86_64", "boot_mode": "both",
                     "state": "available", "raw_bytes": 1_288_490_188u64, "sha256": "ab".repeat(32),
                     "stored_bytes": 337_641_472u64, "error": null, "created_at": "2026-01-01T00:00:00.000Z"});
    let importing = json!({"name": "tiny", "os": "lab", "version": "1", "arch": "x86_64", "boot_mode": "bios",
                           "state": "importing", "raw_bytes": null});
    check(
        images(&json!({"images": [img, importing]})),
        expect![[r#"
        NAME        OS       VERSION   ARCH     BOOT   STATE       SIZE      STORED
        debian-12   debian   12        x86_64   both   available   1.2 GiB   322.0 MiB
        tiny        lab      1         x86_64   bios   importing
    "#]],
    );
    check(
        image(&img),
        expect![[r#"
        Name:        debian-12
        OS:          debian 12
        Arch:        x86_64
        Boot mode:   both
        State:       available
        Size:        1.2 GiB
        Stored:      322.0 MiB
        SHA-256:     abababababababababababababababababababababababababababababababab
        Error:
        Created:     2026-01-01T00:00:00.000Z
    "#]],
    );
}

#[test]
fn bmcs_and_ups() {
    let b = json!({"id": "b1", "address": "https://10.0.1.21", "protocol": "redfish", "username": "root",
                   "tls": {"mode": "insecure"}, "machine_id": "m1", "power_state": "on", "status": "error",
                   "last_error": "timed out after 10 s", "last_error_kind": "timeout", "inventory": null});
    check(
        bmcs(&json!({"bmcs": [b]})),
        expect![[r#"
        ID   ADDRESS             PROTOCOL   MACHINE   POWER   STATUS   LAST ERROR
        b1   https://10.0.1.21   redfish    m1        on      error    timed out after 10 s
    "#]],
    );
    check(
        bmc(&b),
        expect![[r#"
        ID:            b1
        Address:       https://10.0.1.21
        Protocol:      redfish
        Username:      root
        TLS:           insecure
        Machine:       m1
        System:
        Serial:
        System UUID:
        BIOS:
        Hardware:
        Power:         on
        Status:        error
        Last error:    timed out after 10 s (timeout)
        Last OK:
        Created:
    "#]],
    );
    let u = json!({"name": "r7-ups", "protocol": "nut", "address": "10.0.1.5:3493", "target": "eaton1",
                   "username": "monuser", "tls": {"mode": "verify"}, "feeds": {"racks": ["r7"], "machines": []},
                   "state": {"status": "on_battery", "flags": ["OB", "DISCHRG"], "charge_percent": 87.0,
                             "runtime_secs": 1500, "load_percent": 31.5, "input_voltage": 0.0},
                   "status": "ok", "feeds_machines": ["m1", "m2"]});
    check(
        ups_list(&json!({"ups": [u]})),
        expect![[r#"
        NAME     PROTOCOL   ADDRESS         STATE        CHARGE   RUNTIME   LOAD   FEEDS        STATUS
        r7-ups   nut        10.0.1.5:3493   on_battery   87%      25m       32%    2 machines   ok
    "#]],
    );
    check(
        ups(&u),
        expect![[r#"
        Name:             r7-ups
        Protocol:         nut
        Address:          10.0.1.5:3493
        Target:           eaton1
        Username:         monuser
        Model:
        State:            on_battery
        Flags:            OB, DISCHRG
        Charge:           87%
        Runtime:          25m
        Load:             32%
        Input voltage:    0.0
        Feeds:            racks r7
        Feeds machines:   m1, m2
        Status:           ok
        Last error:
        Last OK:
    "#]],
    );
}

#[test]
fn deployments_and_tokens() {
    let d = json!({"machine_id": "m1", "image": "tiny", "spec": {"hostname": "node1"}, "phase": "writing",
                   "bytes_written": 33_554_432u64, "total_bytes": 67_108_864u64, "disk": "/dev/vda", "error": null});
    check(
        deployment(&d),
        expect![[r#"
        Machine:    m1
        Image:      tiny
        Hostname:   node1
        Phase:      writing
        Written:    32.0 MiB of 64.0 MiB
        Disk:       /dev/vda
        Error:
    "#]],
    );
    let t = json!({"tokens": [{"id": "t1", "name": "ci", "role": "operator", "created_at": "2026-01-01T00:00:00.000Z",
                               "expires_at": null}]});
    check(
        tokens(&t),
        expect![[r#"
        ID   NAME   ROLE       CREATED                    EXPIRES   LAST USED
        t1   ci     operator   2026-01-01T00:00:00.000Z
    "#]],
    );
}

#[test]
fn small_helpers() {
    assert_eq!((bytes(512), bytes(1536), bytes(8 << 30)), ("512 B".into(), "1.5 KiB".into(), "8.0 GiB".into()));
    assert_eq!(age("2026-01-02T03:03:05Z", NOW_MS), "60s");
    assert_eq!(age("2026-01-02T01:05:05Z", NOW_MS), "119m");
    assert_eq!(age("2026-01-02T01:04:05Z", NOW_MS), "2h");
    assert_eq!(age("2025-12-30T03:04:05Z", NOW_MS), "3d");
    assert_eq!(age("not a time", NOW_MS), "");
    assert_eq!(text(&json!({"a": [1, "x", null]}), "/a"), "1, x");
}

#[test]
fn campaign_list_and_details() {
    let c = json!({
        "id": "c1", "name": "r7 to 12.8", "state": "paused", "reason": "1 node(s) failed (max_failures 1)",
        "action": {"os_refresh": {"image": "debian-12.8"}},
        "summary": {"total": 3, "pending": 2, "applying": 0, "verifying": 0, "done": 0, "failed": 0, "rolled_back": 1},
        "started_at": "2026-01-02T02:00:00.000Z", "finished_at": null, "schedule_next_open": null,
        "nodes": [
            {"position": 0, "machine_id": "m1", "rack": "r7", "state": "rolled_back", "old_version": "debian-12.7",
             "new_version": null, "reason": "debian-12.8 did not come back within 600 s; rolled back to debian-12.7"},
            {"position": 1, "machine_id": "m2", "rack": "r7", "state": "pending"}
        ]
    });
    check(
        campaigns(&json!({"campaigns": [c.clone()]})),
        expect![[r#"
            ID   NAME         ACTION                      STATE    PROGRESS                  REASON
            c1   r7 to 12.8   OS refresh to debian-12.8   paused   0/3 done, 1 rolled back   1 node(s) failed (max_failures 1)
        "#]],
    );
    check(
        campaign(&c),
        expect![[r#"
            ID:            c1
            Name:          r7 to 12.8
            Action:        OS refresh to debian-12.8
            State:         paused
            Reason:        1 node(s) failed (max_failures 1)
            Progress:      0/3 done, 1 rolled back
            Next window:
            Started:       2026-01-02T02:00:00.000Z
            Finished:

            #   MACHINE   RACK   STATE         FROM          TO   REASON
            0   m1        r7     rolled_back   debian-12.7        debian-12.8 did not come back within 600 s; rolled back to debian-12.7
            1   m2        r7     pending
        "#]],
    );
}
