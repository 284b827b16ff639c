//! The SSH server's host key checked against a `known_hosts` file before anything is sent.
//!
//! The SSH transport ([`crate::ssh`]) shows the host key to [`check_host_key`] during the key
//! exchange; a key that is not listed for the host (plain, wildcard or hashed `|1|` entries,
//! `[host]:port` for other ports), or is listed `@revoked`, ends the connection with a message
//! naming the host, the key's fingerprint and the file.

use hmac::{Hmac, Mac};
use ssh_key::known_hosts::{Entry, HostPatterns, KnownHosts, Marker};
use ssh_key::{HashAlg, PublicKey};
use std::path::{Path, PathBuf};

/// The `known_hosts` file used when none is given: `~/.ssh/known_hosts`.
pub(crate) fn default_known_hosts() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".ssh/known_hosts")
}

/// The name a host has in `known_hosts`: `host`, or `[host]:port` for a port other than 22.
pub(crate) fn known_hosts_name(host: &str, port: Option<u16>) -> String {
    match port {
        Some(p) if p != 22 => format!("[{host}]:{p}"),
        _ => host.to_owned(),
    }
}

fn matches(patterns: &HostPatterns, name: &str) -> bool {
    match patterns {
        HostPatterns::Patterns(list) => {
            let mut hit = false;
            for p in list {
                if let Some(negated) = p.strip_prefix('!') {
                    if wildmatch::WildMatch::new(negated).matches(name) {
                        return false;
                    }
                } else if wildmatch::WildMatch::new(p).matches(name) {
                    hit = true;
                }
            }
            hit
        }
        HostPatterns::HashedName { salt, hash } => {
            let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(salt) else {
                return false;
            };
            mac.update(name.as_bytes());
            mac.verify_slice(hash).is_ok()
        }
    }
}

/// Checks the raw host key `offered` of `name` against the `known_hosts` file at `path`.
pub(crate) fn check_host_key(path: &Path, name: &str, offered: &[u8]) -> Result<(), String> {
    let shown = PublicKey::from_bytes(offered)
        .map(|k| format!("{} {}", k.algorithm(), k.fingerprint(HashAlg::Sha256)))
        .unwrap_or_else(|_| "of an unknown type".to_owned());
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read the known_hosts file {} to verify the host key of {name}: {e}",
            path.display()
        )
    })?;
    let entries: Vec<Entry> = KnownHosts::new(&text).filter_map(Result::ok).collect();
    let same_key = |e: &Entry| e.public_key().to_bytes().is_ok_and(|b| b == offered);
    let for_host = |e: &&Entry| matches(e.host_patterns(), name);
    if entries
        .iter()
        .filter(for_host)
        .any(|e| e.marker() == Some(&Marker::Revoked) && same_key(e))
    {
        return Err(format!(
            "the host key of {name} ({shown}) is marked @revoked in {}",
            path.display()
        ));
    }
    if entries
        .iter()
        .filter(for_host)
        .any(|e| e.marker().is_none() && same_key(e))
    {
        return Ok(());
    }
    Err(format!(
        "host key verification failed: the host key of {name} ({shown}) is not in the known_hosts file {}",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPdYEHJ7PpZ0FwiMDWu4WRdj0cExIQfubqZbWxY5uRUa";

    #[test]
    fn checks_plain_wildcard_hashed_and_revoked_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        let offered = PublicKey::from_openssh(KEY).unwrap().to_bytes().unwrap();
        let write = |text: &str| std::fs::write(&path, text).unwrap();

        write(&format!("[127.0.0.1]:2222 {KEY}\n"));
        assert!(check_host_key(&path, "[127.0.0.1]:2222", &offered).is_ok());
        let err = check_host_key(&path, "127.0.0.1", &offered).unwrap_err();
        assert!(err.contains("not in the known_hosts file"), "{err}");
        assert!(err.contains("SHA256:"), "{err}");

        write(&format!("*.example.com,!bad.example.com {KEY}\n"));
        assert!(check_host_key(&path, "git.example.com", &offered).is_ok());
        assert!(check_host_key(&path, "bad.example.com", &offered).is_err());

        // `ssh-keygen -H` of "git.example.com" with a fixed salt.
        let salt = [7u8; 20];
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(&salt).unwrap();
        mac.update(b"git.example.com");
        let hash = mac.finalize().into_bytes();
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        write(&format!(
            "|1|{}|{} {KEY}\n",
            b64.encode(salt),
            b64.encode(hash)
        ));
        assert!(check_host_key(&path, "git.example.com", &offered).is_ok());
        assert!(check_host_key(&path, "other.example.com", &offered).is_err());

        write(&format!(
            "git.example.com {KEY}\n@revoked git.example.com {KEY}\n"
        ));
        let err = check_host_key(&path, "git.example.com", &offered).unwrap_err();
        assert!(err.contains("@revoked"), "{err}");
    }
}
