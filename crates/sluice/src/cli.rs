//! The command-line client: `sluice run`, `sluice execution list|get|cancel`,
//! `sluice actors`, `sluice token create|list|revoke`. It talks to the HTTP API only, so it
//! works against any engine it can reach, with `--token` / `SLUICE_TOKEN` or the admin token
//! `sluice up` wrote to its data directory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde_json::{Map, Value};
use sluice_core::ExecutionStatus;

pub struct Client {
    api: String,
    http: reqwest::Client,
    /// Where the token came from, for the hint when the API refuses it.
    token_source: TokenSource,
}

enum TokenSource {
    Given,
    File(PathBuf),
    /// None was given and `<data-dir>/admin.token` does not exist.
    Missing(PathBuf),
}

impl Client {
    /// A client of the API at `api`, with `token`, or else the one in
    /// `<data_dir>/admin.token` if that file exists.
    pub fn new(api: &str, token: Option<&str>, data_dir: &Path) -> anyhow::Result<Self> {
        let file = data_dir.join(sluice_api::auth::ADMIN_TOKEN_FILE);
        let (token, token_source) = match token {
            Some(token) => (Some(token.trim().to_owned()), TokenSource::Given),
            None => match std::fs::read_to_string(&file) {
                Ok(text) => (Some(text.trim().to_owned()), TokenSource::File(file)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    (None, TokenSource::Missing(file))
                }
                Err(e) => {
                    return Err(anyhow!("cannot read the token in {}: {e}", file.display()));
                }
            },
        };
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .context("the token has characters a header cannot carry")?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        Ok(Self {
            api: api.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .default_headers(headers)
                .build()
                .context("failed to build the HTTP client")?,
            token_source,
        })
    }

    /// Follows an execution's output until it ends: stdout to `out`, stderr to this
    /// process's stderr, as the worker reads them. Whether it succeeded.
    pub async fn tail(&self, id: i64, out: &mut impl Write) -> anyhow::Result<bool> {
        let url = format!("{}/api/v1/executions/{id}/output?follow=true", self.api);
        let mut response = self
            .http
            .get(&url)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(|e| anyhow!("cannot reach the Sluice API at {}: {e}", self.api))?;
        let status = response.status();
        if !status.is_success() {
            let body: Value = response.json().await.unwrap_or_default();
            let detail = body["detail"].as_str().unwrap_or("no reason given");
            bail!("{detail} (HTTP {})", status.as_u16());
        }
        // Server-Sent Events: `event:` and `data:` lines, a blank line ends each event.
        let (mut pending, mut event, mut data) = (Vec::new(), String::new(), String::new());
        while let Some(bytes) = response.chunk().await? {
            pending.extend_from_slice(&bytes);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim_end_matches(['\n', '\r']);
                if let Some(value) = line.strip_prefix("event:") {
                    event = value.trim().to_owned();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.strip_prefix(' ').unwrap_or(value));
                } else if line.is_empty() && !event.is_empty() {
                    let text: String = serde_json::from_str(&data).unwrap_or_default();
                    match event.as_str() {
                        "stdout" => {
                            out.write_all(text.as_bytes())?;
                            out.flush()?;
                        }
                        "stderr" => eprint!("{text}"),
                        "end" => return Ok(data == "succeeded"),
                        _ => {}
                    }
                    event.clear();
                    data.clear();
                }
            }
        }
        bail!("the API closed the stream before execution {id} ended")
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request.send().await.map_err(|e| {
            anyhow!("cannot reach the Sluice API at {}: {e}\nis `sluice up` running? (point at another with --api)", self.api)
        })?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .context("the API answered with something that is not JSON")?;
        if !status.is_success() {
            let message = body
                .get("detail")
                .and_then(Value::as_str)
                .unwrap_or("no reason given");
            if status == reqwest::StatusCode::UNAUTHORIZED {
                let hint = match &self.token_source {
                    TokenSource::Given => "check --token / SLUICE_TOKEN".to_owned(),
                    TokenSource::File(file) => format!("the token came from {}", file.display()),
                    TokenSource::Missing(file) => format!(
                        "no token given (--token, SLUICE_TOKEN) and no {}",
                        file.display()
                    ),
                };
                bail!("{message} (HTTP 401; {hint})");
            }
            bail!("{message} (HTTP {})", status.as_u16());
        }
        Ok(body)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.get(format!("{}{path}", self.api)))
            .await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.post(format!("{}{path}", self.api)).json(body))
            .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.put(format!("{}{path}", self.api)).json(body))
            .await
    }

    /// A POST of raw bytes (a `.tar.gz` pack).
    pub async fn post_bytes(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<Value> {
        let request = self
            .http
            .post(format!("{}{path}", self.api))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        self.send(request).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.delete(format!("{}{path}", self.api)))
            .await
    }
}

