//! The service's operations as the rest of the crate sees them, below
//! every front end and above nothing that serves: the request and response
//! types of each operation (`types`), the one error enum callers tell cases
//! apart by (`ServiceError`), why a shard's items are missing
//! (`shard_error`, made by routing and reported by the coordinator), and edge validation (`validate`: a request is
//! checked completely before anything changes).
//!
//! Owns: those types and checks, plain code. Must not touch: actors, the
//! network, disk, or any wire format (`api` converts to and from these).

pub mod shard_error;
pub mod types;
pub mod validate;

pub use shard_error::{CopyFailure, ShardCallError};
pub use types::*;
