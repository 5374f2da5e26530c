//! Chaos suite for funnel: a harness that starts a real cluster of real
//! `funnel serve` processes, drives client load, injects faults, records a
//! history of every client operation and checks invariants at the end.
//!
//! One concept per module:
//! - [`cluster`]: the node processes, their configs, and the calls that
//!   look at them;
//! - [`faults`]: the fault vocabulary applied to those processes;
//! - [`load`]: the open-loop client load and the leader poller;
//! - [`history`]: what happened, clock-stamped;
//! - [`invariants`]: pure checks over the history and final observations;
//! - [`scenario`]: seeded fault schedules and the run lifecycle;
//! - [`report`]: the figures of a run.
//!
//! `cargo test -p chaos-tests` runs the CI set (`tests/ci.rs`); the `chaos`
//! binary runs any scenario for as long as asked (`--duration`, `--seed`).

pub mod cluster;
pub mod faults;
pub mod history;
pub mod invariants;
pub mod load;
pub mod report;
pub mod scenario;
