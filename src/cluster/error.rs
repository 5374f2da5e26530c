//! The one error type of the cluster control plane, and its mapping to and
//! from gRPC `Status`.
//!
//! Owns: `ClusterError`, `to_status` (the single place that picks gRPC codes)
//! and `from_status` (the inverse, so a forwarded request fails on the
//! origin node with the same variant it failed with on the leader). Must not
//! touch: anything else.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::types::NodeId;

/// What went wrong in the control plane. Variants are what callers branch
/// on: retry elsewhere (`NotLeader`), retry later (`NoLeader`, `NoQuorum`,
/// `Timeout`, `Transport`), give up and report (`Rejected`, `Storage`, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ClusterError {
    #[error("node {node} is not the Raft leader; the leader is node {leader} at {address}: send the request there")]
    NotLeader {
        node: NodeId,
        leader: NodeId,
        address: String,
    },
    #[error("no Raft leader is known right now (an election is running or there is no quorum); retry in a moment")]
    NoLeader,
    #[error("leadership could not be confirmed by a quorum ({0}); this node may be cut off, ask another node")]
    NoQuorum(String),
    #[error("command rejected: {0}")]
    Rejected(String),
    #[error("{what} did not finish within {after_ms} ms; the outcome is unknown: check status, then retry")]
    Timeout { what: String, after_ms: u64 },
    #[error("storage error in {}: {reason}; check the disk and the file (a corrupt file must be restored or the node re-synced from an empty data dir)", file.display())]
    Storage { file: PathBuf, reason: String },
    #[error(
        "transport error talking to {target}: {reason}; check that the node is up and reachable"
    )]
    Transport { target: String, reason: String },
    #[error("message of {bytes} bytes exceeds the limit of {limit} bytes (max_message_bytes); split it or raise the limit")]
    TooLarge { bytes: usize, limit: usize },
    #[error("membership change refused: {0}")]
    Membership(String),
    #[error("invalid cluster settings: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {reason}; pick a free address")]
    Bind { addr: String, reason: String },
    #[error("this node is shutting down; use another node")]
    ShuttingDown,
    #[error("malformed cluster message: {0}; are all nodes running the same funnel version?")]
    Decode(String),
    #[error("raft failure: {0}; the node needs a restart (see its log)")]
    Raft(String),
    #[error("{0}")]
    Unauthenticated(String),
}

impl ClusterError {
    /// True when the same request may succeed if retried (here or on the
    /// node the error names). `Timeout` is included although the first
    /// attempt may still commit: every command is safe to re-apply or is
    /// rejected deterministically the second time.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClusterError::NotLeader { .. }
                | ClusterError::NoLeader
                | ClusterError::NoQuorum(_)
                | ClusterError::Timeout { .. }
                | ClusterError::Transport { .. }
                | ClusterError::ShuttingDown
        )
    }

    pub(crate) fn storage(file: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        ClusterError::Storage {
            file: file.into(),
            reason: reason.to_string(),
        }
    }
}

/// The gRPC status for an error. The error itself travels (JSON) in the
/// status details so `from_status` can rebuild the exact variant.
pub fn to_status(err: &ClusterError) -> tonic::Status {
    use tonic::Code;
    let code = match err {
        ClusterError::NotLeader { .. }
        | ClusterError::NoLeader
        | ClusterError::NoQuorum(_)
        | ClusterError::Transport { .. }
        | ClusterError::ShuttingDown => Code::Unavailable,
        ClusterError::Rejected(_) | ClusterError::Membership(_) => Code::FailedPrecondition,
        ClusterError::Timeout { .. } => Code::DeadlineExceeded,
        ClusterError::Unauthenticated(_) => Code::Unauthenticated,
        ClusterError::TooLarge { .. } => Code::ResourceExhausted,
        ClusterError::Config(_) | ClusterError::Decode(_) => Code::InvalidArgument,
        ClusterError::Storage { .. } | ClusterError::Bind { .. } | ClusterError::Raft(_) => {
            Code::Internal
        }
    };
    let details = serde_json::to_vec(err).unwrap_or_default();
    tonic::Status::with_details(code, err.to_string(), details.into())
}

/// Rebuilds the error a peer sent with `to_status`; any other status (a
/// connection failure, a peer from another program) becomes `Transport`,
/// or `Timeout` for an expired deadline.
pub fn from_status(status: &tonic::Status, target: &str) -> ClusterError {
    if let Ok(err) = serde_json::from_slice::<ClusterError>(status.details()) {
        return err;
    }
    match status.code() {
        tonic::Code::DeadlineExceeded => ClusterError::Timeout {
            what: format!("request to {target}"),
            after_ms: 0,
        },
        _ => ClusterError::Transport {
            target: target.to_string(),
            reason: format!("{:?}: {}", status.code(), status.message()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_survives_the_status_round_trip() {
        let all = vec![
            ClusterError::NotLeader {
                node: 2,
                leader: 1,
                address: "10.0.0.1:7000".into(),
            },
            ClusterError::NoLeader,
            ClusterError::NoQuorum("got {1}".into()),
            ClusterError::Rejected("InitShards rejected: exists — ünïcode".into()),
            ClusterError::Timeout {
                what: "write".into(),
                after_ms: 5,
            },
            ClusterError::Storage {
                file: "/x/raft/log.redb".into(),
                reason: "bad".into(),
            },
            ClusterError::Transport {
                target: "a:1".into(),
                reason: "refused".into(),
            },
            ClusterError::TooLarge {
                bytes: 10,
                limit: 5,
            },
            ClusterError::Membership("in progress".into()),
            ClusterError::Config("x".into()),
            ClusterError::Bind {
                addr: "a:1".into(),
                reason: "in use".into(),
            },
            ClusterError::ShuttingDown,
            ClusterError::Decode("x".into()),
            ClusterError::Raft("x".into()),
            ClusterError::Unauthenticated("token".into()),
        ];
        for err in all {
            let status = to_status(&err);
            assert_eq!(from_status(&status, "peer"), err);
            assert_eq!(status.message(), err.to_string());
        }
    }

    #[test]
    fn codes_tell_retry_from_refusal() {
        assert_eq!(
            to_status(&ClusterError::NoLeader).code(),
            tonic::Code::Unavailable
        );
        assert_eq!(
            to_status(&ClusterError::Rejected("x".into())).code(),
            tonic::Code::FailedPrecondition
        );
        assert!(ClusterError::NoLeader.is_retryable());
        assert!(!ClusterError::Rejected("x".into()).is_retryable());
    }

    #[test]
    fn foreign_statuses_become_transport_errors() {
        let s = tonic::Status::unavailable("tcp connect error");
        match from_status(&s, "h:1") {
            ClusterError::Transport { target, reason } => {
                assert_eq!(target, "h:1");
                assert!(reason.contains("tcp connect error"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            from_status(&tonic::Status::deadline_exceeded("late"), "h:1"),
            ClusterError::Timeout { .. }
        ));
    }
}
