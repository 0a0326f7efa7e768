//! The dashboard in a real headless Chromium (Debian's `chromium`, driven through its
//! `chromedriver`) against `sluice up` in-process with a real nats-server and SQLite: logging
//! in, live executions, cancel and re-run, rules switched off and the event that explains
//! it, masked secrets, and what a read-only token is shown and refused.
//!
//! With `SLUICE_SCREENSHOTS=DIR` the tests also save the main pages there as PNG files
//! (docs/dashboard/ holds the ones docs/dashboard.md shows).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Sluice, StoreKind, test_pack};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use sluice_testkit::{eventually, free_port, wait_for_port};

const PACK: &[(&str, &str)] = &[
    (
        "actions/hold.yaml",
        "name: hold\ndescription: Holds its one slot\nrunner_type: local-shell-cmd\npolicy: {max_concurrent: 1}\nparameters:\n  cmd: {type: string, default: sleep 300}\n",
    ),
    (
        "actions/check.yaml",
        "name: check\ndescription: Succeeds when asked for yes\nrunner_type: local-shell-cmd\nparameters:\n  want: {type: string, required: true}\n  cmd: {type: string, default: 'echo checking; test \"$SLUICE_PARAM_WANT\" = yes'}\n",
    ),
    (
        "actions/login.yaml",
        "name: login\nrunner_type: local-shell-cmd\nparameters:\n  user: {type: string, required: true}\n  password: {type: string, secret: true, required: true}\n  cmd: {type: string, default: 'true'}\n",
    ),
    (
        "triggers/ping.yaml",
        "name: ping\npayload_schema:\n  type: object\n  required: [want]\n  properties:\n    want: {type: string}\n",
    ),
    (
        "rules/on_ping.yaml",
        "name: on_ping\ntrigger: {type: t.ping}\naction:\n  ref: t.check\n  parameters:\n    want: '{{ trigger.want }}'\n",
    ),
];

/// A headless Chromium behind its chromedriver, in a profile of its own.
struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Self {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "chromedriver (Debian's chromium-driver) is needed: ./scripts/test.sh installs it",
            );
        wait_for_port(port, Duration::from_secs(20)).expect("chromedriver listens");
        let profile = tempfile::tempdir().unwrap();
        let mut options = json!({
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.path().display()),
            ]
        });
        if std::path::Path::new("/usr/bin/chromium").exists() {
            options["binary"] = json!("/usr/bin/chromium");
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), options);
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session");
        Self {
            client,
            driver,
            _profile: profile,
        }
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    async fn url(&self) -> String {
        self.client.current_url().await.unwrap().to_string()
    }

    /// The text of the first element matching `css`, once `check` holds for it.
    async fn wait_text(&self, css: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        for _ in 0..150 {
            if let Ok(element) = self.client.find(Locator::Css(css)).await
                && let Ok(text) = element.text().await
            {
                if check(&text) {
                    return text;
                }
                last = text;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let page = match self.client.find(Locator::Id("view")).await {
            Ok(view) => view.text().await.unwrap_or_default(),
            Err(e) => e.to_string(),
        };
        panic!("{what}: {css} never held it; last seen {last:?}; the page: {page}");
    }

    async fn click(&self, css: &str) {
        let element = self
            .client
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"));
        element.click().await.unwrap();
    }

    async fn present(&self, css: &str) -> bool {
        !self
            .client
            .find_all(Locator::Css(css))
            .await
            .unwrap()
            .is_empty()
    }

    async fn run_js(&self, script: &str) -> Value {
        self.client.execute(script, Vec::new()).await.unwrap()
    }

    async fn run_async_js(&self, script: &str) -> Value {
        self.client.execute_async(script, Vec::new()).await.unwrap()
    }

    async fn log_in(&self, api: &str, token: &str, page: &str) {
        self.goto(&format!("{api}{page}")).await;
        assert!(
            self.url().await.contains("/login?next="),
            "a page without a session sends the caller to log in: {}",
            self.url().await
        );
        let field = self.client.find(Locator::Id("token")).await.unwrap();
        field.send_keys(token).await.unwrap();
        self.click("#login button[type=submit]").await;
        eventually("the page asked for", Duration::from_secs(10), || async {
            let url = self.url().await;
            url.ends_with(page).then_some(())
        })
        .await;
    }

    /// Saves the page as `<SLUICE_SCREENSHOTS>/<name>.png` when that is set; checks it is a
    /// PNG either way.
    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        if let Some(dir) = std::env::var_os("SLUICE_SCREENSHOTS") {
            let dir = PathBuf::from(dir);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
        }
    }

    async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}

