//! `funnel admin` commands that change a cluster: add-node, remove-node
//! --drain, move-shard, rebalance, set-replication, cancel-moves,
//! set-setting. Placement commands act on the shard map and on the user
//! partition map alike (`MapKind`): rebalance and drain plan both, the
//! others take `--user-partition(s)` to act on partitions.
//!
//! Each reads the cluster view from the node at `--addr` (any member),
//! plans with the same pure planners the state machine re-checks
//! (`cluster::placement`, `cluster::moves`), and proposes one command
//! through that node, which forwards it to the Raft leader. The leader then
//! carries the queued transfers out (`control::moves`). A plan made from a
//! view that went stale is refused by the state with what to do.
//!
//! Owns: turning an operator's request into a command, and the report of
//! what was done. Must not touch: the rules (the state machine decides).

use crate::cluster::moves::{
    plan_replication, SETTING_AUTO_REBALANCE, SETTING_DRAIN_GRACE_MS, SETTING_MAX_CONCURRENT,
    SETTING_REPLACE_DEAD_AFTER,
};
use crate::cluster::{
    plan_drain, plan_rebalance, propose_via, ClusterError, ClusterView, Command, MapKind, MapOp,
    NodeInfo, NodeStatus, ShardMap, Transfer,
};
use crate::tls::NodeTls;
use anyhow::{anyhow, bail, Result};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

/// A change an operator asks of the cluster.
#[derive(Debug, Clone)]
pub enum ClusterOp {
    AddNode(NodeInfo),
    RemoveNode {
        id: u64,
        drain: bool,
    },
    /// Move one copy of a shard (or of a user partition).
    MoveShard {
        kind: MapKind,
        shard: u32,
        from: u64,
        to: u64,
    },
    Rebalance {
        dry_run: bool,
        max_concurrent: Option<usize>,
    },
    SetReplication {
        kind: MapKind,
        replication: u32,
        dry_run: bool,
    },
    /// Cancel queued transfers: all of both maps, or one unit's.
    CancelMoves {
        only: Option<(MapKind, u32)>,
    },
    SetSetting {
        key: String,
        value: String,
    },
}

impl ClusterOp {
    /// `move-shard --shard S` or `--user-partition P` (the CLI refuses both).
    pub fn move_copy(
        shard: Option<u32>,
        user_partition: Option<u32>,
        from: u64,
        to: u64,
    ) -> Result<ClusterOp> {
        let (kind, shard) = match (shard, user_partition) {
            (_, Some(p)) => (MapKind::UserPartitions, p),
            (Some(s), None) => (MapKind::Shards, s),
            (None, None) => bail!("give --shard N or --user-partition N"),
        };
        Ok(ClusterOp::MoveShard {
            kind,
            shard,
            from,
            to,
        })
    }

    /// `cancel-moves`, of everything or of one shard or user partition.
    pub fn cancel(shard: Option<u32>, user_partition: Option<u32>) -> ClusterOp {
        let only = match (shard, user_partition) {
            (_, Some(p)) => Some((MapKind::UserPartitions, p)),
            (Some(s), None) => Some((MapKind::Shards, s)),
            (None, None) => None,
        };
        ClusterOp::CancelMoves { only }
    }
}

/// What a command did (or, with `--dry-run`, would do).
#[derive(Debug, Clone, serde::Serialize)]
pub struct OpReport {
    pub action: String,
    /// False for a dry run or when there was nothing to do.
    pub applied: bool,
    /// Raft log index of the proposed command.
    pub log_index: Option<u64>,
    pub transfers: Vec<Transfer>,
    /// Transfers of user partition copies.
    pub partition_transfers: Vec<Transfer>,
    /// Replicas per node before and after the transfers (of the map the
    /// command acted on; the shard map for rebalance and drain).
    pub replicas_before: BTreeMap<u64, usize>,
    pub replicas_after: BTreeMap<u64, usize>,
    pub message: String,
}

/// Runs `op` against the node at `addr` (its internal cluster address,
/// over mTLS with `tls`).
pub fn run(addr: &str, token: &str, tls: Option<&NodeTls>, op: ClusterOp) -> Result<OpReport> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(addr, token, tls, op))
}

