//! Model versions on one node and the cluster-wide two-phase rollout.
//!
//! A version goes through: *prepared* (loaded beside the served one: model,
//! this node's shards, catalogue overlay carried over), *served* (the swap
//! is one pointer store, so a request holds one version end to end) and
//! *retired* (kept for `RETIRED_GRACE` so a remote coordinator still on it
//! gets answers while the nodes switch). In a cluster the steps are driven
//! by the replicated state: `StageModel` -> every node prepares its shards
//! of the version (files fetched from the source node when needed, see
//! `bundle_fetch`) and proposes `ReportLoaded` -> the leader proposes
//! `ActivateModel` once `ClusterState::not_loaded` is empty (or the
//! operator forced it) -> every node switches when it applies that.
//! Loading, holding and installing versions is `model_host`'s
//! (`Versions`, `ModelHost::prepare`/`install`, driven by `Node::publish`
//! and `Node::switch_to`); this module decides when.
//!
//! Owns: staging a publish (`publish_cluster`), loading a staged version in
//! the background (`start_loading`), where a version's files are on this
//! node (`bundle_dir_of`) and the rollout reconcile `step`.
//! Must not touch: the Raft rules (`cluster::state`), how files are copied
//! (`bundle_fetch`), the shard map's placement, or the serving tables
//! themselves (`model_host`).

use super::bundle_fetch;
pub use super::model_host::{Prepared, Standby, Versions};
use super::Node;
use crate::cluster::{Command, ModelRef};
use crate::config::NodeConfig;
use crate::control::{service_error, ClusterLink, StepError};
use crate::service::types::ServiceError;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a retired version's shards keep answering remote searches.
/// Nodes switch within a Raft round trip of each other; this covers the
/// stragglers and requests in flight (whose deadlines are ~1 s).
pub const RETIRED_GRACE: Duration = Duration::from_secs(15);

/// Pause before retrying a version whose loading failed.
const RETRY_AFTER: Duration = Duration::from_secs(3);

/// How long an HTTP `admin publish` on a cluster node waits for the node
/// to serve the version (the HTTP admin client waits 600 s).
pub const HTTP_PUBLISH_WAIT: Duration = Duration::from_secs(300);

/// What staging a publish did.
#[derive(Debug, Clone)]
pub struct Staged {
    pub version: String,
    pub previous: Option<String>,
    pub source_node: u64,
    /// The version was already the cluster's active one (published from
    /// the same path): nothing was staged.
    pub already_active: bool,
}

/// What the leader does about a staged version (pure; see `step`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Activation {
    /// Nothing is staged.
    Idle,
    /// Waiting for these replica holders to report the version loaded.
    Waiting(Vec<u64>),
    /// Every replica holder has it: propose `ActivateModel`.
    Activate(String),
}

/// The leader's decision for the applied state.
pub fn activation(state: &crate::cluster::ClusterState) -> Activation {
    match &state.models.staged {
        None => Activation::Idle,
        Some(m) => {
            let missing = state.not_loaded(&m.version);
            if missing.is_empty() {
                Activation::Activate(m.version.clone())
            } else {
                Activation::Waiting(missing)
            }
        }
    }
}

impl Node {
    /// The bundle directory of `version` on this node, for peers fetching
    /// its files: the served, a prepared or retired version, one this node
    /// staged as source, or a complete copy under `<data_dir>/bundles/`.
    pub fn bundle_dir_of(&self, version: &str) -> Option<PathBuf> {
        if self.model_version().as_deref() == Some(version) {
            return self.current_bundle_dir();
        }
        if let Some(s) = self.standby(version) {
            return Some(s.dir.clone());
        }
        if let Some((_, dir)) = self
            .inner
            .host
            .versions()
            .published
            .as_ref()
            .filter(|(v, _)| v == version)
        {
            return Some(dir.clone());
        }
        if let Some(link) = self.cluster() {
            let st = link.raft.state();
            let st = st.read();
            let mine = [&st.models.staged, &st.models.active]
                .into_iter()
                .flatten()
                .find(|m| m.version == version && m.source_node == link.id());
            if let Some(m) = mine {
                return Some(PathBuf::from(&m.bundle_path));
            }
        }
        bundle_fetch::fetched_copy(&self.inner.config.node.data_dir, version)
    }

