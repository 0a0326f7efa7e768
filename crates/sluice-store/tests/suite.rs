//! One store test suite, run against a real SQLite file and a real PostgreSQL cluster.

use serde_json::json;
use sluice_core::{ActionRef, EventStatus, ExecutionStatus};
use sluice_store::{
    ApiRule, EventFilter, ExecutionFilter, Fence, Firing, NewChild, NewEvent, ResultJson,
    RuleSwitch, Store, StoreError, Transition, WorkflowSave,
};

fn action(r: &str) -> ActionRef {
    r.parse().unwrap()
}

/// The statuses of an execution's history, in order.
fn statuses(execution: &sluice_store::Execution) -> Vec<ExecutionStatus> {
    execution.history.iter().map(|h| h.status).collect()
}

fn event(seq: Option<u64>) -> NewEvent {
    NewEvent {
        trigger: "examples.alert".into(),
        subject: "sluice.trigger.examples.alert".into(),
        payload: Some(json!({"host": "db1"})),
        rejected: None,
        stream_seq: seq,
        msg_id: None,
    }
}

fn firing(rule: &str, action_ref: &str) -> Firing {
    Firing {
        rule: rule.into(),
        action: action(action_ref),
        parameters: json!({"host": "db1"}).as_object().unwrap().clone(),
        failed: None,
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        admitted: false,
    }
}

async fn an_event_creates_one_execution_per_rule_once(store: Store) {
    let firings = [
        firing("examples.a", "core.noop"),
        firing("examples.b", "core.echo"),
    ];
    let first = store.record_event(&event(Some(7)), &firings).await.unwrap();
    assert!(!first.duplicate);
    assert_eq!(first.executions.len(), 2);
    assert_eq!(store.count_enforcements(first.event_id).await.unwrap(), 2);

    let again = store.record_event(&event(Some(7)), &firings).await.unwrap();
    assert!(
        again.duplicate,
        "a redelivered trigger message is the same event"
    );
    assert_eq!(again.event_id, first.event_id);
    assert!(again.executions.is_empty());
    let stored = store
        .get_execution(first.executions[0].0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.trace_id.as_deref(),
        Some("0af7651916cd43dd8448eb211c80319c"),
        "an execution keeps the trace it was requested in"
    );
    assert_eq!(
        store
            .list_executions(&ExecutionFilter::default())
            .await
            .unwrap()
            .len(),
        2
    );

    let other = store
        .record_event(&event(None), &firings[..1])
        .await
        .unwrap();
    assert_ne!(
        other.event_id, first.event_id,
        "events without a sequence are distinct"
    );
}

async fn a_batch_of_events_is_recorded_in_order_with_its_redeliveries_recognised(store: Store) {
    let before = store.record_event(&event(Some(20)), &[]).await.unwrap();
    let both = [
        firing("examples.a", "core.noop"),
        Firing {
            admitted: true,
            ..firing("examples.b", "core.echo")
        },
    ];
    let failed = [Firing {
        failed: Some("template failed".into()),
        ..firing("examples.c", "core.noop")
    }];
    let (first, again, unsequenced, redelivered) = (
        event(Some(21)),
        event(Some(21)),
        event(None),
        event(Some(20)),
    );
    let outcomes = store
        .record_events(&[
            (&first, &both[..]),
            (&again, &both[..]),
            (&unsequenced, &failed[..]),
            (&redelivered, &both[..1]),
        ])
        .await
        .unwrap();
    let duplicates: Vec<bool> = outcomes.iter().map(|o| o.duplicate).collect();
    assert_eq!(
        duplicates,
        [false, true, false, true],
        "the same stream sequence twice in a batch, or again later, is one event"
    );
    assert_eq!(outcomes[1].event_id, outcomes[0].event_id);
    assert_eq!(outcomes[3].event_id, before.event_id);
    assert!(outcomes[0].event_id.0 < outcomes[2].event_id.0);
    assert!(outcomes[1].executions.is_empty() && outcomes[3].executions.is_empty());
    assert!(
        outcomes[2].executions.is_empty(),
        "a failed firing is stored, not run"
    );
    let ids: Vec<_> = outcomes[0].executions.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids[0].0 < ids[1].0, "executions take ids in firing order");
    assert_eq!(
        store
            .count_enforcements(outcomes[0].event_id)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .count_enforcements(outcomes[2].event_id)
            .await
            .unwrap(),
        1
    );

    let queued = store.get_execution(ids[0]).await.unwrap().unwrap();
    assert_eq!(queued.status, ExecutionStatus::Requested);
    assert_eq!(queued.rule.as_deref(), Some("examples.a"));
    assert_eq!(queued.event_id, Some(outcomes[0].event_id));
    assert_eq!(queued.parameters, json!({"host": "db1"}));
    assert_eq!(statuses(&queued), [ExecutionStatus::Requested]);
    let admitted = store.get_execution(ids[1]).await.unwrap().unwrap();
    assert_eq!(
        statuses(&admitted),
        [
            ExecutionStatus::Requested,
            ExecutionStatus::Scheduling,
            ExecutionStatus::Scheduled
        ]
    );
    let failed = store
        .list_executions(&ExecutionFilter {
            status: Some(ExecutionStatus::Failed),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].event_id, Some(outcomes[2].event_id));
    assert_eq!(failed[0].result, Some(json!({"error": "template failed"})));
    assert!(failed[0].finished_at.is_some());
    let failed = store.get_execution(failed[0].id).await.unwrap().unwrap();
    assert_eq!(
        statuses(&failed),
        [ExecutionStatus::Requested, ExecutionStatus::Failed]
    );
}