/// What `sluice token ...` asks the API.
pub enum TokenCall {
    Create {
        client: Client,
        json: bool,
        body: Value,
    },
    List {
        client: Client,
        json: bool,
    },
    Revoke {
        client: Client,
        id: i64,
    },
}

/// `sluice token create|list|revoke`.
pub async fn token(call: TokenCall, out: &mut impl Write) -> anyhow::Result<bool> {
    match call {
        TokenCall::Create { client, json, body } => {
            let created = client.post("/api/v1/tokens", &body).await?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&created)?)?;
            } else {
                writeln!(
                    out,
                    "token {} ({}, {} scope{}); it is shown this once:",
                    created["id"],
                    created["name"].as_str().unwrap_or(""),
                    created["scope"].as_str().unwrap_or(""),
                    created["expires_at"]
                        .as_str()
                        .map(|at| format!(", expires {at}"))
                        .unwrap_or_default()
                )?;
                writeln!(out, "{}", created["token"].as_str().unwrap_or(""))?;
            }
        }
        TokenCall::List { client, json } => {
            let tokens = client.get("/api/v1/tokens").await?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&tokens)?)?;
            } else {
                writeln!(
                    out,
                    "{:<5} {:<6} {:<8} {:<20} {:<20} NAME",
                    "ID", "SCOPE", "STATE", "EXPIRES", "LAST USED"
                )?;
                let time = |v: &Value| {
                    v.as_str()
                        .map(|t| t.chars().take(19).collect::<String>())
                        .unwrap_or_else(|| "-".into())
                };
                for t in tokens.as_array().map(Vec::as_slice).unwrap_or_default() {
                    let state = if t["revoked_at"].is_string() {
                        "revoked"
                    } else {
                        "live"
                    };
                    writeln!(
                        out,
                        "{:<5} {:<6} {:<8} {:<20} {:<20} {}",
                        t["id"].as_i64().unwrap_or_default(),
                        t["scope"].as_str().unwrap_or(""),
                        state,
                        time(&t["expires_at"]),
                        time(&t["last_used_at"]),
                        t["name"].as_str().unwrap_or("")
                    )?;
                }
            }
        }
        TokenCall::Revoke { client, id } => {
            client.delete(&format!("/api/v1/tokens/{id}")).await?;
            writeln!(out, "token {id} revoked")?;
        }
    }
    Ok(true)
}

/// `sluice timer list` as a table.
pub fn print_timers(timers: &Value, out: &mut impl Write) -> anyhow::Result<()> {
    let time = |v: &Value| {
        v.as_str()
            .map(|t| t.chars().take(19).collect::<String>())
            .unwrap_or_else(|| "-".into())
    };
    writeln!(
        out,
        "{:<32} {:<24} {:<20} {:<20} {:<8} SCHEDULE",
        "RULE", "TRIGGER", "NEXT", "LAST", "CATCHUP"
    )?;
    for t in timers.as_array().map(Vec::as_slice).unwrap_or_default() {
        writeln!(
            out,
            "{:<32} {:<24} {:<20} {:<20} {:<8} {}",
            t["rule"].as_str().unwrap_or(""),
            t["trigger"].as_str().unwrap_or(""),
            if t["enabled"] == false {
                "paused".into()
            } else {
                time(&t["next_fire"])
            },
            time(&t["last_fire"]),
            t["catchup"].as_str().unwrap_or(""),
            t["schedule"]
        )?;
    }
    Ok(())
}

/// `text` percent-encoded for a query string: everything but letters, digits and `-._~`.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One `name=value` of a query string, both encoded.
pub fn query_pair(name: &str, value: &str) -> String {
    format!("{}={}", encode(name), encode(value))
}

