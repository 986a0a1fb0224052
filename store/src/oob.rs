//! BMCs and UPSes: their enrolment (passwords sealed by the caller), what
//! they last said, and the events their changes raise. Linking a BMC to its
//! machine happens here too, in one transaction with the machine it finds
//! or creates.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use super::{parse_col, rfc3339, Result, Store, StoreError};
use inventory::oob::{BmcInventory, BmcProtocol, PowerState, TlsTrust, UpsProtocol, UpsState, UpsStatus};

/// A BMC as the API shows it. The sealed password stays in the store.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Bmc {
    pub id: String,
    pub address: String,
    pub protocol: BmcProtocol,
    pub username: String,
    pub tls: TlsTrust,
    pub machine_id: Option<String>,
    pub system_uuid: Option<String>,
    pub serial: Option<String>,
    pub power_state: Option<PowerState>,
    /// `ok`, or `error` with `last_error` saying why.
    #[schema(value_type = String)]
    pub status: &'static str,
    pub last_error: Option<String>,
    pub last_error_kind: Option<String>,
    pub last_ok: Option<String>,
    pub inventory: Option<BmcInventory>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip)]
    pub password_sealed: String,
}

/// What enrolment stores.
#[derive(Debug, Clone)]
pub struct NewBmc {
    pub address: String,
    pub protocol: BmcProtocol,
    pub username: String,
    pub password_sealed: String,
    pub tls: TlsTrust,
}

/// A UPS as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Ups {
    pub name: String,
    pub protocol: UpsProtocol,
    pub address: String,
    /// NUT's UPS name, the SNMP community or the Redfish resource; the
    /// SNMP community is a secret and not shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub username: Option<String>,
    pub tls: TlsTrust,
    pub feeds: UpsFeeds,
    pub state: Option<UpsState>,
    /// `ok`, or `error` with `last_error` saying why.
    #[schema(value_type = String)]
    pub status: &'static str,
    pub last_error: Option<String>,
    pub last_ok: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip)]
    pub target_raw: String,
    #[serde(skip)]
    pub password_sealed: Option<String>,
}

/// Which racks and machines a UPS feeds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpsFeeds {
    #[serde(default)]
    pub racks: Vec<String>,
    #[serde(default)]
    pub machines: Vec<String>,
}

fn json_col<T: serde::de::DeserializeOwned>(r: &AnyRow, col: &str) -> Result<Option<T>> {
    r.try_get::<Option<String>, _>(col)?
        .map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("{col}: {e}"))))
        .transpose()
}

fn to_json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn bmc_from_row(r: &AnyRow) -> Result<Bmc> {
    let last_error: Option<String> = r.try_get("last_error")?;
    Ok(Bmc {
        id: r.try_get("id")?,
        address: r.try_get("address")?,
        protocol: parse_col(r, "protocol")?,
        username: r.try_get("username")?,
        tls: json_col(r, "tls")?.unwrap_or_default(),
        machine_id: r.try_get("machine_id")?,
        system_uuid: r.try_get("system_uuid")?,
        serial: r.try_get("serial")?,
        power_state: r
            .try_get::<Option<String>, _>("power_state")?
            .map(|p| serde_json::from_value(serde_json::Value::String(p)).unwrap_or(PowerState::Unknown)),
        status: if last_error.is_some() { "error" } else { "ok" },
        last_error,
        last_error_kind: r.try_get("last_error_kind")?,
        last_ok: r.try_get::<Option<i64>, _>("last_ok_ms")?.map(rfc3339),
        inventory: json_col(r, "inventory")?,
        created_at: rfc3339(r.try_get("created_at_ms")?),
        updated_at: rfc3339(r.try_get("updated_at_ms")?),
        password_sealed: r.try_get("password_sealed")?,
    })
}

