//! Health and latency of the nodes a coordinator talks to. Plain code:
//! the clock is passed in, so the policy is tested without a network.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Exponentially weighted mean and mean absolute deviation of latencies;
/// `p95` estimates the 95th percentile as mean + 2 deviations (exact for
/// no distribution, steady enough to decide when to hedge).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyTracker {
    mean_us: f64,
    dev_us: f64,
    samples: u64,
}

impl Default for LatencyTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyTracker {
    const ALPHA: f64 = 0.1;

    pub fn new() -> Self {
        LatencyTracker {
            mean_us: 0.0,
            dev_us: 0.0,
            samples: 0,
        }
    }

    pub fn observe(&mut self, took: Duration) {
        let x = took.as_secs_f64() * 1e6;
        if self.samples == 0 {
            self.mean_us = x;
            self.dev_us = x / 2.0;
        } else {
            let err = x - self.mean_us;
            self.mean_us += Self::ALPHA * err;
            self.dev_us += Self::ALPHA * (err.abs() - self.dev_us);
        }
        self.samples += 1;
    }

    pub fn samples(&self) -> u64 {
        self.samples
    }

    pub fn mean(&self) -> Duration {
        Duration::from_secs_f64(self.mean_us.max(0.0) / 1e6)
    }

    pub fn p95(&self) -> Duration {
        Duration::from_secs_f64((self.mean_us + 2.0 * self.dev_us).max(0.0) / 1e6)
    }
}

/// A node is down for the data plane after this many failed calls in a
/// row (errors, or calls a deadline cut off unanswered) ...
pub const DOWN_AFTER_FAILURES: u32 = 3;
/// ... spread over at least this long: a burst of timeouts in one moment
/// of overload is not a node that stopped answering.
pub const DOWN_AFTER: Duration = Duration::from_millis(250);

/// What a coordinator knows about one peer node.
#[derive(Debug, Clone, Default)]
pub struct NodeHealth {
    pub latency: LatencyTracker,
    pub consecutive_failures: u32,
    /// After a failure the node is tried last until this time.
    pub suspect_until: Option<Instant>,
    /// When the current run of failures began.
    pub failing_since: Option<Instant>,
}

impl NodeHealth {
    pub fn is_suspect(&self, now: Instant) -> bool {
        self.suspect_until.is_some_and(|t| now < t)
    }

    /// Down: its copies are not asked at all (a black-holed node never
    /// fails a call, it only lets every call wait out its deadline) until
    /// a background probe hears from it again (`answered_probe`).
    pub fn is_down(&self, now: Instant) -> bool {
        self.consecutive_failures >= DOWN_AFTER_FAILURES
            && self
                .failing_since
                .is_some_and(|t| now.saturating_duration_since(t) >= DOWN_AFTER)
    }

    pub fn record_success(&mut self, took: Duration) {
        self.latency.observe(took);
        self.answered_probe();
    }

    /// The node answered a probe: it is neither down nor suspect (its
    /// latency record is kept).
    pub fn answered_probe(&mut self) {
        self.consecutive_failures = 0;
        self.suspect_until = None;
        self.failing_since = None;
    }

    /// A failed call: the node is suspect for a back-off that doubles with
    /// each failure in a row (100 ms up to 5 s), so a dead node costs one
    /// fast failure per back-off, not one per request; enough of them in a
    /// row make it down (`is_down`).
    pub fn record_failure(&mut self, now: Instant) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.failing_since.get_or_insert(now);
        let shift = self.consecutive_failures.saturating_sub(1).min(6);
        let backoff = Duration::from_millis((100u64 << shift).min(5000));
        self.suspect_until = Some(now + backoff);
    }
}

/// How many hedged (second) requests a coordinator may send: every first
/// request earns `ratio` of a hedge, up to `burst` saved. Hedging cuts the
/// tail when one copy is slow for its own reasons; when every copy is slow
/// because the machines are busy, unlimited hedges add load exactly when
/// there is none to spare and tip a loaded cluster into saturation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HedgeBudget {
    tokens: f64,
    ratio: f64,
    burst: f64,
}

impl HedgeBudget {
    pub fn new(ratio: f64, burst: f64) -> Self {
        HedgeBudget {
            tokens: burst,
            ratio,
            burst,
        }
    }

    /// A first request went out.
    pub fn earn(&mut self) {
        self.tokens = (self.tokens + self.ratio).min(self.burst);
    }

