//! `NodeCore`, what the gRPC services and the `RaftNode` handle share, and
//! the paths through it: writes (proposed here when this node leads, else
//! forwarded to the leader, then waited for until applied here) and the
//! node's status (`ClusterStatus`). Must not touch: the node's life cycle
//! (start, shutdown) or the rules of the state.

use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, Fatal, ForwardToLeader, RaftError};
use openraft::ServerState;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::settings::RaftSettings;
use crate::cluster::error::{from_status, ClusterError};
use crate::cluster::network::{decode_payload, encode_payload, Channels};
use crate::cluster::state::{Command, CommandResult, NodeInfo, StateSummary};
use crate::cluster::state_machine::StateHandle;
use crate::cluster::types::{NodeId, Raft, RaftMetrics};
use crate::cluster::vote_fence::VoteFence;
use crate::proto::control as proto;
use crate::proto::control::PayloadFormat;

/// How many times a write follows a changing leader before giving up.
const WRITE_ATTEMPTS: usize = 3;

/// A node's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub id: NodeId,
    /// "Leader", "Follower", "Candidate", "Learner" or "Shutdown".
    pub role: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub leader_addr: Option<String>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    /// Entries in the local log not applied yet.
    pub apply_lag: u64,
    pub state: StateSummary,
    /// blake3 of the whole applied state.
    pub state_digest: String,
    /// For linearizable status: the index the answer is valid at.
    pub read_index: Option<u64>,
    /// This node refuses votes: its Raft storage started empty and no
    /// leader has brought it up to date yet (`cluster::vote_fence`).
    #[serde(default)]
    pub vote_fenced: bool,
}

/// Everything the services and the handle share.
pub(crate) struct NodeCore {
    pub(super) id: NodeId,
    pub(super) raft: Raft,
    pub(super) state: StateHandle,
    pub(super) channels: Channels,
    pub(super) settings: RaftSettings,
    pub(super) fence: VoteFence,
}

impl NodeCore {
    /// The admin token forwarded admin writes must carry (empty: none).
    pub(crate) fn admin_token(&self) -> &str {
        &self.settings.admin_token
    }

    /// When a write arriving now must be answered by.
    pub(crate) fn write_deadline(&self) -> Instant {
        Instant::now() + self.settings.write_timeout()
    }

    pub(crate) fn state_handle(&self) -> &StateHandle {
        &self.state
    }

    fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    fn address_of(&self, node: NodeId) -> Option<String> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config
            .membership()
            .get_node(&node)
            .map(|n| n.internal.clone())
    }

    fn not_leader(&self, leader: Option<NodeId>) -> ClusterError {
        match leader {
            Some(leader) if leader != self.id => ClusterError::NotLeader {
                node: self.id,
                leader,
                address: self.address_of(leader).unwrap_or_default(),
            },
            _ => ClusterError::NoLeader,
        }
    }

    pub(super) fn forward_error(&self, f: ForwardToLeader<NodeId, NodeInfo>) -> ClusterError {
        match (f.leader_id, f.leader_node) {
            (Some(leader), Some(node)) if leader != self.id => ClusterError::NotLeader {
                node: self.id,
                leader,
                address: node.internal,
            },
            (leader, _) => self.not_leader(leader),
        }
    }

    pub(super) fn fatal(f: Fatal<NodeId>) -> ClusterError {
        match f {
            Fatal::Stopped => ClusterError::ShuttingDown,
            other => ClusterError::Raft(other.to_string()),
        }
    }

    fn check_size(&self, command: &Command) -> Result<(), ClusterError> {
        let bytes = encode_payload(command)?.len();
        let limit = self.settings.max_message_bytes / 2;
        if bytes > limit {
            return Err(ClusterError::TooLarge { bytes, limit });
        }
        Ok(())
    }

    /// Proposes `command` on this node, which must be the leader. Returns
    /// the apply result and the log index.
    /// Answers by `deadline` at the latest: a leader cut off from its
    /// quorum has appended the entry but cannot commit it, and says so
    /// (the outcome is unknown: a new leader may or may not keep it).
    pub(crate) async fn propose_as_leader(
        &self,
        command: Command,
        deadline: Instant,
    ) -> Result<(CommandResult, u64), ClusterError> {
        self.check_size(&command)?;
        let started = Instant::now();
        match tokio::time::timeout_at(deadline, self.raft.client_write(command)).await {
            Err(_) => Err(ClusterError::Timeout {
                what: format!(
                    "committing the command (node {} leads term {} but no quorum acknowledged the entry)",
                    self.id,
                    self.metrics().current_term
                ),
                after_ms: started.elapsed().as_millis() as u64,
            }),
            Ok(Ok(resp)) => Ok((resp.data, resp.log_id.index)),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(self.forward_error(f))
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Err(ClusterError::Membership(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(f))) => Err(Self::fatal(f)),
        }
    }

    /// Sends `command` to the leader at `address` over Control.ForwardWrite.
    async fn forward(
        &self,
        leader: NodeId,
        address: &str,
        command: &Command,
        deadline: Instant,
    ) -> Result<(CommandResult, u64), ClusterError> {
        let mut client = self.channels.control_client(Some(leader), address)?;
        let mut request = tonic::Request::new(proto::WriteRequest {
            format: PayloadFormat::Postcard as i32,
            command: encode_payload(command)?,
            origin_node: self.id,
        });
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        crate::auth::attach(&mut request, &self.settings.admin_token)
            .map_err(|e| ClusterError::Config(e.to_string()))?;
        let timed_out = || ClusterError::Timeout {
            what: format!("forwarding the command to leader {leader} at {address}"),
            after_ms: self.settings.write_timeout().as_millis() as u64,
        };
        let reply = match tokio::time::timeout_at(deadline, client.forward_write(request)).await {
            Err(_) => return Err(timed_out()),
            // the request's own grpc-timeout ran out (tonic says Cancelled):
            // the leader may have taken the write, so it is a timeout with
            // an unknown outcome, not a transport failure
            Ok(Err(status))
                if matches!(
                    status.code(),
                    tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
                ) && Instant::now() + Duration::from_millis(50) >= deadline =>
            {
                return Err(timed_out())
            }
            Ok(Err(status)) => return Err(from_status(&status, address)),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let result: CommandResult =
            decode_payload(reply.format, &reply.result, "forwarded write result")?;
        Ok((result, reply.log_index))
    }

    /// Writes through the leader, wherever it is, and waits until this node
    /// has applied the entry too (so a caller reads its own write here).
    pub(crate) async fn write(
        &self,
        command: Command,
    ) -> Result<(CommandResult, u64), ClusterError> {
        self.check_size(&command)?;
        let deadline = Instant::now() + self.settings.write_timeout();
        let mut last_err = ClusterError::NoLeader;
        let mut attempt = 0;
        loop {
            if attempt > 0 {
                // Give a changing leadership a heartbeat to settle.
                tokio::time::sleep(Duration::from_millis(self.settings.heartbeat_ms)).await;
                if Instant::now() >= deadline {
                    break;
                }
            }
            attempt += 1;
            let leader = match self.raft.current_leader().await {
                Some(leader) => Some(leader),
                None => self.leader_by(deadline).await,
            };
            let outcome = match leader {
                None => return Err(ClusterError::NoLeader),
                Some(leader) if leader == self.id => {
                    self.propose_as_leader(command.clone(), deadline).await
                }
                Some(leader) => match self.address_of(leader) {
                    None => Err(ClusterError::NoLeader),
                    Some(address) => self.forward(leader, &address, &command, deadline).await,
                },
            };
            match outcome {
                Ok((result, index)) => {
                    self.wait_applied(index, deadline).await?;
                    return Ok((result, index));
                }
                Err(e @ (ClusterError::NotLeader { .. } | ClusterError::NoLeader))
                    if attempt < WRITE_ATTEMPTS =>
                {
                    last_err = e
                }
                // The leader stopped answering (killed, cut off) before or
                // after it took the command. An idempotent command goes to
                // whoever leads next, until the deadline: the caller gets
                // an answer instead of an unknown outcome, and applying it
                // twice is applying it once. The followers elect a new
                // leader within an election timeout, so this loop is
                // bounded by the deadline, not by WRITE_ATTEMPTS.
                Err(e @ ClusterError::Transport { .. }) if command.is_idempotent() => {
                    tracing::debug!(error = %e, "leader unreachable mid-write; sending the idempotent command again");
                    last_err = e
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err)
    }

    /// Waits for an election in progress to produce a leader, for at most
    /// two election timeouts (or until `deadline`): a write that arrives
    /// while this node has voted but not yet heard from the winner would
    /// otherwise fail at once, although a leader is a few hundred ms away.
    async fn leader_by(&self, deadline: Instant) -> Option<NodeId> {
        let bound = Instant::now()
            + Duration::from_millis(2 * self.settings.election_timeout_max_ms.max(1));
        let mut rx = self.raft.metrics();
        let known = rx.wait_for(|m| m.current_leader.is_some());
        let leader = match tokio::time::timeout_at(deadline.min(bound), known).await {
            Ok(Ok(m)) => m.current_leader,
            _ => None,
        };
        leader
    }

    pub(super) async fn wait_applied(
        &self,
        index: u64,
        deadline: Instant,
    ) -> Result<(), ClusterError> {
        let mut rx = self.state.subscribe();
        let reached = rx.wait_for(|applied| applied.is_some_and(|a| a >= index));
        let outcome = tokio::time::timeout_at(deadline, reached)
            .await
            .map(|r| r.map(|_| ()));
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ClusterError::ShuttingDown),
            Err(_) => Err(ClusterError::Timeout {
                what: format!("applying committed entry {index} on node {}", self.id),
                after_ms: self.settings.write_timeout().as_millis() as u64,
            }),
        }
    }

    /// This node's view; with `linearizable` the leader first confirms its
    /// leadership with a quorum and waits until it applied the read index.
    pub(crate) async fn status(&self, linearizable: bool) -> Result<ClusterStatus, ClusterError> {
        let mut read_index = None;
        if linearizable {
            let budget = self.settings.request_timeout();
            match tokio::time::timeout(budget, self.raft.ensure_linearizable()).await {
                Err(_) => {
                    return Err(ClusterError::Timeout {
                        what: "confirming leadership".to_string(),
                        after_ms: budget.as_millis() as u64,
                    })
                }
                Ok(Ok(read_log_id)) => read_index = read_log_id.map(|l| l.index),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                    return Err(self.forward_error(f))
                }
                Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)))) => {
                    return Err(ClusterError::NoQuorum(format!(
                        "only {:?} answered in membership {}",
                        q.got, q.cluster
                    )))
                }
                Ok(Err(RaftError::Fatal(f))) => return Err(Self::fatal(f)),
            }
        }
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let learners: Vec<NodeId> = membership.learner_ids().collect();
        let leader_addr = m
            .current_leader
            .and_then(|l| membership.get_node(&l).map(|n| n.internal.clone()));
        let last_applied_index = m.last_applied.map(|l| l.index);
        let apply_lag = match (m.last_log_index, last_applied_index) {
            (Some(log), Some(applied)) => log.saturating_sub(applied),
            _ => 0,
        };
        let (summary, digest) = {
            let state = self.state.read();
            (state.summary(), state.digest())
        };
        Ok(ClusterStatus {
            id: self.id,
            role: role_name(m.state).to_string(),
            term: m.current_term,
            leader: m.current_leader,
            leader_addr,
            voters,
            learners,
            last_log_index: m.last_log_index,
            last_applied_index,
            apply_lag,
            state: summary,
            state_digest: digest,
            read_index,
            vote_fenced: self.fence.is_armed(),
        })
    }
}

fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "Leader",
        ServerState::Follower => "Follower",
        ServerState::Candidate => "Candidate",
        ServerState::Learner => "Learner",
        ServerState::Shutdown => "Shutdown",
    }
}
