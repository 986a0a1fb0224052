//! Stored first responses of POSTs sent with an `Idempotency-Key`
//! (`api::idempotency` decides when; this module keeps the rows). A key
//! is claimed before the request runs, so two concurrent requests with the
//! same key cannot both do the work.

use sqlx::Row;

use super::{Result, Store};

/// How long a key is remembered.
pub const TTL_MS: i64 = 24 * 60 * 60 * 1000;

/// Which request a key belongs to.
#[derive(Debug, Clone)]
pub struct KeyScope<'a> {
    pub token_id: &'a str,
    /// `POST /api/v1/machines/m1/deploy`: the method and concrete path.
    pub route: &'a str,
    pub key: &'a str,
}

/// What claiming a key found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// New: run the request, then [`Store::complete_idempotency`].
    Claimed,
    /// The key was used with another body.
    Mismatch,
    /// The first request with this key is still running.
    InProgress,
    /// The stored first response.
    Replay { status: u16, content_type: Option<String>, body: String },
}

impl Store {
    /// Claims `scope` for a request whose body hashes to `request_sha256`,
    /// or says what the key already holds. Expired keys are deleted first.
    pub async fn claim_idempotency(&self, scope: &KeyScope<'_>, request_sha256: &str) -> Result<Claim> {
        let now = self.now_ms();
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at_ms < $1")
            .bind(now - TTL_MS)
            .execute(&self.writer)
            .await?;
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (token_id, route, idem_key, request_sha256, status, created_at_ms) \
             VALUES ($1, $2, $3, $4, 0, $5) ON CONFLICT (token_id, route, idem_key) DO NOTHING",
        )
        .bind(scope.token_id)
        .bind(scope.route)
        .bind(scope.key)
        .bind(request_sha256)
        .bind(now)
        .execute(&self.writer)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(Claim::Claimed);
        }
        let row = sqlx::query(
            "SELECT request_sha256, status, content_type, body FROM idempotency_keys \
             WHERE token_id = $1 AND route = $2 AND idem_key = $3",
        )
        .bind(scope.token_id)
        .bind(scope.route)
        .bind(scope.key)
        .fetch_optional(&self.writer)
        .await?;
        // Deleted meanwhile (expired or abandoned): the caller may retry.
        let Some(row) = row else { return Ok(Claim::InProgress) };
        if row.try_get::<String, _>("request_sha256")? != request_sha256 {
            return Ok(Claim::Mismatch);
        }
        match row.try_get::<i64, _>("status")? {
            0 => Ok(Claim::InProgress),
            status => Ok(Claim::Replay {
                status: u16::try_from(status).unwrap_or(500),
                content_type: row.try_get("content_type")?,
                body: row.try_get::<Option<String>, _>("body")?.unwrap_or_default(),
            }),
        }
    }

    /// Stores the response to a claimed key.
    pub async fn complete_idempotency(
        &self,
        scope: &KeyScope<'_>,
        status: u16,
        content_type: Option<&str>,
        body: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE idempotency_keys SET status = $1, content_type = $2, body = $3 \
             WHERE token_id = $4 AND route = $5 AND idem_key = $6",
        )
        .bind(i64::from(status))
        .bind(content_type.map(str::to_string))
        .bind(body)
        .bind(scope.token_id)
        .bind(scope.route)
        .bind(scope.key)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Forgets a claimed key whose request did not complete (a server
    /// error), so a retry runs it again.
    pub async fn abandon_idempotency(&self, scope: &KeyScope<'_>) -> Result<()> {
        sqlx::query("DELETE FROM idempotency_keys WHERE token_id = $1 AND route = $2 AND idem_key = $3")
            .bind(scope.token_id)
            .bind(scope.route)
            .bind(scope.key)
            .execute(&self.writer)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_db;

    test_db::on_both_databases!(keys_replay_the_first_response);

    async fn keys_replay_the_first_response(store: Store) {
        let scope = KeyScope { token_id: "t1", route: "POST /api/v1/x", key: "k1" };
        assert_eq!(store.claim_idempotency(&scope, "h1").await.unwrap(), Claim::Claimed);
        assert_eq!(store.claim_idempotency(&scope, "h1").await.unwrap(), Claim::InProgress);
        store.complete_idempotency(&scope, 202, Some("application/json"), "{\"a\":1}").await.unwrap();
        let replay =
            Claim::Replay { status: 202, content_type: Some("application/json".into()), body: "{\"a\":1}".into() };
        assert_eq!(store.claim_idempotency(&scope, "h1").await.unwrap(), replay);
        assert_eq!(store.claim_idempotency(&scope, "h2").await.unwrap(), Claim::Mismatch);
        let other_caller = KeyScope { token_id: "t2", ..scope.clone() };
        assert_eq!(store.claim_idempotency(&other_caller, "h2").await.unwrap(), Claim::Claimed, "keys are per caller");
        store.abandon_idempotency(&other_caller).await.unwrap();
        assert_eq!(store.claim_idempotency(&other_caller, "h2").await.unwrap(), Claim::Claimed);
        sqlx::query("UPDATE idempotency_keys SET created_at_ms = $1")
            .bind(store.now_ms() - TTL_MS - 1)
            .execute(&store.writer)
            .await
            .unwrap();
        assert_eq!(store.claim_idempotency(&scope, "h2").await.unwrap(), Claim::Claimed, "expired after 24 h");
    }
}
