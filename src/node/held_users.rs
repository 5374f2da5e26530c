//! Which of the cluster's user partitions this node keeps state for, and
//! how an event is treated on arrival because of it: applied (a Live
//! partition), put aside (a partition being loaded), or left to the
//! partition's copies (a partition held elsewhere: a peer's event of it is
//! not even logged here; one this node accepted is logged in its own log).
//!
//! A node that knows no partition map yet (a standalone node, or a cluster
//! node before the map is created or read) holds every partition. When the
//! map places a partition here the node loads it (`partition_load`: the
//! bundle's states, this node's own logged events since the serving mark,
//! then every origin's events of it fetched from the origins' logs); the
//! events that arrive meanwhile wait in the partition's buffer and are
//! applied, in arrival order, when it turns Live. Only then is the copy
//! marked Active in the map (`control::reconcile`), so no request reads a
//! half-loaded copy.
//!
//! A loading partition keeps its own record of which peers' events it
//! took (`claim_forwarded`): the node's per-origin record (`Origins`) has
//! moved past events of partitions it did not hold, and those come back in
//! the load. When loading ends the record is folded into `Origins`, so a
//! later pull or forward of the same event is recognised.
//!
//! Owns: `HeldPartitions` and the pure planning of a change of the held
//! set. Must not touch: the user states themselves (`userstate`), the logs
//! (`events`), the map (`cluster`).

use crate::eventlog::LogEvent;
use crate::ids::user_partition;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Which of this node's two event logs an event was written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LogSource {
    /// `<data_dir>/events/`: events this node's clients sent.
    Own,
    /// `<data_dir>/events-peers/`: events other nodes forwarded.
    Peers,
}

/// The next seq of each log at one point: a replay after a restart stops
/// there, and a partition load replays this node's own log up to `own`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct LogPositions {
    pub own: u64,
    pub peers: u64,
}

/// A peer's event: (origin node, identity of the origin's log, seq there).
pub(super) type EventId = (u64, u64, u64);

#[derive(Debug)]
enum Phase {
    /// Its state is complete here: events apply as they arrive.
    Live,
    /// Being loaded: events wait here, in arrival order, with their log;
    /// `claims` are the peers' events taken for it since loading began.
    Loading {
        generation: u64,
        buffer: Vec<(LogSource, LogEvent)>,
        claims: HashSet<EventId>,
    },
}

impl Phase {
    fn loading(generation: u64) -> Phase {
        Phase::Loading {
            generation,
            buffer: Vec::new(),
            claims: HashSet::new(),
        }
    }
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
    /// Partitions loading after the change (new ones and any still
    /// loading), all under `generation`.
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

/// What happens to one event a peer sent (`claim_forwarded`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Claim {
    /// Not seen before: log and apply it (claimed in the per-origin
    /// record).
    New,
    /// Not seen before by a loading partition: log and buffer it (claimed
    /// in the partition's own record).
    NewLoading,
    /// Taken already (by a forward, a pull or a load).
    Had,
    /// Its partition is not held here: neither logged nor applied.
    NotHeld,
}

/// A set of user partitions out of `count`, as a peer's pull names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSet {
    count: u32,
    member: Vec<bool>,
}

impl PartitionSet {
    /// Most partitions a cluster may have (`cluster.user_partitions`).
    pub const MAX_COUNT: u32 = 65_536;

    /// `parts` out of `count`; an error says what is wrong with them.
    pub fn new(count: u32, parts: &[u32]) -> Result<PartitionSet, String> {
        if count == 0 || count > Self::MAX_COUNT {
            return Err(format!(
                "partition_count {count} is not between 1 and {}",
                Self::MAX_COUNT
            ));
        }
        let mut member = vec![false; count as usize];
        for &p in parts {
            *member.get_mut(p as usize).ok_or_else(|| {
                format!("partition {p} is out of range for partition_count {count}")
            })? = true;
        }
        Ok(PartitionSet { count, member })
    }

    /// Whether `user_id`'s partition is in the set.
    pub fn keeps(&self, user_id: &str) -> bool {
        self.member[user_partition(user_id, self.count) as usize]
    }
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

