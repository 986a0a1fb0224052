//! Persistence. One [`Store`] over sqlx's `Any` driver so the same queries
//! run on SQLite (embedded default) and PostgreSQL: queries use `$N`
//! placeholders, which both accept, and only portable types (TEXT, BIGINT).
//! Migrations live in `store/migrations` and run at start-up.
//!
//! The store keeps the rows and raises the events for each change in the
//! same transaction; what a change means (the lifecycle, campaigns) is the
//! `model` crate's, and when to make it is the appliance's (`api`).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use thiserror::Error;
use uuid::Uuid;

pub mod actions;
mod campaign;
mod clock;
mod deploy;
pub mod feed;
mod gauges;
pub mod idempotency;
pub mod labels;
mod lease;
mod node;
mod oob;
mod refresh;
mod retention;
#[cfg(any(test, feature = "test-util"))]
pub mod test_db;
pub mod tokens;

pub use clock::{wall_clock_ms, Clock};
pub use deploy::{observe_deploy_phase, Deployment, Image, ImageMeta, ImageState};
pub use labels::{MachineFilter, MachinePatch};
pub use model::deploy::DeployPhase;
pub use node::{Cluster, NodeReport};
pub use oob::{Bmc, LinkedBy, NewBmc, Ups, UpsFeeds};

use inventory::{Inventory, MacAddr};
use model::lifecycle::{self, MachineState, Transition, Trigger};

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The request conflicts with the current state (HTTP 409).
    #[error("{0}")]
    Conflict(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct Store {
    /// Reads.
    pool: AnyPool,
    /// Writes. On SQLite a pool of one connection: SQLite has one writer
    /// anyway, and queueing writers here is first-come-first-served, where
    /// SQLite's own busy handler sleeps 1, 2, 5, 10 ms between retries
    /// (that sleep was most of the DHCP ACK latency in a PXE storm). On
    /// PostgreSQL the same pool as reads.
    writer: AnyPool,
    /// Committed events, tailed from the database for live streams.
    pub feed: std::sync::Arc<feed::EventFeed>,
    clock: Clock,
}

/// Who holds a live agent token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentTokenHolder {
    pub machine_id: String,
    /// The address the token was handed to (`None` for tokens from before
    /// addresses were kept).
    pub peer: Option<IpAddr>,
}