async fn run_async(
    addr: &str,
    token: &str,
    tls: Option<&NodeTls>,
    op: ClusterOp,
) -> Result<OpReport> {
    let (_, view) = super::fetch_view_over(addr, tls).await?.ok_or_else(|| {
        anyhow!("{addr} does not answer the cluster protocol; give a node's internal address (cluster.internal)")
    })?;
    let map = view.shard_map.clone();
    let partitions = view.partition_map.clone();
    let mut report = OpReport {
        action: String::new(),
        applied: false,
        log_index: None,
        transfers: Vec::new(),
        partition_transfers: Vec::new(),
        replicas_before: map
            .as_ref()
            .map(ShardMap::replica_counts)
            .unwrap_or_default(),
        replicas_after: BTreeMap::new(),
        message: String::new(),
    };
    let command = match op {
        ClusterOp::AddNode(info) => {
            report.action = format!("add node {}", info.id);
            if let Some(known) = view.nodes.get(&info.id) {
                if known.status == NodeStatus::Removed {
                    bail!(
                        "node {} was removed; ids are never reused, start the node with a new id",
                        info.id
                    );
                }
            }
            report.message = format!(
                "node {} registered at {}; the leader adds it to Raft as a learner and promotes \
                 learners while there are fewer than 3 voters (5 once 5 nodes are live); \
                 run `funnel admin rebalance` to give it replicas",
                info.id, info.internal
            );
            Command::RegisterNode(info)
        }
        ClusterOp::RemoveNode { id, drain } => {
            report.action = format!("remove node {id}");
            let node = view
                .nodes
                .get(&id)
                .ok_or_else(|| anyhow!("node {id} is not a member (see funnel admin status)"))?;
            if node.status == NodeStatus::Removed {
                bail!("node {id} was already removed");
            }
            let map = need_map(&map)?;
            for (kind, m) in [
                (MapKind::Shards, Some(map)),
                (MapKind::UserPartitions, partitions.as_ref()),
            ] {
                let held = m.map(|m| m.shards_on(id)).unwrap_or_default();
                if !held.is_empty() && !drain {
                    bail!(
                        "node {id} holds copies of {kind}s {held:?}; run `funnel admin remove-node --drain {id}` to move them off first"
                    );
                }
            }
            no_pending(&view)?;
            let mut nodes = view.nodes.clone();
            if let Some(n) = nodes.get_mut(&id) {
                n.status = NodeStatus::Draining;
            }
            let plan = plan_drain(map, &nodes, id).map_err(|e| anyhow!("{e}"))?;
            report.transfers = plan.into_iter().map(Transfer::from).collect();
            if let Some(pm) = &partitions {
                let plan = plan_drain(pm, &nodes, id).map_err(|e| anyhow!("{e}"))?;
                report.partition_transfers = plan.into_iter().map(Transfer::from).collect();
            }
            report.message = format!(
                "node {id} is Draining: {} shard replicas and {} user partition copies move off \
                 it; once it holds none the leader removes it from Raft and marks it Removed \
                 (then stop its process)",
                report.transfers.len(),
                report.partition_transfers.len()
            );
            // the partitions' moves go first: the drain is what the
            // command's log index reports, and a refused drain leaves the
            // partitions' moves harmlessly balancing
            if !report.partition_transfers.is_empty() {
                let queue = MapOp::QueueTransfers(report.partition_transfers.clone());
                propose(addr, token, tls, &Command::Partitions(queue)).await?;
            }
            Command::DrainNode {
                id,
                transfers: report.transfers.clone(),
            }
        }
        ClusterOp::MoveShard {
            kind,
            shard,
            from,
            to,
        } => {
            report.action = format!("move {kind} {shard} from node {from} to node {to}");
            let t = vec![Transfer {
                shard,
                from: Some(from),
                to: Some(to),
            }];
            report.message = "queued; watch it with `funnel admin status`".to_string();
            match kind {
                MapKind::Shards => {
                    need_map(&map)?;
                    report.transfers = t.clone();
                }
                MapKind::UserPartitions => report.partition_transfers = t.clone(),
            }
            Command::for_map(kind, MapOp::QueueTransfers(t))
        }
        ClusterOp::Rebalance {
            dry_run,
            max_concurrent,
        } => {
            report.action = "rebalance".to_string();
            let map = need_map(&map)?;
            no_pending(&view)?;
            let plan = plan_rebalance(map, &view.nodes, usize::MAX);
            report.transfers = plan.into_iter().map(Transfer::from).collect();
            report.replicas_after = counts_after(map, &report.transfers);
            if let Some(pm) = &partitions {
                let plan = plan_rebalance(pm, &view.nodes, usize::MAX);
                report.partition_transfers = plan.into_iter().map(Transfer::from).collect();
            }
            let moves = report.transfers.len() + report.partition_transfers.len();
            if moves == 0 {
                report.message = "replicas are balanced; nothing to move".to_string();
                return Ok(report);
            }
            if dry_run {
                report.message = format!("dry run: {moves} moves would balance the replicas");
                return Ok(report);
            }
            if let Some(n) = max_concurrent {
                if n == 0 {
                    bail!("--max-concurrent must be at least 1");
                }
                propose(
                    addr,
                    token,
                    tls,
                    &Command::SetSetting {
                        key: SETTING_MAX_CONCURRENT.to_string(),
                        value: n.to_string(),
                    },
                )
                .await?;
            }
            report.message = format!(
                "queued {moves} moves; the leader runs them a few at a time (`funnel admin status`)"
            );
            let both = (&report.transfers[..], &report.partition_transfers[..]);
            both_maps(addr, token, tls, both, MapOp::QueueTransfers).await?
        }
        ClusterOp::SetReplication {
            kind,
            replication,
            dry_run,
        } => {
            report.action = format!("set {kind} replication to {replication}");
            let map = match kind {
                MapKind::Shards => need_map(&map)?,
                MapKind::UserPartitions => need_partitions(&partitions)?,
            };
            no_pending(&view)?;
            report.replicas_before = map.replica_counts();
            let transfers =
                plan_replication(map, &view.nodes, replication).map_err(|e| anyhow!("{e}"))?;
            report.replicas_after = counts_after(map, &transfers);
            match kind {
                MapKind::Shards => report.transfers = transfers.clone(),
                MapKind::UserPartitions => report.partition_transfers = transfers.clone(),
            }
            if dry_run {
                report.message = format!(
                    "dry run: {} copies would be added or dropped",
                    transfers.len()
                );
                return Ok(report);
            }
            report.message = format!(
                "{kind} replication {} -> {replication}: {} copies queued to be added or dropped",
                map.replication,
                transfers.len()
            );
            Command::for_map(
                kind,
                MapOp::SetReplication {
                    replication,
                    transfers,
                },
            )
        }
        ClusterOp::CancelMoves { only } => {
            report.action = "cancel queued transfers".to_string();
            let pick =
                |kind: MapKind, queue: &[(Transfer, crate::cluster::Phase)]| -> Vec<Transfer> {
                    queue
                        .iter()
                        .map(|(t, _)| *t)
                        .filter(|t| only.is_none_or(|(k, s)| k == kind && t.shard == s))
                        .collect()
                };
            report.transfers = pick(MapKind::Shards, &view.transfers);
            report.partition_transfers = pick(MapKind::UserPartitions, &view.partition_transfers);
            if report.transfers.is_empty() && report.partition_transfers.is_empty() {
                report.message = "no matching transfers are queued".to_string();
                return Ok(report);
            }
            report.message = "cancelled; replicas stay where they are now (a copy that was \
                              loading finishes and serves)"
                .to_string();
            let both = (&report.transfers[..], &report.partition_transfers[..]);
            both_maps(addr, token, tls, both, MapOp::CancelTransfers).await?
        }
        ClusterOp::SetSetting { key, value } => {
            report.action = format!("set {key} = {value:?}");
            // the driver reads these as numbers; refuse what it would ignore
            let numeric = [SETTING_MAX_CONCURRENT, SETTING_DRAIN_GRACE_MS];
            if numeric.contains(&key.as_str())
                && !value.is_empty()
                && !value.parse::<u64>().is_ok_and(|n| n > 0)
            {
                bail!("{key} takes a whole number above 0 (or \"\" to restore the default), not {value:?}");
            }
            if key == SETTING_AUTO_REBALANCE && !matches!(value.as_str(), "" | "true" | "false") {
                bail!("{key} takes true or false (or \"\" to restore the default), not {value:?}");
            }
            if key == SETTING_REPLACE_DEAD_AFTER
                && !value.is_empty()
                && !value.parse::<u64>().is_ok_and(|n| n <= 7 * 24 * 3600)
            {
                bail!("{key} takes whole seconds from 0 (never) to 604800 (or \"\" to restore the default), not {value:?}");
            }
            report.message = "set".to_string();
            Command::SetSetting { key, value }
        }
    };
    let index = propose(addr, token, tls, &command).await?;
    report.applied = true;
    report.log_index = Some(index);
    Ok(report)
}

