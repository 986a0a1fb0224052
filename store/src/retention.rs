//! Deleting events and audit entries past their retention, in bounded
//! batches so a large backlog never holds the writer for long.

use super::{Result, Store};

/// Rows deleted per statement.
const BATCH: i64 = 5_000;

impl Store {
    /// Deletes events older than `events_before_ms` and audit entries
    /// older than `audit_before_ms`; returns how many of each went.
    pub async fn prune(&self, events_before_ms: i64, audit_before_ms: i64) -> Result<(u64, u64)> {
        let events = self.prune_table("events", events_before_ms).await?;
        let audit = self.prune_table("audit", audit_before_ms).await?;
        Ok((events, audit))
    }

    async fn prune_table(&self, table: &'static str, before_ms: i64) -> Result<u64> {
        // `table` is one of two names above, never input.
        let sql = format!(
            "DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE at_ms < $1 ORDER BY at_ms LIMIT $2)"
        );
        let mut deleted = 0;
        loop {
            let done = sqlx::query(&sql).bind(before_ms).bind(BATCH).execute(&self.writer).await?.rows_affected();
            deleted += done;
            if done < BATCH as u64 {
                return Ok(deleted);
            }
            // Let the DHCP bookkeeping and agents' writes in between batches.
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::test_db;
    use crate::tokens::AuditEntry;
    use crate::Store;
    use std::time::Duration;

    test_db::on_both_databases!(old_events_and_audit_entries_go_and_recent_ones_stay);

    async fn old_events_and_audit_entries_go_and_recent_ones_stay(store: Store) {
        let audit = |path: &str| AuditEntry {
            id: String::new(),
            at: String::new(),
            at_ms: store.now_ms(),
            token_id: None,
            token_name: "anonymous".into(),
            role: None,
            method: "POST".into(),
            route: None,
            path: path.into(),
            target: None,
            status: 401,
        };
        store.record_event(None, "old.event", serde_json::json!({})).await.unwrap();
        store.record_audit(&audit("/old")).await.unwrap();
        store.clock().advance(Duration::from_secs(3 * 86_400));
        let cut = store.now_ms() - 86_400_000;
        store.record_event(None, "new.event", serde_json::json!({})).await.unwrap();
        store.record_audit(&AuditEntry { at_ms: store.now_ms(), ..audit("/new") }).await.unwrap();

        assert_eq!(store.prune(cut, cut).await.unwrap(), (1, 1));
        let kinds: Vec<_> = store.events(None, None, 100).await.unwrap().into_iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["new.event"]);
        let paths: Vec<_> = store.audit(None, 100).await.unwrap().into_iter().map(|e| e.path).collect();
        assert_eq!(paths, ["/new"]);
        assert_eq!(store.prune(cut, cut).await.unwrap(), (0, 0), "nothing left to prune");
    }
}
