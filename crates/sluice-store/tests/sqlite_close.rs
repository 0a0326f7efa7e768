//! A SQLite store has two connections to its file: sqlx's, and the one its writes on the
//! execution path run on, with statements kept prepared. Closed or dropped, the store closes
//! both with no panic on any thread, writes nothing once closed, and keeps everything written
//! through either before. A test binary of its own: it watches for a panic on any thread, and
//! its process opens SQLite only through the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use sluice_core::{ActionRef, ExecutionStatus};
use sluice_store::{Firing, NewEvent, Store, Transition};

/// Takes every write that runs on the execution path's connection: an event with its
/// execution, an admission, a status change.
async fn write_on_the_execution_path(store: &Store, seq: u64) {
    let event = NewEvent {
        trigger: "examples.alert".into(),
        subject: "sluice.trigger.examples.alert".into(),
        payload: Some(json!({"seq": seq})),
        rejected: None,
        stream_seq: Some(seq),
        msg_id: None,
    };
    let firing = Firing {
        rule: "examples.a".into(),
        action: "core.noop".parse::<ActionRef>().unwrap(),
        parameters: Default::default(),
        failed: None,
        traceparent: None,
        admitted: false,
    };
    let recorded = store.record_event(&event, &[firing]).await.unwrap();
    let id = recorded.executions[0].0;
    assert_eq!(store.admit(&[(id, Utc::now())]).await.unwrap(), [true]);
    let running = Transition::to(ExecutionStatus::Running);
    assert!(store.transition(id, &running).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_or_dropped_store_closes_its_connection_cleanly() {
    let panics = Arc::new(AtomicUsize::new(0));
    let seen = panics.clone();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        seen.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.db");
    let path = path.to_str().unwrap();

    let store = Store::connect(path).await.unwrap();
    write_on_the_execution_path(&store, 1).await;
    store.close().await;
    assert!(
        store
            .record_event(
                &NewEvent {
                    trigger: "examples.alert".into(),
                    subject: "sluice.trigger.examples.alert".into(),
                    payload: None,
                    rejected: None,
                    stream_seq: Some(2),
                    msg_id: None,
                },
                &[],
            )
            .await
            .is_err(),
        "a closed store writes nothing"
    );

    let store = Store::connect(path).await.unwrap();
    write_on_the_execution_path(&store, 3).await;
    let clone = store.clone();
    drop(store);
    write_on_the_execution_path(&clone, 4).await;
    drop(clone);
    // The pool closes its connection from a task and a thread of its own.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let store = Store::connect(path).await.unwrap();
    let ledger = store.ledger().await.unwrap();
    store.close().await;
    assert_eq!(
        panics.load(Ordering::SeqCst),
        0,
        "a thread panicked while the store closed"
    );
    assert_eq!(ledger.events, 3, "every event before the close was kept");
    assert_eq!(
        ledger.executions.get(&ExecutionStatus::Running),
        Some(&3),
        "every status change before the close was kept"
    );
}

/// SQLite's process-wide memory count takes a mutex around every allocation it makes; the
/// store turns it off before SQLite's first connection, so the count stays at nothing while
/// the execution path's writes run.
#[tokio::test]
async fn sqlite_counts_no_memory_in_a_process_that_opened_it_through_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(dir.path().join("sluice.db").to_str().unwrap())
        .await
        .unwrap();
    write_on_the_execution_path(&store, 1).await;
    // SAFETY: reads SQLite's memory counter, which any thread may read at any time.
    #[allow(unsafe_code)]
    let counted = unsafe { rusqlite::ffi::sqlite3_memory_used() };
    store.close().await;
    assert_eq!(counted, 0, "SQLite counted the memory it holds");
}