    /// Whether a hedge may go out now (and if so, pays for it).
    pub fn try_spend(&mut self) -> bool {
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Default for HedgeBudget {
    /// One hedge per ten first requests, twenty saved up.
    fn default() -> Self {
        HedgeBudget::new(0.1, 20.0)
    }
}

/// Health of every node, shared by all replica sets of a coordinator so
/// that one shard's failed call warns the others about that node; it also
/// holds the coordinator's one hedge budget.
#[derive(Debug, Clone, Default)]
pub struct HealthBook {
    nodes: Arc<Mutex<HashMap<u64, NodeHealth>>>,
    hedges: Arc<Mutex<HedgeBudget>>,
    /// When a failed or cut-off call to each node was last logged at warn.
    warned: Arc<Mutex<HashMap<u64, Instant>>>,
}

/// A node's failed or cut-off calls are logged at warn at most this often
/// (the rest at debug): a peer that stops answering fails every shard of
/// every request, thousands of lines a second on a busy node, and the
/// first line says all of it.
pub const WARN_EVERY: Duration = Duration::from_secs(1);

impl HealthBook {
    /// Whether a failed call to `node` at `now` should be logged at warn
    /// (the first in `WARN_EVERY`); marks it logged if so.
    pub fn warn_due(&self, node: u64, now: Instant) -> bool {
        let Ok(mut w) = self.warned.lock() else {
            return true;
        };
        match w.get(&node) {
            Some(last) if now.saturating_duration_since(*last) < WARN_EVERY => false,
            _ => {
                w.insert(node, now);
                true
            }
        }
    }

    /// A first request to some copy went out: it earns part of a hedge.
    pub fn first_request(&self) {
        if let Ok(mut b) = self.hedges.lock() {
            b.earn();
        }
    }

    /// Whether the budget allows one more hedged request (and spends it).
    pub fn may_hedge(&self) -> bool {
        self.hedges
            .lock()
            .map(|mut b| b.try_spend())
            .unwrap_or(false)
    }

    pub fn get(&self, node: u64) -> NodeHealth {
        self.nodes
            .lock()
            .map(|m| m.get(&node).cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    pub fn update(&self, node: u64, f: impl FnOnce(&mut NodeHealth)) {
        if let Ok(mut m) = self.nodes.lock() {
            f(m.entry(node).or_default());
        }
    }

    /// The nodes down at `now` (`NodeHealth::is_down`), in id order.
    pub fn down_nodes(&self, now: Instant) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .nodes
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(_, h)| h.is_down(now))
                    .map(|(k, _)| *k)
                    .collect()
            })
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    pub fn snapshot(&self) -> Vec<(u64, NodeHealth)> {
        let mut v: Vec<(u64, NodeHealth)> = self
            .nodes
            .lock()
            .map(|m| m.iter().map(|(k, h)| (*k, h.clone())).collect())
            .unwrap_or_default();
        v.sort_by_key(|x| x.0);
        v
    }
}

/// The order to try replicas in: healthy before suspect, then the local
/// copy (no network), then the fastest by mean latency; nodes never
/// measured count as fast so they get measured. Copies on a node that is
/// down are left out (a local copy never is). Returns indices into
/// `replicas` (node id, is local).
pub fn try_order(replicas: &[(u64, bool)], book: &HealthBook, now: Instant) -> Vec<usize> {
    let mut keyed: Vec<(bool, bool, Duration, u64, usize)> = replicas
        .iter()
        .enumerate()
        .filter_map(|(i, &(node, local))| {
            let h = book.get(node);
            if !local && h.is_down(now) {
                return None;
            }
            Some((h.is_suspect(now), !local, h.latency.mean(), node, i))
        })
        .collect();
    keyed.sort_by_key(|k| (k.0, k.1, k.2, k.3));
    keyed.into_iter().map(|k| k.4).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_follows_latency_and_p95_exceeds_the_mean() {
        let mut t = LatencyTracker::new();
        for i in 0..200 {
            t.observe(Duration::from_micros(if i % 10 == 0 { 3000 } else { 1000 }));
        }
        let mean = t.mean().as_micros();
        assert!((1000..1600).contains(&mean), "{mean}");
        assert!(t.p95() > t.mean());
        assert!(t.p95() < Duration::from_millis(4));
        assert_eq!(t.samples(), 200);
    }

    #[test]
    fn failures_back_off_and_a_success_clears_them() {
        let now = Instant::now();
        let mut h = NodeHealth::default();
        h.record_failure(now);
        assert!(h.is_suspect(now + Duration::from_millis(50)));
        assert!(!h.is_suspect(now + Duration::from_millis(150)));
        for _ in 0..10 {
            h.record_failure(now);
        }
        assert!(h.is_suspect(now + Duration::from_millis(4900)));
        assert!(!h.is_suspect(now + Duration::from_millis(5100)));
        h.record_success(Duration::from_millis(1));
        assert!(!h.is_suspect(now));
        assert_eq!(h.consecutive_failures, 0);
    }

    #[test]
    fn hedges_are_limited_to_the_budget_ratio_after_the_burst() {
        let mut b = HedgeBudget::new(0.1, 2.0);
        // the saved burst first
        assert!(b.try_spend());
        assert!(b.try_spend());
        assert!(!b.try_spend());
        let mut granted = 0;
        for _ in 0..1000 {
            b.earn();
            if b.try_spend() {
                granted += 1;
            }
        }
        assert!((99..=100).contains(&granted), "{granted}");
        // savings stop at the burst
        for _ in 0..1000 {
            b.earn();
        }
        assert!(b.try_spend() && b.try_spend() && !b.try_spend());
    }

    #[test]
    fn order_prefers_healthy_then_local_then_fast() {
        let book = HealthBook::default();
        let now = Instant::now();
        book.update(2, |h| h.record_success(Duration::from_millis(5)));
        book.update(3, |h| h.record_success(Duration::from_millis(1)));
        // remote 2 (slow), remote 3 (fast), local 1
        let reps = [(2, false), (3, false), (1, true)];
        assert_eq!(try_order(&reps, &book, now), vec![2, 1, 0]);
        // the local node failed: it goes last
        book.update(1, |h| h.record_failure(now));
        assert_eq!(try_order(&reps, &book, now), vec![1, 0, 2]);
    }

    #[test]
    fn failures_in_a_row_over_a_while_make_a_node_down_until_it_answers() {
        let t0 = Instant::now();
        let mut h = NodeHealth::default();
        for i in 0..DOWN_AFTER_FAILURES {
            h.record_failure(t0 + Duration::from_millis(10 * i as u64));
        }
        // enough failures, but all within a moment: not down yet
        assert!(!h.is_down(t0 + Duration::from_millis(100)));
        assert!(h.is_down(t0 + DOWN_AFTER));
        // a success in between restarts the count
        let mut flaky = NodeHealth::default();
        flaky.record_failure(t0);
        flaky.record_failure(t0 + Duration::from_millis(100));
        flaky.record_success(Duration::from_millis(1));
        flaky.record_failure(t0 + Duration::from_millis(300));
        assert!(!flaky.is_down(t0 + Duration::from_secs(5)));
        // a probe's answer brings a down node back, latency kept
        h.latency.observe(Duration::from_millis(2));
        h.answered_probe();
        assert!(!h.is_down(t0 + Duration::from_secs(5)));
        assert!(!h.is_suspect(t0 + Duration::from_secs(5)));
        assert_eq!(h.latency.samples(), 1);
    }

    #[test]
    fn copies_on_a_down_node_are_left_out_but_never_the_local_one() {
        let book = HealthBook::default();
        let t0 = Instant::now();
        for node in [1, 2] {
            for _ in 0..DOWN_AFTER_FAILURES {
                book.update(node, |h| h.record_failure(t0));
            }
        }
        let later = t0 + DOWN_AFTER;
        assert_eq!(book.down_nodes(later), vec![1, 2]);
        // 1 is this node (local), 2 and 3 remote; 2 is down
        let reps = [(1, true), (2, false), (3, false)];
        assert_eq!(try_order(&reps, &book, later), vec![2, 0]);
        // every remote copy down and no local one: nothing to ask
        assert!(try_order(&[(2, false)], &book, later).is_empty());
        book.update(2, |h| h.answered_probe());
        assert_eq!(book.down_nodes(later), vec![1]);
        assert_eq!(try_order(&[(2, false)], &book, later), vec![0]);
    }

    #[test]
    fn a_node_failures_are_warned_about_once_a_second() {
        let book = HealthBook::default();
        let t0 = Instant::now();
        assert!(book.warn_due(2, t0));
        assert!(!book.warn_due(2, t0 + Duration::from_millis(10)));
        assert!(!book.warn_due(2, t0 + Duration::from_millis(999)));
        // another node has its own clock
        assert!(book.warn_due(3, t0 + Duration::from_millis(10)));
        assert!(book.warn_due(2, t0 + WARN_EVERY));
        // clones share the record (one book per node, many replica sets)
        assert!(!book.clone().warn_due(2, t0 + WARN_EVERY));
    }
}