async fn a_result_arriving_as_json_text_is_stored_as_that_json(store: Store) {
    let id = store
        .create_execution(&action("core.noop"), &Default::default(), None, None)
        .await
        .unwrap();
    for status in [ExecutionStatus::Scheduling, ExecutionStatus::Scheduled] {
        assert!(store.transition(id, &Transition::to(status)).await.unwrap());
    }
    let stdout = "x".repeat(200_000);
    let text = format!(r#"{{"exit_code": 0, "stdout": "{stdout}", "stderr": "\u00e9\n"}}"#);
    let mut done = Transition::to(ExecutionStatus::Succeeded);
    done.result = Some(ResultJson::from_text(text).unwrap());
    assert!(store.transition(id, &done).await.unwrap());
    let execution = store.get_execution(id).await.unwrap().unwrap();
    assert_eq!(
        execution.result,
        Some(json!({"exit_code": 0, "stdout": stdout, "stderr": "é\n"}))
    );
    assert!(
        ResultJson::from_text("{\"a\": 1} trailing".into()).is_err(),
        "text that is not one JSON value is refused before it reaches the store"
    );
}

async fn transitions_follow_the_state_machine_and_write_once(store: Store) {
    let id = store
        .create_execution(&action("core.noop"), &Default::default(), None, None)
        .await
        .unwrap();
    assert!(
        !store
            .transition(id, &Transition::to(ExecutionStatus::Running))
            .await
            .unwrap(),
        "requested -> running is illegal"
    );
    for status in [ExecutionStatus::Scheduling, ExecutionStatus::Scheduled] {
        assert!(store.transition(id, &Transition::to(status)).await.unwrap());
        assert!(
            !store.transition(id, &Transition::to(status)).await.unwrap(),
            "{status} twice is one write"
        );
    }
    let mut done = Transition::to(ExecutionStatus::Succeeded);
    done.result = Some(json!({"stdout": "ok"}).into());
    done.worker = Some("w1".into());
    assert!(store.transition(id, &done).await.unwrap());
    assert!(
        !store.transition(id, &done).await.unwrap(),
        "a repeated completion changes nothing"
    );
    assert!(
        !store
            .transition(id, &Transition::to(ExecutionStatus::Running))
            .await
            .unwrap(),
        "a stale running report changes nothing"
    );

    let execution = store.get_execution(id).await.unwrap().unwrap();
    assert_eq!(execution.status, ExecutionStatus::Succeeded);
    assert_eq!(execution.result, Some(json!({"stdout": "ok"})));
    assert_eq!(execution.worker.as_deref(), Some("w1"));
    assert!(execution.finished_at.is_some());
    let history: Vec<_> = execution.history.iter().map(|h| h.status).collect();
    assert_eq!(
        history,
        [
            ExecutionStatus::Requested,
            ExecutionStatus::Scheduling,
            ExecutionStatus::Scheduled,
            ExecutionStatus::Succeeded
        ]
    );
}

async fn failed_firings_are_stored_failed_with_the_reason(store: Store) {
    let mut bad = firing("examples.a", "core.local");
    bad.failed = Some("\"{{ trigger.nope }}\": undefined value".into());
    let outcome = store.record_event(&event(Some(1)), &[bad]).await.unwrap();
    assert!(outcome.executions.is_empty(), "nothing to run");
    let all = store
        .list_executions(&ExecutionFilter::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].status, ExecutionStatus::Failed);
    assert!(
        all[0].result.as_ref().unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("undefined")
    );
}

async fn rejected_events_are_kept_with_their_reason(store: Store) {
    let mut rejected = event(Some(3));
    rejected.payload = None;
    rejected.rejected = Some("payload is not JSON or MessagePack".into());
    store.record_event(&rejected, &[]).await.unwrap();
    let events = store.list_events(10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].status, EventStatus::Rejected);
    assert_eq!(
        events[0].reason.as_deref(),
        Some("payload is not JSON or MessagePack")
    );
}

