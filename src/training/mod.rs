//! Offline training: everything `funnel train` fits from an interaction log.
pub mod itemcf;
pub mod popularity;
