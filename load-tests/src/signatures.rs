//! What signing and checking run messages costs: the engine's signature of each run
//! message, and a worker's check of it, through the same calls the engine and the workers
//! make. The baseline signs and checks each message alone (`ed25519`); against it, messages
//! signed together in groups of the sizes a busy engine publishes at once
//! (`ed25519-tree`), checked in pulls of the same size.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use futures::future::join_all;
use sluice_bus::{RunSigner, names::SIGNATURE_HEADER};

/// The group sizes measured beside signing and checking each message alone.
const GROUPS: [usize; 6] = [1, 2, 4, 8, 16, 64];

pub async fn run(messages: usize) -> anyhow::Result<()> {
    let messages = messages.max(64);
    let signer = RunSigner::generate()?;
    // About the size of a noop action's run message with its trace context.
    let payloads: Vec<Vec<u8>> = (0..messages)
        .map(|i| {
            let mut payload = format!("run message {i} ").into_bytes();
            payload.resize(400, b'x');
            payload
        })
        .collect();
    let each = |d: Duration| d.as_secs_f64() * 1e6 / messages as f64;
    let with_header = |value: String| {
        let mut headers = HeaderMap::new();
        headers.insert(SIGNATURE_HEADER, value.as_str());
        headers
    };
    // Checks every message in pulls of `pull`, with one verifier as a worker holds it.
    let check = |headers: &[HeaderMap], pull: usize| -> anyhow::Result<Duration> {
        let verifier = signer.verifier();
        let signed: Vec<_> = headers
            .iter()
            .zip(&payloads)
            .map(|(headers, payload)| (Some(headers), &payload[..]))
            .collect();
        let started = Instant::now();
        for chunk in signed.chunks(pull) {
            let outcomes = verifier.verify_all(chunk);
            anyhow::ensure!(
                outcomes.iter().all(Result::is_ok),
                "a signed message was refused: {outcomes:?}"
            );
        }
        Ok(started.elapsed())
    };

    let started = Instant::now();
    let alone: Vec<HeaderMap> = payloads
        .iter()
        .map(|payload| with_header(signer.sign(payload)))
        .collect();
    let signing_alone = started.elapsed();
    let checking_alone = check(&alone, 1)?;

    println!("scenario: signatures ({messages} run messages of 400 bytes, Ed25519)");
    println!(
        "  baseline, each alone (ed25519):   signing {:>6.1} µs   checking {:>6.1} µs",
        each(signing_alone),
        each(checking_alone)
    );
    for group in GROUPS {
        let started = Instant::now();
        let mut together = Vec::with_capacity(messages);
        for chunk in payloads.chunks(group) {
            let signed = join_all(chunk.iter().map(|p| signer.sign_together(p))).await;
            together.extend(signed.into_iter().map(with_header));
        }
        let signing = started.elapsed();
        let checking = check(&together, group)?;
        println!(
            "  in groups of {group:<3} (ed25519-tree):  signing {:>6.1} µs   checking {:>6.1} µs   ({:.2}x and {:.2}x alone)",
            each(signing),
            each(checking),
            signing.as_secs_f64() / signing_alone.as_secs_f64(),
            checking.as_secs_f64() / checking_alone.as_secs_f64(),
        );
    }
    Ok(())
}