/// A query string of the pairs that have a value.
pub fn query(pairs: &[(&str, Option<String>)]) -> String {
    pairs
        .iter()
        .filter_map(|(name, value)| Some(query_pair(name, value.as_deref()?)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A pack's name as typed, checked before it goes into a URL.
pub fn name_segment(text: &str) -> anyhow::Result<&str> {
    anyhow::ensure!(
        !text.is_empty()
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-')),
        "{text:?} is not a pack name (letters, digits, _ and -)"
    );
    Ok(text)
}

/// `sluice trigger list` as a table.
pub fn print_triggers(triggers: &Value, out: &mut impl Write) -> anyhow::Result<()> {
    writeln!(out, "{:<28} {:<40} RULES", "TRIGGER", "SUBJECT")?;
    for t in triggers.as_array().map(Vec::as_slice).unwrap_or_default() {
        let rules: Vec<&str> = t["rules"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        writeln!(
            out,
            "{:<28} {:<40} {}",
            t["ref"].as_str().unwrap_or(""),
            t["subject"].as_str().unwrap_or(""),
            if rules.is_empty() {
                "-".to_owned()
            } else {
                rules.join(", ")
            }
        )?;
    }
    Ok(())
}

/// `sluice action list` as a table.
pub fn print_actions(actions: &Value, out: &mut impl Write) -> anyhow::Result<()> {
    writeln!(
        out,
        "{:<32} {:<20} {:>6}  DESCRIPTION",
        "ACTION", "RUNNER", "LIMIT"
    )?;
    for a in actions.as_array().map(Vec::as_slice).unwrap_or_default() {
        let limit = match &a["policy"]["max_concurrent"] {
            Value::Number(n) => n.to_string(),
            _ => "-".into(),
        };
        writeln!(
            out,
            "{:<32} {:<20} {:>6}  {}",
            a["ref"].as_str().unwrap_or(""),
            a["runner"].as_str().unwrap_or(""),
            limit,
            a["description"].as_str().unwrap_or("")
        )?;
    }
    Ok(())
}

/// `sluice workers` as a table.
pub fn print_workers(workers: &Value, out: &mut impl Write) -> anyhow::Result<()> {
    writeln!(
        out,
        "{:<28} {:>8} {:>8} {:<20} STATE",
        "WORKER", "CAPACITY", "RUNNING", "LAST HEARTBEAT"
    )?;
    for w in workers.as_array().map(Vec::as_slice).unwrap_or_default() {
        writeln!(
            out,
            "{:<28} {:>8} {:>8} {:<20} {}",
            w["name"].as_str().unwrap_or(""),
            w["capacity"].to_string(),
            w["running"].as_array().map_or(0, Vec::len),
            short_time(&w["last_heartbeat_at"]),
            if w["lost"] == true { "lost" } else { "live" }
        )?;
    }
    Ok(())
}

/// `sluice pack list` as a table; each pack left out is followed by its problems.
pub fn print_packs(packs: &Value, out: &mut impl Write) -> anyhow::Result<()> {
    writeln!(
        out,
        "{:<20} {:<10} {:<9} {:>7} {:>8} {:>5}  DESCRIPTION",
        "PACK", "VERSION", "STATE", "ACTIONS", "TRIGGERS", "RULES"
    )?;
    let count = |v: &Value| v.as_array().map_or(0, Vec::len);
    for p in packs.as_array().map(Vec::as_slice).unwrap_or_default() {
        let loaded = p["loaded"] == true;
        writeln!(
            out,
            "{:<20} {:<10} {:<9} {:>7} {:>8} {:>5}  {}",
            p["name"].as_str().unwrap_or(""),
            p["version"].as_str().unwrap_or("-"),
            if loaded { "loaded" } else { "left out" },
            count(&p["actions"]),
            count(&p["triggers"]),
            count(&p["rules"]),
            p["description"].as_str().unwrap_or("")
        )?;
        for e in p["errors"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let place = match e["field"].as_str() {
                Some(field) => format!("{}: {field}", e["file"].as_str().unwrap_or("")),
                None => e["file"].as_str().unwrap_or("").to_owned(),
            };
            writeln!(out, "    {place}: {}", e["message"].as_str().unwrap_or(""))?;
        }
    }
    Ok(())
}

/// What `sluice pack install SOURCE` sends: a git URL as `{"git"}`; a local directory, or
/// a `.tar.gz`, uploaded as an archive (so the engine may be on another host); with
/// `on_engine`, a directory path on the engine's host as `{"path"}`.
pub async fn install_pack(
    client: &Client,
    source: &str,
    reference: Option<String>,
    on_engine: bool,
) -> anyhow::Result<Value> {
    let is_url = source.contains("://") || (source.contains('@') && source.contains(':'));
    if is_url {
        let body = serde_json::json!({ "git": source, "ref": reference });
        return client.post("/api/v1/packs", &body).await;
    }
    if reference.is_some() {
        bail!("--ref goes with a git URL");
    }
    if on_engine {
        return client
            .post("/api/v1/packs", &serde_json::json!({ "path": source }))
            .await;
    }
    let path = Path::new(source);
    let bytes = if path.is_dir() {
        if !path.join("pack.yaml").is_file() {
            bail!("{source} is not a pack: it has no pack.yaml");
        }
        sluice_pack::bundle::Bundle::of_dir(path)
            .with_context(|| format!("cannot archive {source}"))?
            .bytes
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {source}"))?
    };
    client
        .post_bytes("/api/v1/packs", "application/gzip", bytes)
        .await
}

/// A rule's reference as typed, checked to be `pack.name` before it goes into a URL.
pub fn rule_ref(text: &str) -> anyhow::Result<&str> {
    let well_formed = text.split_once('.').is_some_and(|(pack, name)| {
        !pack.is_empty()
            && !name.is_empty()
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    });
    anyhow::ensure!(
        well_formed,
        "rule {text:?}: write it as pack.name (letters, digits, _ and -)"
    );
    Ok(text)
}

/// `sluice rule list` as a table.
pub fn print_rules(rules: &Value, out: &mut impl Write) -> anyhow::Result<()> {
    writeln!(
        out,
        "{:<36} {:<8} {:<28} {:<28} SWITCHED",
        "RULE", "ENABLED", "TRIGGER", "ACTION"
    )?;
    for r in rules.as_array().map(Vec::as_slice).unwrap_or_default() {
        let switched = match &r["switched"] {
            Value::Object(s) => format!(
                "{} by {} at {}",
                if s["enabled"] == true { "on" } else { "off" },
                s["changed_by"].as_str().unwrap_or(""),
                s["changed_at"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(19)
                    .collect::<String>()
            ),
            _ => "-".into(),
        };
        writeln!(
            out,
            "{:<36} {:<8} {:<28} {:<28} {switched}",
            r["ref"].as_str().unwrap_or(""),
            if r["enabled"] == true { "yes" } else { "no" },
            r["trigger"]["type"].as_str().unwrap_or(""),
            r["action"]["ref"].as_str().unwrap_or(""),
        )?;
    }
    Ok(())
}

/// A criterion that failed, as a line: `trigger.severity equals "critical", saw "info"`.
fn mismatch_line(m: &Value) -> String {
    let seen = match &m["seen"] {
        Value::Null => "nothing there".to_owned(),
        seen => format!("saw {seen}"),
    };
    format!(
        "{} {} {}, {seen}",
        m["key"].as_str().unwrap_or(""),
        m["type"].as_str().unwrap_or(""),
        m["pattern"]
    )
}

/// `sluice event list` as a table.
pub fn print_events(events: &Value, out: &mut impl Write) -> anyhow::Result<()> {
    writeln!(
        out,
        "{:<8} {:<28} {:<10} {:<20} PAYLOAD",
        "ID", "TRIGGER", "STATUS", "CREATED"
    )?;
    for e in events.as_array().map(Vec::as_slice).unwrap_or_default() {
        let payload = match &e["payload"] {
            Value::Null => e["reason"].as_str().unwrap_or("").to_owned(),
            payload => payload.to_string(),
        };
        writeln!(
            out,
            "{:<8} {:<28} {:<10} {:<20} {}",
            e["id"].to_string(),
            e["trigger"].as_str().unwrap_or(""),
            e["status"].as_str().unwrap_or(""),
            short_time(&e["created_at"]),
            payload.chars().take(80).collect::<String>()
        )?;
    }
    Ok(())
}

/// `sluice event show`: the event, then each rule on its trigger and how it judged it.
pub fn print_event(e: &Value, out: &mut impl Write) -> anyhow::Result<()> {
    writeln!(out, "id:       {}", e["id"])?;
    writeln!(out, "trigger:  {}", e["trigger"].as_str().unwrap_or(""))?;
    writeln!(out, "status:   {}", e["status"].as_str().unwrap_or(""))?;
    if let Some(reason) = e["reason"].as_str() {
        writeln!(out, "reason:   {reason}")?;
    }
    writeln!(out, "payload:  {}", e["payload"])?;
    writeln!(out, "rules:")?;
    for r in e["rules"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let rule = r["rule"].as_str().unwrap_or("");
        let disabled = if r["enabled"] == false {
            " (disabled)"
        } else {
            ""
        };
        match (&r["execution"], &r["mismatch"]) {
            (Value::Number(id), _) => writeln!(out, "  fired    {rule} -> execution {id}")?,
            (_, Value::Object(_)) => writeln!(
                out,
                "  missed   {rule}{disabled}: {}",
                mismatch_line(&r["mismatch"])
            )?,
            _ => writeln!(out, "  matched  {rule}{disabled}, fired nothing")?,
        }
    }
    Ok(())
}

/// `sluice rule test`: matched or the criterion that failed, and what it would run.
pub fn print_rule_test(t: &Value, out: &mut impl Write) -> anyhow::Result<()> {
    let rule = t["rule"].as_str().unwrap_or("");
    if let Some(error) = t["payload_error"].as_str() {
        writeln!(out, "payload:  {error} (an event with it is rejected)")?;
    }
    if t["matched"] == true {
        writeln!(out, "{rule} matches")?;
        writeln!(out, "action:     {}", t["action"].as_str().unwrap_or(""))?;
        match t["error"].as_str() {
            Some(error) => writeln!(out, "error:      {error}")?,
            None => writeln!(out, "parameters: {}", t["parameters"])?,
        }
    } else {
        writeln!(
            out,
            "{rule} does not match: {}",
            mismatch_line(&t["mismatch"])
        )?;
    }
    if t["enabled"] == false {
        writeln!(out, "(the rule is disabled: it fires nothing now)")?;
    }
    Ok(())
}

/// What `sluice key ...` asks the API.
pub enum KeyCall {
    Set { key: String, body: Value },
    Get { key: String, decrypt: bool },
    List { prefix: Option<String> },
    Delete { key: String },
    Rotate,
}

/// The datastore key `name`: `system.<name>`, or `pack.<pack>.<name>` with a pack.
pub fn key_path(name: &str, pack: Option<&str>) -> String {
    match pack {
        Some(pack) => format!("pack.{pack}.{name}"),
        None => format!("system.{name}"),
    }
}

/// `sluice key set|get|list|delete|rotate`.
pub async fn key(
    client: &Client,
    call: KeyCall,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let answer = match &call {
        KeyCall::Set { key, body } => client.put(&format!("/api/v1/keys/{key}"), body).await?,
        KeyCall::Get { key, decrypt } => {
            client
                .get(&format!("/api/v1/keys/{key}?decrypt={decrypt}"))
                .await?
        }
        KeyCall::List { prefix } => {
            let query = prefix
                .as_deref()
                .map(|p| format!("?prefix={p}"))
                .unwrap_or_default();
            client.get(&format!("/api/v1/keys{query}")).await?
        }
        KeyCall::Delete { key } => client.delete(&format!("/api/v1/keys/{key}")).await?,
        KeyCall::Rotate => {
            client
                .post("/api/v1/secrets/rotate", &Value::Object(Map::new()))
                .await?
        }
    };
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&answer)?)?;
        return Ok(true);
    }
    let shown = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match call {
        KeyCall::Set { .. } => writeln!(
            out,
            "{} set (revision {}{})",
            shown(&answer["key"]),
            answer["revision"],
            answer["expires_at"]
                .as_str()
                .map(|at| format!(", expires {at}"))
                .unwrap_or_default()
        )?,
        KeyCall::Get { .. } => writeln!(out, "{}", shown(&answer["value"]))?,
        KeyCall::List { .. } => {
            writeln!(
                out,
                "{:<40} {:<8} {:<20} VALUE",
                "KEY", "REVISION", "EXPIRES"
            )?;
            for k in answer.as_array().map(Vec::as_slice).unwrap_or_default() {
                writeln!(
                    out,
                    "{:<40} {:<8} {:<20} {}",
                    shown(&k["key"]),
                    k["revision"],
                    k["expires_at"]
                        .as_str()
                        .map(|t| t.chars().take(19).collect::<String>())
                        .unwrap_or_else(|| "-".into()),
                    shown(&k["value"])
                )?;
            }
        }
        KeyCall::Delete { key } => writeln!(out, "{key} deleted")?,
        KeyCall::Rotate => writeln!(
            out,
            "new secrets key {}; sealed again: {}",
            shown(&answer["key_id"]),
            answer["resealed"]
        )?,
    }
    Ok(true)
}

/// `key=value` pairs into parameters. Values are sent as text; the engine converts them to
/// the types the action declares.
pub fn parse_params(pairs: &[String]) -> anyhow::Result<Map<String, Value>> {
    pairs
        .iter()
        .map(|pair| {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| anyhow!("parameter {pair:?} is not key=value"))?;
            if key.is_empty() {
                bail!("parameter {pair:?} has no name");
            }
            Ok((key.to_owned(), Value::String(value.to_owned())))
        })
        .collect()
}

/// Publishes a trigger payload as a plain core NATS message: exactly what `nats pub` does,
/// so the engine sees no difference. The payload must be JSON.
/// The NATS URL `sluice up` wrote for publishing triggers to its own server, or the default
/// server's when there is none.
pub fn publisher_url(data_dir: &Path) -> anyhow::Result<String> {
    let file = data_dir.join(crate::nats::PUBLISHER_URL_FILE);
    match std::fs::read_to_string(&file) {
        Ok(url) => Ok(url.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok("nats://127.0.0.1:4222".to_owned())
        }
        Err(e) => Err(anyhow!("cannot read {}: {e}", file.display())),
    }
}

pub async fn publish_trigger(nats_url: &str, trigger: &str, payload: &str) -> anyhow::Result<()> {
    serde_json::from_str::<Value>(payload)
        .with_context(|| format!("the payload is not JSON: {payload}"))?;
    let client =
        sluice_bus::connect_client(nats_url, "sluice-trigger", &Default::default()).await?;
    client
        .publish(
            sluice_bus::trigger_subject(trigger),
            payload.to_owned().into(),
        )
        .await?;
    client
        .flush()
        .await
        .context("failed to flush the publish")?;
    Ok(())
}

fn is_terminal(execution: &Value) -> bool {
    execution["status"]
        .as_str()
        .and_then(|s| s.parse::<ExecutionStatus>().ok())
        .is_some_and(ExecutionStatus::is_terminal)
}

/// `sluice run`: requests an execution; with `wait`, follows it to the end and returns
/// whether it succeeded.
/// How `sluice run` and `sluice execution re-run` wait for what they requested.
pub struct Waiting {
    pub wait: bool,
    pub timeout: Duration,
    pub json: bool,
}

/// `sluice run`: requests an execution of `action`.
pub async fn run(
    client: &Client,
    action: &str,
    params: &[String],
    waiting: Waiting,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let parameters = parse_params(params)?;
    let body = serde_json::json!({ "action": action, "parameters": parameters });
    let created = client.post("/api/v1/executions", &body).await?;
    follow(client, &created, action, waiting, out).await
}

/// `sluice execution re-run`: runs execution `of` again, `params` overriding some of its
/// parameters.
pub async fn rerun(
    client: &Client,
    of: i64,
    params: &[String],
    waiting: Waiting,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let body = serde_json::json!({ "parameters": parse_params(params)? });
    let created = client
        .post(&format!("/api/v1/executions/{of}/re-run"), &body)
        .await?;
    follow(client, &created, &format!("a re-run of {of}"), waiting, out).await
}

/// Prints what was requested, or with `--wait` waits for it to end and prints it; whether
/// it succeeded (or was requested, without `--wait`).
async fn follow(
    client: &Client,
    created: &Value,
    what: &str,
    Waiting {
        wait,
        timeout,
        json,
    }: Waiting,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let id = created["id"]
        .as_i64()
        .ok_or_else(|| anyhow!("the API returned no execution id"))?;
    if !wait {
        if json {
            writeln!(out, "{}", serde_json::to_string_pretty(created)?)?;
        } else {
            writeln!(
                out,
                "execution {id} requested ({what}); follow it with: sluice execution get {id}"
            )?;
        }
        return Ok(true);
    }
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(20);
    let execution = loop {
        let execution = client.get(&format!("/api/v1/executions/{id}")).await?;
        if is_terminal(&execution) {
            break execution;
        }
        if Instant::now() > deadline {
            bail!(
                "execution {id} is still {} after {}s; follow it with: sluice execution get {id}",
                execution["status"].as_str().unwrap_or("?"),
                timeout.as_secs()
            );
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(250));
    };
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&execution)?)?;
    } else {
        print_execution(&execution, out)?;
    }
    Ok(execution["status"] == "succeeded")
}

