//! The engine's timings, in one place because they depend on each other and on the
//! consumers' `ack_wait` in `streams/`.

use std::time::Duration;

/// How long an actor waits before it tries a store write, or a publish, that failed for a
/// passing reason again.
pub(crate) const STORE_RETRY: Duration = Duration::from_secs(1);

/// The longest the consumers leave the store alone after a transient failure. It must stay
/// within the engine consumers' `ack_wait`, so a message held back in a batch meanwhile is
/// handed back (nak) before JetStream would redeliver it on its own.
pub(crate) const MAX_STORE_REST: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_rest_ends_within_every_engine_consumer_s_ack_wait() {
        for def in sluice_bus::definitions() {
            for consumer in def.consumers.iter().filter(|c| {
                c.config.durable_name.as_deref() == Some(sluice_bus::names::ENGINE_CONSUMER)
            }) {
                assert!(
                    MAX_STORE_REST <= consumer.config.ack_wait,
                    "{}: ack_wait {:?} is shorter than the store rest",
                    def.stream.name,
                    consumer.config.ack_wait
                );
            }
        }
    }
}
