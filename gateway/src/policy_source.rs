//! Where the policy comes from: the bundled `policies/` embedded at build time, a directory, or
//! a branch of a git repository.
//!
//! A [`SourceReader`] tells which revision a source is at now ([`SourceReader::head`]) and
//! hands over the files of a revision ([`SourceReader::files`]). A git repository is read
//! through `llmgw-git`: the branch is resolved with libgit2 (fetched first when the location is
//! a URL) and the tree of the commit is read from the object database, never from a checkout.
//! A directory's revision is a hash of its policy files' paths and contents.

use llmgw_engine::diag::Diagnostic;
use llmgw_engine::source::{content_revision, is_policy_file, policy_files, PolicyFile};
use llmgw_engine::CompiledPolicy;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_policies.rs"));
}

/// The bundled policy files compiled into the binary.
pub fn embedded_files() -> &'static [(&'static str, &'static [u8])] {
    embedded::FILES
}

/// A policy location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyLocation {
    /// The policies embedded in the binary.
    Embedded,
    /// A directory.
    Dir(PathBuf),
    /// A branch of a git repository: a local path or a URL (`file://`, `https://`, `ssh://`,
    /// `user@host:path`).
    Repo {
        /// Path or URL.
        location: String,
        /// Branch followed.
        branch: String,
    },
}

impl std::fmt::Display for PolicyLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicyLocation::Embedded => f.write_str("bundled policies"),
            PolicyLocation::Dir(p) => write!(f, "{}", p.display()),
            PolicyLocation::Repo { location, branch } => {
                write!(f, "{} branch {branch}", llmgw_git::redact_url(location))
            }
        }
    }
}

/// Where `llmgw serve` reads policies from, and how often it looks again.
#[derive(Debug, Clone, clap::Args)]
pub struct PolicyArgs {
    /// Policy directory, watched for changes (`.git/` ignored); the policies bundled into the
    /// binary when neither this nor `--repo` is given.
    #[arg(long, value_name = "DIR", conflicts_with = "repo")]
    pub policies: Option<PathBuf>,
    /// Git repository of policies: a local path or a URL (`file://`, `https://`, `ssh://`,
    /// `user@host:path`), polled for new commits on `--branch` and read without a checkout.
    /// Credentials never go in the URL: see `--repo-password` and `--repo-ssh-key`.
    #[arg(long, value_name = "PATH_OR_URL")]
    pub repo: Option<String>,
    /// Branch of `--repo` to serve.
    #[arg(long, value_name = "BRANCH", default_value = "main", requires = "repo")]
    pub branch: String,
    /// How often `--repo` is polled (`500ms`, `1s`, `2m`); a directory is watched and also
    /// polled at ten times this.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = crate::watch::parse_duration)]
    pub poll_interval: std::time::Duration,
    /// HTTPS user name for `--repo` (`x-access-token`, what GitHub wants with a token, unless
    /// told), or the SSH user (the URL's, else `git`).
    #[arg(long, value_name = "NAME", requires = "repo")]
    pub repo_username: Option<String>,
    /// HTTPS token or password for `--repo`, by reference: `env:NAME` or `file:PATH`.
    #[arg(
        long,
        visible_alias = "repo-token",
        value_name = "REF",
        requires = "repo"
    )]
    pub repo_password: Option<String>,
    /// SSH private key (a deploy key) for an `ssh://` or `user@host:path` `--repo`.
    #[arg(long, value_name = "FILE", requires = "repo")]
    pub repo_ssh_key: Option<PathBuf>,
    /// Passphrase of `--repo-ssh-key`, by reference: `env:NAME` or `file:PATH`.
    #[arg(long, value_name = "REF", requires = "repo_ssh_key")]
    pub repo_ssh_passphrase: Option<String>,
    /// `known_hosts` file the SSH server's host key must be listed in (default
    /// `~/.ssh/known_hosts`); an unlisted key is refused.
    #[arg(long, value_name = "FILE", requires = "repo")]
    pub repo_known_hosts: Option<PathBuf>,
    /// PEM file of certificate authorities trusted for an HTTPS `--repo`, besides the
    /// system's.
    #[arg(long, value_name = "FILE", requires = "repo")]
    pub repo_ca_file: Option<PathBuf>,
    /// Only apply head commits with an SSH signature by one of the public keys in FILE
    /// (`allowed_signers` or `authorized_keys` lines); others are rejected like a broken
    /// revision.
    #[arg(long, value_name = "FILE", requires = "repo")]
    pub require_signed_commits: Option<PathBuf>,
    /// Secret of `POST /hooks/git` on the admin listener, by reference (`env:NAME`,
    /// `file:PATH`): a GitHub (`X-Hub-Signature-256`) or GitLab (`X-Gitlab-Token`) push
    /// notification signed with it fetches `--repo` at once. Off without it.
    #[arg(long, value_name = "REF", requires = "repo")]
    pub webhook_secret: Option<String>,
}