async fn listing_filters_and_unfinished_order(store: Store) {
    let noop = action("core.noop");
    let echo = action("core.echo");
    let a = store
        .create_execution(&noop, &Default::default(), None, None)
        .await
        .unwrap();
    let b = store
        .create_execution(&echo, &Default::default(), None, None)
        .await
        .unwrap();
    let c = store
        .create_execution(&noop, &Default::default(), None, None)
        .await
        .unwrap();
    store
        .transition(b, &Transition::to(ExecutionStatus::Cancelled))
        .await
        .unwrap();

    let noops = store
        .list_executions(&ExecutionFilter {
            action: Some("core.noop".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        noops.iter().map(|e| e.id).collect::<Vec<_>>(),
        [c, a],
        "newest first"
    );
    let cancelled = store
        .list_executions(&ExecutionFilter {
            status: Some(ExecutionStatus::Cancelled),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(cancelled.iter().map(|e| e.id).collect::<Vec<_>>(), [b]);
    let limited = store
        .list_executions(&ExecutionFilter {
            limit: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(limited.len(), 1);
    let next_page = store
        .list_executions(&ExecutionFilter {
            limit: Some(1),
            before: Some(limited[0].id.0),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(next_page.iter().map(|e| e.id).collect::<Vec<_>>(), [b]);
    let unfinished = store.unfinished_executions().await.unwrap();
    assert_eq!(
        unfinished.iter().map(|e| e.id).collect::<Vec<_>>(),
        [a, c],
        "oldest first, terminal ones left out"
    );
    assert!(
        store
            .get_execution(sluice_core::ExecutionId(9999))
            .await
            .unwrap()
            .is_none()
    );
}

async fn a_retry_starts_a_new_attempt_with_its_own_history(store: Store) {
    let id = store
        .create_execution(&action("core.noop"), &Default::default(), None, None)
        .await
        .unwrap();
    for status in [ExecutionStatus::Scheduling, ExecutionStatus::Scheduled] {
        store.transition(id, &Transition::to(status)).await.unwrap();
    }
    let mut running = Transition::to(ExecutionStatus::Running);
    running.worker = Some("lost".into());
    assert!(store.transition(id, &running).await.unwrap());
    assert!(
        store
            .transition(id, &Transition::to(ExecutionStatus::Requested))
            .await
            .unwrap(),
        "retry"
    );
    let retried = store.get_execution(id).await.unwrap().unwrap();
    assert_eq!(
        (retried.status, retried.attempt, retried.worker.as_deref()),
        (ExecutionStatus::Requested, 2, None)
    );
    assert!(retried.started_at.is_none());
    for status in [
        ExecutionStatus::Scheduling,
        ExecutionStatus::Scheduled,
        ExecutionStatus::Running,
        ExecutionStatus::Succeeded,
    ] {
        assert!(
            store.transition(id, &Transition::to(status)).await.unwrap(),
            "{status} on attempt 2"
        );
    }
    let done = store.get_execution(id).await.unwrap().unwrap();
    let history: Vec<(u32, ExecutionStatus)> =
        done.history.iter().map(|h| (h.attempt, h.status)).collect();
    use ExecutionStatus::*;
    assert_eq!(
        history,
        [
            (1, Requested),
            (1, Scheduling),
            (1, Scheduled),
            (1, Running),
            (2, Requested),
            (2, Scheduling),
            (2, Scheduled),
            (2, Running),
            (2, Succeeded)
        ]
    );
    assert!(!store.fail_before_handoff(id, "too late").await.unwrap());
}

async fn dead_letters_are_kept_once_per_message_newest_first(store: Store) {
    let letter = |seq: u64, payload: Option<Vec<u8>>| sluice_core::DeadLetter {
        stream: "STATUS".into(),
        consumer: "engine".into(),
        subject: format!("sluice.status.{seq}"),
        stream_seq: seq,
        deliveries: 3,
        reason: "unreadable status report".into(),
        payload_size: 4,
        payload,
        by: "engine/test".into(),
        at: chrono::Utc::now(),
    };
    assert!(
        store
            .record_dead_letter(&letter(7, Some(b"\xffab".to_vec())))
            .await
            .unwrap()
    );
    assert!(
        !store.record_dead_letter(&letter(7, None)).await.unwrap(),
        "the same stream message is one dead letter"
    );
    assert!(store.record_dead_letter(&letter(9, None)).await.unwrap());
    let listed = store.list_dead_letters(10).await.unwrap();
    assert_eq!(
        listed.iter().map(|d| d.stream_seq).collect::<Vec<_>>(),
        [9, 7]
    );
    assert_eq!(listed[1].payload.as_deref(), Some("\u{fffd}ab"));
    assert_eq!(listed[1].deliveries, 3);
    assert_eq!(listed[1].reason, "unreadable status report");
    assert_eq!(listed[0].payload, None);
    assert_eq!(listed[0].given_up_by, "engine/test");
}

async fn the_ledger_counts_and_finds_executions_not_ended_once(store: Store) {
    use ExecutionStatus::*;
    let outcome = store
        .record_event(
            &event(Some(1)),
            &[firing("r1", "core.noop"), firing("r2", "core.noop")],
        )
        .await
        .unwrap();
    let mut rejected = event(Some(2));
    rejected.rejected = Some("bad".into());
    store.record_event(&rejected, &[]).await.unwrap();
    let (a, b) = (outcome.executions[0].0, outcome.executions[1].0);
    for to in [Scheduling, Scheduled, Running, Succeeded] {
        assert!(store.transition(a, &Transition::to(to)).await.unwrap());
    }
    let ledger = store.ledger().await.unwrap();
    assert_eq!(
        (ledger.events, ledger.rejected_events, ledger.enforcements),
        (2, 1, 2)
    );
    assert_eq!(ledger.executions.get(&ExecutionStatus::Succeeded), Some(&1));
    assert_eq!(ledger.executions.get(&ExecutionStatus::Requested), Some(&1));
    assert_eq!(ledger.unfinished, 1);
    assert!(ledger.ended_other_than_once.is_empty());
    assert!(store.fail_before_handoff(b, "no").await.unwrap());
    let ledger = store.ledger().await.unwrap();
    assert_eq!(ledger.unfinished, 0);
    assert!(ledger.ended_other_than_once.is_empty());
}

async fn a_workflow_step_is_taken_once_and_starts_each_task_item_attempt_once(store: Store) {
    use ExecutionStatus::*;
    let workflow = store
        .create_execution(&action("t.flow"), &Default::default(), None, None)
        .await
        .unwrap();
    assert!(store.workflow(workflow).await.unwrap().is_none());
    let child = |task: &str, item: i64, attempt: u32| NewChild {
        task: task.into(),
        round: 0,
        item,
        attempt,
        action: action("core.noop"),
        parameters: Default::default(),
        traceparent: None,
    };
    let first = store
        .workflow_step(
            workflow,
            &[],
            WorkflowSave {
                state: &json!({"step": 1}),
                parts: &[
                    ("slot/each/0/0".into(), json!({"state": "running"})),
                    ("run/each/0".into(), json!({"items": [1, 2]})),
                ],
            },
            &[child("each", 0, 1), child("each", 1, 1)],
        )
        .await
        .unwrap()
        .unwrap();
    let (a, b) = (first[0].unwrap(), first[1].unwrap());
    // The same task item attempt again: not created.
    let again = store
        .workflow_step(
            workflow,
            &[],
            WorkflowSave {
                state: &json!({"step": 2}),
                parts: &[],
            },
            &[child("each", 0, 1)],
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, [None]);
    for to in [Scheduling, Scheduled, Running, Succeeded] {
        store.transition(a, &Transition::to(to)).await.unwrap();
    }
    let step = store
        .workflow_step(
            workflow,
            &[a],
            WorkflowSave {
                state: &json!({"step": 3}),
                parts: &[("slot/each/0/0".into(), json!({"state": "succeeded"}))],
            },
            &[child("after", -1, 1)],
        )
        .await
        .unwrap()
        .unwrap();
    assert!(step[0].is_some());
    // Acting on the same child's end twice writes nothing, the state included.
    let twice = store
        .workflow_step(
            workflow,
            &[a],
            WorkflowSave {
                state: &json!({"step": 4}),
                parts: &[("slot/each/0/0".into(), json!({"state": "lost"}))],
            },
            &[child("other", -1, 1)],
        )
        .await
        .unwrap();
    assert!(twice.is_none());
    let record = store.workflow(workflow).await.unwrap().unwrap();
    assert_eq!(record.state, json!({"step": 3}));
    // Each part as it was last written; the refused step wrote none.
    let mut parts = record.parts.clone();
    parts.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        parts,
        [
            ("run/each/0".to_owned(), json!({"items": [1, 2]})),
            ("slot/each/0/0".to_owned(), json!({"state": "succeeded"})),
        ]
    );
    let seen: Vec<_> = record
        .children
        .iter()
        .map(|c| (c.task.as_str(), c.item, c.execution_id, c.handled, c.status))
        .collect();
    assert_eq!(
        seen,
        [
            ("each", 0, a, true, Succeeded),
            ("each", 1, b, false, Requested),
            ("after", -1, step[0].unwrap(), false, Requested),
        ]
    );
    let listed = store
        .list_executions(&ExecutionFilter {
            parent: Some(workflow.0),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|e| e.parent_id == Some(workflow)));
}

async fn a_stored_value_that_cannot_be_read_costs_its_row_not_the_listing(store: Store) {
    let mut deep = json!(1);
    for _ in 0..100 {
        deep = json!([deep]);
    }
    let params = |v: serde_json::Value| json!({ "x": v }).as_object().unwrap().clone();
    let good = store
        .create_execution(&action("core.noop"), &params(json!(1)), None, None)
        .await
        .unwrap();
    let bad = store
        .create_execution(&action("core.noop"), &params(deep), None, None)
        .await
        .unwrap();
    let listed = store
        .list_executions(&ExecutionFilter::default())
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    let row = |id| listed.iter().find(|e| e.id == id).unwrap();
    assert_eq!(row(good).parameters, json!({"x": 1}));
    assert_eq!(row(good).unreadable, None);
    assert_eq!(row(bad).parameters, serde_json::Value::Null);
    assert!(
        row(bad)
            .unreadable
            .as_deref()
            .unwrap()
            .contains("parameters cannot be read: nested more than 64"),
        "{:?}",
        row(bad).unreadable
    );
    assert_eq!(store.unfinished_executions().await.unwrap().len(), 2);
}

/// Events by trigger, status, time and a payload value; executions by rule and time.
async fn events_and_executions_filter_by_trigger_status_time_payload_and_rule(store: Store) {
    let at = |host: &str, n: u64| {
        let mut e = event(Some(n));
        e.payload = Some(json!({"host": host, "labels": {"team": "db"}, "n": n}));
        e
    };
    store
        .record_event(&at("db1", 1), &[firing("examples.a", "core.noop")])
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let between = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    store
        .record_event(&at("web1", 2), &[firing("examples.b", "core.noop")])
        .await
        .unwrap();
    let mut rejected = event(Some(3));
    rejected.trigger = "examples.other".into();
    rejected.payload = None;
    rejected.rejected = Some("not JSON".into());
    store.record_event(&rejected, &[]).await.unwrap();

    let find = |filter: EventFilter| {
        let store = store.clone();
        async move {
            store
                .find_events(&filter)
                .await
                .unwrap()
                .iter()
                .map(|e| e.payload.as_ref().map_or(-1, |p| p["n"].as_i64().unwrap()))
                .collect::<Vec<_>>()
        }
    };
    let payload = |path: &str, value: &str| EventFilter {
        payload: Some((path.into(), value.into())),
        ..Default::default()
    };
    assert_eq!(find(payload("host", "web1")).await, [2]);
    assert_eq!(find(payload("labels.team", "db")).await, [2, 1]);
    assert_eq!(find(payload("n", "1")).await, [1], "a number as written");
    assert!(find(payload("host", "nope")).await.is_empty());
    assert_eq!(
        find(EventFilter {
            trigger: Some("examples.other".into()),
            ..Default::default()
        })
        .await,
        [-1]
    );
    assert_eq!(
        find(EventFilter {
            status: Some(EventStatus::Accepted),
            ..Default::default()
        })
        .await,
        [2, 1]
    );
    assert_eq!(
        find(EventFilter {
            until: Some(between),
            ..Default::default()
        })
        .await,
        [1]
    );
    assert_eq!(
        find(EventFilter {
            since: Some(between),
            ..Default::default()
        })
        .await,
        [-1, 2]
    );

    let rules = |filter: ExecutionFilter| {
        let store = store.clone();
        async move {
            store
                .list_executions(&filter)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.rule.unwrap_or_default())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        rules(ExecutionFilter {
            rule: Some("examples.b".into()),
            ..Default::default()
        })
        .await,
        ["examples.b"]
    );
    assert_eq!(
        rules(ExecutionFilter {
            since: Some(between),
            ..Default::default()
        })
        .await,
        ["examples.b"]
    );
    assert_eq!(
        rules(ExecutionFilter {
            until: Some(between),
            ..Default::default()
        })
        .await,
        ["examples.a"]
    );
}

/// Rules the API defined and switched are kept; defining one again replaces it and its
/// switch; deleting it deletes both.
async fn api_rules_and_switches_are_kept_replaced_and_deleted(store: Store) {
    let at = chrono::Utc::now();
    let rule = |message: &str| ApiRule {
        rule: "examples.r".into(),
        definition: json!({"pack": "examples", "name": "r", "action": {"ref": "core.echo", "parameters": {"message": message}}}),
        changed_at: at,
        changed_by: "admin".into(),
    };
    store.put_api_rule(&rule("one")).await.unwrap();
    let switch = RuleSwitch {
        rule: "examples.r".into(),
        enabled: false,
        changed_at: at,
        changed_by: "admin".into(),
    };
    store.switch_rule(&switch).await.unwrap();
    store.switch_rule(&switch).await.unwrap();
    assert_eq!(store.rule_switches().await.unwrap().len(), 1);
    store.put_api_rule(&rule("two")).await.unwrap();
    let kept = store.api_rules().await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].definition["action"]["parameters"]["message"], "two");
    assert!(
        store.rule_switches().await.unwrap().is_empty(),
        "a new definition replaces the switch"
    );
    store.switch_rule(&switch).await.unwrap();
    assert!(store.delete_api_rule("examples.r").await.unwrap());
    assert!(!store.delete_api_rule("examples.r").await.unwrap());
    assert!(store.api_rules().await.unwrap().is_empty());
    assert!(store.rule_switches().await.unwrap().is_empty());
}

async fn an_engine_whose_lease_was_taken_writes_nothing(store: Store) {
    assert!(store.raise_fence("engine", 10, "a").await.unwrap());
    let a = store.clone().fenced(Fence {
        name: "engine".into(),
        token: 10,
    });
    let recorded = a
        .record_event(&event(Some(1)), &[firing("examples.a", "core.noop")])
        .await
        .unwrap();
    let id = recorded.executions[0].0;
    assert!(
        a.transition(id, &Transition::to(ExecutionStatus::Scheduling))
            .await
            .unwrap(),
        "the owner writes"
    );
    assert!(
        !store.raise_fence("engine", 9, "old").await.unwrap(),
        "an older lease cannot take the fence back"
    );
    assert!(store.raise_fence("engine", 12, "b").await.unwrap());
    assert_eq!(
        store.fence_of("engine").await.unwrap(),
        Some((12, "b".to_owned()))
    );
    let refused = a
        .transition(id, &Transition::to(ExecutionStatus::Scheduled))
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            StoreError::Fenced {
                token: 10,
                current: Some(12),
                ..
            }
        ),
        "{refused}"
    );
    assert!(
        refused.is_transient(),
        "the message goes back for the new owner"
    );
    assert!(
        a.record_event(&event(Some(2)), &[firing("examples.a", "core.noop")])
            .await
            .is_err(),
        "a stale owner records no event"
    );
    let stored = store.get_execution(id).await.unwrap().unwrap();
    assert_eq!(
        stored.status,
        ExecutionStatus::Scheduling,
        "nothing was written"
    );
    assert_eq!(store.list_events(10).await.unwrap().len(), 1);
    let b = store.clone().fenced(Fence {
        name: "engine".into(),
        token: 12,
    });
    assert!(
        b.transition(id, &Transition::to(ExecutionStatus::Scheduled))
            .await
            .unwrap(),
        "the new owner writes"
    );
}

/// A store fenced by several partitions' fences writes while all of them are its own, and
/// nothing once any one of them was raised by another engine.
async fn a_store_under_several_fences_writes_only_while_it_holds_them_all(store: Store) {
    let fence = |n: u32, token: i64| Fence {
        name: format!("partition.{n}"),
        token,
    };
    assert!(store.raise_fence("partition.0", 3, "a").await.unwrap());
    assert!(store.raise_fence("partition.2", 5, "a").await.unwrap());
    let a = store.clone().fenced_by_all(vec![fence(0, 3), fence(2, 5)]);
    assert_eq!(a.fence(), Some(&fence(0, 3)));
    let recorded = a
        .record_event(&event(Some(1)), &[firing("examples.a", "core.noop")])
        .await
        .unwrap();
    let id = recorded.executions[0].0;
    assert!(store.raise_fence("partition.2", 6, "b").await.unwrap());
    let refused = a
        .transition(id, &Transition::to(ExecutionStatus::Scheduling))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &refused,
            StoreError::Fenced {
                name,
                token: 5,
                current: Some(6),
            } if name == "partition.2"
        ),
        "{refused}"
    );
    assert!(
        a.record_event(&event(Some(2)), &[firing("examples.a", "core.noop")])
            .await
            .is_err(),
        "no event either"
    );
    assert_eq!(
        store.get_execution(id).await.unwrap().unwrap().status,
        ExecutionStatus::Requested,
        "nothing was written"
    );
}

/// A firing whose action had a free slot is stored already `scheduled`, its history the
/// same as a queued execution's admitted in a round: requested, scheduling, scheduled.
async fn a_firing_admitted_on_arrival_is_stored_scheduled_with_its_whole_history(store: Store) {
    let admitted = Firing {
        admitted: true,
        ..firing("examples.a", "core.noop")
    };
    let queued = firing("examples.b", "core.echo");
    let outcome = store
        .record_event(&event(Some(11)), &[admitted, queued])
        .await
        .unwrap();
    let [(admitted, _), (queued, _)] = outcome.executions[..] else {
        panic!("two executions: {outcome:?}")
    };
    let admitted = stored_admitted(&store, admitted).await;
    assert!(admitted.history.iter().all(|h| h.at == admitted.created_at));
    let queued = store.get_execution(queued).await.unwrap().unwrap();
    assert_eq!(queued.status, ExecutionStatus::Requested);
    assert_eq!(queued.history.len(), 1);
    // Admitted already: a round of admissions leaves it as it is.
    assert_eq!(
        store
            .admit(&[(admitted.id, chrono::Utc::now())])
            .await
            .unwrap(),
        [false]
    );

    // The same through the API's path: a run submitted, and one run again.
    let submitted = store
        .create_admitted_execution(&action("core.noop"), &Default::default(), None, None)
        .await
        .unwrap();
    let rerun = store
        .create_admitted_execution(
            &action("core.noop"),
            &Default::default(),
            Some(submitted),
            None,
        )
        .await
        .unwrap();
    stored_admitted(&store, submitted).await;
    let rerun = stored_admitted(&store, rerun).await;
    assert_eq!(rerun.rerun_of, Some(submitted));
}

/// Execution `id`, checked to be stored `scheduled` with the history of an admission.
async fn stored_admitted(store: &Store, id: sluice_core::ExecutionId) -> sluice_store::Execution {
    let stored = store.get_execution(id).await.unwrap().unwrap();
    assert_eq!(stored.status, ExecutionStatus::Scheduled);
    let history: Vec<_> = stored.history.iter().map(|h| h.status).collect();
    assert_eq!(
        history,
        [
            ExecutionStatus::Requested,
            ExecutionStatus::Scheduling,
            ExecutionStatus::Scheduled
        ]
    );
    stored
}

async fn a_round_of_admissions_moves_only_requested_executions_at_their_own_times(store: Store) {
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            store
                .create_execution(&action("core.noop"), &Default::default(), None, None)
                .await
                .unwrap(),
        );
    }
    // The middle one was cancelled while it waited.
    assert!(
        store
            .end_before_handoff(ids[1], ExecutionStatus::Cancelled, "cancelled")
            .await
            .unwrap()
    );
    let start = chrono::Utc::now();
    let round: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, start + chrono::Duration::milliseconds(i as i64)))
        .collect();
    assert_eq!(store.admit(&round).await.unwrap(), [true, false, true]);
    assert_eq!(
        store.admit(&round).await.unwrap(),
        [false, false, false],
        "an admitted execution is not admitted again"
    );
    for (id, at) in [round[0], round[2]] {
        let execution = store.get_execution(id).await.unwrap().unwrap();
        assert_eq!(execution.status, ExecutionStatus::Scheduled);
        let history: Vec<_> = execution.history.iter().map(|h| (h.status, h.at)).collect();
        assert_eq!(history.len(), 3, "{history:?}");
        assert_eq!(history[0].0, ExecutionStatus::Requested);
        assert!(history[1].0 == ExecutionStatus::Scheduling && near(history[1].1, at));
        assert!(history[2].0 == ExecutionStatus::Scheduled && near(history[2].1, at));
    }
    let cancelled = store.get_execution(ids[1]).await.unwrap().unwrap();
    assert_eq!(cancelled.status, ExecutionStatus::Cancelled);
    assert_eq!(cancelled.history.len(), 2, "requested, cancelled");

    assert!(store.raise_fence("engine", 2, "b").await.unwrap());
    let stale = store.clone().fenced(Fence {
        name: "engine".into(),
        token: 1,
    });
    let fourth = store
        .create_execution(&action("core.noop"), &Default::default(), None, None)
        .await
        .unwrap();
    assert!(
        matches!(
            stale.admit(&[(fourth, chrono::Utc::now())]).await,
            Err(StoreError::Fenced { .. })
        ),
        "a stale owner admits nothing"
    );
    assert_eq!(
        store.get_execution(fourth).await.unwrap().unwrap().status,
        ExecutionStatus::Requested
    );
}

