//! llmgw's gateway: an OpenAI-compatible HTTP server that routes each request by the policy
//! engine's decision, executes it against provider adapters with failover, and reports what
//! happened through metrics, logs and response headers.
//!
//! A request walks the phases of [`phases`]: authenticate → identify → decide → (the response
//! [`cache`]) → reserve → attempt → settle → record; [`proxy`] strings them together and
//! [`server`] accepts connections: the API's on one listener ([`routes`]), the operator
//! API's on the admin listener ([`admin_routes`]).
// One module may use `unsafe`: `store::shm_guard`, which handles SIGBUS for SQLite.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod admin_routes;
pub mod app;
pub mod body;
pub mod budgets;
pub mod cache;
pub mod canary_controller;
pub mod circuit;
pub mod cli;
pub mod continuation;
pub mod dashboard;
pub mod decision_log;
pub mod decision_query;
pub mod decision_trace;
pub mod error;
pub mod front;
pub mod health;
pub mod keys;
pub mod keys_cmd;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod otel;
pub mod phases;
pub mod policy_source;
pub mod providers;
pub mod proxy;
pub mod quota;
pub mod ratelimit;
pub mod reload;
pub mod request_body;
pub mod retry_budget;
pub mod routes;
pub mod server;
pub mod signing;
pub mod sse;
pub mod store;
pub mod tenant_token;
pub mod upstream;
pub mod watch;
pub mod webhook;
pub mod wire;
