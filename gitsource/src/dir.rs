//! A policy repository in a plain directory: the same (path, bytes) list as a commit's tree.

use std::path::{Path, PathBuf};

/// A directory or a file of it that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {}: {source}", path.display())]
pub struct DirError {
    /// What could not be read.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// The files under `root` whose path `wanted` accepts (hidden entries such as `.git/`
/// skipped), as (path relative to `root` with `/` separators, bytes) sorted by path.
pub fn files_in_dir(
    root: &Path,
    wanted: impl Fn(&str) -> bool,
) -> Result<Vec<(String, Vec<u8>)>, DirError> {
    let mut files = Vec::new();
    walk(root, root, &wanted, &mut files)?;
    files.sort();
    Ok(files)
}

fn walk(
    root: &Path,
    dir: &Path,
    wanted: &impl Fn(&str) -> bool,
    out: &mut Vec<(String, Vec<u8>)>,
) -> Result<(), DirError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DirError { path, source }
    };
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let kind = entry.file_type().map_err(io(&path))?;
        if kind.is_dir() {
            walk(root, &path, wanted, out)?;
        } else if kind.is_file() {
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            if wanted(&rel) {
                let bytes = std::fs::read(&path).map_err(io(&path))?;
                out.push((rel, bytes));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::files_in_dir;

    #[test]
    fn reads_wanted_files_skipping_hidden_entries() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::write(root.join("b.yaml"), "two").unwrap();
        std::fs::write(root.join("sub/a.yml"), "one").unwrap();
        std::fs::write(root.join(".git/c.yaml"), "hidden").unwrap();
        std::fs::write(root.join("notes.txt"), "skip").unwrap();
        let files = files_in_dir(root, |p| p.ends_with(".yaml") || p.ends_with(".yml")).unwrap();
        let want = vec![
            ("b.yaml".to_owned(), b"two".to_vec()),
            ("sub/a.yml".to_owned(), b"one".to_vec()),
        ];
        assert_eq!(files, want);
        let missing = files_in_dir(&root.join("absent"), |_| true).unwrap_err();
        assert!(missing.to_string().starts_with("cannot read "), "{missing}");
    }
}