/// `sluice execution get --watch`: each status as it is reached, with the time since the
/// execution was requested, then the execution once it ended. Whether it succeeded. On a
/// terminal, a spinner on stderr shows the status and the time so far while it waits.
pub async fn watch(
    client: &Client,
    id: i64,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    use std::io::IsTerminal as _;
    const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
    let spinner = std::io::stderr().is_terminal();
    let started = Instant::now();
    let clear_spinner = || {
        if spinner {
            eprint!("\r\x1b[K");
        }
    };
    let mut shown = 0;
    for tick in 0.. {
        let frame = FRAMES[tick % FRAMES.len()];
        let execution = client.get(&format!("/api/v1/executions/{id}")).await?;
        let history = execution["history"].as_array().cloned().unwrap_or_default();
        let at = |entry: &Value| {
            entry["at"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        };
        let requested = history.first().and_then(at);
        if history.len() > shown || is_terminal(&execution) {
            clear_spinner();
        }
        for entry in history.iter().skip(shown) {
            let since = at(entry)
                .zip(requested)
                .map(|(at, start)| (at - start).as_seconds_f64())
                .unwrap_or_default();
            writeln!(
                out,
                "{:<10} +{since:.3}s",
                entry["status"].as_str().unwrap_or("")
            )?;
            out.flush()?;
        }
        shown = shown.max(history.len());
        if is_terminal(&execution) {
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&execution)?)?;
            } else {
                writeln!(out)?;
                print_execution(&execution, out)?;
            }
            return Ok(execution["status"] == "succeeded");
        }
        if spinner {
            eprint!(
                "\r{frame} {} {:.1}s\x1b[K",
                execution["status"].as_str().unwrap_or(""),
                started.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(false)
}

fn short_time(value: &Value) -> String {
    value
        .as_str()
        .map(|t| t.replace('T', " ").chars().take(19).collect())
        .unwrap_or_default()
}

pub fn print_table(executions: &[Value], out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<8} {:<24} {:<10} {:<19} FROM",
        "ID", "ACTION", "STATUS", "CREATED"
    )?;
    for e in executions {
        // What requested it: a rule, the workflow it is a task of, or a re-run.
        let from = match (
            e["rule"].as_str(),
            e["parent_id"].as_i64(),
            e["rerun_of"].as_i64(),
        ) {
            (Some(rule), _, _) => rule.to_owned(),
            (None, Some(parent), _) => format!("workflow {parent}"),
            (None, None, Some(of)) => format!("re-run of {of}"),
            (None, None, None) => "-".to_owned(),
        };
        writeln!(
            out,
            "{:<8} {:<24} {:<10} {:<19} {from}",
            e["id"].to_string(),
            e["action"].as_str().unwrap_or(""),
            e["status"].as_str().unwrap_or(""),
            short_time(&e["created_at"]),
        )?;
    }
    Ok(())
}

