//! Transport settings by remote URL: libgit2 creates transports from a global factory, so a
//! repository registers what its URL needs before fetching, and the factory looks it up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Settings of one kind of transport, by remote URL.
pub(crate) struct Registry<S> {
    by_url: OnceLock<Mutex<HashMap<String, Arc<S>>>>,
    /// The transport's name in the error of a lookup that finds nothing (`SSH`, `HTTPS`).
    kind: &'static str,
}

impl<S> Registry<S> {
    /// An empty registry for the transport named `kind`.
    pub(crate) const fn new(kind: &'static str) -> Self {
        Registry {
            by_url: OnceLock::new(),
            kind,
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<S>>> {
        self.by_url
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Registers (or replaces) the settings of `url`.
    pub(crate) fn insert(&self, url: &str, settings: Arc<S>) {
        self.map().insert(url.to_owned(), settings);
    }

    /// The settings registered for `remote`'s URL.
    pub(crate) fn for_remote(&self, remote: &git2::Remote<'_>) -> Result<Arc<S>, git2::Error> {
        let url = remote.url().unwrap_or_default();
        self.map().get(url).cloned().ok_or_else(|| {
            git2::Error::from_str(&format!(
                "no {} settings registered for this remote",
                self.kind
            ))
        })
    }
}
