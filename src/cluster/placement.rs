//! Where shard replicas go: the initial placement of a new cluster and the
//! move plans for rebalancing and draining.
//!
//! Owns: pure planning functions over a `ShardMap` and the node list. Must
//! not touch: Raft or the state itself. Plans are proposals; the admin tool
//! queues each `Move` as a transfer and the leader's driver (`moves`) turns
//! it into AddReplica(to, Loading) -> load -> SetReplicaState(to, Active) ->
//! SetReplicaState(from, Draining) -> DropReplica(from); the state machine
//! re-validates every step.
//!
//! All functions are deterministic: ties break on the lowest node id and the
//! lowest shard id, so two nodes planning from the same state agree.

use std::collections::{BTreeMap, BTreeSet};

use super::state::{NodeInfo, NodeStatus, ShardMap};
use super::types::NodeId;

/// Move one replica of `shard` from node `from` to node `to`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Move {
    pub shard: u32,
    pub from: NodeId,
    pub to: NodeId,
}

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error(
        "shard count and replication must both be at least 1 (got {shards} shards x {replication})"
    )]
    Empty { shards: u32, replication: u32 },
    #[error("replication {replication} needs {replication} distinct Active nodes but only {nodes} are available; add nodes or lower the replication")]
    TooFewNodes { replication: u32, nodes: usize },
    #[error("shard {shard} cannot leave node {node}: every other Active node already holds it; add a node first")]
    NoTarget { shard: u32, node: NodeId },
}

/// Places `shards` x `replication` replicas on `nodes` (duplicates ignored):
/// replica k of the flattened (shard, replica) sequence goes to node
/// k mod n of the sorted node list. Consecutive positions are distinct nodes
/// whenever replication <= n, and every node gets floor or ceil of
/// shards*replication/n replicas.
pub fn initial_placement(
    shards: u32,
    replication: u32,
    nodes: &[NodeId],
) -> Result<Vec<Vec<NodeId>>, PlacementError> {
    if shards == 0 || replication == 0 {
        return Err(PlacementError::Empty {
            shards,
            replication,
        });
    }
    let nodes: Vec<NodeId> = nodes
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if (replication as usize) > nodes.len() {
        return Err(PlacementError::TooFewNodes {
            replication,
            nodes: nodes.len(),
        });
    }
    let r = replication as usize;
    Ok((0..shards as usize)
        .map(|s| (0..r).map(|i| nodes[(s * r + i) % nodes.len()]).collect())
        .collect())
}

/// Which shards each node holds, with every Active node present (possibly
/// empty) so it can be chosen as a target.
fn holdings(map: &ShardMap, active: &[NodeId]) -> BTreeMap<NodeId, BTreeSet<u32>> {
    let mut held: BTreeMap<NodeId, BTreeSet<u32>> =
        active.iter().map(|&n| (n, BTreeSet::new())).collect();
    for (shard, replicas) in map.replicas.iter().enumerate() {
        for r in replicas {
            held.entry(r.node).or_default().insert(shard as u32);
        }
    }
    held
}

fn active_nodes(nodes: &BTreeMap<NodeId, NodeInfo>) -> Vec<NodeId> {
    nodes
        .values()
        .filter(|n| n.status == NodeStatus::Active)
        .map(|n| n.id)
        .collect()
}

/// The Active node (other than `exclude`) with the fewest replicas that does
/// not hold `shard`; ties go to the lowest id.
fn least_loaded_target(
    held: &BTreeMap<NodeId, BTreeSet<u32>>,
    active: &[NodeId],
    shard: u32,
    exclude: NodeId,
) -> Option<NodeId> {
    active
        .iter()
        .copied()
        .filter(|&n| n != exclude && !held[&n].contains(&shard))
        .min_by_key(|&n| (held[&n].len(), n))
}

fn apply_move(held: &mut BTreeMap<NodeId, BTreeSet<u32>>, m: Move) {
    if let Some(s) = held.get_mut(&m.from) {
        s.remove(&m.shard);
    }
    held.entry(m.to).or_default().insert(m.shard);
}

/// How unevenly the Active nodes hold replicas: the fewest and the most
/// any of them holds, and how many replicas sit on nodes that are not
/// Active. `None` when there is no Active node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skew {
    pub fewest: usize,
    pub most: usize,
    pub stranded: usize,
}

impl Skew {
    /// Balanced: the Active nodes differ by at most one replica and none
    /// sits elsewhere (what `plan_rebalance` leads to).
    pub fn balanced(&self) -> bool {
        self.most <= self.fewest + 1 && self.stranded == 0
    }
}

