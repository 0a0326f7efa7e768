//! Where timers keep the last nominal tick each one fired: the key-value bucket
//! `sluice-timers`, one key per timer rule. With each tick's deduplication id
//! (`timer:<rule>:<nominal time>`), it makes every nominal tick fire once across restarts.

use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};

use crate::Bus;
use crate::error::BusError;

const BUCKET: &str = "sluice-timers";

#[derive(Clone)]
pub struct TimerState {
    kv: kv::Store,
}

fn key(rule: &str) -> String {
    rule.replace(
        |c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'),
        "_",
    )
}

impl TimerState {
    /// Creates the bucket if it is missing.
    pub async fn create(bus: &Bus) -> Result<Self, BusError> {
        let kv = crate::datastore::create_bucket(
            bus,
            BUCKET,
            "Sluice's timers: the last nominal tick each fired",
            1024,
        )
        .await?;
        Ok(Self { kv })
    }

    /// The last nominal tick `rule` fired, if it ever fired.
    pub async fn last(&self, rule: &str) -> Result<Option<DateTime<Utc>>, BusError> {
        let value = self
            .kv
            .get(key(rule))
            .await
            .map_err(|e| BusError::read(format!("timer state of {rule}"), e))?;
        Ok(value
            .and_then(|v| String::from_utf8(v.to_vec()).ok())
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc)))
    }

    /// Records that `rule` fired its tick for `nominal`.
    pub async fn record(&self, rule: &str, nominal: DateTime<Utc>) -> Result<(), BusError> {
        self.kv
            .put(key(rule), nominal.to_rfc3339().into())
            .await
            .map_err(|e| BusError::Publish {
                subject: format!("timer state of {rule}"),
                source: e.into(),
                transient: true,
            })?;
        Ok(())
    }
}
