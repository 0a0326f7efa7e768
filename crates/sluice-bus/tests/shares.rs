//! Partition leases against a real nats-server: each partition held by one engine at a
//! time, spread evenly, taken over when an engine dies, given back when one joins or leaves.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use sluice_bus::Bus;
use sluice_bus::lease::{Holder, LeaseEnd, Leases};
use sluice_bus::shares::{Change, Shares};
use sluice_testkit::NatsServer;

const PARTITIONS: u32 = 8;

fn holder(engine: &str) -> Holder {
    Holder {
        engine: engine.into(),
        api_url: Some(format!("http://{engine}:8080")),
        since: chrono::Utc::now(),
    }
}

/// One round for each engine, as its owner runs it: a surplus partition is given back at
/// once. Returns every change, and checks no partition is held by two of them.
async fn round(engines: &mut [&mut Shares]) -> Vec<(String, Change)> {
    let mut changes = Vec::new();
    for shares in engines.iter_mut() {
        for change in shares.round().await.unwrap() {
            if let Change::Surplus { partition } = change {
                shares.release(partition).await;
            }
            changes.push((shares.engine().to_owned(), change));
        }
    }
    let mut seen = BTreeSet::new();
    for shares in engines.iter() {
        for partition in shares.held().keys() {
            assert!(
                seen.insert(*partition),
                "partition {partition} is held by two engines"
            );
        }
    }
    changes
}

/// Rounds every quarter of the leases' life until each engine holds its fair share and
/// every partition is held; how long that took.
async fn settle(engines: &mut [&mut Shares], ttl: Duration) -> Duration {
    let started = Instant::now();
    loop {
        round(engines).await;
        let held: usize = engines.iter().map(|s| s.held().len()).sum();
        let members = engines[0].members().await.unwrap();
        let fair = engines
            .iter()
            .all(|s| s.held().len() as u32 == s.fair_share(&members, s.engine()));
        if held == PARTITIONS as usize && fair && members.len() == engines.len() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < ttl * 4,
            "not settled after {:?}: {:?}",
            started.elapsed(),
            engines.iter().map(|s| s.held()).collect::<Vec<_>>()
        );
        tokio::time::sleep(ttl / 4).await;
    }
}

fn counts(engines: &[&mut Shares]) -> Vec<usize> {
    let mut counts: Vec<usize> = engines.iter().map(|s| s.held().len()).collect();
    counts.sort();
    counts
}

#[tokio::test]
async fn partitions_are_spread_evenly_held_once_and_follow_engines_that_die_pause_join_and_leave() {
    let nats = NatsServer::start();
    let bus = Bus::attach(&nats.url(), "test", &Default::default())
        .await
        .unwrap();
    let ttl = Duration::from_secs(2);
    let leases = Leases::open(&bus, ttl).await.unwrap();
    let new = |engine: &str| Shares::new(leases.clone(), "actions", PARTITIONS, holder(engine));

    // Three engines start together: 3, 3 and 2 partitions, each key naming its holder.
    let (mut a, mut b, mut c) = (new("a"), new("b"), new("c"));
    settle(&mut [&mut a, &mut b, &mut c], ttl).await;
    assert_eq!(counts(&[&mut a, &mut b, &mut c]), [2, 3, 3]);
    for shares in [&a, &b, &c] {
        for partition in shares.held().keys() {
            let on_key = leases
                .holder(&shares.lease_name(*partition))
                .await
                .unwrap()
                .expect("a held partition has a value");
            assert_eq!(on_key.engine, shares.engine());
        }
    }

    // c stops renewing (killed or paused): a and b take its partitions once its leases and
    // membership expired, with higher tokens.
    let c_tokens = c.held();
    let stopped = Instant::now();
    settle(&mut [&mut a, &mut b], ttl).await;
    let taken_over = stopped.elapsed();
    assert!(
        taken_over >= ttl - Duration::from_millis(600),
        "taken over after {taken_over:?}, before c's leases could expire"
    );
    assert_eq!(counts(&[&mut a, &mut b]), [4, 4]);
    for (partition, old) in &c_tokens {
        let now = a.held().get(partition).or(b.held().get(partition)).copied();
        assert!(
            now > Some(*old),
            "partition {partition}: token {now:?} after {old}"
        );
    }
    eprintln!("an engine's partitions taken over {taken_over:?} after it stopped renewing");

    // The paused c wakes: its next round says it lost every partition, and it takes
    // nothing held by another.
    let woke = c.round().await.unwrap();
    let lost: BTreeSet<u32> = woke
        .iter()
        .filter_map(|change| match change {
            Change::Lost { partition, why } => {
                assert!(
                    matches!(why, LeaseEnd::Taken | LeaseEnd::Expired { .. }),
                    "{why:?}"
                );
                Some(*partition)
            }
            _ => None,
        })
        .collect();
    assert_eq!(lost, c_tokens.keys().copied().collect());
    assert!(
        !woke.iter().any(|c| matches!(c, Change::Gained { .. })),
        "{woke:?}"
    );

    // Back as a member, c gets its share again: a and b give up their surplus.
    let changes = {
        let mut all = Vec::new();
        let started = Instant::now();
        while counts(&[&mut a, &mut b, &mut c]) != [2, 3, 3] {
            all.extend(round(&mut [&mut a, &mut b, &mut c]).await);
            assert!(started.elapsed() < ttl * 4, "c never got its share back");
            tokio::time::sleep(ttl / 4).await;
        }
        all
    };
    let surplus = changes
        .iter()
        .filter(|(_, c)| matches!(c, Change::Surplus { .. }))
        .count();
    assert_eq!(surplus, 2, "a and b each gave one back: {changes:?}");

    // a leaves: b and c take its partitions at once, without waiting for expiry.
    a.leave().await;
    let left = settle(&mut [&mut b, &mut c], ttl).await;
    assert!(left < ttl, "taken {left:?} after a left");
    assert_eq!(counts(&[&mut b, &mut c]), [4, 4]);
}

/// An engine cut off from the bucket for longer than the leases live learns, at its first
/// round back, that it lost every partition it held, even though the rest of that round
/// (writing its membership) fails too.
#[tokio::test]
async fn partitions_lost_while_the_bucket_was_unreachable_are_reported() {
    let mut nats = NatsServer::start();
    let bus = Bus::connect(&nats.url(), "e0").await.unwrap();
    let ttl = Duration::from_secs(1);
    let leases = Leases::open(&bus, ttl).await.unwrap();
    let mut shares = Shares::new(leases, "partition", 2, holder("e0"));
    let gained = shares.round().await.unwrap();
    assert_eq!(gained.len(), 2, "{gained:?}");
    nats.kill();
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let changes = shares
        .round()
        .await
        .expect("the lost partitions are reported, not an error");
    let lost: BTreeSet<u32> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Lost { partition, .. } => Some(*partition),
            _ => None,
        })
        .collect();
    assert_eq!(lost, BTreeSet::from([0, 1]), "{changes:?}");
    assert!(shares.held().is_empty());
    nats.restart();
}
