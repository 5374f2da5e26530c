//! The leader's side of cluster changes: it carries queued transfers of
//! shard and user partition copies forward one Raft command at a time and keeps Raft membership in line
//! with the registered members (new nodes join as learners, learners are
//! promoted up to 3 or 5 voters once they caught up, drained nodes leave).
//! This is also how a new cluster grows past its bootstrap node
//! (`control::formation`). A joining node's
//! request to be registered lives here too.
//!
//! Everything is driven from the replicated state, so a new leader resumes
//! where the old one stopped; the only local memory is when this leader
//! first saw each replica Draining (a new leader simply waits the grace
//! period again).
//!
//! Owns: `MoveDriver`, `drive`, `join_cluster`. Must not touch: the rules of
//! transfers (`cluster::moves`), shard loading (`control::reconcile`
//! loads and activates a node's own replicas), request handling.

use super::link::ClusterLink;
use crate::cluster::moves::{
    caught_up, next_steps, next_voters, plan_dead_replacement, DEFAULT_DRAIN_GRACE_MS,
    SETTING_AUTO_REBALANCE, SETTING_DRAIN_GRACE_MS, SETTING_MAX_CONCURRENT,
    SETTING_REPLACE_DEAD_AFTER,
};
use crate::cluster::{
    propose_via, ClusterError, Command, MapKind, MapOp, NodeInfo, NodeStatus, ReplicaState,
    Transfer,
};
use crate::config::ClusterConfig;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The driver's memory between rounds.
#[derive(Default)]
pub struct MoveDriver {
    /// When this node, as leader, first saw each (map, unit, node) Draining.
    draining_since: HashMap<(MapKind, u32, u64), Instant>,
    /// Members last found dead (logged when the set changes).
    dead: BTreeSet<u64>,
    /// Since when this leader has seen a settled, whole cluster whose
    /// placement is skewed (`auto_rebalance`), per map.
    skewed_since: HashMap<MapKind, Instant>,
}

/// How long a settled, whole cluster must stay skewed before the leader
/// balances it by itself: a member that just came back, a transfer that
/// just finished or a node that just joined first settle.
const AUTO_REBALANCE_AFTER: Duration = Duration::from_secs(10);
/// A member unanswered for longer than this is not counted as reachable
/// (the leader probes every member every half second).
const REACHABLE_WITHIN: Duration = Duration::from_secs(2);

/// One round on the leader (nothing elsewhere): membership first, then the
/// transfer queue.
pub async fn drive(
    link: &ClusterLink,
    cc: &ClusterConfig,
    driver: &mut MoveDriver,
) -> Result<(), ClusterError> {
    if !link.is_leader() {
        driver.draining_since.clear();
        return Ok(());
    }
    let membership = align_membership(link).await;
    let mut result = membership;
    for kind in MapKind::ALL {
        let transfers = advance_transfers(link, cc, driver, kind).await;
        let dead = replace_dead(link, cc, driver, kind).await;
        let balance = auto_rebalance(link, cc, driver, kind).await;
        result = result.and(transfers).and(dead).and(balance);
    }
    result
}

