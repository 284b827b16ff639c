//! Real git hosts on 127.0.0.1 for the remote GitOps tests: git's smart HTTP (`git
//! http-backend` run as a CGI) behind TLS with a CA made for the test and token auth, and an
//! OpenSSH `sshd` with a deploy key.
#![allow(dead_code)]

use crate::common::free_port;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs a command, fails the test when it fails; its trimmed stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A bare repository `name.git` under `root` that `work` pushes its `main` to.
pub fn bare_remote(root: &Path, name: &str, work: &Path) -> PathBuf {
    let bare = root.join(format!("{name}.git"));
    run(Command::new("git")
        .args(["init", "-q", "--bare", "-b", "main"])
        .arg(&bare));
    run(Command::new("git")
        .current_dir(work)
        .args(["remote", "add", "origin"])
        .arg(&bare));
    bare
}

/// Pushes `main` of `work` to its `origin`.
pub fn push(work: &Path) {
    run(Command::new("git")
        .current_dir(work)
        .args(["push", "-q", "-f", "origin", "main"]));
}

// --- HTTPS -----------------------------------------------------------------------------------

/// Git's smart HTTP over TLS on 127.0.0.1, serving the bare repositories under a directory to
/// requests with `Authorization: Basic x-access-token:<token>`.
pub struct HttpsGitServer {
    /// `https://127.0.0.1:port`.
    pub base: String,
    /// The PEM of the CA that signed the server's certificate.
    pub ca_file: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpsGitServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpsGitServer {
    /// Serves the repositories under `root`; the CA's PEM is written to `dir`.
    pub async fn start(root: &Path, token: &str, dir: &Path) -> HttpsGitServer {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "llmgw test CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let key = rcgen::KeyPair::generate().expect("server key");
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
        let cert = params
            .signed_by(&key, &ca, &ca_key)
            .expect("server certificate");
        let ca_file = dir.join("test-ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("write CA");

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("TLS config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("https://{}", listener.local_addr().expect("addr"));
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"))
        );
        let root = root.to_owned();
        let task = tokio::spawn(async move {
            // Connections live in this set: aborting the server drops them all.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, root, expected) = (acceptor.clone(), root.clone(), expected.clone());
                connections.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let (root, expected) = (root.clone(), expected.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(serve(req, &root, &expected).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        HttpsGitServer {
            base,
            ca_file,
            task,
        }
    }
}

fn plain(status: u16, text: &str) -> http::Response<Full<Bytes>> {
    let mut resp = http::Response::new(Full::new(Bytes::from(text.to_owned())));
    *resp.status_mut() = http::StatusCode::from_u16(status).expect("status");
    resp
}

/// One request: 401 without the token, else `git http-backend` as a CGI.
async fn serve(
    req: http::Request<Incoming>,
    root: &Path,
    expected: &str,
) -> http::Response<Full<Bytes>> {
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(expected);
    if !authorized {
        let mut resp = plain(401, "authentication required\n");
        resp.headers_mut().insert(
            "www-authenticate",
            http::HeaderValue::from_static("Basic realm=\"git\""),
        );
        return resp;
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let header = |n: &str| {
        parts
            .headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let mut cmd = Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_USER", "x-access-token")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let out = tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("git http-backend runs");
        let mut stdin = child.stdin.take().expect("stdin");
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(&body);
        });
        let out = child.wait_with_output().expect("git http-backend output");
        let _ = writer.join();
        out.stdout
    })
    .await
    .expect("http-backend thread");
    // CGI: headers, a blank line, the body.
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((at, gap)) = split else {
        return plain(500, "http-backend answered without headers\n");
    };
    let head = String::from_utf8_lossy(&out[..at]).into_owned();
    let mut resp = http::Response::new(Full::new(Bytes::copy_from_slice(&out[at + gap..])));
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value
                .split(' ')
                .next()
                .unwrap_or("500")
                .parse()
                .unwrap_or(500);
            *resp.status_mut() = http::StatusCode::from_u16(code).expect("status");
        } else if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            resp.headers_mut().insert(n, v);
        }
    }
    resp
}

// --- SSH -------------------------------------------------------------------------------------

/// The `sshd` binary: on the PATH or in `/usr/sbin`. `None` lets a test skip locally; under
/// CI (`CI` set) a missing sshd fails the test, since `.ci/run` installs it.
pub fn sshd_binary() -> Option<PathBuf> {
    let found = ["/usr/sbin/sshd", "/usr/local/sbin/sshd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "sshd is not installed; .ci/run installs openssh-server"
        );
        eprintln!("skipped: sshd is not installed (apt-get install openssh-server)");
    }
    found
}

/// An OpenSSH server on 127.0.0.1 that lets the current user in with one key.
pub struct Sshd {
    child: Child,
    /// Its port.
    pub port: u16,
    /// A `known_hosts` file listing its host key.
    pub known_hosts: PathBuf,
    /// The user to log in as.
    pub user: String,
    /// Where it logs.
    pub log: PathBuf,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes an ed25519 key pair at `path` (and `path.pub`) with `passphrase`; the public key line.
pub fn keygen(path: &Path, passphrase: &str) -> String {
    run(Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-C",
            "llmgw-test",
            "-N",
            passphrase,
            "-f",
        ])
        .arg(path));
    std::fs::read_to_string(path.with_extension("pub"))
        .expect("public key")
        .trim()
        .to_owned()
}

impl Sshd {
    /// Starts `sshd` (from [`sshd_binary`]) in `dir`, accepting `authorized_key`.
    pub fn start(sshd: &Path, dir: &Path, authorized_key: &str) -> Sshd {
        let host_key = dir.join("ssh_host_ed25519_key");
        let host_pub = keygen(&host_key, "");
        let authorized = dir.join("authorized_keys");
        std::fs::write(&authorized, format!("{authorized_key}\n")).expect("authorized_keys");
        let port = free_port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\n\
                 StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nLogLevel VERBOSE\n",
                host_key.display(),
                dir.join("sshd.pid").display(),
                authorized.display()
            ),
        )
        .expect("sshd_config");
        // sshd running as root wants its privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let log = dir.join("sshd.log");
        let child = Command::new(sshd)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("sshd log"))
            .spawn()
            .expect("sshd starts");
        let known_hosts = dir.join("known_hosts");
        std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_pub}\n"))
            .expect("known_hosts");
        let user = run(Command::new("id").arg("-un"));
        let sshd = Sshd {
            child,
            port,
            known_hosts,
            user,
            log,
        };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let log = std::fs::read_to_string(&sshd.log).unwrap_or_default();
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "sshd did not listen on 127.0.0.1:{port} within 10 s: {log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        sshd
    }

    /// `ssh://user@127.0.0.1:port/path`.
    pub fn url(&self, path: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            path.display()
        )
    }
}
