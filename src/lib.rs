//! funnel: a recommendation system in the classic three-stage shape.
//!
//! Offline (`training`, `eval`, `bundle`) turns interaction logs into a
//! versioned model bundle; online (`shard`, `recall`, `ranking`,
//! `coordinator`, `api`) answers "what should this user see now?" from it.
//! `features` is the one place features are computed, for both.
//! See docs/architecture.md for the map.

pub mod dataset;
pub mod gen;
pub mod ids;
pub mod matrix;
pub mod rng;
pub mod sparse;

/// Generated protobuf types for the public API (`proto/funnel.proto`).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("funnel.v1");
}
