//! Leader leases: one row per kind of background work (`name`) saying which
//! appliance (`holder`) runs it until `expires_at_ms`. Taking and renewing
//! are the same conditional upsert, atomic on SQLite and PostgreSQL alike;
//! the election itself (when to renew, when to stop) is in `api::leader`.

use super::{Result, Store};
use sqlx::Row;

impl Store {
    /// Takes or renews the lease `name` for `holder` until `until_ms`: it
    /// succeeds when nobody holds it, `holder` already does, or the
    /// holder's lease expired before `now_ms`. Returns whether `holder`
    /// holds it now.
    pub async fn try_lease(&self, name: &str, holder: &str, until_ms: i64, now_ms: i64) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO leader_leases (name, holder, expires_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at_ms = excluded.expires_at_ms \
             WHERE leader_leases.holder = excluded.holder OR leader_leases.expires_at_ms < $4",
        )
        .bind(name)
        .bind(holder)
        .bind(until_ms)
        .bind(now_ms)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives the lease up (at shutdown) so another appliance need not wait
    /// for it to expire.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        sqlx::query("DELETE FROM leader_leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Who holds `name` and until when, if anyone ever did.
    pub async fn lease_holder(&self, name: &str) -> Result<Option<(String, i64)>> {
        let row = sqlx::query("SELECT holder, expires_at_ms FROM leader_leases WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| Ok::<_, sqlx::Error>((r.try_get("holder")?, r.try_get("expires_at_ms")?))).transpose()?)
    }
}

#[cfg(test)]
mod tests {
    use crate::test_db::on_both_databases;
    use crate::Store;

    on_both_databases!(one_holder_at_a_time_until_the_lease_expires);

    async fn one_holder_at_a_time_until_the_lease_expires(store: Store) {
        assert!(store.try_lease("work", "a", 1_000, 0).await.unwrap(), "a free lease is taken");
        assert!(!store.try_lease("work", "b", 1_500, 500).await.unwrap(), "b waits while a holds it");
        assert!(store.try_lease("work", "a", 2_000, 900).await.unwrap(), "a renews");
        assert!(!store.try_lease("work", "b", 2_500, 1_500).await.unwrap(), "the renewal counts");
        assert!(store.try_lease("work", "b", 3_000, 2_001).await.unwrap(), "b takes over an expired lease");
        assert!(!store.try_lease("work", "a", 3_000, 2_100).await.unwrap(), "a lost it");
        assert_eq!(store.lease_holder("work").await.unwrap(), Some(("b".to_string(), 3_000)));
        assert!(store.try_lease("other", "a", 3_000, 2_100).await.unwrap(), "leases are per name");
        store.release_lease("work", "a").await.unwrap();
        assert_eq!(
            store.lease_holder("work").await.unwrap().map(|h| h.0),
            Some("b".to_string()),
            "only b can give it up"
        );
        store.release_lease("work", "b").await.unwrap();
        assert!(store.try_lease("work", "a", 3_000, 2_200).await.unwrap(), "a released lease is free at once");
    }
}