/// A DHCP client that was ACKed (or, in proxy mode, given boot information
/// only: `ip` unspecified).
#[derive(Debug, Clone)]
pub struct DhcpBinding {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    /// A network boot (PXE/iPXE/HTTP boot) rather than an ordinary client.
    pub network_boot: bool,
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Machine {
    pub id: String,
    pub state: MachineState,
    pub failure: Option<Failure>,
    #[schema(value_type = Vec<String>)]
    pub macs: Vec<MacAddr>,
    /// From in-band DMI or the BMC, whichever was known first.
    pub system_uuid: Option<String>,
    pub serial: Option<String>,
    pub rack: Option<String>,
    pub inventory: Option<Inventory>,
    /// Operator labels (`PATCH /machines/{id}`).
    pub labels: std::collections::BTreeMap<String, String>,
    /// A digest of this document (without `etag`): the `ETag` header.
    pub etag: String,
    /// The row's edit counter and last change, which a conditional edit
    /// (`If-Match`) is guarded on.
    #[serde(skip)]
    pub version: i64,
    #[serde(skip)]
    pub updated_at_ms: i64,
    /// When the current waiting state times out, if it does.
    pub state_deadline: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl Machine {
    /// How its firmware started it, as its agent last saw (unknown before
    /// an in-band inventory).
    pub fn firmware_mode(&self) -> Option<inventory::FirmwareMode> {
        self.inventory.as_ref()?.firmware.map(|f| f.mode)
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Failure {
    pub phase: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Event {
    pub id: String,
    pub machine_id: Option<String>,
    pub at: String,
    pub at_ms: i64,
    pub kind: String,
    pub detail: serde_json::Value,
}

/// A closed set (an enum with `FromStr`) stored as its name.
pub(crate) fn parse_col<T: std::str::FromStr<Err = String>>(r: &sqlx::any::AnyRow, col: &str) -> Result<T> {
    let text: String = sqlx::Row::try_get(r, col)?;
    text.parse().map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}

pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// 256 random bits, hex encoded: agent, node and API token secrets.
pub fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// `sql` with each of `ids` bound in turn (`$1`, `$2`, ...).
fn bind_ids<'q>(sql: &'q str, ids: &'q [String]) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    ids.iter().fold(sqlx::query(sql), |q, id| q.bind(id.as_str()))
}

/// A machine from its row and its MACs and labels.
fn machine_of(row: &AnyRow, macs: Vec<MacAddr>, labels: BTreeMap<String, String>) -> Result<Machine> {
    let id: String = row.try_get("id")?;
    let state_text: String = row.try_get("state")?;
    let state = MachineState::from_str(&state_text).map_err(StoreError::Corrupt)?;
    let inventory = row
        .try_get::<Option<String>, _>("inventory")?
        .map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("inventory of {id}: {e}"))))
        .transpose()?;
    let failure = match (
        row.try_get::<Option<String>, _>("failed_phase")?,
        row.try_get::<Option<String>, _>("failure_reason")?,
    ) {
        (Some(phase), Some(reason)) if state == MachineState::Failed => Some(Failure { phase, reason }),
        _ => None,
    };
    let mut machine = Machine {
        labels,
        etag: String::new(),
        version: row.try_get("version")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
        state,
        failure,
        macs,
        system_uuid: row.try_get("system_uuid")?,
        serial: row.try_get("serial")?,
        rack: row.try_get("rack")?,
        inventory,
        state_deadline: row.try_get::<Option<i64>, _>("state_deadline_ms")?.map(rfc3339),
        created_at: rfc3339(row.try_get("created_at_ms")?),
        updated_at: rfc3339(row.try_get("updated_at_ms")?),
        id,
    };
    machine.etag = labels::etag_of(&machine);
    Ok(machine)
}

impl Store {
    pub async fn connect(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let pool = Self::open_pool(url, if sqlite { 4 } else { 16 }, sqlite).await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        let writer = if sqlite { Self::open_pool(url, 1, true).await? } else { pool.clone() };
        let clock = Clock::default();
        let feed = std::sync::Arc::new(feed::EventFeed::new(pool.clone(), clock.clone()));
        Ok(Store { pool, writer, feed, clock })
    }

    /// The clock every timestamp and decision reads (tests move it).
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    async fn open_pool(url: &str, connections: u32, sqlite: bool) -> Result<AnyPool> {
        let pool = AnyPoolOptions::new()
            .max_connections(connections)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // WAL: readers never block the writer. With
                        // synchronous=NORMAL a commit survives a crash of the
                        // process (kill -9), not a power cut: the trade that
                        // lets a PXE storm be answered without an fsync per
                        // lease.
                        for pragma in [
                            "PRAGMA journal_mode=WAL",
                            "PRAGMA synchronous=NORMAL",
                            "PRAGMA busy_timeout=5000",
                            "PRAGMA foreign_keys=ON",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        Ok(pool)
    }

    async fn event_in<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
        exec: E,
        machine_id: Option<&str>,
        at_ms: i64,
        kind: &str,
        detail: serde_json::Value,
    ) -> Result<()> {
        sqlx::query("INSERT INTO events (id, machine_id, at_ms, kind, detail) VALUES ($1, $2, $3, $4, $5)")
            .bind(Uuid::now_v7().to_string())
            .bind(machine_id.map(str::to_string))
            .bind(at_ms)
            .bind(kind)
            .bind(detail.to_string())
            .execute(exec)
            .await
            .inspect_err(|_| metrics::counter!("slipway_event_write_failures_total").increment(1))?;
        Ok(())
    }

    pub async fn record_event(&self, machine_id: Option<&str>, kind: &str, detail: serde_json::Value) -> Result<()> {
        Self::event_in(&self.writer, machine_id, self.now_ms(), kind, detail).await
    }

    pub async fn machine_id_by_mac(&self, mac: MacAddr) -> Result<Option<String>> {
        let row = sqlx::query("SELECT machine_id FROM machine_macs WHERE mac = $1")
            .bind(mac.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("machine_id")).transpose()?)
    }

