//! The events this node accepted from clients since it started, kept in
//! memory by seq so that peers' pulls do not read the log from disk: their
//! item counts (`item_counts`) and their catch-up on the events themselves
//! (`catchup`). A position before what memory holds is read from the log.
//!
//! Appends finish out of order when several run at once (seqs 12-13 can
//! report back before 10-11), so only the filled prefix is answered: a
//! puller that moved past seq 13 while 10 was still missing would never
//! ask for 10 again.
//!
//! Owns: `RecentEvents`. Must not touch: the log itself (`events` records
//! here what it appended) or what pullers do with the answers.

use super::catchup::Scanned;
use super::held_users::PartitionSet;
use super::item_counts::{aggregate, Counted, Counts};
use crate::eventlog::LogEvent;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Events kept in memory (about 150 bytes each); older positions are read
/// from the log.
const RECENT_CAP: usize = 100_000;
/// A hole (an append whose events never arrived here) holds at most this
/// many later events back before the oldest are let go to the disk path.
const RECENT_HARD_CAP: usize = 4 * RECENT_CAP;

/// See the module doc.
pub(super) struct RecentEvents {
    inner: Mutex<Recent>,
}

struct Recorded {
    event: LogEvent,
    counted: Counted,
    /// When the append reported back.
    at: Instant,
}

struct Recent {
    /// Seq of `slots[0]`.
    first: u64,
    /// `None`: a seq whose append has not reported back yet.
    slots: VecDeque<Option<Recorded>>,
    /// How many slots from the front are filled: the answerable prefix.
    filled: usize,
}

impl Recent {
    fn advance_filled(&mut self) {
        while self.filled < self.slots.len() && self.slots[self.filled].is_some() {
            self.filled += 1;
        }
    }

    /// The slot range answering "after `after`, at most `max`", or None
    /// when it starts before what memory holds.
    fn range_after(&self, after: u64, max: usize) -> Option<std::ops::Range<usize>> {
        let start = after.checked_add(1)?.checked_sub(self.first)? as usize;
        let start = start.min(self.filled);
        Some(start..self.filled.min(start.saturating_add(max.max(1))))
    }
}

impl RecentEvents {
    /// Starts empty at `next_seq`, the seq the log gives its next event:
    /// everything before is on disk already.
    pub(super) fn new(next_seq: u64) -> RecentEvents {
        RecentEvents {
            inner: Mutex::new(Recent {
                first: next_seq.max(1),
                slots: VecDeque::new(),
                filled: 0,
            }),
        }
    }

    /// Records `events`, appended to the log with consecutive seqs from
    /// `first_seq`.
    pub(super) fn record(&self, first_seq: u64, events: &[LogEvent]) {
        let Ok(mut r) = self.inner.lock() else {
            return;
        };
        let at = Instant::now();
        for (i, e) in events.iter().enumerate() {
            let seq = first_seq + i as u64;
            let Some(slot) = seq.checked_sub(r.first) else {
                continue; // below what memory answers for: on disk
            };
            let slot = slot as usize;
            if r.slots.len() <= slot {
                r.slots.resize_with(slot + 1, || None);
            }
            r.slots[slot] = Some(Recorded {
                event: e.clone(),
                counted: Counted::of(e),
                at,
            });
        }
        r.advance_filled();
        while r.filled > RECENT_CAP || r.slots.len() > RECENT_HARD_CAP {
            r.slots.pop_front();
            r.first += 1;
            r.filled = r.filled.saturating_sub(1);
            r.advance_filled();
        }
    }

    /// The first seq memory answers for: positions before it are read
    /// from the log.
    pub(super) fn first(&self) -> u64 {
        self.inner.lock().map(|r| r.first).unwrap_or(u64::MAX)
    }

    /// Counts of at most `max` events after `after`, or None when they
    /// start before what memory holds.
    pub(super) fn counts_after(&self, after: u64, max: usize) -> Option<Counts> {
        let r = self.inner.lock().ok()?;
        let range = r.range_after(after, max)?;
        let end = range.end;
        if range.is_empty() {
            return Some(Counts {
                through: after,
                counts: Vec::new(),
                more: false,
            });
        }
        Some(Counts {
            through: r.first + end as u64 - 1,
            counts: aggregate(r.slots.range(range).flatten().map(|x| &x.counted)),
            more: end < r.filled,
        })
    }

