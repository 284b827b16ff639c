//! End-to-end tests of llmgw live in `tests/tests/`; this library holds nothing.
