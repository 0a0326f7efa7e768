//! Shares: a duty cut into `count` partitions, each a lease (`<duty>.<n>`) in the
//! `sluice-leases` bucket, spread evenly over the engines that take part.
//!
//! Each engine that takes part keeps a membership key, `member.<duty>.<engine>`, fresh in
//! the bucket. A key not written again within the leases' life expires with the bucket's
//! `max_age`, and its engine counts as gone. From the live members, sorted by name, every
//! engine computes the same fair shares: `count / members` each, one more for the first
//! `count % members`. Each [`Shares::round`] an engine
//!
//! - renews the partitions it holds; one it could not renew within the leases' life is
//!   [`Change::Lost`] (another engine may hold it now);
//! - names the partitions it holds above its share, [`Change::Surplus`]: the caller stops
//!   using each and then gives it back with [`Shares::release`], so another engine can take
//!   it at once;
//! - takes vacant partitions up to its share, [`Change::Gained`], each with its fencing
//!   token (the revision its key was created at, higher than every earlier holder's).
//!
//! A partition is only ever held by one engine: taking it is creating its key, which fails
//! while another engine's value is there. Views of the members can differ for a round while
//! an engine joins or leaves; the shares settle once every engine has seen the same members.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::TryStreamExt as _;

use crate::error::BusError;
use crate::lease::{Holder, Lease, LeaseEnd, Leases};

/// What changed in one round for this engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// This engine holds `partition` now, under fencing token `token`.
    Gained { partition: u32, token: u64 },
    /// This engine no longer holds `partition`: stop using it at once.
    Lost { partition: u32, why: LeaseEnd },
    /// This engine holds `partition` above its share: stop using it, then release it.
    Surplus { partition: u32 },
}

/// This engine's part in one partitioned duty.
pub struct Shares {
    leases: Leases,
    duty: String,
    count: u32,
    me: Holder,
    /// Whether this engine wrote its membership key.
    joined: bool,
    held: BTreeMap<u32, Lease>,
}

impl Shares {
    /// `me`'s part in `duty`, cut into `count` partitions. Nothing is written until the
    /// first [`round`](Self::round).
    pub fn new(leases: Leases, duty: &str, count: u32, me: Holder) -> Self {
        assert!(count > 0, "a duty has at least one partition");
        Self {
            leases,
            duty: duty.to_owned(),
            count,
            me,
            joined: false,
            held: BTreeMap::new(),
        }
    }

    /// This engine's name.
    pub fn engine(&self) -> &str {
        &self.me.engine
    }

    /// The lease name of partition `partition`.
    pub fn lease_name(&self, partition: u32) -> String {
        format!("{}.{partition}", self.duty)
    }

    fn member_key(&self, engine: &str) -> String {
        format!("member.{}.{engine}", self.duty)
    }

    /// The partitions this engine holds, with their fencing tokens.
    pub fn held(&self) -> BTreeMap<u32, u64> {
        self.held.iter().map(|(p, l)| (*p, l.token())).collect()
    }

    /// How long a round may wait for the next: a quarter of the leases' life.
    pub fn every(&self) -> Duration {
        self.leases.ttl() / 4
    }

    /// The engines that take part now, sorted by name (this one included once it wrote
    /// its key).
    pub async fn members(&self) -> Result<BTreeSet<String>, BusError> {
        let prefix = format!("member.{}.", self.duty);
        let keys = self
            .leases
            .kv()
            .keys()
            .await
            .map_err(|e| BusError::read(format!("the members of {}", self.duty), e))?;
        let keys: Vec<String> = keys
            .try_collect()
            .await
            .map_err(|e| BusError::read(format!("the members of {}", self.duty), e))?;
        Ok(keys
            .into_iter()
            .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
            .collect())
    }

    /// How many partitions `engine` should hold among `members`.
    pub fn fair_share(&self, members: &BTreeSet<String>, engine: &str) -> u32 {
        fair_share(self.count, members, engine)
    }