    /// The events after `after` whose append reported back at least
    /// `min_age` ago (in seq order, stopping at the first younger one) and
    /// whose user `keep` selects (None: all): at most `max` of them, at
    /// most `scan` read. None when they start before what memory holds.
    pub(super) fn events_after(
        &self,
        after: u64,
        max: usize,
        scan: usize,
        min_age: Duration,
        keep: Option<&PartitionSet>,
    ) -> Option<Scanned> {
        let r = self.inner.lock().ok()?;
        let range = r.range_after(after, scan)?;
        let first = r.first;
        let mut out = Scanned {
            events: Vec::new(),
            through: after,
        };
        let settled = r
            .slots
            .range(range.clone())
            .zip(range)
            .map_while(|(x, slot)| {
                x.as_ref()
                    .filter(|x| x.at.elapsed() >= min_age)
                    .map(|x| (x, slot))
            });
        for (x, slot) in settled {
            out.through = first + slot as u64;
            if keep.is_none_or(|k| k.keeps(&x.event.user_id)) {
                out.events.push(x.event.clone());
                if out.events.len() >= max {
                    break;
                }
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::EventKind;
    use crate::features::event_strength;
    use crate::ids::item_key;

    fn event(seq: u64, item: &str, ts: i64) -> LogEvent {
        LogEvent {
            seq,
            ts,
            user_id: "u".into(),
            item_id: item.into(),
            kind: EventKind::Click,
            weight: 1.0,
            device: String::new(),
            origin: None,
        }
    }

    fn total(c: &Counts) -> f32 {
        c.counts.iter().map(|(_, s)| s.count).sum()
    }

    #[test]
    fn answers_only_the_filled_prefix_when_appends_finish_out_of_order() {
        let recent = RecentEvents::new(10);
        let strength = event_strength(EventKind::Click, 1.0);
        // seqs 12..=13 report back before 10..=11
        recent.record(12, &[event(12, "a", 5), event(13, "b", 6)]);
        let c = recent.counts_after(9, 100).expect("in memory");
        assert_eq!((c.through, c.counts.len(), c.more), (9, 0, false));
        recent.record(10, &[event(10, "a", 3), event(11, "a", 4)]);
        let c = recent.counts_after(9, 100).expect("in memory");
        assert_eq!(c.through, 13);
        assert_eq!(total(&c), 4.0 * strength);
        let a = c
            .counts
            .iter()
            .find(|(k, _)| *k == item_key("a"))
            .unwrap()
            .1;
        assert_eq!((a.count, a.trending_ts), (3.0 * strength, 5));
        // a limit cuts the answer and says more follow
        let c = recent.counts_after(9, 3).expect("in memory");
        assert_eq!((c.through, c.more), (12, true));
        let c = recent.counts_after(12, 3).expect("in memory");
        assert_eq!((c.through, c.more, total(&c)), (13, false, strength));
        // before memory: the log's part
        assert!(recent.counts_after(8, 100).is_none());
        assert_eq!(recent.first(), 10);
    }

    #[test]
    fn memory_lets_go_of_the_oldest_events() {
        let recent = RecentEvents::new(1);
        let batch: Vec<LogEvent> = (0..1000).map(|i| event(i + 1, "y", 1)).collect();
        for b in 0..(RECENT_CAP / 1000 + 3) as u64 {
            recent.record(1 + b * 1000, &batch);
        }
        assert_eq!(recent.first(), 3001);
        assert!(recent.counts_after(3000, 10).is_some());
        assert!(recent.counts_after(2999, 10).is_none());
    }

    #[test]
    fn the_log_part_stops_where_memory_starts() {
        let log: Vec<LogEvent> = (1..=6).map(|s| event(s, "x", s as i64)).collect();
        let c = super::super::item_counts::counts_from_log(&log, 2, 5);
        assert_eq!((c.through, c.more), (4, true));
        assert_eq!(c.counts.len(), 1);
        assert_eq!(
            c.counts[0].1.count,
            2.0 * event_strength(EventKind::Click, 1.0)
        );
        // nothing after the position: no progress, nothing more now
        let c = super::super::item_counts::counts_from_log(&[], 2, 5);
        assert_eq!((c.through, c.more, c.counts.len()), (2, false, 0));
    }

    #[test]
    fn events_are_answered_in_seq_order_once_settled() {
        let recent = RecentEvents::new(5);
        let now = Duration::ZERO;
        let hour = Duration::from_secs(3600);
        recent.record(7, &[event(7, "b", 1)]);
        // 5..=6 not back yet: nothing to answer, no progress
        let all = |after, max, min_age| recent.events_after(after, max, usize::MAX, min_age, None);
        assert_eq!(
            all(4, 10, now),
            Some(Scanned {
                events: vec![],
                through: 4
            })
        );
        recent.record(5, &[event(5, "a", 1), event(6, "a", 1)]);
        let seqs = |v: Option<Scanned>| {
            v.map(|v| {
                (
                    v.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
                    v.through,
                )
            })
        };
        // not an hour old yet
        assert_eq!(seqs(all(4, 10, hour)), Some((vec![], 4)));
        assert_eq!(seqs(all(4, 10, now)), Some((vec![5, 6, 7], 7)));
        assert_eq!(seqs(all(5, 1, now)), Some((vec![6], 6)));
        assert_eq!(seqs(all(7, 10, now)), Some((vec![], 7)));
        assert_eq!(all(3, 10, now), None);
        // a position from the network at the end of the range
        assert_eq!(all(u64::MAX, 10, now), None);
        // filtered: only the wanted partitions' users, but the position
        // moves past the others; a scan limit stops early
        let mut other = event(8, "c", 1);
        other.user_id = (0..)
            .map(|i| format!("v{i}"))
            .find(|u| crate::ids::user_partition(u, 4) != crate::ids::user_partition("u", 4))
            .unwrap();
        recent.record(8, &[other, event(9, "d", 1)]);
        let keep = PartitionSet::new(4, &[crate::ids::user_partition("u", 4)]).unwrap();
        let filtered = |after, scan| seqs(recent.events_after(after, 10, scan, now, Some(&keep)));
        assert_eq!(filtered(6, 100), Some((vec![7, 9], 9)));
        assert_eq!(filtered(7, 1), Some((vec![], 8)));
        assert!(recent.counts_after(u64::MAX, 10).is_none());
    }
}
