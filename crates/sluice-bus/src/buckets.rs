//! Object stores Sluice keeps in JetStream: their streams are declared directly, as an
//! object store's would be, so servers from 2.9 on take them.

use std::time::Duration;

use async_nats::jetstream::object_store::{self, ObjectStore};
use async_nats::jetstream::stream;
use tokio::io::AsyncReadExt as _;

use crate::Bus;
use crate::error::BusError;

/// The object store `bucket`, created if missing (the engine). Objects older than `max_age`
/// are dropped (zero: kept until deleted).
pub(crate) async fn create(
    bus: &Bus,
    bucket: &str,
    description: &str,
    max_age: Duration,
) -> Result<ObjectStore, BusError> {
    let js = bus.jetstream();
    let what = || format!("the {bucket} object store");
    match js.get_stream(format!("OBJ_{bucket}")).await {
        Ok(stream) => {
            // A stream declared by an earlier engine kept one message per subject, and so
            // only the last chunk of an object of several chunks: let it keep every chunk.
            let mut config = stream.cached_info().config.clone();
            if config.max_messages_per_subject == 1 {
                config.max_messages_per_subject = -1;
                js.update_stream(config)
                    .await
                    .map_err(|e| BusError::setup(what(), e))?;
            }
        }
        Err(_) => {
            // An object's chunks share one subject, so the stream keeps every message of a
            // subject; rolling up the metadata subject is what replaces an object.
            js.get_or_create_stream(stream::Config {
                name: format!("OBJ_{bucket}"),
                description: Some(description.into()),
                subjects: vec![format!("$O.{bucket}.C.>"), format!("$O.{bucket}.M.>")],
                max_age,
                allow_rollup: true,
                allow_direct: true,
                discard: stream::DiscardPolicy::New,
                num_replicas: bus.stream_replicas(),
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::setup(what(), e))?;
        }
    }
    js.get_object_store(bucket)
        .await
        .map_err(|e| BusError::setup(what(), e))
}

/// The object store `bucket` the engine made (a worker).
pub(crate) async fn open(bus: &Bus, bucket: &str) -> Result<ObjectStore, BusError> {
    bus.jetstream().get_object_store(bucket).await.map_err(|e| {
        BusError::setup(
            format!("the {bucket} object store (the engine creates it)"),
            e,
        )
    })
}

/// A write to `bucket` that failed; worth trying again.
pub(crate) fn write_error(
    bucket: &str,
    name: &str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> BusError {
    BusError::Publish {
        subject: format!("{bucket}/{name}"),
        source: e.into(),
        transient: true,
    }
}

/// The object `name` of `bucket`, read whole; `None` if the bucket does not hold it.
pub(crate) async fn fetch(
    store: &ObjectStore,
    bucket: &str,
    name: &str,
) -> Result<Option<Vec<u8>>, BusError> {
    let what = || format!("{bucket}/{name}");
    let mut object = match store.get(name).await {
        Ok(object) => object,
        Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(BusError::read(what(), e)),
    };
    let mut bytes = Vec::with_capacity(object.info().size);
    object
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| BusError::read(what(), e))?;
    Ok(Some(bytes))
}
