//! Git's smart HTTP protocol over rustls, as the libgit2 transport of `https://` URLs.
//!
//! libgit2 speaks the protocol (ref advertisement, want/have negotiation, shallow, the pack)
//! and hands this transport one request at a time: `GET …/info/refs?service=git-upload-pack`,
//! then `POST …/git-upload-pack`. Each request carries the repository's `Authorization`
//! header and goes through a rustls client trusting the system's roots plus an optional
//! extra CA file. Redirects are not followed (they could carry the credential elsewhere).
//! Pushing is not supported: the gateway only reads.

use crate::remote::{scrub, RemoteOptions};
use crate::transport_registry::Registry;
use base64::Engine as _;
use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream, Transport};
use std::io::{self, Read, Write};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request may take, pack download included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// How one remote is reached: the HTTP agent and the `Authorization` header value.
pub(crate) struct Settings {
    agent: ureq::Agent,
    authorization: Option<String>,
    secrets: Vec<String>,
}

/// Settings by remote URL, registered before fetching.
static REGISTRY: Registry<Settings> = Registry::new("HTTPS");

/// Why HTTPS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    /// The extra CA file cannot be read or holds no certificate.
    #[error("cannot use the CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("cannot set up TLS: {0}")]
    Tls(String),
}

/// Registers `options` for `url` (replacing earlier ones) and the transport itself, once.
pub(crate) fn register(url: &str, options: &RemoteOptions) -> Result<(), HttpsError> {
    static TRANSPORT: OnceLock<Result<(), String>> = OnceLock::new();
    TRANSPORT
        .get_or_init(|| {
            // SAFETY: libgit2's transport registry is not synchronised; `OnceLock` makes this
            // the only registration, and it happens before this process creates its first
            // https remote (every https remote goes through this function first).
            #[allow(unsafe_code)]
            let registered = unsafe { git2::transport::register("https", factory) };
            registered.map_err(|e| e.message().to_owned())
        })
        .clone()
        .map_err(HttpsError::Tls)?;
    let tls = tls_config(options)?;
    let agent = ureq::AgentBuilder::new()
        .tls_config(tls)
        .redirects(0)
        .timeout_connect(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("git/2.0 (llmgw ", env!("CARGO_PKG_VERSION"), ")"))
        .build();
    let authorization = options.password.as_ref().map(|p| {
        let user = options.username.as_deref().unwrap_or("x-access-token");
        let pair = format!("{user}:{}", p.expose());
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    });
    let mut secrets = options.secrets();
    secrets.extend(authorization.clone());
    let settings = Arc::new(Settings {
        agent,
        authorization,
        secrets,
    });
    REGISTRY.insert(url, settings);
    Ok(())
}

/// The system's roots plus the extra CA file, over ring.
fn tls_config(options: &RemoteOptions) -> Result<Arc<rustls::ClientConfig>, HttpsError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = &options.ca_file {
        let ca_error = |reason: String| HttpsError::CaFile {
            path: path.display().to_string(),
            reason,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| ca_error(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_error("no PEM certificate in it".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpsError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn factory(remote: &git2::Remote<'_>) -> Result<Transport, git2::Error> {
    let settings = REGISTRY.for_remote(remote)?;
    Transport::smart(remote, true, Https { settings })
}

struct Https {
    settings: Arc<Settings>,
}

impl SmartSubtransport for Https {
    fn action(
        &self,
        url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, git2::Error> {
        let base = url.trim_end_matches('/');
        let (request_url, post) = match action {
            Service::UploadPackLs => (format!("{base}/info/refs?service=git-upload-pack"), false),
            Service::UploadPack => (format!("{base}/git-upload-pack"), true),
            Service::ReceivePackLs | Service::ReceivePack => {
                return Err(git2::Error::from_str(
                    "pushing is not supported: policy repositories are only read",
                ))
            }
        };
        Ok(Box::new(Exchange {
            settings: self.settings.clone(),
            url: request_url,
            post,
            body: Vec::new(),
            response: None,
        }))
    }

    fn close(&self) -> Result<(), git2::Error> {
        Ok(())
    }
}

/// One request: what libgit2 writes is the body; the first read sends it.
struct Exchange {
    settings: Arc<Settings>,
    url: String,
    post: bool,
    body: Vec<u8>,
    response: Option<Box<dyn Read + Send + Sync>>,
}

impl Exchange {
    fn send(&mut self) -> io::Result<Box<dyn Read + Send + Sync>> {
        let agent = &self.settings.agent;
        let mut request = if self.post {
            agent
                .post(&self.url)
                .set("Content-Type", "application/x-git-upload-pack-request")
                .set("Accept", "application/x-git-upload-pack-result")
        } else {
            agent.get(&self.url)
        };
        if let Some(auth) = &self.settings.authorization {
            request = request.set("Authorization", auth);
        }
        let sent = if self.post {
            request.send_bytes(&self.body)
        } else {
            request.call()
        };
        let shown = self.url.split('?').next().unwrap_or_default().to_owned();
        let response = match sent {
            Ok(r) => r,
            Err(ureq::Error::Status(code, _)) => {
                let why = match code {
                    401 => "the server wants credentials or refused them (check --repo-password and --repo-username)",
                    403 => "the credentials are not allowed to read this repository",
                    404 => "no repository there (check the URL)",
                    _ => "the server failed",
                };
                return Err(io::Error::other(format!("HTTP {code} from {shown}: {why}")));
            }
            Err(ureq::Error::Transport(t)) => {
                let message = scrub(&t.to_string(), &self.settings.secrets);
                return Err(io::Error::other(format!("cannot reach {shown}: {message}")));
            }
        };
        let expected = if self.post {
            "application/x-git-upload-pack-result"
        } else {
            "application/x-git-upload-pack-advertisement"
        };
        if !response.content_type().eq_ignore_ascii_case(expected) {
            return Err(io::Error::other(format!(
                "{shown} answered `{}`, not git's smart HTTP (`{expected}`)",
                response.content_type()
            )));
        }
        Ok(response.into_reader())
    }
}

impl Read for Exchange {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.response.is_none() {
            self.response = Some(self.send()?);
        }
        match &mut self.response {
            Some(r) => r.read(buf),
            None => Ok(0),
        }
    }
}

impl Write for Exchange {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.body.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
