//! Connecting to a NATS server that wants more than a URL: a user nkey, a credentials file
//! (operator mode, JWTs), and TLS with a client certificate. Against real nats-server processes; the certificates are made with
//! the `openssl` command for each run.

use std::path::Path;
use std::process::Command;

use sluice_bus::{Bus, NatsOptions};
use sluice_testkit::NatsServer;

#[tokio::test]
async fn an_nkey_user_connects_and_sets_up_the_streams_and_nobody_else_does() {
    let user = nkeys::KeyPair::new_user();
    let server = NatsServer::start_with_config(&format!(
        "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}",
        user.public_key()
    ));
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("user.nk");
    std::fs::write(&seed, user.seed().unwrap()).unwrap();
    let options = NatsOptions {
        nkey: Some(seed),
        ..Default::default()
    };
    let bus = Bus::connect_with(&server.url(), "nkey", &options).await;
    assert!(bus.is_ok(), "{:?}", bus.err());
    assert!(
        Bus::connect(&server.url(), "anonymous").await.is_err(),
        "an anonymous client was let in"
    );
    let stranger = dir.path().join("stranger.nk");
    std::fs::write(&stranger, nkeys::KeyPair::new_user().seed().unwrap()).unwrap();
    let refused = Bus::connect_with(
        &server.url(),
        "stranger",
        &NatsOptions {
            nkey: Some(stranger),
            ..Default::default()
        },
    )
    .await;
    assert!(refused.is_err(), "an unknown nkey was let in");
}

/// A NATS JWT: `claims` (with `iss`, `sub` and `nats` filled in here) signed by `issuer`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()),
        "iat": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
        "iss": issuer.public_key(),
        "sub": subject,
        "name": name,
        "nats": nats,
    });
    let body = format!("{header}.{}", b64(claims.to_string().as_bytes()));
    let signature = issuer.sign(body.as_bytes()).unwrap();
    format!("{body}.{}", b64(&signature))
}

#[tokio::test]
async fn a_creds_file_connects_to_a_server_in_operator_mode_and_a_forged_one_does_not() {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "sluice-test",
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1
    });
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "sluice",
        serde_json::json!({"type": "account", "version": 2, "limits": unlimited}),
    );
    let user_nats = serde_json::json!({
        "type": "user", "version": 2, "pub": {}, "sub": {},
        "subs": -1, "data": -1, "payload": -1
    });
    let system = nkeys::KeyPair::new_account();
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        "SYS",
        serde_json::json!({"type": "account", "version": 2}),
    );
    let server = NatsServer::start_with_config(&format!(
        "operator: {operator_jwt}\nsystem_account: {sys}\nresolver: MEMORY\n\
         resolver_preload: {{ {acc}: {account_jwt}, {sys}: {system_jwt} }}",
        acc = account.public_key(),
        sys = system.public_key(),
    ));
    let dir = tempfile::tempdir().unwrap();
    let creds = |name: &str, signer: &nkeys::KeyPair| {
        let path = dir.path().join(name);
        let user_jwt = jwt(signer, &user.public_key(), "engine", user_nats.clone());
        std::fs::write(
            &path,
            format!(
                "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
                 -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
                user.seed().unwrap()
            ),
        )
        .unwrap();
        NatsOptions {
            creds: Some(path),
            ..Default::default()
        }
    };
    let bus = Bus::connect_with(&server.url(), "creds", &creds("user.creds", &account)).await;
    assert!(bus.is_ok(), "{:?}", bus.err());
    assert!(
        Bus::connect(&server.url(), "anonymous").await.is_err(),
        "an anonymous client was let in"
    );
    // A user JWT signed by a stranger's account key is refused.
    let forged = creds("forged.creds", &nkeys::KeyPair::new_account());
    assert!(
        Bus::connect_with(&server.url(), "forged", &forged)
            .await
            .is_err(),
        "a forged credential was let in"
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is not installed (apt-get install -y openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, in `dir`.
fn certificates(dir: &Path) {
    let subj = |cn: &str| format!("/CN={cn}");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            &subj("sluice test CA"),
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, cn) in [("server", "127.0.0.1"), ("client", "sluice-worker")] {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &subj(cn),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }
}

#[tokio::test]
async fn tls_with_a_client_certificate_connects_and_nothing_less_does() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let file = |name: &str| dir.path().join(name);
    let quoted = |name: &str| serde_json::to_string(&file(name).display().to_string()).unwrap();
    let server = NatsServer::start_with_config(&format!(
        "tls {{ cert_file: {}, key_file: {}, ca_file: {}, verify: true, timeout: 2 }}",
        quoted("server.pem"),
        quoted("server.key"),
        quoted("ca.pem")
    ));
    let with_cert = NatsOptions {
        tls_ca: Some(file("ca.pem")),
        tls_cert: Some((file("client.pem"), file("client.key"))),
        ..Default::default()
    };
    let bus = Bus::connect_with(&server.url(), "tls", &with_cert).await;
    assert!(bus.is_ok(), "{:?}", bus.err());
    let without_cert = NatsOptions {
        tls_ca: Some(file("ca.pem")),
        ..Default::default()
    };
    assert!(
        Bus::connect_with(&server.url(), "no-cert", &without_cert)
            .await
            .is_err(),
        "a client without a certificate was let in"
    );
    assert!(
        Bus::connect(&server.url(), "plain").await.is_err(),
        "a plain connection was let in"
    );
}
