//! Every Prometheus metric Slipway exports, in one table ([`CATALOG`]):
//! name, type, unit, help and the label values it starts with, so a
//! counter that never moved still renders as 0 and the dashboard
//! (`grafana/slipway.json`) can rely on every name it queries. Also the
//! histogram buckets, the gauges set at scrape from the database, the
//! boot face's request counter (a middleware) and the deploy phase clocks.
//!
//! It does not record most counters: those stay one `metrics::counter!`
//! line where the thing happens (the DHCP and TFTP servers in `pxe`, the
//! handlers, `oob`), with the name this table describes. Labels are
//! bounded by design: states, kinds, outcomes, protocols, a UPS name;
//! never a MAC, a machine id or a path.

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt;
use metrics::Unit;

use model::lifecycle::ALL_STATES;
use store::{Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One exported metric.
#[derive(Debug)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Unit,
    pub help: &'static str,
    /// Series registered at start (at 0), one per label set. Empty: the
    /// metric has per-device labels or is set at scrape; see `help`.
    pub start: &'static [&'static [(&'static str, &'static str)]],
}

const fn m(
    name: &'static str,
    kind: Kind,
    unit: Unit,
    help: &'static str,
    start: &'static [&'static [(&'static str, &'static str)]],
) -> Metric {
    Metric { name, kind, unit, help, start }
}

use Kind::{Counter, Gauge, Histogram};

/// No labels: one series.
const PLAIN: &[&[(&str, &str)]] = &[&[]];

/// Deploy phases as the duration histogram labels them: `start` (deploy
/// accepted until the agent starts writing, includes booting into the
/// ramdisk), `write`, `verify` (read-back hash), `firstboot` (first-boot
/// configuration), `reboot` (image written until the deployed OS's node
/// agent first reports), `join` (that report until cluster membership).
pub const DEPLOY_PHASES: [&str; 6] = ["start", "write", "verify", "firstboot", "reboot", "join"];

/// The boot face's request kinds, by path.
pub const BOOT_HTTP_KINDS: [&str; 8] = ["script", "kernel", "initrd", "image", "ipxe", "firmware", "agent", "other"];

pub const CAMPAIGN_STATES: [&str; 7] = ["scheduled", "running", "held", "paused", "completed", "failed", "cancelled"];
pub const CAMPAIGN_NODE_STATES: [&str; 6] = ["pending", "applying", "verifying", "done", "failed", "rolled_back"];

