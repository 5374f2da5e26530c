//! First formation of a cluster by its bootstrap node (`cluster.bootstrap`).
//!
//! The bootstrap node initialises a Raft group of itself alone; it needs no
//! other node's vote, so no node with empty storage ever votes to form the
//! cluster (such nodes refuse, `cluster::vote_fence`). The other configured
//! members then join as learners and become voters once the leader has
//! seen them catch up — the leader's control loop does that from the
//! replicated state (`control::reconcile` registers them,
//! `control::moves` adds learners and promotes), exactly as for
//! `funnel admin add-node`.
//!
//! A group of one also elects itself at once, so a bootstrap node that
//! lost its data directory would found a second cluster beside the real
//! one and acknowledge writes that the real one later overwrites. Before
//! initialising, this node therefore asks the other configured members for
//! their status, and initialises only when a majority of the configured
//! members (itself included) answered and every answer shows empty Raft
//! storage. That majority is what the first election needed before, and
//! it holds exactly when fewer than half of the members lost their data —
//! Raft's own fault bound. Anything short of it waits, retrying in the
//! background until this node has Raft state (initialised here, or
//! replicated to it by an existing leader) or shuts down.
//!
//! Owns: the decision (`decide`) and the background task (`run`). Must not
//! touch: membership changes after formation (`control::moves`), the vote
//! fence (`cluster::vote_fence`).

use super::link::ClusterLink;
use crate::cluster::{ClusterStatus, NodeId, NodeInfo};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Between two rounds of asking the other members.
const RETRY: Duration = Duration::from_secs(1);

/// What one configured member answered about its Raft storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerStorage {
    /// No answer (down, not started yet, cut off).
    Unreachable,
    /// Answered: no log, no snapshot, no membership.
    Blank,
    /// Answered: it holds Raft state, so a cluster exists.
    HasState,
}

impl PeerStorage {
    /// Reads a member's status answer.
    pub fn of(status: &ClusterStatus) -> PeerStorage {
        let blank = status.last_log_index.is_none()
            && status.last_applied_index.is_none()
            && status.voters.is_empty()
            && status.learners.is_empty();
        if blank {
            PeerStorage::Blank
        } else {
            PeerStorage::HasState
        }
    }
}

/// What the bootstrap node does this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Formation {
    /// Initialise a group of this node alone.
    Initialize,
    /// Not enough members answered to rule out an existing cluster.
    Wait { answered: usize, needed: usize },
    /// These members hold Raft state: a cluster exists and this node's
    /// storage is empty (its data directory was probably lost).
    Exists(Vec<NodeId>),
}

/// Decides for a bootstrap node whose own storage is empty, given what
/// the other configured members answered. `configured` counts every
/// configured member, this node included.
pub fn decide(configured: usize, peers: &[(NodeId, PeerStorage)]) -> Formation {
    let existing: Vec<NodeId> = peers
        .iter()
        .filter(|(_, s)| *s == PeerStorage::HasState)
        .map(|(id, _)| *id)
        .collect();
    if !existing.is_empty() {
        return Formation::Exists(existing);
    }
    // this node counts as an answer: its storage is empty too
    let answered = 1 + peers
        .iter()
        .filter(|(_, s)| *s == PeerStorage::Blank)
        .count();
    let needed = configured.max(1) / 2 + 1;
    if answered >= needed {
        Formation::Initialize
    } else {
        Formation::Wait { answered, needed }
    }
}

