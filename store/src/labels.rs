//! Machine labels and rack, conditional edits (`If-Match` on the machine's
//! ETag) and the filtered, paged machine list.
//!
//! Labels are rows of `machine_labels`, so a `label=k=v` filter is an
//! indexed `EXISTS` on both databases. Validating names and values is the
//! route's job; this module only stores what it is given.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{Machine, Result, Store, StoreError};
use model::lifecycle::MachineState;

/// The most labels one machine may carry.
pub const MAX_LABELS: usize = 64;

/// A JSON merge of labels and rack: a `None` label value deletes the key;
/// `rack: Some(None)` clears the rack, `None` leaves it.
#[derive(Debug, Clone, Default)]
pub struct MachinePatch {
    pub labels: BTreeMap<String, Option<String>>,
    pub rack: Option<Option<String>>,
}

/// What `GET /machines` asks for. Every filter must match.
#[derive(Debug, Clone, Default)]
pub struct MachineFilter {
    pub state: Option<MachineState>,
    pub labels: Vec<(String, String)>,
    pub rack: Option<String>,
    pub mac: Option<inventory::MacAddr>,
    /// Machines after this one, in list order (creation time, then id).
    pub after: Option<String>,
    pub limit: i64,
}

/// How a conditional edit went.
#[derive(Debug)]
pub enum PatchOutcome {
    Done(Box<Machine>),
    NotFound,
    /// `If-Match` named another version; carries the current machine.
    Stale(Box<Machine>),
}

/// The ETag of `machine`: a digest of its document and edit counter.
pub fn etag_of(machine: &Machine) -> String {
    let mut hasher = Sha256::new();
    hasher.update(machine.version.to_be_bytes());
    hasher.update(serde_json::to_vec(machine).unwrap_or_default());
    hex::encode(&hasher.finalize()[..12])
}

/// Whether an `If-Match` header value names `etag` (`*` matches any).
pub fn if_match_names(header: &str, etag: &str) -> bool {
    header.split(',').map(|t| t.trim().trim_start_matches("W/").trim_matches('"')).any(|t| t == "*" || t == etag)
}

enum Bind {
    Text(String),
    Int(i64),
}

