//! Rules as the API changed them, kept across restarts: switches (enabled or disabled), and
//! rules defined through the API.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;

use crate::error::StoreError;
use crate::store::{Store, corrupt, on_pool};

/// A rule switched on or off through the API.
#[derive(Debug, Clone, Serialize, PartialEq, FromRow)]
pub struct RuleSwitch {
    pub rule: String,
    pub enabled: bool,
    pub changed_at: DateTime<Utc>,
    /// The name of the API token that switched it.
    pub changed_by: String,
}

impl Store {
    /// Every rule switched through the API.
    pub async fn rule_switches(&self) -> Result<Vec<RuleSwitch>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as("SELECT rule, enabled, changed_at, changed_by FROM rule_switches ORDER BY rule")
                .fetch_all(pool)
                .await?
        }))
    }

    /// Records that `rule` is switched on or off, replacing any earlier switch.
    pub async fn switch_rule(&self, switch: &RuleSwitch) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO rule_switches (rule, enabled, changed_at, changed_by) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (rule) DO UPDATE SET enabled = excluded.enabled, changed_at = excluded.changed_at, changed_by = excluded.changed_by",
            )
            .bind(&switch.rule)
            .bind(switch.enabled)
            .bind(switch.changed_at)
            .bind(&switch.changed_by)
            .execute(pool)
            .await?;
        });
        Ok(())
    }
}

/// A rule defined through the API.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRule {
    pub rule: String,
    /// The rule's fields, as in a rule file.
    pub definition: serde_json::Value,
    pub changed_at: DateTime<Utc>,
    pub changed_by: String,
}

impl Store {
    /// Every rule defined through the API.
    pub async fn api_rules(&self) -> Result<Vec<ApiRule>, StoreError> {
        let rows: Vec<(String, String, DateTime<Utc>, String)> = on_pool!(self, pool => {
            sqlx::query_as("SELECT rule, CAST(definition AS TEXT), changed_at, changed_by FROM api_rules ORDER BY rule")
                .fetch_all(pool)
                .await?
        });
        rows.into_iter()
            .map(|(rule, definition, changed_at, changed_by)| {
                Ok(ApiRule {
                    definition: serde_json::from_str(&definition)
                        .map_err(|e| corrupt("api_rules", e))?,
                    rule,
                    changed_at,
                    changed_by,
                })
            })
            .collect()
    }

    /// Stores a rule defined through the API, replacing the one of that name; its
    /// definition's `enabled` replaces any switch.
    pub async fn put_api_rule(&self, rule: &ApiRule) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM rule_switches WHERE rule = $1")
                .bind(&rule.rule)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO api_rules (rule, definition, changed_at, changed_by) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (rule) DO UPDATE SET definition = excluded.definition, changed_at = excluded.changed_at, changed_by = excluded.changed_by",
            )
            .bind(&rule.rule)
            .bind(sqlx::types::Json(&rule.definition))
            .bind(rule.changed_at)
            .bind(&rule.changed_by)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Deletes a rule defined through the API, and its switch; whether there was one.
    pub async fn delete_api_rule(&self, rule: &str) -> Result<bool, StoreError> {
        let deleted = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let deleted = sqlx::query("DELETE FROM api_rules WHERE rule = $1")
                .bind(rule)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query("DELETE FROM rule_switches WHERE rule = $1")
                .bind(rule)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            deleted
        });
        Ok(deleted > 0)
    }
}