/// The bootstrap node's formation task: returns once this node has Raft
/// state or on shutdown. `me` is this node's entry for the membership;
/// `peers` the other configured members (id, internal address).
pub async fn run(
    link: Arc<ClusterLink>,
    me: NodeInfo,
    peers: Vec<(NodeId, String)>,
    mut shutdown: watch::Receiver<bool>,
) {
    let id = me.id;
    let configured = peers.len() + 1;
    let mut said: Option<Formation> = None;
    loop {
        if *shutdown.borrow() || link.raft.has_raft_state().await {
            return;
        }
        let asks = peers.iter().map(|(peer, addr)| {
            let raft = &link.raft;
            async move {
                let storage = match raft.remote_status(addr, false).await {
                    Ok(status) => PeerStorage::of(&status),
                    Err(_) => PeerStorage::Unreachable,
                };
                (*peer, storage)
            }
        });
        let answers = futures::future::join_all(asks).await;
        let decision = decide(configured, &answers);
        if decision == Formation::Initialize {
            let members = BTreeMap::from([(id, me.clone())]);
            match link.raft.initialize(members).await {
                Ok(()) => {
                    tracing::info!(
                        node_id = id,
                        "formed a new cluster with this node as its only voter; the other \
                         configured members join as learners and become voters once they caught up"
                    );
                    return;
                }
                Err(e) => {
                    tracing::warn!(node_id = id, error = %e, "forming the cluster failed; retrying")
                }
            }
        } else if said.as_ref() != Some(&decision) {
            match &decision {
                Formation::Wait { answered, needed } => tracing::info!(
                    node_id = id,
                    answered,
                    needed,
                    "waiting for a majority of the configured members to answer before forming \
                     the cluster ({answered} of {needed} so far, this node included)"
                ),
                Formation::Exists(members) => tracing::error!(
                    node_id = id,
                    ?members,
                    "node {id} is configured to bootstrap but its Raft storage is empty, while \
                     members {members:?} already hold cluster state: it will not form a new \
                     cluster (that would lose the existing one's acknowledged writes) and waits \
                     for the leader to replicate to it. If its data directory was lost, follow {}",
                    crate::cluster::vote_fence::PROCEDURE
                ),
                Formation::Initialize => {}
            }
            said = Some(decision);
        }
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PeerStorage::*;

    #[test]
    fn a_single_member_forms_at_once() {
        assert_eq!(decide(1, &[]), Formation::Initialize);
    }

    #[test]
    fn a_majority_of_blank_members_forms_and_absent_ones_do_not_block() {
        // 3 members: itself and one other answering blank is a majority
        assert_eq!(
            decide(3, &[(2, Blank), (3, Unreachable)]),
            Formation::Initialize
        );
        assert_eq!(
            decide(
                5,
                &[(2, Blank), (3, Blank), (4, Unreachable), (5, Unreachable)]
            ),
            Formation::Initialize
        );
    }

    #[test]
    fn too_few_answers_wait() {
        assert_eq!(
            decide(3, &[(2, Unreachable), (3, Unreachable)]),
            Formation::Wait {
                answered: 1,
                needed: 2
            }
        );
        assert_eq!(
            decide(
                5,
                &[
                    (2, Blank),
                    (3, Unreachable),
                    (4, Unreachable),
                    (5, Unreachable)
                ]
            ),
            Formation::Wait {
                answered: 2,
                needed: 3
            }
        );
    }

    #[test]
    fn any_member_with_state_means_the_cluster_exists() {
        assert_eq!(
            decide(3, &[(2, Blank), (3, HasState)]),
            Formation::Exists(vec![3])
        );
        assert_eq!(
            decide(3, &[(2, HasState), (3, Unreachable)]),
            Formation::Exists(vec![2])
        );
    }

    #[test]
    fn a_status_with_a_log_or_a_membership_is_state() {
        let mut s = ClusterStatus {
            id: 2,
            role: "Learner".into(),
            term: 0,
            leader: None,
            leader_addr: None,
            voters: vec![],
            learners: vec![],
            last_log_index: None,
            last_applied_index: None,
            apply_lag: 0,
            state: Default::default(),
            state_digest: String::new(),
            read_index: None,
            vote_fenced: true,
        };
        assert_eq!(PeerStorage::of(&s), Blank);
        s.last_log_index = Some(0);
        assert_eq!(PeerStorage::of(&s), HasState);
        s.last_log_index = None;
        s.voters = vec![1, 2, 3];
        assert_eq!(PeerStorage::of(&s), HasState);
    }
}
