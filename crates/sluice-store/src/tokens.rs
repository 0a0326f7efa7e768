//! API tokens: only each token's hash is kept, with its scope, expiry, last use and
//! revocation.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sluice_core::Scope;
use sqlx::FromRow;

use crate::error::StoreError;
use crate::store::{Store, corrupt, on_pool};

/// A token to create: its hash, never the token itself.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub name: String,
    pub scope: Scope,
    /// Hex SHA-256 of the token.
    pub hash: String,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A token as listed: everything but its hash.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Token {
    pub id: i64,
    pub name: String,
    pub scope: Scope,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl Token {
    /// Whether it may be used at `now`: not revoked, not expired.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| now < at)
    }
}

#[derive(FromRow)]
struct TokenRow {
    id: i64,
    name: String,
    scope: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

impl TryFrom<TokenRow> for Token {
    type Error = StoreError;
    fn try_from(row: TokenRow) -> Result<Self, StoreError> {
        Ok(Token {
            id: row.id,
            name: row.name,
            scope: row.scope.parse().map_err(|e| corrupt("api_tokens", e))?,
            created_at: row.created_at,
            expires_at: row.expires_at,
            last_used_at: row.last_used_at,
            revoked_at: row.revoked_at,
        })
    }
}

const TOKEN_COLUMNS: &str =
    "SELECT id, name, scope, created_at, expires_at, last_used_at, revoked_at FROM api_tokens";

impl Store {
    /// Stores a new token; its id.
    pub async fn create_token(&self, token: &NewToken) -> Result<i64, StoreError> {
        let (id,): (i64,) = on_pool!(self, pool => {
            sqlx::query_as(
                "INSERT INTO api_tokens (name, scope, hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
            )
            .bind(&token.name)
            .bind(token.scope.as_str())
            .bind(&token.hash)
            .bind(Utc::now())
            .bind(token.expires_at)
            .fetch_one(pool)
            .await?
        });
        Ok(id)
    }

    /// The token with this hash, live or not.
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<Token>, StoreError> {
        let row: Option<TokenRow> = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!("{TOKEN_COLUMNS} WHERE hash = $1")))
                .bind(hash)
                .fetch_optional(pool)
                .await?
        });
        row.map(Token::try_from).transpose()
    }

    /// Every token, oldest first.
    pub async fn list_tokens(&self) -> Result<Vec<Token>, StoreError> {
        let rows: Vec<TokenRow> = on_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!("{TOKEN_COLUMNS} ORDER BY id")))
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(Token::try_from).collect()
    }

    /// Revokes a token; whether it existed and was not revoked yet.
    pub async fn revoke_token(&self, id: i64) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => {
            sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(Utc::now())
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }

    /// Records that a token was used at `at`.
    pub async fn touch_token(&self, id: i64, at: DateTime<Utc>) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
                .bind(at)
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(())
    }

    /// How many tokens exist, revoked ones included.
    pub async fn count_tokens(&self) -> Result<i64, StoreError> {
        let (n,): (i64,) = on_pool!(self, pool => {
            sqlx::query_as("SELECT COUNT(*) FROM api_tokens").fetch_one(pool).await?
        });
        Ok(n)
    }
}