/// How a git repository is reached and which of its commits are trusted.
#[derive(Debug, Clone, Default)]
pub struct GitAccess {
    /// Credentials, known hosts, extra CA.
    pub remote: llmgw_git::RemoteOptions,
    /// Keys a head commit must be signed with, when signatures are required.
    pub signers: Option<llmgw_git::AllowedSigners>,
}

/// Resolves a secret reference given to the option `option`; the error names the option
/// and the reference, never a value.
pub fn resolve_secret(
    option: &str,
    reference: &str,
) -> Result<crate::providers::secret::Secret, String> {
    use crate::providers::secret::{self, SecretError};
    secret::resolve(reference).map_err(|e| match e {
        SecretError::MissingEnv(name) => {
            format!("{option}: the environment variable `{name}` is not set")
        }
        SecretError::MissingFile(path) => format!("{option}: cannot read the file `{path}`"),
        bad @ SecretError::BadReference(_) => format!("{option}: {bad}"),
    })
}

impl PolicyArgs {
    /// Resolves the credential references and reads the allowed signers file.
    pub fn git_access(&self) -> Result<GitAccess, String> {
        let resolve = |option: &str, r: &Option<String>| {
            r.as_deref()
                .map(|r| resolve_secret(option, r).map(|s| llmgw_git::Credential::new(s.expose())))
                .transpose()
        };
        let signers = self
            .require_signed_commits
            .as_deref()
            .map(llmgw_git::AllowedSigners::read)
            .transpose()
            .map_err(|e| format!("--require-signed-commits: {e}"))?;
        Ok(GitAccess {
            remote: llmgw_git::RemoteOptions {
                username: self.repo_username.clone(),
                password: resolve("--repo-password", &self.repo_password)?,
                ssh_key: self.repo_ssh_key.clone(),
                ssh_passphrase: resolve("--repo-ssh-passphrase", &self.repo_ssh_passphrase)?,
                known_hosts: self.repo_known_hosts.clone(),
                ca_file: self.repo_ca_file.clone(),
            },
            signers,
        })
    }

    /// The location these options name.
    pub fn location(&self) -> PolicyLocation {
        match (&self.repo, &self.policies) {
            (Some(repo), _) => PolicyLocation::Repo {
                location: repo.clone(),
                branch: self.branch.clone(),
            },
            (None, Some(dir)) => PolicyLocation::Dir(dir.clone()),
            (None, None) => PolicyLocation::Embedded,
        }
    }
}

/// A revision of a policy source: its id and, for a git commit, when, by whom and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionInfo {
    /// Commit id, or the content hash (`dir-…`) of a directory or the bundled policies.
    pub id: String,
    /// Commit time.
    #[serde(default)]
    pub time: Option<chrono::DateTime<chrono::Utc>>,
    /// Commit author (`name <email>`).
    #[serde(default)]
    pub author: Option<String>,
    /// First line of the commit message.
    #[serde(default)]
    pub summary: Option<String>,
    /// The source it was read from.
    pub source: String,
}

impl RevisionInfo {
    /// A revision known by its id only.
    pub fn content(id: String, location: &PolicyLocation) -> Self {
        RevisionInfo {
            id,
            time: None,
            author: None,
            summary: None,
            source: location.to_string(),
        }
    }

