//! From the cluster's shard map to one client per shard: for each shard,
//! the copies a request may ask (this node's own unless it is draining;
//! other members' only once active) gathered in a `ReplicaSet`.
//!
//! Plain code over the map; the caller says how to reach a copy (`local`,
//! `remote`), so the rule is tested without actors or a network. Must not
//! touch: the map itself (the cluster's Raft state decides placement).

use super::client::ShardClient;
use super::health::HealthBook;
use super::set::{ReplicaSet, ReplicaTarget};
use crate::cluster::{NodeId, NodeInfo, ReplicaState, ShardMap};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Why a cluster's shards cannot be routed to yet.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RoutingError {
    #[error("the cluster has no shard map yet")]
    NoShardMap,
    #[error(
        "the bundle has {bundle} shards but the cluster has {cluster}; train with --shards {cluster}"
    )]
    ShardCount { bundle: u32, cluster: u32 },
}

/// The map, if the served bundle fits it.
pub fn fitting_map(map: Option<&ShardMap>, bundle_shards: u32) -> Result<&ShardMap, RoutingError> {
    let map = map.ok_or(RoutingError::NoShardMap)?;
    if map.shards != bundle_shards {
        return Err(RoutingError::ShardCount {
            bundle: bundle_shards,
            cluster: map.shards,
        });
    }
    Ok(map)
}

/// How to reach another member's copy of a shard: (shard, node, internal
/// address) to its client, or why the node cannot be reached.
pub type ConnectRemote<'a> = &'a dyn Fn(u32, NodeId, &str) -> Result<Arc<dyn ShardClient>, String>;

/// One replica set per shard of `map`, as node `me` queries them. `local`
/// gives this node's copy of a shard (None: not loaded here); `remote`
/// the client of another member's copy at its internal address, or why it
/// cannot be reached (that copy is left out and logged).
pub fn replica_sets(
    map: &ShardMap,
    me: NodeId,
    nodes: &BTreeMap<NodeId, NodeInfo>,
    local: &dyn Fn(u32) -> Option<Arc<dyn ShardClient>>,
    remote: ConnectRemote<'_>,
    book: &HealthBook,
) -> Vec<ReplicaSet> {
    (0..map.shards)
        .map(|s| {
            let mut targets = Vec::new();
            for r in map.replicas_of(s).unwrap_or_default() {
                if r.node == me {
                    // a draining copy answers what it was sent, nothing new
                    if r.state == ReplicaState::Draining {
                        continue;
                    }
                    if let Some(client) = local(s) {
                        targets.push(ReplicaTarget {
                            node: r.node,
                            local: true,
                            client,
                        });
                    }
                    continue;
                }
                // Loading copies are not ready and Draining ones are about
                // to go: neither gets new queries
                if r.state != ReplicaState::Active {
                    continue;
                }
                let Some(info) = nodes.get(&r.node) else {
                    continue;
                };
                match remote(s, r.node, &info.internal) {
                    Ok(client) => targets.push(ReplicaTarget {
                        node: r.node,
                        local: false,
                        client,
                    }),
                    Err(e) => {
                        tracing::warn!(node = r.node, shard_id = s, error = %e, "cannot reach a replica")
                    }
                }
            }
            ReplicaSet::new(s, targets, book.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Replica;
    use crate::routing::client::{CallContext, SearchSpec, ShardCallError, VectorsResult};
    use crate::shard::SearchResult;
    use futures::future::BoxFuture;

    /// A copy that only says which node it stands for.
    struct Stub(u32);

    impl ShardClient for Stub {
        fn shard(&self) -> u32 {
            self.0
        }
        fn search(
            &self,
            _: SearchSpec,
            _: CallContext,
        ) -> BoxFuture<'static, Result<SearchResult, ShardCallError>> {
            let shard = self.0;
            Box::pin(async move { Err(ShardCallError::NoLiveReplica { shard }) })
        }
        fn vectors(&self, _: Arc<[u64]>, _: CallContext) -> BoxFuture<'static, VectorsResult> {
            let shard = self.0;
            Box::pin(async move { Err(ShardCallError::NoLiveReplica { shard }) })
        }
    }

    fn replica(node: NodeId, state: ReplicaState) -> Replica {
        Replica { node, state }
    }

    #[test]
    fn each_shard_asks_its_own_copy_unless_draining_and_others_only_when_active() {
        use ReplicaState::*;
        let map = ShardMap {
            shards: 3,
            replication: 2,
            replicas: vec![
                vec![replica(1, Active), replica(2, Active), replica(3, Loading)],
                vec![
                    replica(1, Draining),
                    replica(2, Active),
                    replica(3, Draining),
                ],
                vec![replica(1, Loading), replica(4, Active), replica(3, Active)],
            ],
        };
        let nodes: BTreeMap<NodeId, NodeInfo> = [1, 2, 3]
            .into_iter()
            .map(|id| (id, NodeInfo::new(id, format!("10.0.0.{id}:7000"), "", "")))
            .collect();
        // node 1 holds shards 0 and 1 (2 is still loading: not held yet);
        // node 3 cannot be reached; node 4 is not a member any more
        let local = |s: u32| (s < 2).then(|| Arc::new(Stub(s)) as Arc<dyn ShardClient>);
        let remote = |s: u32, node: NodeId, addr: &str| {
            assert_eq!(addr, format!("10.0.0.{node}:7000"));
            if node == 3 {
                Err("connection refused".to_string())
            } else {
                Ok(Arc::new(Stub(s)) as Arc<dyn ShardClient>)
            }
        };
        let sets = replica_sets(&map, 1, &nodes, &local, &remote, &HealthBook::default());
        let asked: Vec<Vec<(NodeId, bool)>> = sets
            .iter()
            .map(|set| set.replicas().iter().map(|t| (t.node, t.local)).collect())
            .collect();
        assert_eq!(
            asked,
            vec![vec![(1, true), (2, false)], vec![(2, false)], vec![]]
        );
    }

    #[test]
    fn a_bundle_that_does_not_fit_the_map_is_refused_with_the_fix() {
        let map = ShardMap {
            shards: 4,
            replication: 1,
            replicas: vec![Vec::new(); 4],
        };
        assert_eq!(fitting_map(None, 4).unwrap_err(), RoutingError::NoShardMap);
        let e = fitting_map(Some(&map), 12).unwrap_err();
        assert!(e.to_string().contains("train with --shards 4"), "{e}");
        assert_eq!(fitting_map(Some(&map), 4).unwrap().shards, 4);
    }
}