    /// Stages the bundle in `dir` (a path on this node) for a cluster-wide
    /// rollout with this node as the source; with `force` also activates
    /// it without waiting for every replica holder (and replaces a version
    /// staged earlier). Checks first what can be checked here, so a bad
    /// publish changes nothing.
    pub async fn publish_cluster(&self, dir: PathBuf, force: bool) -> Result<Staged, ServiceError> {
        let link = self.cluster().cloned().ok_or_else(|| {
            ServiceError::failed_precondition(
                "this node is not part of a cluster; publish over HTTP (funnel admin --addr HTTP_ADDR publish)",
            )
        })?;
        let manifest = bundle_fetch::read_manifest(dir.clone()).await?;
        let (shards, staged, active, overlay_dim) = {
            let st = link.raft.state();
            let st = st.read();
            (
                st.shard_map.as_ref().map(|m| m.shards),
                st.models.staged.clone(),
                st.models.active.clone(),
                st.catalog.dimension(),
            )
        };
        let shards = shards.ok_or_else(|| {
            ServiceError::unavailable(
                "the cluster has no shard map yet (it is still forming); retry in a moment",
            )
        })?;
        let abs = std::fs::canonicalize(&dir).unwrap_or(dir);
        if let Some(a) = active.as_ref() {
            if already_active(&manifest, a, &abs)? {
                // a retried publish (a deploy job run again, a client that
                // timed out after the rollout went through) changes nothing
                tracing::info!(version = %a.version, "publish of the active version: nothing to do");
                return Ok(Staged {
                    version: a.version.clone(),
                    previous: Some(a.version.clone()),
                    source_node: a.source_node,
                    already_active: true,
                });
            }
        }
        check_publish(&manifest, shards, overlay_dim, staged.as_ref(), force)?;
        let version = manifest.model_version.clone();
        let previous = self.model_version().or_else(|| active.map(|a| a.version));
        let model = ModelRef {
            version: version.clone(),
            bundle_path: abs.display().to_string(),
            source_node: link.id(),
        };
        self.inner.host.versions().published = Some((version.clone(), abs.clone()));
        link.raft
            .write(Command::StageModel(model))
            .await
            .map_err(service_error)?;
        tracing::info!(version = %version, force, "model staged for rollout");
        if force {
            link.raft
                .write(Command::ActivateModel {
                    version: version.clone(),
                    force: true,
                })
                .await
                .map_err(service_error)?;
        }
        Ok(Staged {
            version,
            previous,
            source_node: link.id(),
            already_active: false,
        })
    }

    /// Waits until this node serves `version`.
    pub async fn wait_serving(&self, version: &str, timeout: Duration) -> Result<(), ServiceError> {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if self.model_version().as_deref() == Some(version) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(ServiceError::unavailable(format!(
            "version {version} is staged but this node does not serve it after {} s; see funnel admin --addr INTERNAL status for which nodes have loaded it",
            timeout.as_secs()
        )))
    }

