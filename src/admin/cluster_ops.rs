//! `funnel admin` commands that change a cluster: add-node, remove-node
//! --drain, move-shard, rebalance, set-replication, cancel-moves,
//! set-setting.
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
    plan_drain, plan_rebalance, propose_via, ClusterError, ClusterView, Command, NodeInfo,
    NodeStatus, ShardMap, Transfer,
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
    MoveShard {
        shard: u32,
        from: u64,
        to: u64,
    },
    Rebalance {
        dry_run: bool,
        max_concurrent: Option<usize>,
    },
    SetReplication {
        replication: u32,
        dry_run: bool,
    },
    CancelMoves {
        shard: Option<u32>,
    },
    SetSetting {
        key: String,
        value: String,
    },
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
    /// Replicas per node before and after the transfers.
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
    let mut report = OpReport {
        action: String::new(),
        applied: false,
        log_index: None,
        transfers: Vec::new(),
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
            let held = map.shards_on(id);
            if !held.is_empty() && !drain {
                bail!(
                    "node {id} holds replicas of shards {held:?}; run `funnel admin remove-node --drain {id}` to move them off first"
                );
            }
            no_pending(&view)?;
            let mut nodes = view.nodes.clone();
            if let Some(n) = nodes.get_mut(&id) {
                n.status = NodeStatus::Draining;
            }
            let plan = plan_drain(map, &nodes, id).map_err(|e| anyhow!("{e}"))?;
            report.transfers = plan.into_iter().map(Transfer::from).collect();
            report.message = format!(
                "node {id} is Draining: {} replicas move off it; once it holds none the leader \
                 removes it from Raft and marks it Removed (then stop its process)",
                report.transfers.len()
            );
            Command::DrainNode {
                id,
                transfers: report.transfers.clone(),
            }
        }
        ClusterOp::MoveShard { shard, from, to } => {
            report.action = format!("move shard {shard} from node {from} to node {to}");
            need_map(&map)?;
            report.transfers = vec![Transfer {
                shard,
                from: Some(from),
                to: Some(to),
            }];
            report.message = "queued; watch it with `funnel admin status`".to_string();
            Command::QueueTransfers(report.transfers.clone())
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
            if report.transfers.is_empty() {
                report.message = "replicas are balanced; nothing to move".to_string();
                return Ok(report);
            }
            if dry_run {
                report.message = format!(
                    "dry run: {} moves would balance the replicas",
                    report.transfers.len()
                );
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
                "queued {} moves; the leader runs them a few at a time (`funnel admin status`)",
                report.transfers.len()
            );
            Command::QueueTransfers(report.transfers.clone())
        }
        ClusterOp::SetReplication {
            replication,
            dry_run,
        } => {
            report.action = format!("set replication to {replication}");
            let map = need_map(&map)?;
            no_pending(&view)?;
            report.transfers =
                plan_replication(map, &view.nodes, replication).map_err(|e| anyhow!("{e}"))?;
            report.replicas_after = counts_after(map, &report.transfers);
            if dry_run {
                report.message = format!(
                    "dry run: {} copies would be added or dropped",
                    report.transfers.len()
                );
                return Ok(report);
            }
            report.message = format!(
                "replication {} -> {replication}: {} copies queued to be added or dropped",
                map.replication,
                report.transfers.len()
            );
            Command::SetReplication {
                replication,
                transfers: report.transfers.clone(),
            }
        }
        ClusterOp::CancelMoves { shard } => {
            report.action = "cancel queued transfers".to_string();
            report.transfers = view
                .transfers
                .iter()
                .map(|(t, _)| *t)
                .filter(|t| shard.is_none_or(|s| t.shard == s))
                .collect();
            if report.transfers.is_empty() {
                report.message = "no matching transfers are queued".to_string();
                return Ok(report);
            }
            report.message = "cancelled; replicas stay where they are now (a copy that was \
                              loading finishes and serves)"
                .to_string();
            Command::CancelTransfers(report.transfers.clone())
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

fn need_map(map: &Option<ShardMap>) -> Result<&ShardMap> {
    map.as_ref()
        .ok_or_else(|| anyhow!("the cluster has no shard map yet; wait until it is created"))
}

/// Planned commands are computed from the current map; with transfers
/// still queued that map is about to change.
fn no_pending(view: &ClusterView) -> Result<()> {
    if !view.transfers.is_empty() {
        bail!(
            "{} shard transfers are still queued; wait until `funnel admin status` shows none \
             (or `funnel admin cancel-moves`), then run this again",
            view.transfers.len()
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
    if !r.replicas_after.is_empty() && !r.transfers.is_empty() {
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
