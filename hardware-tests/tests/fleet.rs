//! The fleet simulator at a size that fits the test budget: 200 simulated
//! machines (Redfish BMCs, agents speaking the real protocols, DHCP through
//! the real server via a relay) against one appliance, enrolled,
//! commissioned, deployed and released through the API. Needs root
//! (namespaces); `SLIPWAY_LAB_TESTS=1` makes a missing prerequisite fail.

use std::process::Command;

use hardware_tests::support::{lab_tests_enabled, slipway_bin};
use serde_json::Value;

#[test]
fn two_hundred_machines_are_commissioned_deployed_and_released() {
    if !lab_tests_enabled("fleet", &["ip"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let report_path = dir.path().join("fleet.json");
    let status = Command::new(slipway_bin())
        .args(["lab", "fleet", "--machines", "200", "--write-secs", "2-6", "--node-report-secs", "5"])
        .args(["--timeout-secs", "600", "--report"])
        .arg(&report_path)
        .status()
        .expect("running slipway lab fleet");
    assert!(status.success(), "slipway lab fleet failed: {status}");
    let report: Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    let sim = &report["simulated"];
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    // Every machine wrote its image once, verified, and was wiped once on
    // release; each deployed node's agent reported in.
    assert_eq!(n(&sim["written"]), 200, "{sim}");
    assert_eq!(n(&sim["images_fetched"]), 200, "{sim}");
    assert_eq!(n(&sim["wiped"]), 200, "{sim}");
    assert!(n(&sim["node_reports"]) >= 200, "{sim}");
    // Nothing the machines acted on came unsigned, no machine was refused
    // its own script, and DHCP answered every one.
    assert_eq!(n(&sim["bad_signatures"]), 0, "{sim}");
    assert_eq!(n(&sim["scripts_refused"]), 0, "{sim}");
    assert_eq!(n(&sim["dhcp_failures"]), 0, "{sim}");
    let api = &report["phases"]["api"];
    assert_eq!(api["errors"], 0, "{api}");
    assert!(report["appliance"]["peak_rss_mib"].as_f64().unwrap() < 256.0, "{}", report["appliance"]);
}