/// Balances a skewed placement (`cluster::plan_rebalance`, queued as
/// transfers the driver then runs a few at a time) once the cluster has
/// been settled and whole for `AUTO_REBALANCE_AFTER`: every member
/// reachable, every copy Active, nothing queued. A member that is away is
/// `replace_dead`'s; moving copies onto it could never finish.
async fn auto_rebalance(
    link: &ClusterLink,
    cc: &ClusterConfig,
    driver: &mut MoveDriver,
    kind: MapKind,
) -> Result<(), ClusterError> {
    let on: bool = setting(link, SETTING_AUTO_REBALANCE).unwrap_or(cc.auto_rebalance);
    let plan = {
        let st = link.raft.state();
        let st = st.read();
        let whole = st
            .nodes
            .values()
            .filter(|n| n.id != link.id() && n.status != NodeStatus::Removed)
            .all(|n| {
                link.liveness
                    .unreachable_for(n.id)
                    .is_some_and(|d| d < REACHABLE_WITHIN)
            });
        match st.map(kind) {
            Some(map) if on && whole && st.queue(kind).is_empty() && all_active(map) => {
                crate::cluster::plan_rebalance(map, &st.nodes, usize::MAX)
            }
            _ => Vec::new(),
        }
    };
    if plan.is_empty() {
        driver.skewed_since.remove(&kind);
        return Ok(());
    }
    let since = *driver.skewed_since.entry(kind).or_insert_with(Instant::now);
    if since.elapsed() < AUTO_REBALANCE_AFTER {
        return Ok(());
    }
    driver.skewed_since.remove(&kind);
    let transfers: Vec<Transfer> = plan.into_iter().map(Transfer::from).collect();
    match link
        .raft
        .write_as_leader(Command::for_map(
            kind,
            MapOp::QueueTransfers(transfers.clone()),
        ))
        .await
    {
        Ok(_) => tracing::info!(
            moves = transfers.len(),
            map = %kind,
            "placement skewed on a settled cluster; queued moves to balance it (cluster.auto_rebalance)"
        ),
        // the state moved on since it was read; the next round re-plans
        Err(ClusterError::Rejected(reason)) => {
            tracing::debug!(%reason, "balancing moves refused; planning again later")
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

fn all_active(map: &crate::cluster::ShardMap) -> bool {
    map.replicas
        .iter()
        .flatten()
        .all(|r| r.state == ReplicaState::Active)
}

/// Re-places the shard copies of members the leader has not reached for
/// longer than `cluster.replace_dead_after` (0: never). The dead node stays
/// a member: when it comes back it catches up from Raft, finds its copies
/// dropped (or Draining, then dropped) and holds nothing until an operator
/// runs `funnel admin rebalance`.
async fn replace_dead(
    link: &ClusterLink,
    cc: &ClusterConfig,
    driver: &mut MoveDriver,
    kind: MapKind,
) -> Result<(), ClusterError> {
    let after: u64 = setting(link, SETTING_REPLACE_DEAD_AFTER).unwrap_or(cc.replace_dead_after);
    if after == 0 {
        return Ok(());
    }
    let after = Duration::from_secs(after);
    let (map, nodes, queue) = {
        let st = link.raft.state();
        let st = st.read();
        (
            st.map(kind).cloned(),
            st.nodes.clone(),
            st.queue(kind).to_vec(),
        )
    };
    let Some(map) = map else { return Ok(()) };
    let dead: BTreeSet<u64> = nodes
        .values()
        .filter(|n| n.id != link.id() && n.status != NodeStatus::Removed)
        .filter(|n| {
            link.liveness
                .unreachable_for(n.id)
                .is_some_and(|d| d >= after)
        })
        .map(|n| n.id)
        .collect();
    // both maps see the same members; the set is logged once
    if kind == MapKind::Shards && dead != driver.dead {
        if !dead.is_empty() {
            tracing::warn!(nodes = ?dead, after_s = after.as_secs(), "members unreachable for too long; re-placing their shard and user partition copies");
        }
        driver.dead = dead.clone();
    }
    let plan = plan_dead_replacement(&map, &nodes, &queue, &dead);
    if plan.is_empty() {
        return Ok(());
    }
    if !plan.cancel.is_empty() {
        link.raft
            .write_as_leader(Command::for_map(
                kind,
                MapOp::CancelTransfers(plan.cancel.clone()),
            ))
            .await?;
        tracing::warn!(map = %kind, transfers = ?plan.cancel, "cancelled transfers onto unreachable members");
        // plan again from the state without them
        return Ok(());
    }
    for (shard, node) in &plan.drain {
        let cmd = Command::for_map(
            kind,
            MapOp::SetReplicaState {
                shard: *shard,
                node: *node,
                state: ReplicaState::Draining,
            },
        );
        match link.raft.write_as_leader(cmd).await {
            Ok(_) => {}
            // the map moved on since it was read; the next round re-plans
            Err(ClusterError::Rejected(reason)) => {
                tracing::debug!(map = %kind, shard_id = shard, node_id = node, %reason, "draining a dead copy refused")
            }
            Err(e) => return Err(e),
        }
    }
    if !plan.transfers.is_empty() {
        match link
            .raft
            .write_as_leader(Command::for_map(
                kind,
                MapOp::QueueTransfers(plan.transfers.clone()),
            ))
            .await
        {
            Ok(_) => tracing::warn!(
                map = %kind,
                transfers = plan.transfers.len(),
                "queued re-replication of unreachable members' copies"
            ),
            Err(ClusterError::Rejected(reason)) => {
                tracing::debug!(%reason, "re-replication refused; planning again next round")
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn align_membership(link: &ClusterLink) -> Result<(), ClusterError> {
    let (voters, learners, joint, ready) = {
        let m = link.raft.metrics().borrow().clone();
        let mem = m.membership_config.membership();
        let voters: BTreeSet<u64> = mem.voter_ids().collect();
        let learners: BTreeSet<u64> = mem.learner_ids().collect();
        // how far the leader has seen each member's log match its own
        let matched: BTreeMap<u64, Option<u64>> = m
            .replication
            .as_ref()
            .map(|r| r.iter().map(|(id, l)| (*id, l.map(|l| l.index))).collect())
            .unwrap_or_default();
        let ready = caught_up(&matched, m.last_applied.map(|l| l.index));
        (voters, learners, mem.get_joint_config().len() > 1, ready)
    };
    if joint {
        // a membership change is still committing; look again next round
        return Ok(());
    }
    let (nodes, emptied) = {
        let st = link.raft.state();
        let st = st.read();
        let emptied: Vec<u64> = st
            .nodes
            .values()
            .filter(|n| n.status == NodeStatus::Draining)
            .filter(|n| {
                MapKind::ALL.into_iter().all(|kind| {
                    st.map(kind).is_none_or(|m| m.shards_on(n.id).is_empty())
                        && !st
                            .queue(kind)
                            .iter()
                            .any(|t| t.from == Some(n.id) || t.to == Some(n.id))
                })
            })
            .map(|n| n.id)
            .collect();
        (st.nodes.clone(), emptied)
    };
    for n in nodes.values() {
        let known = voters.contains(&n.id) || learners.contains(&n.id);
        if n.status == NodeStatus::Active && !known {
            link.raft.add_learner(n.id, n.clone(), false).await?;
            tracing::info!(node_id = n.id, internal = %n.internal, "added to Raft as a learner");
            // the next round sees the new membership
            return Ok(());
        }
    }
    // learners are promoted once caught up (a member that is not up yet
    // waits as a learner and holds nobody else up)
    let want = next_voters(&voters, &learners, &nodes, link.id(), &ready);
    if want != voters {
        link.raft.change_membership(want.clone()).await?;
        tracing::info!(voters = ?want, "Raft voters changed");
        return Ok(());
    }
    for id in emptied {
        if voters.contains(&id) {
            // demoted by `desired_voters` first; removed in a later round
            continue;
        }
        if learners.contains(&id) {
            link.raft.remove_nodes(BTreeSet::from([id])).await?;
            tracing::info!(node_id = id, "drained node left Raft membership");
            return Ok(());
        }
        link.raft
            .write_as_leader(Command::SetNodeStatus {
                id,
                status: NodeStatus::Removed,
            })
            .await?;
        tracing::info!(node_id = id, "drained node removed");
    }
    Ok(())
}

fn setting<T: std::str::FromStr>(link: &ClusterLink, key: &str) -> Option<T> {
    let st = link.raft.state();
    let st = st.read();
    st.settings.get(key).and_then(|v| v.parse().ok())
}

async fn advance_transfers(
    link: &ClusterLink,
    cc: &ClusterConfig,
    driver: &mut MoveDriver,
    kind: MapKind,
) -> Result<(), ClusterError> {
    let (map, queue) = {
        let st = link.raft.state();
        let st = st.read();
        (st.map(kind).cloned(), st.queue(kind).to_vec())
    };
    let Some(map) = map else { return Ok(()) };
    // start the grace clock of every Draining copy; forget the rest
    let now = Instant::now();
    let draining: BTreeSet<(MapKind, u32, u64)> = map
        .replicas
        .iter()
        .enumerate()
        .flat_map(|(s, rs)| {
            rs.iter()
                .filter(|r| r.state == ReplicaState::Draining)
                .map(move |r| (kind, s as u32, r.node))
        })
        .collect();
    driver
        .draining_since
        .retain(|k, _| k.0 != kind || draining.contains(k));
    for k in &draining {
        driver.draining_since.entry(*k).or_insert(now);
    }
    if queue.is_empty() {
        return Ok(());
    }
    let max: usize = setting(link, SETTING_MAX_CONCURRENT)
        .unwrap_or(cc.max_concurrent_transfers)
        .max(1);
    let grace = Duration::from_millis(
        setting(link, SETTING_DRAIN_GRACE_MS).unwrap_or(DEFAULT_DRAIN_GRACE_MS),
    );
    let steps = next_steps(kind, &map, &queue, max, |s, n| {
        driver
            .draining_since
            .get(&(kind, s, n))
            .is_some_and(|t| now.duration_since(*t) >= grace)
    });
    for step in steps {
        let what = format!("{step:?}");
        match link.raft.write_as_leader(step.clone()).await {
            Ok(_) => tracing::info!(step = %what, "transfer step"),
            Err(ClusterError::Rejected(reason)) => {
                tracing::warn!(step = %what, %reason, "transfer step refused");
                // a target that can no longer take the copy: give the transfer
                // up; unless the copy is there already (an earlier attempt of
                // this step committed after its caller stopped waiting)
                let added = match step {
                    Command::AddReplica { shard, node, .. }
                    | Command::Partitions(MapOp::AddReplica { shard, node, .. }) => {
                        Some((shard, node))
                    }
                    _ => None,
                };
                if let Some((shard, node)) = added {
                    let placed = {
                        let st = link.raft.state();
                        let st = st.read();
                        st.map(kind)
                            .is_some_and(|m| m.replica(shard, node).is_some())
                    };
                    if placed {
                        continue;
                    }
                    let stuck: Vec<Transfer> = queue
                        .iter()
                        .filter(|t| t.shard == shard && t.to == Some(node))
                        .copied()
                        .collect();
                    if !stuck.is_empty() {
                        link.raft
                            .write_as_leader(Command::for_map(kind, MapOp::CancelTransfers(stuck)))
                            .await?;
                        tracing::warn!(map = %kind, shard_id = shard, node_id = node, "transfer cancelled");
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// For a node started with `cluster.join`: until this node appears in the
/// replicated member list, asks the member at `join` (every two seconds) to
/// register it; the leader then adds it to Raft as a learner.
pub async fn join_cluster(
    link: Arc<ClusterLink>,
    info: NodeInfo,
    join: String,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let known = {
            let st = link.raft.state();
            let st = st.read();
            st.nodes.contains_key(&info.id)
        };
        if known {
            return;
        }
        let cmd = Command::RegisterNode(info.clone());
        let token = link.raft.admin_token().to_string();
        let tls = link.raft.tls();
        match propose_via(&join, &cmd, info.id, &token, tls, Duration::from_secs(5)).await {
            Ok(_) => tracing::info!(node_id = info.id, via = %join, "asked to join the cluster"),
            Err(ClusterError::Rejected(reason)) => {
                tracing::error!(node_id = info.id, %reason, "the cluster refused this node; fix its config")
            }
            Err(e) => {
                tracing::warn!(node_id = info.id, via = %join, error = %e, "cannot reach the member to join through; retrying")
            }
        }
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}
