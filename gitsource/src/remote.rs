//! Remote policy repositories: which URLs are remotes, how they are shown without
//! credentials, and what it takes to reach one (credentials, known hosts, extra CA).

use std::path::PathBuf;

/// A credential value (token, password, passphrase). Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential(String);

impl Credential {
    /// Wraps a resolved value.
    pub fn new(value: impl Into<String>) -> Self {
        Credential(value.into())
    }

    /// The value, for the wire only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential([redacted])")
    }
}

/// What it takes to reach a remote repository. Nothing here is needed for a local path or a
/// `file://` URL.
#[derive(Debug, Clone, Default)]
pub struct RemoteOptions {
    /// HTTPS user name (`x-access-token` when a token is given without one) or SSH user
    /// (the URL's, else `git`).
    pub username: Option<String>,
    /// HTTPS token or password.
    pub password: Option<Credential>,
    /// SSH private key file.
    pub ssh_key: Option<PathBuf>,
    /// Passphrase of the SSH private key.
    pub ssh_passphrase: Option<Credential>,
    /// `known_hosts` file the SSH host key must be in; `~/.ssh/known_hosts` when unset.
    pub known_hosts: Option<PathBuf>,
    /// PEM file of extra certificate authorities trusted for HTTPS, besides the system's.
    pub ca_file: Option<PathBuf>,
}

impl RemoteOptions {
    /// The values that must never be shown: the password and the passphrase.
    pub(crate) fn secrets(&self) -> Vec<String> {
        [&self.password, &self.ssh_passphrase]
            .into_iter()
            .flatten()
            .map(|c| c.expose().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

/// How a repository location is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// A path on this machine (or a `file://` URL, which libgit2 reads directly).
    Local,
    /// Git's smart HTTP over TLS.
    Https,
    /// SSH: an `ssh://` URL or scp-like `user@host:path`.
    Ssh {
        /// User, if the URL names one.
        user: Option<String>,
        /// Host name or address.
        host: String,
        /// Port, if not 22.
        port: Option<u16>,
        /// Repository path on the server (`~user/…` relative to a home directory).
        path: String,
    },
}

/// A location that cannot be used as a policy repository.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    /// The URL carries a password or token.
    #[error("the repository URL `{0}` carries a password: pass credentials by reference (env:NAME or file:PATH) instead")]
    PasswordInUrl(String),
    /// The scheme is not one of `file`, `https`, `ssh`.
    #[error("`{url}`: the `{scheme}` scheme is not supported (use a local path, file://, https://, ssh:// or user@host:path)")]
    Unsupported {
        /// The URL, without credentials.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// Not a URL that can be parsed.
    #[error("`{0}` is not a valid repository URL")]
    Invalid(String),
}

/// Whether `location` is scp-like (`user@host:path`, `host:path`): no scheme, a colon
/// before any slash, and not a local path that happens to hold a colon.
fn scp_like(location: &str) -> Option<(Option<&str>, &str, &str)> {
    if location.contains("://") || location.starts_with('/') || location.starts_with('.') {
        return None;
    }
    let colon = location.find(':')?;
    if location[..colon].contains('/') || colon == 0 {
        return None;
    }
    let (authority, path) = (&location[..colon], &location[colon + 1..]);
    let (user, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    (!host.is_empty() && !path.is_empty()).then_some((user, host, path))
}

/// How `location` is reached; refuses URLs with a password and unsupported schemes.
pub fn transport(location: &str) -> Result<Transport, LocationError> {
    if let Some((user, host, path)) = scp_like(location) {
        return Ok(Transport::Ssh {
            user: user.map(str::to_owned),
            host: host.to_owned(),
            port: None,
            path: path.to_owned(),
        });
    }
    if !location.contains("://") {
        return Ok(Transport::Local);
    }
    let url =
        url::Url::parse(location).map_err(|_| LocationError::Invalid(redact_url(location)))?;
    if url.password().is_some() {
        return Err(LocationError::PasswordInUrl(redact_url(location)));
    }
    match url.scheme() {
        "file" => Ok(Transport::Local),
        "https" => Ok(Transport::Https),
        "ssh" | "git+ssh" | "ssh+git" => Ok(Transport::Ssh {
            user: (!url.username().is_empty()).then(|| url.username().to_owned()),
            host: url
                .host_str()
                .ok_or_else(|| LocationError::Invalid(redact_url(location)))?
                .to_owned(),
            port: url.port(),
            path: ssh_path(&url),
        }),
        other => Err(LocationError::Unsupported {
            url: redact_url(location),
            scheme: other.to_owned(),
        }),
    }
}

/// The repository path of an `ssh://` URL, decoded; `/~user/p` is `~user/p`, as git reads it.
fn ssh_path(url: &url::Url) -> String {
    let path = percent_encoding::percent_decode_str(url.path()).decode_utf8_lossy();
    match path.strip_prefix("/~") {
        Some(home) => format!("~{home}"),
        None => path.into_owned(),
    }
}

/// `location` with any password in it replaced by `***`: safe for logs, errors and status.
pub fn redact_url(location: &str) -> String {
    let Some(scheme_end) = location.find("://") else {
        return location.to_owned();
    };
    let rest = &location[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            let shown = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_owned()
            };
            format!("{}://{shown}{}", &location[..scheme_end], &rest[at..])
        }
        None => location.to_owned(),
    }
}

/// `text` with every one of `secrets` replaced by `***`.
pub(crate) fn scrub(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .fold(text.to_owned(), |t, s| t.replace(s.as_str(), "***"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_transports_apart_and_refuses_passwords_in_urls() {
        assert_eq!(transport("/srv/policies"), Ok(Transport::Local));
        assert_eq!(transport("./policies"), Ok(Transport::Local));
        assert_eq!(transport("file:///srv/p"), Ok(Transport::Local));
        assert_eq!(
            transport("https://git.example.com/o/p.git"),
            Ok(Transport::Https)
        );
        assert_eq!(
            transport("git@github.com:org/policies.git"),
            Ok(Transport::Ssh {
                user: Some("git".into()),
                host: "github.com".into(),
                port: None,
                path: "org/policies.git".into()
            })
        );
        assert_eq!(
            transport("ssh://deploy@127.0.0.1:2222/srv/p.git"),
            Ok(Transport::Ssh {
                user: Some("deploy".into()),
                host: "127.0.0.1".into(),
                port: Some(2222),
                path: "/srv/p.git".into()
            })
        );
        assert_eq!(
            transport("ssh://h/~deploy/my%20p.git"),
            Ok(Transport::Ssh {
                user: None,
                host: "h".into(),
                port: None,
                path: "~deploy/my p.git".into()
            })
        );
        let err = transport("https://bob:hunter2@git.example.com/p.git").unwrap_err();
        assert!(matches!(err, LocationError::PasswordInUrl(_)));
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(err.to_string().contains("bob:***@git.example.com"), "{err}");
        let err = transport("http://git.example.com/p.git").unwrap_err();
        assert!(err.to_string().contains("`http` scheme"), "{err}");
    }

    #[test]
    fn redacts_userinfo_passwords_only() {
        assert_eq!(redact_url("https://a:b@h/p"), "https://a:***@h/p");
        assert_eq!(redact_url("ssh://git@h:22/p"), "ssh://git@h:22/p");
        assert_eq!(redact_url("https://h/p@x"), "https://h/p@x");
        assert_eq!(scrub("x tok y tok", &["tok".into()]), "x *** y ***");
    }
}
