//! The record of one chaos run: every client operation with its result,
//! every (node, term, leader) observation of the status poller, and every
//! fault window.
//!
//! Owns: the record types and the shared, clock-stamped recorder.
//! Must not touch: processes or the network (the load generator, the poller
//! and the fault layer write here; the invariant checkers and the report
//! only read).

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What a client operation was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum OpKind {
    Recommend,
    Event,
    Upsert,
}

/// How a client operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// A 2xx answer.
    Ok(u16),
    /// A non-2xx answer.
    Http(u16),
    /// No answer within the client's timeout (deadline + slack): a hang.
    Timeout,
    /// The connection could not be opened (the node is down).
    Connect,
    /// The connection broke after it was opened.
    Transport,
    /// A 2xx answer whose body is not the promised JSON.
    BadResponse,
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok(_))
    }
}

/// One client operation.
#[derive(Debug, Clone, Serialize)]
pub struct OpRecord {
    pub kind: OpKind,
    /// The node the request was sent to.
    pub node: u64,
    /// Since the start of the run.
    pub start: Duration,
    pub end: Duration,
    pub outcome: Outcome,
    /// Recommend: the deadline sent with the request.
    pub deadline: Option<Duration>,
    /// Recommend: the answer's coverage.
    pub coverage: Option<f64>,
    /// Recommend: the degraded reasons of the answer (empty when full).
    pub degraded: Vec<String>,
    /// Upsert: the item id written (each upsert writes a fresh id once).
    pub item: Option<String>,
    /// Event: the user it was for.
    pub user: Option<String>,
}

impl OpRecord {
    pub fn latency(&self) -> Duration {
        self.end.saturating_sub(self.start)
    }

    /// An upsert the cluster said it accepted: it must never be lost.
    pub fn acknowledged(&self) -> bool {
        self.kind == OpKind::Upsert && self.outcome.is_ok()
    }
}

/// One answer of a node's Control.Status, from the poller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaderObs {
    pub at: Duration,
    pub node: u64,
    pub term: u64,
    /// "Leader", "Follower", "Candidate", "Learner", "Shutdown".
    pub role: String,
    pub leader: Option<u64>,
}

/// A fault from injection to heal.
#[derive(Debug, Clone, Serialize)]
pub struct FaultWindow {
    /// e.g. "kill 2", "pause 1 (leader)", "partition [1] | [2,3]".
    pub name: String,
    /// Nodes clients cannot reach while it lasts (killed or paused):
    /// requests to them may fail or hang without breaking an invariant.
    pub unreachable: Vec<u64>,
    pub start: Duration,
    /// `None` while it lasts.
    pub end: Option<Duration>,
    /// For a fault aimed at the leader: (node, term) of that leader, to
    /// measure the time until another node leads.
    pub old_leader: Option<(u64, u64)>,
}

impl FaultWindow {
    /// True when `t` falls inside the window (an open window lasts forever).
    pub fn covers(&self, t: Duration) -> bool {
        t >= self.start && self.end.is_none_or(|e| t <= e)
    }

    /// True when the window overlaps [from, to].
    pub fn overlaps(&self, from: Duration, to: Duration) -> bool {
        from <= self.end.unwrap_or(Duration::MAX) && to >= self.start
    }
}

/// Everything a run recorded.
#[derive(Debug, Clone, Default, Serialize)]
pub struct History {
    pub ops: Vec<OpRecord>,
    pub leaders: Vec<LeaderObs>,
    pub faults: Vec<FaultWindow>,
}

impl History {
    /// True when some fault window covers `t`.
    pub fn in_fault(&self, t: Duration) -> bool {
        self.faults.iter().any(|f| f.covers(t))
    }

    /// Per user: (events acknowledged, events sent). An event that was
    /// not acknowledged may still have been applied, so a copy of the
    /// user's state must count between the two above its start.
    pub fn events_by_user(&self) -> BTreeMap<String, (u64, u64)> {
        let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for o in self.ops.iter().filter(|o| o.kind == OpKind::Event) {
            if let Some(u) = &o.user {
                let e = out.entry(u.clone()).or_default();
                e.1 += 1;
                if o.outcome.is_ok() {
                    e.0 += 1;
                }
            }
        }
        out
    }

    /// Ids of every acknowledged upsert.
    pub fn acknowledged_items(&self) -> Vec<&str> {
        self.ops
            .iter()
            .filter(|o| o.acknowledged())
            .filter_map(|o| o.item.as_deref())
            .collect()
    }
}

/// The shared, clock-stamped history of a run.
#[derive(Clone)]
pub struct Recorder {
    t0: Instant,
    inner: Arc<Mutex<History>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Recorder {
            t0: Instant::now(),
            inner: Arc::default(),
        }
    }

    /// Time since the run started.
    pub fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    fn lock(&self) -> MutexGuard<'_, History> {
        // a recorder thread that panicked left complete records behind
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn op(&self, op: OpRecord) {
        self.lock().ops.push(op);
    }

    pub fn leader(&self, obs: LeaderObs) {
        self.lock().leaders.push(obs);
    }

    /// Opens a fault window; returns its index for `end_fault`.
    pub fn begin_fault(
        &self,
        name: String,
        unreachable: Vec<u64>,
        old_leader: Option<(u64, u64)>,
    ) -> usize {
        let mut h = self.lock();
        h.faults.push(FaultWindow {
            name,
            unreachable,
            start: self.t0.elapsed(),
            end: None,
            old_leader,
        });
        h.faults.len() - 1
    }

    pub fn end_fault(&self, index: usize) {
        let now = self.t0.elapsed();
        if let Some(f) = self.lock().faults.get_mut(index) {
            f.end.get_or_insert(now);
        }
    }

    /// Closes every open fault window (the final heal).
    pub fn end_all_faults(&self) {
        let now = self.t0.elapsed();
        for f in &mut self.lock().faults {
            f.end.get_or_insert(now);
        }
    }

    pub fn snapshot(&self) -> History {
        self.lock().clone()
    }
}
