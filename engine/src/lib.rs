//! The policy engine of llmgw: policy model, loading with positions, schema validation, CEL
//! checking and compiling, and the pure decision engine.
//!
//! Nothing here does I/O, reads a clock or draws a random number: a decision is a function of
//! the compiled policy, the request context, a live-stats view and a state view. That is what
//! makes `llmgw-policy test`, `explain` and `diff` exact replays of what the gateway does.
#![forbid(unsafe_code)]

pub mod celenv;
mod checks;
pub mod decide;
pub mod decision;
pub mod diag;
pub mod diff;
pub mod expr;
mod index;
pub mod input;
pub mod load;
pub mod model;
pub mod policy;
pub mod record;
pub mod render;
pub mod schema;
pub mod secrets;
pub mod source;
pub mod testing;
pub mod trace;
pub mod views;
pub mod yaml;

pub use decide::DecideError;
pub use decision::Decision;
pub use policy::CompiledPolicy;
