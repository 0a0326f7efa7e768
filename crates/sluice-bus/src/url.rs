//! What a NATS URL's user part carries, split off the address the client dials, and a
//! URL fit for logs. A URL may be a comma-separated list of a cluster's servers
//! (`nats://a:4222,nats://b:4222`); the client dials whichever answers.

/// What a NATS URL's user part carries: `user:password@` or `token@`.
pub(crate) enum Credentials {
    UserPassword(String, String),
    Token(String),
}

/// The servers a URL (or a comma-separated list of them) names, each without credentials,
/// and the credentials the first one carrying any gives.
pub(crate) fn split_servers(urls: &str) -> (Option<Credentials>, Vec<String>) {
    let mut credentials = None;
    let mut servers = Vec::new();
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let (given, address) = split_credentials(url);
        if credentials.is_none() {
            credentials = given;
        }
        servers.push(address);
    }
    (credentials, servers)
}

/// The credentials in `url`, and the URL without them (what the client dials).
pub(crate) fn split_credentials(url: &str) -> (Option<Credentials>, String) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (None, url.to_owned());
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return (None, url.to_owned());
    };
    let credentials = match userinfo.split_once(':') {
        Some((user, password)) => Credentials::UserPassword(user.to_owned(), password.to_owned()),
        None => Credentials::Token(userinfo.to_owned()),
    };
    (Some(credentials), format!("{scheme}://{host}"))
}

/// `url` (or each URL of a comma-separated list) with any password or token in it
/// replaced by `***`, fit for logs and error messages.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|one| redact_one(one.trim()))
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_one(url: &str) -> String {
    let (credentials, address) = split_credentials(url);
    let Some((scheme, host)) = address.split_once("://") else {
        return address;
    };
    match credentials {
        Some(Credentials::UserPassword(user, _)) => format!("{scheme}://{user}:***@{host}"),
        Some(Credentials::Token(_)) => format!("{scheme}://***@{host}"),
        None => address,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_password_or_token_survives_redaction() {
        assert_eq!(
            redact_url("nats://engine:s3cret@127.0.0.1:4222"),
            "nats://engine:***@127.0.0.1:4222"
        );
        assert_eq!(redact_url("nats://t0ken@host:4222"), "nats://***@host:4222");
        assert_eq!(redact_url("nats://host:4222"), "nats://host:4222");
        let (credentials, address) = split_credentials("tls://u:p@host:4222");
        assert!(
            matches!(credentials, Some(Credentials::UserPassword(u, p)) if u == "u" && p == "p")
        );
        assert_eq!(address, "tls://host:4222");
    }

    #[test]
    fn a_cluster_s_list_is_split_into_servers_and_each_is_redacted() {
        let list = "nats://e:pw@a:4222, nats://e:pw@b:4223,nats://c:4224";
        let (credentials, servers) = split_servers(list);
        assert!(
            matches!(credentials, Some(Credentials::UserPassword(u, p)) if u == "e" && p == "pw")
        );
        assert_eq!(servers, ["nats://a:4222", "nats://b:4223", "nats://c:4224"]);
        assert_eq!(
            redact_url(list),
            "nats://e:***@a:4222,nats://e:***@b:4223,nats://c:4224"
        );
    }
}