async fn newest_event(sluice: &Sluice, after: i64) -> i64 {
    eventually(
        "the event to be recorded",
        Duration::from_secs(20),
        || async {
            let (_, events) = sluice.get("/api/v1/events?trigger=t.ping&limit=1").await;
            events[0]["id"].as_i64().filter(|id| *id > after)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_watches_cancels_reruns_and_switches_rules_from_the_dashboard() {
    let pack = test_pack(PACK);
    let sluice = Sluice::start(StoreKind::Sqlite, &[pack.path().to_owned()]).await;
    let api = sluice.api.clone();
    let browser = Browser::start().await;

    browser.log_in(&api, &sluice.token, "/executions").await;
    let cookie = browser.run_js("return document.cookie;").await;
    assert!(
        !cookie.as_str().unwrap_or_default().contains("sluice_token"),
        "the token's cookie is HttpOnly: scripts cannot read it ({cookie})"
    );
    browser
        .wait_text("#who", "who is logged in", |t| t.contains("admin"))
        .await;

    // A trigger published as `nats pub` does appears in the live list and finishes there,
    // with no reload: the marker set on this page survives.
    browser.run_js("window.sluiceMarker = 'still here';").await;
    sluice
        .publish("sluice.trigger.t.ping", br#"{"want": "yes"}"#)
        .await;
    browser
        .wait_text("#view table", "the triggered execution finishing", |t| {
            t.lines()
                .any(|l| l.contains("t.check") && l.contains("succeeded"))
        })
        .await;
    assert_eq!(
        browser.run_js("return window.sluiceMarker;").await,
        "still here"
    );
    browser
        .wait_text("#list-rate", "the live rate", |t| t.contains("per second"))
        .await;
    browser.screenshot("executions").await;

    // A queued execution is cancelled from its page.
    let running = sluice.client().submit("t.hold", json!({})).await;
    let queued = sluice.client().submit("t.hold", json!({})).await;
    browser.goto(&format!("{api}/executions/{queued}")).await;
    browser
        .wait_text("#view h1", "the queued execution", |t| {
            t.contains("requested")
        })
        .await;
    browser.click("#cancel").await;
    browser
        .wait_text("#view h1", "the execution cancelled", |t| {
            t.contains("cancelled")
        })
        .await;
    let (_, shown) = sluice.get(&format!("/api/v1/executions/{queued}")).await;
    assert_eq!(shown["status"], "cancelled", "{shown:#}");
    assert!(
        !browser.present("#cancel").await,
        "an ended execution offers no cancel"
    );

    // The actions page shows the held slot live; the actor tree shows the execution.
    browser.goto(&format!("{api}/actions")).await;
    browser
        .wait_text("tr[data-action='t.hold']", "t.hold's slot taken", |t| {
            t.contains("1 / 1")
        })
        .await;
    browser
        .wait_text("#view", "t.hold's policy in words", |t| {
            t.contains("at most 1 at once")
        })
        .await;
    browser.screenshot("actions").await;
    browser.goto(&format!("{api}/actors")).await;
    browser
        .wait_text("#view", "the actor tree", |t| {
            t.contains("engine/action/t.hold")
        })
        .await;
    browser.screenshot("actors").await;
    let (status, _) = sluice
        .post(&format!("/api/v1/executions/{running}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 202);

    // A failed execution is run again with a changed parameter.
    let failed = sluice
        .client()
        .submit("t.check", json!({"want": "no"}))
        .await;
    assert_eq!(sluice.wait_execution(failed).await["status"], "failed");
    browser.goto(&format!("{api}/executions/{failed}")).await;
    browser
        .wait_text("#view h1", "the failed execution", |t| t.contains("failed"))
        .await;
    browser
        .wait_text("#output", "its output", |t| t.contains("checking"))
        .await;
    browser.screenshot("execution").await;
    browser.click("#show-rerun").await;
    browser
        .run_js(
            "const t = document.getElementById('rerun-parameters'); \
             const p = JSON.parse(t.value); p.want = 'yes'; t.value = JSON.stringify(p);",
        )
        .await;
    browser.click("#rerun").await;
    let rerun: i64 = eventually("the re-run's page", Duration::from_secs(10), || async {
        let url = browser.url().await;
        let id = url.rsplit('/').next()?.parse::<i64>().ok()?;
        (id != failed).then_some(id)
    })
    .await;
    browser
        .wait_text("#view h1", "the re-run succeeding", |t| {
            t.contains("succeeded")
        })
        .await;
    let (_, again) = sluice.get(&format!("/api/v1/executions/{rerun}")).await;
    assert_eq!(again["rerun_of"], failed, "{again:#}");
    assert_eq!(again["parameters"]["want"], "yes", "{again:#}");
    assert_eq!(again["status"], "succeeded", "{again:#}");

    // A secret parameter shows masked on the page, and its value is nowhere in it.
    let login = sluice
        .client()
        .submit("t.login", json!({"user": "ops", "password": "hunter2"}))
        .await;
    browser.goto(&format!("{api}/executions/{login}")).await;
    browser
        .wait_text("#view", "the parameters", |t| {
            t.contains("\"user\": \"ops\"")
        })
        .await;
    let page = browser.client.source().await.unwrap();
    assert!(page.contains("********"), "the secret shows masked");
    assert!(
        !page.contains("hunter2"),
        "the secret's value is not in the page"
    );

    // A rule switched off from the rules page: the next event says so.
    let before = newest_event(&sluice, 0).await;
    browser.goto(&format!("{api}/rules")).await;
    browser.click("tr[data-rule='t.on_ping'] button").await;
    browser
        .wait_text("tr[data-rule='t.on_ping']", "the rule disabled", |t| {
            t.contains("disabled")
        })
        .await;
    browser.screenshot("rules").await;
    sluice
        .publish("sluice.trigger.t.ping", br#"{"want": "yes"}"#)
        .await;
    let event = newest_event(&sluice, before).await;
    browser.goto(&format!("{api}/events/{event}")).await;
    browser
        .wait_text(
            "tr[data-rule='t.on_ping'] .verdict",
            "the event explained",
            |t| t.contains("rule disabled"),
        )
        .await;
    browser.screenshot("event").await;
    let (_, rules) = sluice.get("/api/v1/rules/t.on_ping").await;
    assert_eq!(rules["enabled"], false, "{rules:#}");

    // A workflow's page draws its tasks as a graph and its children on a timeline.
    let workflow = sluice
        .client()
        .submit("examples.deploy_all", json!({}))
        .await;
    assert_eq!(sluice.wait_execution(workflow).await["status"], "succeeded");
    browser.goto(&format!("{api}/executions/{workflow}")).await;
    browser
        .wait_text("svg.graph", "the workflow's graph", |t| {
            t.contains("each_region") && t.contains("3/3 ok") && t.contains("report")
        })
        .await;
    browser
        .wait_text("#view", "the items on the timeline", |t| {
            (0..3).all(|i| t.contains(&format!("each_region[{i}]")))
        })
        .await;
    browser.screenshot("workflow").await;

    // The overview draws from the live snapshots.
    browser.goto(&format!("{api}/")).await;
    browser
        .wait_text("#rate", "the overview's rate", |t| t != "…")
        .await;
    browser
        .wait_text("#view", "the overview's queues", |t| t.contains("t.hold"))
        .await;
    browser.screenshot("overview").await;

    // On a phone's width the page itself does not scroll sideways (wide tables scroll in
    // their own box).
    browser.client.set_window_size(390, 844).await.unwrap();
    browser.goto(&format!("{api}/executions")).await;
    browser
        .wait_text("#view table", "the list on a phone", |t| {
            t.contains("t.check")
        })
        .await;
    let overflow = browser
        .run_js("return document.documentElement.scrollWidth - window.innerWidth;")
        .await;
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "the page is wider than the phone by {overflow} px"
    );
    browser.screenshot("phone").await;
    browser.client.set_window_size(1280, 1000).await.unwrap();

    // A cross-site request riding on the cookie (no dashboard header) is refused even for
    // an admin, and changes nothing.
    let another = sluice.client().submit("t.hold", json!({})).await;
    let forged = browser
        .run_async_js(&format!(
            "const done = arguments[arguments.length - 1]; \
             fetch('/api/v1/executions/{another}/cancel', {{method: 'POST', credentials: 'same-origin'}}) \
               .then(r => done(r.status));"
        ))
        .await;
    assert_eq!(forged, 403, "a cookie alone does not change anything");
    let (_, still) = sluice.get(&format!("/api/v1/executions/{another}")).await;
    assert_ne!(still["status"], "cancelled", "{still:#}");
    sluice
        .post(&format!("/api/v1/executions/{another}/cancel"), &json!({}))
        .await;

    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_token_is_shown_no_cancel_and_a_forged_cancel_is_refused() {
    let pack = test_pack(PACK);
    let sluice = Sluice::start(StoreKind::Sqlite, &[pack.path().to_owned()]).await;
    let api = sluice.api.clone();
    let (status, created) = sluice
        .post(
            "/api/v1/tokens",
            &json!({"name": "watcher", "scope": "read"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let read_token = created["token"].as_str().unwrap().to_owned();
    let running = sluice.client().submit("t.hold", json!({})).await;

    let browser = Browser::start().await;
    // A wrong token is turned away at the form.
    browser.goto(&format!("{api}/login")).await;
    let field = browser.client.find(Locator::Id("token")).await.unwrap();
    field.send_keys("slc_not-a-token").await.unwrap();
    browser.click("#login button[type=submit]").await;
    browser
        .wait_text("#failed", "the refusal", |t| t.contains("not accepted"))
        .await;

    browser
        .log_in(&api, &read_token, &format!("/executions/{running}"))
        .await;
    browser
        .wait_text("#view h1", "the running execution", |t| {
            t.contains("running") || t.contains("scheduled")
        })
        .await;
    browser
        .wait_text("#who", "who is logged in", |t| t.contains("watcher (read)"))
        .await;
    assert!(!browser.present("#cancel").await, "no cancel for read");
    assert!(!browser.present("#show-rerun").await, "no re-run for read");
    let tokens_link_hidden = browser
        .run_js("return document.querySelector('nav a[href=\"/tokens\"]').hidden;")
        .await;
    assert_eq!(tokens_link_hidden, true, "no tokens page for read");

    // A cancel forged from the page, with the dashboard's own header: the API refuses the
    // scope, and the execution runs on.
    let forged = browser
        .run_async_js(&format!(
            "const done = arguments[arguments.length - 1]; \
             fetch('/api/v1/executions/{running}/cancel', {{method: 'POST', credentials: 'same-origin', \
               headers: {{'X-Sluice-Dashboard': '1', 'Content-Type': 'application/json'}}, body: '{{}}'}}) \
               .then(async r => done([r.status, await r.json()]));"
        ))
        .await;
    assert_eq!(forged[0], 403, "{forged}");
    assert!(
        forged[1]["detail"].as_str().unwrap().contains("read scope"),
        "{forged}"
    );
    let (_, still) = sluice.get(&format!("/api/v1/executions/{running}")).await;
    assert!(
        matches!(still["status"].as_str(), Some("running" | "scheduled")),
        "{still:#}"
    );

    // Logging out ends the session: the pages and the API turn the browser away.
    browser.click("form.who button").await;
    eventually("the login form", Duration::from_secs(10), || async {
        browser.url().await.contains("/login").then_some(())
    })
    .await;
    let after = browser
        .run_async_js(
            "const done = arguments[arguments.length - 1]; \
             fetch('/api/v1/executions').then(r => done(r.status));",
        )
        .await;
    assert_eq!(after, 401);
    browser.goto(&format!("{api}/executions")).await;
    assert!(browser.url().await.contains("/login?next="));

    sluice
        .post(&format!("/api/v1/executions/{running}/cancel"), &json!({}))
        .await;
    browser.close().await;
}

/// The first `count` snapshots of `GET /api/v1/live{query}`.
async fn snapshots(sluice: &Sluice, query: &str, count: usize) -> Vec<Value> {
    let mut response = sluice
        .http
        .get(format!("{}/api/v1/live{query}", sluice.api))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut text = String::new();
    let mut found = Vec::new();
    while found.len() < count {
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("a snapshot every second")
            .unwrap()
            .expect("the stream goes on");
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            if event.lines().any(|l| l == "event: snapshot") {
                let data: String = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                found.push(serde_json::from_str(&data).unwrap());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_stream_shows_queues_and_the_newest_executions_and_the_session_its_scope() {
    let pack = test_pack(PACK);
    let sluice = Sluice::start(StoreKind::Sqlite, &[pack.path().to_owned()]).await;
    let running = sluice.client().submit("t.hold", json!({})).await;
    let queued = sluice.client().submit("t.hold", json!({})).await;
    let checked = sluice
        .client()
        .submit("t.check", json!({"want": "yes"}))
        .await;
    assert_eq!(sluice.wait_execution(checked).await["status"], "succeeded");

    let snap = &snapshots(&sluice, "?window=2&action=t.hold", 1).await[0];
    let hold = snap["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["action"] == "t.hold")
        .unwrap_or_else(|| panic!("t.hold's queue: {snap:#}"));
    assert_eq!(hold["active_count"], 1, "{hold:#}");
    assert_eq!(hold["queue_length"], 1, "{hold:#}");
    assert!(
        hold["oldest_wait_seconds"].as_f64().unwrap() >= 0.0,
        "{hold:#}"
    );
    let ids: Vec<i64> = snap["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![queued, running], "newest first, t.hold only");
    assert!(
        snap["executions"][0].get("parameters").is_none(),
        "the list carries no parameters"
    );
    assert!(
        snap["ended"]["succeeded"].as_u64().unwrap() >= 1,
        "{snap:#}"
    );
    let this_hour: u64 = snap["minutes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["ended"]["succeeded"].as_u64())
        .sum();
    assert!(this_hour >= 1, "the minute under way counts it: {snap:#}");
    assert_eq!(snap["workers"][0]["name"], "worker/test", "{snap:#}");

    let (status, problem) = sluice.get("/api/v1/live?window=500").await;
    assert_eq!(status, 400);
    assert!(problem["detail"].as_str().unwrap().contains("at most 200"));

    let (_, session) = sluice.get("/api/v1/session").await;
    assert_eq!(session["scope"], "admin", "{session:#}");
    assert_eq!(session["may"], json!({"run": true, "admin": true}));

    // Pages without a session send the caller to the login form, and come back after.
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = plain
        .get(format!("{}/executions/{running}", sluice.api))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 303);
    assert_eq!(
        page.headers()["location"],
        format!("/login?next=%2Fexecutions%2F{running}")
    );
    let login = plain
        .post(format!("{}/login", sluice.api))
        .form(&[("token", sluice.token.as_str()), ("next", "//evil.example")])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    assert_eq!(login.headers()["location"], "/", "never to another site");
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session_cookie = cookie.split(';').next().unwrap().to_owned();
    let shown = plain
        .get(format!("{}/executions/{running}", sluice.api))
        .header("cookie", &session_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(shown.status(), 200);
    assert!(
        shown.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    // The cookie alone changes nothing: a cross-site form could send it.
    let forged = plain
        .post(format!("{}/api/v1/executions/{queued}/cancel", sluice.api))
        .header("cookie", &session_cookie)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let (_, still) = sluice.get(&format!("/api/v1/executions/{queued}")).await;
    assert_eq!(still["status"], "requested", "{still:#}");
    // A webhook takes no cookie at all.
    let webhook = plain
        .post(format!("{}/api/v1/webhooks/st2", sluice.api))
        .header("cookie", &session_cookie)
        .header("x-sluice-dashboard", "1")
        .json(&json!({"trigger": "t.ping", "payload": {"want": "yes"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(webhook.status(), 401);

    for id in [queued, running] {
        sluice
            .post(&format!("/api/v1/executions/{id}/cancel"), &json!({}))
            .await;
    }
}
