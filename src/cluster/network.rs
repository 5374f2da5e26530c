//! Outgoing cluster traffic: gRPC channels to peers, the payload codec, and
//! openraft's `RaftNetworkFactory` / `RaftNetwork` over the `Raft` service of
//! `proto/control.proto`.
//!
//! Owns: the channel cache (one lazily connected HTTP/2 channel per peer
//! address, shared by Raft replication and control forwarding), message size
//! limits on every client, per-RPC timeouts and the mapping of transport
//! failures to openraft's error kinds. Channels use TLS with this node's
//! identity when `[cluster.tls]` is set (`tls`). Every client it hands out is on a
//! `PeerChannel`, which applies the `FaultInjector`'s rules. Must not
//! touch: the server side (`service.rs`) or node life cycle (`node/`).

// openraft's RPCError is large by design and is the return type of every
// call here; boxing it would only add conversions.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, RPCTypes};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use super::error::ClusterError;
use super::fault::FaultInjector;
use super::log_reversion::MatchedLogs;
use super::peer_channel::PeerChannel;
use super::state::NodeInfo;
use super::types::{NodeId, TypeConfig};
use crate::proto::control::control_client::ControlClient;
use crate::proto::control::raft_client::RaftClient;
use crate::proto::control::{PayloadFormat, RaftBytes};
use crate::tls::{internal_endpoint, NodeTls};

/// Encodes a value for a cluster message payload (postcard).
pub fn encode_payload<T: Serialize>(value: &T) -> Result<Vec<u8>, ClusterError> {
    postcard::to_stdvec(value)
        .map_err(|e| ClusterError::Decode(format!("cannot encode payload: {e}")))
}

/// Decodes a payload of the given wire format.
pub fn decode_payload<T: DeserializeOwned>(
    format: i32,
    bytes: &[u8],
    what: &str,
) -> Result<T, ClusterError> {
    if format != PayloadFormat::Postcard as i32 {
        return Err(ClusterError::Decode(format!(
            "{what} uses payload format {format}; this node understands only {} (postcard)",
            PayloadFormat::Postcard as i32
        )));
    }
    postcard::from_bytes(bytes)
        .map_err(|e| ClusterError::Decode(format!("{what} cannot be decoded: {e}")))
}

/// Wraps an encoded value as `RaftBytes`.
pub fn raft_bytes(payload: Vec<u8>) -> RaftBytes {
    RaftBytes {
        format: PayloadFormat::Postcard as i32,
        payload,
    }
}

/// Lazily connected gRPC channels to peers, keyed by address, with the
/// connect timeout, message limits and this node's fault rules applied to
/// every client.
#[derive(Clone)]
pub struct Channels {
    cache: Arc<Mutex<HashMap<String, Channel>>>,
    connect_timeout: Duration,
    max_message_bytes: usize,
    self_id: NodeId,
    faults: FaultInjector,
    /// mTLS with this node's identity; `None`: plaintext.
    tls: Option<NodeTls>,
}

impl Channels {
    pub fn new(
        self_id: NodeId,
        faults: FaultInjector,
        connect_timeout: Duration,
        max_message_bytes: usize,
        tls: Option<NodeTls>,
    ) -> Self {
        Self {
            cache: Arc::new(Mutex::new(HashMap::new())),
            connect_timeout,
            max_message_bytes,
            self_id,
            faults,
            tls,
        }
    }

    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// The channel to `addr` (host:port). Connecting happens on first use
    /// and again after a failure, inside the request, so a dead peer costs
    /// one connect timeout per request rather than blocking here.
    pub fn channel(&self, addr: &str) -> Result<Channel, ClusterError> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = cache.get(addr) {
            return Ok(ch.clone());
        }
        let endpoint = internal_endpoint(addr, self.tls.as_ref(), self.connect_timeout)
            .map_err(|e| ClusterError::Transport {
                target: addr.to_string(),
                reason: e.to_string(),
            })?
            .tcp_nodelay(true);
        let ch = endpoint.connect_lazy();
        cache.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// The channel to node `target` at `addr`, under the fault rules
    /// (`None`: a peer outside the membership, never faulted).
    pub fn peer(&self, target: Option<NodeId>, addr: &str) -> Result<PeerChannel, ClusterError> {
        Ok(PeerChannel::new(
            self.channel(addr)?,
            self.faults.clone(),
            self.self_id,
            target,
        ))
    }