async fn a_batch_of_reports_moves_each_execution_in_order(store: Store) {
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = store
            .create_admitted_execution(&action("core.noop"), &Default::default(), None, None)
            .await
            .unwrap();
        ids.push(id);
    }
    let [a, b, c] = ids[..] else { unreachable!() };
    let report = |to: ExecutionStatus, attempt: u32, worker: &str| Transition {
        attempt: Some(attempt),
        worker: Some(worker.into()),
        ..Transition::to(to)
    };
    let a_running = report(ExecutionStatus::Running, 1, "w1");
    let started = chrono::Utc::now();
    let mut b_end = report(ExecutionStatus::Succeeded, 1, "w2");
    b_end.started = Some(started);
    b_end.result = Some(json!({"n": 2}).into());
    let mut a_end = report(ExecutionStatus::Succeeded, 1, "w1");
    a_end.result = Some(json!({"n": 1}).into());
    let changed = store
        .transitions(&[
            (a, a_running),
            (b, b_end),
            (a, a_end),
            (c, report(ExecutionStatus::Running, 2, "w3")),
            (a, report(ExecutionStatus::Failed, 1, "w1")),
            (c, report(ExecutionStatus::Running, 1, "w3")),
        ])
        .await
        .unwrap();
    assert_eq!(
        changed,
        [true, true, true, false, false, true],
        "each move is checked against what the one before it in the batch left: \
         another attempt's claim and a second end change nothing"
    );
    let whole = [
        ExecutionStatus::Requested,
        ExecutionStatus::Scheduling,
        ExecutionStatus::Scheduled,
        ExecutionStatus::Running,
        ExecutionStatus::Succeeded,
    ];
    for (id, result) in [(a, json!({"n": 1})), (b, json!({"n": 2}))] {
        let execution = store.get_execution(id).await.unwrap().unwrap();
        assert_eq!(execution.status, ExecutionStatus::Succeeded);
        assert_eq!(execution.result, Some(result));
        assert!(execution.started_at.is_some() && execution.finished_at.is_some());
        assert_eq!(statuses(&execution), whole);
    }
    let c = store.get_execution(c).await.unwrap().unwrap();
    assert_eq!(c.status, ExecutionStatus::Running);
    assert_eq!(c.worker.as_deref(), Some("w3"));
    assert_eq!(statuses(&c), whole[..4]);
}