pub const CATALOG: &[Metric] = &[
    // Fleet.
    m("slipway_machines", Gauge, Unit::Count, "Machines by lifecycle state (read from the database at scrape).", &[]),
    // DHCP (pxe::dhcp::server).
    m("slipway_dhcp_received_total", Counter, Unit::Count, "DHCP requests parsed, by message type.", &[
        &[("type", "discover")], &[("type", "request")], &[("type", "decline")], &[("type", "release")], &[("type", "inform")],
    ]),
    m("slipway_dhcp_replies_total", Counter, Unit::Count, "DHCP replies sent (after their leases were committed), by kind.", &[
        &[("kind", "offer")], &[("kind", "ack")], &[("kind", "inform_ack")], &[("kind", "nak")], &[("kind", "proxy_offer")], &[("kind", "proxy_ack")],
    ]),
    m("slipway_dhcp_dropped_total", Counter, Unit::Count, "DHCP datagrams or replies dropped, by reason: the parse error, lease_store_failed (the batch went unanswered) or send_failed.", &[
        &[("reason", "lease_store_failed")], &[("reason", "send_failed")],
    ]),
    m("slipway_dhcp_decisions_total", Counter, Unit::Count, "DHCP decisions by outcome, reason (for NAKs and ignored requests) and client class.", &[
        &[("outcome", "offer"), ("reason", ""), ("client", "pxe")], &[("outcome", "ack"), ("reason", ""), ("client", "pxe")],
        &[("outcome", "offer"), ("reason", ""), ("client", "ipxe")], &[("outcome", "ack"), ("reason", ""), ("client", "ipxe")],
    ]),
    m("slipway_dhcp_bookkeeping_dropped_total", Counter, Unit::Count, "Bound DHCP clients whose machine record or event could not be queued.", PLAIN),
    m("slipway_ra_solicitations_total", Counter, Unit::Count, "IPv6 router solicitations answered.", PLAIN),
    // TFTP (pxe::tftp::server).
    m("slipway_tftp_transfers_started_total", Counter, Unit::Count, "TFTP read transfers started (file found, session opened).", PLAIN),
    m("slipway_tftp_transfers_total", Counter, Unit::Count, "TFTP transfers ended, by outcome: completed, client_ended (e.g. a tsize probe) or failed.", &[
        &[("outcome", "completed")], &[("outcome", "client_ended")], &[("outcome", "failed")],
    ]),
    m("slipway_tftp_sent_bytes_total", Counter, Unit::Bytes, "TFTP datagram bytes sent by transfers, retransmissions included.", PLAIN),
    m("slipway_tftp_refused_total", Counter, Unit::Count, "TFTP requests refused (not found, outside the root, write requests).", PLAIN),
    m("slipway_tftp_busy_total", Counter, Unit::Count, "TFTP requests refused because the server or that client had too many transfers running (provisioning.tftp_max_sessions, tftp_sessions_per_client).", PLAIN),
    m("slipway_tftp_dropped_total", Counter, Unit::Count, "Malformed TFTP datagrams dropped, by parse error.", &[]),
    // Boot HTTP face.
    m("slipway_boot_http_requests_total", Counter, Unit::Count, "Requests to the boot HTTP face by kind (script, kernel, initrd, image, ipxe, firmware, agent, other) and status class.", &[
        &[("kind", "script"), ("status", "2xx")], &[("kind", "kernel"), ("status", "2xx")], &[("kind", "initrd"), ("status", "2xx")], &[("kind", "image"), ("status", "2xx")],
    ]),
    m("slipway_leader", Gauge, Unit::Count, "1 while this appliance holds the leader lease and runs the background work (reaper, pollers, campaigns), else 0; appliances on one database should sum to 1.", PLAIN),
    m("slipway_image_peer_fetches_total", Counter, Unit::Count, "Image content fetched from the appliance holding it (outcome fetched or failed: unreachable, or not hashing to the image's digest).", &[&[("outcome", "fetched")], &[("outcome", "failed")]]),
    m("slipway_http_connections", Gauge, Unit::Count, "Open HTTP connections, by face (operator, boot).", &[&[("face", "operator")], &[("face", "boot")]]),
    m("slipway_http_connections_refused_total", Counter, Unit::Count, "HTTP connections closed on accept because the face, or that client address, had http.max_connections(_per_client) open.", &[&[("face", "operator")], &[("face", "boot")]]),
    m("slipway_http_header_timeouts_total", Counter, Unit::Count, "HTTP connections closed because a request's headers did not arrive within http.header_timeout_secs (or the connection sat idle that long).", &[&[("face", "operator")], &[("face", "boot")]]),
    m("slipway_boot_refusals_total", Counter, Unit::Count, "Boot scripts and agent calls refused on the provisioning network, by reason (not_lease_holder, no_observed_boot, agent_mid_job, denied, unknown_mac, wrong_address) and what was asked (ipxe, grub, agent).", &[
        &[("reason", "not_lease_holder"), ("what", "ipxe")], &[("reason", "wrong_address"), ("what", "agent")],
    ]),
    m("slipway_boot_guard_full_total", Counter, Unit::Count, "Observed network boots or agent sightings not kept because the guard's tables were full (a flood of spoofed boots).", PLAIN),
    m("slipway_boot_http_sent_bytes_total", Counter, Unit::Bytes, "Body bytes sent by the boot HTTP face, by kind.", &[
        &[("kind", "script")], &[("kind", "kernel")], &[("kind", "initrd")], &[("kind", "image")],
    ]),
    m("slipway_boot_scripts_total", Counter, Unit::Count, "Boot scripts rendered, by target (discovery, local_disk) and loader (ipxe over HTTP, grub over TFTP).", &[
        &[("target", "discovery"), ("loader", "ipxe")], &[("target", "local_disk"), ("loader", "ipxe")],
        &[("target", "discovery"), ("loader", "grub")], &[("target", "local_disk"), ("loader", "grub")],
    ]),
    // Deploys.
    m("slipway_deployments_requested_total", Counter, Unit::Count, "Deploys accepted.", PLAIN),
    m("slipway_deployments_total", Counter, Unit::Count, "Deploys finished, by outcome: written, failed (the agent's report) or timed_out (the deadline passed while deploying).", &[
        &[("outcome", "written")], &[("outcome", "failed")], &[("outcome", "timed_out")],
    ]),
    m("slipway_deploy_phase_duration_seconds", Histogram, Unit::Seconds, "Time a deploy spent in each phase, observed when the phase finished: start, write, verify, firstboot, reboot, join.", &[
        &[("phase", "start")], &[("phase", "write")], &[("phase", "verify")], &[("phase", "firstboot")], &[("phase", "reboot")], &[("phase", "join")],
    ]),
    m("slipway_releases_total", Counter, Unit::Count, "Releases finished, by outcome (wiped, failed).", &[
        &[("outcome", "wiped")], &[("outcome", "failed")],
    ]),
    m("slipway_inventories_total", Counter, Unit::Count, "In-band inventories stored.", PLAIN),
    m("slipway_cluster_joins_total", Counter, Unit::Count, "Machines that became joined.", PLAIN),
    // Out of band.
    m("slipway_bmc_requests_total", Counter, Unit::Count, "BMC requests by protocol and outcome (ok or the error kind: timeout, auth, connect, http, malformed, ...).", &[
        &[("protocol", "redfish"), ("outcome", "ok")], &[("protocol", "ipmi"), ("outcome", "ok")],
    ]),
    m("slipway_bmc_request_duration_seconds", Histogram, Unit::Seconds, "BMC request duration by protocol, waiting for a permit included.", &[
        &[("protocol", "redfish")], &[("protocol", "ipmi")],
    ]),
    m("slipway_ups_on_battery", Gauge, Unit::Count, "1 while the UPS is on battery or low, 0 on mains; per UPS name (read from the database at scrape).", &[]),
    m("slipway_ups_charge_percent", Gauge, Unit::Percent, "Battery charge per UPS, when it reports one (read from the database at scrape).", &[]),
    m("slipway_ups_errors_total", Counter, Unit::Count, "UPS reads that failed, by UPS and error kind.", &[]),
    // Campaigns.
    m("slipway_campaigns", Gauge, Unit::Count, "Refresh campaigns by state (read from the database at scrape).", &[]),
    m("slipway_campaign_nodes", Gauge, Unit::Count, "Target nodes of unfinished campaigns, by node state (read from the database at scrape).", &[]),
    // The store.
    m("slipway_event_write_failures_total", Counter, Unit::Count, "Events that could not be written (their whole transaction failed).", PLAIN),
    m("slipway_audit_write_failures_total", Counter, Unit::Count, "Audit records that could not be written.", PLAIN),
    m("slipway_retention_deleted_total", Counter, Unit::Count, "Events and audit entries deleted past their retention (retention.events_days, retention.audit_days), by table.", &[&[("table", "events")], &[("table", "audit")]]),
    m("slipway_audit_anonymous_skipped_total", Counter, Unit::Count, "Writes by callers without a valid token left out of the audit log: to routes the API does not have, or beyond audit::ANONYMOUS_PER_MINUTE.", PLAIN),
];

