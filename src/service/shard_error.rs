//! Why a shard's items are missing from an answer: the error a shard call
//! returns (`routing` makes it, `coordinator` reports it as a degraded
//! reason). It lives here, below both, so the reason a client reads and
//! the error routing returns are one value, not a string parsed twice.
//!
//! Owns: `ShardCallError`, `CopyFailure` and their texts. Must not touch:
//! which copy is asked or how (`routing`).

use std::fmt;

/// How one copy of a shard failed to answer.
#[derive(Debug, Clone, PartialEq)]
pub enum CopyFailure {
    /// This node's copy: its shard actor stopped or refused.
    Local(String),
    /// The node answered with a gRPC error, or none reached it (the
    /// transport's error as a status).
    Status { code: tonic::Code, message: String },
    /// The batched RPC carrying this search was dropped before answering.
    BatchDropped,
    /// The request's deadline passed before the call was sent.
    DeadlineBeforeSend,
    /// The copy serves another model version: its vectors live in another
    /// space, so its answer cannot be mixed in.
    OtherModel { answered: String, wanted: String },
    /// The answer does not hold together; the text says how.
    Malformed(String),
}

impl CopyFailure {
    pub fn status(s: &tonic::Status) -> CopyFailure {
        CopyFailure::Status {
            code: s.code(),
            message: s.message().to_string(),
        }
    }
}

impl fmt::Display for CopyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CopyFailure::Local(reason) => f.write_str(reason),
            CopyFailure::Status { code, message } => write!(f, "{code:?}: {message}"),
            CopyFailure::BatchDropped => f.write_str("the batch carrying this search was dropped"),
            CopyFailure::DeadlineBeforeSend => f.write_str("deadline passed before sending"),
            CopyFailure::OtherModel { answered, wanted } => {
                write!(f, "answered from model {answered}, not {wanted}")
            }
            CopyFailure::Malformed(what) => f.write_str(what),
        }
    }
}

/// A shard call that got no answer. The text starts with the shard
/// ("shard 3: ..."), once.
#[derive(Debug, Clone, PartialEq)]
pub enum ShardCallError {
    /// One copy failed: `node` None is this node's own copy.
    Copy {
        shard: u32,
        node: Option<u64>,
        failure: CopyFailure,
    },
    /// No copy could be asked: none is live.
    NoLiveReplica { shard: u32 },
    /// Every copy asked failed; each one's error, in the order asked.
    EveryCopyFailed {
        shard: u32,
        errors: Vec<ShardCallError>,
    },
}

impl ShardCallError {
    pub fn shard(&self) -> u32 {
        match self {
            ShardCallError::Copy { shard, .. }
            | ShardCallError::NoLiveReplica { shard }
            | ShardCallError::EveryCopyFailed { shard, .. } => *shard,
        }
    }

    /// The text after the "shard N: " prefix.
    fn detail(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShardCallError::Copy {
                node: Some(node),
                failure,
                ..
            } => write!(f, "node {node}: {failure}"),
            ShardCallError::Copy {
                node: None,
                failure,
                ..
            } => write!(f, "{failure}"),
            ShardCallError::NoLiveReplica { .. } => f.write_str("no live replica"),
            ShardCallError::EveryCopyFailed { errors, .. } => {
                f.write_str("every replica failed: ")?;
                for (i, e) in errors.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    e.detail(f)?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for ShardCallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard {}: ", self.shard())?;
        self.detail(f)
    }
}

impl std::error::Error for ShardCallError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shard_is_named_once_whatever_the_nesting() {
        let refused = CopyFailure::Status {
            code: tonic::Code::Unavailable,
            message: "connection refused".into(),
        };
        let all = ShardCallError::EveryCopyFailed {
            shard: 3,
            errors: vec![
                ShardCallError::Copy {
                    shard: 3,
                    node: Some(2),
                    failure: refused,
                },
                ShardCallError::Copy {
                    shard: 3,
                    node: None,
                    failure: CopyFailure::Local("shard actor stopped".into()),
                },
            ],
        };
        assert_eq!(
            all.to_string(),
            "shard 3: every replica failed: node 2: Unavailable: connection refused; shard actor stopped"
        );
        assert_eq!(all.shard(), 3);
        assert_eq!(
            ShardCallError::NoLiveReplica { shard: 0 }.to_string(),
            "shard 0: no live replica"
        );
        let other = ShardCallError::Copy {
            shard: 1,
            node: Some(5),
            failure: CopyFailure::OtherModel {
                answered: "v1".into(),
                wanted: "v2".into(),
            },
        };
        assert_eq!(
            other.to_string(),
            "shard 1: node 5: answered from model v1, not v2"
        );
    }
}