    /// One round: renew, name the surplus, take vacant partitions up to the fair share.
    ///
    /// A partition [`Change::Lost`] is always returned, even when the rest of the round
    /// fails (the bucket unreachable): the error then only ends the round early.
    pub async fn round(&mut self) -> Result<Vec<Change>, BusError> {
        let mut changes = Vec::new();
        self.renew_held(&mut changes).await;
        match self.share_out(&mut changes).await {
            Ok(()) => Ok(changes),
            Err(e) if changes.is_empty() => Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "the shares could not be looked at this round");
                Ok(changes)
            }
        }
    }

    /// The rest of a round, after the renewals: membership, surplus, vacant partitions.
    async fn share_out(&mut self, changes: &mut Vec<Change>) -> Result<(), BusError> {
        let member = serde_json::to_vec(&self.me).expect("a holder serialises");
        match self
            .leases
            .kv()
            .put(self.member_key(&self.me.engine), member.into())
            .await
        {
            Ok(_) => self.joined = true,
            Err(e) => {
                return Err(BusError::Publish {
                    subject: self.member_key(&self.me.engine),
                    source: e.into(),
                    transient: true,
                });
            }
        }
        let members = self.members().await?;
        let share = self.fair_share(&members, &self.me.engine) as usize;
        if self.held.len() > share {
            // The highest-numbered ones go, so that every engine gives up the same way.
            let surplus = self.held.len() - share;
            changes.extend(
                self.held
                    .keys()
                    .rev()
                    .take(surplus)
                    .map(|&partition| Change::Surplus { partition }),
            );
        }
        if self.held.len() < share {
            // Start at a place of this engine's own, so that engines joining together
            // mostly try different keys.
            let start = start_of(&self.me.engine, self.count);
            for offset in 0..self.count {
                if self.held.len() >= share {
                    break;
                }
                let partition = (start + offset) % self.count;
                if self.held.contains_key(&partition) {
                    continue;
                }
                let name = self.lease_name(partition);
                match self.leases.try_acquire(&name, &self.me).await {
                    Ok(Some(lease)) => {
                        changes.push(Change::Gained {
                            partition,
                            token: lease.token(),
                        });
                        self.held.insert(partition, lease);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(lease = %name, error = %e, "could not try for a partition")
                    }
                }
            }
        }
        Ok(())
    }

    async fn renew_held(&mut self, changes: &mut Vec<Change>) {
        let mut lost = Vec::new();
        for (&partition, lease) in &mut self.held {
            if let Err(why) = lease.renew_in_time().await {
                lost.push((partition, why));
            }
        }
        for (partition, why) in lost {
            self.held.remove(&partition);
            changes.push(Change::Lost { partition, why });
        }
    }

    /// Gives `partition` back, once the caller stopped using it.
    pub async fn release(&mut self, partition: u32) {
        if let Some(lease) = self.held.remove(&partition) {
            lease.release().await;
        }
    }

    /// Gives every partition back and leaves: the others take them at once.
    pub async fn leave(&mut self) {
        let held: Vec<u32> = self.held.keys().copied().collect();
        for partition in held {
            self.release(partition).await;
        }
        if self.joined {
            let key = self.member_key(&self.me.engine);
            if let Err(e) = self.leases.kv().delete(&key).await {
                tracing::warn!(key, error = %e, "could not remove the membership; it expires on its own");
            }
        }
    }
}

/// How many of `count` partitions `engine` should hold among `members` (sorted by name):
/// `count / members` each, one more for the first `count % members`; none for an engine
/// that is not a member.
fn fair_share(count: u32, members: &BTreeSet<String>, engine: &str) -> u32 {
    let Some(rank) = members.iter().position(|m| m == engine) else {
        return 0;
    };
    let n = u32::try_from(members.len()).unwrap_or(u32::MAX);
    let rank = u32::try_from(rank).unwrap_or(u32::MAX);
    count / n + u32::from(rank < count % n)
}

/// Where `engine` starts looking for vacant partitions: a stable hash of its name.
fn start_of(engine: &str, count: u32) -> u32 {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let hash = engine.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    u32::try_from(hash % u64::from(count)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fair_shares_add_up_to_every_partition_and_differ_by_one_at_most() {
        for count in [1, 2, 7, 8, 64] {
            for n in 1..=5 {
                let members: BTreeSet<String> = (0..n).map(|i| format!("e{i}")).collect();
                let shares: Vec<u32> = members
                    .iter()
                    .map(|m| fair_share(count, &members, m))
                    .collect();
                assert_eq!(shares.iter().sum::<u32>(), count, "{count} over {n}");
                let (most, least) = (shares.iter().max(), shares.iter().min());
                assert!(most.unwrap() - least.unwrap() <= 1, "{shares:?}");
            }
        }
        let members = BTreeSet::from(["a".to_owned()]);
        assert_eq!(
            fair_share(8, &members, "stranger"),
            0,
            "a non-member holds none"
        );
    }

    #[test]
    fn engines_start_looking_at_their_own_places() {
        let starts: BTreeSet<u32> = ["e0", "e1", "e2", "engine-a", "engine-b"]
            .iter()
            .map(|e| start_of(e, 64))
            .collect();
        assert!(starts.len() >= 4, "{starts:?}");
        assert_eq!(start_of("e0", 64), start_of("e0", 64));
    }
}
