//! The catalog, `/metrics` and `grafana/slipway.json` agree: every metric
//! the dashboard queries is exported by an app driven through boot, deploy
//! and UPS paths (no DHCP socket), and the dashboard is well formed.

use std::collections::{BTreeMap, BTreeSet};

use axum::http::StatusCode;
use serde_json::{json, Value};

use super::{Kind, BUCKETS, CATALOG};
use crate::routes::test_support::{app, available_image, get_text, post, ready_machine, TestApp};

const DASHBOARD: &str = include_str!("../../grafana/slipway.json");

fn dashboard() -> Value {
    serde_json::from_str(DASHBOARD).expect("grafana/slipway.json is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(dash: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// The metric names in a PromQL expression, histogram suffixes stripped.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("slipway_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &expr[start..end];
        let histogram = |base: &str| CATALOG.iter().any(|m| m.name == base && m.kind == Kind::Histogram);
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|base| histogram(base)))
            .unwrap_or(name);
        names.insert(base.to_string());
        i = end;
    }
    names
}

fn dashboard_metrics() -> BTreeSet<String> {
    let dash = dashboard();
    panels(&dash)
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .flat_map(|t| metric_names(t["expr"].as_str().unwrap_or_default()))
        .collect()
}

/// `/metrics` as `name -> type` from its `# TYPE` lines, and the text.
async fn scrape(t: &TestApp) -> (BTreeMap<String, String>, String) {
    let req = axum::http::Request::get("/metrics")
        .header("Authorization", format!("Bearer {}", t.admin))
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = tower::ServiceExt::oneshot(t.operator.clone(), req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = String::from_utf8(axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap().to_vec()).unwrap();
    let types = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.to_string()))
        .collect();
    (types, text)
}

/// An app that has booted a machine (script, kernel, initrd), deployed an
/// image through every agent phase, and enrolled a UPS that was read once.
async fn driven_app() -> TestApp {
    crate::routes::metrics_handle();
    let t = app().await;
    available_image(&t, "metrics-img").await;
    let (id, token) = ready_machine(&t, "52:54:00:00:0a:01").await;
    std::fs::write(t.state.boot.as_ref().unwrap().ramdisk_dir.join("initrd.img"), "initrd-bytes").unwrap();
    for file in ["/boot/files/vmlinuz", "/boot/files/initrd.img", "/boot/images/metrics-img.raw.zst"] {
        get_text(&t.boot, file).await;
    }
    let deploy = format!("/api/v1/machines/{id}/deploy");
    let (status, _) = post(&t.operator, &deploy, &t.admin, &json!({ "image": "metrics-img", "hostname": "m1" })).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    for phase in ["writing", "verifying", "configuring", "written"] {
        let report = json!({ "phase": phase, "bytes_written": 1u64 << 20, "disk": "/dev/vda" });
        assert_eq!(post(&t.boot, wire::DEPLOY_PATH, &token, &report).await.0, StatusCode::OK, "{phase}");
    }
    // Nothing listens on the discard port: the first read fails (an error
    // counted), then a successful poll is recorded as the poller would.
    let ups = json!({ "name": "metrics-ups", "protocol": "nut", "address": "127.0.0.1:9", "ups": "ups1" });
    assert_eq!(post(&t.operator, "/api/v1/ups", &t.admin, &ups).await.0, StatusCode::CREATED);
    let state = inventory::oob::UpsState {
        status: inventory::oob::UpsStatus::OnBattery,
        charge_percent: Some(80.0),
        ..Default::default()
    };
    t.state.store.record_ups_ok("metrics-ups", &state).await.unwrap();
    t
}

#[tokio::test]
async fn every_dashboard_metric_is_exported() {
    let t = driven_app().await;
    let (exported, _) = scrape(&t).await;
    let used = dashboard_metrics();
    assert!(used.len() >= 20, "the dashboard queries {used:?}");
    for name in &used {
        assert!(CATALOG.iter().any(|m| m.name == name), "{name} is queried by the dashboard but not in the catalog");
        assert!(
            exported.contains_key(name),
            "{name} is queried by the dashboard but not exported; exported: {exported:?}"
        );
    }
}

#[tokio::test]
async fn every_catalog_metric_is_exported_with_its_type_and_help() {
    let t = driven_app().await;
    let (exported, text) = scrape(&t).await;
    // Labelled by parse error only: appears with the first malformed datagram.
    let on_first_event = ["slipway_tftp_dropped_total"];
    for m in CATALOG.iter().filter(|m| !on_first_event.contains(&m.name)) {
        let want = match m.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        assert_eq!(exported.get(m.name).map(String::as_str), Some(want), "{}", m.name);
        assert!(text.contains(&format!("# HELP {} ", m.name)), "{} has no HELP line", m.name);
    }
}