impl Store {
    /// Applies `patch` to machine `id`; with `if_match`, only if the
    /// machine's ETag is still one it names. The edit and its
    /// `machine.edited` event are one transaction, guarded on the version
    /// read, so two concurrent conditional edits cannot both succeed.
    pub async fn patch_machine(&self, id: &str, patch: &MachinePatch, if_match: Option<&str>) -> Result<PatchOutcome> {
        let Some(current) = self.machine(id).await? else { return Ok(PatchOutcome::NotFound) };
        if if_match.is_some_and(|h| !if_match_names(h, &current.etag)) {
            return Ok(PatchOutcome::Stale(Box::new(current)));
        }
        let mut tx = self.writer.begin().await?;
        let now = self.now_ms().max(current.updated_at_ms + 1);
        // Every parameter is always bound (PostgreSQL wants each typed).
        let query = sqlx::query(
            "UPDATE machines SET version = version + 1, updated_at_ms = $1, \
             rack = CASE WHEN $2 = 1 THEN $3 ELSE rack END \
             WHERE id = $4 AND ($5 = 0 OR (version = $6 AND updated_at_ms = $7))",
        )
        .bind(now)
        .bind(i64::from(patch.rack.is_some()))
        .bind(patch.rack.clone().flatten())
        .bind(id)
        .bind(i64::from(if_match.is_some()))
        .bind(current.version)
        .bind(current.updated_at_ms);
        if query.execute(&mut *tx).await?.rows_affected() == 0 {
            drop(tx);
            return Ok(match self.machine(id).await? {
                Some(m) => PatchOutcome::Stale(Box::new(m)),
                None => PatchOutcome::NotFound,
            });
        }
        for (name, value) in &patch.labels {
            sqlx::query("DELETE FROM machine_labels WHERE machine_id = $1 AND name = $2")
                .bind(id)
                .bind(name)
                .execute(&mut *tx)
                .await?;
            if let Some(value) = value {
                sqlx::query("INSERT INTO machine_labels (machine_id, name, value) VALUES ($1, $2, $3)")
                    .bind(id)
                    .bind(name)
                    .bind(value)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM machine_labels WHERE machine_id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if count as usize > MAX_LABELS {
            return Err(StoreError::Conflict(format!("a machine carries at most {MAX_LABELS} labels")));
        }
        let detail = serde_json::json!({ "labels": patch.labels, "rack": patch.rack });
        Self::event_in(&mut *tx, Some(id), now, "machine.edited", detail).await?;
        tx.commit().await?;
        let machine = self.machine(id).await?.ok_or_else(|| StoreError::Corrupt(format!("machine {id} vanished")))?;
        Ok(PatchOutcome::Done(Box::new(machine)))
    }

    /// One page of machines matching `filter`, in creation order, and the
    /// id to ask for the next page after (`None`: this was the last).
    /// `Ok(None)`: `filter.after` names no machine.
    pub async fn machines_page(&self, filter: &MachineFilter) -> Result<Option<(Vec<Machine>, Option<String>)>> {
        let mut sql = "SELECT m.* FROM machines m WHERE 1 = 1".to_string();
        let mut binds = Vec::new();
        let param = |binds: &mut Vec<Bind>, b: Bind| {
            binds.push(b);
            format!("${}", binds.len())
        };
        if let Some(state) = filter.state {
            let p = param(&mut binds, Bind::Text(state.as_str().into()));
            sql.push_str(&format!(" AND m.state = {p}"));
        }
        if let Some(rack) = &filter.rack {
            let p = param(&mut binds, Bind::Text(rack.clone()));
            sql.push_str(&format!(" AND m.rack = {p}"));
        }
        if let Some(mac) = &filter.mac {
            let p = param(&mut binds, Bind::Text(mac.to_string()));
            sql.push_str(&format!(" AND m.id IN (SELECT machine_id FROM machine_macs WHERE mac = {p})"));
        }
        for (name, value) in &filter.labels {
            let n = param(&mut binds, Bind::Text(name.clone()));
            let v = param(&mut binds, Bind::Text(value.clone()));
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM machine_labels l WHERE l.machine_id = m.id AND l.name = {n} AND l.value = {v})"
            ));
        }
        if let Some(after) = &filter.after {
            let row = sqlx::query("SELECT created_at_ms FROM machines WHERE id = $1")
                .bind(after)
                .fetch_optional(&self.pool)
                .await?;
            let Some(row) = row else { return Ok(None) };
            let at = param(&mut binds, Bind::Int(row.try_get("created_at_ms")?));
            let id = param(&mut binds, Bind::Text(after.clone()));
            sql.push_str(&format!(" AND (m.created_at_ms > {at} OR (m.created_at_ms = {at} AND m.id > {id}))"));
        }
        let limit = param(&mut binds, Bind::Int(filter.limit + 1));
        sql.push_str(&format!(" ORDER BY m.created_at_ms, m.id LIMIT {limit}"));
        let mut query = sqlx::query(&sql);
        for b in binds {
            query = match b {
                Bind::Text(t) => query.bind(t),
                Bind::Int(i) => query.bind(i),
            };
        }
        let rows = query.fetch_all(&self.pool).await?;
        let shown = rows.len().min(filter.limit as usize);
        let machines = self.machines_from_rows(&rows[..shown]).await?;
        let next = (rows.len() as i64 > filter.limit).then(|| machines.last().map(|m| m.id.clone())).flatten();
        Ok(Some((machines, next)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_db;

    test_db::on_both_databases!(labels_filter_and_page, conditional_edits_refuse_stale_etags);

    fn labels(pairs: &[(&str, Option<&str>)]) -> MachinePatch {
        MachinePatch { labels: pairs.iter().map(|(k, v)| (k.to_string(), v.map(str::to_string))).collect(), rack: None }
    }

    async fn labels_filter_and_page(store: Store) {
        let mut ids = Vec::new();
        for i in 0..5 {
            let (id, _) =
                store.ensure_machine(format!("52:54:00:00:01:0{i}").parse().unwrap(), "test", 60_000).await.unwrap();
            let mut patch = labels(&[("role", Some(if i % 2 == 0 { "gpu" } else { "cpu" }))]);
            patch.rack = Some(Some(format!("r{}", i % 2)));
            assert!(matches!(store.patch_machine(&id, &patch, None).await.unwrap(), PatchOutcome::Done(_)));
            ids.push(id);
        }
        let page = |f: MachineFilter| {
            let store = store.clone();
            async move { store.machines_page(&f).await.unwrap().unwrap() }
        };
        let gpu = MachineFilter { labels: vec![("role".into(), "gpu".into())], limit: 10, ..Default::default() };
        let (found, next) = page(gpu.clone()).await;
        assert_eq!(
            found.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
            [&ids[0], &ids[2], &ids[4]].map(|s| s.clone())
        );
        assert_eq!(next, None);
        let (first, next) = page(MachineFilter { limit: 2, ..gpu.clone() }).await;
        assert_eq!((first.len(), next.as_deref()), (2, Some(ids[2].as_str())));
        let (rest, next) = page(MachineFilter { limit: 2, after: next, ..gpu.clone() }).await;
        assert_eq!((rest.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), next), (vec![ids[4].as_str()], None));
        let rack1 = MachineFilter {
            rack: Some("r1".into()),
            state: Some(MachineState::Discovering),
            limit: 10,
            ..Default::default()
        };
        assert_eq!(page(rack1).await.0.len(), 2);
        let by_mac = MachineFilter { mac: Some("52:54:00:00:01:03".parse().unwrap()), limit: 10, ..Default::default() };
        assert_eq!(page(by_mac).await.0[0].id, ids[3]);
        let ready = MachineFilter { state: Some(MachineState::Ready), limit: 10, ..Default::default() };
        assert!(page(ready).await.0.is_empty());
        let unknown = MachineFilter { after: Some("nope".into()), limit: 10, ..Default::default() };
        assert!(store.machines_page(&unknown).await.unwrap().is_none());
        // null deletes a label
        store.patch_machine(&ids[0], &labels(&[("role", None)]), None).await.unwrap();
        assert!(store.machine(&ids[0]).await.unwrap().unwrap().labels.is_empty());
    }

    async fn conditional_edits_refuse_stale_etags(store: Store) {
        let (id, _) = store.ensure_machine("52:54:00:00:02:01".parse().unwrap(), "test", 60_000).await.unwrap();
        let before = store.machine(&id).await.unwrap().unwrap();
        let patch = labels(&[("team", Some("a"))]);
        let PatchOutcome::Done(after) =
            store.patch_machine(&id, &patch, Some(&format!("\"{}\"", before.etag))).await.unwrap()
        else {
            panic!("a current ETag edits");
        };
        assert_ne!(after.etag, before.etag);
        assert_eq!(after.labels.get("team").map(String::as_str), Some("a"));
        let stale = store.patch_machine(&id, &labels(&[("team", Some("b"))]), Some(&before.etag)).await.unwrap();
        assert!(matches!(stale, PatchOutcome::Stale(m) if m.etag == after.etag));
        assert!(matches!(store.patch_machine("nope", &patch, None).await.unwrap(), PatchOutcome::NotFound));
        let too_many = MachinePatch {
            labels: (0..=MAX_LABELS).map(|i| (format!("k{i}"), Some("v".to_string()))).collect(),
            rack: None,
        };
        assert!(matches!(store.patch_machine(&id, &too_many, None).await, Err(StoreError::Conflict(_))));
        assert_eq!(store.machine(&id).await.unwrap().unwrap().labels.len(), 1, "a refused edit changes nothing");
    }
}