/// The placement's `Skew` over the Active nodes.
pub fn skew(map: &ShardMap, nodes: &BTreeMap<NodeId, NodeInfo>) -> Option<Skew> {
    let active = active_nodes(nodes);
    let held = holdings(map, &active);
    let counts: Vec<usize> = active.iter().map(|n| held[n].len()).collect();
    let stranded = held
        .iter()
        .filter(|(n, _)| !active.contains(n))
        .map(|(_, s)| s.len())
        .sum();
    Some(Skew {
        fewest: *counts.iter().min()?,
        most: *counts.iter().max()?,
        stranded,
    })
}

/// Plans at most `max_moves` moves that balance replica counts over the
/// Active nodes. Replicas on nodes that are not Active (draining, removed,
/// unknown) move first, each to the least-loaded eligible node. Then, while
/// the fullest and emptiest Active nodes differ by more than one replica,
/// one replica moves from the fullest to the emptiest (the lowest shard the
/// emptiest does not hold; one exists because the fullest holds more
/// distinct shards). Each such move removes one unit of excess above the
/// balanced target, so the plan uses the fewest moves possible. Replicas in
/// every state count towards a node's load.
pub fn plan_rebalance(
    map: &ShardMap,
    nodes: &BTreeMap<NodeId, NodeInfo>,
    max_moves: usize,
) -> Vec<Move> {
    let active = active_nodes(nodes);
    let mut moves = Vec::new();
    if active.is_empty() {
        return moves;
    }
    let active_set: BTreeSet<NodeId> = active.iter().copied().collect();
    let mut held = holdings(map, &active);

    let stranded: Vec<(NodeId, u32)> = held
        .iter()
        .filter(|(n, _)| !active_set.contains(n))
        .flat_map(|(&n, shards)| shards.iter().map(move |&s| (n, s)))
        .collect();
    for (from, shard) in stranded {
        if moves.len() >= max_moves {
            return moves;
        }
        if let Some(to) = least_loaded_target(&held, &active, shard, from) {
            let m = Move { shard, from, to };
            apply_move(&mut held, m);
            moves.push(m);
        }
    }

    while moves.len() < max_moves {
        let count = |n: &NodeId| held[n].len();
        let fullest = active
            .iter()
            .copied()
            .max_by_key(|n| (count(n), std::cmp::Reverse(*n)));
        let emptiest = active.iter().copied().min_by_key(|n| (count(n), *n));
        let (Some(from), Some(to)) = (fullest, emptiest) else {
            break;
        };
        if count(&from) <= count(&to) + 1 {
            break;
        }
        let shard = held[&from].difference(&held[&to]).next().copied();
        let Some(shard) = shard else {
            // Unreachable by counting (fullest holds more distinct shards than emptiest), but a
            // plan that stops is better than a loop that spins.
            break;
        };
        let m = Move { shard, from, to };
        apply_move(&mut held, m);
        moves.push(m);
    }
    moves
}