    fn commit(c: llmgw_git::CommitInfo, location: &PolicyLocation) -> Self {
        RevisionInfo {
            id: c.id,
            time: Some(c.time),
            author: Some(c.author),
            summary: Some(c.summary),
            source: location.to_string(),
        }
    }
}

/// A policy source that cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The directory could not be read (the source error names the path).
    #[error("{source}")]
    Dir {
        /// The directory.
        location: String,
        /// Why.
        source: llmgw_git::DirError,
    },
    /// The git repository could not be opened, fetched or read.
    #[error("{location}: {source}")]
    Git {
        /// The repository.
        location: String,
        /// Why.
        source: llmgw_git::GitError,
    },
    /// A revision of a directory that is no longer what the directory holds.
    #[error("{location} no longer holds revision `{id}`")]
    Gone {
        /// The directory.
        location: String,
        /// The revision asked for.
        id: String,
    },
}

/// Reads revisions of one policy location.
pub struct SourceReader {
    location: PolicyLocation,
    repo: Option<llmgw_git::PolicyRepo>,
    signers: Option<llmgw_git::AllowedSigners>,
    /// The files read by the last [`SourceReader::head`] of a directory, with their revision.
    last_read: Option<(String, Vec<PolicyFile>)>,
}

impl std::fmt::Debug for SourceReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceReader")
            .field("location", &self.location)
            .field("repo", &self.repo)
            .finish()
    }
}

impl SourceReader {
    /// A reader of `location`; a remote repository is mirrored under `cache_dir` and
    /// reached with `access`.
    pub fn open(
        location: PolicyLocation,
        cache_dir: &Path,
        access: GitAccess,
    ) -> Result<Self, SourceError> {
        let repo = match &location {
            PolicyLocation::Repo { location: at, .. } => Some(
                llmgw_git::PolicyRepo::open_with(at, cache_dir, access.remote).map_err(
                    |source| SourceError::Git {
                        location: llmgw_git::redact_url(at),
                        source,
                    },
                )?,
            ),
            _ => None,
        };
        Ok(SourceReader {
            location,
            repo,
            signers: access.signers,
            last_read: None,
        })
    }

    /// Whether `revision` may be applied: with signatures required, a repository's commit
    /// must carry an SSH signature by an allowed key.
    pub fn trust(&self, revision: &RevisionInfo) -> Result<(), Diagnostic> {
        let (Some(repo), Some(signers)) = (&self.repo, &self.signers) else {
            return Ok(());
        };
        repo.verify_signature(&revision.id, signers)
            .map(drop)
            .map_err(|e| {
                Diagnostic::error("git/signature", e.to_string(), None).with_help(
                    "sign commits with a key listed in --require-signed-commits (git config gpg.format ssh)",
                )
            })
    }

    /// The location read.
    pub fn location(&self) -> &PolicyLocation {
        &self.location
    }

    fn git_error(&self, source: llmgw_git::GitError) -> SourceError {
        let location = match &self.location {
            PolicyLocation::Repo { location, .. } => llmgw_git::redact_url(location),
            other => other.to_string(),
        };
        SourceError::Git { location, source }
    }

    /// The revision the source is at now: the branch's commit (fetched first from a remote),
    /// or the content hash of the directory or of the bundled policies.
    pub fn head(&mut self) -> Result<RevisionInfo, SourceError> {
        match &self.location {
            PolicyLocation::Embedded => {
                let files = embedded_policy_files();
                let id = content_revision(&files);
                self.last_read = Some((id.clone(), files));
                Ok(RevisionInfo::content(id, &self.location))
            }
            PolicyLocation::Dir(dir) => {
                let files = llmgw_git::files_in_dir(dir, is_policy_file)
                    .map(policy_files)
                    .map_err(|source| SourceError::Dir {
                        location: dir.display().to_string(),
                        source,
                    })?;
                let id = content_revision(&files);
                self.last_read = Some((id.clone(), files));
                Ok(RevisionInfo::content(id, &self.location))
            }
            PolicyLocation::Repo { branch, .. } => {
                let Some(repo) = &self.repo else {
                    unreachable!("a repository location always has a repository")
                };
                repo.fetch(branch).map_err(|e| self.git_error(e))?;
                let commit = repo.resolve(branch).map_err(|e| self.git_error(e))?;
                Ok(RevisionInfo::commit(commit, &self.location))
            }
        }
    }