pub fn print_execution(e: &Value, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "id:         {}", e["id"])?;
    writeln!(out, "action:     {}", e["action"].as_str().unwrap_or(""))?;
    writeln!(out, "status:     {}", e["status"].as_str().unwrap_or(""))?;
    if let Some(rule) = e["rule"].as_str() {
        writeln!(out, "rule:       {rule} (event {})", e["event_id"])?;
    }
    if let Some(parent) = e["parent_id"].as_i64() {
        writeln!(out, "workflow:   {parent}")?;
    }
    if let Some(of) = e["rerun_of"].as_i64() {
        writeln!(out, "re-run of:  {of}")?;
    }
    if let Some(worker) = e["worker"].as_str() {
        writeln!(out, "worker:     {worker}")?;
    }
    writeln!(out, "parameters: {}", e["parameters"])?;
    if let Some(history) = e["history"].as_array() {
        writeln!(out, "history:")?;
        for h in history {
            writeln!(
                out,
                "  {:<10} {}",
                h["status"].as_str().unwrap_or(""),
                h["at"].as_str().unwrap_or("")
            )?;
        }
    }
    let result = &e["result"];
    if let Some(stdout) = result
        .get("stdout")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        writeln!(out, "stdout:\n{}", stdout.trim_end())?;
    }
    if let Some(stderr) = result
        .get("stderr")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        writeln!(out, "stderr:\n{}", stderr.trim_end())?;
    }
    if !result.is_null() && result.get("stdout").is_none() {
        writeln!(
            out,
            "result:\n{}",
            serde_json::to_string_pretty(result).unwrap_or_default()
        )?;
    } else if let Some(parsed) = result.get("result") {
        writeln!(
            out,
            "result:\n{}",
            serde_json::to_string_pretty(parsed).unwrap_or_default()
        )?;
    }
    if let Some(code) = result.get("exit_code").filter(|c| !c.is_null()) {
        writeln!(out, "exit code:  {code}")?;
    }
    Ok(())
}

