//! `llmgw-policy`: lint, test and explain llmgw policy repositories.
fn main() {}
