//! Item counters (popularity, trending) across a cluster: every node counts
//! every event the cluster accepted, without every event travelling to
//! every node.
//!
//! A node counts the events its clients send it as it logs them. The events
//! other nodes accepted it pulls from them: every `PULL_EVERY` it asks each
//! peer (`ShardData.FetchItemCounts`) for the events that peer logged after
//! the last seq it counted from it, aggregated per item (`ItemStats`, which
//! merge exactly: counts add, decayed scores meet at the later time). So the
//! cost of counting is one small message per pair of nodes per tick, however
//! many events flowed, and a user's events need to reach only the copies of
//! the user's partition. A count lags the event by about one tick on the
//! other nodes (the user's own state does not: it travels with the event).
//!
//! Where counting starts: for model version V, origin O's events from O's
//! serving mark for V on (the first seq of O's log that V's bundle did not
//! see, the same place O starts counting its own events after a restart).
//! So every node counts the same events for V, a restarted node rebuilds its
//! counts by pulling from the marks again (its positions live in memory
//! only), and a new version starts afresh. A peer that lost its log starts a
//! new one with a new identity, and is counted afresh from its new mark.
//!
//! The peer answers from `RecentEvents`, the events it logged since it
//! started, kept in memory; a position before that is read from its log on
//! disk.
//!
//! Owns: the aggregation (`Counts`), `CountFollower` (positions per
//! origin) and `run` (the pulling task). Must not touch: how events are
//! validated, logged or applied to user state (`events`), or the catalogue's
//! other data.

use super::Node;
use crate::control::ClusterLink;
use crate::eventlog::LogEvent;
use crate::features::{event_strength, ItemStats};
use crate::ids::item_key;
use crate::proto::data::shard_data_client::ShardDataClient;
use crate::proto::data::{ItemCount, ItemCountsRequest, ItemCountsResponse};
use crate::service::types::ServiceError;
use crate::telemetry::failure_log::StepFailures;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How often a node asks each peer for the counts of its new events.
const PULL_EVERY: Duration = Duration::from_millis(250);
/// Most events one answer aggregates; the caller asks again at once.
pub const MAX_COUNT_EVENTS: usize = 50_000;

/// One logged event's effect on its item's counters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Counted {
    key: u64,
    ts: i64,
    strength: f32,
}

impl Counted {
    pub(super) fn of(e: &LogEvent) -> Counted {
        Counted {
            key: item_key(&e.item_id),
            ts: e.ts,
            strength: event_strength(e.kind, e.weight),
        }
    }
}

/// Aggregated counters of a run of one log's events.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Counts {
    /// The last seq they cover (the position asked after, when none).
    pub through: u64,
    pub counts: Vec<(u64, ItemStats)>,
    /// More events follow `through` already.
    pub more: bool,
}

/// Per item, the counters of `events` alone.
pub(super) fn aggregate<'a>(events: impl Iterator<Item = &'a Counted>) -> Vec<(u64, ItemStats)> {
    let mut by_item: HashMap<u64, ItemStats> = HashMap::new();
    for c in events {
        by_item.entry(c.key).or_default().apply(c.ts, c.strength);
    }
    let mut out: Vec<(u64, ItemStats)> = by_item.into_iter().collect();
    out.sort_unstable_by_key(|(k, _)| *k);
    out
}

/// Counts of events read from the log after `after`, stopping before
/// `memory_from` (where `RecentEvents` takes over).
pub(super) fn counts_from_log(events: &[LogEvent], after: u64, memory_from: u64) -> Counts {
    let below: Vec<Counted> = events
        .iter()
        .filter(|e| e.seq > after && e.seq < memory_from)
        .map(Counted::of)
        .collect();
    let through = events
        .iter()
        .map(|e| e.seq)
        .filter(|s| *s > after && *s < memory_from)
        .max()
        .unwrap_or(after);
    Counts {
        through,
        counts: aggregate(below.iter()),
        // progress: ask again at once (the log or memory may hold more)
        more: through > after,
    }
}

/// Where this node is in each peer's log, for the version it counts.
#[derive(Default)]
pub(super) struct CountFollower {
    state: Mutex<Following>,
}

#[derive(Default)]
struct Following {
    version: String,
    /// Per origin node: its log identity and the last seq counted.
    at: BTreeMap<u64, (u64, u64)>,
}

impl CountFollower {
    /// What to ask `origin` for, counting for `version`.
    pub(super) fn request(&self, origin: u64, version: &str) -> ItemCountsRequest {
        let at = self
            .state
            .lock()
            .ok()
            .filter(|s| s.version == version)
            .and_then(|s| s.at.get(&origin).copied());
        ItemCountsRequest {
            model_version: version.to_string(),
            origin_log: at.map_or(0, |(log, _)| log),
            after_seq: at.map_or(0, |(_, seq)| seq),
            from_mark: at.is_none(),
            max_events: MAX_COUNT_EVENTS as u32,
        }
    }

