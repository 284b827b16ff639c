//! The request path as phases, in the order a request walks them:
//! [`authenticate`] → [`identify`] → [`decide`] → [`reserve`] → [`attempt`] → [`settle`] →
//! [`record`]. [`crate::proxy`] strings them together.

pub mod attempt;
pub mod authenticate;
pub mod decide;
pub mod identify;
pub mod record;
pub mod reserve;
pub mod settle;
