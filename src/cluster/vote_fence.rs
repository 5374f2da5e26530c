//! The vote fence: a node whose Raft storage started empty does not vote
//! (nor campaign) until a leader has brought its log up to date.
//!
//! Why: Raft's election rule ("grant a vote to a candidate whose log is at
//! least as up to date as mine") keeps a committed entry only because every
//! voter that stored it still has it. A voter whose data directory was lost
//! and which restarts under its old id has forgotten entries it helped
//! commit; with an empty log it would vote for any candidate, so a lagging
//! node plus the blank one make a majority that elects a leader without
//! acknowledged writes. The fence closes that: a blank node answers every
//! vote request "not granted" and keeps its election timer off until a
//! leader's AppendEntries shows that its log holds everything the leader
//! has committed in the leader's own term (which covers every entry
//! committed before that term: a leader holds them all). A crash while
//! catching up keeps the fence: it is stored in the Raft log file.
//!
//! Brand-new members are blank too; they join as learners and are brought
//! up to date before they are promoted (`control::moves`), and the bootstrap
//! node lifts its own fence by initialising the group (`RaftNode::initialize`),
//! so forming a cluster never needs a blank node's vote.
//!
//! Owns: the fence's rules (`storage_is_blank`, `append_lifts_fence`,
//! `matched_by`, `refusal`) and `VoteFence`, the armed flag with its record in
//! the log file, the election switch and the operator signals (log lines,
//! `funnel_raft_vote_fenced`, `funnel_errors_total{kind="raft_vote_refused"}`).
//! Must not touch: openraft's own vote or log handling (requests pass
//! through to openraft unchanged unless refused), the transport.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use openraft::raft::{AppendEntriesResponse, VoteRequest, VoteResponse};

use super::error::ClusterError;
use super::log_store::LogStore;
use super::types::{LogId, NodeId, Raft, Vote};

/// How often a refused vote is logged (every refusal is counted).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(30);

/// The procedure an operator follows when a node lost its data directory.
pub const PROCEDURE: &str = "docs/operations.md 'A node lost its data directory'";

/// True when Raft storage holds nothing a leader ever sent: no log entry,
/// no purge point (entries compacted into a snapshot) and no snapshot.
/// The stored vote does not count: a vote is not data.
pub fn storage_is_blank(
    last_log_id: Option<&LogId>,
    last_purged_log_id: Option<&LogId>,
    snapshot: Option<&LogId>,
) -> bool {
    last_log_id.is_none() && last_purged_log_id.is_none() && snapshot.is_none()
}

/// Where this node's log matches the leader's after answering an
/// AppendEntries with `resp`: the last entry sent (or `prev_log_id` for a
/// heartbeat) on success, the reported point on partial success, nothing
/// on a conflict or a higher vote.
pub fn matched_by(
    prev_log_id: Option<&LogId>,
    last_sent: Option<&LogId>,
    resp: &AppendEntriesResponse<NodeId>,
) -> Option<LogId> {
    match resp {
        AppendEntriesResponse::Success => last_sent.or(prev_log_id).copied(),
        AppendEntriesResponse::PartialSuccess(m) => *m,
        _ => None,
    }
}

/// True when an accepted AppendEntries from the leader of `leader_vote`
/// proves this node's log complete: it matches the leader up to
/// `leader_commit`, and that committed entry is of the leader's own term.
/// An entry of its own term is committed only once the leader's log is
/// established on a majority, so everything committed by earlier leaders
/// lies below it; a commit point of an older term can still trail entries
/// an earlier leader acknowledged.
pub fn append_lifts_fence(
    leader_vote: &Vote,
    leader_commit: Option<&LogId>,
    matched: Option<&LogId>,
) -> bool {
    match (leader_commit, matched) {
        (Some(commit), Some(matched)) => {
            commit.leader_id.term == leader_vote.leader_id().term && matched.index >= commit.index
        }
        _ => false,
    }
}

/// The answer of a fenced node to a vote request: not granted, with this
/// node's current vote and last log id (the candidate only learns that it
/// did not get this vote; a higher `last_log_id` makes it wait before its
/// next campaign).
pub fn refusal(current: Vote, last_log_id: Option<LogId>) -> VoteResponse<NodeId> {
    VoteResponse {
        vote: current,
        vote_granted: false,
        last_log_id,
    }
}

/// One node's fence. Cheap to clone; clones share the flag.
#[derive(Clone)]
pub struct VoteFence {
    inner: Arc<Inner>,
}

