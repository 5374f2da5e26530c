//! Which of the cluster's user partitions this node keeps state for, and
//! how an event is treated on arrival because of it: applied (a Live
//! partition), put aside (a partition being loaded), or left to the
//! partition's copies (a partition held elsewhere — the event is still
//! logged and still counts for its item).
//!
//! A node that knows no partition map yet (a standalone node, or a cluster
//! node before the map is created or read) holds every partition. When the
//! map places a partition here the node loads it (`Node::follow_partition_map`:
//! the bundle's states, then the logged events since the serving mark up to
//! the log positions read when loading began); the events that arrive
//! meanwhile wait in the partition's buffer and are applied, in arrival
//! order and without the ones the replay covered, when it turns Live. Only
//! then is the copy marked Active in the map (`control::reconcile`), so no
//! request reads a half-loaded copy.
//!
//! Owns: `HeldPartitions` and the pure planning of a change of the held
//! set. Must not touch: the user states themselves (`userstate`), the logs
//! (`events`), the map (`cluster`).

use crate::eventlog::LogEvent;
use crate::ids::user_partition;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Which of this node's two event logs an event was written to; a
/// partition being loaded replays each log up to its own position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LogSource {
    /// `<data_dir>/events/`: events this node's clients sent.
    Own,
    /// `<data_dir>/events-peers/`: events other nodes forwarded.
    Peers,
}

/// The next seq of each log when a partition started loading: the replay
/// covers every event below these, the buffer every event from them on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct LogPositions {
    pub own: u64,
    pub peers: u64,
}

impl LogPositions {
    fn covers(&self, source: LogSource, seq: u64) -> bool {
        match source {
            LogSource::Own => seq < self.own,
            LogSource::Peers => seq < self.peers,
        }
    }
}

#[derive(Debug)]
enum Phase {
    /// Its state is complete here: events apply as they arrive.
    Live,
    /// Being loaded: events wait here, in arrival order, with their log.
    Loading {
        generation: u64,
        buffer: Vec<(LogSource, LogEvent)>,
    },
}

#[derive(Debug)]
struct Held {
    /// The map's partition count (fixed when the cluster was created).
    count: u32,
    parts: BTreeMap<u32, Phase>,
}

/// What a change of the held set asks of the node.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct HeldChange {
    /// Partitions no longer held: their users' states are dropped.
    pub dropped: Vec<u32>,
    /// Partitions to load, all under `generation`.
    pub loading: Vec<u32>,
    pub generation: u64,
}

/// What happens to one arriving event's user state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    Apply,
    /// Put aside in its partition's buffer (applied when loading ends).
    Buffered,
    /// Its partition is held elsewhere.
    Elsewhere,
}

/// See the module doc.
#[derive(Debug, Default)]
pub(super) struct HeldPartitions {
    /// None: every partition (no map known).
    held: Mutex<Option<Held>>,
    generations: std::sync::atomic::AtomicU64,
}

impl HeldPartitions {
    fn lock(&self) -> MutexGuard<'_, Option<Held>> {
        // every change below leaves the table whole before it can panic
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether this node keeps `user_id`'s state (Live or loading).
    pub(super) fn keeps(&self, user_id: &str) -> bool {
        match &*self.lock() {
            None => true,
            Some(h) => h.parts.contains_key(&user_partition(user_id, h.count)),
        }
    }

    /// Decides, for each event just logged in `source`, what happens to
    /// its user state; the ones of a loading partition are put aside here,
    /// under the same lock that ends loading, so none slips between.
    pub(super) fn admit(&self, source: LogSource, events: &[LogEvent]) -> Vec<Admit> {
        let mut guard = self.lock();
        let Some(h) = guard.as_mut() else {
            return vec![Admit::Apply; events.len()];
        };
        events
            .iter()
            .map(
                |e| match h.parts.get_mut(&user_partition(&e.user_id, h.count)) {
                    None => Admit::Elsewhere,
                    Some(Phase::Live) => Admit::Apply,
                    Some(Phase::Loading { buffer, .. }) => {
                        buffer.push((source, e.clone()));
                        Admit::Buffered
                    }
                },
            )
            .collect()
    }

