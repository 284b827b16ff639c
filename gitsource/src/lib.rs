//! Policy repositories on disk: in git, or in a plain directory.
//!
//! Refs are resolved with libgit2 (never by reading ref files), and a commit's tree is read
//! straight from the object database: no checkout, no work tree, so a revision is exactly what
//! was committed. A remote (`file://`, `https://`, `ssh://` or scp-like `user@host:path`) is
//! mirrored into a local bare repository: only the followed branch is fetched, shallow over
//! HTTPS and SSH. Both transports are pure Rust, so nothing links the system's OpenSSL: HTTPS
//! goes through rustls ([`https`]), SSH through russh with the host key checked against a
//! `known_hosts` file ([`known_hosts`]) and a bound on every wait ([`ssh`]); credentials come in [`RemoteOptions`] and
//! never appear in an error. A commit's SSH signature can be checked against allowed keys
//! ([`AllowedSigners`]). A plain directory ([`files_in_dir`]) yields the same (path, bytes)
//! list, for `llmgw serve --policies` and `llmgw-policy lint`.
#![deny(unsafe_code)]

mod dir;
mod https;
mod known_hosts;
mod remote;
mod signature;
mod ssh;
mod transport_registry;

pub use dir::{files_in_dir, DirError};
pub use https::HttpsError;
pub use remote::{redact_url, transport, Credential, LocationError, RemoteOptions, Transport};
pub use signature::{AllowedSigners, SignatureError, SignersError};

use git2::{ObjectType, Repository, TreeWalkMode, TreeWalkResult};
use std::path::{Path, PathBuf};

/// A failure to reach or read a policy repository.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// libgit2 refused.
    #[error("{what}: {source}")]
    Git {
        /// What was being done.
        what: String,
        /// libgit2's error.
        source: git2::Error,
    },
    /// The location cannot be used.
    #[error(transparent)]
    Location(#[from] LocationError),
    /// HTTPS cannot be set up (the CA file, TLS).
    #[error(transparent)]
    Https(#[from] HttpsError),
    /// The remote could not be fetched; credentials scrubbed from the message.
    #[error("fetching {branch}: {message}")]
    Fetch {
        /// The branch.
        branch: String,
        /// Why, as libgit2 and the transport said it.
        message: String,
    },
}

fn ctx(what: impl Into<String>) -> impl FnOnce(git2::Error) -> GitError {
    let what = what.into();
    move |source| GitError::Git { what, source }
}

/// A commit with what status pages show of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    /// Full hex id.
    pub id: String,
    /// Commit time.
    pub time: chrono::DateTime<chrono::Utc>,
    /// Author name and email.
    pub author: String,
    /// First line of the message.
    pub summary: String,
}

/// A policy repository: a local repository, or a local mirror of a remote one.
pub struct PolicyRepo {
    repo: Repository,
    remote: Option<String>,
    transport: Transport,
    options: RemoteOptions,
}

impl std::fmt::Debug for PolicyRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyRepo")
            .field("path", &self.repo.path())
            .field("remote", &self.remote)
            .finish()
    }
}

impl PolicyRepo {
    /// Opens a local repository at `location`, or mirrors the remote `location` into a bare
    /// repository under `cache`.
    pub fn open(location: &str, cache: &Path) -> Result<Self, GitError> {
        Self::open_with(location, cache, RemoteOptions::default())
    }

    /// [`PolicyRepo::open`], reaching a remote with `options`.
    pub fn open_with(
        location: &str,
        cache: &Path,
        options: RemoteOptions,
    ) -> Result<Self, GitError> {
        let transport = remote::transport(location)?;
        if !location.contains("://") && transport == Transport::Local {
            let repo = Repository::open(location).map_err(ctx(format!("opening {location}")))?;
            return Ok(PolicyRepo {
                repo,
                remote: None,
                transport,
                options,
            });
        }
        match &transport {
            Transport::Https => https::register(location, &options)?,
            Transport::Ssh {
                user,
                host,
                port,
                path,
            } => {
                let target = ssh::Target {
                    user: user.as_deref(),
                    host,
                    port: *port,
                    path,
                };
                ssh::register(location, &target, &options)
                    .map_err(ctx("setting up the SSH transport"))?;
            }
            Transport::Local => {}
        }
        let dir = cache.join(mirror_name(location));
        let repo = match Repository::open_bare(&dir) {
            Ok(repo) => repo,
            Err(_) => {
                std::fs::create_dir_all(&dir).map_err(|e| GitError::Git {
                    what: format!("creating {}", dir.display()),
                    source: git2::Error::from_str(&e.to_string()),
                })?;
                Repository::init_bare(&dir).map_err(ctx(format!("creating {}", dir.display())))?
            }
        };
        Ok(PolicyRepo {
            repo,
            remote: Some(location.to_owned()),
            transport,
            options,
        })
    }