async fn an_end_that_records_its_start_keeps_running_in_the_history(store: Store) {
    let id = store
        .create_execution(&action("core.noop"), &Default::default(), None, None)
        .await
        .unwrap();
    let admitted = chrono::Utc::now();
    assert_eq!(store.admit(&[(id, admitted)]).await.unwrap(), [true]);
    let started = admitted + chrono::Duration::milliseconds(3);
    let mut end = Transition::to(ExecutionStatus::Succeeded);
    end.attempt = Some(1);
    end.worker = Some("w1".into());
    end.result = Some(json!({"stdout": "ok"}).into());
    end.at = started + chrono::Duration::milliseconds(2);
    end.started = Some(started);
    assert_eq!(
        store.transitions(&[(id, end.clone())]).await.unwrap(),
        [true]
    );
    assert_eq!(
        store.transitions(&[(id, end)]).await.unwrap(),
        [false],
        "a repeated end changes nothing"
    );
    let execution = store.get_execution(id).await.unwrap().unwrap();
    assert_eq!(execution.status, ExecutionStatus::Succeeded);
    assert_eq!(execution.worker.as_deref(), Some("w1"));
    assert!(near(execution.started_at.unwrap(), started));
    let history: Vec<_> = execution.history.iter().map(|h| h.status).collect();
    assert_eq!(
        history,
        [
            ExecutionStatus::Requested,
            ExecutionStatus::Scheduling,
            ExecutionStatus::Scheduled,
            ExecutionStatus::Running,
            ExecutionStatus::Succeeded
        ]
    );
    assert!(
        near(execution.history[3].at, started),
        "running at its start"
    );
}

