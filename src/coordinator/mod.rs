//! The coordinator: one request's fan-out, merge and deadline. Any node
//! coordinates: it reads user state from the user's partition, runs the
//! local recall paths, fans the ANN query out to every shard (local copy
//! or remote node), merges with quotas, scores on the rank workers and
//! reranks. A request runs as one future on the thread that received it
//! (there is no coordinator actor: it held no state, and the hop to it cost
//! two thread wakeups per request).
//!
//! Owns: the request flow and its deadline accounting (`recommend`), the
//! fallback to rank fusion when scoring fails, and which shortfalls it
//! reports (`service::types::Degraded`). Must not touch: how features,
//! recall paths, merge or scoring work (it calls the plain functions in
//! `features`, `recall`, and `ranking::PoolScoring` for the cascade on the
//! worker pool) or which copy of a shard to ask (`routing`).

mod recommend;

pub use recommend::{recommend, RecommendEnv, Serving};

#[cfg(test)]
mod tests;
