//! Who may call the API: no anonymous access to anything but `/healthz`, scoped tokens
//! that expire and can be revoked, the first admin token `sluice up` writes, and the CLI's
//! token commands. Against `sluice up` in-process with a real nats-server and SQLite.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;
use std::time::Duration;

use common::{Sluice, StoreKind, client_with_token};
use serde_json::{Value, json};
use sluice_testkit::free_port;

/// `method path` with `client`: status and JSON body.
async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client.request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn create_token(sluice: &Sluice, body: Value) -> (u16, Value) {
    sluice.post("/api/v1/tokens", &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_but_healthz_answers_without_a_valid_token() {
    let sluice = Sluice::start(StoreKind::Sqlite, &[]).await;
    let anonymous = reqwest::Client::new();
    let api = &sluice.api;

    let response = anonymous
        .get(format!("{api}/api/v1/executions"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"sluice\""
    );
    let body: Value = response.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer"),
        "{body}"
    );

    let run = json!({"action": "core.local", "parameters": {"cmd": "id"}});
    for (method, path, body) in [
        (
            reqwest::Method::POST,
            "/api/v1/executions",
            Some(run.clone()),
        ),
        (
            reqwest::Method::POST,
            "/api/v1/executions/1/cancel",
            Some(json!({})),
        ),
        (reqwest::Method::GET, "/api/v1/actors", None),
        (reqwest::Method::GET, "/api/v1/tokens", None),
        (reqwest::Method::GET, "/metrics", None),
    ] {
        let (status, body) = call(&anonymous, method.clone(), format!("{api}{path}"), body).await;
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert!(body["detail"].is_string(), "{method} {path}: {body}");
    }
    let forged =
        client_with_token("slc_0000000000000000000000000000000000000000000000000000000000000000");
    let (status, body) = call(
        &forged,
        reqwest::Method::POST,
        format!("{api}/api/v1/executions"),
        Some(run),
    )
    .await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (401, Some("the token is not valid"))
    );

    let (status, _) = call(
        &anonymous,
        reqwest::Method::GET,
        format!("{api}/healthz"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    // Nothing ran: the only way in was refused.
    let (_, ledger) = sluice.get("/api/v1/ledger").await;
    assert_eq!(ledger["executions"], json!({}), "{ledger}");

    // StackStorm clients send St2-Api-Key.
    let st2 = reqwest::Client::new()
        .get(format!("{api}/api/v1/executions"))
        .header("St2-Api-Key", &sluice.token)
        .send()
        .await
        .unwrap();
    assert_eq!(st2.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_does_what_its_scope_allows_until_it_is_revoked_or_expires() {
    let sluice = Sluice::start(StoreKind::Sqlite, &[]).await;
    let api = &sluice.api;
    let (status, read) =
        create_token(&sluice, json!({"scope": "read", "name": "dashboards"})).await;
    assert_eq!(status, 201, "{read}");
    let (_, run) = create_token(&sluice, json!({"scope": "run", "expires": "30d"})).await;
    let reader = client_with_token(read["token"].as_str().unwrap());
    let runner = client_with_token(run["token"].as_str().unwrap());
    let submit = json!({"action": "core.noop"});

    let (status, _) = call(
        &reader,
        reqwest::Method::GET,
        format!("{api}/api/v1/executions"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = call(
        &reader,
        reqwest::Method::POST,
        format!("{api}/api/v1/executions"),
        Some(submit.clone()),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("read scope")
            && body["detail"].as_str().unwrap().contains("needs run"),
        "{body}"
    );
    let (status, created) = call(
        &runner,
        reqwest::Method::POST,
        format!("{api}/api/v1/executions"),
        Some(submit),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let (status, body) = call(
        &runner,
        reqwest::Method::POST,
        format!("{api}/api/v1/tokens"),
        Some(json!({"scope": "admin"})),
    )
    .await;
    assert_eq!(status, 403, "a run token cannot make tokens: {body}");

    // The list shows every token and its last use, never a secret.
    let (_, tokens) = sluice.get("/api/v1/tokens").await;
    let text = tokens.to_string();
    assert!(
        !text.contains(read["token"].as_str().unwrap()) && !text.contains("hash"),
        "{text}"
    );
    let listed = |id: &Value| {
        tokens
            .as_array()
            .unwrap()
            .iter()
            .find(|t| &t["id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(listed(&read["id"])["name"], "dashboards");
    assert!(listed(&read["id"])["last_used_at"].is_string());
    assert!(listed(&run["id"])["expires_at"].is_string());

    // Revoked: refused from the next request on.
    let (status, _) = call(
        &client_with_token(&sluice.token),
        reqwest::Method::DELETE,
        format!("{api}/api/v1/tokens/{}", read["id"]),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = call(
        &reader,
        reqwest::Method::GET,
        format!("{api}/api/v1/executions"),
        None,
    )
    .await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (401, Some("the token was revoked"))
    );

    // Expired.
    let (_, brief) = create_token(&sluice, json!({"scope": "read", "expires": "1s"})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = call(
        &client_with_token(brief["token"].as_str().unwrap()),
        reqwest::Method::GET,
        format!("{api}/api/v1/executions"),
        None,
    )
    .await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (401, Some("the token has expired"))
    );

    // Bad requests say what to fix.
    let (status, body) = create_token(&sluice, json!({"scope": "root"})).await;
    assert_eq!(status, 422);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("read, run or admin"),
        "{body}"
    );
    let (status, body) = create_token(&sluice, json!({"scope": "read", "expires": "soon"})).await;
    assert_eq!(status, 422);
    assert!(body["detail"].as_str().unwrap().contains("30d"), "{body}");
    let (status, _) = create_token(&sluice, json!({"scope": "read", "colour": "red"})).await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_admin_token_is_private_and_written_once() {
    let mut sluice = Sluice::start(StoreKind::Sqlite, &[]).await;
    let file = sluice.data_dir.path().join("admin.token");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "readable by its owner only");
    let first = std::fs::read_to_string(&file).unwrap();
    assert!(first.trim().starts_with("slc_") && first.trim().len() == 68);

    // A restart on the same data directory keeps the token and makes no other.
    sluice.shutdown().await;
    sluice.config.metrics_http = Some(format!("127.0.0.1:{}", free_port()).parse().unwrap());
    sluice.boot().await;
    assert_eq!(std::fs::read_to_string(&file).unwrap(), first);
    let (status, tokens) = sluice.get("/api/v1/tokens").await;
    assert_eq!(status, 200);
    assert_eq!(tokens.as_array().unwrap().len(), 1, "{tokens}");
    assert_eq!(tokens[0]["scope"], "admin");

    // The listener named for scraping serves /metrics without credentials; the API's needs one.
    let anonymous = reqwest::Client::new();
    let open = format!("http://{}/metrics", sluice.config.metrics_http.unwrap());
    let scraped = anonymous.get(&open).send().await.unwrap();
    assert_eq!(scraped.status(), 200);
    assert!(scraped.text().await.unwrap().contains("# EOF"));
    let (status, _) = call(
        &anonymous,
        reqwest::Method::GET,
        format!("{}/metrics", sluice.api),
        None,
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_lists_and_revokes_tokens() {
    let sluice = Sluice::start(StoreKind::Sqlite, &[]).await;
    let cli = |args: &[&str], token: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .args(["--api", &sluice.api])
            .env("SLUICE_TOKEN", token)
            .output()
            .unwrap();
        (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    };
    let (ok, out) = cli(
        &[
            "token",
            "create",
            "--scope",
            "read",
            "--expires",
            "30d",
            "--name",
            "ci",
        ],
        &sluice.token,
    );
    assert!(ok, "{out}");
    let token = out.lines().last().unwrap().trim().to_owned();
    assert!(token.starts_with("slc_"), "{out}");

    let (ok, out) = cli(&["execution", "list"], &token);
    assert!(ok, "the new read token works: {out}");
    let (ok, out) = cli(&["run", "core.noop"], &token);
    assert!(!ok && out.contains("HTTP 403"), "{out}");

    let (ok, out) = cli(&["token", "list"], &sluice.token);
    assert!(ok, "{out}");
    let line = out
        .lines()
        .find(|l| l.ends_with(" ci"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("read") && line.contains("live"), "{line}");
    assert!(
        !out.contains(&token),
        "a listing never shows a token: {out}"
    );
    let id = line.split_whitespace().next().unwrap();

    let (ok, out) = cli(&["token", "revoke", id], &sluice.token);
    assert!(ok, "{out}");
    let (ok, out) = cli(&["execution", "list"], &token);
    assert!(!ok && out.contains("the token was revoked"), "{out}");
    let (ok, out) = cli(&["execution", "list"], "slc_nonsense");
    assert!(
        !ok && out.contains("HTTP 401") && out.contains("--token"),
        "{out}"
    );
}

/// A run message published by anyone but the engine: unsigned, signed by another key, or
/// signed by the engine for other content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_message_the_engine_did_not_sign_is_refused_and_recorded() {
    use async_nats::jetstream::message::PublishMessage;
    let sluice = Sluice::start(StoreKind::Sqlite, &[]).await;
    let marker = sluice.data_dir.path().join("forged-ran");
    let forged = sluice_core::RunMessage {
        execution_id: sluice_core::ExecutionId(999),
        attempt: 1,
        action: "core.local".parse().unwrap(),
        runner: sluice_core::RunnerType::LocalShellCmd,
        pack_digest: None,
        entry_point: None,
        parameters: json!({"cmd": format!("touch {}", marker.display())})
            .as_object()
            .unwrap()
            .clone(),
        secret_parameters: vec![],
        positional: vec![],
        config: None,
        timeout_secs: None,
        limits: Default::default(),
        api: None,
        partition: None,
    };
    let payload = sluice_core::encode(&forged).unwrap();
    let engine_key =
        sluice_bus::RunSigner::load_or_create(&sluice.data_dir.path().join("run-signing.key"))
            .unwrap();
    let stranger = sluice_bus::RunSigner::generate().unwrap();
    let header = |value: String| {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(sluice_bus::names::SIGNATURE_HEADER, value.as_str());
        headers
    };
    let attempts = [
        ("unsigned", async_nats::HeaderMap::new()),
        ("another key", header(stranger.sign(&payload))),
        ("other content", header(engine_key.sign(b"something else"))),
        (
            "other content, signed in a tree",
            header(engine_key.sign_together(b"something else").await),
        ),
    ];
    let js = async_nats::jetstream::new(sluice.nats_client().await);
    for (i, (_, headers)) in attempts.iter().enumerate() {
        let message = PublishMessage::build()
            .payload(payload.clone().into())
            .headers(headers.clone())
            .message_id(format!("forged-{i}"));
        js.send_publish("sluice.run.default", message)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let letters =
        sluice_testkit::eventually("four dead letters", Duration::from_secs(20), || async {
            let (_, list) = sluice.get("/api/v1/dead-letters").await;
            let list = list.as_array()?.clone();
            (list.len() == 4).then_some(list)
        })
        .await;
    let reasons: Vec<&str> = letters
        .iter()
        .map(|l| l["reason"].as_str().unwrap())
        .collect();
    for (want, times) in [
        ("no Sluice-Signature header", 1),
        ("signed by an unknown key", 1),
        ("the signature does not match", 2),
    ] {
        assert_eq!(
            reasons
                .iter()
                .filter(|r| r.starts_with("run message refused") && r.contains(want))
                .count(),
            times,
            "{want}: {reasons:?}"
        );
    }
    assert!(
        letters
            .iter()
            .all(|l| l["stream"] == "RUN" && l["payload"].is_null())
    );
    assert!(!marker.exists(), "a forged run message ran");
    let metrics = sluice.metrics().await;
    assert!(
        metrics.contains("sluice_forged_run_messages_total 4"),
        "{metrics}"
    );
    // What the engine issues still runs, signed once.
    let signatures = |metrics: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("sluice_run_signatures_total "))
            .map(|n| n.parse::<u64>().unwrap())
            .unwrap_or(0)
    };
    let signed_before = signatures(&metrics);
    let (status, created) = sluice
        .post(
            "/api/v1/executions",
            &json!({"action": "core.local", "parameters": {"cmd": "true"}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let done = sluice.wait_execution(created["id"].as_i64().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(signatures(&sluice.metrics().await), signed_before + 1);
}