/// Whether two times are the same to the microsecond a stored time keeps.
fn near(a: chrono::DateTime<chrono::Utc>, b: chrono::DateTime<chrono::Utc>) -> bool {
    (a - b).num_microseconds().unwrap().abs() < 2
}

macro_rules! store_suite {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = sluice_store::Store::connect(dir.path().join("sluice.db").to_str().unwrap()).await.unwrap();
                    assert_eq!(store.backend_name(), "sqlite");
                    super::$test(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $test() {
                    let pg = sluice_testkit::Postgres::start();
                    let store = sluice_store::Store::connect(&pg.url()).await.unwrap();
                    assert_eq!(store.backend_name(), "postgres");
                    super::$test(store).await;
                }
            )*
        }
    };
}

store_suite!(
    an_event_creates_one_execution_per_rule_once,
    a_batch_of_events_is_recorded_in_order_with_its_redeliveries_recognised,
    transitions_follow_the_state_machine_and_write_once,
    a_result_arriving_as_json_text_is_stored_as_that_json,
    failed_firings_are_stored_failed_with_the_reason,
    rejected_events_are_kept_with_their_reason,
    listing_filters_and_unfinished_order,
    a_retry_starts_a_new_attempt_with_its_own_history,
    dead_letters_are_kept_once_per_message_newest_first,
    the_ledger_counts_and_finds_executions_not_ended_once,
    a_workflow_step_is_taken_once_and_starts_each_task_item_attempt_once,
    a_stored_value_that_cannot_be_read_costs_its_row_not_the_listing,
    events_and_executions_filter_by_trigger_status_time_payload_and_rule,
    api_rules_and_switches_are_kept_replaced_and_deleted,
    an_engine_whose_lease_was_taken_writes_nothing,
    a_store_under_several_fences_writes_only_while_it_holds_them_all,
    a_round_of_admissions_moves_only_requested_executions_at_their_own_times,
    a_firing_admitted_on_arrival_is_stored_scheduled_with_its_whole_history,
    an_end_that_records_its_start_keeps_running_in_the_history,
    a_batch_of_reports_moves_each_execution_in_order,
);

