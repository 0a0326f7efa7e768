//! The machine's own limit, measured in the same run as every scenario against the same
//! nats-server: what JetStream alone does, without Sluice.
//!
//! - **Round trip:** publish → pull consumer → publish a reply → pull consumer, one at a
//!   time: the two hops every execution makes at the least (run message out, report back).
//!   Back to back, and, for a scenario at a fixed rate, also spaced at that rate: a round
//!   trip that starts on an idle machine wakes every process and core on its way, as each
//!   of the scenario's trips does, and takes longer than one that follows another at once.
//! - **Throughput:** pipelined publishes with bounded in-flight acks, consumed and acked by a
//!   pull consumer at the same time.

use std::future::IntoFuture as _;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer, stream};
use bytes::Bytes;
use futures::StreamExt;

use crate::report::Percentiles;

pub struct Baseline {
    /// Round trips back to back.
    pub roundtrip: Percentiles,
    /// Round trips at the scenario's rate, when it has one: (per second, their times).
    pub paced: Option<(u64, Percentiles)>,
    pub msgs_per_s: f64,
}

/// How long the round trips at a scenario's rate are measured for, at most.
const PACED_FOR: Duration = Duration::from_secs(5);

async fn stream_with_consumer(
    js: &jetstream::Context,
    name: &str,
    subject: &str,
) -> anyhow::Result<PullConsumer> {
    let stream = js
        .get_or_create_stream(stream::Config {
            name: name.to_owned(),
            subjects: vec![subject.to_owned()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("stream {name}: {e}"))?;
    stream
        .get_or_create_consumer(
            "bench",
            jetstream::consumer::pull::Config {
                durable_name: Some("bench".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("consumer on {name}: {e}"))
}

/// `roundtrips` round trips back to back, then, with `rate`, as many as [`PACED_FOR`] holds
/// at `rate` a second (at most `roundtrips`); `messages` publishes pipelined.
pub async fn measure(
    nats_url: &str,
    roundtrips: u64,
    messages: u64,
    rate: Option<u64>,
) -> anyhow::Result<Baseline> {
    let client =
        sluice_bus::connect_client(nats_url, "sluice-load-baseline", &Default::default()).await?;
    let js = jetstream::ContextBuilder::new()
        .max_ack_inflight(10_000)
        .backpressure_on_inflight(true)
        .build(client);

    // Two hops, one message at a time.
    let requests = stream_with_consumer(&js, "BENCH_REQ", "bench.req").await?;
    let replies = stream_with_consumer(&js, "BENCH_REP", "bench.rep").await?;
    let echo_js = js.clone();
    let echo = tokio::spawn(async move {
        let mut messages = requests.messages().await?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
            echo_js
                .publish("bench.rep", message.payload.clone())
                .await?
                .await?;
            message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        anyhow::Ok(())
    });
    let mut replies = replies.messages().await?;
    let payload = Bytes::from(vec![b'x'; 256]);
    let mut round_trips = async |count: u64, every: Option<Duration>| {
        let mut histogram = crate::report::histogram();
        let mut ticks = every.map(|every| {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks
        });
        for i in 0..count + 100 {
            if let Some(ticks) = ticks.as_mut() {
                ticks.tick().await;
            }
            let started = Instant::now();
            js.publish("bench.req", payload.clone()).await?.await?;
            let reply = replies
                .next()
                .await
                .ok_or_else(|| anyhow::anyhow!("reply stream ended"))?
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            reply.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            if i >= 100 {
                // The first hundred warm the connection and the consumers up.
                crate::report::record(&mut histogram, started.elapsed());
            }
        }
        anyhow::Ok(Percentiles::of(&histogram))
    };
    let roundtrip = round_trips(roundtrips, None).await?;
    let paced = match rate {
        Some(rate) => {
            let rate = rate.max(1);
            let count = (PACED_FOR.as_secs() * rate).min(roundtrips);
            let every = Duration::from_secs_f64(1.0 / rate as f64);
            Some((rate, round_trips(count, Some(every)).await?))
        }
        None => None,
    };
    echo.abort();

    // Pipelined: publish with bounded in-flight acks while a consumer drains.
    let drain = stream_with_consumer(&js, "BENCH_TPUT", "bench.tput").await?;
    let started = Instant::now();
    let total = messages;
    let consumer = tokio::spawn(async move {
        let mut stream = drain.messages().await?;
        let mut seen = 0;
        while seen < total {
            let Some(message) = stream.next().await else {
                break;
            };
            let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
            message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            seen += 1;
        }
        anyhow::Ok(seen)
    });
    let mut acks = futures::stream::FuturesUnordered::new();
    for _ in 0..messages {
        acks.push(
            js.publish("bench.tput", payload.clone())
                .await?
                .into_future(),
        );
        while acks.len() >= 2_000 {
            if let Some(ack) = acks.next().await {
                ack?;
            }
        }
    }
    while let Some(ack) = acks.next().await {
        ack?;
    }
    let consumed = tokio::time::timeout(Duration::from_secs(120), consumer).await???;
    let elapsed = started.elapsed();
    anyhow::ensure!(consumed == messages, "consumed {consumed} of {messages}");
    for name in ["BENCH_REQ", "BENCH_REP", "BENCH_TPUT"] {
        let _ = js.delete_stream(name).await;
    }
    Ok(Baseline {
        roundtrip,
        paced,
        msgs_per_s: messages as f64 / elapsed.as_secs_f64(),
    })
}
