//! What each resource looks like to a person: the API's JSON turned into
//! tables and `Key: value` blocks. Pure functions of the JSON (and, for
//! ages, of the current time), so their output is tested as snapshots.
//! Fields a view does not know are left out; `-o json` shows everything.

use serde_json::Value;

use super::table::{key_values, truncate, Table};

/// The text of `v` at JSON pointer `ptr`: strings as they are, numbers,
/// `yes`/`no`, lists joined by `, `; missing and null are empty.
pub fn text(v: &Value, ptr: &str) -> String {
    match v.pointer(ptr) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => if *b { "yes" } else { "no" }.to_string(),
        Some(Value::Array(items)) => {
            items.iter().map(|i| text(i, "")).filter(|t| !t.is_empty()).collect::<Vec<_>>().join(", ")
        }
        Some(other) => other.to_string(),
    }
}

/// The list under `key` in a list response (`{"machines": [...]}`).
pub fn items<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key).or(Some(v)).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// `8.0 GiB`, binary units.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn bytes_at(v: &Value, ptr: &str) -> String {
    v.pointer(ptr).and_then(Value::as_u64).map(bytes).unwrap_or_default()
}

/// Age as `kubectl get` shows it: `45s`, `12m`, `5h`, `3d`.
pub fn age(rfc3339: &str, now_ms: i64) -> String {
    let Ok(then) = chrono::DateTime::parse_from_rfc3339(rfc3339) else {
        return String::new();
    };
    let secs = ((now_ms - then.timestamp_millis()) / 1000).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 120 * 60 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn state_with_phase(m: &Value) -> String {
    match m.pointer("/failure/phase").and_then(Value::as_str) {
        Some(phase) => format!("{} ({phase})", text(m, "/state")),
        None => text(m, "/state"),
    }
}

pub fn machines(list: &Value, now_ms: i64) -> String {
    let mut t = Table::new(&["id", "state", "mac", "cpus", "memory", "disks", "rack", "age"]);
    for m in items(list, "machines") {
        let macs = m["macs"].as_array().map_or(0, Vec::len);
        let mac = match macs {
            0 | 1 => text(m, "/macs/0"),
            n => format!("{} (+{})", text(m, "/macs/0"), n - 1),
        };
        let disks: Vec<u64> = m
            .pointer("/inventory/disks")
            .and_then(Value::as_array)
            .map(|d| d.iter().filter_map(|d| d["size_bytes"].as_u64()).collect())
            .unwrap_or_default();
        let disk =
            if disks.is_empty() { String::new() } else { format!("{} ({})", disks.len(), bytes(disks.iter().sum())) };
        t.row(vec![
            text(m, "/id"),
            state_with_phase(m),
            mac,
            text(m, "/inventory/cpu/count"),
            bytes_at(m, "/inventory/memory/total_bytes"),
            disk,
            text(m, "/rack"),
            age(&text(m, "/created_at"), now_ms),
        ]);
    }
    t.render()
}

pub fn machine(m: &Value) -> String {
    let failure = match m.get("failure").filter(|f| !f.is_null()) {
        Some(f) => format!("{}: {}", text(f, "/phase"), text(f, "/reason")),
        None => String::new(),
    };
    let list = |ptr: &str, line: &dyn Fn(&Value) -> String| {
        m.pointer(ptr).and_then(Value::as_array).map(|a| a.iter().map(line).collect::<Vec<_>>().join("\n"))
    };
    let disks = list("/inventory/disks", &|d| {
        let extra = [text(d, "/model"), text(d, "/serial")].into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>();
        format!("{}  {}  {}", text(d, "/name"), bytes_at(d, "/size_bytes"), extra.join("  ")).trim_end().to_string()
    });
    let nics = list("/inventory/nics", &|n| {
        let link = if n["link"].as_bool() == Some(true) { "link up" } else { "no link" };
        format!("{}  {}  {link}", text(n, "/name"), text(n, "/mac"))
    });
    let system = [text(m, "/inventory/system/vendor"), text(m, "/inventory/system/product")].join(" ");
    let cpu = match (text(m, "/inventory/cpu/count"), text(m, "/inventory/cpu/model")) {
        (count, _) if count.is_empty() => String::new(),
        (count, model) => format!("{count} x {model}").trim_end_matches(" x ").to_string(),
    };
    key_values(&[
        ("ID", text(m, "/id")),
        ("State", text(m, "/state")),
        ("Failure", failure),
        ("MACs", text(m, "/macs")),
        ("System", system.trim().to_string()),
        ("Serial", text(m, "/serial")),
        ("System UUID", text(m, "/system_uuid")),
        ("Rack", text(m, "/rack")),
        ("CPU", cpu),
        ("Memory", bytes_at(m, "/inventory/memory/total_bytes")),
        ("Disks", disks.unwrap_or_default()),
        ("NICs", nics.unwrap_or_default()),
        ("Deadline", text(m, "/state_deadline")),
        ("Created", text(m, "/created_at")),
        ("Updated", text(m, "/updated_at")),
    ])
}

/// Events are printed line by line (and `--follow` keeps printing), so
/// their columns have fixed widths rather than the widest cell's.
pub fn event_header() -> String {
    event_columns("TIME", "MACHINE", "KIND", "DETAIL")
}

pub fn event_line(e: &Value) -> String {
    let machine = match text(e, "/machine_id") {
        m if m.is_empty() => "-".to_string(),
        m => m,
    };
    let detail = match e.get("detail") {
        None | Some(Value::Null) => String::new(),
        Some(Value::Object(o)) if o.is_empty() => String::new(),
        Some(d) => truncate(&d.to_string(), 120),
    };
    event_columns(&text(e, "/at"), &machine, &text(e, "/kind"), &detail)
}

fn event_columns(at: &str, machine: &str, kind: &str, detail: &str) -> String {
    format!("{at:<24}   {machine:<36}   {kind:<22}   {detail}").trim_end().to_string() + "\n"
}

pub fn bmcs(list: &Value) -> String {
    let mut t = Table::new(&["id", "address", "protocol", "machine", "power", "status", "last error"]);
    for b in items(list, "bmcs") {
        t.row(vec![
            text(b, "/id"),
            text(b, "/address"),
            text(b, "/protocol"),
            text(b, "/machine_id"),
            text(b, "/power_state"),
            text(b, "/status"),
            truncate(&text(b, "/last_error"), 60),
        ]);
    }
    t.render()
}

pub fn bmc(b: &Value) -> String {
    let error = match (text(b, "/last_error"), text(b, "/last_error_kind")) {
        (e, _) if e.is_empty() => String::new(),
        (e, k) if k.is_empty() => e,
        (e, k) => format!("{e} ({k})"),
    };
    let inv = |ptr: &str| text(b, &format!("/inventory{ptr}"));
    let count = |ptr: &str| b.pointer(&format!("/inventory{ptr}")).and_then(Value::as_array).map_or(0, Vec::len);
    let memory: u64 = b
        .pointer("/inventory/memory")
        .and_then(Value::as_array)
        .map_or(0, |d| d.iter().filter_map(|d| d["size_bytes"].as_u64()).sum());
    let hardware = if b.get("inventory").is_some_and(|i| !i.is_null()) {
        format!(
            "{} processors, {} DIMMs ({}), {} drives, {} NICs, {} power supplies",
            count("/processors"),
            count("/memory"),
            bytes(memory),
            count("/drives"),
            count("/nics"),
            count("/power_supplies")
        )
    } else {
        String::new()
    };
    key_values(&[
        ("ID", text(b, "/id")),
        ("Address", text(b, "/address")),
        ("Protocol", text(b, "/protocol")),
        ("Username", text(b, "/username")),
        ("TLS", text(b, "/tls/mode")),
        ("Machine", text(b, "/machine_id")),
        ("System", format!("{} {}", inv("/system/manufacturer"), inv("/system/model")).trim().to_string()),
        ("Serial", text(b, "/serial")),
        ("System UUID", text(b, "/system_uuid")),
        ("BIOS", inv("/system/bios_version")),
        ("Hardware", hardware),
        ("Power", text(b, "/power_state")),
        ("Status", text(b, "/status")),
        ("Last error", error),
        ("Last OK", text(b, "/last_ok")),
        ("Created", text(b, "/created_at")),
    ])
}

fn percent(v: &Value, ptr: &str) -> String {
    v.pointer(ptr).and_then(Value::as_f64).map(|p| format!("{p:.0}%")).unwrap_or_default()
}

fn minutes(v: &Value, ptr: &str) -> String {
    v.pointer(ptr).and_then(Value::as_u64).map(|s| format!("{}m", s / 60)).unwrap_or_default()
}

pub fn ups_list(list: &Value) -> String {
    let mut t = Table::new(&["name", "protocol", "address", "state", "charge", "runtime", "load", "feeds", "status"]);
    for u in items(list, "ups") {
        let fed = u["feeds_machines"].as_array().map_or(0, Vec::len);
        t.row(vec![
            text(u, "/name"),
            text(u, "/protocol"),
            text(u, "/address"),
            text(u, "/state/status"),
            percent(u, "/state/charge_percent"),
            minutes(u, "/state/runtime_secs"),
            percent(u, "/state/load_percent"),
            format!("{fed} machines"),
            text(u, "/status"),
        ]);
    }
    t.render()
}

pub fn ups(u: &Value) -> String {
    let feeds = [("racks", text(u, "/feeds/racks")), ("machines", text(u, "/feeds/machines"))]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join("; ");
    key_values(&[
        ("Name", text(u, "/name")),
        ("Protocol", text(u, "/protocol")),
        ("Address", text(u, "/address")),
        ("Target", text(u, "/target")),
        ("Username", text(u, "/username")),
        ("Model", format!("{} {}", text(u, "/state/manufacturer"), text(u, "/state/model")).trim().to_string()),
        ("State", text(u, "/state/status")),
        ("Flags", text(u, "/state/flags")),
        ("Charge", percent(u, "/state/charge_percent")),
        ("Runtime", minutes(u, "/state/runtime_secs")),
        ("Load", percent(u, "/state/load_percent")),
        ("Input voltage", text(u, "/state/input_voltage")),
        ("Feeds", feeds),
        ("Feeds machines", text(u, "/feeds_machines")),
        ("Status", text(u, "/status")),
        ("Last error", text(u, "/last_error")),
        ("Last OK", text(u, "/last_ok")),
    ])
}

pub fn images(list: &Value) -> String {
    let mut t = Table::new(&["name", "os", "version", "arch", "boot", "state", "size", "stored"]);
    for i in items(list, "images") {
        t.row(vec![
            text(i, "/name"),
            text(i, "/os"),
            text(i, "/version"),
            text(i, "/arch"),
            text(i, "/boot_mode"),
            text(i, "/state"),
            bytes_at(i, "/raw_bytes"),
            bytes_at(i, "/stored_bytes"),
        ]);
    }
    t.render()
}

pub fn image(i: &Value) -> String {
    key_values(&[
        ("Name", text(i, "/name")),
        ("OS", format!("{} {}", text(i, "/os"), text(i, "/version"))),
        ("Arch", text(i, "/arch")),
        ("Boot mode", text(i, "/boot_mode")),
        ("State", text(i, "/state")),
        ("Size", bytes_at(i, "/raw_bytes")),
        ("Stored", bytes_at(i, "/stored_bytes")),
        ("SHA-256", text(i, "/sha256")),
        ("Error", text(i, "/error")),
        ("Created", text(i, "/created_at")),
    ])
}

pub fn deployment(d: &Value) -> String {
    let progress = match (d["bytes_written"].as_u64(), d["total_bytes"].as_u64()) {
        (Some(done), Some(total)) if total > 0 => format!("{} of {}", bytes(done), bytes(total)),
        _ => String::new(),
    };
    key_values(&[
        ("Machine", text(d, "/machine_id")),
        ("Image", text(d, "/image")),
        ("Hostname", text(d, "/spec/hostname")),
        ("Phase", text(d, "/phase")),
        ("Written", progress),
        ("Disk", text(d, "/disk")),
        ("Error", text(d, "/error")),
    ])
}

pub fn tokens(list: &Value) -> String {
    let mut t = Table::new(&["id", "name", "role", "created", "expires", "last used"]);
    for k in items(list, "tokens") {
        t.row(vec![
            text(k, "/id"),
            text(k, "/name"),
            text(k, "/role"),
            text(k, "/created_at"),
            text(k, "/expires_at"),
            text(k, "/last_used_at"),
        ]);
    }
    t.render()
}

/// What a campaign does, in a few words.
fn campaign_action(c: &Value) -> String {
    match (c.pointer("/action/os_refresh/image"), c.pointer("/action/firmware")) {
        (Some(image), _) => format!("OS refresh to {}", text(image, "")),
        (None, Some(f)) => format!("{} {}", text(f, "/component"), text(f, "/version")),
        (None, None) => String::new(),
    }
}

fn campaign_progress(c: &Value) -> String {
    let n = |k: &str| c.pointer(&format!("/summary/{k}")).and_then(Value::as_u64).unwrap_or(0);
    let mut out = format!("{}/{} done", n("done"), n("total"));
    for (k, label) in
        [("failed", "failed"), ("rolled_back", "rolled back"), ("applying", "applying"), ("verifying", "verifying")]
    {
        if n(k) > 0 {
            out.push_str(&format!(", {} {label}", n(k)));
        }
    }
    out
}

pub fn campaigns(list: &Value) -> String {
    let mut t = Table::new(&["id", "name", "action", "state", "progress", "reason"]);
    for c in items(list, "campaigns") {
        t.row(vec![
            text(c, "/id"),
            text(c, "/name"),
            campaign_action(c),
            text(c, "/state"),
            campaign_progress(c),
            text(c, "/reason"),
        ]);
    }
    t.render()
}

pub fn campaign(c: &Value) -> String {
    let mut out = key_values(&[
        ("ID", text(c, "/id")),
        ("Name", text(c, "/name")),
        ("Action", campaign_action(c)),
        ("State", text(c, "/state")),
        ("Reason", text(c, "/reason")),
        ("Progress", campaign_progress(c)),
        ("Next window", text(c, "/schedule_next_open")),
        ("Started", text(c, "/started_at")),
        ("Finished", text(c, "/finished_at")),
    ]);
    let mut t = Table::new(&["#", "machine", "rack", "state", "from", "to", "reason"]);
    for n in items(c, "nodes") {
        t.row(vec![
            text(n, "/position"),
            text(n, "/machine_id"),
            text(n, "/rack"),
            text(n, "/state"),
            text(n, "/old_version"),
            text(n, "/new_version"),
            text(n, "/reason"),
        ]);
    }
    out.push('\n');
    out.push_str(&t.render());
    out
}

pub fn firmware(list: &Value) -> String {
    let mut t = Table::new(&["name", "size", "sha256", "uploaded"]);
    for f in items(list, "firmware") {
        t.row(vec![text(f, "/name"), bytes_at(f, "/size_bytes"), text(f, "/sha256"), text(f, "/uploaded_at")]);
    }
    t.render()
}

#[cfg(test)]
#[path = "views_tests.rs"]
mod tests;
