//! Generated protobuf types, one submodule per API and plane, so a module's
//! imports say which plane it talks on:
//!
//! - `public`: the client API (`proto/funnel.proto`, package `funnel.v1`),
//!   served by `api::grpc`.
//! - `control`: node to node, the control plane (`proto/control.proto`,
//!   `funnel.control.v1`): the Raft transport and control requests, served
//!   and called by `cluster`.
//! - `data`: node to node, the data plane (`proto/data.proto`,
//!   `funnel.data.v1`): shard searches, events, digests and bundle files,
//!   served by `api` and called by `routing` and `node`.
//! - `ops`: operator commands (`proto/ops.proto`, `funnel.ops.v1`): publish
//!   and fault injection, served by `api`, called by `admin`.
//!
//! Owns: nothing but the generated code (build.rs compiles it). Must not
//! touch: any other module; conversions live with the services.

/// The public client API (`proto/funnel.proto`).
pub mod public {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("funnel.v1");
}

/// The control plane between nodes (`proto/control.proto`).
pub mod control {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("funnel.control.v1");
}

/// The data plane between nodes (`proto/data.proto`).
pub mod data {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("funnel.data.v1");
}

/// Operator commands to a node (`proto/ops.proto`).
pub mod ops {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("funnel.ops.v1");
}
