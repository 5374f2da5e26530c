//! Which members the Raft leader can reach, and since when it cannot; and,
//! on every node, the probes that bring a peer the data plane counts as
//! down back into use.
//!
//! openraft 0.9's leader metrics show how far each follower's log matches,
//! which stands still on an idle cluster whether the follower is alive or
//! not, so the leader probes every member itself: a `Control.Status` call
//! (not linearizable, so it costs the member nothing but an answer) every
//! half second, each bounded by a short timeout. The same call is what
//! `funnel admin status` uses to call a node unreachable, and it passes
//! through the fault injector like every other node-to-node call.
//!
//! A new leader knows nothing yet: it counts every member as seen at the
//! moment it became leader, so a dead node is declared dead at the earliest
//! `replace_dead_after` after a leader change — never earlier than the
//! configured wait.
//!
//! Owns: `Liveness` (the probe task's table) and `watch`. Must not touch:
//! what is done about a dead member (`control::moves` plans that with
//! `cluster::moves::plan_dead_replacement`).

use super::link::ClusterLink;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How often the leader probes every member.
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// A member that does not answer a status call within this is unreachable
/// for this round (a healthy member answers in well under a millisecond).
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

/// Last time the leader heard from each member.
#[derive(Default)]
pub struct Liveness {
    inner: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    /// True while this node runs probes as the leader.
    leading: bool,
    last_seen: HashMap<u64, Instant>,
}

impl Liveness {
    /// How long `node` has gone without answering, or `None` when this node
    /// is not probing as the leader (or has never heard of `node`).
    pub fn unreachable_for(&self, node: u64) -> Option<Duration> {
        let t = self.inner.lock().ok()?;
        if !t.leading {
            return None;
        }
        t.last_seen.get(&node).map(|seen| seen.elapsed())
    }

    fn start_leading(&self, members: &[u64]) {
        if let Ok(mut t) = self.inner.lock() {
            if !t.leading {
                t.leading = true;
                t.last_seen.clear();
            }
            let now = Instant::now();
            for m in members {
                t.last_seen.entry(*m).or_insert(now);
            }
        }
    }

    fn stop_leading(&self) {
        if let Ok(mut t) = self.inner.lock() {
            t.leading = false;
            t.last_seen.clear();
        }
    }

    fn seen(&self, node: u64, at: Instant) {
        if let Ok(mut t) = self.inner.lock() {
            if t.leading {
                t.last_seen.insert(node, at);
            }
        }
    }
}

/// Probes, every `PROBE_EVERY` until shutdown: every other member while
/// this node leads (the table above), and on every node the peers its
/// data plane counts as down (`routing::NodeHealth::is_down`): a peer that
/// answers is asked for shard searches again.
pub async fn watch(link: Arc<ClusterLink>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // down peers already logged
    let mut logged_down: BTreeSet<u64> = BTreeSet::new();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let leading = link.is_leader();
        if !leading {
            link.liveness.stop_leading();
        }
        let down: BTreeSet<u64> = link.book.down_nodes(Instant::now()).into_iter().collect();
        crate::telemetry::metrics::metrics()
            .peers_down
            .set(down.len() as i64);
        for id in down.difference(&logged_down) {
            tracing::warn!(
                peer = id,
                "peer stopped answering shard searches; its copies are skipped until it answers a probe"
            );
        }
        logged_down.retain(|id| down.contains(id));
        logged_down.extend(down.iter().copied());
        let members: Vec<(u64, String)> = link
            .peers()
            .into_iter()
            .filter(|(id, _)| leading || down.contains(id))
            .collect();
        if leading {
            let ids: Vec<u64> = members.iter().map(|(id, _)| *id).collect();
            link.liveness.start_leading(&ids);
        }
        if members.is_empty() {
            continue;
        }
        let probes = members.into_iter().map(|(id, addr)| {
            let link = link.clone();
            async move {
                let started = Instant::now();
                let r = tokio::time::timeout(PROBE_TIMEOUT, link.raft.remote_status(&addr, false))
                    .await;
                (id, started, matches!(r, Ok(Ok(_))))
            }
        });
        for (id, at, ok) in futures::future::join_all(probes).await {
            if !ok {
                continue;
            }
            if leading {
                link.liveness.seen(id, at);
            }
            if down.contains(&id) {
                link.book.update(id, |h| h.answered_probe());
                logged_down.remove(&id);
                tracing::info!(
                    peer = id,
                    "peer answers again; its shard copies are asked again"
                );
            }
        }
    }
}