/// A paused engine's transaction is ended by PostgreSQL after
/// `idle_in_transaction_session_timeout`; the write that finds it ended must hand its
/// message back for the engine that took over, not give it up as refused.
#[tokio::test]
async fn a_transaction_postgresql_ended_for_idling_is_worth_retrying() {
    use sqlx::{Connection as _, Executor as _};
    let pg = sluice_testkit::Postgres::start();
    let mut connection = sqlx::PgConnection::connect(&pg.url()).await.unwrap();
    connection
        .execute("SET idle_in_transaction_session_timeout = '100ms'")
        .await
        .unwrap();
    connection.execute("BEGIN").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let ended = connection.execute("SELECT 1").await.unwrap_err();
    let ended = StoreError::from(ended);
    assert!(
        ended.to_string().contains("idle-in-transaction"),
        "the server's own reason: {ended}"
    );
    assert!(ended.is_transient(), "{ended}");
}

/// Records 20 events from stream sequence `first` on, each firing a rule whose execution
/// queues and one admitted on arrival; the 40 executions' ids.
async fn twenty_events_firing_two_rules(
    store: &Store,
    first: u64,
) -> Vec<sluice_core::ExecutionId> {
    let admitted = Firing {
        admitted: true,
        ..firing("examples.b", "core.echo")
    };
    let batch: Vec<(NewEvent, Vec<Firing>)> = (first..first + 20)
        .map(|seq| {
            (
                event(Some(seq)),
                vec![firing("examples.a", "core.noop"), admitted.clone()],
            )
        })
        .collect();
    let batch: Vec<(&NewEvent, &[Firing])> = batch.iter().map(|(e, f)| (e, &f[..])).collect();
    let recorded = store.record_events(&batch).await.unwrap();
    let ids: Vec<_> = recorded
        .iter()
        .flat_map(|r| r.executions.iter().map(|(id, _)| *id))
        .collect();
    assert_eq!(ids.len(), 40);
    ids
}