pub fn print_tree(node: &Value, depth: usize, out: &mut impl Write) -> std::io::Result<()> {
    let mut line = format!(
        "{}{} [{}]",
        "  ".repeat(depth),
        node["name"].as_str().unwrap_or("?"),
        node["kind"].as_str().unwrap_or("?")
    );
    if node.get("queue_length").is_some() && node["kind"] == "action-supervisor" {
        let limit = node["max_concurrent"]
            .as_u64()
            .map_or_else(|| "∞".to_owned(), |l| l.to_string());
        let per_key = node["keys"].as_array().is_some_and(|k| !k.is_empty());
        if per_key {
            line.push_str(&format!(
                " queued={} active={} ({limit} per key)",
                node["queue_length"], node["active_count"]
            ));
        } else {
            line.push_str(&format!(
                " queued={} active={}/{limit}",
                node["queue_length"], node["active_count"]
            ));
        }
        if let Some(oldest) = node["oldest_queued_at"].as_str() {
            line.push_str(&format!(" oldest_queued_at={oldest}"));
        }
    }
    if node["kind"] == "key-queue" {
        line.push_str(&format!(
            " queued={} active={}",
            node["queue_length"], node["active_count"]
        ));
    }
    if let Some(status) = node["status"].as_str() {
        line.push_str(&format!(" {status}"));
    }
    if let Some(age) = node["age_seconds"].as_f64() {
        line.push_str(&format!(" age={age:.1}s"));
    }
    if node["kind"] == "execution"
        && let Some(worker) = node["worker"].as_str()
    {
        line.push_str(&format!(" on {worker}"));
    }
    if node["kind"] == "worker" {
        line.push_str(&format!(
            " running={}/{}",
            node["in_flight"], node["capacity"]
        ));
        if let Some(at) = node["last_heartbeat_at"].as_str() {
            line.push_str(&format!(" last_heartbeat={at}"));
        }
        if node["lost"] == true {
            line.push_str(" LOST");
        }
    }
    writeln!(out, "{line}")?;
    for child in node["children"].as_array().into_iter().flatten() {
        print_tree(child, depth + 1, out)?;
    }
    Ok(())
}

