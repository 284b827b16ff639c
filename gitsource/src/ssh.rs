//! Git over SSH with russh (pure Rust, no system OpenSSL), as the libgit2 transport of
//! `ssh://` and scp-like `user@host:path` URLs.
//!
//! libgit2 speaks the protocol (ref advertisement, want/have negotiation, shallow, the pack)
//! over one stream that this transport opens: TCP to the host, the SSH handshake with the
//! server's host key checked against a `known_hosts` file ([`check_host_key`]) before
//! anything is sent, the deploy key (optionally passphrase-protected), then
//! `git-upload-pack '<path>'` on a session channel. Pushing is not supported: the gateway
//! only reads.
//!
//! russh is async; libgit2 calls the stream synchronously from the polling thread. Each
//! stream owns a current-thread tokio runtime and blocks on it, so the gateway's runtime is
//! never blocked. Setting up (connect, handshake, authentication) is bounded by
//! [`CONNECT_TIMEOUT`], and every wait for the server by [`READ_TIMEOUT`]: a server that
//! accepts and then hangs fails the fetch instead of stalling the polling thread.

use crate::known_hosts::{check_host_key, default_known_hosts, known_hosts_name};
use crate::remote::{Credential, RemoteOptions};
use crate::transport_registry::Registry;
use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream, Transport};
use russh::client::{self, AuthResult, Handle};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{Channel, ChannelMsg};
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How long connecting, the SSH handshake and authentication may take together.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server may stay silent once `git-upload-pack` runs.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
/// How much of `git-upload-pack`'s standard error is kept for an error message.
const STDERR_LIMIT: usize = 4096;

/// How one remote is reached.
#[derive(Debug)]
pub(crate) struct Settings {
    /// `host:port`, as shown in errors.
    shown: String,
    host: String,
    port: u16,
    user: String,
    path: String,
    key: Option<PathBuf>,
    passphrase: Option<Credential>,
    known_hosts: PathBuf,
    known_hosts_name: String,
}

/// Settings by remote URL, registered before fetching.
static REGISTRY: Registry<Settings> = Registry::new("SSH");

/// Where an SSH remote is: from [`crate::Transport::Ssh`].
pub(crate) struct Target<'a> {
    /// User, if the URL names one.
    pub user: Option<&'a str>,
    /// Host name or address.
    pub host: &'a str,
    /// Port, if not 22.
    pub port: Option<u16>,
    /// Repository path on the server.
    pub path: &'a str,
}

/// Registers how to reach `url` (replacing earlier settings) and the transport itself, once.
pub(crate) fn register(
    url: &str,
    target: &Target<'_>,
    options: &RemoteOptions,
) -> Result<(), git2::Error> {
    static TRANSPORT: OnceLock<Result<(), String>> = OnceLock::new();
    TRANSPORT
        .get_or_init(|| {
            // libgit2 sends scp-like locations to the transport registered for `ssh://`.
            for scheme in ["ssh", "ssh+git", "git+ssh"] {
                // SAFETY: libgit2's transport registry is not synchronised; `OnceLock` makes
                // this the only registration, and it happens before this process creates its
                // first SSH remote (every SSH remote goes through this function first).
                #[allow(unsafe_code)]
                let registered = unsafe { git2::transport::register(scheme, factory) };
                registered.map_err(|e| e.message().to_owned())?;
            }
            Ok(())
        })
        .clone()
        .map_err(|m| git2::Error::from_str(&m))?;
    let port = target.port.unwrap_or(22);
    let settings = Arc::new(Settings {
        shown: format!("{}:{port}", target.host),
        host: target.host.to_owned(),
        port,
        user: options
            .username
            .as_deref()
            .or(target.user)
            .unwrap_or("git")
            .to_owned(),
        path: target.path.to_owned(),
        key: options.ssh_key.clone(),
        passphrase: options.ssh_passphrase.clone(),
        known_hosts: options
            .known_hosts
            .clone()
            .unwrap_or_else(default_known_hosts),
        known_hosts_name: known_hosts_name(target.host, target.port),
    });
    REGISTRY.insert(url, settings);
    Ok(())
}

