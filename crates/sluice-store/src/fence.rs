//! Fencing: the writes of an engine that owns a duty of several engines (its lease in NATS)
//! go through only while the lease's token is the one the store holds for that duty. An
//! engine that takes the lease raises the fence to its own token first; from then on the
//! transactions of the one before it fail with [`StoreError::Fenced`] and write nothing,
//! however long that engine was paused or cut off.
//!
//! The check is the first statement of each fenced transaction. On PostgreSQL it reads the
//! fence `FOR SHARE`: transactions of the owner run side by side, and a new owner's raise
//! waits for those in flight to commit, after which none of the old owner's can.

use chrono::Utc;

use crate::error::StoreError;
use crate::model::Fence;
use crate::store::{Store, on_pool};

impl Store {
    /// Makes `token` the fence of `name`, held by `holder`, if it is newer than the one the
    /// store has; whether it now is (false: a newer owner raised it first).
    pub async fn raise_fence(
        &self,
        name: &str,
        token: i64,
        holder: &str,
    ) -> Result<bool, StoreError> {
        let raised = on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO fences (name, token, holder, since) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (name) DO UPDATE SET token = excluded.token, holder = excluded.holder, \
                 since = excluded.since WHERE fences.token < excluded.token",
            )
            .bind(name)
            .bind(token)
            .bind(holder)
            .bind(Utc::now())
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(raised == 1)
    }

    /// The fence of `name` and who holds it, if any engine ever raised one.
    pub async fn fence_of(&self, name: &str) -> Result<Option<(i64, String)>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as("SELECT token, holder FROM fences WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// This store with the writes of the execution core (events, executions, their status,
    /// workflow steps) checked against `fence`.
    pub fn fenced(self, fence: Fence) -> Self {
        self.fenced_by_all(vec![fence])
    }

    /// This store with those writes checked against every one of `fences`: an engine that
    /// owns several partitions of the actions writes under all of theirs where a write may
    /// touch any of them.
    pub fn fenced_by_all(mut self, fences: Vec<Fence>) -> Self {
        self.fences = fences.into();
        self
    }

    /// The (first) fence this store's writes are checked against, if any.
    pub fn fence(&self) -> Option<&Fence> {
        self.fences.first()
    }

    /// Every fence this store's writes are checked against.
    pub fn fences(&self) -> &[Fence] {
        &self.fences
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::store::{Backend, Store};

    /// An engine paused in the middle of a fenced transaction holds the fence `FOR SHARE`;
    /// PostgreSQL ends its session once it has sent nothing for a while, so the engine
    /// taking over raises the fence instead of waiting for the zombie to wake.
    #[tokio::test]
    async fn a_transaction_left_open_does_not_hold_the_fence_forever() {
        let pg = sluice_testkit::Postgres::start();
        let zombie = Store::connect(&pg.url()).await.unwrap();
        assert!(zombie.raise_fence("engine", 1, "a").await.unwrap());
        let Backend::Postgres(pool) = &zombie.backend else {
            unreachable!("a PostgreSQL store")
        };
        let mut paused = pool.begin().await.unwrap();
        sqlx::query("SELECT token FROM fences WHERE name = 'engine' FOR SHARE")
            .execute(&mut *paused)
            .await
            .unwrap();

        let successor = Store::connect(&pg.url()).await.unwrap();
        let raised = tokio::time::timeout(
            Duration::from_secs(30),
            successor.raise_fence("engine", 2, "b"),
        )
        .await
        .expect("the fence raise waited on the open transaction");
        assert!(raised.unwrap(), "the newer token took the fence");
        assert_eq!(
            successor.fence_of("engine").await.unwrap(),
            Some((2, "b".to_owned()))
        );
        // The zombie's session is gone: its transaction can do nothing more.
        let woke = sqlx::query("SELECT 1").execute(&mut *paused).await;
        assert!(woke.is_err(), "the abandoned transaction was still open");
    }
}