    /// Brings the held set to `want` (the partitions the map places here,
    /// out of `count`). With `serving` false nothing is loaded: the next
    /// model load seeds and replays every held partition, so new ones are
    /// Live at once; otherwise new ones start loading.
    pub(super) fn change_to(&self, count: u32, want: &BTreeSet<u32>, serving: bool) -> HeldChange {
        let mut guard = self.lock();
        let generation = self
            .generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let change = plan_change(guard.as_ref().map(|h| (h.count, &h.parts)), count, want);
        let mut parts = match guard.take() {
            Some(h) if h.count == count => h.parts,
            _ => (0..count).map(|p| (p, Phase::Live)).collect(),
        };
        for p in &change.dropped {
            parts.remove(p);
        }
        for &p in &change.loading {
            let phase = if serving {
                Phase::Loading {
                    generation,
                    buffer: Vec::new(),
                }
            } else {
                Phase::Live
            };
            parts.insert(p, phase);
        }
        *guard = Some(Held { count, parts });
        HeldChange {
            generation,
            loading: if serving { change.loading } else { Vec::new() },
            dropped: change.dropped,
        }
    }

    /// Ends loading of `parts` (those still loading under `generation`):
    /// hands their buffered events that `from` does not cover, in arrival
    /// order, to `apply` while the lock is held (so an event admitted after
    /// cannot be applied before them), then marks them Live. Answers the
    /// partitions that turned Live.
    pub(super) fn finish_loading(
        &self,
        parts: &[u32],
        generation: u64,
        from: LogPositions,
        apply: impl FnOnce(Vec<LogEvent>),
    ) -> Vec<u32> {
        let mut guard = self.lock();
        let Some(h) = guard.as_mut() else {
            return Vec::new();
        };
        let mut done = Vec::new();
        let mut pending: Vec<(LogSource, LogEvent)> = Vec::new();
        for p in parts {
            let Some(phase) = h.parts.get_mut(p) else {
                continue;
            };
            if matches!(phase, Phase::Loading { generation: g, .. } if *g == generation) {
                if let Phase::Loading { buffer, .. } = std::mem::replace(phase, Phase::Live) {
                    pending.extend(buffer);
                }
                done.push(*p);
            }
        }
        // arrival order across partitions does not matter (each user is in
        // one); within one it is kept by the buffer
        let events = pending
            .into_iter()
            .filter(|(source, e)| !from.covers(*source, e.seq))
            .map(|(_, e)| e)
            .collect();
        apply(events);
        done
    }

    /// Partitions whose state is complete here (None: every one, no map).
    pub(super) fn live(&self) -> Option<Vec<u32>> {
        self.lock().as_ref().map(|h| {
            h.parts
                .iter()
                .filter(|(_, ph)| matches!(ph, Phase::Live))
                .map(|(&p, _)| p)
                .collect()
        })
    }

    /// Whether the held set is `want` out of `count` already (whatever
    /// phase each is in).
    pub(super) fn is(&self, count: u32, want: &BTreeSet<u32>) -> bool {
        self.lock()
            .as_ref()
            .is_some_and(|h| h.count == count && h.parts.keys().eq(want.iter()))
    }
}

