//! Packs changed at run time through the API: installed from a directory, an upload and a
//! git repository, reloaded, removed; run by a worker that has no pack on its disk; refused
//! whole when broken; reloaded under a queue without losing its order.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Sluice, StoreKind, admin_token, client_with_token};
use serde_json::{Value, json};
use sluice_testkit::eventually;

/// A pack `greet` whose `hello` prints `word`.
fn greet_pack(dir: &Path, word: &str) {
    std::fs::create_dir_all(dir.join("actions")).unwrap();
    std::fs::write(
        dir.join("pack.yaml"),
        "ref: greet\nversion: 1.0.0\ndescription: says a word\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("actions/hello.yaml"),
        "name: hello\nrunner_type: local-shell-script\nentry_point: hello.sh\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("actions/hello.sh"),
        format!("#!/bin/sh\necho {word}\n"),
    )
    .unwrap();
}

/// Runs `greet.hello` and returns what it printed.
async fn hello(sluice: &Sluice) -> String {
    let (status, created) = sluice
        .post(
            "/api/v1/executions",
            &json!({"action": "greet.hello", "parameters": {}}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let done = sluice.wait_execution(created["id"].as_i64().unwrap()).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    done["result"]["stdout"].as_str().unwrap().trim().to_owned()
}

async fn install(sluice: &Sluice, body: &Value) -> (u16, Value) {
    sluice.post("/api/v1/packs", body).await
}

async fn upload(sluice: &Sluice, bytes: Vec<u8>) -> (u16, Value) {
    let response = client_with_token(&admin_token(sluice.data_dir.path()))
        .post(format!("{}/api/v1/packs", sluice.api))
        .header("Content-Type", "application/gzip")
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn git(dir: &Path, args: &[&str]) {
    let status = std::process::Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("git is installed");
    assert!(status.success(), "git {args:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_installed_through_the_api_runs_on_a_worker_without_it_and_each_new_version_reaches_it()
 {
    let sluice = Sluice::start(StoreKind::Sqlite, &[]).await;
    let source = tempfile::tempdir().unwrap();

    // From a directory on the engine's host.
    greet_pack(source.path(), "one");
    let (status, pack) = install(&sluice, &json!({"path": source.path()})).await;
    assert_eq!(status, 201, "{pack}");
    assert_eq!(pack["name"], "greet");
    assert_eq!(pack["actions"], json!(["greet.hello"]));
    let first = pack["digest"].as_str().unwrap().to_owned();
    assert!(first.starts_with("sha256:"), "{pack}");
    assert_eq!(hello(&sluice).await, "one");
    // The worker ran the version it fetched, not a directory it was given.
    let cache = sluice.data_dir.path().join("pack-cache/greet");
    let fetched: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
    assert_eq!(
        fetched.len(),
        1,
        "one version fetched into {}",
        cache.display()
    );

    // Reloaded after its installed files changed.
    let installed = sluice.data_dir.path().join("packs/greet");
    std::fs::write(installed.join("actions/hello.sh"), "#!/bin/sh\necho two\n").unwrap();
    let (status, pack) = sluice.post("/api/v1/packs/greet/reload", &json!({})).await;
    assert_eq!(status, 200, "{pack}");
    assert_ne!(pack["digest"], first.as_str());
    assert_eq!(hello(&sluice).await, "two");

    // Uploaded as a .tar.gz, replacing the installed one.
    let other = tempfile::tempdir().unwrap();
    greet_pack(other.path(), "three");
    let archive = sluice_pack::bundle::Bundle::of_dir(other.path()).unwrap();
    let (status, pack) = upload(&sluice, archive.bytes).await;
    assert_eq!(status, 201, "{pack}");
    assert_eq!(hello(&sluice).await, "three");

    // Cloned from a git repository.
    let repo = tempfile::tempdir().unwrap();
    greet_pack(repo.path(), "four");
    git(repo.path(), &["init", "--quiet", "--initial-branch=main"]);
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "--quiet", "-m", "greet"]);
    let url = format!("file://{}", repo.path().display());
    let (status, pack) = install(&sluice, &json!({"git": url, "ref": "main"})).await;
    assert_eq!(status, 201, "{pack}");
    assert_eq!(hello(&sluice).await, "four");
    assert_eq!(
        std::fs::read_dir(&cache).unwrap().count(),
        4,
        "each version fetched once"
    );

    // A URL that is not one is refused before git runs.
    let (status, problem) = install(&sluice, &json!({"git": "--upload-pack=touch /tmp/x"})).await;
    assert_eq!(status, 422, "{problem}");

    // Removed: its action takes no more requests.
    let (status, removed) = sluice.client().delete("/api/v1/packs/greet").await;
    assert_eq!(status, 200, "{removed}");
    let (status, _) = sluice.get("/api/v1/packs/greet").await;
    assert_eq!(status, 404);
    let (status, refused) = sluice
        .post(
            "/api/v1/executions",
            &json!({"action": "greet.hello", "parameters": {}}),
        )
        .await;
    assert_eq!(status, 404, "{refused}");
    assert!(!installed.exists());

    // A pack from a --packs directory is changed there, not through the API.
    let (status, problem) = sluice.client().delete("/api/v1/packs/core").await;
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("--packs"),
        "{problem}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_pack_is_refused_whole_naming_each_file_and_field_and_the_running_version_stays() {
    let sluice = Sluice::start(StoreKind::Sqlite, &[]).await;
    let source = tempfile::tempdir().unwrap();
    greet_pack(source.path(), "good");
    let (status, _) = install(&sluice, &json!({"path": source.path()})).await;
    assert_eq!(status, 201);
    assert_eq!(hello(&sluice).await, "good");

    // A new version with a broken action file and a broken rule file.
    std::fs::write(
        source.path().join("actions/hello.sh"),
        "#!/bin/sh\necho bad\n",
    )
    .unwrap();
    std::fs::write(
        source.path().join("actions/other.yaml"),
        "name: other\nrunner_type: no-such-runner\n",
    )
    .unwrap();
    std::fs::create_dir_all(source.path().join("rules")).unwrap();
    std::fs::write(
        source.path().join("rules/r.yaml"),
        "name: r\ntrigger: {type: core.st2.webhook}\naction: {ref: greet.missing}\n",
    )
    .unwrap();
    let (status, problem) = install(&sluice, &json!({"path": source.path()})).await;
    assert_eq!(status, 422, "{problem}");
    let errors = problem["errors"].as_array().unwrap();
    let installed = sluice.data_dir.path().join("packs/greet");
    let at = |file: &str| {
        errors
            .iter()
            .find(|e| e["file"].as_str().unwrap().ends_with(file))
            .unwrap_or_else(|| panic!("no problem named in {file}: {problem}"))
    };
    assert!(
        at("actions/other.yaml")["file"]
            .as_str()
            .unwrap()
            .starts_with(installed.to_str().unwrap()),
        "files named where the pack is installed: {problem}"
    );
    assert!(at("rules/r.yaml")["field"].is_string(), "{problem}");
    assert_eq!(hello(&sluice).await, "good", "the running version stays");

    // The same through a reload of broken installed files.
    std::fs::write(installed.join("actions/hello.yaml"), "name: [\n").unwrap();
    let (status, problem) = sluice.post("/api/v1/packs/greet/reload", &json!({})).await;
    assert_eq!(status, 422, "{problem}");
    assert!(
        problem["errors"][0]["file"]
            .as_str()
            .unwrap()
            .ends_with("actions/hello.yaml"),
        "{problem}"
    );
    assert_eq!(hello(&sluice).await, "good");
    let (_, pack) = sluice.get("/api/v1/packs/greet").await;
    assert_eq!(pack["loaded"], true, "{pack}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_a_queue_of_100_keeps_their_order_and_runs_each_once() {
    let sluice = Sluice::start(StoreKind::Sqlite, &[]).await;
    let source = tempfile::tempdir().unwrap();
    let pack = source.path();
    std::fs::create_dir_all(pack.join("actions")).unwrap();
    std::fs::write(pack.join("pack.yaml"), "ref: q\n").unwrap();
    std::fs::write(
        pack.join("actions/rec.yaml"),
        "name: rec\nrunner_type: local-shell-script\nentry_point: rec.sh\nparameters:\n  n: {type: integer, required: true}\n  log: {type: string, required: true}\n  pause: {type: number, default: 0}\npolicy:\n  max_concurrent: 1\n",
    )
    .unwrap();
    let script = |version: &str| {
        format!(
            "#!/bin/sh\nsleep \"$SLUICE_PARAM_PAUSE\"\necho \"{version} $SLUICE_PARAM_N\" >> \"$SLUICE_PARAM_LOG\"\n"
        )
    };
    std::fs::write(pack.join("actions/rec.sh"), script("v1")).unwrap();
    let (status, _) = install(&sluice, &json!({"path": pack})).await;
    assert_eq!(status, 201);

    let log = source.path().join("log");
    let log_text = log.display().to_string();
    for n in 0..100 {
        let pause = if n == 0 { 3 } else { 0 };
        let (status, created) = sluice
            .post(
                "/api/v1/executions",
                &json!({"action": "q.rec", "parameters": {"n": n, "log": log_text, "pause": pause}}),
            )
            .await;
        assert_eq!(status, 201, "{created}");
    }
    // The first runs (and sleeps) while 99 wait behind it.
    eventually("the first to run", Duration::from_secs(20), || async {
        let (_, stats) = sluice.get("/api/v1/actions/q.rec/queue-stats").await;
        (stats["active_count"] == 1 && stats["queue_length"] == 99).then_some(())
    })
    .await;
    let installed = sluice.data_dir.path().join("packs/q");
    std::fs::write(installed.join("actions/rec.sh"), script("v2")).unwrap();
    let (status, reloaded) = sluice.post("/api/v1/packs/q/reload", &json!({})).await;
    assert_eq!(status, 200, "{reloaded}");

    let all = sluice.wait_finished(100).await;
    assert!(all.iter().all(|e| e["status"] == "succeeded"));
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let expected: Vec<String> = (0..100)
        .map(|n| format!("{} {n}", if n == 0 { "v1" } else { "v2" }))
        .collect();
    assert_eq!(
        lines, expected,
        "in arrival order, each once; the one admitted before the reload on its version"
    );
}
