//! StackStorm's `action_service` for python actions: the datastore, reached through the
//! worker.
//!
//! The worker listens on a Unix socket in the run's private directory (mode 0700) while
//! the action runs; Sluice's wrapper connects to it and sends one JSON request per line
//! (`get_value`, `set_value`, `delete_value`, `list_values`, with StackStorm's arguments).
//! The worker asks an engine over NATS ([`SERVICE_SUBJECT`]) and answers on the same line
//! discipline. A secret travels sealed between worker and engine: the worker seals what an
//! action writes with `encrypt=True` and opens what it reads with `decrypt=True`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_bus::Bus;
use sluice_core::ExecutionId;
use sluice_core::datastore::{
    KeyName, SERVICE_SUBJECT, ServiceEntry, ServiceOp, ServiceReply, ServiceRequest,
};
use sluice_core::secrets::Keyring;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::task::JoinHandle;
use tracing::debug;

/// How long an engine has to answer one request.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// The datastore as a worker's actions reach it.
#[derive(Clone)]
pub struct ActionService {
    bus: Bus,
    keyring: Arc<Keyring>,
    worker: String,
}

impl std::fmt::Debug for ActionService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionService")
            .field("worker", &self.worker)
            .finish()
    }
}

/// Who a connection serves.
#[derive(Clone)]
struct Caller {
    /// For the log: `worker/w1, execution 12`, `sensor mon.Poller`.
    name: String,
    pack: String,
    /// A sensor's reference: it may also dispatch triggers.
    sensor: Option<String>,
}

impl ActionService {
    pub fn new(bus: Bus, keyring: Arc<Keyring>, worker: String) -> Self {
        Self {
            bus,
            keyring,
            worker,
        }
    }

    /// Serves execution `execution` of pack `pack` on a socket at `path` until the handle
    /// is aborted.
    pub(crate) fn listen(
        &self,
        path: &Path,
        execution: ExecutionId,
        pack: &str,
    ) -> std::io::Result<JoinHandle<()>> {
        let caller = Caller {
            name: format!("{}, execution {execution}", self.worker),
            pack: pack.to_owned(),
            sensor: None,
        };
        self.serve(path, caller)
    }

    /// Serves sensor `sensor` of pack `pack` on a socket at `path`, dispatches included,
    /// until the handle is aborted.
    pub(crate) fn listen_for_sensor(
        &self,
        path: &Path,
        sensor: &str,
        pack: &str,
    ) -> std::io::Result<JoinHandle<()>> {
        let caller = Caller {
            name: format!("sensor {sensor}"),
            pack: pack.to_owned(),
            sensor: Some(sensor.to_owned()),
        };
        self.serve(path, caller)
    }

