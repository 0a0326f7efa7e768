//! Admission throughput of one action: the gate alone, and the gate behind an actor mailbox
//! as the supervisor holds it, against a no-op ractor actor receiving the same number of
//! messages (the baseline: what the actor runtime itself costs).

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sluice_core::ExecutionId;
use sluice_engine::gate::{Gate, GatePolicy, Instant, Next};

enum Msg {
    Offer(i64),
    Release(i64),
    Count(RpcReplyPort<u64>),
}

/// The supervisor's in-memory work for one admission and one release: offer, admit (FIFO,
/// limit 3), release, admit the next.
struct GateActor;

impl Actor for GateActor {
    type Msg = Msg;
    type State = (Gate<()>, u64);
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<Msg>, _: ()) -> Result<Self::State, ActorProcessingErr> {
        Ok((
            Gate::new(GatePolicy {
                max_concurrent: Some(3),
                ..Default::default()
            }),
            0,
        ))
    }

    async fn handle(
        &self,
        _: ActorRef<Msg>,
        message: Msg,
        (gate, admitted): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            Msg::Offer(id) => {
                let _ = gate.offer(ExecutionId(id), String::new(), (), Instant::now());
            }
            Msg::Release(id) => {
                gate.release(ExecutionId(id));
            }
            Msg::Count(reply) => {
                let _ = reply.send(*admitted);
                return Ok(());
            }
        }
        while let Next::Admit(..) = gate.next(Instant::now()) {
            *admitted += 1;
        }
        Ok(())
    }
}

struct NoopActor;

impl Actor for NoopActor {
    type Msg = Msg;
    type State = u64;
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<Msg>, _: ()) -> Result<u64, ActorProcessingErr> {
        Ok(0)
    }

    async fn handle(
        &self,
        _: ActorRef<Msg>,
        message: Msg,
        seen: &mut u64,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            Msg::Count(reply) => {
                let _ = reply.send(*seen);
            }
            _ => *seen += 1,
        }
        Ok(())
    }
}

/// Sends `n` offers and `n` releases (ids in order, so releases free the oldest slot) and
/// waits until the actor has handled them all.
async fn drive(actor: &ActorRef<Msg>, n: u64) -> Duration {
    let started = Instant::now();
    let n = n as i64;
    for id in 1..=n {
        actor.send_message(Msg::Offer(id)).expect("actor alive");
        if id > 3 {
            actor
                .send_message(Msg::Release(id - 3))
                .expect("actor alive");
        }
    }
    for id in (n - 2).max(1)..=n {
        actor.send_message(Msg::Release(id)).expect("actor alive");
    }
    let _ = ractor::call!(actor, Msg::Count);
    started.elapsed()
}

pub async fn run(operations: u64) -> anyhow::Result<()> {
    // Baseline: the same 2n messages into an actor that does nothing.
    let (noop, _) = Actor::spawn(None, NoopActor, ()).await?;
    let baseline = drive(&noop, operations).await;
    noop.stop(None);

    let (gate_actor, _) = Actor::spawn(None, GateActor, ()).await?;
    let through_actor = drive(&gate_actor, operations).await;
    let admitted = ractor::call!(gate_actor, Msg::Count)?;
    gate_actor.stop(None);
    anyhow::ensure!(
        admitted == operations,
        "admitted {admitted} of {operations}"
    );

    let mut gate = Gate::new(GatePolicy {
        max_concurrent: Some(3),
        ..Default::default()
    });
    let started = Instant::now();
    let mut pure = 0u64;
    for id in 1..=operations as i64 {
        let now = Instant::now();
        let _ = gate.offer(ExecutionId(id), String::new(), (), now);
        if let Next::Admit(admitted, ()) = gate.next(now) {
            gate.release(admitted);
            pure += 1;
        }
    }
    let gate_only = started.elapsed();
    anyhow::ensure!(pure == operations, "gate admitted {pure} of {operations}");

    let rate = |d: Duration| operations as f64 / d.as_secs_f64();
    println!("scenario: gate ({operations} admit + release operations, max_concurrent 3)");
    println!(
        "  baseline: raw ractor messaging      {:>12.0} message pairs/s",
        rate(baseline)
    );
    println!(
        "  gate behind the supervisor mailbox  {:>12.0} admit+release/s  ({:.2}x baseline)",
        rate(through_actor),
        baseline.as_secs_f64() / through_actor.as_secs_f64()
    );
    println!(
        "  gate alone                          {:>12.0} admit+release/s",
        rate(gate_only)
    );
    Ok(())
}
