//! Timers with real processes: an interval timer fires each nominal tick once, through a
//! `kill -9` of the engine and its restart, with one catch-up tick under `catchup: latest`
//! and none under `none`; a date timer in the future fires once, one in the past (never
//! fired) once on start, and neither again after a restart; `overlap` keeps ticks from
//! running at once, and jitter spreads them without moving their nominal time.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use common::cluster::Cluster;

fn rule(name: &str, trigger: &str, parameters: &str, log: &Path) -> (String, String) {
    (
        format!("rules/{name}.yaml"),
        format!(
            "name: {name}\ntrigger:\n  type: {trigger}\n  parameters: {parameters}\naction:\n  ref: t.tick\n  parameters:\n    nominal: \"{{{{ trigger.nominal_time }}}}\"\n    catchup: \"{{{{ trigger.catchup }}}}\"\n    file: {}\n",
            log.display()
        ),
    )
}

/// A cluster with one worker running pack `t`: `extra` (rules and actions), and the action
/// `t.tick`, which appends each tick's nominal time and catch-up flag to a log.
async fn ticking(extra: &[(String, String)]) -> Cluster {
    let tick = "name: tick\nrunner_type: local-shell-cmd\nparameters:\n  nominal: {type: string}\n  catchup: {type: string}\n  file: {type: string}\n  cmd: {type: string, default: 'printf \"%s %s\\n\" \"$SLUICE_PARAM_NOMINAL\" \"$SLUICE_PARAM_CATCHUP\" >> \"$SLUICE_PARAM_FILE\"'}\n";
    let mut files = vec![("pack.yaml", "ref: t\n"), ("actions/tick.yaml", tick)];
    files.extend(extra.iter().map(|(a, b)| (a.as_str(), b.as_str())));
    let mut cluster = Cluster::new(&files);
    cluster.start_engine().await;
    cluster.start_worker("w1", 8);
    cluster
}

/// The timer of `rule` in `GET /api/v1/timers`, if listed.
fn find_timer(timers: &serde_json::Value, rule: &str) -> Option<serde_json::Value> {
    timers
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["rule"] == rule)
        .cloned()
}

/// The timer of `rule` in `GET /api/v1/timers`.
fn timer_named(timers: serde_json::Value, rule: &str) -> serde_json::Value {
    find_timer(&timers, rule).unwrap_or_else(|| panic!("no timer {rule}: {timers}"))
}

