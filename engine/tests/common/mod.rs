//! Helpers shared by the engine's integration tests.

use llmgw_engine::source::{is_policy_file, policy_files};
use llmgw_engine::PolicyFile;
use std::path::Path;

/// The bundled policy repository's files, read from `policies/`.
pub fn bundled_files() -> Vec<PolicyFile> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    llmgw_git::files_in_dir(&dir, is_policy_file)
        .map(policy_files)
        .expect("the bundled policies are readable")
}