    /// The partitions a pull asks peers for: every held one, loading ones
    /// included (None: every partition, no map known).
    pub(super) fn pull_set(&self) -> Option<(u32, Vec<u32>)> {
        self.lock()
            .as_ref()
            .map(|h| (h.count, h.parts.keys().copied().collect()))
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

    /// For a replay after a restart: which events apply now (Live
    /// partitions only; a loading one gets its events from its load).
    pub(super) fn admit_replay(&self, events: &[LogEvent]) -> Vec<Admit> {
        let guard = self.lock();
        let Some(h) = guard.as_ref() else {
            return vec![Admit::Apply; events.len()];
        };
        events
            .iter()
            .map(
                |e| match h.parts.get(&user_partition(&e.user_id, h.count)) {
                    Some(Phase::Live) => Admit::Apply,
                    _ => Admit::Elsewhere,
                },
            )
            .collect()
    }

    /// Claims the events `origin` sent (each with its user and its seq in
    /// the origin's log `log`; seq 0: not numbered, always new): for a Live
    /// partition through `live_claim` (the node's per-origin record), for a
    /// loading one in its own record. Under the lock that ends loading, so
    /// a claim is never split between the two.
    pub(super) fn claim_forwarded<'a>(
        &self,
        origin: u64,
        log: u64,
        events: impl Iterator<Item = (&'a str, u64)>,
        mut live_claim: impl FnMut(u64) -> bool,
    ) -> Vec<Claim> {
        let mut guard = self.lock();
        let verdict = |new: bool| if new { Claim::New } else { Claim::Had };
        events
            .map(|(user, seq)| {
                // None: a Live partition (or no map: every one is)
                let loading = match guard.as_mut() {
                    None => None,
                    Some(h) => match h.parts.get_mut(&user_partition(user, h.count)) {
                        None => return Claim::NotHeld,
                        Some(Phase::Live) => None,
                        Some(Phase::Loading { claims, .. }) => Some(claims),
                    },
                };
                match (loading, seq) {
                    (_, 0) => Claim::New,
                    (None, seq) => verdict(live_claim(seq)),
                    (Some(claims), seq) => {
                        if claims.insert((origin, log, seq)) {
                            Claim::NewLoading
                        } else {
                            Claim::Had
                        }
                    }
                }
            })
            .collect()
    }

    /// Undoes claims of loading partitions whose events were not applied.
    pub(super) fn release_loading(&self, ids: &[EventId]) {
        if let Some(h) = self.lock().as_mut() {
            for phase in h.parts.values_mut() {
                if let Phase::Loading { claims, .. } = phase {
                    for id in ids {
                        claims.remove(id);
                    }
                }
            }
        }
    }

    /// Brings the held set to `want` (the partitions the map places here,
    /// out of `count`). With `serving` true new partitions load. Without a
    /// served model nothing can load yet: a new partition whose events
    /// this node's logs hold whole (`complete`, None: all) is Live at once
    /// (the next model load seeds and replays it), any other one waits in
    /// loading. Every partition loading afterwards gets the new generation.
    pub(super) fn change_to(
        &self,
        count: u32,
        want: &BTreeSet<u32>,
        serving: bool,
        complete: Option<&BTreeSet<u32>>,
    ) -> HeldChange {
        let mut guard = self.lock();
        let generation = self
            .generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let first = guard.is_none();
        let change = plan_change(guard.as_ref().map(|h| (h.count, &h.parts)), count, want);
        let mut parts = match guard.take() {
            Some(h) if h.count == count => h.parts,
            _ => (0..count).map(|p| (p, Phase::Live)).collect(),
        };
        for p in &change.dropped {
            parts.remove(p);
        }
        let whole = |p: &u32| complete.is_none_or(|c| c.contains(p));
        for &p in &change.loading {
            let phase = if serving || !whole(&p) {
                Phase::loading(generation)
            } else {
                Phase::Live
            };
            parts.insert(p, phase);
        }
        if first {
            // held "all" before: the kept ones are Live only if the logs
            // hold their events whole
            for (p, phase) in parts.iter_mut() {
                if !whole(p) {
                    *phase = Phase::loading(generation);
                }
            }
        }
        let mut loading = Vec::new();
        for (&p, phase) in parts.iter_mut() {
            if let Phase::Loading { generation: g, .. } = phase {
                *g = generation;
                loading.push(p);
            }
        }
        *guard = Some(Held { count, parts });
        HeldChange {
            generation,
            loading,
            dropped: change.dropped,
        }
    }

    /// Which partitions `change_to(count, want, ..)` would drop.
    pub(super) fn would_drop(&self, count: u32, want: &BTreeSet<u32>) -> Vec<u32> {
        let guard = self.lock();
        plan_change(guard.as_ref().map(|h| (h.count, &h.parts)), count, want).dropped
    }

    /// Ends loading of `parts` (those still loading under `generation`):
    /// folds their claims into the per-origin record (`absorb`), hands
    /// their buffered events to `apply` in arrival order while the lock is
    /// held (so an event admitted after cannot be applied before them) —
    /// except the ones of this node's own log below `own_from`, which the
    /// load replayed — then marks them Live. Answers the partitions that
    /// turned Live.
    pub(super) fn finish_loading(
        &self,
        parts: &[u32],
        generation: u64,
        own_from: u64,
        mut absorb: impl FnMut(EventId),
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
                if let Phase::Loading { buffer, claims, .. } = std::mem::replace(phase, Phase::Live)
                {
                    claims.into_iter().for_each(&mut absorb);
                    pending.extend(buffer);
                }
                done.push(*p);
            }
        }
        // arrival order across partitions does not matter (each user is in
        // one); within one it is kept by the buffer
        let events = pending
            .into_iter()
            .filter(|(source, e)| *source == LogSource::Peers || e.seq >= own_from)
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

