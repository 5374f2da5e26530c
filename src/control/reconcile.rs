//! The reconciler: turns the applied cluster state into local action on
//! every applied index (and every half second, to retry what failed). The
//! leader registers configured members that are missing and creates the
//! shard map and the user partition map; every node steps the rollout, loads (or rebuilds) its own
//! shards when the map or the model moved, applies committed catalogue
//! changes and marks the replicas it loaded Active; the leader also carries
//! transfers and membership forward (`control::moves`).
//!
//! The node is reached through `LocalNode`, so this module knows what to
//! do and when, and `node` how.
//!
//! Owns: `control_loop`, `reconcile`, `StepError`, `LocalNode`.
//! Must not touch: the Raft rules (`cluster`), how a bundle is loaded or a
//! shard hosted (`node`).

use super::link::ClusterLink;
use crate::cluster::{
    initial_placement, ClusterError, ClusterState, Command, MapOp, NodeInfo, PlacementError,
    ReplicaState,
};
use crate::config::{ClusterConfig, NodeConfig};
use crate::service::types::ServiceError;
use crate::telemetry::failure_log::StepFailures;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// What the reconciler asks of the node it runs on. `node::Node`
/// implements it; every method is one of the node's own operations.
// The drivers run on the actix system (applying starts shard actors), so
// the futures need not be Send and the trait is never boxed.
#[allow(async_fn_in_trait)]
pub trait LocalNode: Clone + 'static {
    /// One step of the cluster-wide two-phase rollout.
    async fn rollout_step(
        &self,
        link: &Arc<ClusterLink>,
        config: &NodeConfig,
    ) -> Result<(), StepError>;
    /// The bundle directory of the served version, if one is served.
    fn current_bundle_dir(&self) -> Option<PathBuf>;
    /// The active version's bundle directory for a node that serves none
    /// yet (fetched from a peer when this node does not hold it).
    async fn first_bundle_dir(
        &self,
        link: &Arc<ClusterLink>,
        config: &NodeConfig,
    ) -> Result<Option<PathBuf>, ServiceError>;
    fn serves_a_model(&self) -> bool;
    /// Shards with a loaded copy here.
    fn local_shards(&self) -> Vec<u32>;
    /// Loads and serves the bundle in `dir`.
    async fn publish(&self, dir: PathBuf) -> Result<(), ServiceError>;
    /// A directory holding the files of `shards` for the served version:
    /// `current` when it has them, else a copy fetched from a peer.
    async fn dir_with_shards(
        &self,
        link: &Arc<ClusterLink>,
        config: &NodeConfig,
        shards: &[u32],
        current: &Path,
    ) -> PathBuf;
    /// Loads (or unloads) just the shards that changed.
    async fn rehost_shards(&self, shards: &[u32], dir: PathBuf) -> Result<(), ServiceError>;
    /// Rebuilds the shard clients from the shard map.
    fn rebuild_shard_clients(&self) -> Result<(), ServiceError>;
    /// Applies the committed catalogue changes not applied yet.
    async fn apply_cluster_catalog(&self) -> Result<(), ServiceError>;
    /// Follows the user partition map: reads routed to the copies it
    /// places, partitions no longer placed here dropped, new ones loaded.
    async fn follow_partition_map(&self) -> Result<(), ServiceError>;
    /// The user partitions whose state is complete here (None: no model
    /// served or no map known yet).
    fn loaded_partitions(&self) -> Option<Vec<u32>>;
}

/// Why one control-loop step (reconcile, rollout) did not finish; the
/// loop logs it and tries again on the next applied index or tick.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("no [cluster] section")]
    NoClusterConfig,
    /// A Raft write or membership change failed (no leader, refused,
    /// unreachable).
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// A local operation (fetching or loading a bundle, applying the
    /// catalogue) failed.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The configured shard map cannot be placed on the members.
    #[error(transparent)]
    Placement(#[from] PlacementError),
}

/// (shard, node, state) of every replica: when it changes, the node
/// rebuilds its shard clients.
pub type ReplicaSignature = Vec<(u32, u64, ReplicaState)>;

