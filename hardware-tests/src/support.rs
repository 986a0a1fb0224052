//! Helpers for the end-to-end tests: finding the binaries, deciding whether
//! a test that needs root and real peers may run here.

use std::path::PathBuf;

/// The `slipway` release binary the tests drive (`SLIPWAY_BIN`, else the
/// workspace's `target/release/slipway`).
pub fn slipway_bin() -> PathBuf {
    std::env::var_os("SLIPWAY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/slipway"))
}

/// Whether a test needing root, QEMU or peer tools should run. With
/// `SLIPWAY_LAB_TESTS=1` (the README's test command sets it) a missing
/// prerequisite is a failure, not a skip.
pub fn lab_tests_enabled(test: &str, tools: &[&str]) -> bool {
    let required = std::env::var("SLIPWAY_LAB_TESTS").is_ok_and(|v| v == "1");
    let mut missing: Vec<String> = tools
        .iter()
        .filter(|t| {
            !std::process::Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|t| t.to_string())
        .collect();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root".into());
    }
    if !slipway_bin().exists() {
        missing.push(format!("{} (cargo build --release)", slipway_bin().display()));
    }
    if missing.is_empty() {
        return true;
    }
    assert!(!required, "{test}: SLIPWAY_LAB_TESTS=1 but missing: {}", missing.join(", "));
    eprintln!("skipped {test}: missing {} (set SLIPWAY_LAB_TESTS=1 to make this a failure)", missing.join(", "));
    false
}

/// Peak resident memory of process `pid` in KiB (`VmHWM`), while it runs;
/// 0 once it has gone.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}
