//! Incoming cluster traffic: the tonic implementations of the `Raft` and
//! `Control` services of `proto/control.proto`.
//!
//! Owns: decoding requests, handing them to openraft or the node core, and
//! encoding replies; conversion of `ClusterStatus` to and from its protobuf
//! form. Vote and AppendEntries pass the vote fence (`vote_fence.rs` decides;
//! this only asks it). Must not touch: the listener and server life cycle
//! (`node/`) or outgoing requests (`network.rs`).

use std::sync::Arc;

use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::error::{to_status, ClusterError};
use super::network::{decode_payload, encode_payload, raft_bytes};
use super::node::{ClusterStatus, NodeCore};
use super::state::{Command, StateSummary};
use super::types::{NodeId, Raft, TypeConfig};
use super::vote_fence::VoteFence;
// the cluster speaks the control plane only
use crate::proto::control as proto;
use crate::proto::control::{PayloadFormat, RaftBytes};

/// Serves openraft's RPCs for this node.
pub struct RaftService {
    raft: Raft,
    fence: VoteFence,
}

impl RaftService {
    pub fn new(raft: Raft, fence: VoteFence) -> Self {
        Self { raft, fence }
    }
}

fn decode_request<T: serde::de::DeserializeOwned>(
    request: Request<RaftBytes>,
    what: &str,
) -> Result<T, Status> {
    let body = request.into_inner();
    decode_payload(body.format, &body.payload, what).map_err(|e| to_status(&e))
}

fn reply<T: Serialize>(value: &T) -> Result<Response<RaftBytes>, Status> {
    let payload = encode_payload(value).map_err(|e| to_status(&e))?;
    Ok(Response::new(raft_bytes(payload)))
}

#[tonic::async_trait]
impl proto::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftBytes>,
    ) -> Result<Response<RaftBytes>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> =
            decode_request(request, "AppendEntries request")?;
        let (vote, prev, commit) = (rpc.vote, rpc.prev_log_id, rpc.leader_commit);
        let last_sent = rpc.entries.last().map(|e| e.log_id);
        let result = self.raft.append_entries(rpc).await;
        if let Ok(resp) = &result {
            self.fence
                .observe_append(
                    &vote,
                    prev.as_ref(),
                    last_sent.as_ref(),
                    commit.as_ref(),
                    resp,
                )
                .await;
        }
        reply(&result)
    }

    async fn vote(&self, request: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        let rpc: VoteRequest<NodeId> = decode_request(request, "Vote request")?;
        if let Some(refused) = self.fence.check_vote(&rpc).await {
            // the same shape openraft answers with, so candidates of any
            // funnel version read it as a plain "no"
            let answer: Result<_, openraft::error::RaftError<NodeId>> = Ok(refused);
            return reply(&answer);
        }
        reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftBytes>,
    ) -> Result<Response<RaftBytes>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> =
            decode_request(request, "InstallSnapshot request")?;
        reply(&self.raft.install_snapshot(rpc).await)
    }
}

/// Serves control requests (forwarded writes, status) for this node.
pub struct ControlService {
    core: Arc<NodeCore>,
}

impl ControlService {
    pub(crate) fn new(core: Arc<NodeCore>) -> Self {
        Self { core }
    }
}

#[tonic::async_trait]
impl proto::control_server::Control for ControlService {
    async fn forward_write(
        &self,
        request: Request<proto::WriteRequest>,
    ) -> Result<Response<proto::WriteResponse>, Status> {
        let authorized =
            crate::auth::bearer_ok(crate::auth::presented(&request), self.core.admin_token());
        let body = request.into_inner();
        let command: Command = decode_payload(body.format, &body.command, "forwarded command")
            .map_err(|e| to_status(&e))?;
        if command.needs_admin() && !authorized {
            return Err(to_status(&ClusterError::Unauthenticated(format!(
                "a forwarded {} needs the admin token (authorization: Bearer TOKEN, api.admin_token)",
                command.kind()
            ))));
        }
        tracing::debug!(origin = body.origin_node, "forwarded write");
        let (result, log_index) = self
            .core
            .propose_as_leader(command, self.core.write_deadline())
            .await
            .map_err(|e| to_status(&e))?;
        let result = encode_payload(&result).map_err(|e| to_status(&e))?;
        Ok(Response::new(proto::WriteResponse {
            format: PayloadFormat::Postcard as i32,
            result,
            log_index,
        }))
    }

