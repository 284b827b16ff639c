//! Policy files as the loader takes them: (path, bytes) pairs already read.
//!
//! Whoever reads them (a directory walk or a git tree in the gateway and in `llmgw-policy`,
//! the bundled files compiled into the gateway) hands the loader the same list, so the engine
//! never touches a file system itself.

/// One file of a policy repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFile {
    /// Path relative to the repository root, with `/` separators.
    pub path: String,
    /// The file's bytes.
    pub bytes: Vec<u8>,
}

/// Whether a path names a policy file.
pub fn is_policy_file(path: &str) -> bool {
    path.ends_with(".yaml") || path.ends_with(".yml")
}

/// The policy files (`*.yaml`, `*.yml`) among (path, bytes) pairs, sorted by path: what
/// [`crate::load::load_files`] takes, whether the pairs come from a directory, a git tree or
/// memory.
pub fn policy_files(files: impl IntoIterator<Item = (String, Vec<u8>)>) -> Vec<PolicyFile> {
    let mut files: Vec<PolicyFile> = files
        .into_iter()
        .filter(|(path, _)| is_policy_file(path))
        .map(|(path, bytes)| PolicyFile { path, bytes })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
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