fn ups_from_row(r: &AnyRow) -> Result<Ups> {
    let protocol: UpsProtocol = parse_col(r, "protocol")?;
    let target: String = r.try_get("target")?;
    let last_error: Option<String> = r.try_get("last_error")?;
    Ok(Ups {
        name: r.try_get("name")?,
        target: (protocol != UpsProtocol::Snmp).then(|| target.clone()),
        protocol,
        address: r.try_get("address")?,
        username: r.try_get("username")?,
        tls: json_col(r, "tls")?.unwrap_or_default(),
        feeds: json_col(r, "feeds")?.unwrap_or_default(),
        state: json_col(r, "state")?,
        status: if last_error.is_some() { "error" } else { "ok" },
        last_error,
        last_ok: r.try_get::<Option<i64>, _>("last_ok_ms")?.map(rfc3339),
        created_at: rfc3339(r.try_get("created_at_ms")?),
        updated_at: rfc3339(r.try_get("updated_at_ms")?),
        target_raw: target,
        password_sealed: r.try_get("password_sealed")?,
    })
}

fn power_text(p: PowerState) -> String {
    serde_json::to_value(p).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// How a BMC was matched to its machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkedBy {
    Mac,
    SystemUuid,
    Serial,
    /// No machine had any of its identities: one was created.
    Created,
}