async fn propose(addr: &str, token: &str, tls: Option<&NodeTls>, command: &Command) -> Result<u64> {
    match propose_via(addr, command, 0, token, tls, Duration::from_secs(15)).await {
        Ok((_, index)) => Ok(index),
        Err(ClusterError::Rejected(reason)) => bail!("the cluster refused: {reason}"),
        Err(e) => bail!("{e}"),
    }
}

/// The command that applies `op` to the shard and the partition transfers
/// of `both`: when both are non-empty the partitions' command is proposed
/// here first and the shards' returned (its log index is the report's).
async fn both_maps(
    addr: &str,
    token: &str,
    tls: Option<&NodeTls>,
    both: (&[Transfer], &[Transfer]),
    op: fn(Vec<Transfer>) -> MapOp,
) -> Result<Command> {
    let (shards, partitions) = both;
    if shards.is_empty() {
        return Ok(Command::Partitions(op(partitions.to_vec())));
    }
    if !partitions.is_empty() {
        propose(
            addr,
            token,
            tls,
            &Command::Partitions(op(partitions.to_vec())),
        )
        .await?;
    }
    Ok(Command::for_map(MapKind::Shards, op(shards.to_vec())))
}

fn need_map(map: &Option<ShardMap>) -> Result<&ShardMap> {
    map.as_ref()
        .ok_or_else(|| anyhow!("the cluster has no shard map yet; wait until it is created"))
}

