//! funnel: a recommendation system in the classic three-stage shape.
//!
//! Offline (`training`, `eval`, `bundle`) turns interaction logs into a
//! versioned model bundle; online (`shard`, `recall`, `ranking`,
//! `coordinator`, `api`) answers "what should this user see now?" from it.
//! `features` is the one place features are computed, for both.
//! See docs/architecture.md for the map.

pub mod admin;
pub mod api;
pub mod auth;
pub mod bench;
pub mod bundle;
pub mod catalog;
pub mod cluster;
pub mod config;
pub mod control;
pub mod coordinator;
pub mod dataset;
pub mod demo;
pub mod eval;
pub mod eventlog;
pub mod failpoints;
pub mod features;
pub mod gen;
pub mod http_client;
pub mod ids;
pub mod ingest;
pub mod linalg;
pub mod matrix;
pub mod model;
pub mod net;
pub mod node;
pub mod progress;
pub mod proto;
pub mod ranking;
pub mod recall;
pub mod rng;
pub mod routing;
pub mod service;
pub mod shard;
pub mod sparse;
pub mod telemetry;
pub mod testdata;
pub mod tls;
pub mod training;
pub mod userstate;
