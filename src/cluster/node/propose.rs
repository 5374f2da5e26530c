//! `propose_via`: proposing a command through any member over
//! Control.Propose, for callers outside the Raft group (the admin tool, a
//! node asking to join). Must not touch: a running node's state.

use std::time::Duration;

use crate::cluster::error::{from_status, ClusterError};
use crate::cluster::network::{decode_payload, encode_payload};
use crate::cluster::state::{Command, CommandResult};
use crate::cluster::types::NodeId;
use crate::proto::control as proto;
use crate::proto::control::PayloadFormat;
use crate::tls::{internal_endpoint, NodeTls};

/// Proposes `command` through the node at `address` (any member: it
/// forwards to the leader) over Control.Propose, for callers outside the
/// Raft group (the admin tool, a node asking to join). `origin` names the
/// caller in the receiver's log (0 = an operator); `tls` is the caller's
/// identity when the cluster runs mTLS. A refused command is
/// `Err(ClusterError::Rejected)`.
pub async fn propose_via(
    address: &str,
    command: &Command,
    origin: NodeId,
    token: &str,
    tls: Option<&NodeTls>,
    timeout: Duration,
) -> Result<(CommandResult, u64), ClusterError> {
    let transport = |reason: String| ClusterError::Transport {
        target: address.to_string(),
        reason,
    };
    let channel = internal_endpoint(address, tls, Duration::from_secs(2))
        .map_err(|e| transport(e.to_string()))?
        .connect()
        .await
        .map_err(|e| transport(crate::tls::error_chain(&e)))?;
    let mut client = proto::control_client::ControlClient::new(channel);
    let mut request = tonic::Request::new(proto::WriteRequest {
        format: PayloadFormat::Postcard as i32,
        command: encode_payload(command)?,
        origin_node: origin,
    });
    request.set_timeout(timeout);
    crate::auth::attach(&mut request, token)
        .map_err(|e| ClusterError::Unauthenticated(e.to_string()))?;
    let reply = match tokio::time::timeout(timeout, client.propose(request)).await {
        Err(_) => {
            return Err(ClusterError::Timeout {
                what: format!("proposing {} through {address}", command.kind()),
                after_ms: timeout.as_millis() as u64,
            })
        }
        Ok(Err(status)) => return Err(from_status(&status, address)),
        Ok(Ok(reply)) => reply.into_inner(),
    };
    let result: CommandResult = decode_payload(reply.format, &reply.result, "proposal result")?;
    match result {
        CommandResult::Rejected(reason) => Err(ClusterError::Rejected(reason)),
        ok => Ok((ok, reply.log_index)),
    }
}
