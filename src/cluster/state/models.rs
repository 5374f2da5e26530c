//! Model versions: `ModelRef`, `ModelVersions` and the two-phase rollout
//! rules of `ClusterState`: staging a version, nodes reporting it loaded,
//! and activating it once every replica holder has (or by force).
//!
//! Must not touch: Raft, storage, the network, clocks or randomness (see
//! the `state` module: a pure, deterministic function of the log, with
//! `BTreeMap`s only); nor bundle files, which nodes fetch and load
//! themselves.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::checks::{check_version, Verdict};
use super::{ClusterState, NodeStatus};
use crate::cluster::types::NodeId;

/// A model bundle version and where nodes can fetch it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    pub version: String,
    pub bundle_path: String,
    pub source_node: NodeId,
}

/// Two-phase rollout state: `staged` is being loaded, `active` is served;
/// `loaded` is the version each node last reported as loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelVersions {
    pub active: Option<ModelRef>,
    pub staged: Option<ModelRef>,
    pub loaded: BTreeMap<NodeId, String>,
}

impl ClusterState {
    /// Nodes holding replicas that have not reported `version` loaded: the
    /// leader activates a staged version (without force) when this is empty.
    pub fn not_loaded(&self, version: &str) -> Vec<NodeId> {
        let holders = self
            .shard_map
            .as_ref()
            .map(|m| m.nodes_with_replicas())
            .unwrap_or_default();
        holders
            .into_iter()
            .filter(|n| self.models.loaded.get(n).map(String::as_str) != Some(version))
            .collect()
    }

    pub(super) fn check_stage(&self, model: &ModelRef) -> Verdict {
        check_version(&model.version)?;
        if model.bundle_path.is_empty() {
            return Err(
                "bundle_path is empty; give the path of the bundle on the source node".to_string(),
            );
        }
        match self.node_status(model.source_node) {
            None => {
                return Err(format!(
                    "source node {} is unknown; register it first",
                    model.source_node
                ))
            }
            Some(NodeStatus::Removed) => {
                return Err(format!(
                    "source node {} was removed; stage from a live node",
                    model.source_node
                ))
            }
            Some(_) => {}
        }
        if self
            .models
            .active
            .as_ref()
            .is_some_and(|a| a.version == model.version)
        {
            return Err(format!("version {} is already active", model.version));
        }
        Ok(())
    }

    pub(super) fn check_report_loaded(&self, node: NodeId, version: &str) -> Verdict {
        match self.node_status(node) {
            None => return Err(format!("node {node} is unknown; register it first")),
            Some(NodeStatus::Removed) => return Err(format!("node {node} was removed")),
            Some(_) => {}
        }
        let staged = self
            .models
            .staged
            .as_ref()
            .is_some_and(|m| m.version == version);
        let active = self
            .models
            .active
            .as_ref()
            .is_some_and(|m| m.version == version);
        if !staged && !active {
            return Err(format!(
                "version {version} is neither staged nor active; stage it before reporting it loaded"
            ));
        }
        Ok(())
    }

    pub(super) fn check_activate(&self, version: &str, force: bool) -> Verdict {
        if self
            .models
            .active
            .as_ref()
            .is_some_and(|m| m.version == version)
        {
            // Retried activation: already done.
            return Ok(());
        }
        match &self.models.staged {
            None => {
                return Err(format!(
                    "version {version} is not staged (nothing is); stage it first"
                ))
            }
            Some(staged) if staged.version != version => {
                return Err(format!(
                    "version {version} is not staged (staged is {}); stage it first",
                    staged.version
                ))
            }
            Some(_) => {}
        }
        if force {
            return Ok(());
        }
        let missing = self.not_loaded(version);
        if !missing.is_empty() {
            return Err(format!(
                "version {version} is not loaded on nodes {missing:?} that hold replicas; \
                 wait for their ReportLoaded or activate with force"
            ));
        }
        Ok(())
    }
}
