//! This node seen from the other nodes, and the other nodes seen from it:
//! searches and digests of this node's shard copies answered for another
//! node's coordinator (in the version that coordinator serves: the served
//! one, or a prepared or retired one still held), and the shard clients a
//! version is served through (the local actor, or in a cluster the shard's
//! replica set built by `routing::replica_sets` from the shard map).
//!
//! Owns: no state of its own; which copy answers a peer's search and the
//! refusals that send the peer to another replica.
//! Must not touch: which copy of a shard a request asks (`routing`), the
//! shard map (`cluster::state`), or loading and installing versions
//! (`model_host`; `rebuild_shard_clients` only replaces the clients of the
//! served version).

use super::model_host::ModelHost;
use crate::catalog::Catalog;
use crate::control::ClusterLink;
use crate::coordinator::Serving;
use crate::model::ServingModel;
use crate::routing::{
    fitting_map, replica_sets, CallContext, LocalShard, RemoteShard, SearchSpec, ShardClient,
};
use crate::service::types::ServiceError;
use crate::shard::{Digest, ShardHandle, Stats};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

/// Searches shard `shard` of this node for node `me`'s peer; see
/// `Node::local_shard_search`. `serving` is the version served here.
pub(super) async fn search(
    host: &ModelHost,
    me: u64,
    serving: &Serving,
    shard: u32,
    model_version: &str,
    spec: SearchSpec,
) -> Result<(crate::shard::SearchResult, String), ServiceError> {
    let (version, catalog, actors) =
        if model_version.is_empty() || model_version == serving.model.version {
            (
                serving.model.version.clone(),
                serving.catalog.clone(),
                host.shard_actors(),
            )
        } else if let Some(s) = host.standby(model_version) {
            (s.version.clone(), s.catalog.clone(), s.actors.clone())
        } else {
            return Err(ServiceError::failed_precondition(format!(
                "node {me} serves model {}, not {model_version}",
                serving.model.version
            )));
        };
    let Some(handle) = actors.get(&shard).cloned() else {
        return Err(ServiceError::failed_precondition(format!(
            "node {me} does not hold shard {shard} of model {version}"
        )));
    };
    let result = LocalShard {
        shard,
        handle,
        catalog,
    }
    .search(spec, CallContext::default())
    .await
    .map_err(ServiceError::internal_cause)?;
    Ok((result, version))
}

/// The digest of this node's copy of `shard`; see
/// `Node::local_shard_digest`.
pub(super) async fn digest(
    host: &ModelHost,
    cluster: &OnceLock<Arc<ClusterLink>>,
    me: u64,
    serving: &Serving,
    shard: u32,
) -> Result<crate::proto::data::ShardDigestResponse, ServiceError> {
    let Some(addr) = host.shard_actors().get(&shard).cloned() else {
        return Err(ServiceError::failed_precondition(format!(
            "node {me} does not hold shard {shard}"
        )));
    };
    let unavailable = |e: actix::MailboxError| {
        ServiceError::unavailable_from(format!("shard {shard} unavailable"), e)
    };
    let digest = addr.send(Digest).await.map_err(unavailable)?;
    let stats = addr.send(Stats).await.map_err(unavailable)?;
    Ok(crate::proto::data::ShardDigestResponse {
        shard,
        node_id: me,
        model_version: serving.model.version.clone(),
        items: stats.items as u64,
        digest,
        applied_index: cluster.get().map_or(0, |l| l.catalog_applied()),
    })
}

/// One client per shard: the local actor on a single node; in a
/// cluster, the shard's queryable replicas (local actor or remote node).
pub(super) fn shard_clients(
    cluster: Option<&Arc<ClusterLink>>,
    model: &ServingModel,
    catalog: &Arc<Catalog>,
    actors: &BTreeMap<u32, ShardHandle>,
) -> Result<Vec<Arc<dyn ShardClient>>, ServiceError> {
    let local = |s: u32, a: &ShardHandle| LocalShard {
        shard: s,
        handle: a.clone(),
        catalog: catalog.clone(),
    };
    let Some(link) = cluster else {
        return Ok(actors
            .iter()
            .map(|(&s, a)| Arc::new(local(s, a)) as Arc<dyn ShardClient>)
            .collect());
    };
    let st = link.raft.state();
    let st = st.read();
    let map = fitting_map(st.shard_map.as_ref(), model.shard_count)?;
    let version: Arc<str> = Arc::from(model.version.as_str());
    let own = |s: u32| {
        actors
            .get(&s)
            .map(|a| Arc::new(local(s, a)) as Arc<dyn ShardClient>)
    };
    let remote = |s: u32, node: u64, addr: &str| {
        let ch = link.channel(node, addr).map_err(|e| e.to_string())?;
        Ok(Arc::new(RemoteShard::new(
            s,
            node,
            version.clone(),
            ch,
            link.max_message_bytes(),
            addr,
            link.tls().cloned(),
        )) as Arc<dyn ShardClient>)
    };
    let clients = replica_sets(map, link.id(), &st.nodes, &own, &remote, &link.book)
        .into_iter()
        .map(|set| Arc::new(set) as Arc<dyn ShardClient>)
        .collect();
    Ok(clients)
}

/// Rebuilds the shard clients of the served version `cur` after the
/// shard map changed without changing what this node hosts.
pub(super) fn rebuild_shard_clients(
    host: &ModelHost,
    cluster: Option<&Arc<ClusterLink>>,
    cur: &Serving,
) -> Result<(), ServiceError> {
    let shards = shard_clients(cluster, &cur.model, &cur.catalog, &host.shard_actors())?;
    let next = Arc::new(Serving {
        model: cur.model.clone(),
        catalog: cur.catalog.clone(),
        shards,
    });
    host.replace_serving(next);
    Ok(())
}

/// Routing refusals as the service reports them.
impl From<crate::routing::RoutingError> for ServiceError {
    fn from(e: crate::routing::RoutingError) -> Self {
        use crate::routing::RoutingError::*;
        match e {
            NoShardMap => ServiceError::unavailable(e.to_string()),
            ShardCount { .. } => ServiceError::failed_precondition(e.to_string()),
        }
    }
}