    /// Loads `m` in the background (one version at a time); the control
    /// loop picks the result up.
    fn start_loading(&self, link: &Arc<ClusterLink>, config: &NodeConfig, m: &ModelRef) {
        {
            let mut v = self.inner.host.versions();
            if v.loading.is_some() {
                return;
            }
            if v.failed
                .as_ref()
                .is_some_and(|(ver, at)| *ver == m.version && at.elapsed() < RETRY_AFTER)
            {
                return;
            }
            v.loading = Some(m.version.clone());
        }
        let (node, link, config, m) = (self.clone(), link.clone(), config.clone(), m.clone());
        let span = tracing::info_span!("rollout_load", node_id = link.id(), version = %m.version);
        let task = async move {
            let t0 = Instant::now();
            let r = async {
                let hosted = node.hosted_shards().unwrap_or_default();
                let dir = bundle_fetch::ensure_local(&link, &config, &m, &hosted).await?;
                let p = node.prepare(dir).await?;
                if p.standby.version != m.version {
                    return Err(ServiceError::failed_precondition(format!(
                        "the bundle at {} is version {}, not the staged {}",
                        p.standby.dir.display(),
                        p.standby.version,
                        m.version
                    )));
                }
                Ok(p)
            }
            .await;
            let mut v = node.inner.host.versions();
            v.loading = None;
            match r {
                Ok(p) => {
                    tracing::info!(version = %m.version, ms = t0.elapsed().as_millis() as u64, "staged model loaded");
                    v.failed = None;
                    v.prepared = Some(p);
                }
                Err(e) => {
                    tracing::warn!(version = %m.version, error = %e, "loading the staged model failed; retrying");
                    v.failed = Some((m.version.clone(), Instant::now()));
                }
            }
        };
        actix::spawn(tracing::Instrument::instrument(task, span));
    }
}

/// Whether publishing `manifest` from `dir` (canonical) asks for the
/// cluster's `active` version again: true for the same version from the
/// same path; an error for the same version from another path, because a
/// version names one model cluster-wide and a second bundle under that
/// name would be a different model nobody could tell apart.
fn already_active(
    manifest: &crate::bundle::Manifest,
    active: &ModelRef,
    dir: &std::path::Path,
) -> Result<bool, ServiceError> {
    if manifest.model_version != active.version {
        return Ok(false);
    }
    if std::path::Path::new(&active.bundle_path) == dir {
        return Ok(true);
    }
    Err(ServiceError::failed_precondition(format!(
        "version {} is already active, published from {} (on node {}); a different bundle needs a new --model-version",
        active.version,
        active.bundle_path,
        active.source_node
    )))
}

/// Refuses a publish that cannot work, before anything changes.
fn check_publish(
    manifest: &crate::bundle::Manifest,
    shards: u32,
    overlay_dim: Option<usize>,
    staged: Option<&ModelRef>,
    force: bool,
) -> Result<(), ServiceError> {
    let version = &manifest.model_version;
    if manifest.shard_count != shards {
        return Err(ServiceError::failed_precondition(format!(
            "bundle {version} has {} shards but the cluster has {shards}; train it with --shards {shards}",
            manifest.shard_count
        )));
    }
    if let Some(d) = overlay_dim.filter(|&d| d != manifest.dimension as usize) {
        return Err(ServiceError::failed_precondition(format!(
            "bundle {version} has {}-dimensional vectors but items upserted into the cluster have {d}; train with dimension {d}",
            manifest.dimension
        )));
    }
    if let Some(s) = staged.filter(|s| s.version != *version && !force) {
        return Err(ServiceError::failed_precondition(format!(
            "version {} is already being rolled out (staged, not yet active); wait until it is active (funnel admin status), or publish with --force to replace it",
            s.version
        )));
    }
    Ok(())
}

/// The bundle a node that serves nothing yet starts with: the cluster's
/// active version (fetched if needed) when there is one, else `[node]
/// bundle` (a fresh cluster), else none (it waits for a publish).
pub(super) async fn first_bundle_dir(
    node: &Node,
    link: &Arc<ClusterLink>,
    config: &NodeConfig,
) -> Result<Option<PathBuf>, ServiceError> {
    let active = link.raft.state().read().models.active.clone();
    match active {
        Some(m) => {
            let hosted = node.hosted_shards().unwrap_or_default();
            bundle_fetch::ensure_local(link, config, &m, &hosted)
                .await
                .map(Some)
        }
        None => Ok(config.node.bundle_dir().map(|p| p.to_path_buf())),
    }
}

