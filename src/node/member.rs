//! This node as a cluster member: joining at start (Raft through
//! `control::ClusterLink`, the drivers through `control::spawn_drivers`,
//! the event catch-up beside them) and the operations the reconciler
//! drives, as `control::LocalNode`.
//!
//! Owns: the wiring of a member and the `LocalNode` impl (each method is
//! one of `Node`'s operations). Must not touch: when the reconciler acts
//! (`control::reconcile`), the Raft rules (`cluster`).

use super::{rollout, Node};
use crate::cluster::FaultInjector;
use crate::config::NodeConfig;
use crate::control::{ClusterLink, LocalNode, StartError, StepError};
use crate::service::types::ServiceError;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::watch;
use tracing::Instrument;

/// Why a node could not become a member at start.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    AlreadyInCluster(#[from] super::AlreadyInCluster),
}

/// Starts Raft for `node` (with `internal_services` on the same port),
/// attaches the link to the node and starts the control drivers, the
/// event catch-up and the item-count pulls. Returns the link. Call it on the actix system.
pub async fn start_cluster(
    node: Node,
    config: &NodeConfig,
    shutdown: watch::Receiver<bool>,
    internal_services: impl FnOnce(
        tonic::service::Routes,
        &FaultInjector,
        usize,
    ) -> tonic::service::Routes,
) -> Result<Arc<ClusterLink>, JoinError> {
    let link = ClusterLink::start(config, shutdown.clone(), internal_services).await?;
    node.attach_cluster(link.clone())?;
    // on the actix system: applying events talks to the user-state actors
    {
        let (n, l, s) = (node.clone(), link.clone(), shutdown.clone());
        actix::spawn(async move { super::catchup::run(n, l, s).await }.in_current_span());
        let (n, l, s) = (node.clone(), link.clone(), shutdown.clone());
        actix::spawn(async move { super::item_counts::run(n, l, s).await }.in_current_span());
    }
    crate::control::spawn_drivers(node, link.clone(), config, shutdown);
    Ok(link)
}

impl LocalNode for Node {
    async fn rollout_step(
        &self,
        link: &Arc<ClusterLink>,
        config: &NodeConfig,
    ) -> Result<(), StepError> {
        rollout::step(self, link, config).await
    }

    fn current_bundle_dir(&self) -> Option<PathBuf> {
        Node::current_bundle_dir(self)
    }

    async fn first_bundle_dir(
        &self,
        link: &Arc<ClusterLink>,
        config: &NodeConfig,
    ) -> Result<Option<PathBuf>, ServiceError> {
        rollout::first_bundle_dir(self, link, config).await
    }

    fn serves_a_model(&self) -> bool {
        self.model_version().is_some()
    }

    fn local_shards(&self) -> Vec<u32> {
        Node::local_shards(self)
    }

    async fn publish(&self, dir: PathBuf) -> Result<(), ServiceError> {
        Node::publish(self, dir).await.map(|_version| ())
    }

    async fn dir_with_shards(
        &self,
        link: &Arc<ClusterLink>,
        config: &NodeConfig,
        shards: &[u32],
        current: &Path,
    ) -> PathBuf {
        rollout::dir_with_shards(self, link, config, shards, current).await
    }

    async fn rehost_shards(&self, shards: &[u32], dir: PathBuf) -> Result<(), ServiceError> {
        Node::rehost_shards(self, shards, dir).await
    }

    fn rebuild_shard_clients(&self) -> Result<(), ServiceError> {
        Node::rebuild_shard_clients(self)
    }

    async fn apply_cluster_catalog(&self) -> Result<(), ServiceError> {
        Node::apply_cluster_catalog(self).await
    }

    async fn follow_partition_map(&self) -> Result<(), ServiceError> {
        Node::follow_partition_map(self).await
    }

    fn loaded_partitions(&self) -> Option<Vec<u32>> {
        Node::loaded_partitions(self)
    }
}
