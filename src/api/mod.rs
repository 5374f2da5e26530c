//! The front ends: gRPC (`proto/funnel.proto`, tonic) and HTTP/JSON
//! (actix-web) serve the same operations by calling the same `Node`
//! method, so their semantics are identical; `error` maps the service's
//! errors to gRPC and HTTP codes in one place.
//!
//! Owns: wire conversions, routes, body limits, the server runtimes.
//! Must not touch: operation logic (that is `node`).

pub mod admin_service;
pub mod bundle_files;
pub mod error;
pub mod fault_service;
pub mod grpc;
pub mod http;
pub mod internal;
pub mod server;