pub fn replica_signature(state: &ClusterState) -> ReplicaSignature {
    let Some(map) = &state.shard_map else {
        return Vec::new();
    };
    let mut sig = Vec::new();
    for (s, reps) in map.replicas.iter().enumerate() {
        for r in reps {
            sig.push((s as u32, r.node, r.state));
        }
    }
    sig
}

/// Reconciles this node with the applied cluster state: on every applied
/// index (and every half second, to retry what failed).
pub async fn control_loop<N: LocalNode>(
    node: N,
    link: Arc<ClusterLink>,
    config: NodeConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut applied = link.raft.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut built: Option<(ReplicaSignature, String)> = None;
    let mut mover = super::moves::MoveDriver::default();
    // retried every tick: logged at warn only when they keep failing
    let mut reconcile_log = StepFailures::new("reconcile");
    let mut rollout_log = StepFailures::new("rollout");
    let mut moves_log = StepFailures::new("transfers and membership");
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            r = applied.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
        }
        match reconcile(&node, &link, &config, &mut built, &mut rollout_log).await {
            Ok(()) => reconcile_log.succeeded(),
            Err(e) => reconcile_log.failed(&e),
        };
        if let Some(cc) = config.cluster.as_ref() {
            match super::moves::drive(&link, cc, &mut mover).await {
                Ok(()) => moves_log.succeeded(),
                Err(e) => moves_log.failed(&e),
            };
        }
    }
}

async fn reconcile<N: LocalNode>(
    node: &N,
    link: &Arc<ClusterLink>,
    config: &NodeConfig,
    built: &mut Option<(ReplicaSignature, String)>,
    rollout_log: &mut StepFailures,
) -> Result<(), StepError> {
    let cc = config.cluster.as_ref().ok_or(StepError::NoClusterConfig)?;
    let (sig, has_map, has_partitions, missing) = {
        let st = link.raft.state();
        let st = st.read();
        let missing: Vec<NodeInfo> = cc
            .members
            .iter()
            .filter(|m| !st.nodes.contains_key(&m.id))
            .map(|m| NodeInfo::new(m.id, &m.internal, &m.http, &m.grpc))
            .collect();
        (
            replica_signature(&st),
            st.shard_map.is_some(),
            st.partition_map.is_some(),
            missing,
        )
    };
    if link.is_leader() {
        for info in missing.iter() {
            link.raft
                .write_as_leader(Command::RegisterNode(info.clone()))
                .await?;
        }
        if !has_map && missing.is_empty() {
            let mut ids: Vec<u64> = cc.members.iter().map(|m| m.id).collect();
            ids.sort_unstable();
            let placement = initial_placement(cc.shards, cc.replication, &ids)?;
            link.raft
                .write_as_leader(Command::InitShards {
                    shards: cc.shards,
                    replication: cc.replication,
                    placement,
                })
                .await?;
            tracing::info!(
                shards = cc.shards,
                replication = cc.replication,
                "shard map created"
            );
        }
        if !has_partitions && missing.is_empty() {
            create_partition_map(link, cc).await?;
        }
    }
    // a partition that fails to load stays Loading in the map (reads go to
    // its other copies); it must not hold up the rollout or the shards
    if let Err(e) = node.follow_partition_map().await {
        tracing::warn!(error = %e, "following the user partition map failed; trying again next round");
    }
    activate_partition_copies(link, node.loaded_partitions()).await?;
    if !has_map {
        return Ok(());
    }
    // a rollout that cannot progress right now (no leader, a peer down)
    // must not hold up the catalogue or the shard map
    match node.rollout_step(link, config).await {
        Ok(_) => rollout_log.succeeded(),
        Err(e) => rollout_log.failed(&e),
    };
    // load (or rebuild) this node's shards when the map or the model moved
    let dir = match node.current_bundle_dir() {
        Some(d) => Some(d),
        None => node.first_bundle_dir(link, config).await?,
    };
    if let Some(dir) = dir {
        let dir_s = dir.display().to_string();
        let stale = built.as_ref().is_none_or(|(s, d)| *s != sig || *d != dir_s);
        if stale {
            // compared with what is loaded, not with the last build: a
            // rollout switch (`rollout::step`) may have loaded it already
            let mine: Vec<u32> = sig
                .iter()
                .filter(|r| r.1 == link.id())
                .map(|r| r.0)
                .collect();
            let local_changed = node.local_shards() != mine;
            if !node.serves_a_model() {
                node.publish(dir.clone()).await?;
            } else if local_changed {
                // a move adds or drops a copy: load (or unload) just those,
                // from a directory that holds the added shards' files (a
                // node that fetched only its own shards gets the new ones
                // from a peer first)
                let from = node.dir_with_shards(link, config, &mine, &dir).await;
                if let Err(e) = node.rehost_shards(&mine, from).await {
                    tracing::warn!(error = %e, "loading only the changed shards failed; reloading the bundle");
                    node.publish(dir.clone()).await?;
                }
            } else {
                node.rebuild_shard_clients()?;
            }
            *built = Some((sig, dir_s));
        }
    }
    node.apply_cluster_catalog().await?;
    // shards loaded here are ready to be queried by the other nodes
    let loaded = node.local_shards();
    let ready: Vec<u32> = built
        .as_ref()
        .map(|(sig, _)| {
            sig.iter()
                .filter(|r| r.1 == link.id() && r.2 == ReplicaState::Loading)
                .map(|r| r.0)
                .filter(|s| loaded.contains(s))
                .collect()
        })
        .unwrap_or_default();
    for shard in ready {
        link.raft
            .write(Command::SetReplicaState {
                shard,
                node: link.id(),
                state: ReplicaState::Active,
            })
            .await?;
        tracing::info!(shard, "shard replica loaded and active");
    }
    Ok(())
}

