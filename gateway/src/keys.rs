//! Gateway keys: only the SHA-256 of each secret is kept, in memory and on disk.

use rand::distr::{Alphanumeric, SampleString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The prefix of every key the gateway generates.
pub const KEY_PREFIX: &str = "llmgw_";

/// A failure to read or write the key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The state directory or key file could not be used.
    #[error("cannot use key file `{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key file is not valid JSON of the expected shape.
    #[error("key file `{path}` is malformed: {source}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
}

/// One registered key, as stored: an id and the hex SHA-256 of its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// A non-secret id, used in logs and budgets.
    pub id: String,
    /// Hex SHA-256 of the secret.
    pub sha256: String,
}

/// The keys the gateway accepts, looked up by the hash of the presented secret.
#[derive(Debug, Default)]
pub struct KeyStore {
    by_hash: HashMap<[u8; 32], Arc<KeyRecord>>,
}

/// How start-up obtained its keys, for the banner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySetup {
    /// A key given on the command line or in `LLMGW_DEV_KEY`.
    DevKey,
    /// A key generated now; the secret is shown once and never again.
    Generated(String),
    /// Keys read from the state directory (secrets were shown when they were generated).
    Stored(usize),
}

/// SHA-256 of a secret.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A fresh random key: the prefix and 43 base-62 characters (about 256 bits).
pub fn generate_key() -> String {
    format!(
        "{KEY_PREFIX}{}",
        Alphanumeric.sample_string(&mut rand::rng(), 43)
    )
}

impl KeyStore {
    /// Registers a key by its secret.
    pub fn insert_secret(&mut self, id: &str, secret: &str) {
        let hash = hash_secret(secret);
        self.insert(KeyRecord {
            id: id.to_owned(),
            sha256: hex::encode(hash),
        });
    }

    /// Registers a stored key record; records with a malformed hash are ignored.
    pub fn insert(&mut self, record: KeyRecord) {
        let mut hash = [0u8; 32];
        if hex::decode_to_slice(&record.sha256, &mut hash).is_ok() {
            self.by_hash.insert(hash, Arc::new(record));
        }
    }

    /// The key whose secret this is.
    pub fn verify(&self, secret: &str) -> Option<Arc<KeyRecord>> {
        self.by_hash.get(&hash_secret(secret)).cloned()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether no key is registered.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The key store for start-up: the dev key if given; else the keys stored under `state_dir`;
    /// else a generated key whose hash is stored there.
    pub fn setup(
        dev_key: Option<&str>,
        state_dir: &Path,
    ) -> Result<(KeyStore, KeySetup), KeyError> {
        let mut store = KeyStore::default();
        if let Some(secret) = dev_key {
            store.insert_secret("dev", secret);
            return Ok((store, KeySetup::DevKey));
        }
        let path = state_dir.join("keys.json");
        let io = |source| KeyError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let records: Vec<KeyRecord> =
                    serde_json::from_slice(&bytes).map_err(|source| KeyError::Malformed {
                        path: path.clone(),
                        source,
                    })?;
                let n = records.len();
                records.into_iter().for_each(|r| store.insert(r));
                if !store.is_empty() {
                    return Ok((store, KeySetup::Stored(n)));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let secret = generate_key();
        let record = KeyRecord {
            id: "local".to_owned(),
            sha256: hex::encode(hash_secret(&secret)),
        };
        std::fs::create_dir_all(state_dir).map_err(io)?;
        let json = serde_json::to_vec_pretty(&[&record]).expect("key records serialise");
        std::fs::write(&path, json).map_err(io)?;
        store.insert(record);
        Ok((store, KeySetup::Generated(secret)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_is_stored_only_hashed_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, setup) = KeyStore::setup(None, dir.path()).expect("setup");
        let KeySetup::Generated(secret) = setup else {
            panic!("expected a generated key")
        };
        assert!(secret.starts_with(KEY_PREFIX) && secret.len() >= 40);
        assert!(store.verify(&secret).is_some());
        let stored = std::fs::read_to_string(dir.path().join("keys.json")).expect("key file");
        assert!(!stored.contains(&secret));
        let (again, setup) = KeyStore::setup(None, dir.path()).expect("setup");
        assert_eq!(setup, KeySetup::Stored(1));
        assert!(again.verify(&secret).is_some());
        assert!(again.verify("llmgw_wrong").is_none());
    }
}
