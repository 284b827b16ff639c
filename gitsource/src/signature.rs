//! Commit signatures: SSH signatures (`gpg.format=ssh`, the `sshsig` format in the
//! `git` namespace) checked against a file of allowed public keys.
//!
//! GPG signatures are recognised but not verified: a commit signed with GPG is refused
//! when signatures are required, with a message saying so.

use ssh_key::{HashAlg, PublicKey, SshSig};
use std::path::Path;

/// The public keys whose signatures are accepted.
#[derive(Debug, Clone)]
pub struct AllowedSigners {
    keys: Vec<PublicKey>,
}

/// Why an allowed-signers file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SignersError {
    /// The file cannot be read.
    #[error("cannot read the allowed signers file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line holds no public key.
    #[error(
        "{path}:{line}: not an SSH public key (want `[principals] ssh-ed25519 AAAA… [comment]`)"
    )]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
    },
    /// The file lists no key.
    #[error("the allowed signers file {0} lists no key")]
    Empty(String),
}

impl AllowedSigners {
    /// Reads one key per line: an `authorized_keys`-style line (`ssh-ed25519 AAAA… comment`) or
    /// a git `allowed_signers` line (principals and options first); `#` comments and blank
    /// lines skipped.
    pub fn read(path: &Path) -> Result<Self, SignersError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SignersError::Read {
            path: shown.clone(),
            source,
        })?;
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let words: Vec<&str> = line.split_whitespace().collect();
            let key = (0..words.len())
                .find_map(|from| PublicKey::from_openssh(&words[from..].join(" ")).ok())
                .ok_or_else(|| SignersError::Line {
                    path: shown.clone(),
                    line: i + 1,
                })?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(SignersError::Empty(shown));
        }
        Ok(AllowedSigners { keys })
    }
}

/// Why a commit is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No signature at all.
    #[error("commit {0} is not signed")]
    Unsigned(String),
    /// A GPG signature, which this build does not verify.
    #[error("commit {0} has a GPG signature; only SSH signatures are verified (sign with `git config gpg.format ssh`)")]
    Gpg(String),
    /// A signature that cannot be parsed.
    #[error("commit {commit} has a signature that cannot be read: {reason}")]
    Malformed {
        /// The commit.
        commit: String,
        /// Why.
        reason: String,
    },
    /// Signed by a key that is not allowed.
    #[error("commit {commit} is signed by {key}, which is not an allowed signer")]
    UnknownKey {
        /// The commit.
        commit: String,
        /// The signing key's fingerprint.
        key: String,
    },
    /// Signed by an allowed key, but the signature does not match the commit.
    #[error("commit {commit}: the signature by {key} does not match the commit's content")]
    Invalid {
        /// The commit.
        commit: String,
        /// The signing key's fingerprint.
        key: String,
    },
}

/// Verifies the SSH signature `signature` over `signed` (a commit's content) of `commit`;
/// returns the fingerprint of the key that signed it.
pub(crate) fn verify(
    commit: &str,
    signature: Option<(&[u8], &[u8])>,
    allowed: &AllowedSigners,
) -> Result<String, SignatureError> {
    let Some((signature, signed)) = signature else {
        return Err(SignatureError::Unsigned(commit.to_owned()));
    };
    let text = String::from_utf8_lossy(signature);
    if text.contains("BEGIN PGP SIGNATURE") {
        return Err(SignatureError::Gpg(commit.to_owned()));
    }
    let sig = SshSig::from_pem(text.trim()).map_err(|e| SignatureError::Malformed {
        commit: commit.to_owned(),
        reason: e.to_string(),
    })?;
    let key = PublicKey::from(sig.public_key().clone())
        .fingerprint(HashAlg::Sha256)
        .to_string();
    let Some(allowed_key) = allowed
        .keys
        .iter()
        .find(|k| k.key_data() == sig.public_key())
    else {
        return Err(SignatureError::UnknownKey {
            commit: commit.to_owned(),
            key,
        });
    };
    allowed_key
        .verify("git", signed, &sig)
        .map(|()| key.clone())
        .map_err(|_| SignatureError::Invalid {
            commit: commit.to_owned(),
            key,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPdYEHJ7PpZ0FwiMDWu4WRdj0cExIQfubqZbWxY5uRUa";

    #[test]
    fn reads_allowed_signers_and_authorized_keys_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allowed");
        let text = format!(
            "# reviewers\n\nalice@example.com {KEY} alice\nbob@example.com,carol@example.com namespaces=\"git\" {KEY}\n{KEY} plain\n"
        );
        std::fs::write(&path, text).unwrap();
        assert_eq!(AllowedSigners::read(&path).unwrap().keys.len(), 3);

        std::fs::write(&path, "alice@example.com not-a-key\n").unwrap();
        let err = AllowedSigners::read(&path).unwrap_err();
        assert!(err.to_string().ends_with("allowed:1: not an SSH public key (want `[principals] ssh-ed25519 AAAA… [comment]`)"), "{err}");
        std::fs::write(&path, "# nobody\n").unwrap();
        assert!(matches!(
            AllowedSigners::read(&path),
            Err(SignersError::Empty(_))
        ));
    }

    #[test]
    fn refuses_unsigned_gpg_and_garbled_signatures() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allowed");
        std::fs::write(&path, KEY).unwrap();
        let allowed = AllowedSigners::read(&path).unwrap();
        assert_eq!(
            verify("c0ffee", None, &allowed),
            Err(SignatureError::Unsigned("c0ffee".into()))
        );
        let gpg = b"-----BEGIN PGP SIGNATURE-----\n...\n-----END PGP SIGNATURE-----\n";
        assert_eq!(
            verify("c0ffee", Some((gpg, b"tree")), &allowed),
            Err(SignatureError::Gpg("c0ffee".into()))
        );
        let garbled = b"-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n";
        assert!(matches!(
            verify("c0ffee", Some((garbled, b"tree")), &allowed),
            Err(SignatureError::Malformed { .. })
        ));
    }
}
