//! API tokens. Only the sha256 of a token's secret is stored; the secret
//! itself is shown once, when the token is created.

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::Row;
use tug_core::{EnvName, Role, ServiceName, TokenName};

use crate::{millis, opt_millis, opt_parse, parse, Db, Dialect, Error, Result, Tx};
pub use tug_core::records::TokenRecord as TokenRow;

/// A token to store.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub id: String,
    pub name: TokenName,
    pub role: Role,
    pub service: Option<ServiceName>,
    /// The one environment of `service` an agent token may follow.
    pub environment: Option<EnvName>,
    /// Hex sha256 of the secret.
    pub secret_hash: String,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<String>,
}

/// What a revocation came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// Revoked now.
    Revoked(TokenRow),
    /// It was revoked before (at its `revoked_at`); nothing changed.
    AlreadyRevoked(TokenRow),
    /// It is the last active admin token; nothing changed.
    LastAdmin,
    /// No token has this id.
    NotFound,
}

const COLUMNS: &str = "id, name, role, service, environment, created_at, created_by, revoked_at";

fn token_from_row(r: &AnyRow) -> Result<TokenRow> {
    Ok(TokenRow {
        id: r.try_get("id")?,
        name: parse(&r.try_get::<String, _>("name")?, TokenName::parse)?,
        role: parse(&r.try_get::<String, _>("role")?, |s| s.parse::<Role>())?,
        service: opt_parse(r.try_get("service")?, ServiceName::parse)?,
        environment: opt_parse(r.try_get("environment")?, EnvName::parse)?,
        created_at: millis(r.try_get("created_at")?)?,
        created_by: r.try_get("created_by")?,
        revoked_at: opt_millis(r.try_get("revoked_at")?)?,
    })
}

impl Tx {
    /// Revokes the token with this id, unless it is the last active admin
    /// token. The check and the revocation are one atomic step: of two
    /// admins revoking each other at the same moment, on any number of
    /// servers, one wins and the other finds itself the last admin.
    ///
    /// On PostgreSQL the transaction first locks every active admin row
    /// (`FOR UPDATE`, in id order so two revocations never deadlock): a
    /// concurrent revocation waits, then re-reads the rows and counts the
    /// one just revoked as gone. On SQLite the first statement is the
    /// write, which takes the database's single write lock for the whole
    /// transaction, so the count after it sees every committed revocation.
    ///
    /// Anything but [`Revocation::Revoked`] leaves nothing changed.
    pub async fn revoke_token(&mut self, id: &str, now: DateTime<Utc>) -> Result<Revocation> {
        let postgres = self.dialect == Dialect::Postgres;
        let tx = self.conn();
        if postgres {
            sqlx::query("SELECT id FROM tokens WHERE role = $1 AND revoked_at IS NULL ORDER BY id FOR UPDATE")
                .bind(Role::Admin.as_str())
                .fetch_all(&mut *tx)
                .await?;
        }
        let done = sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now.timestamp_millis())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM tokens WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(token) = row.as_ref().map(token_from_row).transpose()? else {
            return Ok(Revocation::NotFound);
        };
        if done.rows_affected() == 0 {
            return Ok(Revocation::AlreadyRevoked(token));
        }
        if token.role == Role::Admin {
            let left: i64 = sqlx::query("SELECT COUNT(*) AS n FROM tokens WHERE role = $1 AND revoked_at IS NULL")
                .bind(Role::Admin.as_str())
                .fetch_one(&mut *tx)
                .await?
                .try_get("n")?;
            if left == 0 {
                // Put it back, so that the transaction holds no change.
                sqlx::query("UPDATE tokens SET revoked_at = NULL WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                return Ok(Revocation::LastAdmin);
            }
        }
        Ok(Revocation::Revoked(token))
    }
}

/// Every token, oldest first.
pub(crate) async fn all_tokens(conn: &mut sqlx::AnyConnection) -> Result<Vec<TokenRow>> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM tokens ORDER BY created_at, id"))
        .fetch_all(conn)
        .await?;
    rows.iter().map(token_from_row).collect()
}

impl Tx {
    /// Stores a token. Names are unique among tokens that are not revoked.
    pub async fn insert_token(&mut self, t: &NewToken) -> Result<()> {
        let res = sqlx::query(
            "INSERT INTO tokens (id, name, role, service, environment, secret_hash, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&t.id)
        .bind(t.name.as_str())
        .bind(t.role.as_str())
        .bind(t.service.as_ref().map(|s| s.as_str().to_string()))
        .bind(t.environment.as_ref().map(|e| e.as_str().to_string()))
        .bind(&t.secret_hash)
        .bind(t.created_at.timestamp_millis())
        .bind(t.created_by.clone())
        .execute(self.conn())
        .await;
        match res {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(Error::TokenNameTaken(t.name.clone())),
            Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => Err(Error::ServiceNotFound(
                t.service.clone().ok_or_else(|| Error::Corrupt(e.to_string()))?,
            )),
            Err(e) => Err(e.into()),
        }
    }
}

impl Db {
    /// The token whose secret hashes to `secret_hash`, revoked or not.
    pub async fn token_by_hash(&self, secret_hash: &str) -> Result<Option<TokenRow>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM tokens WHERE secret_hash = $1"))
            .bind(secret_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// Every token, oldest first.
    pub async fn list_tokens(&self) -> Result<Vec<TokenRow>> {
        all_tokens(&mut *self.pool.acquire().await?).await
    }

    /// The token with this id, revoked or not: requests that last (event
    /// streams, held long-polls) look their token up again by it.
    pub async fn token_by_id(&self, id: &str) -> Result<Option<TokenRow>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM tokens WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// How many tokens were ever revoked: it grows with every revocation
    /// (tokens are never deleted), so a server that reads it now and then
    /// learns that some token was revoked, on any server.
    pub async fn revocation_count(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM tokens WHERE revoked_at IS NOT NULL")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    /// How many admin tokens are active (zero on a new database).
    pub async fn count_active_admin_tokens(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM tokens WHERE role = $1 AND revoked_at IS NULL")
            .bind(Role::Admin.as_str())
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }
}