struct Inner {
    node: NodeId,
    armed: AtomicBool,
    /// Taken at shutdown: openraft's log file closes with its last handle.
    store: Mutex<Option<LogStore>>,
    raft: OnceLock<Raft>,
    last_refusal_log: Mutex<Option<Instant>>,
}

impl VoteFence {
    /// Reads the fence of the node whose log is `store`: armed when the
    /// record says so or when storage is blank (`snapshot`: the last log id
    /// of the state machine's snapshot). A blank store gets the record
    /// written (durably) before the node serves anything, so a crash while
    /// catching up does not lose it.
    pub fn open(
        node: NodeId,
        store: LogStore,
        snapshot: Option<&LogId>,
    ) -> Result<VoteFence, ClusterError> {
        let (last, purged) = store.log_bounds()?;
        let blank = storage_is_blank(last.as_ref(), purged.as_ref(), snapshot);
        let recorded = store.vote_fence_record()?.unwrap_or(false);
        if blank && !recorded {
            store.write_vote_fence_record(true)?;
        }
        let armed = blank || recorded;
        if armed {
            tracing::info!(
                node_id = node,
                blank,
                "node {node} {} and will not vote until a leader has brought its log up to date \
                 (normal for a new member; if this node lost its data directory, follow {PROCEDURE})",
                if blank {
                    "has empty Raft storage"
                } else {
                    "has not finished catching up since it started with empty Raft storage"
                }
            );
        }
        set_gauge(armed);
        Ok(VoteFence {
            inner: Arc::new(Inner {
                node,
                armed: AtomicBool::new(armed),
                store: Mutex::new(Some(store)),
                raft: OnceLock::new(),
                last_refusal_log: Mutex::new(None),
            }),
        })
    }

    /// Gives the fence the openraft handle it switches elections on.
    /// Start openraft with `enable_elect = !is_armed()` so no election
    /// timer fires before this.
    pub fn attach(&self, raft: Raft) {
        let _ = self.inner.raft.set(raft);
    }

    /// Drops the fence's handle on the log file (node shutdown); a fence
    /// without it refuses as before but can no longer be lifted.
    pub fn release(&self) {
        self.store_lock().take();
    }

    fn store(&self) -> Option<LogStore> {
        self.store_lock().clone()
    }

    fn store_lock(&self) -> std::sync::MutexGuard<'_, Option<LogStore>> {
        self.inner
            .store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn is_armed(&self) -> bool {
        self.inner.armed.load(Ordering::SeqCst)
    }

    /// `Some(answer)` when the vote must be refused (the request does not
    /// reach openraft, so this node's term and vote stay as they are).
    pub async fn check_vote(&self, rpc: &VoteRequest<NodeId>) -> Option<VoteResponse<NodeId>> {
        if !self.is_armed() {
            return None;
        }
        let node = self.inner.node;
        crate::telemetry::metrics::metrics()
            .errors
            .with_label_values(&["raft_vote_refused"])
            .inc();
        if self.should_log_refusal() {
            tracing::warn!(
                node_id = node,
                candidate = rpc.vote.leader_id().node_id,
                term = rpc.vote.leader_id().term,
                "node {node} refused a vote: its Raft storage started empty and no leader has \
                 brought it up to date yet, so it may lack committed entries; it will vote once \
                 a leader has replicated the log to it. If its data directory was lost, follow \
                 {PROCEDURE}"
            );
        }
        let current = self
            .inner
            .raft
            .get()
            .map_or_else(Vote::default, |raft| raft.metrics().borrow().vote);
        // informative only: a failed read answers "no log"
        let last = match self.store() {
            Some(store) => tokio::task::spawn_blocking(move || store.log_bounds())
                .await
                .ok()
                .and_then(Result::ok)
                .and_then(|(last, purged)| last.or(purged)),
            None => None,
        };
        Some(refusal(current, last))
    }

    /// Looks at an AppendEntries this node answered (`leader_vote`,
    /// `prev_log_id`, the last entry sent, `leader_commit`) and lifts the
    /// fence when it proves the log complete. openraft answers only after
    /// `LogStore::append` returned, which is after the fsync.
    pub async fn observe_append(
        &self,
        leader_vote: &Vote,
        prev_log_id: Option<&LogId>,
        last_sent: Option<&LogId>,
        leader_commit: Option<&LogId>,
        resp: &AppendEntriesResponse<NodeId>,
    ) {
        if !self.is_armed() {
            return;
        }
        let matched = matched_by(prev_log_id, last_sent, resp);
        if append_lifts_fence(leader_vote, leader_commit, matched.as_ref()) {
            let leader = leader_vote.leader_id().node_id;
            let index = matched.map_or(0, |m| m.index);
            self.lift(&format!(
                "leader {leader} brought its log up to date (index {index})"
            ))
            .await;
        }
    }