/// On PostgreSQL the history and the enforcements carry no foreign keys (migration 0016):
/// the triggers on `executions` write them from the statement's own rows, so each names an
/// execution and an event that exist, and an execution, which they refer to, cannot be
/// deleted.
#[tokio::test]
async fn postgresql_history_and_enforcements_name_rows_that_exist_and_executions_are_kept() {
    use sqlx::{Connection as _, Executor as _, Row as _};
    let pg = sluice_testkit::Postgres::start();
    let store = Store::connect(&pg.url()).await.unwrap();
    let ids = twenty_events_firing_two_rules(&store, 1).await;

    let mut connection = sqlx::PgConnection::connect(&pg.url()).await.unwrap();
    for (what, orphans) in [
        (
            "history of no execution",
            "SELECT count(*) FROM execution_history h \
             WHERE NOT EXISTS (SELECT 1 FROM executions e WHERE e.id = h.execution_id)",
        ),
        (
            "enforcements of no execution",
            "SELECT count(*) FROM enforcements f \
             WHERE NOT EXISTS (SELECT 1 FROM executions e WHERE e.id = f.execution_id)",
        ),
        (
            "enforcements of no event",
            "SELECT count(*) FROM enforcements f \
             WHERE NOT EXISTS (SELECT 1 FROM events v WHERE v.id = f.event_id)",
        ),
    ] {
        let row = connection.fetch_one(orphans).await.unwrap();
        assert_eq!(row.get::<i64, _>(0), 0, "{what}");
    }
    let row = connection
        .fetch_one("SELECT count(*) FROM execution_history")
        .await
        .unwrap();
    assert_eq!(
        row.get::<i64, _>(0),
        20 + 20 * 3,
        "requested for each; scheduling and scheduled too for those admitted on arrival"
    );
    let row = connection
        .fetch_one("SELECT count(*) FROM enforcements")
        .await
        .unwrap();
    assert_eq!(row.get::<i64, _>(0), 40);

    for statement in ["DELETE FROM executions", "TRUNCATE executions CASCADE"] {
        let refused = connection.execute(statement).await.unwrap_err();
        assert!(
            refused.to_string().contains("executions are kept"),
            "{statement}: {refused}"
        );
    }
    assert!(store.get_execution(ids[0]).await.unwrap().is_some());
}

/// SQLite keeps the history without a rowid since migration 0015: the rows a store held
/// before it are kept, the triggers write to the new table, every row names an execution
/// that exists, and an execution cannot be deleted.
#[tokio::test]
async fn sqlite_history_moved_to_its_own_key_is_kept_and_executions_are_kept() {
    use sqlx::{Executor as _, Row as _};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());

    // A store as 0014 left it, with an execution admitted on arrival.
    let migrations =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations/sqlite");
    let before = sqlx::migrate::Migrator::new(migrations).await.unwrap();
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    before.run_to(14, &pool).await.unwrap();
    pool.execute(
        "INSERT INTO events (trigger, status, subject, stream_seq, created_at) \
         VALUES ('examples.alert', 'accepted', 's', 1, '2026-01-01T00:00:00Z'); \
         INSERT INTO executions (action, status, parameters, rule, event_id, created_at, updated_at) \
         VALUES ('core.noop', 'scheduled', '{}', 'examples.a', 1, '2026-01-01T00:00:00Z', '2026-01-01T00:00:01Z');",
    )
    .await
    .unwrap();
    pool.close().await;

    let store = Store::connect(path.to_str().unwrap()).await.unwrap();
    let old = store
        .get_execution(sluice_core::ExecutionId(1))
        .await
        .unwrap()
        .unwrap();
    use ExecutionStatus::*;
    assert_eq!(statuses(&old), [Requested, Scheduling, Scheduled]);

    let ids = twenty_events_firing_two_rules(&store, 2).await;
    let started = Transition {
        worker: Some("w1".into()),
        ..Transition::to(Running)
    };
    assert!(store.transition(ids[1], &started).await.unwrap());
    let running = store.get_execution(ids[1]).await.unwrap().unwrap();
    assert_eq!(
        statuses(&running),
        [Requested, Scheduling, Scheduled, Running]
    );

    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move { pool.fetch_one(sql).await.unwrap().get::<i64, _>(0) }
    };
    assert_eq!(
        count(
            "SELECT count(*) FROM execution_history h \
             WHERE NOT EXISTS (SELECT 1 FROM executions e WHERE e.id = h.execution_id)"
        )
        .await,
        0,
        "history of no execution"
    );
    assert_eq!(
        count("SELECT count(*) FROM execution_history").await,
        3 + 20 + 20 * 3 + 1,
        "the old execution's three; requested for each new one; scheduling and scheduled \
         too for those admitted on arrival; running for the one started"
    );
    assert_eq!(count("SELECT count(*) FROM enforcements").await, 41);
    let refused = pool.execute("DELETE FROM executions").await.unwrap_err();
    assert!(
        refused.to_string().contains("executions are kept"),
        "{refused}"
    );
    assert!(store.get_execution(ids[0]).await.unwrap().is_some());
}
