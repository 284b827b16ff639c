//! The policy engine of llmgw: policy model, loading with positions, schema validation, CEL
//! checking and compiling, and the pure decision engine.
//!
//! Nothing here does I/O, reads a clock or draws a random number: a decision is a function of
//! the compiled policy, the request context, a live-stats view and a state view. That is what
//! makes `llmgw-policy test`, `explain` and `diff` exact replays of what the gateway does.
//! Files arrive already read ([`source::PolicyFile`]); diagnostics leave as values
//! ([`diag::Diagnostic`], [`render::json`]), for the CLI (`policy-cli/`) and the gateway to
//! report.
//!
//! The public modules are what the gateway and `llmgw-policy` use: the policy model
//! ([`model`]), loading ([`load`], [`source`], [`diag`], [`render`]), the compiled policy
//! ([`policy`]), deciding ([`input`], [`decide`], [`decision`], [`trace`]), and the offline tools
//! built on it ([`testing`], [`diff`], [`record`]). YAML parsing, schema validation, the CEL
//! environment and the checks are private.
#![forbid(unsafe_code)]
// A type reachable from the public API must be nameable from it too.
#![warn(unnameable_types)]

mod celenv;
pub mod changes;
mod checks;
pub mod decide;
pub mod decision;
pub mod diag;
pub mod diff;
mod expr;
mod index;
pub mod input;
pub mod load;
pub mod model;
pub mod policy;
pub mod record;
pub mod render;
mod schema;
mod secrets;
pub mod source;
pub mod testing;
pub mod trace;
pub mod update;
mod views;
mod yaml;

#[cfg(test)]
mod tests;

pub use decide::DecideError;
pub use decision::Decision;
pub use diag::Diagnostic;
pub use expr::EvalError;
pub use load::{load_files, LoadOutcome};
pub use policy::CompiledPolicy;
pub use source::PolicyFile;
