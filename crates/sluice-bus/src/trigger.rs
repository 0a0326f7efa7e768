//! Reading trigger messages as anyone may publish them.

use serde_json::Value;
use sluice_core::MSGPACK_CONTENT_TYPE;

use crate::subjects::TRIGGER_PREFIX;

/// A trigger message read from the TRIGGERS stream.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerMessage {
    /// `pack.name`, from the subject.
    pub trigger: String,
    pub payload: Value,
}

/// Decodes a trigger message: the subject names the trigger, the payload is JSON (what
/// `nats pub` sends) or MessagePack with `Content-Type: application/msgpack`. The error
/// says what is wrong, to be stored with the rejected event.
pub fn decode_trigger(
    subject: &str,
    content_type: Option<&str>,
    payload: &[u8],
) -> Result<TriggerMessage, String> {
    let trigger = subject
        .strip_prefix(TRIGGER_PREFIX)
        // `<pack>.<name>`, the name possibly dotted as StackStorm's built-in triggers are
        // (`core.st2.webhook`).
        .filter(|t| t.split('.').count() >= 2 && t.split('.').all(|p| !p.is_empty()))
        .ok_or_else(|| format!("subject {subject:?} is not {TRIGGER_PREFIX}<pack>.<name>"))?
        .to_owned();
    let payload = if content_type.is_some_and(|c| c.eq_ignore_ascii_case(MSGPACK_CONTENT_TYPE)) {
        rmp_serde_decode(payload).map_err(|e| format!("payload is not valid MessagePack: {e}"))?
    } else if payload.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Default::default())
    } else {
        sluice_core::bounded::from_json(payload).map_err(|e| {
            format!("payload is not valid JSON ({e}); send JSON, or MessagePack with the header Content-Type: {MSGPACK_CONTENT_TYPE}")
        })?
    };
    if !payload.is_object() {
        return Err(format!(
            "payload must be a JSON object, found {}",
            kind(&payload)
        ));
    }
    Ok(TriggerMessage { trigger, payload })
}

fn rmp_serde_decode(bytes: &[u8]) -> Result<Value, String> {
    sluice_core::bounded::from_msgpack(bytes)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn json_and_msgpack_payloads() {
        let m =
            decode_trigger("sluice.trigger.examples.alert", None, br#"{"host":"db1"}"#).unwrap();
        assert_eq!(
            m,
            TriggerMessage {
                trigger: "examples.alert".into(),
                payload: json!({"host": "db1"})
            }
        );
        let packed = sluice_core::encode(&json!({"host": "db2"})).unwrap();
        let m = decode_trigger(
            "sluice.trigger.examples.alert",
            Some("application/msgpack"),
            &packed,
        )
        .unwrap();
        assert_eq!(m.payload, json!({"host": "db2"}));
        let m = decode_trigger("sluice.trigger.examples.alert", None, b"").unwrap();
        assert_eq!(m.payload, json!({}), "an empty publish is an empty payload");
    }

    #[test]
    fn bad_payloads_say_what_is_wrong() {
        let err = decode_trigger("sluice.trigger.examples.alert", None, b"not json").unwrap_err();
        assert!(err.contains("payload is not valid JSON"), "{err}");
        let err = decode_trigger("sluice.trigger.examples.alert", None, b"[1,2]").unwrap_err();
        assert!(
            err.contains("must be a JSON object, found an array"),
            "{err}"
        );
        let err = decode_trigger(
            "sluice.trigger.examples.alert",
            Some("application/msgpack"),
            b"\xc1",
        )
        .unwrap_err();
        assert!(err.contains("not valid MessagePack"), "{err}");
        let err = decode_trigger("sluice.trigger.alert", None, b"{}").unwrap_err();
        assert!(err.contains("is not sluice.trigger.<pack>.<name>"), "{err}");
    }
}
