//! Guard against a follower whose Raft log went backwards within one
//! leadership — what a node looks like when it restarts under its old id
//! with a recreated (empty) data directory.
//!
//! Why here: openraft 0.9 treats that as impossible. Its leader asserts the
//! follower's matched log never shrinks (a panic in builds with debug
//! assertions); without the assertion it keeps counting the follower as
//! holding entries it lost. The network layer sees every AppendEntries
//! answer first, so it remembers, per target and leader vote, how far the
//! follower matched, and turns a "conflict" below that point into
//! "unreachable": the leader stops counting on that node (new entries
//! commit only with a real majority of the others) and an operator error
//! says how to bring the machine back (remove the old id, add it under a
//! new one; docs/operations.md).
//!
//! Owns: the matched-index memory and the decision. Must not touch: the
//! transport or openraft's own progress state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use openraft::Vote;

use super::types::NodeId;

/// What one leader (one vote) has seen each follower match; shared by the
/// clients a network factory hands out.
#[derive(Clone, Default)]
pub struct MatchedLogs {
    seen: Arc<Mutex<HashMap<NodeId, Matched>>>,
}

/// The leader's vote and the highest log index matched under it.
type Matched = (Vote<NodeId>, u64);

impl MatchedLogs {
    /// The follower's log holds every entry up to `index` (a successful
    /// AppendEntries sent under `vote`).
    pub fn matched(&self, target: NodeId, vote: &Vote<NodeId>, index: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        match seen.get_mut(&target) {
            Some((v, i)) if v == vote => *i = (*i).max(index),
            _ => {
                seen.insert(target, (*vote, index));
            }
        }
    }

    /// Whether a conflict at `prev_index` (the follower lacks the entry
    /// there), answered to a request sent under `vote`, means the
    /// follower lost entries it had matched for this same leader.
    pub fn is_reversion(&self, target: NodeId, vote: &Vote<NodeId>, prev_index: u64) -> bool {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        matches!(seen.get(&target), Some((v, i)) if v == vote && prev_index <= *i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vote(term: u64, leader: NodeId) -> Vote<NodeId> {
        Vote::new_committed(term, leader)
    }

    #[test]
    fn a_conflict_below_what_the_same_leader_saw_matched_is_a_reversion() {
        let m = MatchedLogs::default();
        let v = vote(3, 1);
        m.matched(2, &v, 10);
        m.matched(2, &v, 7); // out-of-order answers never lower the mark
        assert!(m.is_reversion(2, &v, 10));
        assert!(m.is_reversion(2, &v, 4));
        // a follower merely behind (never matched that far) is not one
        assert!(!m.is_reversion(2, &v, 11));
        // another follower, never seen
        assert!(!m.is_reversion(3, &v, 1));
    }

    #[test]
    fn a_new_leadership_starts_from_nothing() {
        // a follower may legitimately drop uncommitted entries of an old
        // term when a new leader overwrites them
        let m = MatchedLogs::default();
        m.matched(2, &vote(3, 1), 10);
        assert!(!m.is_reversion(2, &vote(4, 3), 5));
        m.matched(2, &vote(4, 3), 6);
        assert!(m.is_reversion(2, &vote(4, 3), 5));
        assert!(!m.is_reversion(2, &vote(3, 1), 5));
    }
}