impl Store {
    pub async fn insert_bmc(&self, new: &NewBmc) -> Result<Bmc> {
        let id = Uuid::new_v4().to_string();
        let now = self.now_ms();
        let inserted = sqlx::query(
            "INSERT INTO bmcs (id, address, protocol, username, password_sealed, tls, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (address) DO NOTHING",
        )
        .bind(&id)
        .bind(&new.address)
        .bind(new.protocol.as_str())
        .bind(&new.username)
        .bind(&new.password_sealed)
        .bind(to_json(&new.tls)?)
        .bind(now)
        .execute(&self.writer)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("a BMC at {} is already enrolled", new.address)));
        }
        Self::event_in(
            &self.writer,
            None,
            now,
            "bmc.enrolled",
            serde_json::json!({ "bmc": id, "address": new.address, "protocol": new.protocol }),
        )
        .await?;
        self.bmc(&id).await?.ok_or_else(|| StoreError::Corrupt(format!("bmc {id} vanished")))
    }

    pub async fn bmc(&self, id: &str) -> Result<Option<Bmc>> {
        let row = sqlx::query("SELECT * FROM bmcs WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(bmc_from_row).transpose()
    }

    pub async fn bmcs(&self) -> Result<Vec<Bmc>> {
        let rows = sqlx::query("SELECT * FROM bmcs ORDER BY created_at_ms, id").fetch_all(&self.pool).await?;
        rows.iter().map(bmc_from_row).collect()
    }

    pub async fn bmc_for_machine(&self, machine_id: &str) -> Result<Option<Bmc>> {
        let row = sqlx::query("SELECT * FROM bmcs WHERE machine_id = $1 ORDER BY created_at_ms LIMIT 1")
            .bind(machine_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(bmc_from_row).transpose()
    }

    pub async fn delete_bmc(&self, id: &str) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("DELETE FROM bmc_inventory_history WHERE bmc_id = $1").bind(id).execute(&mut *tx).await?;
        let gone = sqlx::query("DELETE FROM bmcs WHERE id = $1").bind(id).execute(&mut *tx).await?.rows_affected();
        if gone == 1 {
            Self::event_in(&mut *tx, None, self.now_ms(), "bmc.removed", serde_json::json!({ "bmc": id })).await?;
        }
        tx.commit().await?;
        Ok(gone == 1)
    }

    /// A successful read: the power state, and the inventory when one was
    /// read. Raises `power.changed`, `bmc.recovered` and, with the
    /// differences `diff` finds, `inventory.changed` (also kept in the
    /// history). Returns the changes.
    pub async fn record_bmc_ok(
        &self,
        id: &str,
        power: Option<PowerState>,
        inventory: Option<&BmcInventory>,
        diff: impl Fn(&BmcInventory, &BmcInventory) -> Vec<serde_json::Value>,
    ) -> Result<Vec<serde_json::Value>> {
        let mut tx = self.writer.begin().await?;
        let Some(before) = sqlx::query("SELECT * FROM bmcs WHERE id = $1").bind(id).fetch_optional(&mut *tx).await?
        else {
            return Ok(vec![]);
        };
        let before = bmc_from_row(&before)?;
        let now = self.now_ms();
        let machine = before.machine_id.as_deref();
        let mut changes = vec![];
        if before.last_error.is_some() {
            Self::event_in(&mut *tx, machine, now, "bmc.recovered", serde_json::json!({ "bmc": id })).await?;
        }
        if let Some(p) = power.filter(|p| Some(*p) != before.power_state) {
            Self::event_in(
                &mut *tx,
                machine,
                now,
                "power.changed",
                serde_json::json!({ "bmc": id, "from": before.power_state, "to": p }),
            )
            .await?;
        }
        if let Some(inv) = inventory {
            let old = before.inventory.as_ref();
            changes = old.map(|o| diff(o, inv)).unwrap_or_default();
            if old.is_none() || !changes.is_empty() {
                sqlx::query("INSERT INTO bmc_inventory_history (id, bmc_id, at_ms, inventory) VALUES ($1, $2, $3, $4)")
                    .bind(Uuid::now_v7().to_string())
                    .bind(id)
                    .bind(now)
                    .bind(to_json(inv)?)
                    .execute(&mut *tx)
                    .await?;
            }
            if !changes.is_empty() {
                Self::event_in(
                    &mut *tx,
                    machine,
                    now,
                    "inventory.changed",
                    serde_json::json!({ "bmc": id, "source": "bmc", "changes": changes }),
                )
                .await?;
            }
            let keys = crate::identity_keys(&inv.system.uuid, &inv.system.serial);
            sqlx::query(
                "UPDATE bmcs SET inventory = $1, system_uuid = COALESCE($2, system_uuid), serial = COALESCE($3, serial) \
                 WHERE id = $4",
            )
            .bind(to_json(inv)?)
            .bind(keys.0.clone())
            .bind(keys.1.clone())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE bmcs SET power_state = COALESCE($1, power_state), last_error = NULL, last_error_kind = NULL, \
             last_ok_ms = $2, updated_at_ms = $2 WHERE id = $3",
        )
        .bind(power.map(power_text))
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(changes)
    }

    /// A failed read or action. The first failure (or a different one) is an
    /// event; repeats of the same failure only update the record.
    pub async fn record_bmc_error(&self, id: &str, kind: &str, message: &str) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        let row = sqlx::query("SELECT machine_id, last_error FROM bmcs WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else { return Ok(()) };
        let machine: Option<String> = row.try_get("machine_id")?;
        let last: Option<String> = row.try_get("last_error")?;
        let now = self.now_ms();
        if last.as_deref() != Some(message) {
            Self::event_in(
                &mut *tx,
                machine.as_deref(),
                now,
                "bmc.error",
                serde_json::json!({ "bmc": id, "kind": kind, "error": message }),
            )
            .await?;
        }
        sqlx::query("UPDATE bmcs SET last_error = $1, last_error_kind = $2, updated_at_ms = $3 WHERE id = $4")
            .bind(message)
            .bind(kind)
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Finds the BMC's machine by any NIC MAC, its system UUID or serial,
    /// in that order, or creates it (`discovering`, with the discovery
    /// deadline): a BMC enrolled before its host ever booted makes the
    /// machine. The BMC's MACs and identity are added to the machine.
    pub async fn link_bmc(
        &self,
        bmc_id: &str,
        inv: &BmcInventory,
        discovery_deadline_ms: i64,
    ) -> Result<(String, LinkedBy)> {
        // Two reads of one BMC (its enrolment's and its poller's, or two
        // appliances') race to create its machine on PostgreSQL: the BMC's
        // row is locked first, and a creation that finds one of its MACs
        // taken meanwhile (by a DHCP-created machine) starts over and links.
        for _ in 0..3 {
            if let Some(linked) = self.link_bmc_once(bmc_id, inv, discovery_deadline_ms).await? {
                return Ok(linked);
            }
        }
        Err(StoreError::Conflict(format!("BMC {bmc_id}: its machine kept changing while it was linked")))
    }

    /// One try of [`Store::link_bmc`]; None when another transaction took
    /// one of the MACs of the machine this one was creating.
    async fn link_bmc_once(
        &self,
        bmc_id: &str,
        inv: &BmcInventory,
        discovery_deadline_ms: i64,
    ) -> Result<Option<(String, LinkedBy)>> {
        let mut tx = self.writer.begin().await?;
        // A row lock on PostgreSQL (SQLite has one writer anyway).
        sqlx::query("UPDATE bmcs SET updated_at_ms = updated_at_ms WHERE id = $1")
            .bind(bmc_id)
            .execute(&mut *tx)
            .await?;
        let macs: Vec<String> = inv.nics.iter().filter_map(|n| n.mac.map(|m| m.to_string())).collect();
        let mut found = None;
        for mac in &macs {
            let row = sqlx::query("SELECT machine_id FROM machine_macs WHERE mac = $1")
                .bind(mac)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(r) = row {
                found = Some((r.try_get::<String, _>("machine_id")?, LinkedBy::Mac));
                break;
            }
        }
        // Placeholders ("To Be Filled By O.E.M.") never link two machines.
        let (uuid, serial) = crate::identity_keys(&inv.system.uuid, &inv.system.serial);
        for (column, value, by) in [("system_uuid", &uuid, LinkedBy::SystemUuid), ("serial", &serial, LinkedBy::Serial)]
        {
            let (None, Some(value)) = (&found, value) else { continue };
            let row =
                sqlx::query(&format!("SELECT id FROM machines WHERE {column} = $1 ORDER BY created_at_ms LIMIT 1"))
                    .bind(value)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some(r) = row {
                found = Some((r.try_get::<String, _>("id")?, by));
            }
        }
        let now = self.now_ms();
        let (machine_id, by) = match found {
            Some(found) => found,
            None => {
                let id = Uuid::new_v4().to_string();
                sqlx::query(
                    "INSERT INTO machines (id, state, state_deadline_ms, created_at_ms, updated_at_ms) \
                     VALUES ($1, 'discovering', $2, $3, $3)",
                )
                .bind(&id)
                .bind(discovery_deadline_ms)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                Self::event_in(
                    &mut *tx,
                    Some(&id),
                    now,
                    "machine.created",
                    serde_json::json!({ "cause": "BMC enrolled", "bmc": bmc_id, "state": "discovering" }),
                )
                .await?;
                (id, LinkedBy::Created)
            }
        };
        for mac in &macs {
            let inserted =
                sqlx::query("INSERT INTO machine_macs (mac, machine_id) VALUES ($1, $2) ON CONFLICT (mac) DO NOTHING")
                    .bind(mac)
                    .bind(&machine_id)
                    .execute(&mut *tx)
                    .await?;
            if by == LinkedBy::Created && inserted.rows_affected() == 0 {
                tx.rollback().await?;
                return Ok(None);
            }
        }
        sqlx::query(
            "UPDATE machines SET system_uuid = COALESCE(system_uuid, $1), serial = COALESCE(serial, $2) WHERE id = $3",
        )
        .bind(uuid)
        .bind(serial)
        .bind(&machine_id)
        .execute(&mut *tx)
        .await?;
        let previous: Option<String> = sqlx::query("SELECT machine_id FROM bmcs WHERE id = $1")
            .bind(bmc_id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get("machine_id"))
            .transpose()?
            .flatten();
        if previous.as_deref() != Some(machine_id.as_str()) {
            sqlx::query("UPDATE bmcs SET machine_id = $1, updated_at_ms = $2 WHERE id = $3")
                .bind(&machine_id)
                .bind(now)
                .bind(bmc_id)
                .execute(&mut *tx)
                .await?;
            Self::event_in(
                &mut *tx,
                Some(&machine_id),
                now,
                "bmc.linked",
                serde_json::json!({ "bmc": bmc_id, "by": by }),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Some((machine_id, by)))
    }

    pub async fn insert_ups(&self, ups: &Ups) -> Result<()> {
        let now = self.now_ms();
        let inserted = sqlx::query(
            "INSERT INTO ups (name, protocol, address, target, username, password_sealed, tls, feeds, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&ups.name)
        .bind(ups.protocol.as_str())
        .bind(&ups.address)
        .bind(&ups.target_raw)
        .bind(ups.username.clone())
        .bind(ups.password_sealed.clone())
        .bind(to_json(&ups.tls)?)
        .bind(to_json(&ups.feeds)?)
        .bind(now)
        .execute(&self.writer)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("a UPS named {} is already enrolled", ups.name)));
        }
        Self::event_in(
            &self.writer,
            None,
            now,
            "ups.enrolled",
            serde_json::json!({ "ups": ups.name, "protocol": ups.protocol, "address": ups.address }),
        )
        .await
    }

    pub async fn ups(&self, name: &str) -> Result<Option<Ups>> {
        let row = sqlx::query("SELECT * FROM ups WHERE name = $1").bind(name).fetch_optional(&self.pool).await?;
        row.as_ref().map(ups_from_row).transpose()
    }

    pub async fn ups_list(&self) -> Result<Vec<Ups>> {
        let rows = sqlx::query("SELECT * FROM ups ORDER BY name").fetch_all(&self.pool).await?;
        rows.iter().map(ups_from_row).collect()
    }

    pub async fn delete_ups(&self, name: &str) -> Result<bool> {
        let gone = sqlx::query("DELETE FROM ups WHERE name = $1").bind(name).execute(&self.writer).await?;
        if gone.rows_affected() == 1 {
            self.record_event(None, "ups.removed", serde_json::json!({ "ups": name })).await?;
        }
        Ok(gone.rows_affected() == 1)
    }

    /// A successful read; a change of status (online, on battery, low) is
    /// an event.
    pub async fn record_ups_ok(&self, name: &str, state: &UpsState) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        let Some(row) = sqlx::query("SELECT * FROM ups WHERE name = $1").bind(name).fetch_optional(&mut *tx).await?
        else {
            return Ok(());
        };
        let before = ups_from_row(&row)?;
        let was = before.state.as_ref().map_or(UpsStatus::Unknown, |s| s.status);
        let now = self.now_ms();
        if was != state.status {
            Self::event_in(
                &mut *tx,
                None,
                now,
                "ups.status_changed",
                serde_json::json!({ "ups": name, "from": was, "to": state.status, "flags": state.flags,
                                    "charge_percent": state.charge_percent }),
            )
            .await?;
        }
        if before.last_error.is_some() {
            Self::event_in(&mut *tx, None, now, "ups.recovered", serde_json::json!({ "ups": name })).await?;
        }
        sqlx::query(
            "UPDATE ups SET state = $1, last_error = NULL, last_ok_ms = $2, updated_at_ms = $2 WHERE name = $3",
        )
        .bind(to_json(state)?)
        .bind(now)
        .bind(name)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn record_ups_error(&self, name: &str, message: &str) -> Result<()> {
        let Some(before) = self.ups(name).await? else { return Ok(()) };
        if before.last_error.as_deref() != Some(message) {
            self.record_event(None, "ups.error", serde_json::json!({ "ups": name, "error": message })).await?;
        }
        sqlx::query("UPDATE ups SET last_error = $1, updated_at_ms = $2 WHERE name = $3")
            .bind(message)
            .bind(self.now_ms())
            .bind(name)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// The names of the machines a UPS feeds: listed ones and those in its
    /// racks.
    pub async fn machines_fed_by(&self, feeds: &UpsFeeds) -> Result<Vec<String>> {
        let mut ids = feeds.machines.clone();
        for rack in &feeds.racks {
            let rows = sqlx::query("SELECT id FROM machines WHERE rack = $1").bind(rack).fetch_all(&self.pool).await?;
            for r in rows {
                ids.push(r.try_get("id")?);
            }
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    pub async fn set_rack(&self, machine_id: &str, rack: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE machines SET rack = $1, updated_at_ms = $2 WHERE id = $3")
            .bind(rack.map(str::to_string))
            .bind(self.now_ms())
            .bind(machine_id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }
}