    /// Fetches `branch` from the remote (only that branch, shallow over HTTPS and SSH), if this
    /// is a mirror; a local repository needs none.
    pub fn fetch(&self, branch: &str) -> Result<(), GitError> {
        let Some(url) = &self.remote else {
            return Ok(());
        };
        let failed = |e: git2::Error| GitError::Fetch {
            branch: branch.to_owned(),
            message: remote::scrub(e.message(), &self.options.secrets()),
        };
        let mut remote = self.repo.remote_anonymous(url).map_err(failed)?;
        let spec = format!("+refs/heads/{branch}:refs/heads/{branch}");
        let mut fetch = git2::FetchOptions::new();
        fetch.download_tags(git2::AutotagOption::None);
        if self.transport != Transport::Local {
            fetch.depth(1);
        }
        remote
            .fetch(&[spec.as_str()], Some(&mut fetch), None)
            .map_err(failed)
    }

    /// Checks the SSH signature of commit `commit_id` against `allowed`; returns the
    /// fingerprint of the key that signed it.
    pub fn verify_signature(
        &self,
        commit_id: &str,
        allowed: &AllowedSigners,
    ) -> Result<String, SignatureError> {
        let extracted = git2::Oid::from_str(commit_id)
            .and_then(|oid| self.repo.extract_signature(&oid, None))
            .ok();
        let parts = extracted.as_ref().map(|(sig, data)| (&**sig, &**data));
        signature::verify(commit_id, parts, allowed)
    }

    /// Resolves a revision (a branch, tag, `HEAD~1`, a commit id) to its commit.
    pub fn resolve(&self, rev: &str) -> Result<CommitInfo, GitError> {
        let commit = self
            .repo
            .revparse_single(rev)
            .and_then(|o| o.peel_to_commit())
            .map_err(ctx(format!("resolving `{rev}`")))?;
        let author = commit.author();
        let time = chrono::DateTime::from_timestamp(commit.time().seconds(), 0).unwrap_or_default();
        Ok(CommitInfo {
            id: commit.id().to_string(),
            time,
            author: format!(
                "{} <{}>",
                author.name().unwrap_or("?"),
                author.email().unwrap_or("?")
            ),
            summary: commit
                .summary()
                .ok()
                .flatten()
                .unwrap_or_default()
                .to_owned(),
        })
    }

    /// The files of a commit's tree whose path `wanted` accepts (hidden entries skipped), as
    /// (path, bytes) sorted by path.
    pub fn files_at(
        &self,
        commit_id: &str,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<Vec<(String, Vec<u8>)>, GitError> {
        let tree = self
            .repo
            .revparse_single(commit_id)
            .and_then(|o| o.peel_to_tree())
            .map_err(ctx(format!("reading the tree of {commit_id}")))?;
        let mut blobs = Vec::new();
        tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
            let name = entry.name().unwrap_or_default();
            if name.starts_with('.') {
                return TreeWalkResult::Skip;
            }
            if entry.kind() == Some(ObjectType::Blob) {
                let path = format!("{dir}{name}");
                if wanted(&path) {
                    blobs.push((path, entry.id()));
                }
            }
            TreeWalkResult::Ok
        })
        .map_err(ctx(format!("walking the tree of {commit_id}")))?;
        let mut files = Vec::with_capacity(blobs.len());
        for (path, id) in blobs {
            let blob = self
                .repo
                .find_blob(id)
                .map_err(ctx(format!("reading {path} at {commit_id}")))?;
            files.push((path, blob.content().to_vec()));
        }
        files.sort();
        Ok(files)
    }

    /// The repository's git directory.
    pub fn git_dir(&self) -> PathBuf {
        self.repo.path().to_path_buf()
    }
}

