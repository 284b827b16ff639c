//! Canary statistics and rollout control for llmgw.
//!
//! Pure: no I/O, no clocks (time is always an input), no async. The gateway routes with
//! [`split`], feeds completed requests to a [`Rollout`] (which runs one anytime-valid
//! [`eprocess`] per metric through its [`Monitor`]), persists the rollout's serialised state,
//! and logs the [`Transition`]s it returns. The policy CLI calls [`analyze()`],
//! [`simulate()`] and [`plan()`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod analyze;
pub mod burst;
pub mod eprocess;
pub mod monitor;
pub mod plan;
pub mod rollout;
pub mod simulate;
pub mod spec;
pub mod split;
pub mod threshold;
pub mod ztest;

pub use analyze::{analyze, analyze_with, AnalyzeError, AnalyzeOptions, AnalyzeReport, Decision};
pub use monitor::{Monitor, Observation, ObservationError};
pub use plan::{fleet, plan, FleetResult, Plan, PlanConfig};
pub use rollout::{Command, CommandError, Phase, Reason, Rollout, StateError, Transition};
pub use simulate::{simulate, SimConfig, SimReport};
pub use spec::{CanarySpec, InvalidSpec, Metric, MetricSpec, Problem, Split, Step};
pub use split::Arm;
