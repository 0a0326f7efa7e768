//! Rule switches: rules enabled or disabled through the API, kept across restarts.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;

use crate::store::{Store, StoreError, on_pool};

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