/// Which partitions a move from `current` (None: every one) to `want`
/// drops and which it adds. A changed count (never expected: it is fixed
/// at creation) counts as "every one" before.
fn plan_change<T>(
    current: Option<(u32, &BTreeMap<u32, T>)>,
    count: u32,
    want: &BTreeSet<u32>,
) -> HeldChange {
    let have: BTreeSet<u32> = match current {
        Some((c, parts)) if c == count => parts.keys().copied().collect(),
        _ => (0..count).collect(),
    };
    HeldChange {
        dropped: have.difference(want).copied().collect(),
        loading: want.difference(&have).copied().collect(),
        generation: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::EventKind;

    fn ev(user: &str, seq: u64) -> LogEvent {
        LogEvent {
            seq,
            ts: 1,
            user_id: user.into(),
            item_id: "i".into(),
            kind: EventKind::Click,
            weight: 0.0,
            device: String::new(),
            origin: None,
        }
    }

    /// A user id in partition `p` of `count`.
    fn user_in(p: u32, count: u32) -> String {
        (0..)
            .map(|i| format!("u{i}"))
            .find(|u| user_partition(u, count) == p)
            .unwrap()
    }

    #[test]
    fn without_a_map_every_partition_is_held_and_the_first_map_drops_the_rest() {
        let h = HeldPartitions::default();
        assert!(h.keeps(&user_in(3, 8)));
        assert_eq!(h.live(), None);
        let want: BTreeSet<u32> = [1, 3].into();
        let c = h.change_to(8, &want, true);
        // everything was held: nothing to load, six to drop
        assert_eq!(c.dropped, vec![0, 2, 4, 5, 6, 7]);
        assert!(c.loading.is_empty());
        assert_eq!(h.live(), Some(vec![1, 3]));
        assert!(h.keeps(&user_in(3, 8)));
        assert!(!h.keeps(&user_in(2, 8)));
        let a = h.admit(
            LogSource::Own,
            &[ev(&user_in(1, 8), 5), ev(&user_in(2, 8), 6)],
        );
        assert_eq!(a, vec![Admit::Apply, Admit::Elsewhere]);
    }

    #[test]
    fn a_loading_partition_buffers_and_hands_over_only_what_the_replay_missed() {
        let h = HeldPartitions::default();
        h.change_to(4, &[0].into(), true);
        let c = h.change_to(4, &[0, 2].into(), true);
        assert_eq!(c.loading, vec![2]);
        assert!(c.dropped.is_empty());
        // loading: not Live, but its users are kept
        assert_eq!(h.live(), Some(vec![0]));
        let u = user_in(2, 4);
        assert!(h.keeps(&u));
        // logged before the positions were read (the replay has them) and
        // after (only the buffer has them)
        let a = h.admit(LogSource::Own, &[ev(&u, 9), ev(&u, 10)]);
        assert_eq!(a, vec![Admit::Buffered, Admit::Buffered]);
        assert_eq!(
            h.admit(LogSource::Peers, &[ev(&u, 3)]),
            vec![Admit::Buffered]
        );
        let from = LogPositions { own: 10, peers: 3 };
        let mut got = Vec::new();
        let done = h.finish_loading(&[2], c.generation, from, |evs| got = evs);
        assert_eq!(done, vec![2]);
        let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![10, 3]);
        assert_eq!(h.live(), Some(vec![0, 2]));
        assert_eq!(h.admit(LogSource::Own, &[ev(&u, 11)]), vec![Admit::Apply]);
    }

    #[test]
    fn a_partition_dropped_or_reloaded_meanwhile_does_not_turn_live_from_an_old_load() {
        let h = HeldPartitions::default();
        h.change_to(4, &[0].into(), true);
        let first = h.change_to(4, &[0, 1].into(), true);
        // dropped while loading
        let c = h.change_to(4, &[0].into(), true);
        assert_eq!(c.dropped, vec![1]);
        assert!(h
            .finish_loading(&[1], first.generation, LogPositions::default(), |_| {})
            .is_empty());
        assert!(!h.keeps(&user_in(1, 4)));
        // added again: only the new load ends it
        let second = h.change_to(4, &[0, 1].into(), true);
        assert!(h
            .finish_loading(&[1], first.generation, LogPositions::default(), |_| {})
            .is_empty());
        assert_eq!(
            h.finish_loading(&[1], second.generation, LogPositions::default(), |_| {}),
            vec![1]
        );
    }

    #[test]
    fn before_a_model_is_served_new_partitions_are_live_at_once() {
        let h = HeldPartitions::default();
        h.change_to(4, &[0].into(), false);
        let c = h.change_to(4, &[0, 3].into(), false);
        assert!(c.loading.is_empty());
        assert_eq!(h.live(), Some(vec![0, 3]));
    }
}