fn need_partitions(map: &Option<ShardMap>) -> Result<&ShardMap> {
    map.as_ref().ok_or_else(|| {
        anyhow!("the cluster has no user partition map yet; the leader creates it once every configured member has registered")
    })
}

/// Planned commands are computed from the current maps; with transfers
/// still queued a map is about to change.
fn no_pending(view: &ClusterView) -> Result<()> {
    let queued = view.transfers.len() + view.partition_transfers.len();
    if queued > 0 {
        bail!(
            "{queued} transfers are still queued; wait until `funnel admin status` shows none \
             (or `funnel admin cancel-moves`), then run this again"
        );
    }
    Ok(())
}

fn counts_after(map: &ShardMap, transfers: &[Transfer]) -> BTreeMap<u64, usize> {
    crate::cluster::moves::projected(map, transfers).replica_counts()
}

/// The operator's text for a report.
pub fn render(r: &OpReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}: {}", r.action, r.message);
    for t in &r.transfers {
        let _ = writeln!(out, "  {t}");
    }
    for t in &r.partition_transfers {
        let _ = writeln!(out, "  {}", t.describe(MapKind::UserPartitions));
    }
    let moved = !r.transfers.is_empty() || !r.partition_transfers.is_empty();
    if !r.replicas_after.is_empty() && moved {
        let _ = writeln!(out, "replicas per node (before -> after):");
        let nodes: std::collections::BTreeSet<u64> = r
            .replicas_before
            .keys()
            .chain(r.replicas_after.keys())
            .copied()
            .collect();
        for n in nodes {
            let _ = writeln!(
                out,
                "  node {n}: {} -> {}",
                r.replicas_before.get(&n).copied().unwrap_or(0),
                r.replicas_after.get(&n).copied().unwrap_or(0)
            );
        }
    }
    if let Some(i) = r.log_index {
        let _ = writeln!(out, "committed at log index {i}");
    }
    out
}
