//! What signing and checking run messages costs: the engine's signature of each run
//! message, and a worker's check of it, alone (the baseline) and in groups of the sizes a
//! worker's pull hands over together, through the same calls the engine and the workers
//! make.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use sluice_bus::{RunSigner, names::SIGNATURE_HEADER};

/// The group sizes measured beside checking each message alone.
const GROUPS: [usize; 5] = [2, 4, 8, 16, 64];

pub fn run(messages: usize) -> anyhow::Result<()> {
    let messages = messages.max(64);
    let signer = RunSigner::generate()?;
    let verifier = signer.verifier();
    // About the size of a noop action's run message with its trace context.
    let payloads: Vec<Vec<u8>> = (0..messages)
        .map(|i| {
            let mut payload = format!("run message {i} ").into_bytes();
            payload.resize(400, b'x');
            payload
        })
        .collect();

    let started = Instant::now();
    let headers: Vec<HeaderMap> = payloads
        .iter()
        .map(|payload| {
            let mut headers = HeaderMap::new();
            headers.insert(SIGNATURE_HEADER, signer.sign(payload).as_str());
            headers
        })
        .collect();
    let signing = started.elapsed();
    let signed: Vec<_> = headers
        .iter()
        .zip(&payloads)
        .map(|(headers, payload)| (Some(headers), &payload[..]))
        .collect();

    let check = |group: usize| -> anyhow::Result<Duration> {
        let started = Instant::now();
        for chunk in signed.chunks(group) {
            let outcomes = verifier.verify_all(chunk);
            anyhow::ensure!(
                outcomes.iter().all(Result::is_ok),
                "a signed message was refused: {outcomes:?}"
            );
        }
        Ok(started.elapsed())
    };
    let alone = check(1)?;
    let each = |d: Duration| d.as_secs_f64() * 1e6 / messages as f64;

    println!("scenario: signatures ({messages} run messages of 400 bytes, Ed25519)");
    println!("  signing, each                 {:>8.1} µs", each(signing));
    println!("  baseline: checking each alone {:>8.1} µs", each(alone));
    for group in GROUPS {
        let together = check(group)?;
        println!(
            "  checking in groups of {group:<3}     {:>8.1} µs each  ({:.2}x alone)",
            each(together),
            together.as_secs_f64() / alone.as_secs_f64()
        );
    }
    Ok(())
}