/// Histogram buckets, set on the exporter per metric.
pub const BUCKETS: &[(&str, &[f64])] = &[
    // From a second (verify of a tiny image) to an hour (a slow join).
    (
        "slipway_deploy_phase_duration_seconds",
        &[1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0],
    ),
    // A local IPMI read to a Redfish inventory walk at the request timeout.
    ("slipway_bmc_request_duration_seconds", &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
];

/// Describes every metric and registers its starting series. Called once,
/// right after the recorder is installed.
pub fn describe_all() {
    for metric in CATALOG {
        let (name, unit, help) = (metric.name, metric.unit, metric.help);
        match metric.kind {
            Counter => metrics::describe_counter!(name, unit, help),
            Gauge => metrics::describe_gauge!(name, unit, help),
            Histogram => metrics::describe_histogram!(name, unit, help),
        }
        for labels in metric.start {
            let labels: Vec<metrics::Label> = labels.iter().map(|&(k, v)| metrics::Label::new(k, v)).collect();
            match metric.kind {
                Counter => {
                    let _ = metrics::counter!(name, labels);
                }
                Gauge => {
                    let _ = metrics::gauge!(name, labels);
                }
                Histogram => {
                    let _ = metrics::histogram!(name, labels);
                }
            }
        }
    }
}

/// Sets the gauges that are counts in the database: machines, campaigns
/// and campaign nodes by state, and each UPS's last read state (so every
/// appliance on a shared database shows them, not only the leader that
/// polls).
pub async fn set_scrape_gauges(store: &Store) -> Result<(), StoreError> {
    let machines = store.count_by_state().await?;
    for s in ALL_STATES {
        let n = machines.get(&s).copied().unwrap_or(0);
        metrics::gauge!("slipway_machines", "state" => s.as_str()).set(n as f64);
    }
    set_by_state("slipway_campaigns", &CAMPAIGN_STATES, store.count_campaigns_by_state().await?);
    set_by_state("slipway_campaign_nodes", &CAMPAIGN_NODE_STATES, store.count_active_campaign_nodes_by_state().await?);
    for ups in store.ups_list().await? {
        let Some(state) = ups.state else { continue };
        let on_battery =
            matches!(state.status, inventory::oob::UpsStatus::OnBattery | inventory::oob::UpsStatus::LowBattery);
        metrics::gauge!("slipway_ups_on_battery", "ups" => ups.name.clone()).set(f64::from(u8::from(on_battery)));
        if let Some(charge) = state.charge_percent {
            metrics::gauge!("slipway_ups_charge_percent", "ups" => ups.name).set(charge);
        }
    }
    Ok(())
}

/// Every known state is set (0 when absent); a state the database holds
/// that this list does not know is set too.
fn set_by_state(name: &'static str, known: &[&'static str], mut counts: std::collections::HashMap<String, i64>) {
    for &state in known {
        metrics::gauge!(name, "state" => state).set(counts.remove(state).unwrap_or(0) as f64);
    }
    for (state, n) in counts {
        metrics::gauge!(name, "state" => state).set(n as f64);
    }
}