    /// The machine that owns `mac`, created in `discovering` if none does.
    /// Returns its id and whether it was created.
    pub async fn ensure_machine(&self, mac: MacAddr, cause: &str, discovery_timeout_ms: i64) -> Result<(String, bool)> {
        if let Some(id) = self.machine_id_by_mac(mac).await? {
            return Ok((id, false));
        }
        let mut tx = self.writer.begin().await?;
        let found = self.ensure_machine_in(&mut tx, mac, cause, self.now_ms() + discovery_timeout_ms).await?;
        tx.commit().await?;
        Ok(found)
    }

    async fn ensure_machine_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        mac: MacAddr,
        cause: &str,
        deadline_ms: i64,
    ) -> Result<(String, bool)> {
        let owner = |row: Option<AnyRow>| row.map(|r| r.try_get::<String, _>("machine_id")).transpose();
        let lookup = "SELECT machine_id FROM machine_macs WHERE mac = $1";
        if let Some(id) = owner(sqlx::query(lookup).bind(mac.to_string()).fetch_optional(&mut **tx).await?)? {
            return Ok((id, false));
        }
        let id = Uuid::new_v4().to_string();
        let now = self.now_ms();
        sqlx::query(
            "INSERT INTO machines (id, state, state_deadline_ms, created_at_ms, updated_at_ms) VALUES ($1, $2, $3, $4, $4)",
        )
        .bind(&id)
        .bind(MachineState::Discovering.as_str())
        .bind(deadline_ms)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        let inserted =
            sqlx::query("INSERT INTO machine_macs (mac, machine_id) VALUES ($1, $2) ON CONFLICT (mac) DO NOTHING")
                .bind(mac.to_string())
                .bind(&id)
                .execute(&mut **tx)
                .await?;
        if inserted.rows_affected() == 0 {
            // Another appliance on a shared database created it first (on
            // PostgreSQL); use theirs.
            sqlx::query("DELETE FROM machines WHERE id = $1").bind(&id).execute(&mut **tx).await?;
            let theirs = owner(sqlx::query(lookup).bind(mac.to_string()).fetch_optional(&mut **tx).await?)?;
            return Ok((theirs.ok_or_else(|| StoreError::Corrupt(format!("mac {mac} vanished")))?, false));
        }
        Self::event_in(
            &mut **tx,
            Some(&id),
            now,
            "machine.created",
            serde_json::json!({ "mac": mac.to_string(), "cause": cause, "state": "discovering" }),
        )
        .await?;
        Ok((id, true))
    }

    /// Records DHCP bindings in one transaction: a network-booting client's
    /// machine is created if new, and each binding of a known machine is
    /// an event. Batched so a PXE storm costs one commit per batch.
    pub async fn record_dhcp_bindings(&self, bindings: &[DhcpBinding], discovery_timeout_ms: i64) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        let deadline = self.now_ms() + discovery_timeout_ms;
        for b in bindings {
            let id = if b.network_boot {
                Some(self.ensure_machine_in(&mut tx, b.mac, "network boot (DHCP)", deadline).await?.0)
            } else {
                let row = sqlx::query("SELECT machine_id FROM machine_macs WHERE mac = $1")
                    .bind(b.mac.to_string())
                    .fetch_optional(&mut *tx)
                    .await?;
                row.map(|r| r.try_get::<String, _>("machine_id")).transpose()?
            };
            if let Some(id) = id {
                // Proxy mode answers with boot information only (no address).
                let kind = if b.ip.is_unspecified() { "dhcp.proxy" } else { "dhcp.ack" };
                Self::event_in(&mut *tx, Some(&id), self.now_ms(), kind, b.detail.clone()).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn machine(&self, id: &str) -> Result<Option<Machine>> {
        let row = sqlx::query("SELECT * FROM machines WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        Ok(self.machines_from_rows(row.as_slice()).await?.pop())
    }

    pub async fn machines(&self) -> Result<Vec<Machine>> {
        let rows = sqlx::query("SELECT * FROM machines ORDER BY created_at_ms, id").fetch_all(&self.pool).await?;
        self.machines_from_rows(&rows).await
    }

    /// Machines per state, in one query (a scrape must not load every
    /// machine with its MACs and inventory).
    pub async fn count_by_state(&self) -> Result<std::collections::HashMap<MachineState, i64>> {
        let rows =
            sqlx::query("SELECT state, COUNT(*) AS n FROM machines GROUP BY state").fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let state = MachineState::from_str(&r.try_get::<String, _>("state")?).map_err(StoreError::Corrupt)?;
                Ok((state, r.try_get::<i64, _>("n")?))
            })
            .collect()
    }

    /// Machines from their rows, with their MACs and labels read for the
    /// whole set in one query each: a page of 1,000 is three queries, not
    /// 2,001 (the fleet simulator found a list's p99 at 3.8 s while a
    /// thousand agents competed for the same few connections).
    pub(crate) async fn machines_from_rows(&self, rows: &[AnyRow]) -> Result<Vec<Machine>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = rows.iter().map(|r| r.try_get("id")).collect::<std::result::Result<_, _>>()?;
        let list = (1..=ids.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
        let mac_sql = format!("SELECT machine_id, mac FROM machine_macs WHERE machine_id IN ({list}) ORDER BY mac");
        let mut macs: HashMap<String, Vec<MacAddr>> = HashMap::new();
        for r in bind_ids(&mac_sql, &ids).fetch_all(&self.pool).await? {
            let mac =
                r.try_get::<String, _>("mac")?.parse::<MacAddr>().map_err(|e| StoreError::Corrupt(e.to_string()))?;
            macs.entry(r.try_get("machine_id")?).or_default().push(mac);
        }
        let label_sql = format!("SELECT machine_id, name, value FROM machine_labels WHERE machine_id IN ({list})");
        let mut labels: HashMap<String, BTreeMap<String, String>> = HashMap::new();
        for r in bind_ids(&label_sql, &ids).fetch_all(&self.pool).await? {
            labels.entry(r.try_get("machine_id")?).or_default().insert(r.try_get("name")?, r.try_get("value")?);
        }
        rows.iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                let (m, l) = (macs.remove(&id).unwrap_or_default(), labels.remove(&id).unwrap_or_default());
                machine_of(row, m, l)
            })
            .collect()
    }

    /// Applies `trigger` through the lifecycle; records the state change (or
    /// that the trigger did not apply) as an event. Returns the new state.
    pub async fn fire(&self, id: &str, trigger: Trigger) -> Result<Option<MachineState>> {
        self.fire_because(id, trigger, trigger.cause(), None).await
    }

    /// [`Store::fire`] with the reason to record (a failure's cause) and the
    /// deadline of the state it leads to, if that state waits.
    pub async fn fire_because(
        &self,
        id: &str,
        trigger: Trigger,
        reason: &str,
        deadline_ms: Option<i64>,
    ) -> Result<Option<MachineState>> {
        let mut tx = self.writer.begin().await?;
        let to = self.fire_in(&mut tx, id, trigger, reason, deadline_ms).await?;
        tx.commit().await?;
        Ok(to.map(|(_, to)| to))
    }

    /// Fails machine `id` because its waiting state's deadline passed,
    /// re-checked in the same guarded update: a machine that moved on, or
    /// whose deadline was set again, since [`Store::overdue`] listed it is
    /// left alone. Returns the state it left and the one it moved to, if it moved.
    pub async fn fire_deadline_passed(&self, id: &str, now: i64) -> Result<Option<(MachineState, MachineState)>> {
        let trigger = Trigger::DeadlinePassed;
        let mut tx = self.writer.begin().await?;
        let moved = self.fire_guarded(&mut tx, id, trigger, trigger.cause(), None, Some(now)).await?;
        tx.commit().await?;
        Ok(moved.filter(|(from, to)| from != to))
    }

    /// Returns `(from, to)`; `from == to` when the trigger did not apply.
    async fn fire_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        id: &str,
        trigger: Trigger,
        reason: &str,
        deadline_ms: Option<i64>,
    ) -> Result<Option<(MachineState, MachineState)>> {
        self.fire_guarded(tx, id, trigger, reason, deadline_ms, None).await
    }

    /// [`Store::fire_in`]; with `overdue_at`, only while the machine's
    /// deadline is still before it (else `(from, from)`, nothing written).
    async fn fire_guarded(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        id: &str,
        trigger: Trigger,
        reason: &str,
        deadline_ms: Option<i64>,
        overdue_at: Option<i64>,
    ) -> Result<Option<(MachineState, MachineState)>> {
        let Some(row) = sqlx::query("SELECT state, state_deadline_ms FROM machines WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?
        else {
            return Ok(None);
        };
        let from = MachineState::from_str(&row.try_get::<String, _>("state")?).map_err(StoreError::Corrupt)?;
        let read_deadline: Option<i64> = row.try_get("state_deadline_ms")?;
        if let Some(at) = overdue_at {
            if read_deadline.is_none_or(|d| d >= at) {
                return Ok(Some((from, from)));
            }
        }
        let now = self.now_ms();
        let Some(Transition { to, failed_phase }) = lifecycle::next(from, trigger) else {
            Self::event_in(
                &mut **tx,
                Some(id),
                now,
                "state.unchanged",
                serde_json::json!({ "state": from, "trigger": trigger.cause() }),
            )
            .await?;
            return Ok(Some((from, from)));
        };
        // Guard on the state we read so a concurrent transition is not lost
        // (and, for a deadline, on the deadline we read: one set again wins).
        let guard = if overdue_at.is_some() { " AND state_deadline_ms = $8" } else { "" };
        let sql = format!(
            "UPDATE machines SET state = $1, failed_phase = $2, failure_reason = $3, state_deadline_ms = $4, updated_at_ms = $5 \
             WHERE id = $6 AND state = $7{guard}"
        );
        let mut update = sqlx::query(&sql)
            .bind(to.as_str())
            .bind(failed_phase.map(|p| p.as_str().to_string()))
            .bind(failed_phase.map(|_| reason.to_string()))
            .bind(deadline_ms)
            .bind(now)
            .bind(id)
            .bind(from.as_str());
        if overdue_at.is_some() {
            update = update.bind(read_deadline);
        }
        let updated = update.execute(&mut **tx).await?;
        if updated.rows_affected() == 0 && overdue_at.is_some() {
            return Ok(Some((from, from)));
        }
        if updated.rows_affected() == 1 && from != to {
            Self::event_in(
                &mut **tx,
                Some(id),
                now,
                "state.changed",
                serde_json::json!({ "from": from, "to": to, "cause": reason }),
            )
            .await?;
        }
        Ok(Some((from, to)))
    }

    pub async fn set_inventory(&self, id: &str, inventory: &Inventory) -> Result<()> {
        let text = serde_json::to_string(inventory).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut tx = self.writer.begin().await?;
        // Hardware that changed since the last discovery boot is an event.
        let before: Option<String> = sqlx::query("SELECT inventory FROM machines WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get::<Option<String>, _>("inventory"))
            .transpose()?
            .flatten();
        if let Some(old) = before.and_then(|t| serde_json::from_str::<Inventory>(&t).ok()) {
            let changes = inventory::diff::diff_in_band(&old, inventory);
            if !changes.is_empty() {
                Self::event_in(
                    &mut *tx,
                    Some(id),
                    self.now_ms(),
                    "inventory.changed",
                    serde_json::json!({ "source": "in_band", "changes": changes }),
                )
                .await?;
            }
        }
        // Placeholders ("To Be Filled By O.E.M.") never link two machines.
        let (uuid, serial) = identity_keys(&inventory.system.uuid, &inventory.system.serial);
        sqlx::query(
            "UPDATE machines SET inventory = $1, updated_at_ms = $2, system_uuid = COALESCE($3, system_uuid), \
             serial = COALESCE($4, serial) WHERE id = $5",
        )
        .bind(text)
        .bind(self.now_ms())
        .bind(uuid.clone())
        .bind(serial.clone())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        // A BMC enrolled with the same system identity but not yet linked
        // (it reported no MAC we knew) belongs to this machine.
        let linked = sqlx::query(
            "UPDATE bmcs SET machine_id = $1 WHERE machine_id IS NULL AND \
             ((system_uuid IS NOT NULL AND system_uuid = $2) OR (serial IS NOT NULL AND serial = $3))",
        )
        .bind(id)
        .bind(uuid)
        .bind(serial)
        .execute(&mut *tx)
        .await?;
        if linked.rows_affected() > 0 {
            Self::event_in(
                &mut *tx,
                Some(id),
                self.now_ms(),
                "bmc.linked",
                serde_json::json!({ "by": "in-band identity" }),
            )
            .await?;
        }
        // Every NIC the agent saw identifies the machine from now on.
        for nic in &inventory.nics {
            sqlx::query("INSERT INTO machine_macs (mac, machine_id) VALUES ($1, $2) ON CONFLICT (mac) DO NOTHING")
                .bind(nic.mac.to_string())
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        Self::event_in(
            &mut *tx,
            Some(id),
            self.now_ms(),
            "inventory.received",
            serde_json::json!({
                "cpus": inventory.cpu.count, "memory_bytes": inventory.memory.total_bytes,
                "disks": inventory.disks.len(), "nics": inventory.nics.len(),
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Machines whose waiting state passed its deadline.
    pub async fn overdue(&self, now: i64) -> Result<Vec<String>> {
        let rows =
            sqlx::query("SELECT id FROM machines WHERE state_deadline_ms IS NOT NULL AND state_deadline_ms < $1")
                .bind(now)
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(|r| r.try_get("id").map_err(StoreError::from)).collect()
    }

    pub async fn events(&self, machine_id: Option<&str>, after: Option<&str>, limit: i64) -> Result<Vec<Event>> {
        let after = after.unwrap_or("").to_string();
        let rows = match machine_id {
            Some(id) => {
                sqlx::query("SELECT * FROM events WHERE machine_id = $1 AND id > $2 ORDER BY id LIMIT $3")
                    .bind(id.to_string())
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM events WHERE id > $1 ORDER BY id LIMIT $2")
                    .bind(after)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(feed::event_from_row).collect()
    }

    /// A fresh agent credential for `machine_id`, handed to `peer`; any
    /// earlier one stops working, so a token is good for the boot it was
    /// issued to.
    pub async fn issue_agent_token(&self, machine_id: &str, ttl_ms: i64, peer: Option<IpAddr>) -> Result<String> {
        let token = crate::random_token();
        let mut tx = self.writer.begin().await?;
        sqlx::query("DELETE FROM agent_tokens WHERE machine_id = $1").bind(machine_id).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO agent_tokens (token_sha256, machine_id, expires_at_ms, peer_ip) VALUES ($1, $2, $3, $4)",
        )
        .bind(sha256_hex(&token))
        .bind(machine_id)
        .bind(self.now_ms() + ttl_ms)
        .bind(peer.map(|ip| ip.to_string()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(token)
    }

    /// The machine a live agent token belongs to, and the address it was
    /// handed to.
    pub async fn agent_token_holder(&self, token: &str) -> Result<Option<AgentTokenHolder>> {
        let row =
            sqlx::query("SELECT machine_id, peer_ip FROM agent_tokens WHERE token_sha256 = $1 AND expires_at_ms > $2")
                .bind(sha256_hex(token))
                .bind(self.now_ms())
                .fetch_optional(&self.pool)
                .await?;
        let Some(row) = row else { return Ok(None) };
        let peer: Option<String> = row.try_get("peer_ip")?;
        let peer = peer.map(|p| p.parse().map_err(|_| StoreError::Corrupt(format!("agent token address {p:?}"))));
        Ok(Some(AgentTokenHolder { machine_id: row.try_get("machine_id")?, peer: peer.transpose()? }))
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// The system UUID and serial as identity keys: placeholder values that
/// many machines share are left out (`inventory::identity`).
pub(crate) fn identity_keys(uuid: &Option<String>, serial: &Option<String>) -> (Option<String>, Option<String>) {
    (inventory::identity::linkable_uuid(uuid.as_deref()), inventory::identity::linkable_serial(serial.as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    test_db::on_both_databases!(
        machine_lifecycle_is_recorded,
        dhcp_bindings_create_network_booting_machines_once,
        discovery_deadline_fails_the_machine,
        a_deadline_is_checked_again_before_it_fails_a_machine,
        two_reads_of_one_bmc_at_once_make_one_machine,
        agent_tokens_are_good_for_one_boot,
        placeholder_identities_never_link_two_machines,
    );

    /// Two white-box machines that both say "System Serial Number" and the
    /// AMI default UUID are two machines; a real serial still links.
    async fn placeholder_identities_never_link_two_machines(store: Store) {
        let inventory = |serial: &str, uuid: &str| -> Inventory {
            serde_json::from_value(serde_json::json!({
                "source": "in_band",
                "system": { "vendor": null, "product": null, "serial": serial, "uuid": uuid },
                "cpu": { "model": null, "count": 1 },
                "memory": { "total_bytes": 1 },
                "disks": [],
                "nics": []
            }))
            .unwrap()
        };
        let (first, _) = store.ensure_machine("52:54:00:00:00:21".parse().unwrap(), "dhcp", 60_000).await.unwrap();
        store
            .set_inventory(&first, &inventory("System Serial Number", "03000200-0400-0500-0006-000700080009"))
            .await
            .unwrap();
        let m = store.machine(&first).await.unwrap().unwrap();
        assert_eq!((m.serial, m.system_uuid), (None, None), "placeholders are not identity keys");

        let bmc_view = |serial: &str, uuid: &str| inventory::oob::BmcInventory {
            system: inventory::oob::BmcSystem {
                serial: Some(serial.into()),
                uuid: Some(uuid.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let (other, by) = store
            .link_bmc("bmc-a", &bmc_view("System Serial Number", "03000200-0400-0500-0006-000700080009"), 60_000)
            .await
            .unwrap();
        assert_eq!(by, crate::oob::LinkedBy::Created, "the BMC of another white box gets its own machine");
        assert_ne!(other, first);

        store.set_inventory(&first, &inventory("S211X0912AB", "00000000-0000-0000-0000-000000000000")).await.unwrap();
        let (linked, by) = store
            .link_bmc("bmc-b", &bmc_view(" S211X0912AB ", "ffffffff-ffff-ffff-ffff-ffffffffffff"), 60_000)
            .await
            .unwrap();
        assert_eq!((linked, by), (first, crate::oob::LinkedBy::Serial), "a real serial links");
    }

    async fn machine_lifecycle_is_recorded(store: Store) {
        let (id, created) = store.ensure_machine("52:54:00:00:00:01".parse().unwrap(), "dhcp", 60_000).await.unwrap();
        assert!(created);
        assert_eq!(
            store.ensure_machine("52:54:00:00:00:01".parse().unwrap(), "dhcp", 60_000).await.unwrap(),
            (id.clone(), false)
        );
        assert_eq!(store.fire(&id, Trigger::InventoryReceived).await.unwrap(), Some(MachineState::Ready));
        let m = store.machine(&id).await.unwrap().unwrap();
        assert_eq!(
            (m.state, m.macs.iter().map(ToString::to_string).collect::<Vec<_>>(), m.state_deadline.clone()),
            (MachineState::Ready, vec!["52:54:00:00:00:01".to_string()], None)
        );
        assert_eq!(store.count_by_state().await.unwrap().get(&MachineState::Ready), Some(&1));
        let kinds: Vec<String> =
            store.events(Some(&id), None, 100).await.unwrap().into_iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["machine.created", "state.changed"]);
    }

    async fn dhcp_bindings_create_network_booting_machines_once(store: Store) {
        let binding = |mac: &str, network_boot| DhcpBinding {
            mac: mac.parse().unwrap(),
            ip: Ipv4Addr::new(10, 0, 0, 9),
            network_boot,
            detail: serde_json::json!({}),
        };
        let pxe = binding("52:54:00:00:00:0a", true);
        let laptop = binding("52:54:00:00:00:0b", false);
        store.record_dhcp_bindings(&[pxe.clone(), laptop.clone(), pxe.clone()], 60_000).await.unwrap();
        let machines = store.machines().await.unwrap();
        assert_eq!(machines.len(), 1, "one machine for the PXE client, none for the laptop");
        let kinds: Vec<String> =
            store.events(Some(&machines[0].id), None, 10).await.unwrap().into_iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["machine.created", "dhcp.ack", "dhcp.ack"]);
    }

    async fn discovery_deadline_fails_the_machine(store: Store) {
        let (id, _) = store.ensure_machine("52:54:00:00:00:02".parse().unwrap(), "dhcp", 0).await.unwrap();
        let now = store.now_ms() + 1;
        assert_eq!(store.overdue(now).await.unwrap(), vec![id.clone()]);
        assert_eq!(
            store.fire_deadline_passed(&id, now).await.unwrap(),
            Some((MachineState::Discovering, MachineState::Failed))
        );
        let m = store.machine(&id).await.unwrap().unwrap();
        assert_eq!(m.state, MachineState::Failed);
        assert_eq!(m.failure.unwrap().phase, "discovering");
        assert!(store.overdue(store.now_ms() + 1).await.unwrap().is_empty());
    }

    /// The reaper lists overdue machines, then fails them one by one: one
    /// that moved on meanwhile, or whose deadline was set again (by another
    /// appliance), is left alone.
    async fn a_deadline_is_checked_again_before_it_fails_a_machine(store: Store) {
        let (moved, _) = store.ensure_machine("52:54:00:00:00:04".parse().unwrap(), "dhcp", 0).await.unwrap();
        let (renewed, _) = store.ensure_machine("52:54:00:00:00:05".parse().unwrap(), "dhcp", 0).await.unwrap();
        let now = store.now_ms() + 1;
        let mut listed = store.overdue(now).await.unwrap();
        listed.sort();
        let mut both = vec![moved.clone(), renewed.clone()];
        both.sort();
        assert_eq!(listed, both);
        store.fire(&moved, Trigger::InventoryReceived).await.unwrap();
        sqlx::query("UPDATE machines SET state_deadline_ms = $1 WHERE id = $2")
            .bind(now + 60_000)
            .bind(&renewed)
            .execute(&store.writer)
            .await
            .unwrap();
        for id in [&moved, &renewed] {
            assert_eq!(store.fire_deadline_passed(id, now).await.unwrap(), None, "{id}");
        }
        assert_eq!(store.machine(&moved).await.unwrap().unwrap().state, MachineState::Ready);
        assert_eq!(store.machine(&renewed).await.unwrap().unwrap().state, MachineState::Discovering);
    }

    /// An enrolment's read and the leader's poller (or two appliances on
    /// PostgreSQL) link the same BMC at the same moment: one machine, both
    /// answers name it. A DHCP-created machine holding the BMC's MAC is
    /// linked, not duplicated, however the two interleave.
    async fn two_reads_of_one_bmc_at_once_make_one_machine(store: Store) {
        for round in 0..20u8 {
            let new = crate::oob::NewBmc {
                address: format!("https://10.92.0.{round}"),
                protocol: inventory::oob::BmcProtocol::Redfish,
                username: "admin".into(),
                password_sealed: "sealed".into(),
                tls: inventory::oob::TlsTrust::Insecure,
            };
            let bmc = store.insert_bmc(&new).await.unwrap();
            let mac: MacAddr = format!("02:5f:00:00:00:{round:02x}").parse().unwrap();
            let view = inventory::oob::BmcInventory {
                nics: vec![inventory::oob::BmcNic { name: "eth0".into(), mac: Some(mac), ..Default::default() }],
                ..Default::default()
            };
            let (a, b, dhcp) = tokio::join!(
                store.link_bmc(&bmc.id, &view, 60_000),
                store.link_bmc(&bmc.id, &view, 60_000),
                store.ensure_machine(mac, "dhcp", 60_000),
            );
            let (a, b, (dhcp, _)) = (a.unwrap().0, b.unwrap().0, dhcp.unwrap());
            assert_eq!((&a, &b), (&dhcp, &dhcp), "round {round}");
        }
        assert_eq!(store.machines().await.unwrap().len(), 20);
    }

    async fn agent_tokens_are_good_for_one_boot(store: Store) {
        let (id, _) = store.ensure_machine("52:54:00:00:00:03".parse().unwrap(), "dhcp", 60_000).await.unwrap();
        let peer: IpAddr = "10.77.0.50".parse().unwrap();
        let first = store.issue_agent_token(&id, 60_000, Some(peer)).await.unwrap();
        let holder = AgentTokenHolder { machine_id: id.clone(), peer: Some(peer) };
        assert_eq!(store.agent_token_holder(&first).await.unwrap(), Some(holder.clone()));
        let second = store.issue_agent_token(&id, 60_000, Some(peer)).await.unwrap();
        assert_eq!(store.agent_token_holder(&first).await.unwrap(), None, "the next boot's token replaces it");
        assert_eq!(store.agent_token_holder(&second).await.unwrap(), Some(holder));
    }
}
