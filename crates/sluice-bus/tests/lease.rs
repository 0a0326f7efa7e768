//! The engine lease against a real nats-server: one holder at a time, renewals keep it,
//! an unrenewed lease expires and the next holder's fencing token is higher.

use std::time::{Duration, Instant};

use sluice_bus::Bus;
use sluice_bus::lease::{ENGINE_LEASE, Holder, LeaseEnd, Leases};
use sluice_testkit::NatsServer;

fn holder(engine: &str) -> Holder {
    Holder {
        engine: engine.into(),
        api_url: Some(format!("http://{engine}:8080")),
        since: chrono::Utc::now(),
    }
}

#[tokio::test]
async fn one_engine_holds_the_lease_until_it_stops_renewing_and_the_next_token_is_higher() {
    let nats = NatsServer::start();
    let bus = Bus::attach(&nats.url(), "test", &Default::default())
        .await
        .unwrap();
    let ttl = Duration::from_secs(2);
    let leases = Leases::open(&bus, ttl).await.unwrap();

    let mut a = leases
        .try_acquire(ENGINE_LEASE, &holder("a"))
        .await
        .unwrap()
        .expect("a free lease is taken");
    assert!(
        leases
            .try_acquire(ENGINE_LEASE, &holder("b"))
            .await
            .unwrap()
            .is_none(),
        "a held lease is not taken"
    );
    assert_eq!(
        leases.holder(ENGINE_LEASE).await.unwrap().unwrap().engine,
        "a"
    );
    // Renewed past its first lifetime, it is still a's.
    for _ in 0..6 {
        tokio::time::sleep(ttl / 4).await;
        a.renew().await.unwrap();
    }
    assert!(
        leases
            .try_acquire(ENGINE_LEASE, &holder("b"))
            .await
            .unwrap()
            .is_none(),
        "a renewed lease is not taken"
    );

    // a stops renewing (paused): b takes it once it expired, with a higher token.
    let stopped = Instant::now();
    let b = leases
        .acquire(
            ENGINE_LEASE,
            &holder("b"),
            Duration::from_millis(100),
            |_| {},
        )
        .await;
    let waited = stopped.elapsed();
    assert!(
        waited >= ttl - Duration::from_millis(600),
        "taken after {waited:?}, before the lease could expire"
    );
    assert!(b.token() > a.token(), "{} > {}", b.token(), a.token());
    assert_eq!(
        a.renew().await,
        Err(Some(LeaseEnd::Taken)),
        "the paused holder learns it lost the lease"
    );

    // b gives it back on shutdown: c takes it at once.
    let b_token = b.token();
    let end = b.keep(async {}).await;
    assert_eq!(end, LeaseEnd::Released);
    let c = leases
        .try_acquire(ENGINE_LEASE, &holder("c"))
        .await
        .unwrap()
        .expect("a released lease is free at once");
    assert!(c.token() > b_token);
}