/// The deployed OS's node agent reported for the first time: the reboot
/// from the written image is over.
pub async fn node_agent_started(store: &Store, machine_id: &str) {
    match store.deploy_written_at_ms(machine_id).await {
        Ok(Some(written)) => store::observe_deploy_phase("reboot", written),
        Ok(None) => {}
        Err(err) => {
            tracing::debug!(machine = machine_id, error = %err, "reading the deploy's written time for metrics")
        }
    }
}

/// The machine became `joined`: the join phase, from its node agent's first report.
pub async fn cluster_joined(store: &Store, machine_id: &str) {
    match store.node_first_seen_ms(machine_id).await {
        Ok(Some(first)) => store::observe_deploy_phase("join", first),
        Ok(None) => {}
        Err(err) => tracing::debug!(machine = machine_id, error = %err, "reading the node's first report for metrics"),
    }
}

/// The deadline reaper failed a machine that was in state `from`: a
/// deploy that timed out counts as a finished deploy.
pub fn deadline_passed(from: model::lifecycle::MachineState) {
    if from == model::lifecycle::MachineState::Deploying {
        metrics::counter!("slipway_deployments_total", "outcome" => "timed_out").increment(1);
    }
}

/// The kind of a boot-face request, from its path.
pub fn boot_http_kind(path: &str) -> &'static str {
    if let Some(file) = path.strip_prefix("/boot/files/") {
        if file.contains("initrd") {
            "initrd"
        } else if file.contains("vmlinuz") || file.contains("kernel") {
            "kernel"
        } else {
            "other"
        }
    } else if path.starts_with("/boot/images/") {
        "image"
    } else if path.starts_with(pxe::boot::IPXE_HTTP_DIR) {
        "ipxe"
    } else if path.starts_with("/boot/firmware/") {
        "firmware"
    } else if path.starts_with("/boot/") && path.ends_with(".ipxe") {
        "script"
    } else if path.starts_with("/api/v1/agent/") {
        "agent"
    } else {
        "other"
    }
}

/// Middleware on the boot face: counts each request by kind and status
/// class, and the body bytes as they are sent (a download cut short
/// counts what left, not what was promised).
pub async fn count_boot_http(req: Request, next: Next) -> Response {
    let kind = boot_http_kind(req.uri().path());
    let response = next.run(req).await;
    let status = match response.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::counter!("slipway_boot_http_requests_total", "kind" => kind, "status" => status).increment(1);
    let bytes = metrics::counter!("slipway_boot_http_sent_bytes_total", "kind" => kind);
    // Content-Length (set by ServeFile, Range included) stays in the
    // headers, which hyper honours for a streamed body.
    response.map(|body| {
        Body::from_stream(body.into_data_stream().map(move |chunk| {
            if let Ok(data) = &chunk {
                bytes.increment(data.len() as u64);
            }
            chunk
        }))
    })
}

#[cfg(test)]
#[path = "metrics_catalog_tests.rs"]
mod tests;