    /// Lifts the fence: records it, turns elections on, says why.
    pub async fn lift(&self, why: &str) {
        if !self.is_armed() {
            return;
        }
        let node = self.inner.node;
        let Some(store) = self.store() else {
            return;
        };
        // recorded before the flag drops, so no vote is ever granted while
        // the file still says "fenced"; the record is only written once the
        // log is complete, so it never says "lifted" too early
        let saved = tokio::task::spawn_blocking(move || store.write_vote_fence_record(false)).await;
        let failed = match saved {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(e) = failed {
            tracing::error!(node_id = node, error = %e, "cannot record that the vote fence is lifted; keeping it (retried at the next AppendEntries)");
            return;
        }
        if !self.inner.armed.swap(false, Ordering::SeqCst) {
            return;
        }
        if let Some(raft) = self.inner.raft.get() {
            raft.runtime_config().elect(true);
        }
        set_gauge(false);
        tracing::info!(node_id = node, "node {node} votes again: {why}");
    }

    fn should_log_refusal(&self) -> bool {
        let mut last = self
            .inner
            .last_refusal_log
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }
}

fn set_gauge(armed: bool) {
    crate::telemetry::metrics::metrics()
        .raft_vote_fenced
        .set(i64::from(armed));
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn leader_vote(term: u64) -> Vote {
        Vote::new_committed(term, 1)
    }

    #[test]
    fn only_storage_without_log_purge_point_or_snapshot_is_blank() {
        assert!(storage_is_blank(None, None, None));
        assert!(!storage_is_blank(Some(&log_id(1, 0)), None, None));
        assert!(!storage_is_blank(None, Some(&log_id(2, 40)), None));
        assert!(!storage_is_blank(None, None, Some(&log_id(2, 40))));
    }

    #[test]
    fn a_fenced_node_answers_not_granted_with_its_own_vote() {
        let mine = Vote::new(3, 2);
        let r = refusal(mine, None);
        assert!(!r.vote_granted);
        assert_eq!(r.vote, mine);
        assert_eq!(r.last_log_id, None);
    }

    #[test]
    fn the_fence_lifts_once_the_log_reaches_a_commit_of_the_leaders_term() {
        let v = leader_vote(5);
        // caught up with an entry committed in term 5
        assert!(append_lifts_fence(
            &v,
            Some(&log_id(5, 40)),
            Some(&log_id(5, 40))
        ));
        assert!(append_lifts_fence(
            &v,
            Some(&log_id(5, 40)),
            Some(&log_id(5, 44))
        ));
        // still behind the commit point: e.g. the first batch of many
        assert!(!append_lifts_fence(
            &v,
            Some(&log_id(5, 40)),
            Some(&log_id(4, 12))
        ));
        // the leader has not committed in its own term yet: its commit
        // point may trail entries an earlier leader acknowledged
        assert!(!append_lifts_fence(
            &v,
            Some(&log_id(4, 40)),
            Some(&log_id(4, 40))
        ));
        // nothing committed, nothing matched
        assert!(!append_lifts_fence(&v, None, Some(&log_id(5, 3))));
        assert!(!append_lifts_fence(&v, Some(&log_id(5, 3)), None));
    }

    #[test]
    fn matched_point_follows_the_answer() {
        let prev = log_id(2, 10);
        let last = log_id(2, 15);
        assert_eq!(
            matched_by(Some(&prev), Some(&last), &AppendEntriesResponse::Success),
            Some(last)
        );
        // a heartbeat matches at prev_log_id
        assert_eq!(
            matched_by(Some(&prev), None, &AppendEntriesResponse::Success),
            Some(prev)
        );
        assert_eq!(
            matched_by(
                Some(&prev),
                Some(&last),
                &AppendEntriesResponse::PartialSuccess(Some(log_id(2, 12)))
            ),
            Some(log_id(2, 12))
        );
        assert_eq!(
            matched_by(Some(&prev), Some(&last), &AppendEntriesResponse::Conflict),
            None
        );
        assert_eq!(
            matched_by(
                Some(&prev),
                Some(&last),
                &AppendEntriesResponse::HigherVote(Vote::new(9, 3))
            ),
            None
        );
    }
}