/// (nominal time, whether it was a catch-up) per line of a tick log.
fn ticks(log: &Path) -> Vec<(String, bool)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let (nominal, catchup) = l.split_once(' ').unwrap();
            (nominal.to_owned(), catchup == "true")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_nominal_tick_fires_once_through_a_kill_and_missed_ticks_follow_the_policy() {
    let logs = tempfile::tempdir().unwrap();
    let log = |name: &str| logs.path().join(format!("{name}.log"));
    let soon = (Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let past = (Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let rules = [
        rule(
            "latest",
            "core.st2.IntervalTimer",
            "{unit: seconds, delta: 1}",
            &log("latest"),
        ),
        rule(
            "skip",
            "core.st2.IntervalTimer",
            "{unit: seconds, delta: 1, catchup: none}",
            &log("skip"),
        ),
        rule(
            "soon",
            "core.st2.DateTimer",
            &format!("{{date: '{soon}'}}"),
            &log("soon"),
        ),
        rule(
            "past",
            "core.st2.DateTimer",
            &format!("{{date: '{past}'}}"),
            &log("past"),
        ),
    ];
    let mut cluster = ticking(&rules).await;

    let timers = cluster.get("/api/v1/timers").await;
    let listed: Vec<&str> = timers
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["rule"].as_str().unwrap())
        .filter(|r| r.starts_with("t."))
        .collect();
    assert_eq!(
        listed,
        ["t.latest", "t.past", "t.skip", "t.soon"],
        "{timers:#}"
    );
    let latest = timers
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["rule"] == "t.latest")
        .unwrap();
    assert!(latest["next_fire"].is_string(), "{timers:#}");
    assert_eq!(latest["catchup"], "latest");

    tokio::time::sleep(Duration::from_millis(3500)).await;
    cluster.kill_engine();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.start_engine().await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    for (name, expected_catchups) in [("latest", 1), ("skip", 0)] {
        let fired = ticks(&log(name));
        let unique: BTreeSet<&String> = fired.iter().map(|(n, _)| n).collect();
        assert_eq!(
            unique.len(),
            fired.len(),
            "{name}: a nominal tick fired twice: {fired:#?}"
        );
        assert!(fired.len() >= 4, "{name}: too few ticks: {fired:#?}");
        let catchups = fired.iter().filter(|(_, c)| *c).count();
        assert_eq!(catchups, expected_catchups, "{name}: {fired:#?}");
    }
    let soon_fired = ticks(&log("soon"));
    assert_eq!(soon_fired.len(), 1, "{soon_fired:#?}");
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(&soon_fired[0].0).unwrap(),
        chrono::DateTime::parse_from_rfc3339(&soon).unwrap()
    );
    let past_fired = ticks(&log("past"));
    assert_eq!(
        past_fired.len(),
        1,
        "fired once on the first start only: {past_fired:#?}"
    );
    assert!(past_fired[0].1, "as a catch-up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlap_skip_and_queue_one_never_run_two_ticks_at_once_and_jitter_keeps_the_nominal_time()
{
    let logs = tempfile::tempdir().unwrap();
    let slow_log = logs.path().join("slow.log");
    let jitter_log = logs.path().join("jitter.log");
    let queue_log = logs.path().join("queue.log");
    let slow = |name: &str, log: &Path| {
        (
            format!("actions/{name}.yaml"),
            format!(
                "name: {name}\nrunner_type: local-shell-cmd\nparameters:\n  cmd: {{type: string, default: 'echo start $(date +%s.%N) >> {0}; sleep 2.5; echo end $(date +%s.%N) >> {0}'}}\n",
                log.display()
            ),
        )
    };
    let files = [
        slow("queued", &queue_log),
        (
            "rules/queue.yaml".to_owned(),
            "name: queue\ntrigger:\n  type: core.st2.IntervalTimer\n  parameters: {unit: seconds, delta: 1, overlap: queue_one}\naction:\n  ref: t.queued\n".to_owned(),
        ),
        slow("slow", &slow_log),
        (
            "rules/skip.yaml".to_owned(),
            "name: skip\ntrigger:\n  type: core.st2.IntervalTimer\n  parameters: {unit: seconds, delta: 1, overlap: skip}\naction:\n  ref: t.slow\n".to_owned(),
        ),
        (
            "actions/note.yaml".to_owned(),
            "name: note\nrunner_type: local-shell-cmd\nparameters:\n  nominal: {type: string}\n  executed: {type: string}\n  file: {type: string}\n  cmd: {type: string, default: 'echo \"$SLUICE_PARAM_NOMINAL $SLUICE_PARAM_EXECUTED\" >> \"$SLUICE_PARAM_FILE\"'}\n".to_owned(),
        ),
        (
            "rules/spread.yaml".to_owned(),
            format!(
                "name: spread\ntrigger:\n  type: core.st2.IntervalTimer\n  parameters: {{unit: seconds, delta: 1, jitter: 700ms}}\naction:\n  ref: t.note\n  parameters:\n    nominal: \"{{{{ trigger.nominal_time }}}}\"\n    executed: \"{{{{ trigger.executed_at }}}}\"\n    file: {}\n",
                jitter_log.display()
            ),
        ),
    ];
    let _cluster = ticking(&files).await;
    tokio::time::sleep(Duration::from_secs(7)).await;

    // Each run starts after the one before ended; queue_one starts the held tick at once.
    for (log, back_to_back) in [(&slow_log, false), (&queue_log, true)] {
        let lines = std::fs::read_to_string(log).unwrap();
        let events: Vec<(&str, f64)> = lines
            .lines()
            .map(|l| {
                let (kind, at) = l.split_once(' ').unwrap();
                (kind, at.parse().unwrap())
            })
            .collect();
        let starts = events.iter().filter(|(k, _)| *k == "start").count();
        assert!((2..=3).contains(&starts), "{lines}");
        let mut open = 0;
        for (kind, _) in &events {
            open += if *kind == "start" { 1 } else { -1 };
            assert!(open <= 1, "two ticks ran at once:\n{lines}");
        }
        if back_to_back {
            for pair in events.windows(2) {
                if let [("end", ended), ("start", started)] = pair {
                    assert!(started - ended < 1.0, "the held tick waited:\n{lines}");
                }
            }
        }
    }

    // Jittered ticks: on whole seconds, fired within the jitter after them.
    let lines = std::fs::read_to_string(&jitter_log).unwrap();
    assert!(lines.lines().count() >= 5, "{lines}");
    for line in lines.lines() {
        let (nominal, executed) = line.split_once(' ').unwrap();
        let nominal = chrono::DateTime::parse_from_rfc3339(nominal).unwrap();
        let executed = chrono::DateTime::parse_from_rfc3339(executed).unwrap();
        assert_eq!(nominal.timestamp_subsec_millis(), 0, "{line}");
        let late = executed - nominal;
        assert!(
            late >= chrono::Duration::zero() && late < chrono::Duration::milliseconds(1500),
            "{line}"
        );
    }
}

/// Disabling a timer rule through the API pauses its timer, across a restart too, and
/// enabling it resumes the timer from the next tick: what it missed meanwhile never fires,
/// even under `catchup: all`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_timer_rule_pauses_its_timer_across_a_restart_and_enabling_resumes_it() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("every.log");
    let rules = [rule(
        "every",
        "core.st2.IntervalTimer",
        "{unit: seconds, delta: 1, catchup: all}",
        &log,
    )];
    let mut cluster = ticking(&rules).await;
    let api = cluster.client();
    let timer = |timers: serde_json::Value| timer_named(timers, "t.every");

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (code, body) = api
        .post("/api/v1/rules/t.every/disable", &serde_json::json!({}))
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["enabled"], false, "{body}");
    assert_eq!(body["switched"]["enabled"], false, "{body}");
    assert_eq!(body["trigger"]["type"], "core.st2.IntervalTimer", "{body}");
    let paused = sluice_testkit::eventually(
        "the timer to show it paused",
        Duration::from_secs(5),
        || async {
            let shown = timer(cluster.get("/api/v1/timers").await);
            (shown["enabled"] == false).then_some(shown)
        },
    )
    .await;
    assert!(paused["next_fire"].is_null(), "{paused}");
    // A tick already on its way when the switch came may still land.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = ticks(&log).len();
    assert!(before >= 2, "ticks before the pause: {before}");

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(ticks(&log).len(), before, "a paused timer fired");
    cluster.kill_engine();
    cluster.start_engine().await;
    let (_, rule) = api.get("/api/v1/rules/t.every").await;
    assert_eq!(
        rule["enabled"], false,
        "the switch outlives a restart: {rule}"
    );
    assert_eq!(timer(cluster.get("/api/v1/timers").await)["enabled"], false);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        ticks(&log).len(),
        before,
        "a paused timer fired after a restart"
    );

    let (code, body) = api
        .post("/api/v1/rules/t.every/enable", &serde_json::json!({}))
        .await;
    assert_eq!(code, 200, "{body}");
    // The switch is in force when the API answers; the timer's own view follows it.
    let resumed = sluice_testkit::eventually(
        "the timer to show it resumed",
        Duration::from_secs(5),
        || async {
            let shown = timer(cluster.get("/api/v1/timers").await);
            (shown["enabled"] == true).then_some(shown)
        },
    )
    .await;
    assert!(resumed["next_fire"].is_string(), "{resumed}");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let fired = ticks(&log);
    assert!(fired.len() >= before + 2, "resumed ticks: {fired:#?}");
    assert!(
        fired.iter().all(|(_, catchup)| !catchup),
        "ticks missed while paused fired: {fired:#?}"
    );
    let unique: BTreeSet<&String> = fired.iter().map(|(n, _)| n).collect();
    assert_eq!(unique.len(), fired.len(), "{fired:#?}");

    // A timer rule defined through the API starts at once and stops when deleted.
    let api_log = logs.path().join("api.log");
    let definition = serde_json::json!({
        "pack": "t",
        "name": "from_api",
        "trigger": {"type": "core.st2.IntervalTimer", "parameters": {"unit": "seconds", "delta": 1}},
        "action": {"ref": "t.tick", "parameters": {
            "nominal": "{{ trigger.nominal_time }}",
            "catchup": "{{ trigger.catchup }}",
            "file": api_log.display().to_string(),
        }},
    });
    let (code, created) = api.post("/api/v1/rules", &definition).await;
    assert_eq!(code, 201, "{created}");
    // The rule is in force when the API answers; the timers' view follows it.
    let listed = sluice_testkit::eventually(
        "the new rule's timer to be listed",
        Duration::from_secs(5),
        || async { find_timer(&cluster.get("/api/v1/timers").await, "t.from_api") },
    )
    .await;
    assert!(listed["next_fire"].is_string(), "{listed}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (code, _) = api.delete("/api/v1/rules/t.from_api").await;
    assert_eq!(code, 200);
    // The execution of a tick already on its way may still land.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let fired = ticks(&api_log).len();
    assert!(fired >= 2, "ticks of the API's timer: {fired}");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(ticks(&api_log).len(), fired, "a deleted rule's timer fired");
    let timers = cluster.get("/api/v1/timers").await;
    assert!(
        !timers
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["rule"] == "t.from_api"),
        "{timers}"
    );

    let (code, body) = api
        .post("/api/v1/rules/t.nothing/disable", &serde_json::json!({}))
        .await;
    assert_eq!(code, 404, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("t.nothing"),
        "{body}"
    );
}