fn factory(remote: &git2::Remote<'_>) -> Result<Transport, git2::Error> {
    let settings = REGISTRY.for_remote(remote)?;
    // Not RPC: libgit2 asks for one stream (`UploadPackLs`) and keeps using it.
    Transport::smart(remote, false, Ssh { settings })
}

struct Ssh {
    settings: Arc<Settings>,
}

impl SmartSubtransport for Ssh {
    fn action(
        &self,
        _url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, git2::Error> {
        match action {
            Service::UploadPackLs | Service::UploadPack => UploadPack::open(&self.settings)
                .map(|s| Box::new(s) as Box<dyn SmartSubtransportStream>)
                .map_err(|m| git2::Error::from_str(&m)),
            Service::ReceivePackLs | Service::ReceivePack => Err(git2::Error::from_str(
                "pushing is not supported: policy repositories are only read",
            )),
        }
    }

    fn close(&self) -> Result<(), git2::Error> {
        Ok(())
    }
}

/// Why the SSH session could not be set up; the message is what people read.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    /// The host key is not the one on record (or is revoked).
    #[error("{0}")]
    HostKey(String),
    /// russh failed (network, protocol).
    #[error(transparent)]
    Ssh(#[from] russh::Error),
}

/// The client side of the session: checks the host key against `known_hosts`.
struct Client {
    known_hosts: PathBuf,
    name: String,
}

impl client::Handler for Client {
    type Error = SessionError;

    async fn check_server_key(
        &mut self,
        offered: &PublicKeyOrCertificate,
    ) -> Result<bool, SessionError> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = offered else {
            return Err(SessionError::HostKey(format!(
                "host key verification failed: {} showed a host certificate; only host keys listed in {} are accepted",
                self.name,
                self.known_hosts.display()
            )));
        };
        let bytes = key
            .to_bytes()
            .map_err(|e| SessionError::HostKey(format!("unreadable host key: {e}")))?;
        check_host_key(&self.known_hosts, &self.name, &bytes).map_err(SessionError::HostKey)?;
        Ok(true)
    }
}

/// `git-upload-pack` running on the server, as libgit2's stream.
struct UploadPack {
    runtime: tokio::runtime::Runtime,
    // Held so the session stays open while the channel is used.
    _session: Handle<Client>,
    channel: Channel<client::Msg>,
    shown: String,
    /// Received and not yet read.
    pending: bytes::Bytes,
    stderr: Vec<u8>,
    exit_status: Option<u32>,
    closed: bool,
}

impl UploadPack {
    fn open(settings: &Settings) -> Result<Self, String> {
        let key = settings
            .key
            .as_ref()
            .map(|path| {
                let passphrase = settings.passphrase.as_ref().map(Credential::expose);
                russh::keys::load_secret_key(path, passphrase)
                    .map_err(|e| format!("cannot use the SSH key {}: {e}", path.display()))
            })
            .transpose()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the SSH client: {e}"))?;
        // Timers are made inside `block_on`: they belong to this runtime, not the caller's.
        let setup = async { tokio::time::timeout(CONNECT_TIMEOUT, connect(settings, key)).await };
        let (session, channel) = runtime.block_on(setup).map_err(|_| {
            format!(
                "cannot reach {}: no SSH session within {} s (the server accepted no connection, or did not answer)",
                settings.shown,
                CONNECT_TIMEOUT.as_secs()
            )
        })??;
        Ok(UploadPack {
            runtime,
            _session: session,
            channel,
            shown: settings.shown.clone(),
            pending: bytes::Bytes::new(),
            stderr: Vec::new(),
            exit_status: None,
            closed: false,
        })
    }

    /// The end of the stream: clean if `git-upload-pack` succeeded, else what it said.
    fn ended(&self) -> io::Result<usize> {
        match self.exit_status {
            Some(0) => Ok(0),
            None if self.stderr.is_empty() => Ok(0),
            status => {
                let said = String::from_utf8_lossy(&self.stderr);
                let said = said.trim();
                let code = status.map_or("no exit status".to_owned(), |s| format!("exit {s}"));
                Err(io::Error::other(format!(
                    "git-upload-pack on {} failed ({code}): {said}",
                    self.shown
                )))
            }
        }
    }
}