    pub fn raft_client(
        &self,
        target: NodeId,
        addr: &str,
    ) -> Result<RaftClient<PeerChannel>, ClusterError> {
        Ok(RaftClient::new(self.peer(Some(target), addr)?)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }

    pub fn control_client(
        &self,
        target: Option<NodeId>,
        addr: &str,
    ) -> Result<ControlClient<PeerChannel>, ClusterError> {
        Ok(ControlClient::new(self.peer(target, addr)?)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }
}

/// Creates one `PeerClient` per Raft target.
pub struct NetworkFactory {
    self_id: NodeId,
    channels: Channels,
    matched: MatchedLogs,
}

impl NetworkFactory {
    pub fn new(self_id: NodeId, channels: Channels) -> Self {
        Self {
            self_id,
            channels,
            matched: MatchedLogs::default(),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerClient {
        PeerClient {
            self_id: self.self_id,
            target,
            node: node.clone(),
            channels: self.channels.clone(),
            matched: self.matched.clone(),
        }
    }
}

/// Raft RPCs to one peer, at the address its membership entry gives.
pub struct PeerClient {
    self_id: NodeId,
    target: NodeId,
    node: NodeInfo,
    channels: Channels,
    matched: MatchedLogs,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>>;

impl PeerClient {
    /// Sends one encoded Raft request and decodes the peer's
    /// `Result<Resp, RaftError<E>>`.
    async fn send<Resp, E>(
        &self,
        kind: RPCTypes,
        payload: Vec<u8>,
        ttl: Duration,
    ) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        // a cut link answers Unavailable (-> Unreachable), a dropped request
        // Unknown (-> a network error), see `peer_channel`
        let mut client = self
            .channels
            .raft_client(self.target, &self.node.internal)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut request = tonic::Request::new(raft_bytes(payload));
        request.set_timeout(ttl);
        let call = async move {
            match kind {
                RPCTypes::AppendEntries => client.append_entries(request).await,
                RPCTypes::Vote => client.vote(request).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(request).await,
            }
        };
        let reply = match tokio::time::timeout(ttl, call).await {
            Err(_) => return Err(self.timeout(kind, ttl)),
            Ok(Err(status)) => return Err(self.status_error(kind, ttl, status)),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let decoded: Result<Resp, RaftError<NodeId, E>> = decode_payload(
            reply.format,
            &reply.payload,
            &format!("{kind} reply from node {}", self.target),
        )
        .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }

    fn timeout<E: std::error::Error>(
        &self,
        action: RPCTypes,
        ttl: Duration,
    ) -> RPCError<NodeId, NodeInfo, RaftError<NodeId, E>> {
        RPCError::Timeout(Timeout {
            action,
            id: self.self_id,
            target: self.target,
            timeout: ttl,
        })
    }

    /// Connection failures become `Unreachable` (openraft backs off),
    /// expired deadlines `Timeout`, anything else a retryable network error.
    fn status_error<E: std::error::Error>(
        &self,
        action: RPCTypes,
        ttl: Duration,
        status: tonic::Status,
    ) -> RPCError<NodeId, NodeInfo, RaftError<NodeId, E>> {
        let reason = AnyError::error(format!(
            "{action} to node {} at {}: {:?}: {}",
            self.target,
            self.node.internal,
            status.code(),
            status.message()
        ));
        match status.code() {
            tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::from(reason)),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => self.timeout(action, ttl),
            _ => RPCError::Network(NetworkError::from(reason)),
        }
    }

    fn encode<T: Serialize, E: std::error::Error>(&self, value: &T) -> RpcResult<Vec<u8>, E> {
        encode_payload(value).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        let payload = self.encode(&rpc)?;
        if payload.len() > self.channels.max_message_bytes() && rpc.entries.len() > 1 {
            // openraft retries with fewer entries; a single entry always fits
            // because writes larger than half the limit are refused up front.
            let fewer = (rpc.entries.len() as u64 / 2).max(1);
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fewer),
            ));
        }
        let vote = rpc.vote;
        let prev = rpc.prev_log_id.map(|l| l.index);
        let last = rpc.entries.last().map(|e| e.log_id.index).or(prev);
        let resp: AppendEntriesResponse<NodeId> = self
            .send(RPCTypes::AppendEntries, payload, option.hard_ttl())
            .await?;
        match &resp {
            AppendEntriesResponse::Success => {
                if let Some(last) = last {
                    self.matched.matched(self.target, &vote, last);
                }
            }
            AppendEntriesResponse::PartialSuccess(Some(l)) => {
                self.matched.matched(self.target, &vote, l.index)
            }
            AppendEntriesResponse::Conflict
                if prev.is_some_and(|p| self.matched.is_reversion(self.target, &vote, p)) =>
            {
                // see `log_reversion`: never hand openraft a log that went
                // backwards; the node is out until an operator replaces it
                let msg = format!(
                    "node {} at {} lost Raft log entries it had acknowledged (its data directory \
                     was recreated?): it is treated as unreachable; remove it with `funnel admin \
                     remove-node {}` and add the machine back under a new id",
                    self.target, self.node.internal, self.target
                );
                tracing::error!(node_id = self.self_id, target = self.target, "{msg}");
                return Err(RPCError::Unreachable(Unreachable::from(AnyError::error(
                    msg,
                ))));
            }
            _ => {}
        }
        Ok(resp)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let payload = self.encode(&rpc)?;
        self.send(RPCTypes::InstallSnapshot, payload, option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        let payload = self.encode(&rpc)?;
        self.send(RPCTypes::Vote, payload, option.hard_ttl()).await
    }
}
