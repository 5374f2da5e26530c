//! Which copy of each shard one request asks first, chosen for the request
//! as a whole: every RPC to another node costs both nodes a wakeup, an
//! encode and a decode whatever it carries, so a request should reach as
//! few other nodes as it can. Local copies first; the shards left are
//! covered greedily by the node that holds the most of them (set cover),
//! ties broken by a per-request salt so that equal choices spread over the
//! nodes instead of piling onto one. Plain code: health is passed in.
//!
//! The plan only reorders: a shard's `ReplicaSet` still fails over and
//! hedges to its other copies exactly as before.

/// One copy of a shard as the planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyInfo {
    pub node: u64,
    pub local: bool,
    /// Not suspect after a recent failure.
    pub healthy: bool,
}

/// The first copy to ask, per shard id (None: no plan, the set's own order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyPlan {
    first: Vec<Option<u64>>,
}

impl CopyPlan {
    pub fn first(&self, shard: u32) -> Option<u64> {
        self.first.get(shard as usize).copied().flatten()
    }
}

/// A stable scramble of (node, salt), for tie-breaking.
fn spread(node: u64, salt: u64) -> u64 {
    let mut x = node ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^ (x >> 33)
}

/// Plans one request over `copies[shard]` (every shard's copies). Shards
/// without a healthy copy get no plan (their set orders the suspects).
/// Returns None when every planned copy is local, so the caller can skip
/// passing a plan at all.
pub fn plan_copies(copies: &[Vec<CopyInfo>], salt: u64) -> Option<CopyPlan> {
    let mut first: Vec<Option<u64>> = vec![None; copies.len()];
    let mut uncovered: Vec<usize> = Vec::new();
    for (s, cs) in copies.iter().enumerate() {
        if let Some(local) = cs.iter().find(|c| c.local && c.healthy) {
            first[s] = Some(local.node);
        } else if cs.iter().any(|c| c.healthy) {
            uncovered.push(s);
        }
    }
    if uncovered.is_empty() {
        return None;
    }
    let mut counts: Vec<(u64, usize)> = Vec::new();
    while !uncovered.is_empty() {
        counts.clear();
        for &s in &uncovered {
            for c in copies[s].iter().filter(|c| c.healthy) {
                match counts.iter_mut().find(|(n, _)| *n == c.node) {
                    Some((_, k)) => *k += 1,
                    None => counts.push((c.node, 1)),
                }
            }
        }
        let Some(&(best, _)) = counts.iter().max_by_key(|(n, k)| (*k, spread(*n, salt))) else {
            break;
        };
        uncovered.retain(|&s| {
            let held = copies[s].iter().any(|c| c.healthy && c.node == best);
            if held {
                first[s] = Some(best);
            }
            !held
        });
    }
    Some(CopyPlan { first })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distinct other nodes a plan reaches.
    fn remote_nodes(plan: &CopyPlan, copies: &[Vec<CopyInfo>]) -> usize {
        let mut nodes: Vec<u64> = (0..copies.len())
            .filter_map(|s| {
                let n = plan.first(s as u32)?;
                copies[s]
                    .iter()
                    .any(|c| c.node == n && !c.local)
                    .then_some(n)
            })
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes.len()
    }

    fn c(node: u64, local: bool) -> CopyInfo {
        CopyInfo {
            node,
            local,
            healthy: true,
        }
    }

    /// 12 shards, 3 nodes, 2 copies each, placed round robin; this is node 1.
    fn three_nodes() -> Vec<Vec<CopyInfo>> {
        (0..12u64)
            .map(|s| {
                let a = s % 3 + 1;
                let b = (s + 1) % 3 + 1;
                vec![c(a, a == 1), c(b, b == 1)]
            })
            .collect()
    }

    #[test]
    fn local_copies_first_and_the_rest_from_one_other_node() {
        let copies = three_nodes();
        for salt in 0..50 {
            let plan = plan_copies(&copies, salt).unwrap();
            for (s, cs) in copies.iter().enumerate() {
                let f = plan.first(s as u32).unwrap();
                assert!(cs.iter().any(|c| c.node == f), "shard {s} planned on {f}");
                if cs.iter().any(|c| c.local) {
                    assert_eq!(f, 1, "shard {s} has a local copy");
                }
            }
            // the shards node 1 lacks are all on both others: one RPC covers them
            assert_eq!(remote_nodes(&plan, &copies), 1, "salt {salt}");
        }
    }

    #[test]
    fn ties_spread_over_the_nodes_by_salt() {
        let copies = three_nodes();
        let missing = (0..12u32)
            .find(|&s| !copies[s as usize].iter().any(|c| c.local))
            .unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for salt in 0..64 {
            seen.insert(plan_copies(&copies, salt).unwrap().first(missing).unwrap());
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![2, 3]);
    }

    #[test]
    fn unhealthy_copies_are_planned_around_and_all_local_needs_no_plan() {
        let mut copies = three_nodes();
        for cs in &mut copies {
            for c in cs.iter_mut() {
                if c.node == 2 {
                    c.healthy = false;
                }
            }
        }
        let plan = plan_copies(&copies, 7).unwrap();
        for s in 0..12u32 {
            assert_ne!(plan.first(s), Some(2));
        }
        // a shard whose only copies are unhealthy gets no plan
        let lone = vec![
            vec![CopyInfo {
                node: 5,
                local: false,
                healthy: false,
            }],
            vec![c(6, false)],
        ];
        let plan = plan_copies(&lone, 0).unwrap();
        assert_eq!((plan.first(0), plan.first(1)), (None, Some(6)));
        let local = vec![vec![c(1, true), c(2, false)]; 4];
        assert_eq!(plan_copies(&local, 0), None);
    }

    #[test]
    fn greedy_cover_picks_the_node_holding_most_of_the_rest() {
        // five nodes; this node (1) holds nothing; node 4 holds shards 0-2,
        // node 2 shards 0 and 3, node 3 shard 3
        let copies = vec![
            vec![c(4, false), c(2, false)],
            vec![c(4, false), c(5, false)],
            vec![c(4, false), c(3, false)],
            vec![c(2, false), c(3, false)],
        ];
        let plan = plan_copies(&copies, 0).unwrap();
        assert_eq!(
            (0..3).map(|s| plan.first(s)).collect::<Vec<_>>(),
            vec![Some(4); 3]
        );
        assert!(matches!(plan.first(3), Some(2) | Some(3)));
        assert_eq!(remote_nodes(&plan, &copies), 2);
    }
}
