//! Step 2 of loading a user partition placed here (`events::partitions`
//! has the whole story): fetching every other origin's events of it, over
//! `ShardData.FetchPartitionEvents`, and answering a peer's such fetch.
//!
//! Each member is asked for the events of the loading partitions in its
//! own log since its serving mark. Origins that do not answer (down, or
//! removed from the cluster, whose events live on only in their copies'
//! logs) are covered by one complete copy of each partition, asked for the
//! events in its peers log whose origin is not among those that answered.
//! With a member unanswered and no copy answering, the load fails and the
//! next round tries again; with every member answered, a partition without
//! a reachable copy (its first placement) loads without one.
//!
//! Owns: the client and server sides of that RPC. Must not touch: how
//! fetched events are claimed and applied (`events`).

use super::events::PartitionLoad;
use super::held_users::PartitionSet;
use super::Node;
use crate::control::ClusterLink;
use crate::eventlog::LogEvent;
use crate::proto::data::shard_data_client::ShardDataClient;
use crate::proto::data::{ForwardEventsRequest, PartitionEventsRequest};
use crate::service::types::ServiceError;
use std::collections::BTreeSet;
use std::time::Duration;

/// How long one fetch for a load may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

impl Node {
    /// Fetches and ingests the other origins' events of `load`'s
    /// partitions (module doc). Answers how many were new here.
    pub(super) async fn fetch_partition_events(
        &self,
        link: &ClusterLink,
        load: &PartitionLoad,
        version: &str,
    ) -> Result<usize, ServiceError> {
        let me = link.id();
        let mut answered: BTreeSet<u64> = [me].into();
        let mut missing = Vec::new();
        let mut ingested = 0usize;
        let peers = link.peers();
        let fetches = peers.iter().map(|(peer, addr)| {
            let req = PartitionEventsRequest {
                model_version: version.to_string(),
                partition_count: load.count,
                partitions: load.partitions.clone(),
                forwarded: false,
                skip_origins: Vec::new(),
            };
            self.fetch_from(link, *peer, addr, req, Some(*peer))
        });
        let results = futures::future::join_all(fetches).await;
        for ((peer, _), r) in peers.iter().zip(results) {
            match r {
                Ok(n) => {
                    ingested += n;
                    answered.insert(*peer);
                }
                Err(e) => {
                    tracing::info!(origin = peer, error = %e, "an origin did not send its events of a loading partition; asking a copy");
                    missing.push(*peer);
                }
            }
        }
        for &p in &load.partitions {
            let copies = complete_copies(link, p);
            let mut covered = false;
            for (copy, addr) in &copies {
                let req = PartitionEventsRequest {
                    model_version: version.to_string(),
                    partition_count: load.count,
                    partitions: vec![p],
                    forwarded: true,
                    skip_origins: answered.iter().copied().collect(),
                };
                match self.fetch_from(link, *copy, addr, req, None).await {
                    Ok(n) => {
                        ingested += n;
                        covered = true;
                        break;
                    }
                    Err(e) => {
                        tracing::info!(copy, partition = p, error = %e, "a copy did not send the partition's events");
                    }
                }
            }
            if !covered && !missing.is_empty() {
                return Err(ServiceError::unavailable(format!(
                    "user partition {p} cannot load yet: nodes {missing:?} did not send their events of it and no other copy of it answered ({} tried); trying again next round",
                    copies.len()
                )));
            }
            if !covered && !copies.is_empty() {
                tracing::warn!(
                    partition = p,
                    "no copy sent the partition's events; loaded from the origins alone (events of removed nodes are missing)"
                );
            }
        }
        Ok(ingested)
    }

    /// One `FetchPartitionEvents` from `peer`, ingested batch by batch;
    /// `origin`: the only origin the answer may carry (None: any but this
    /// node).
    async fn fetch_from(
        &self,
        link: &ClusterLink,
        peer: u64,
        addr: &str,
        req: PartitionEventsRequest,
        origin: Option<u64>,
    ) -> Result<usize, ServiceError> {
        let ch = link
            .channel(peer, addr)
            .map_err(|e| ServiceError::unavailable(e.to_string()))?;
        let mut client = ShardDataClient::new(ch)
            .max_decoding_message_size(link.max_message_bytes())
            .max_encoding_message_size(link.max_message_bytes());
        let mut req = tonic::Request::new(req);
        req.set_timeout(FETCH_TIMEOUT);
        let fetch_error = |s: tonic::Status| {
            ServiceError::unavailable(format!(
                "FetchPartitionEvents from node {peer}: {}",
                s.message()
            ))
        };
        let mut stream = client
            .fetch_partition_events(req)
            .await
            .map_err(fetch_error)?
            .into_inner();
        let max_batch = self.config().api.max_batch.max(1);
        let me = link.id();
        let mut n = 0usize;
        while let Some(batch) = stream.message().await.map_err(fetch_error)? {
            let from = batch.origin_node;
            if from == me || origin.is_some_and(|o| o != from) {
                return Err(ServiceError::unavailable(format!(
                    "node {peer} sent events of origin {from}, which it was not asked for"
                )));
            }
            for chunk in batch.events.chunks(max_batch) {
                n += self
                    .inner
                    .events
                    .ingest_from_peer(from, batch.origin_log, chunk.to_vec(), &|| self.current())
                    .await? as usize;
            }
        }
        Ok(n)
    }