/// Connects, checks the host key, authenticates and starts `git-upload-pack`.
async fn connect(
    settings: &Settings,
    key: Option<PrivateKey>,
) -> Result<(Handle<Client>, Channel<client::Msg>), String> {
    let shown = &settings.shown;
    let tcp = tokio::net::TcpStream::connect((settings.host.as_str(), settings.port))
        .await
        .map_err(|e| format!("cannot reach {shown}: {e}"))?;
    // Best effort: git's small negotiation messages should not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    let client = Client {
        known_hosts: settings.known_hosts.clone(),
        name: settings.known_hosts_name.clone(),
    };
    let config = Arc::new(client::Config::default());
    let mut session = client::connect_stream(config, tcp, client)
        .await
        .map_err(|e| match e {
            SessionError::HostKey(m) => m,
            SessionError::Ssh(e) => format!("SSH handshake with {shown} failed: {e}"),
        })?;
    let user = &settings.user;
    let failed = |e: russh::Error| format!("SSH session with {shown} failed: {e}");
    let auth = match (key, &settings.key) {
        (Some(key), Some(path)) => {
            let hash = if key.algorithm().is_rsa() {
                session
                    .best_supported_rsa_hash()
                    .await
                    .map_err(failed)?
                    .flatten()
            } else {
                None
            };
            let offered = PrivateKeyWithHashAlg::new(Arc::new(key), hash);
            let result = session
                .authenticate_publickey(user, offered)
                .await
                .map_err(failed)?;
            (
                result,
                format!(
                    "the SSH server refused the key {} for user `{user}`",
                    path.display()
                ),
            )
        }
        _ => {
            let result = session.authenticate_none(user).await.map_err(failed)?;
            (
                result,
                "the SSH server wants a key: pass the deploy key with --repo-ssh-key".to_owned(),
            )
        }
    };
    if let (AuthResult::Failure { .. }, refused) = auth {
        return Err(refused);
    }
    let channel = session.channel_open_session().await.map_err(failed)?;
    channel
        .exec(true, format!("git-upload-pack {}", quote(&settings.path)))
        .await
        .map_err(failed)?;
    Ok((session, channel))
}

/// `text` single-quoted for the server's shell.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

impl Read for UploadPack {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if !self.pending.is_empty() {
                let n = buf.len().min(self.pending.len());
                buf[..n].copy_from_slice(&self.pending.split_to(n));
                return Ok(n);
            }
            if self.closed {
                return self.ended();
            }
            let next = self
                .runtime
                .block_on(async { tokio::time::timeout(READ_TIMEOUT, self.channel.wait()).await })
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "{} sent nothing for {} s: giving up on this fetch",
                            self.shown,
                            READ_TIMEOUT.as_secs()
                        ),
                    )
                })?;
            match next {
                Some(ChannelMsg::Data { data }) => self.pending = data,
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                    let room = STDERR_LIMIT.saturating_sub(self.stderr.len());
                    self.stderr.extend_from_slice(&data[..room.min(data.len())]);
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => {
                    self.exit_status = Some(exit_status);
                }
                Some(ChannelMsg::Failure) => {
                    return Err(io::Error::other(format!(
                        "{} refused to run git-upload-pack",
                        self.shown
                    )))
                }
                Some(ChannelMsg::Close) | None => self.closed = true,
                Some(_) => {}
            }
        }
    }
}

impl Write for UploadPack {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let send = self.channel.data_bytes(data.to_vec());
        let sent = self
            .runtime
            .block_on(async { tokio::time::timeout(READ_TIMEOUT, send).await });
        match sent {
            Ok(Ok(())) => Ok(data.len()),
            Ok(Err(e)) => Err(io::Error::other(format!(
                "sending to {} failed: {e}",
                self.shown
            ))),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{} took nothing for {} s: giving up on this fetch",
                    self.shown,
                    READ_TIMEOUT.as_secs()
                ),
            )),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_paths_for_the_shell() {
        assert_eq!(quote("/srv/p.git"), "'/srv/p.git'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
