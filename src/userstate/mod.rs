//! Realtime user state, partitioned by user key: each `UserStateActor`
//! owns one partition and applies events through `UserState::apply` — the
//! same code the trainer replays — so a click is visible to the user's next
//! request. Requests read a partition through its `UserReader` (a shared
//! read lock) instead of a message; the actor stays the only writer.
//!
//! Owns: the per-partition maps and their actor. Must not touch: items,
//! models, the event log (events arrive already durable).

mod actor;
mod store;

pub use actor::{ApplyEvents, DropPartitions, SeedUsers, UserReader, UserStateActor};
pub use store::{AppliedEvent, UserStore};
