//! Where policy files come from: an abstract source of (path, bytes).
//!
//! A directory today, a git tree at a commit in the gateway: both hand the loader the same
//! list of files, so the loader never touches a file system itself.

use std::path::{Path, PathBuf};

/// One file of a policy repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFile {
    /// Path relative to the repository root, with `/` separators.
    pub path: String,
    /// The file's bytes.
    pub bytes: Vec<u8>,
}

/// A failure to read a policy source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The directory or a file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// What could not be read.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Any other source's failure, already described.
    #[error("{0}")]
    Other(String),
}

/// A source of policy files.
pub trait FileSource {
    /// Every policy file (`*.yaml`, `*.yml`), sorted by path.
    fn files(&self) -> Result<Vec<PolicyFile>, SourceError>;
}

/// Whether a path names a policy file.
pub fn is_policy_file(path: &str) -> bool {
    path.ends_with(".yaml") || path.ends_with(".yml")
}

/// A policy repository in a local directory (hidden entries such as `.git/` are skipped).
#[derive(Debug, Clone)]
pub struct DirSource {
    root: PathBuf,
}

impl DirSource {
    /// A source reading the directory `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirSource { root: root.into() }
    }
}

impl FileSource for DirSource {
    fn files(&self) -> Result<Vec<PolicyFile>, SourceError> {
        let mut out = Vec::new();
        walk(&self.root, &self.root, &mut out)?;
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<PolicyFile>) -> Result<(), SourceError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SourceError::Io { path, source }
    };
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let kind = entry.file_type().map_err(io(&path))?;
        if kind.is_dir() {
            walk(root, &path, out)?;
        } else if kind.is_file() {
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            if is_policy_file(&rel) {
                let bytes = std::fs::read(&path).map_err(io(&path))?;
                out.push(PolicyFile { path: rel, bytes });
            }
        }
    }
    Ok(())
}

/// A policy repository held in memory (embedded policies, git trees, tests).
#[derive(Debug, Clone, Default)]
pub struct MemSource {
    files: Vec<PolicyFile>,
}

impl MemSource {
    /// A source of these files.
    pub fn new(files: impl IntoIterator<Item = (String, Vec<u8>)>) -> Self {
        let mut files: Vec<PolicyFile> = files
            .into_iter()
            .filter(|(path, _)| is_policy_file(path))
            .map(|(path, bytes)| PolicyFile { path, bytes })
            .collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        MemSource { files }
    }
}

impl FileSource for MemSource {
    fn files(&self) -> Result<Vec<PolicyFile>, SourceError> {
        Ok(self.files.clone())
    }
}

/// A revision id for sources without one (a directory): a hash of paths and contents.
pub fn content_revision(files: &[PolicyFile]) -> String {
    let bytes = files.iter().flat_map(|file| {
        file.path
            .bytes()
            .chain([0])
            .chain(file.bytes.iter().copied())
            .chain([0])
    });
    format!("dir-{:016x}", fnv64(bytes))
}

/// FNV-1a, 64 bits: stable across platforms and releases, enough to tell contents apart.
pub(crate) fn fnv64(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
