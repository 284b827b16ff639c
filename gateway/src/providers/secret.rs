//! Upstream keys, resolved from references (`env:NAME`, `file:PATH`) and never printed.

use std::fmt;

/// A secret value. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for an outgoing request header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// A reference that could not be resolved; names the reference, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The reference is neither `env:` nor `file:`.
    #[error("secret reference `{0}` must start with `env:` or `file:`")]
    BadReference(String),
    /// The environment variable is unset or empty.
    #[error("environment variable `{0}` named by a secret reference of the provider is not set")]
    MissingEnv(String),
    /// The file could not be read or is empty.
    #[error("cannot read the file `{0}` named by a secret reference of the provider")]
    MissingFile(String),
}

/// Resolves a reference.
pub fn resolve(reference: &str) -> Result<Secret, SecretError> {
    if let Some(name) = reference.strip_prefix("env:") {
        match std::env::var(name) {
            Ok(v) if !v.trim().is_empty() => Ok(Secret(v.trim().to_owned())),
            _ => Err(SecretError::MissingEnv(name.to_owned())),
        }
    } else if let Some(path) = reference.strip_prefix("file:") {
        match std::fs::read_to_string(path) {
            Ok(v) if !v.trim().is_empty() => Ok(Secret(v.trim().to_owned())),
            _ => Err(SecretError::MissingFile(path.to_owned())),
        }
    } else {
        // Never echo what was written: it may be a pasted key.
        Err(SecretError::BadReference(
            reference.chars().take(4).collect::<String>() + "…",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_files_and_hides_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        std::fs::write(&path, "sk-test-123\n").expect("write");
        let s = resolve(&format!("file:{}", path.display())).expect("resolves");
        assert_eq!(s.expose(), "sk-test-123");
        assert!(!format!("{s:?}").contains("sk-test"));
        let e = resolve("sk-live-abcdef").unwrap_err();
        assert!(!e.to_string().contains("abcdef"));
        assert!(matches!(
            resolve("env:LLMGW_TEST_SURELY_UNSET"),
            Err(SecretError::MissingEnv(_))
        ));
    }
}
