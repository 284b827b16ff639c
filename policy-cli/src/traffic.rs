//! `llmgw-policy traffic anonymise`: a sample of the gateway's decision log fit to keep in a
//! policy repository, so `diff` replays real traffic without carrying who sent it.
//!
//! Every id (request, key, user, project, tenant) becomes a keyed hash: the same id always maps
//! to the same token under one key, so per-user and per-tenant patterns survive, but without
//! the key nobody can test a guess. Metadata and label values are dropped unless allow-listed.
//! Sampling is decided by a keyed hash of the request id, so a rerun over a grown log keeps
//! the same requests.

use hmac::{Hmac, Mac};
use llmgw_engine::input::Principal;
use llmgw_engine::record::DecisionRecord;
use sha2::Sha256;
use std::collections::BTreeSet;
use std::fmt::Write;
use std::sync::Arc;

/// The shortest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 16;

/// The kinds of principal a record names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Kind {
    /// The gateway key.
    Key,
    /// The user.
    User,
    /// The project.
    Project,
    /// The tenant.
    Tenant,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Key => "key",
            Kind::User => "user",
            Kind::Project => "project",
            Kind::Tenant => "tenant",
        }
    }
}

/// A problem with the options; says which.
#[derive(Debug, thiserror::Error)]
pub enum OptionError {
    /// The key is too short to keep ids secret.
    #[error("the key holds {0} bytes; use at least {MIN_KEY_BYTES} random bytes (for example `head -c 32 /dev/urandom > traffic.key`)")]
    ShortKey(usize),
    /// The sampling rate is out of range.
    #[error("--sample {0} must be greater than 0 and at most 1")]
    Sample(f64),
}

/// How records are sampled and anonymised.
pub struct Anonymiser {
    key: Vec<u8>,
    sample: f64,
    allow_meta: BTreeSet<String>,
    allow_labels: BTreeSet<String>,
    keep_ids: BTreeSet<Kind>,
}

impl Anonymiser {
    /// An anonymiser with a secret key, the fraction of records kept, the metadata keys and
    /// label keys whose values are kept, and the kinds of id kept in the clear (a tenant id
    /// the rules name, say).
    pub fn new(
        key: Vec<u8>,
        sample: f64,
        allow_meta: impl IntoIterator<Item = String>,
        allow_labels: impl IntoIterator<Item = String>,
        keep_ids: impl IntoIterator<Item = Kind>,
    ) -> Result<Self, OptionError> {
        if key.len() < MIN_KEY_BYTES {
            return Err(OptionError::ShortKey(key.len()));
        }
        if !(sample > 0.0 && sample <= 1.0) {
            return Err(OptionError::Sample(sample));
        }
        Ok(Anonymiser {
            key,
            sample,
            allow_meta: allow_meta.into_iter().collect(),
            allow_labels: allow_labels.into_iter().collect(),
            keep_ids: keep_ids.into_iter().collect(),
        })
    }

    fn mac(&self, domain: &str, id: &str) -> [u8; 32] {
        // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
        let mut mac = <Hmac<Sha256>>::new_from_slice(&self.key).expect("HMAC accepts any key");
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        mac.update(id.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The token an id of a domain becomes: `user-5f0c…`, the same for the same id and key.
    pub fn token(&self, domain: &str, id: &str) -> String {
        let mut out = format!("{domain}-");
        for b in &self.mac(domain, id)[..8] {
            let _ = write!(out, "{b:02x}");
        }
        out
    }

    /// Whether the sample keeps the request of this id.
    pub fn keeps(&self, id: &str) -> bool {
        if self.sample >= 1.0 {
            return true;
        }
        let mac = self.mac("sample", id);
        let mut head = [0u8; 8];
        head.copy_from_slice(&mac[..8]);
        (u64::from_be_bytes(head) as f64) < self.sample * u64::MAX as f64
    }

    /// The record with its ids hashed and unlisted metadata and labels dropped; `None` when the
    /// sample leaves it out.
    pub fn apply(&self, mut record: DecisionRecord) -> Option<DecisionRecord> {
        if !self.keeps(&record.id) {
            return None;
        }
        record.id = self.token("req", &record.id);
        let request = &mut record.input.request;
        request.metadata.retain(|k, _| self.allow_meta.contains(k));
        let identity = &mut record.input.identity;
        for (kind, principal) in [
            (Kind::Key, &mut identity.key),
            (Kind::User, &mut identity.user),
            (Kind::Project, &mut identity.project),
            (Kind::Tenant, &mut identity.tenant),
        ] {
            *principal = Arc::new(self.principal(kind, principal));
        }
        Some(record)
    }

    fn principal(&self, kind: Kind, p: &Principal) -> Principal {
        let id = if p.id.is_empty() || self.keep_ids.contains(&kind) {
            p.id.clone()
        } else {
            self.token(kind.as_str(), &p.id)
        };
        let labels = p
            .labels
            .iter()
            .filter(|(k, _)| self.allow_labels.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Principal { id, labels }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anon(sample: f64) -> Anonymiser {
        Anonymiser::new(
            b"0123456789abcdef".to_vec(),
            sample,
            ["team".to_owned()],
            [],
            [],
        )
        .unwrap()
    }

    #[test]
    fn tokens_are_stable_per_key_and_domain() {
        let a = anon(1.0);
        assert_eq!(a.token("user", "alice"), a.token("user", "alice"));
        assert_ne!(a.token("user", "alice"), a.token("user", "bob"));
        assert_ne!(a.token("user", "alice"), a.token("tenant", "alice"));
        let other = Anonymiser::new(b"fedcba9876543210".to_vec(), 1.0, [], [], []).unwrap();
        assert_ne!(a.token("user", "alice"), other.token("user", "alice"));
        assert!(a.token("user", "alice").starts_with("user-"));
        assert_eq!(a.token("user", "alice").len(), "user-".len() + 16);
    }

    #[test]
    fn the_sample_keeps_about_its_rate() {
        let a = anon(0.1);
        let kept = (0..10_000).filter(|i| a.keeps(&format!("req-{i}"))).count();
        assert!((800..1_200).contains(&kept), "{kept}");
    }

    #[test]
    fn short_keys_and_rates_out_of_range_are_refused() {
        assert!(matches!(
            Anonymiser::new(b"short".to_vec(), 0.5, [], [], []),
            Err(OptionError::ShortKey(5))
        ));
        for bad in [0.0, -0.1, 1.5, f64::NAN] {
            assert!(Anonymiser::new(b"0123456789abcdef".to_vec(), bad, [], [], []).is_err());
        }
    }
}