#[tokio::test]
async fn deploy_phases_boot_kinds_and_ups_gauges_are_recorded() {
    let t = driven_app().await;
    let (_, text) = scrape(&t).await;
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{series} not in\n{text}"))
            .parse()
            .unwrap()
    };
    for phase in ["start", "write", "verify", "firstboot"] {
        let count = format!("slipway_deploy_phase_duration_seconds_count{{phase=\"{phase}\"}}");
        assert!(value(&count) >= 1.0, "{count}");
    }
    assert!(value("slipway_deployments_total{outcome=\"written\"}") >= 1.0);
    for kind in ["script", "kernel", "initrd", "image"] {
        assert!(value(&format!("slipway_boot_http_requests_total{{kind=\"{kind}\",status=\"2xx\"}}")) >= 1.0, "{kind}");
        assert!(value(&format!("slipway_boot_http_sent_bytes_total{{kind=\"{kind}\"}}")) > 0.0, "{kind}");
    }
    assert_eq!(value("slipway_ups_on_battery{ups=\"metrics-ups\"}"), 1.0);
    assert_eq!(value("slipway_ups_charge_percent{ups=\"metrics-ups\"}"), 80.0);
    assert!(value("slipway_machines{state=\"deployed\"}") >= 1.0);
    assert!(text.contains("slipway_ups_errors_total{ups=\"metrics-ups\""), "the failed first read is counted");
    assert!(
        text.contains("slipway_deploy_phase_duration_seconds_bucket{phase=\"write\",le=\"3600\"}"),
        "explicit buckets"
    );
}

#[test]
fn names_are_prefixed_unique_and_carry_their_units() {
    let mut seen = BTreeSet::new();
    for m in CATALOG {
        assert!(seen.insert(m.name), "{} twice", m.name);
        assert!(m.name.starts_with("slipway_"), "{}", m.name);
        assert_eq!(
            m.kind == Kind::Counter,
            m.name.ends_with("_total"),
            "{}: counters and only counters end in _total",
            m.name
        );
        let unit = match m.unit {
            metrics::Unit::Seconds => Some("_seconds"),
            metrics::Unit::Bytes => Some("_bytes"),
            metrics::Unit::Percent => Some("_percent"),
            _ => None,
        };
        if let Some(unit) = unit {
            assert!(m.name.trim_end_matches("_total").ends_with(unit), "{} is in {unit}", m.name);
        }
        assert_eq!(m.kind == Kind::Histogram, BUCKETS.iter().any(|(n, _)| *n == m.name), "{}: buckets", m.name);
        for labels in m.start {
            for (key, _) in *labels {
                assert!(
                    !["mac", "machine", "machine_id", "id", "path"].contains(key),
                    "{}: unbounded label {key}",
                    m.name
                );
            }
        }
    }
}

#[test]
fn the_dashboard_is_a_grafana_dashboard() {
    let dash = dashboard();
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 36, "schemaVersion");
    assert_eq!(dash["uid"], "slipway");
    assert!(!dash["title"].as_str().unwrap().is_empty());
    let vars = dash["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter().any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource" && v["query"] == "prometheus"),
        "a Prometheus datasource variable DS_PROMETHEUS"
    );
    let all = panels(&dash);
    let rows: Vec<&str> = all.iter().filter(|p| p["type"] == "row").map(|p| p["title"].as_str().unwrap()).collect();
    assert_eq!(rows, ["Fleet", "Boot", "Deploys", "Out of band", "Campaigns"]);
    let mut ids = BTreeSet::new();
    for p in &all {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {p}");
        assert!(ids.insert(p["id"].as_u64().expect("panel id")), "panel id {} twice", p["id"]);
        let grid = &p["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(x + w <= 24 && grid["h"].as_u64().unwrap() > 0, "{title}: gridPos {grid}");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}: datasource");
        assert_eq!(p["datasource"]["type"], "prometheus", "{title}: datasource");
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{title}: targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        let mut refs = BTreeSet::new();
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(!metric_names(expr).is_empty(), "{title}: {expr:?} queries no Slipway metric");
            assert_eq!(expr.matches('(').count(), expr.matches(')').count(), "{title}: {expr}");
            assert!(refs.insert(target["refId"].as_str().expect("refId")), "{title}: refId twice");
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}: target datasource");
        }
    }
}

#[test]
fn boot_paths_map_to_bounded_kinds() {
    for (path, kind) in [
        ("/boot/52-54-00-00-00-01.ipxe", "script"),
        ("/boot/files/vmlinuz", "kernel"),
        ("/boot/files/initrd.img", "initrd"),
        ("/boot/images/debian-12.raw.zst", "image"),
        ("/boot/ipxe/snponly.efi", "ipxe"),
        ("/boot/firmware/bios-2.1", "firmware"),
        ("/api/v1/agent/hello", "agent"),
        ("/boot/files/../../etc/passwd", "other"),
        ("/healthz", "other"),
    ] {
        assert_eq!(super::boot_http_kind(path), kind, "{path}");
        assert!(super::BOOT_HTTP_KINDS.contains(&kind));
    }
}