/// A directory name for the mirror of a URL: readable and unique.
fn mirror_name(url: &str) -> String {
    let readable: String = url
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let tail: String = readable
        .chars()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let hash = url.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{tail}-{hash:016x}.git")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) {
        let ok = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(dir)
            .status()
            .expect("git runs")
            .success();
        assert!(ok, "git {args:?}");
    }

    #[test]
    fn reads_a_commit_without_a_checkout_and_mirrors_a_remote() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir_all(work.join("sub")).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        std::fs::write(work.join("a.yaml"), "one").unwrap();
        std::fs::write(work.join("sub/b.yml"), "two").unwrap();
        std::fs::write(work.join("notes.txt"), "skip").unwrap();
        git(&work, &["add", "."]);
        git(&work, &["commit", "-q", "-m", "first"]);
        std::fs::write(work.join("a.yaml"), "changed but not committed").unwrap();

        let repo = PolicyRepo::open(work.to_str().unwrap(), dir.path()).unwrap();
        let head = repo.resolve("main").unwrap();
        assert_eq!(head.summary, "first");
        let files = repo
            .files_at(&head.id, |p| p.ends_with(".yaml") || p.ends_with(".yml"))
            .unwrap();
        let want = vec![
            ("a.yaml".to_owned(), b"one".to_vec()),
            ("sub/b.yml".to_owned(), b"two".to_vec()),
        ];
        assert_eq!(files, want);

        let url = format!("file://{}", work.display());
        let mirror = PolicyRepo::open(&url, &dir.path().join("cache")).unwrap();
        assert!(mirror.resolve("main").is_err(), "nothing is fetched yet");
        mirror.fetch("main").unwrap();
        assert_eq!(mirror.resolve("main").unwrap().id, head.id);
        assert!(repo.resolve("no-such-branch").is_err());
    }

    #[test]
    fn an_ssh_server_that_accepts_and_never_speaks_fails_the_fetch_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts and holds the connection without a byte, until the test ends.
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            if let Ok((socket, _)) = listener.accept() {
                let _ = held_tx.send(socket);
            }
        });
        let known_hosts = dir.path().join("known_hosts");
        std::fs::write(&known_hosts, "").unwrap();
        let options = RemoteOptions {
            known_hosts: Some(known_hosts),
            ..RemoteOptions::default()
        };
        let url = format!("ssh://git@127.0.0.1:{port}/srv/p.git");
        let repo = PolicyRepo::open_with(&url, &dir.path().join("cache"), options).unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done_tx.send(repo.fetch("main").map_err(|e| e.to_string()));
        });
        let bound = ssh::CONNECT_TIMEOUT * 6;
        let fetched = match done_rx.recv_timeout(bound) {
            Ok(fetched) => fetched,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("the fetch still hangs after {bound:?}")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("the fetch panicked"),
        };
        let err = fetched.expect_err("nothing can be fetched from a silent server");
        assert!(err.contains("no SSH session within"), "{err}");
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
        let _held = held_rx
            .try_recv()
            .expect("the server accepted the connection");
    }

    #[test]
    fn an_scp_like_location_goes_through_the_ssh_transport() {
        let dir = tempfile::tempdir().unwrap();
        let known_hosts = dir.path().join("known_hosts");
        std::fs::write(&known_hosts, "").unwrap();
        let options = RemoteOptions {
            known_hosts: Some(known_hosts),
            ..RemoteOptions::default()
        };
        let repo = PolicyRepo::open_with("git@127.0.0.1:srv/p.git", &dir.path().join("c"), options)
            .unwrap();
        let err = repo.fetch("main").unwrap_err().to_string();
        // Port 22 on this machine: nothing listens (refused), or a server whose host key is
        // not in the empty known_hosts. Either way the message is this transport's.
        assert!(
            err.contains("cannot reach 127.0.0.1:22")
                || err.contains("host key verification failed: the host key of 127.0.0.1 "),
            "{err}"
        );
    }
}
