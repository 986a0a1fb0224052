//! Operator API tokens (name, role, expiry; the secret only as its SHA-256
//! digest) and the audit log of mutating operator requests. Deciding what
//! a role may do is `auth`'s; writing an audit row after each request is
//! `audit`'s.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

use super::{rfc3339, sha256_hex, Result, Store, StoreError};
use model::Role;

/// An operator API token as listed: never its secret.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// The name of the token that created this one.
    pub created_by: String,
    pub created_at: String,
    /// Absent: never expires.
    pub expires_at: Option<String>,
    /// To the minute; absent: never used.
    pub last_used_at: Option<String>,
    #[serde(skip)]
    pub expires_at_ms: Option<i64>,
    #[serde(skip)]
    pub last_used_at_ms: Option<i64>,
}

/// One mutating operator request, as recorded after its response.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: String,
    pub at: String,
    pub at_ms: i64,
    /// Absent for an anonymous request (no or an invalid token).
    pub token_id: Option<String>,
    /// `anonymous` when no valid token was given.
    pub token_name: String,
    pub role: Option<String>,
    pub method: String,
    /// The matched route template, e.g. `/api/v1/machines/{id}/deploy`.
    pub route: Option<String>,
    pub path: String,
    /// The route's path parameter (a machine id, an image name...).
    pub target: Option<String>,
    pub status: u16,
}

fn token_from_row(r: &AnyRow) -> Result<ApiToken> {
    let role: String = r.try_get("role")?;
    let expires_at_ms: Option<i64> = r.try_get("expires_at_ms")?;
    let last_used_at_ms: Option<i64> = r.try_get("last_used_at_ms")?;
    Ok(ApiToken {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        role: Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("token role {role:?}")))?,
        created_by: r.try_get("created_by")?,
        created_at: rfc3339(r.try_get("created_at_ms")?),
        expires_at: expires_at_ms.map(rfc3339),
        last_used_at: last_used_at_ms.map(rfc3339),
        expires_at_ms,
        last_used_at_ms,
    })
}

const TOKEN_COLUMNS: &str = "id, name, role, created_by, created_at_ms, expires_at_ms, last_used_at_ms";

impl Store {
    /// A new token; returns it and its secret, which is not kept.
    pub async fn create_api_token(
        &self,
        name: &str,
        role: Role,
        created_by: &str,
        expires_at_ms: Option<i64>,
    ) -> Result<(ApiToken, String)> {
        let secret = crate::random_token();
        let id = Uuid::now_v7().to_string();
        sqlx::query(
            "INSERT INTO api_tokens (id, name, role, token_sha256, created_by, created_at_ms, expires_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id.as_str())
        .bind(name)
        .bind(role.as_str())
        .bind(sha256_hex(&secret))
        .bind(created_by)
        .bind(self.now_ms())
        .bind(expires_at_ms)
        .execute(&self.writer)
        .await?;
        let token = self.api_token(&id).await?.ok_or_else(|| StoreError::Corrupt(format!("token {id} vanished")))?;
        Ok((token, secret))
    }

    pub async fn api_token(&self, id: &str) -> Result<Option<ApiToken>> {
        let row = sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.writer)
            .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// Every token, expired ones included, oldest first.
    pub async fn api_tokens(&self) -> Result<Vec<ApiToken>> {
        let rows =
            sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY id")).fetch_all(&self.pool).await?;
        rows.iter().map(token_from_row).collect()
    }

    /// The token whose secret this is, expired or not.
    pub async fn api_token_by_secret(&self, secret: &str) -> Result<Option<ApiToken>> {
        let row = sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_sha256 = $1"))
            .bind(sha256_hex(secret))
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    pub async fn touch_api_token(&self, id: &str, at_ms: i64) -> Result<()> {
        sqlx::query("UPDATE api_tokens SET last_used_at_ms = $1 WHERE id = $2")
            .bind(at_ms)
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Deletes a token; false if there was none with that id.
    pub async fn revoke_api_token(&self, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM api_tokens WHERE id = $1").bind(id).execute(&self.writer).await?;
        Ok(done.rows_affected() > 0)
    }

    /// Appends to the audit log. `entry.id` is assigned here (a UUIDv7);
    /// `entry.at` is not stored (`at_ms` is).
    pub async fn record_audit(&self, entry: &AuditEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit (id, at_ms, token_id, token_name, role, method, route, path, target, status)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(Uuid::now_v7().to_string())
        .bind(entry.at_ms)
        .bind(entry.token_id.clone())
        .bind(&entry.token_name)
        .bind(entry.role.clone())
        .bind(&entry.method)
        .bind(entry.route.clone())
        .bind(&entry.path)
        .bind(entry.target.clone())
        .bind(i64::from(entry.status))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Audit entries after the entry `after` (all when absent), oldest first.
    pub async fn audit(&self, after: Option<&str>, limit: i64) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query("SELECT * FROM audit WHERE id > $1 ORDER BY id LIMIT $2")
            .bind(after.unwrap_or("").to_string())
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let at_ms: i64 = r.try_get("at_ms")?;
                let status: i64 = r.try_get("status")?;
                Ok(AuditEntry {
                    id: r.try_get("id")?,
                    at: rfc3339(at_ms),
                    at_ms,
                    token_id: r.try_get("token_id")?,
                    token_name: r.try_get("token_name")?,
                    role: r.try_get("role")?,
                    method: r.try_get("method")?,
                    route: r.try_get("route")?,
                    path: r.try_get("path")?,
                    target: r.try_get("target")?,
                    status: u16::try_from(status).map_err(|_| StoreError::Corrupt(format!("audit status {status}")))?,
                })
            })
            .collect()
    }
}