/// A directory holding the served version's files for the shards `want`:
/// when the served version is the cluster's active one, `ensure_local`
/// checks `current` (or the local copy) for them and fetches what is
/// missing from a peer; otherwise (mid-rollout, or fetching failed: the
/// error is logged and loading then reports the missing file) `current`.
pub(super) async fn dir_with_shards(
    node: &Node,
    link: &Arc<ClusterLink>,
    config: &NodeConfig,
    want: &[u32],
    current: &Path,
) -> PathBuf {
    let active = link.raft.state().read().models.active.clone();
    match active {
        Some(m) if node.model_version().as_deref() == Some(m.version.as_str()) => {
            match bundle_fetch::ensure_local(link, config, &m, want).await {
                Ok(dir) => dir,
                Err(e) => {
                    tracing::warn!(version = %m.version, error = %e, "getting the files of newly placed shards failed");
                    current.to_path_buf()
                }
            }
        }
        _ => current.to_path_buf(),
    }
}

/// One rollout step of the control loop: drop an expired retired version,
/// delete fetched copies of versions nothing needs any more, switch to the
/// active version once it is prepared, prepare the staged one and report
/// it loaded, and (on the leader) activate it when every replica holder
/// has.
pub(super) async fn step(
    node: &Node,
    link: &Arc<ClusterLink>,
    config: &NodeConfig,
) -> Result<(), StepError> {
    let me = link.id();
    let (active, staged, reported, decision) = {
        let st = link.raft.state();
        let st = st.read();
        (
            st.models.active.clone(),
            st.models.staged.clone(),
            st.models.loaded.get(&me).cloned(),
            activation(&st),
        )
    };
    {
        let mut v = node.inner.host.versions();
        if v.retired
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() >= RETIRED_GRACE)
        {
            v.retired = None;
        }
    }
    let serving = node.model_version();
    // once this node serves what the cluster activated, it has caught up
    // far enough to know which fetched copies nothing needs any more
    if active.is_some() && active.as_ref().map(|a| &a.version) == serving.as_ref() {
        let keep: Vec<String> = {
            let v = node.inner.host.versions();
            [
                active.as_ref().map(|a| a.version.clone()),
                staged.as_ref().map(|s| s.version.clone()),
                v.prepared.as_ref().map(|p| p.standby.version.clone()),
                v.retired.as_ref().map(|(r, _)| r.version.clone()),
            ]
            .into_iter()
            .flatten()
            .collect()
        };
        let data_dir = config.node.data_dir.clone();
        let removed = tokio::task::spawn_blocking(move || {
            let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
            super::bundle_fetch::remove_stale_copies(&data_dir, &keep)
        })
        .await
        .unwrap_or_default();
        for dir in removed {
            tracing::info!(node_id = me, dir = %dir.display(), "removed a copy of a model version no longer staged, served or retired");
        }
    }
    if let Some(a) = &active {
        if serving.as_deref() != Some(a.version.as_str()) {
            if node.inner.host.prepared_version().as_deref() == Some(a.version.as_str()) {
                let _one_at_a_time = node.inner.host.one_at_a_time().await;
                let p = node.inner.host.versions().prepared.take();
                if let Some(p) = p {
                    node.switch_to(p).await?;
                }
            } else if serving.is_some() {
                // activated (e.g. forced) before this node had it loaded
                node.start_loading(link, config, a);
            }
        }
    }
    if let Some(s) = &staged {
        let have = node.model_version().as_deref() == Some(s.version.as_str())
            || node.inner.host.prepared_version().as_deref() == Some(s.version.as_str());
        if !have {
            node.start_loading(link, config, s);
        } else if reported.as_deref() != Some(s.version.as_str()) {
            link.raft
                .write(Command::ReportLoaded {
                    node: me,
                    version: s.version.clone(),
                })
                .await?;
            tracing::info!(node_id = me, version = %s.version, "reported the staged model loaded");
        }
    }
    if let (true, Activation::Activate(version)) = (link.is_leader(), decision) {
        link.raft
            .write(Command::ActivateModel {
                version: version.clone(),
                force: false,
            })
            .await?;
        tracing::info!(node_id = me, version = %version, "every replica holder loaded the staged model; activated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{ClusterState, NodeInfo, Replica, ShardMap};

    fn state(loaded: &[(u64, &str)], staged: Option<&str>) -> ClusterState {
        let mut st = ClusterState::default();
        for id in 1..=3 {
            st.nodes.insert(
                id,
                NodeInfo::new(id, format!("127.0.0.1:{}", 7000 + id), "h:1", "g:1"),
            );
        }
        let rep = |node| Replica {
            node,
            state: crate::cluster::ReplicaState::Active,
        };
        st.shard_map = Some(ShardMap {
            shards: 2,
            replication: 2,
            replicas: vec![vec![rep(1), rep(2)], vec![rep(2), rep(3)]],
        });
        st.models.staged = staged.map(|v| ModelRef {
            version: v.into(),
            bundle_path: "/b".into(),
            source_node: 1,
        });
        for (n, v) in loaded {
            st.models.loaded.insert(*n, v.to_string());
        }
        st
    }

    #[test]
    fn the_leader_activates_only_when_every_replica_holder_loaded() {
        assert_eq!(activation(&state(&[], None)), Activation::Idle);
        assert_eq!(
            activation(&state(&[(1, "v2")], Some("v2"))),
            Activation::Waiting(vec![2, 3])
        );
        // a report of another version does not count
        assert_eq!(
            activation(&state(&[(1, "v2"), (2, "v2"), (3, "v1")], Some("v2"))),
            Activation::Waiting(vec![3])
        );
        assert_eq!(
            activation(&state(&[(1, "v2"), (2, "v2"), (3, "v2")], Some("v2"))),
            Activation::Activate("v2".into())
        );
    }

    fn manifest(version: &str, shards: u32, dim: u32) -> crate::bundle::Manifest {
        crate::bundle::Manifest {
            format_version: crate::bundle::FORMAT_VERSION,
            model_version: version.into(),
            created_at_unix: 0,
            input_fingerprint: String::new(),
            feature_schema: Default::default(),
            dimension: dim,
            shard_count: shards,
            n_items: 0,
            n_users: 0,
            index: Default::default(),
            components: vec![],
            metrics: serde_json::Value::Null,
            params: serde_json::Value::Null,
            files: vec![],
            generator: String::new(),
        }
    }

    #[test]
    fn publish_checks() {
        let staged = ModelRef {
            version: "v2".into(),
            bundle_path: "/b".into(),
            source_node: 1,
        };
        assert!(check_publish(&manifest("v3", 4, 16), 4, Some(16), None, false).is_ok());
        let e = check_publish(&manifest("v3", 3, 16), 4, None, None, false).unwrap_err();
        assert!(e.to_string().contains("--shards 4"), "{e}");
        let e = check_publish(&manifest("v3", 4, 8), 4, Some(16), None, false).unwrap_err();
        assert!(e.to_string().contains("dimension 16"), "{e}");
        let e = check_publish(&manifest("v3", 4, 16), 4, None, Some(&staged), false).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        // re-publishing the staged version, or forcing, is allowed
        assert!(check_publish(&manifest("v2", 4, 16), 4, None, Some(&staged), false).is_ok());
        assert!(check_publish(&manifest("v3", 4, 16), 4, None, Some(&staged), true).is_ok());
    }

    #[test]
    fn publishing_the_active_version_again_is_a_no_op_only_from_the_same_path() {
        let active = ModelRef {
            version: "v2".into(),
            bundle_path: "/bundles/v2".into(),
            source_node: 1,
        };
        let same = std::path::Path::new("/bundles/v2");
        assert!(already_active(&manifest("v2", 4, 16), &active, same).unwrap());
        // another version is a normal publish
        assert!(!already_active(&manifest("v3", 4, 16), &active, same).unwrap());
        // the same name for a bundle somewhere else is refused
        let e = already_active(
            &manifest("v2", 4, 16),
            &active,
            std::path::Path::new("/elsewhere/v2"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("new --model-version"), "{e}");
        assert!(e.to_string().contains("/bundles/v2"), "{e}");
    }
}