    /// A peer's `FetchPartitionEvents`, as the batches to stream back.
    pub async fn partition_events_for_peer(
        &self,
        req: PartitionEventsRequest,
    ) -> Result<Vec<ForwardEventsRequest>, ServiceError> {
        let parts = PartitionSet::new(req.partition_count, &req.partitions)
            .map_err(ServiceError::InvalidArgument)?;
        let mark = self.mark_of(&req.model_version, "events start in its logs")?;
        if req.forwarded {
            if let Some((count, _)) = self.inner.events.pull_set() {
                if count != req.partition_count {
                    return Err(ServiceError::failed_precondition(format!(
                        "this cluster has {count} user partitions, not {}",
                        req.partition_count
                    )));
                }
            }
        }
        let events = self
            .inner
            .events
            .partition_events(
                &mark,
                parts,
                &req.partitions,
                req.forwarded,
                req.skip_origins.into_iter().collect(),
            )
            .await?;
        let me = self.inner.config.node.id;
        let my_log = self.event_log_id();
        Ok(batches(events, me, my_log))
    }
}

/// `events` as stream messages of at most `catchup::FETCH_BATCH`, one
/// origin (and origin log) per message: this node's own (`me`, `my_log`)
/// for events without an origin, else each event's.
fn batches(events: Vec<LogEvent>, me: u64, my_log: u64) -> Vec<ForwardEventsRequest> {
    let mut out: Vec<ForwardEventsRequest> = Vec::new();
    for e in events {
        let (node, log, seq) = match e.origin {
            Some(o) => (o.node, o.log, o.seq),
            None => (me, my_log, e.seq),
        };
        let mut wire = super::catchup::to_wire(&e);
        wire.origin_seq = seq;
        let fits = out.last().is_some_and(|b| {
            b.origin_node == node
                && b.origin_log == log
                && b.events.len() < super::catchup::FETCH_BATCH
        });
        if !fits {
            out.push(ForwardEventsRequest {
                origin_node: node,
                origin_log: log,
                events: Vec::new(),
                through_seq: 0,
            });
        }
        if let Some(b) = out.last_mut() {
            b.events.push(wire);
        }
    }
    out
}

/// The other nodes whose copy of user partition `p` is complete (Active or
/// Draining in the map), with their internal addresses.
fn complete_copies(link: &ClusterLink, p: u32) -> Vec<(u64, String)> {
    use crate::cluster::ReplicaState;
    let me = link.id();
    let st = link.raft.state();
    let st = st.read();
    let Some(map) = st.partition_map.as_ref() else {
        return Vec::new();
    };
    map.replicas
        .get(p as usize)
        .into_iter()
        .flatten()
        .filter(|r| {
            r.node != me && matches!(r.state, ReplicaState::Active | ReplicaState::Draining)
        })
        .filter_map(|r| st.nodes.get(&r.node).map(|n| (r.node, n.internal.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, origin: Option<(u64, u64, u64)>) -> LogEvent {
        let mut e = LogEvent::new(1, "u", "i", crate::dataset::EventKind::Click, 1.0);
        e.seq = seq;
        e.origin = origin.map(|(node, log, seq)| crate::eventlog::EventOrigin { node, log, seq });
        e
    }

    #[test]
    fn batches_carry_one_origin_each_with_the_origins_seqs() {
        let events = vec![
            event(4, None),
            event(5, None),
            event(9, Some((2, 20, 7))),
            event(10, Some((3, 30, 1))),
            event(11, Some((3, 30, 2))),
        ];
        let b = batches(events, 1, 10);
        let shape: Vec<(u64, u64, Vec<u64>)> = b
            .iter()
            .map(|b| {
                (
                    b.origin_node,
                    b.origin_log,
                    b.events.iter().map(|e| e.origin_seq).collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![(1, 10, vec![4, 5]), (2, 20, vec![7]), (3, 30, vec![1, 2])]
        );
        let many: Vec<LogEvent> = (1..=super::super::catchup::FETCH_BATCH as u64 + 1)
            .map(|s| event(s, None))
            .collect();
        assert_eq!(batches(many, 1, 10).len(), 2);
    }
}