    async fn propose(
        &self,
        request: Request<proto::WriteRequest>,
    ) -> Result<Response<proto::WriteResponse>, Status> {
        // Propose is how operators (and joining nodes) change the cluster:
        // with a token configured, every proposal must carry it
        if !crate::auth::bearer_ok(crate::auth::presented(&request), self.core.admin_token()) {
            return Err(to_status(&ClusterError::Unauthenticated(
                "proposals need the admin token (authorization: Bearer TOKEN, api.admin_token); pass --token or FUNNEL_ADMIN_TOKEN".into(),
            )));
        }
        let body = request.into_inner();
        let command = decode_payload(body.format, &body.command, "proposed command")
            .map_err(|e| to_status(&e))?;
        tracing::debug!(origin = body.origin_node, "proposed command");
        let (result, log_index) = self.core.write(command).await.map_err(|e| to_status(&e))?;
        let result = encode_payload(&result).map_err(|e| to_status(&e))?;
        Ok(Response::new(proto::WriteResponse {
            format: PayloadFormat::Postcard as i32,
            result,
            log_index,
        }))
    }

    async fn status(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        let linearizable = request.into_inner().linearizable;
        let status = self
            .core
            .status(linearizable)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(status.into()))
    }

    async fn view(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::ViewResponse>, Status> {
        let linearizable = request.into_inner().linearizable;
        let status = self
            .core
            .status(linearizable)
            .await
            .map_err(|e| to_status(&e))?;
        let view = self.core.state_handle().read().view();
        let view = encode_payload(&view).map_err(|e| to_status(&e))?;
        Ok(Response::new(proto::ViewResponse {
            status: Some(status.into()),
            format: PayloadFormat::Postcard as i32,
            view,
        }))
    }
}

impl From<ClusterStatus> for proto::StatusResponse {
    fn from(s: ClusterStatus) -> Self {
        proto::StatusResponse {
            node_id: s.id,
            role: s.role,
            term: s.term,
            leader_id: s.leader,
            leader_addr: s.leader_addr.unwrap_or_default(),
            voters: s.voters,
            learners: s.learners,
            last_log_index: s.last_log_index,
            last_applied_index: s.last_applied_index,
            apply_lag: s.apply_lag,
            state: Some(proto::StateSummary {
                last_applied_index: s.state.last_applied_index,
                nodes: s.state.nodes,
                active_nodes: s.state.active_nodes,
                shards: s.state.shards,
                replication: s.state.replication,
                active_version: s.state.active_version,
                staged_version: s.state.staged_version,
                catalog_items: s.state.catalog_items,
                catalog_deleted: s.state.catalog_deleted,
                catalog_last_index: s.state.catalog_last_index,
                settings: s.state.settings,
                state_digest: s.state_digest,
                user_partitions: s.state.user_partitions,
                user_replication: s.state.user_replication,
            }),
            read_index: s.read_index,
            vote_fenced: s.vote_fenced,
        }
    }
}

impl TryFrom<proto::StatusResponse> for ClusterStatus {
    type Error = ClusterError;

    fn try_from(p: proto::StatusResponse) -> Result<Self, ClusterError> {
        let st = p.state.ok_or_else(|| {
            ClusterError::Decode("status response without a state summary".to_string())
        })?;
        Ok(ClusterStatus {
            id: p.node_id,
            role: p.role,
            term: p.term,
            leader: p.leader_id,
            leader_addr: (!p.leader_addr.is_empty()).then_some(p.leader_addr),
            voters: p.voters,
            learners: p.learners,
            last_log_index: p.last_log_index,
            last_applied_index: p.last_applied_index,
            apply_lag: p.apply_lag,
            state: StateSummary {
                last_applied_index: st.last_applied_index,
                nodes: st.nodes,
                active_nodes: st.active_nodes,
                shards: st.shards,
                replication: st.replication,
                active_version: st.active_version,
                staged_version: st.staged_version,
                catalog_items: st.catalog_items,
                catalog_deleted: st.catalog_deleted,
                catalog_last_index: st.catalog_last_index,
                settings: st.settings,
                user_partitions: st.user_partitions,
                user_replication: st.user_replication,
            },
            state_digest: st.state_digest,
            read_index: p.read_index,
            vote_fenced: p.vote_fenced,
        })
    }
}
