//! Where the policy comes from: a directory, or the bundled `policies/` embedded at build time.

use llmgw_engine::diag::Diagnostic;
use llmgw_engine::source::{DirSource, FileSource, MemSource};
use llmgw_engine::CompiledPolicy;
use std::path::PathBuf;

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
}

impl std::fmt::Display for PolicyLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicyLocation::Embedded => f.write_str("bundled policies"),
            PolicyLocation::Dir(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A policy that did not load.
#[derive(Debug, thiserror::Error)]
#[error("the policy at {location} does not load:\n{}", render(.diagnostics))]
pub struct LoadError {
    /// Where it was read from.
    pub location: PolicyLocation,
    /// What is wrong.
    pub diagnostics: Vec<Diagnostic>,
}

fn render(diagnostics: &[Diagnostic]) -> String {
    if diagnostics.is_empty() {
        return "  (no diagnostics)".to_owned();
    }
    diagnostics
        .iter()
        .map(|d| format!("  {d}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Loads and compiles the policy at `location`; warnings are returned beside it.
pub fn load(location: &PolicyLocation) -> Result<(CompiledPolicy, Vec<Diagnostic>), LoadError> {
    let source: Box<dyn FileSource> = match location {
        PolicyLocation::Embedded => Box::new(MemSource::new(
            embedded_files()
                .iter()
                .map(|(p, b)| ((*p).to_owned(), b.to_vec())),
        )),
        PolicyLocation::Dir(dir) => Box::new(DirSource::new(dir.clone())),
    };
    let outcome = llmgw_engine::load::load(source.as_ref(), None);
    match outcome.policy {
        Some(policy) => Ok((policy, outcome.diagnostics)),
        None => Err(LoadError {
            location: location.clone(),
            diagnostics: outcome.diagnostics,
        }),
    }
}