/// Where a table goes: when this process's stdout is a terminal, each line is cut to its
/// width (the cut marked `…`), so a long cell never wraps the table; anywhere else (a pipe,
/// a file) the lines go whole.
pub fn table_out<W: Write>(out: W) -> FitWidth<W> {
    use std::io::IsTerminal as _;
    let width = std::io::stdout()
        .is_terminal()
        .then(terminal_size::terminal_size)
        .flatten()
        .map(|(width, _)| usize::from(width.0));
    FitWidth::new(out, width)
}

/// Cuts each line written through it to `width` characters; see [`table_out`].
pub struct FitWidth<W> {
    inner: W,
    width: Option<usize>,
    /// Characters written of the current line.
    column: usize,
    /// The current line has been cut: drop the rest of it.
    cut: bool,
}

impl<W: Write> FitWidth<W> {
    pub fn new(inner: W, width: Option<usize>) -> Self {
        Self {
            inner,
            width,
            column: 0,
            cut: false,
        }
    }
}

impl<W: Write> Write for FitWidth<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let Some(width) = self.width.filter(|w| *w > 1) else {
            return self.inner.write(bytes);
        };
        let mut kept = Vec::with_capacity(bytes.len());
        for &byte in bytes {
            if byte == b'\n' {
                kept.push(byte);
                self.column = 0;
                self.cut = false;
                continue;
            }
            // A UTF-8 continuation byte belongs to the character before it.
            let starts_char = byte & 0b1100_0000 != 0b1000_0000;
            if starts_char && !self.cut {
                if self.column + 1 >= width {
                    kept.extend_from_slice("…".as_bytes());
                    self.cut = true;
                } else {
                    self.column += 1;
                }
            }
            if !self.cut {
                kept.push(byte);
            }
        }
        self.inner.write_all(&kept)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_line_longer_than_the_terminal_is_cut_and_marked() {
        let mut out = Vec::new();
        {
            let mut fit = FitWidth::new(&mut out, Some(10));
            writeln!(fit, "ACTION     DESCRIPTION").unwrap();
            writeln!(fit, "short").unwrap();
            write!(fit, "héllo wörld, ").unwrap();
            writeln!(fit, "and more").unwrap();
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ACTION   …\nshort\nhéllo wör…\n"
        );
        let mut whole = Vec::new();
        writeln!(FitWidth::new(&mut whole, None), "{}", "x".repeat(300)).unwrap();
        assert_eq!(whole.len(), 301, "not a terminal: lines go whole");
    }

    #[test]
    fn params_are_key_value_text() {
        let p = parse_params(&["cmd=uname -a".into(), "n=3".into(), "empty=".into()]).unwrap();
        assert_eq!(p["cmd"], "uname -a");
        assert_eq!(p["n"], "3");
        assert_eq!(p["empty"], "");
        assert!(
            parse_params(&["novalue".into()])
                .unwrap_err()
                .to_string()
                .contains("is not key=value")
        );
        assert!(parse_params(&["=x".into()]).is_err());
    }

    #[test]
    fn the_table_says_what_requested_each_execution() {
        let rows = [
            serde_json::json!({"id": 3, "action": "core.echo", "status": "succeeded", "created_at": "2026-01-01T00:00:00Z", "rule": null, "parent_id": 1}),
            serde_json::json!({"id": 2, "action": "core.local", "status": "running", "created_at": "2026-01-01T00:00:00Z", "rule": "examples.log_alert", "parent_id": null}),
            serde_json::json!({"id": 1, "action": "examples.deploy_all", "status": "running", "created_at": "2026-01-01T00:00:00Z", "rule": null, "parent_id": null}),
        ];
        let mut out = Vec::new();
        print_table(&rows, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        // The last column starts after ID, ACTION, STATUS and CREATED.
        let last_words: Vec<&str> = text.lines().map(|l| l[65..].trim()).collect();
        assert_eq!(
            last_words,
            ["FROM", "workflow 1", "examples.log_alert", "-"],
            "{text}"
        );
    }
}
