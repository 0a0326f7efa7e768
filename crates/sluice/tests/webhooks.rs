//! Webhooks through a real engine, NATS and store: each authentication scheme accepts the
//! right credential and refuses a wrong one, a replayed delivery creates no second event,
//! bad bodies get a 4xx and leave the engine serving, and StackStorm's generic endpoint
//! fires any trigger.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::{Sluice, StoreKind, client_with_token, test_pack};
use serde_json::{Value, json};
use sluice_testkit::eventually;

const GITHUB_SECRET: &str = "gh-s3cret";
const HMAC_SECRET: &str = "hm-s3cret";
const STD_KEY: &[u8] = b"standard-webhooks-key-32-bytes!!";

fn rule(name: &str, parameters: &str) -> (String, String) {
    (
        format!("rules/{name}.yaml"),
        format!(
            "name: {name}\ntrigger:\n  type: core.st2.webhook\n  parameters: {parameters}\naction:\n  ref: t.got\n  parameters:\n    hook: {name}\n    ref: \"{{{{ trigger.body.ref }}}}\"\n"
        ),
    )
}

fn hmac_hex(key: &[u8], message: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    hex::encode(ring::hmac::sign(&key, message).as_ref())
}

async fn post(
    sluice: &Sluice,
    http: &reqwest::Client,
    url: &str,
    headers: &[(&str, String)],
    body: &str,
) -> (u16, Value) {
    let mut request = http
        .post(format!("{}/api/v1/webhooks/{url}", sluice.api))
        .header("Content-Type", "application/json")
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn refs_of(sluice: &Sluice, hook: &str, count: usize) -> Vec<String> {
    eventually(
        &format!("{count} runs of {hook}"),
        Duration::from_secs(20),
        || async {
            let runs: Vec<String> = sluice
                .executions()
                .await
                .iter()
                .filter(|e| e["action"] == "t.got" && e["parameters"]["hook"] == hook)
                .map(|e| {
                    e["parameters"]["ref"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect();
            (runs.len() == count).then_some(runs)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_authenticate_deduplicate_and_fire_their_rules() {
    let mut files = vec![(
        "actions/got.yaml".to_owned(),
        "name: got\nrunner_type: noop\nparameters:\n  hook: {type: string}\n  ref: {type: string}\n".to_owned(),
    )];
    files.push(rule("by_token", "{url: deploys/token}"));
    files.push(rule(
        "by_github",
        "{url: /deploys/github/, auth: github, secret: system.gh}",
    ));
    files.push(rule(
        "by_std",
        "{url: std, auth: standard-webhooks, secret: system.std}",
    ));
    files.push(rule(
        "by_hmac",
        "{url: hmac, auth: hmac-sha256, secret: system.hm, header: X-Signature}",
    ));
    files.push(rule("by_none", "{url: open, auth: none}"));
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let pack = test_pack(&refs);
    let sluice = Sluice::start(StoreKind::Sqlite, &[pack.path().to_owned()]).await;
    let admin = sluice.http.clone();
    let whsec = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(STD_KEY)
    );
    for (key, value) in [
        ("gh", GITHUB_SECRET.to_owned()),
        ("hm", HMAC_SECRET.to_owned()),
        ("std", whsec),
    ] {
        let response = admin
            .put(format!("{}/api/v1/keys/system.{key}", sluice.api))
            .json(&json!({"value": value, "secret": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let anonymous = reqwest::Client::new();

    // Token (the default): none, a read token and a run token.
    let (status, _) = post(
        &sluice,
        &anonymous,
        "deploys/token",
        &[],
        r#"{"ref": "t0"}"#,
    )
    .await;
    assert_eq!(status, 401);
    let (_, created) = sluice
        .post(
            "/api/v1/tokens",
            &json!({"scope": "read", "name": "viewer"}),
        )
        .await;
    let reader = client_with_token(created["token"].as_str().unwrap());
    let (status, _) = post(&sluice, &reader, "deploys/token", &[], r#"{"ref": "t0"}"#).await;
    assert_eq!(status, 403);
    let (status, accepted) = post(&sluice, &admin, "deploys/token", &[], r#"{"ref": "t1"}"#).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["duplicate"], false);
    assert_eq!(refs_of(&sluice, "by_token", 1).await, ["t1"]);

    // GitHub: the right signature, a wrong one, and a replayed delivery.
    let body = r#"{"ref": "g1"}"#;
    let signed = |body: &str| {
        format!(
            "sha256={}",
            hmac_hex(GITHUB_SECRET.as_bytes(), body.as_bytes())
        )
    };
    let github = |signature: String| {
        vec![
            ("X-Hub-Signature-256", signature),
            ("X-GitHub-Delivery", "delivery-1".to_owned()),
        ]
    };
    let (status, _) = post(
        &sluice,
        &anonymous,
        "deploys/github",
        &github(signed("{}")),
        body,
    )
    .await;
    assert_eq!(status, 401, "a signature over another body");
    let (status, first) = post(
        &sluice,
        &anonymous,
        "/deploys/github",
        &github(signed(body)),
        body,
    )
    .await;
    assert_eq!(
        (status, &first["duplicate"]),
        (202, &json!(false)),
        "{first}"
    );
    let (status, again) = post(
        &sluice,
        &anonymous,
        "deploys/github",
        &github(signed(body)),
        body,
    )
    .await;
    assert_eq!(
        (status, &again["duplicate"]),
        (202, &json!(true)),
        "{again}"
    );
    assert_eq!(refs_of(&sluice, "by_github", 1).await, ["g1"]);

    // Standard Webhooks: signed now, and signed too long ago.
    let std_headers = |at: i64, body: &str| {
        let id = format!("msg-{at}");
        let signature = base64::engine::general_purpose::STANDARD.encode(
            hex::decode(hmac_hex(STD_KEY, format!("{id}.{at}.{body}").as_bytes())).unwrap(),
        );
        vec![
            ("webhook-id", id),
            ("webhook-timestamp", at.to_string()),
            ("webhook-signature", format!("v1,{signature}")),
        ]
    };
    let now = chrono::Utc::now().timestamp();
    let (status, _) = post(
        &sluice,
        &anonymous,
        "std",
        &std_headers(now - 3600, r#"{"ref": "s0"}"#),
        r#"{"ref": "s0"}"#,
    )
    .await;
    assert_eq!(status, 401, "a timestamp an hour old");
    let (status, _) = post(
        &sluice,
        &anonymous,
        "std",
        &std_headers(now, r#"{"ref": "s1"}"#),
        r#"{"ref": "s1"}"#,
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(refs_of(&sluice, "by_std", 1).await, ["s1"]);

    // A plain HMAC header.
    let body = r#"{"ref": "h1"}"#;
    let (status, _) = post(
        &sluice,
        &anonymous,
        "hmac",
        &[("X-Signature", "00".repeat(32))],
        body,
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = post(
        &sluice,
        &anonymous,
        "hmac",
        &[(
            "X-Signature",
            hmac_hex(HMAC_SECRET.as_bytes(), body.as_bytes()),
        )],
        body,
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(refs_of(&sluice, "by_hmac", 1).await, ["h1"]);

    // No authentication, as the rule says; a form body; bodies that do not parse.
    let response = anonymous
        .post(format!("{}/api/v1/webhooks/open", sluice.api))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("ref=form-1&other=x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(refs_of(&sluice, "by_none", 1).await, ["form-1"]);
    let (status, bad) = post(&sluice, &anonymous, "open", &[], "{not json").await;
    assert_eq!(status, 400, "{bad}");
    assert!(
        bad["detail"]
            .as_str()
            .unwrap()
            .contains("not acceptable JSON"),
        "{bad}"
    );
    let (status, _) = post(&sluice, &anonymous, "nope", &[], "{}").await;
    assert_eq!(status, 404);
    let big = format!(r#"{{"ref": "{}"}}"#, "x".repeat(600 * 1024));
    let (status, _) = post(&sluice, &anonymous, "open", &[], &big).await;
    assert_eq!(status, 413);
    let (status, _) = sluice.get("/healthz").await;
    assert_eq!(status, 200, "the engine still serves");

    // StackStorm's generic endpoint: any trigger, with a run token.
    let (status, generic) = post(
        &sluice,
        &admin,
        "st2",
        &[],
        r#"{"trigger": "examples.alert", "payload": {"host": "db9", "severity": "info"}}"#,
    )
    .await;
    assert_eq!(status, 202, "{generic}");
    eventually("the generic event", Duration::from_secs(20), || async {
        let (_, events) = sluice.get("/api/v1/events").await;
        events
            .as_array()?
            .iter()
            .any(|e| e["trigger"] == "examples.alert" && e["payload"]["host"] == "db9")
            .then_some(())
    })
    .await;

    // The refusals were counted, and none became an event.
    let metrics = sluice.metrics().await;
    assert!(
        metrics.contains("sluice_webhook_refusals_total{reason=\"unauthorized\"}"),
        "{metrics}"
    );
    let (_, events) = sluice.get("/api/v1/events?limit=100").await;
    let webhook_events = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["trigger"] == "core.st2.webhook")
        .count();
    assert_eq!(webhook_events, 5, "{events:#}");
}