    fn serve(&self, path: &Path, caller: Caller) -> std::io::Result<JoinHandle<()>> {
        let listener = UnixListener::bind(path)?;
        let service = self.clone();
        Ok(tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (service, caller) = (service.clone(), caller.clone());
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let answer = match service.answer(&caller, &line).await {
                            Ok(result) => json!({ "result": result }),
                            Err(error) => json!({ "error": error }),
                        };
                        let mut text = answer.to_string();
                        text.push('\n');
                        if write.write_all(text.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }))
    }

    /// One request line of the wrapper, answered.
    async fn answer(&self, caller: &Caller, line: &str) -> Result<Value, String> {
        let request: Value =
            serde_json::from_str(line).map_err(|e| format!("unreadable request: {e}"))?;
        let text = |name: &str| request.get(name).and_then(Value::as_str);
        let flag = |name: &str, default: bool| {
            request
                .get(name)
                .and_then(Value::as_bool)
                .unwrap_or(default)
        };
        match text("scope").unwrap_or("system") {
            "system" | "st2kv.system" => {}
            other => {
                return Err(format!(
                    "datastore scope {other:?} is not supported: keys are system or the pack's own (local=True)"
                ));
            }
        }
        let local = flag("local", true);
        let key = |name: &str| {
            if local {
                KeyName::pack(&caller.pack, name)
            } else {
                KeyName::system(name)
            }
            .map(|k| k.to_string())
            .map_err(|e| e.to_string())
        };
        let name = || text("name").ok_or("a key name is needed".to_owned());
        if text("op") == Some("dispatch") {
            return self.dispatch(caller, &request).await;
        }
        let op = match text("op").unwrap_or_default() {
            "get_value" => ServiceOp::Get { key: key(name()?)? },
            "set_value" => {
                let value = request.get("value").cloned().unwrap_or(Value::Null);
                let secret = flag("encrypt", false);
                let value = if secret {
                    Value::String(self.keyring.seal(&value).map_err(|e| e.to_string())?)
                } else {
                    value
                };
                ServiceOp::Set {
                    key: key(name()?)?,
                    value,
                    secret,
                    ttl_secs: request.get("ttl").and_then(Value::as_u64),
                }
            }
            "delete_value" => ServiceOp::Delete { key: key(name()?)? },
            "list_values" => {
                let prefix = text("prefix").unwrap_or_default();
                ServiceOp::List {
                    prefix: if local {
                        format!("pack.{}.{prefix}", caller.pack)
                    } else {
                        format!("system.{prefix}")
                    },
                }
            }
            other => return Err(format!("unknown datastore operation {other:?}")),
        };
        debug!(caller = caller.name, "datastore request");
        let decrypt = flag("decrypt", false);
        match self.ask(caller, op).await? {
            ServiceReply::Entry(None) => Ok(Value::Null),
            ServiceReply::Entry(Some(entry)) => {
                self.shown(entry, decrypt).map(|mut e| e["value"].take())
            }
            ServiceReply::Done(done) => Ok(Value::Bool(done)),
            ServiceReply::Entries(entries) => entries
                .into_iter()
                .map(|entry| self.shown(entry, false))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            ServiceReply::Error(error) => Err(error),
        }
    }

    /// An entry as the action gets it: its name within its scope, a secret opened only when
    /// asked to.
    fn shown(&self, entry: ServiceEntry, decrypt: bool) -> Result<Value, String> {
        let name = entry
            .key
            .parse::<KeyName>()
            .map(|k| k.name)
            .unwrap_or(entry.key);
        let value = match (&entry.value, entry.secret && decrypt) {
            (Value::String(sealed), true) => self
                .keyring
                .unseal(sealed)
                .map_err(|e| format!("cannot open the secret {name}: {e} (--secrets-key)"))?,
            (value, _) => value.clone(),
        };
        Ok(json!({ "name": name, "value": value, "secret": entry.secret }))
    }

    /// A sensor's `dispatch(trigger, payload, trace_tag)`: the trigger published to
    /// TRIGGERS, acknowledged by JetStream before the sensor hears it went out. With a
    /// trace tag, the same tag dispatched again (a sensor restarted mid-poll) is stored
    /// once.
    async fn dispatch(&self, caller: &Caller, request: &Value) -> Result<Value, String> {
        let Some(sensor) = &caller.sensor else {
            return Err("only a sensor dispatches triggers".into());
        };
        let trigger = request
            .get("trigger")
            .and_then(Value::as_str)
            .ok_or("dispatch needs a trigger reference (pack.name)")?;
        let payload = match request.get("payload") {
            None | Some(Value::Null) => json!({}),
            Some(payload @ Value::Object(_)) => payload.clone(),
            Some(_) => return Err("a trigger's payload must be a dict".into()),
        };
        let msg_id = request
            .get("trace_tag")
            .and_then(Value::as_str)
            .map(|tag| format!("sensor.{sensor}.{tag}"));
        let bytes = serde_json::to_vec(&payload).map_err(|e| e.to_string())?;
        let (_, duplicate) = self
            .bus
            .publish_trigger(trigger, bytes, msg_id.as_deref())
            .await
            .map_err(|e| format!("the trigger could not be published: {e}"))?;
        debug!(sensor, trigger, duplicate, "sensor dispatched a trigger");
        Ok(Value::Bool(!duplicate))
    }

    async fn ask(&self, caller: &Caller, op: ServiceOp) -> Result<ServiceReply, String> {
        let request = ServiceRequest {
            caller: caller.name.clone(),
            op,
        };
        let payload = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
        let answer = tokio::time::timeout(
            ANSWER_WITHIN,
            self.bus.client().request(SERVICE_SUBJECT, payload.into()),
        )
        .await
        .map_err(|_| format!("no engine answered within {} s", ANSWER_WITHIN.as_secs()))?
        .map_err(|e| format!("no engine answered: {e}"))?;
        serde_json::from_slice(&answer.payload).map_err(|e| format!("unreadable answer: {e}"))
    }
}
