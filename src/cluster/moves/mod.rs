//! Shard transfers: the replicated queue of replica moves, adds and drops
//! that operators ask for (`move-shard`, `rebalance`, `set-replication`,
//! `remove-node --drain`), the rules that admit them, and the pure step
//! function the leader's driver follows to carry them out.
//!
//! A transfer never stops queries. Its steps, each a separate Raft command
//! re-validated by the state machine:
//!
//! 1. `AddReplica(to, Loading)`: the target loads the shard (not queried yet);
//! 2. the target catches up with the catalogue and marks itself `Active`
//!    (`control::link`), coordinators start querying it;
//! 3. `SetReplicaState(from, Draining)`: coordinators stop sending new
//!    queries to the old copy, which still answers the ones in flight;
//! 4. after a grace period, `DropReplica(from)`: the old node unloads it.
//!
//! User partition copies move the same way, through their own queue
//! (`ClusterState::partition_transfers`) and `Command::Partitions`; the
//! functions here take the map (and, for the commands they build, its
//! `MapKind`) and serve both.
//!
//! The phase of a transfer is derived from the shard map, never stored, so
//! a new leader picks up where the old one stopped. A transfer leaves the
//! queue when the map shows it done (see `ClusterState::retire_transfers`).
//!
//! Owns: `Transfer`, `Phase`, admission checks of new transfers, the
//! projected map (the map once the queue has run), the step function, the
//! replication planner and the Raft voter rule (who votes, and when a
//! learner is ready to). Must not touch: Raft, the
//! network, clocks (the caller says which drains waited long enough).
//!
//! Files: `queue` (the constants and settings of the queue, `Transfer`,
//! `Phase`, the projected map, the admission rules and `next_steps`),
//! `replication` (`plan_replication` and the dead-node planner
//! `plan_dead_replacement`), `voters` (the Raft voter rule). Each keeps the
//! rule above: no Raft, network or clocks.

mod queue;
mod replication;
#[cfg(test)]
mod tests;
mod voters;

pub use queue::{
    next_steps, phase, projected, Phase, Transfer, DEFAULT_DRAIN_GRACE_MS,
    MAX_TRANSFERS_PER_COMMAND, SETTING_DRAIN_GRACE_MS, SETTING_MAX_CONCURRENT,
};
pub use replication::{
    plan_dead_replacement, plan_replication, DeadPlan, SETTING_AUTO_REBALANCE,
    SETTING_REPLACE_DEAD_AFTER,
};
pub use voters::{caught_up, desired_voters, next_voters, voter_target};
