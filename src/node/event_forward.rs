//! Forwarding events this node accepted to the other copies of their user
//! partitions (`event_ack::recipients`; the other members get them by
//! catch-up, `catchup`) and waiting for the acknowledgement `events.ack`
//! asks for (`event_ack` decides from
//! the answers; this file makes the calls and feeds the health book).
//!
//! Owns: `forward_events` and how one forward's outcome is classified.
//! Must not touch: the logs or the user states (`events`), or the rule of
//! what an acknowledgement needs (`event_ack`).

use super::event_ack::{self, AckPlan, Verdict};
use crate::config::EventAck;
use crate::control::ClusterLink;
use crate::service::types::ServiceError;
use crate::telemetry::metrics::metrics;
use std::sync::Arc;

/// How long a forward to a node the acknowledgement does not wait for
/// may take (it is durable here already, and catch-up covers a miss).
const FORWARD_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// How long a forward of a batch can run when the acknowledgement waits
/// at most `timeout`.
pub(super) fn longest_forward(timeout: std::time::Duration) -> std::time::Duration {
    timeout.max(FORWARD_WAIT)
}

/// Sends events this node accepted to the other copies of their users'
/// partitions, in parallel,
/// and answers once `plan` says they may be acknowledged under `mode`
/// (`event_ack::verdict`), waiting at most `timeout`; the forwards still
/// running finish in the background (each bounded by the larger of
/// `timeout` and `FORWARD_WAIT`). A member that does not take them is
/// logged, counted and recorded in the health book (enough failures in a
/// row and the data plane counts it down, so an `all` batch stops waiting
/// for it); the events stay durable in this node's log, from which a
/// member catches up. `node_log_id` identifies that log
/// (`catchup::log_id`).
pub(super) async fn forward_events(
    link: &Arc<ClusterLink>,
    events: &[crate::eventlog::LogEvent],
    node_log_id: u64,
    mode: EventAck,
    timeout: std::time::Duration,
) -> Result<(), ServiceError> {
    use crate::proto::data::shard_data_client::ShardDataClient;
    use crate::proto::data::ForwardEventsRequest;
    use std::collections::BTreeSet;
    if events.is_empty() {
        return Ok(());
    }
    let me = link.id();
    let peers = link.peers();
    let (plan, recipients) = {
        let st = link.raft.state();
        let st = st.read();
        let mut members: Vec<u64> = peers.iter().map(|(id, _)| *id).collect();
        members.push(me);
        let users = || events.iter().map(|e| e.user_id.as_str());
        let map = st.partition_map.as_ref();
        (
            AckPlan::new(map, &members, users()),
            event_ack::recipients(map, &members, me, users()),
        )
    };
    let (tx, mut answers) = tokio::sync::mpsc::unbounded_channel();
    let per_call = longest_forward(timeout);
    for (id, addr) in peers {
        // a node without a copy of these users gets them by catch-up
        let Some(which) = recipients.get(&id) else {
            continue;
        };
        let body = ForwardEventsRequest {
            origin_node: me,
            origin_log: node_log_id,
            events: which
                .iter()
                .map(|&i| super::catchup::to_wire(&events[i]))
                .collect(),
            through_seq: 0,
        };
        let (link, tx) = (link.clone(), tx.clone());
        tokio::spawn(async move {
            let outcome = match link.channel(id, &addr) {
                Err(e) => Forwarded::Unreachable(e.to_string()),
                Ok(ch) => {
                    let mut client = ShardDataClient::new(ch)
                        .max_decoding_message_size(link.max_message_bytes())
                        .max_encoding_message_size(link.max_message_bytes());
                    let mut req = tonic::Request::new(body);
                    req.set_timeout(per_call);
                    match tokio::time::timeout(per_call, client.forward_events(req)).await {
                        Ok(Ok(_)) => Forwarded::Taken,
                        Ok(Err(s)) if is_connect_failure(&s) => {
                            Forwarded::Unreachable(s.message().to_string())
                        }
                        Ok(Err(s)) => Forwarded::Failed(s.message().to_string()),
                        Err(_) => Forwarded::Failed(format!(
                            "no answer within {} ms",
                            per_call.as_millis()
                        )),
                    }
                }
            };
            match &outcome {
                // not `record_success`: a forward's time includes the
                // peer's fsync, which says nothing about its searches
                Forwarded::Taken => link.book.update(id, |h| h.answered_probe()),
                Forwarded::Unreachable(e) | Forwarded::Failed(e) => {
                    tracing::warn!(node = id, error = %e, "a peer did not take forwarded events");
                    metrics()
                        .errors
                        .with_label_values(&["forward_events"])
                        .inc();
                    link.book
                        .update(id, |h| h.record_failure(std::time::Instant::now()));
                }
            }
            let _ = tx.send((id, outcome));
        });
    }
    drop(tx);
    let deadline = tokio::time::Instant::now() + timeout;
    let (mut confirmed, mut failed) = (BTreeSet::new(), BTreeSet::new());
    // nothing listens there (the process is gone): down for this batch,
    // as it will be in the book after a few more failures
    let mut unreachable = BTreeSet::new();
    let mut late = false;
    loop {
        let mut down: BTreeSet<u64> = link
            .book
            .down_nodes(std::time::Instant::now())
            .into_iter()
            .collect();
        down.extend(unreachable.iter().copied());
        match event_ack::verdict(mode, &plan, me, &confirmed, &failed, &down, late) {
            Verdict::Ack => return Ok(()),
            Verdict::Refuse(why) => {
                return Err(ServiceError::unavailable(format!(
                    "the events are logged on node {me} but not confirmed as events.ack = {} \
                     asks: {why} (waited up to {} ms). Copies that missed them catch up from \
                     this node's log once they answer, so sending them again may count them \
                     twice; events.ack = \"one\" acknowledges on the first copy that has them",
                    mode.as_str(),
                    timeout.as_millis()
                )))
            }
            Verdict::Wait => {}
        }
        tokio::select! {
            answer = answers.recv() => match answer {
                Some((id, Forwarded::Taken)) => { confirmed.insert(id); }
                Some((id, Forwarded::Unreachable(_))) => { unreachable.insert(id); }
                Some((id, Forwarded::Failed(_))) => { failed.insert(id); }
                // every forward answered: what is missing is missing
                None => late = true,
            },
            _ = tokio::time::sleep_until(deadline) => late = true,
        }
    }
}

/// How one forward of a batch ended.
enum Forwarded {
    /// The peer logged and applied the events.
    Taken,
    /// No connection could be made: nothing listens there.
    Unreachable(String),
    /// The peer was reached but did not take them in time (or refused).
    Failed(String),
}

/// Whether a call failed before anything reached the peer (tonic reports
/// a refused or impossible connection as Unavailable "tcp connect error").
fn is_connect_failure(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::Unavailable && s.message().contains("connect")
}