    /// Whether the held set is `want` out of `count` already and none of
    /// it is still loading.
    pub(super) fn is(&self, count: u32, want: &BTreeSet<u32>) -> bool {
        self.lock().as_ref().is_some_and(|h| {
            h.count == count
                && h.parts.keys().eq(want.iter())
                && h.parts.values().all(|ph| matches!(ph, Phase::Live))
        })
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
        let c = h.change_to(8, &want, true, None);
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
        h.change_to(4, &[0].into(), true, None);
        let c = h.change_to(4, &[0, 2].into(), true, None);
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
        let mut got = Vec::new();
        let done = h.finish_loading(&[2], c.generation, 10, |_| {}, |evs| got = evs);
        assert_eq!(done, vec![2]);
        let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
        // own-log seq 9 was replayed; a peer's event is never replayed
        assert_eq!(seqs, vec![10, 3]);
        assert_eq!(h.live(), Some(vec![0, 2]));
        assert_eq!(h.admit(LogSource::Own, &[ev(&u, 11)]), vec![Admit::Apply]);
    }

    #[test]
    fn a_partition_dropped_or_reloaded_meanwhile_does_not_turn_live_from_an_old_load() {
        let h = HeldPartitions::default();
        h.change_to(4, &[0].into(), true, None);
        let first = h.change_to(4, &[0, 1].into(), true, None);
        // dropped while loading
        let c = h.change_to(4, &[0].into(), true, None);
        assert_eq!(c.dropped, vec![1]);
        assert!(h
            .finish_loading(&[1], first.generation, 0, |_| {}, |_| {})
            .is_empty());
        assert!(!h.keeps(&user_in(1, 4)));
        // added again: only the new load ends it
        let second = h.change_to(4, &[0, 1].into(), true, None);
        assert!(h
            .finish_loading(&[1], first.generation, 0, |_| {}, |_| {})
            .is_empty());
        assert_eq!(
            h.finish_loading(&[1], second.generation, 0, |_| {}, |_| {}),
            vec![1]
        );
    }

    #[test]
    fn before_a_model_is_served_new_partitions_are_live_at_once() {
        let h = HeldPartitions::default();
        h.change_to(4, &[0].into(), false, None);
        let c = h.change_to(4, &[0, 3].into(), false, None);
        assert!(c.loading.is_empty());
        assert_eq!(h.live(), Some(vec![0, 3]));
    }

    #[test]
    fn without_a_model_a_partition_whose_events_were_skipped_waits_to_load() {
        // a restart: the map places 0, 1 and 2 here, but the logs hold
        // partition 2's events only since it was dropped once
        let h = HeldPartitions::default();
        let complete: BTreeSet<u32> = [0, 1].into();
        let c = h.change_to(4, &[0, 1, 2].into(), false, Some(&complete));
        assert_eq!(c.dropped, vec![3]);
        assert_eq!(c.loading, vec![2]);
        assert_eq!(h.live(), Some(vec![0, 1]));
        assert!(
            !h.is(4, &[0, 1, 2].into()),
            "a loading partition is not held yet"
        );
        // a replay applies to Live partitions only
        let a = h.admit_replay(&[ev(&user_in(0, 4), 1), ev(&user_in(2, 4), 2)]);
        assert_eq!(a, vec![Admit::Apply, Admit::Elsewhere]);
        // the next change keeps it loading, under its generation
        let next = h.change_to(4, &[0, 1, 2].into(), true, Some(&complete));
        assert_eq!(next.loading, vec![2]);
        assert_eq!(
            h.finish_loading(&[2], next.generation, 0, |_| {}, |_| {}),
            vec![2]
        );
        assert!(h.is(4, &[0, 1, 2].into()));
    }

    #[test]
    fn a_peers_event_is_claimed_where_its_partition_stands() {
        let h = HeldPartitions::default();
        h.change_to(4, &[0, 1].into(), true, None);
        let c = h.change_to(4, &[0, 1, 2].into(), true, None);
        let (live, loading, elsewhere) = (user_in(0, 4), user_in(2, 4), user_in(3, 4));
        let mut live_claims = Vec::new();
        let mut claim = |events: &[(&str, u64)]| {
            h.claim_forwarded(7, 70, events.iter().copied(), |seq| {
                live_claims.push(seq);
                seq != 5 // 5: the per-origin record has it
            })
        };
        let got = claim(&[
            (live.as_str(), 4),
            (live.as_str(), 5),
            (loading.as_str(), 3),
            (elsewhere.as_str(), 6),
            (loading.as_str(), 0),
        ]);
        assert_eq!(
            got,
            vec![
                Claim::New,
                Claim::Had,
                Claim::NewLoading,
                Claim::NotHeld,
                Claim::New
            ]
        );
        // the loading partition's own record: seq 3 is taken once, even
        // though the per-origin record moved past it
        assert_eq!(claim(&[(loading.as_str(), 3)]), vec![Claim::Had]);
        // a release (the append failed) frees it again
        h.release_loading(&[(7, 70, 3)]);
        assert_eq!(claim(&[(loading.as_str(), 3)]), vec![Claim::NewLoading]);
        assert_eq!(live_claims, vec![4, 5]);
        // loading ends: its claims go to the per-origin record
        let mut absorbed = Vec::new();
        h.finish_loading(&[2], c.generation, 0, |id| absorbed.push(id), |_| {});
        assert_eq!(absorbed, vec![(7, 70, 3)]);
    }
}
