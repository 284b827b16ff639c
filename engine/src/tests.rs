//! Tests of the engine's internals through its private modules: the CEL environment and
//! compiler, and properties of loading.

mod cel;
mod fuzz_lint;
mod lint_regressions;