/// The leader creates the user partition map once every configured member
/// is registered (a cluster created before the map existed gets it the
/// same way): `cluster.user_partitions` partitions on
/// min(`cluster.user_replication`, Active members) nodes each.
async fn create_partition_map(link: &ClusterLink, cc: &ClusterConfig) -> Result<(), StepError> {
    let ids: Vec<u64> = {
        let st = link.raft.state();
        let st = st.read();
        st.active_node_ids()
    };
    let replication = cc.user_replication.min(ids.len() as u32).max(1);
    let placement = initial_placement(cc.user_partitions, replication, &ids)?;
    link.raft
        .write_as_leader(Command::Partitions(MapOp::Init {
            count: cc.user_partitions,
            replication,
            placement,
        }))
        .await?;
    tracing::info!(
        partitions = cc.user_partitions,
        replication,
        "user partition map created"
    );
    Ok(())
}

/// Marks this node's Loading user partition copies Active once their
/// state is complete here (`loaded`: seeded from the bundle and replayed
/// from the event logs, which still hold every event on every member), so
/// requests start reading them.
async fn activate_partition_copies(
    link: &ClusterLink,
    loaded: Option<Vec<u32>>,
) -> Result<(), StepError> {
    let Some(loaded) = loaded else {
        return Ok(());
    };
    let loading: Vec<u32> = {
        let st = link.raft.state();
        let st = st.read();
        let Some(map) = &st.partition_map else {
            return Ok(());
        };
        map.shards_on(link.id())
            .into_iter()
            .filter(|&p| {
                loaded.contains(&p)
                    && map
                        .replica(p, link.id())
                        .is_some_and(|r| r.state == ReplicaState::Loading)
            })
            .collect()
    };
    for partition in loading {
        let cmd = Command::Partitions(MapOp::SetReplicaState {
            shard: partition,
            node: link.id(),
            state: ReplicaState::Active,
        });
        match link.raft.write(cmd).await {
            Ok(_) => tracing::info!(partition, "user partition copy active"),
            // the map moved on (the copy was dropped meanwhile)
            Err(ClusterError::Rejected(reason)) => {
                tracing::debug!(partition, %reason, "activating a user partition copy refused")
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