/// Plans moving every replica off `node`, each to the least-loaded Active
/// node that does not hold that shard yet (counting the moves planned so
/// far). Fails, naming the shard, when some replica has nowhere to go.
pub fn plan_drain(
    map: &ShardMap,
    nodes: &BTreeMap<NodeId, NodeInfo>,
    node: NodeId,
) -> Result<Vec<Move>, PlacementError> {
    let active = active_nodes(nodes);
    let mut held = holdings(map, &active);
    let mut moves = Vec::new();
    for shard in map.shards_on(node) {
        let to = least_loaded_target(&held, &active, shard, node)
            .ok_or(PlacementError::NoTarget { shard, node })?;
        let m = Move {
            shard,
            from: node,
            to,
        };
        apply_move(&mut held, m);
        moves.push(m);
    }
    Ok(moves)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::state::ReplicaState;
    use crate::rng::Rng;

    fn node_map(active: &[NodeId], draining: &[NodeId]) -> BTreeMap<NodeId, NodeInfo> {
        let mut m = BTreeMap::new();
        for &id in active {
            m.insert(id, NodeInfo::new(id, format!("h{id}:1"), "", ""));
        }
        for &id in draining {
            let mut info = NodeInfo::new(id, format!("h{id}:1"), "", "");
            info.status = NodeStatus::Draining;
            m.insert(id, info);
        }
        m
    }

    fn map_from(placement: Vec<Vec<NodeId>>, replication: u32) -> ShardMap {
        ShardMap::from_placement(placement, replication, ReplicaState::Active)
    }

    /// Applies moves, asserting each is legal: `from` holds the shard and
    /// `to` does not (so no shard ever has two replicas on one node).
    fn apply(map: &ShardMap, moves: &[Move]) -> ShardMap {
        let mut out = map.clone();
        for m in moves {
            let rs = &mut out.replicas[m.shard as usize];
            assert!(
                rs.iter().any(|r| r.node == m.from),
                "{m:?}: source does not hold the shard"
            );
            assert!(
                !rs.iter().any(|r| r.node == m.to),
                "{m:?}: target already holds the shard"
            );
            for r in rs.iter_mut() {
                if r.node == m.from {
                    r.node = m.to;
                }
            }
        }
        out
    }

    fn counts_over(map: &ShardMap, nodes: &[NodeId]) -> Vec<usize> {
        let c = map.replica_counts();
        nodes
            .iter()
            .map(|n| c.get(n).copied().unwrap_or(0))
            .collect()
    }

    /// Fewest moves that can balance `counts` (all nodes eligible): give the
    /// q+1 targets to the fullest nodes and count the excess over targets.
    fn lower_bound(counts: &[usize]) -> usize {
        let total: usize = counts.iter().sum();
        let n = counts.len();
        let (q, r) = (total / n, total % n);
        let mut sorted = counts.to_vec();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        sorted
            .iter()
            .enumerate()
            .map(|(i, &c)| c.saturating_sub(if i < r { q + 1 } else { q }))
            .sum()
    }

    fn assert_distinct(map: &ShardMap) {
        for (s, rs) in map.replicas.iter().enumerate() {
            let set: BTreeSet<_> = rs.iter().map(|r| r.node).collect();
            assert_eq!(
                set.len(),
                rs.len(),
                "shard {s} has two replicas on one node: {rs:?}"
            );
        }
    }

    #[test]
    fn initial_placement_is_balanced_distinct_and_deterministic() {
        for &(shards, replication, n) in &[
            (1u32, 1u32, 1usize),
            (8, 3, 3),
            (7, 2, 5),
            (16, 3, 5),
            (5, 5, 5),
            (3, 2, 7),
        ] {
            let nodes: Vec<NodeId> = (10..10 + n as u64).collect();
            let p = initial_placement(shards, replication, &nodes).unwrap();
            assert_eq!(p.len(), shards as usize);
            let map = map_from(p.clone(), replication);
            assert_distinct(&map);
            for rs in &map.replicas {
                assert_eq!(rs.len(), replication as usize);
            }
            let counts = counts_over(&map, &nodes);
            let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(
                hi - lo <= 1,
                "unbalanced {counts:?} for {shards}x{replication} on {n}"
            );
            assert_eq!(
                counts.iter().sum::<usize>(),
                (shards * replication) as usize
            );

            let mut shuffled = nodes.clone();
            shuffled.reverse();
            shuffled.push(nodes[0]);
            assert_eq!(
                initial_placement(shards, replication, &shuffled).unwrap(),
                p,
                "order or duplicates changed the plan"
            );
        }
    }

    #[test]
    fn initial_placement_refuses_impossible_requests() {
        assert_eq!(
            initial_placement(4, 3, &[1, 2]),
            Err(PlacementError::TooFewNodes {
                replication: 3,
                nodes: 2
            })
        );
        assert_eq!(
            initial_placement(4, 3, &[1, 1, 2]),
            Err(PlacementError::TooFewNodes {
                replication: 3,
                nodes: 2
            }),
            "duplicate node ids must not count as distinct nodes"
        );
        assert!(matches!(
            initial_placement(0, 1, &[1]),
            Err(PlacementError::Empty { .. })
        ));
        assert!(matches!(
            initial_placement(1, 0, &[1]),
            Err(PlacementError::Empty { .. })
        ));
    }

    #[test]
    fn rebalance_after_adding_nodes_is_minimal_and_legal() {
        let map = map_from(initial_placement(12, 3, &[1, 2, 3]).unwrap(), 3);
        let all = [1, 2, 3, 4, 5];
        let nodes = node_map(&all, &[]);
        let before = counts_over(&map, &all);
        assert_eq!(before, vec![12, 12, 12, 0, 0]);
        let moves = plan_rebalance(&map, &nodes, usize::MAX);
        // 36 replicas over 5 nodes: targets 8,7,7,7,7; excess 4+5+5.
        assert_eq!(moves.len(), lower_bound(&before));
        assert_eq!(moves.len(), 14);
        let after = apply(&map, &moves);
        assert_distinct(&after);
        let counts = counts_over(&after, &all);
        assert!(
            counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
            "{counts:?}"
        );
        assert!(
            plan_rebalance(&after, &nodes, usize::MAX).is_empty(),
            "a balanced map needs no moves"
        );
    }

    #[test]
    fn rebalance_respects_max_moves() {
        let map = map_from(initial_placement(12, 3, &[1, 2, 3]).unwrap(), 3);
        let nodes = node_map(&[1, 2, 3, 4, 5], &[]);
        let full = plan_rebalance(&map, &nodes, usize::MAX);
        let first = plan_rebalance(&map, &nodes, 3);
        assert_eq!(first, full[..3].to_vec());
        let rest = plan_rebalance(&apply(&map, &first), &nodes, usize::MAX);
        assert_eq!(
            first.len() + rest.len(),
            full.len(),
            "planning in steps must not cost extra moves"
        );
        assert!(plan_rebalance(&map, &nodes, 0).is_empty());
    }

    #[test]
    fn rebalance_matches_the_lower_bound_on_random_maps() {
        let mut rng = Rng::new(7);
        for case in 0..300 {
            let n = 2 + rng.usize_below(6);
            let replication = 1 + rng.usize_below(n);
            let shards = 1 + rng.usize_below(20);
            let all: Vec<NodeId> = (1..=n as u64).collect();
            // Skewed random placement: prefer low node ids.
            let placement: Vec<Vec<NodeId>> = (0..shards)
                .map(|_| {
                    let mut pool = all.clone();
                    let mut chosen = Vec::new();
                    while chosen.len() < replication {
                        let i = rng.usize_below(pool.len()).min(rng.usize_below(pool.len()));
                        chosen.push(pool.remove(i));
                    }
                    chosen
                })
                .collect();
            let map = map_from(placement, replication as u32);
            let nodes = node_map(&all, &[]);
            let moves = plan_rebalance(&map, &nodes, usize::MAX);
            let before = counts_over(&map, &all);
            assert_eq!(moves.len(), lower_bound(&before), "case {case}: {before:?}");
            let after = apply(&map, &moves);
            assert_distinct(&after);
            let counts = counts_over(&after, &all);
            assert!(
                counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
                "case {case}: {counts:?}"
            );
        }
    }

    #[test]
    fn rebalance_moves_replicas_off_nodes_that_are_not_active() {
        let map = map_from(initial_placement(6, 2, &[1, 2, 3]).unwrap(), 2);
        let nodes = node_map(&[1, 2, 4], &[3]);
        let moves = plan_rebalance(&map, &nodes, usize::MAX);
        let after = apply(&map, &moves);
        assert_distinct(&after);
        assert!(
            after.shards_on(3).is_empty(),
            "draining node still holds {:?}",
            after.shards_on(3)
        );
        let counts = counts_over(&after, &[1, 2, 4]);
        assert_eq!(counts, vec![4, 4, 4]);
    }

    #[test]
    fn drain_moves_everything_off_the_node() {
        let map = map_from(initial_placement(9, 2, &[1, 2, 3, 4]).unwrap(), 2);
        let mut nodes = node_map(&[1, 2, 3, 4], &[]);
        nodes.get_mut(&2).unwrap().status = NodeStatus::Draining;
        let held = map.shards_on(2);
        let moves = plan_drain(&map, &nodes, 2).unwrap();
        assert_eq!(moves.len(), held.len());
        assert!(moves.iter().all(|m| m.from == 2 && m.to != 2));
        let after = apply(&map, &moves);
        assert_distinct(&after);
        assert!(after.shards_on(2).is_empty());
        // Node 1 holds every shard node 2 held, so only 3 and 4 can take them.
        let counts = counts_over(&after, &[3, 4]);
        assert!(
            counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
            "{counts:?}"
        );
    }

    #[test]
    fn drain_fails_when_a_shard_has_nowhere_to_go() {
        // Replication 3 on exactly 3 nodes: every other node holds every shard.
        let map = map_from(initial_placement(4, 3, &[1, 2, 3]).unwrap(), 3);
        let nodes = node_map(&[1, 2, 3], &[]);
        assert_eq!(
            plan_drain(&map, &nodes, 1),
            Err(PlacementError::NoTarget { shard: 0, node: 1 })
        );
        let nodes = node_map(&[1, 2, 3, 4], &[]);
        let moves = plan_drain(&map, &nodes, 1).unwrap();
        assert_eq!(moves.len(), 4);
        assert!(moves.iter().all(|m| m.to == 4));
    }

    #[test]
    fn skew_says_when_a_map_is_out_of_balance() {
        let nodes = node_map(&[1, 2, 3], &[]);
        let even = map_from(initial_placement(12, 2, &[1, 2, 3]).unwrap(), 2);
        let s = skew(&even, &nodes).unwrap();
        assert_eq!((s.fewest, s.most, s.stranded), (8, 8, 0));
        assert!(s.balanced());
        // node 1 lost four copies to node 3 (a long cut, re-placed)
        let mut uneven = even.clone();
        let mut moved = 0;
        for reps in uneven.replicas.iter_mut() {
            let has3 = reps.iter().any(|r| r.node == 3);
            if let Some(r) = reps.iter_mut().find(|r| r.node == 1) {
                if moved < 4 && !has3 {
                    r.node = 3;
                    moved += 1;
                }
            }
        }
        assert_eq!(moved, 4);
        let s = skew(&uneven, &nodes).unwrap();
        assert_eq!((s.fewest, s.most), (4, 12));
        assert!(!s.balanced());
        assert_eq!(plan_rebalance(&uneven, &nodes, usize::MAX).len(), 4);
    }
}
