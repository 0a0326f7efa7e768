//! The stream and consumer definitions in `streams/`, compiled into the binary so a
//! deployment cannot drift from the code that reads the streams.

use async_nats::jetstream::{consumer, stream};

pub struct ConsumerDef {
    pub config: consumer::pull::Config,
}

pub struct StreamDef {
    pub stream: stream::Config,
    pub consumers: Vec<ConsumerDef>,
}

/// A file under `streams/`: its path and its text.
type File = (&'static str, &'static str);

const FILES: &[(&str, &str, &[File])] = &[
    (
        "TRIGGERS/stream.json",
        include_str!("../../../streams/TRIGGERS/stream.json"),
        &[(
            "TRIGGERS/consumers/engine.json",
            include_str!("../../../streams/TRIGGERS/consumers/engine.json"),
        )],
    ),
    (
        "RUN/stream.json",
        include_str!("../../../streams/RUN/stream.json"),
        &[(
            "RUN/consumers/workers.json",
            include_str!("../../../streams/RUN/consumers/workers.json"),
        )],
    ),
    (
        "CONTROL/stream.json",
        include_str!("../../../streams/CONTROL/stream.json"),
        &[],
    ),
    (
        "OUTPUT/stream.json",
        include_str!("../../../streams/OUTPUT/stream.json"),
        &[],
    ),
    (
        "DEADLETTER/stream.json",
        include_str!("../../../streams/DEADLETTER/stream.json"),
        &[(
            "DEADLETTER/consumers/engine.json",
            include_str!("../../../streams/DEADLETTER/consumers/engine.json"),
        )],
    ),
    (
        "STATUS/stream.json",
        include_str!("../../../streams/STATUS/stream.json"),
        &[(
            "STATUS/consumers/engine.json",
            include_str!("../../../streams/STATUS/consumers/engine.json"),
        )],
    ),
];

/// Every stream with its consumers. The JSON is the NATS server's own format; a file that
/// does not parse is a build defect, caught by this crate's tests.
pub fn definitions() -> Vec<StreamDef> {
    FILES
        .iter()
        .map(|(file, json, consumers)| StreamDef {
            stream: serde_json::from_str(json).unwrap_or_else(|e| panic!("streams/{file}: {e}")),
            consumers: consumers
                .iter()
                .map(|(file, json)| ConsumerDef {
                    config: serde_json::from_str(json)
                        .unwrap_or_else(|e| panic!("streams/{file}: {e}")),
                })
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::names;

    #[test]
    fn definitions_parse_with_server_field_names() {
        let defs = definitions();
        let names: Vec<_> = defs.iter().map(|d| d.stream.name.as_str()).collect();
        assert_eq!(
            names,
            [
                names::TRIGGERS,
                names::RUN,
                names::CONTROL,
                names::OUTPUT,
                names::DEADLETTER,
                names::STATUS
            ]
        );
        assert_eq!(defs[1].stream.retention, stream::RetentionPolicy::WorkQueue);
        assert_eq!(defs[0].stream.duplicate_window, Duration::from_secs(120));
        let engine = &defs[0].consumers[0].config;
        assert!(
            defs[2].consumers.is_empty(),
            "workers hear cancel requests by subscribing; nothing consumes them"
        );
        assert_eq!(engine.durable_name.as_deref(), Some(names::ENGINE_CONSUMER));
        assert_eq!(engine.ack_policy, consumer::AckPolicy::Explicit);
        assert_eq!(engine.ack_wait, Duration::from_secs(5));
    }

    #[test]
    fn every_consumer_gives_up_after_a_bounded_number_of_deliveries() {
        for def in definitions() {
            for c in &def.consumers {
                let name = format!("{}/{:?}", def.stream.name, c.config.durable_name);
                assert!(c.config.max_deliver > 1, "{name} has unbounded max_deliver");
                // The naks' backoff over every delivery bounds how long a store or NATS
                // outage can last before a message is dead-lettered.
                let patience: Duration = (1..c.config.max_deliver as u64)
                    .map(crate::settle::backoff)
                    .sum();
                assert!(
                    patience >= Duration::from_secs(5 * 60),
                    "{name} gives up after {patience:?}"
                );
            }
        }
    }

    #[test]
    fn no_consumer_reads_what_another_stream_captures() {
        // A consumer's filter must stay inside its own stream's subjects, so nothing Sluice
        // publishes can loop back into the stream it was read from.
        for def in definitions() {
            let prefix = def.stream.subjects[0].trim_end_matches('>');
            for c in &def.consumers {
                assert!(
                    c.config.filter_subject.starts_with(prefix),
                    "{} reads {}",
                    def.stream.name,
                    c.config.filter_subject
                );
            }
        }
    }
}
