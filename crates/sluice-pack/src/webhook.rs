//! Webhooks: StackStorm's `core.st2.webhook` trigger. A rule on it names a URL under
//! `/api/v1/webhooks/` and how callers prove who they are:
//!
//! ```yaml
//! trigger:
//!   type: core.st2.webhook
//!   parameters:
//!     url: deploys/github          # POST /api/v1/webhooks/deploys/github
//!     auth: github                 # token (default) | github | standard-webhooks | hmac-sha256 | none
//!     secret: system.github_secret # the datastore key holding the shared secret
//!     header: X-Signature          # hmac-sha256 only: the header carrying the signature
//! ```
//!
//! The event's payload is `{url, headers, body}`; rules read `trigger.body.x` and
//! `trigger.headers['x-foo']` (header names in lower case).

use serde::Deserialize;
use serde_json::Value;
use sluice_core::datastore::KeyName;

/// The trigger every webhook fires.
pub const TRIGGER: &str = "core.st2.webhook";

/// How a webhook's callers prove who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookAuth {
    /// An API token with the `run` scope, as for StackStorm's webhooks.
    Token,
    /// GitHub's `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`.
    GitHub { secret: KeyName },
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp` (within 5 minutes) and
    /// `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
    StandardWebhooks { secret: KeyName },
    /// `<header>: <hex HMAC-SHA256 of the body>` (a `sha256=` prefix is allowed).
    HmacSha256 { secret: KeyName, header: String },
    /// Nobody is asked: the operator said so.
    None,
}

/// One webhook URL and how it is authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Without leading or trailing `/`.
    pub url: String,
    pub auth: WebhookAuth,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Parameters {
    url: String,
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    header: Option<String>,
}

/// A URL as it is matched: without leading or trailing `/`.
pub fn normalize(url: &str) -> String {
    url.trim_matches('/').to_owned()
}

impl Webhook {
    /// Reads a rule's `trigger.parameters`; the error says which field is wrong.
    pub fn from_parameters(parameters: &Value) -> Result<Self, (String, String)> {
        let p: Parameters = serde_json::from_value(parameters.clone())
            .map_err(|e| ("trigger.parameters".to_owned(), e.to_string()))?;
        let url = normalize(&p.url);
        if url.is_empty()
            || !url.split('/').all(|s| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            })
        {
            return Err((
                "trigger.parameters.url".into(),
                format!(
                    "{:?} is not a webhook path: segments of letters, digits, `-`, `_` and `.`",
                    p.url
                ),
            ));
        }
        let secret = || {
            let key = p.secret.as_deref().ok_or_else(|| {
                (
                    "trigger.parameters.secret".to_owned(),
                    "this auth needs `secret`: the datastore key holding the shared secret (e.g. system.github_secret)".to_owned(),
                )
            })?;
            key.parse::<KeyName>()
                .map_err(|e| ("trigger.parameters.secret".to_owned(), e.to_string()))
        };
        let auth = match p.auth.as_deref().unwrap_or("token") {
            "token" => WebhookAuth::Token,
            "none" => WebhookAuth::None,
            "github" => WebhookAuth::GitHub { secret: secret()? },
            "standard-webhooks" => WebhookAuth::StandardWebhooks { secret: secret()? },
            "hmac-sha256" => WebhookAuth::HmacSha256 {
                secret: secret()?,
                header: p
                    .header
                    .clone()
                    .ok_or_else(|| {
                        (
                            "trigger.parameters.header".to_owned(),
                            "hmac-sha256 needs `header`: the header carrying the signature"
                                .to_owned(),
                        )
                    })?
                    .to_ascii_lowercase(),
            },
            other => {
                return Err((
                    "trigger.parameters.auth".into(),
                    format!(
                        "unknown auth {other:?} (token, github, standard-webhooks, hmac-sha256, none)"
                    ),
                ));
            }
        };
        Ok(Self { url, auth })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parameters_read_with_errors_naming_the_field() {
        let hook = Webhook::from_parameters(
            &json!({"url": "/deploys/github/", "auth": "github", "secret": "system.gh"}),
        )
        .unwrap();
        assert_eq!(hook.url, "deploys/github");
        assert_eq!(
            hook.auth,
            WebhookAuth::GitHub {
                secret: "system.gh".parse().unwrap()
            }
        );
        assert_eq!(
            Webhook::from_parameters(&json!({"url": "x"})).unwrap().auth,
            WebhookAuth::Token
        );
        for (parameters, field) in [
            (json!({"url": "a b"}), "trigger.parameters.url"),
            (
                json!({"url": "x", "auth": "github"}),
                "trigger.parameters.secret",
            ),
            (
                json!({"url": "x", "auth": "kerberos"}),
                "trigger.parameters.auth",
            ),
            (
                json!({"url": "x", "auth": "hmac-sha256", "secret": "system.s"}),
                "trigger.parameters.header",
            ),
            (json!({"urls": "x"}), "trigger.parameters"),
        ] {
            assert_eq!(
                Webhook::from_parameters(&parameters).unwrap_err().0,
                field,
                "{parameters}"
            );
        }
    }
}