    /// Hands `answer` (to `asked`, sent to `origin`) to `merge`, which adds
    /// it to the catalogue of `version`, and moves past it; false (nothing
    /// merged) when the position moved since `asked` was made.
    pub(super) fn apply(
        &self,
        origin: u64,
        asked: &ItemCountsRequest,
        answer: &ItemCountsResponse,
        version: &str,
        merge: impl FnOnce(&[(u64, ItemStats)]),
    ) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        if asked.model_version != version {
            return false; // another version is served now: its own start
        }
        if s.version != version {
            *s = Following {
                version: version.to_string(),
                at: BTreeMap::new(),
            };
        }
        let now = s.at.get(&origin).copied();
        let current = match now {
            None => asked.from_mark,
            Some(at) => !asked.from_mark && at == (asked.origin_log, asked.after_seq),
        };
        if !current {
            return false;
        }
        let counts: Vec<(u64, ItemStats)> = answer
            .counts
            .iter()
            .map(|c| {
                (
                    c.item_key,
                    ItemStats {
                        count: c.count,
                        trending: c.trending,
                        trending_ts: c.trending_ts,
                    },
                )
            })
            .collect();
        merge(&counts);
        s.at.insert(origin, (answer.origin_log, answer.through_seq));
        true
    }
}

/// The wire form of `counts`, from log `origin_log`.
pub(super) fn to_wire(origin_log: u64, counts: Counts) -> ItemCountsResponse {
    ItemCountsResponse {
        origin_log,
        through_seq: counts.through,
        more: counts.more,
        counts: counts
            .counts
            .into_iter()
            .map(|(item_key, s)| ItemCount {
                item_key,
                count: s.count,
                trending: s.trending,
                trending_ts: s.trending_ts,
            })
            .collect(),
    }
}

impl Node {
    /// A peer's `FetchItemCounts`: the counts of the events this node's
    /// clients sent it after the peer's position (or from this node's mark
    /// for the peer's version).
    pub async fn item_counts_for_peer(
        &self,
        req: ItemCountsRequest,
    ) -> Result<ItemCountsResponse, ServiceError> {
        let my_log = self.event_log_id();
        let after = if req.from_mark || req.origin_log != my_log {
            let mark = self.mark_of(&req.model_version, "item counts start in its event log")?;
            mark.log_seq.saturating_sub(1)
        } else {
            req.after_seq
        };
        let max = match req.max_events as usize {
            0 => MAX_COUNT_EVENTS,
            n => n.min(MAX_COUNT_EVENTS),
        };
        let recent = self.inner.events.recent();
        if let Some(c) = recent.counts_after(after, max) {
            return Ok(to_wire(my_log, c));
        }
        // `after` comes from the network: no arithmetic on it may overflow
        let memory_from = recent.first();
        let wanted = memory_from
            .saturating_sub(after.saturating_add(1))
            .min(max as u64) as usize;
        let events = self
            .client_events_after(after, wanted, wanted, None)
            .await?
            .events;
        Ok(to_wire(
            my_log,
            counts_from_log(&events, after, memory_from),
        ))
    }
}

/// Asks `peer` for its new events' counts until it has no more (or a few
/// rounds passed).
async fn pull_from(
    node: &Node,
    follower: &CountFollower,
    link: &ClusterLink,
    peer: u64,
    addr: String,
) -> Result<(), String> {
    for _ in 0..8 {
        let Some(serving) = node.serving() else {
            return Ok(());
        };
        let version = serving.model.version.clone();
        let asked = follower.request(peer, &version);
        let ch = link.channel(peer, &addr).map_err(|e| e.to_string())?;
        let mut client = ShardDataClient::new(ch)
            .max_decoding_message_size(link.max_message_bytes())
            .max_encoding_message_size(link.max_message_bytes());
        let mut req = tonic::Request::new(asked.clone());
        req.set_timeout(Duration::from_secs(5));
        let answer = client
            .fetch_item_counts(req)
            .await
            .map_err(|s| format!("FetchItemCounts: {}", s.message()))?
            .into_inner();
        follower.apply(peer, &asked, &answer, &version, |c| {
            serving.catalog.merge_counts(c)
        });
        if !answer.more {
            break;
        }
    }
    Ok(())
}

/// The pulling task: see the module doc.
pub async fn run(node: Node, link: Arc<ClusterLink>, mut shutdown: watch::Receiver<bool>) {
    let follower = CountFollower::default();
    let mut tick = tokio::time::interval(PULL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures: BTreeMap<u64, StepFailures> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        if node.serving().is_none() {
            continue;
        }
        super::catchup::pull_every_peer(&link, &mut failures, "item count pull", |peer, addr| {
            pull_from(&node, &follower, &link, peer, addr)
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_counts_each_answer_once_and_restarts_with_a_new_version() {
        let follower = CountFollower::default();
        let mut added: Vec<f32> = Vec::new();
        let mut merge = |c: &[(u64, ItemStats)]| added.push(c.iter().map(|(_, s)| s.count).sum());
        let first = follower.request(2, "v1");
        assert!(first.from_mark);
        let answer = ItemCountsResponse {
            origin_log: 77,
            through_seq: 40,
            more: false,
            counts: vec![ItemCount {
                item_key: 9,
                count: 2.0,
                trending: 2.0,
                trending_ts: 100,
            }],
        };
        assert!(follower.apply(2, &first, &answer, "v1", &mut merge));
        // the same answer again (a stale duplicate) adds nothing
        assert!(!follower.apply(2, &first, &answer, "v1", &mut merge));
        let next = follower.request(2, "v1");
        assert_eq!(
            (next.from_mark, next.origin_log, next.after_seq),
            (false, 77, 40)
        );
        // an answer for the old version is not added to the new catalogue
        assert!(!follower.apply(2, &next, &answer, "v2", &mut merge));
        // the new version starts from the origin's mark
        let fresh = follower.request(2, "v2");
        assert!(fresh.from_mark);
        assert!(follower.apply(2, &fresh, &answer, "v2", &mut merge));
        // another origin's position is its own
        assert!(follower.request(3, "v2").from_mark);
        assert_eq!(added, vec![2.0, 2.0]);
    }
}