    /// The commit `id` of a repository with its time, author and summary; `None` for other
    /// sources, which keep no history.
    pub fn commit(&self, id: &str) -> Option<Result<RevisionInfo, SourceError>> {
        let repo = self.repo.as_ref()?;
        Some(
            repo.resolve(id)
                .map(|c| RevisionInfo::commit(c, &self.location))
                .map_err(|e| self.git_error(e)),
        )
    }

    /// The policy files (`*.yaml`, `*.yml`) of a revision. A directory only has the revision
    /// its last [`SourceReader::head`] read.
    pub fn files(&mut self, revision: &RevisionInfo) -> Result<Vec<PolicyFile>, SourceError> {
        if let Some(repo) = &self.repo {
            return repo
                .files_at(&revision.id, is_policy_file)
                .map(policy_files)
                .map_err(|e| self.git_error(e));
        }
        match self.last_read.take() {
            Some((id, files)) if id == revision.id => Ok(files),
            _ => Err(SourceError::Gone {
                location: self.location.to_string(),
                id: revision.id.clone(),
            }),
        }
    }
}

/// The bundled policy files as the loader takes them.
pub fn embedded_policy_files() -> Vec<PolicyFile> {
    policy_files(
        embedded_files()
            .iter()
            .map(|(path, bytes)| ((*path).to_owned(), bytes.to_vec())),
    )
}

/// A revision that does not compile: every finding, errors and warnings.
#[derive(Debug, Clone, thiserror::Error)]
#[error("revision `{revision}` does not load:\n{}", render(.diagnostics))]
pub struct LoadError {
    /// The revision.
    pub revision: String,
    /// What is wrong.
    pub diagnostics: Vec<Diagnostic>,
}

/// The diagnostics one per line, indented.
pub fn render(diagnostics: &[Diagnostic]) -> String {
    if diagnostics.is_empty() {
        return "  (no diagnostics)".to_owned();
    }
    diagnostics
        .iter()
        .map(|d| format!("  {d}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Loads, validates and compiles the files of `revision`; warnings are returned beside the
/// policy. CPU-bound: run it off the request path.
pub fn compile(
    files: &[PolicyFile],
    revision: &str,
) -> Result<(CompiledPolicy, Vec<Diagnostic>), LoadError> {
    let outcome = llmgw_engine::load::load_files(files, Some(revision));
    match outcome.policy {
        Some(policy) => Ok((policy, outcome.diagnostics)),
        None => Err(LoadError {
            revision: revision.to_owned(),
            diagnostics: outcome.diagnostics,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_revision_is_its_content_hash() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.yaml"), "x: 1\n").expect("write");
        std::fs::create_dir(dir.path().join(".git")).expect("mkdir");
        std::fs::write(dir.path().join(".git/b.yaml"), "ignored").expect("write");
        let location = PolicyLocation::Dir(dir.path().to_path_buf());
        let mut reader =
            SourceReader::open(location, dir.path(), GitAccess::default()).expect("open");
        let first = reader.head().expect("head");
        assert!(first.id.starts_with("dir-"));
        let files = reader.files(&first).expect("files");
        assert_eq!(files.len(), 1, "`.git/` is skipped");
        assert!(
            reader.files(&first).is_err(),
            "a directory has only what head read"
        );
        std::fs::write(dir.path().join("a.yaml"), "x: 2\n").expect("write");
        assert_ne!(reader.head().expect("head").id, first.id);
        assert!(reader.commit(&first.id).is_none());
    }

    #[test]
    fn the_bundled_policies_compile() {
        let mut reader = SourceReader::open(
            PolicyLocation::Embedded,
            Path::new("."),
            GitAccess::default(),
        )
        .expect("open");
        let head = reader.head().expect("head");
        let files = reader.files(&head).expect("files");
        if files.is_empty() {
            return;
        }
        let (policy, _) = compile(&files, &head.id).expect("compiles");
        assert_eq!(policy.revision(), head.id);
    }
}
