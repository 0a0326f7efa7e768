//! The datastore through the API: scopes of access, compare-and-set revisions, TTL,
//! secrets masked unless an admin asks, keys in action defaults, and the secrets key's
//! rotation sealing every stored secret again.

mod common;

use std::time::{Duration, Instant};

use common::{Sluice, StoreKind, client_with_token, test_pack};
use serde_json::{Value, json};
use sluice_core::secrets::key_id_of;

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http.request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_scoped_versioned_expiring_and_masked() {
    let sluice = Sluice::start(StoreKind::Sqlite, &[]).await;
    let admin = sluice.http.clone();
    let key = |name: &str| format!("{}/api/v1/keys/{name}", sluice.api);
    let put = |name: &str, body: Value| call(&admin, reqwest::Method::PUT, key(name), Some(body));

    // Compare-and-set: 0 means "only if absent"; a stale revision is a conflict.
    let (status, first) = put(
        "system.region",
        json!({"value": "eu-west-1", "revision": 0}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    let r1 = first["revision"].as_u64().unwrap();
    let (status, again) = put("system.region", json!({"value": "x", "revision": 0})).await;
    assert_eq!(status, 409, "{again}");
    assert!(
        again["detail"].as_str().unwrap().contains("exists"),
        "{again}"
    );
    let (status, second) = put(
        "system.region",
        json!({"value": "eu-north-1", "revision": r1}),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    let r2 = second["revision"].as_u64().unwrap();
    let (status, stale) = put(
        "system.region",
        json!({"value": "us-east-1", "revision": r1}),
    )
    .await;
    assert_eq!(status, 409, "{stale}");
    assert!(
        stale["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("revision {r2}")),
        "{stale}"
    );

    // A secret: masked to everyone, in clear to an admin who asks, never to a read token.
    let (status, secret) = put(
        "system.db_password",
        json!({"value": "hunter2-kv", "secret": true}),
    )
    .await;
    assert_eq!(
        (status, &secret["value"]),
        (200, &json!("********")),
        "{secret}"
    );
    let (_, created) = call(
        &admin,
        reqwest::Method::POST,
        format!("{}/api/v1/tokens", sluice.api),
        Some(json!({"scope": "read", "name": "viewer"})),
    )
    .await;
    let reader = client_with_token(created["token"].as_str().unwrap());
    let (status, listed) = call(
        &reader,
        reqwest::Method::GET,
        format!("{}/api/v1/keys", sluice.api),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["system.db_password", "system.region"]);
    assert!(!listed.to_string().contains("hunter2"), "{listed}");
    let (status, refused) = call(
        &reader,
        reqwest::Method::GET,
        key("system.db_password") + "?decrypt=true",
        None,
    )
    .await;
    assert_eq!(status, 403, "{refused}");
    let (status, refused) = call(
        &reader,
        reqwest::Method::PUT,
        key("system.x"),
        Some(json!({"value": 1})),
    )
    .await;
    assert_eq!(status, 403, "{refused}");
    let (status, open) = call(
        &admin,
        reqwest::Method::GET,
        key("system.db_password") + "?decrypt=true",
        None,
    )
    .await;
    assert_eq!(
        (status, &open["value"]),
        (200, &json!("hunter2-kv")),
        "{open}"
    );

    // Bad input is named.
    let (status, bad) = put("region", json!({"value": 1})).await;
    assert_eq!(status, 400, "{bad}");
    assert!(
        bad["detail"].as_str().unwrap().contains("system.<name>"),
        "{bad}"
    );
    let (status, bad) = put("system.a", json!({"value": 1, "ttl": "soon"})).await;
    assert_eq!(status, 422, "{bad}");
    assert!(
        bad["detail"].as_str().unwrap().contains("\"soon\""),
        "{bad}"
    );

    // A TTL: gone for readers at once when due, and removed from the bucket.
    let (status, _) = put("system.session", json!({"value": "s", "ttl": "1s"})).await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = call(&admin, reqwest::Method::GET, key("system.session"), None).await;
        let bucket = sluice.nats_client().await;
        let gone_from_bucket = async_nats::jetstream::new(bucket)
            .get_key_value("sluice-datastore")
            .await
            .unwrap()
            .get("system.session")
            .await
            .unwrap()
            .is_none();
        if status == 404 && gone_from_bucket {
            break;
        }
        assert!(Instant::now() < deadline, "the key outlived its TTL");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Delete, compare-and-set too.
    let (status, _) = call(
        &admin,
        reqwest::Method::DELETE,
        key("system.region") + &format!("?revision={r1}"),
        None,
    )
    .await;
    assert_eq!(status, 409);
    let (status, _) = call(
        &admin,
        reqwest::Method::DELETE,
        key("system.region") + &format!("?revision={r2}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(&admin, reqwest::Method::GET, key("system.region"), None).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_read_the_datastore_and_rotation_seals_everything_again() {
    let pack = test_pack(&[(
        "actions/connect.yaml",
        "name: connect\nrunner_type: local-shell-cmd\nparameters:\n  host: {type: string, default: '{{ st2kv.system.db_host }}'}\n  password: {type: string, secret: true, default: '{{ st2kv.system.db_password | decrypt_kv }}'}\n  cmd: {type: string, default: 'test \"$SLUICE_PARAM_PASSWORD\" = \"kv-s3cret\" && echo \"$SLUICE_PARAM_HOST\"'}\n",
    )]);
    let sluice = Sluice::start(StoreKind::Sqlite, &[pack.path().to_owned()]).await;
    let admin = sluice.http.clone();
    let put = |name: &str, body: Value| {
        call(
            &admin,
            reqwest::Method::PUT,
            format!("{}/api/v1/keys/{name}", sluice.api),
            Some(body),
        )
    };
    assert_eq!(
        put("system.db_host", json!({"value": "db1.internal"}))
            .await
            .0,
        200
    );
    assert_eq!(
        put(
            "system.db_password",
            json!({"value": "kv-s3cret", "secret": true})
        )
        .await
        .0,
        200
    );
    let (status, created) = sluice
        .post("/api/v1/executions", &json!({"action": "t.connect"}))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["parameters"]["host"], "db1.internal");
    assert_eq!(created["parameters"]["password"], "********");
    let done = sluice.wait_execution(created["id"].as_i64().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(
        done["result"]["stdout"].as_str().unwrap().trim(),
        "db1.internal"
    );

    // Rotation: a new key seals; what was stored under the old one is sealed again.
    let store = sluice_store::Store::connect(
        &sluice
            .data_dir
            .path()
            .join("sluice.db")
            .display()
            .to_string(),
    )
    .await
    .unwrap();
    let stored_key = |store: sluice_store::Store, id: i64| async move {
        let e = store
            .get_execution(sluice_core::ExecutionId(id))
            .await
            .unwrap()
            .unwrap();
        key_id_of(e.parameters["password"].as_str().unwrap())
            .unwrap()
            .to_owned()
    };
    let id = created["id"].as_i64().unwrap();
    let old = stored_key(store.clone(), id).await;
    let (status, rotated) = sluice.post("/api/v1/secrets/rotate", &json!({})).await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["key_id"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert!(
        rotated["resealed"]["execution_parameters"]
            .as_u64()
            .unwrap()
            >= 1,
        "{rotated}"
    );
    assert_eq!(rotated["resealed"]["datastore"], 1, "{rotated}");
    assert_eq!(stored_key(store.clone(), id).await, new);
    let bucket = async_nats::jetstream::new(sluice.nats_client().await)
        .get_key_value("sluice-datastore")
        .await
        .unwrap();
    let entry: Value =
        serde_json::from_slice(&bucket.get("system.db_password").await.unwrap().unwrap()).unwrap();
    assert_eq!(
        key_id_of(entry["value"].as_str().unwrap()),
        Some(new.as_str())
    );
    let keys = std::fs::read_to_string(sluice.data_dir.path().join("secrets.key")).unwrap();
    assert!(
        keys.contains(&old) && keys.contains(&new),
        "old keys still open"
    );

    // Everything still opens: the worker learns the new key from the file.
    let (_, again) = sluice
        .post("/api/v1/executions", &json!({"action": "t.connect"}))
        .await;
    let again = sluice.wait_execution(again["id"].as_i64().unwrap()).await;
    assert_eq!(again["status"], "succeeded", "{again:#}");
    assert_eq!(
        stored_key(store.clone(), again["id"].as_i64().unwrap()).await,
        new
    );
    store.close().await;
}
