//! One shard's copies behind one `ShardClient`: try the best copy, fail
//! over at once to the next when it errors, and hedge to a second copy
//! when the first is slower than its recent p95. The caller's deadline
//! bounds everything (the coordinator wraps each shard call in it).

use super::client::{CallContext, SearchSpec, ShardCallError, ShardClient, VectorsResult};
use super::health::{try_order, HealthBook};
use super::plan::CopyInfo;
use crate::shard::SearchResult;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `tracing::warn!` when `$due`, else `tracing::debug!`, same fields
/// (`HealthBook::warn_due` decides).
macro_rules! warn_or_debug {
    ($due:expr, $($rest:tt)*) => {
        if $due {
            tracing::warn!($($rest)*)
        } else {
            tracing::debug!($($rest)*)
        }
    };
}

/// One copy of the shard: where it lives and how to call it.
#[derive(Clone)]
pub struct ReplicaTarget {
    pub node: u64,
    pub local: bool,
    pub client: Arc<dyn ShardClient>,
}

#[derive(Clone)]
pub struct ReplicaSet {
    shard: u32,
    replicas: Vec<ReplicaTarget>,
    book: HealthBook,
    /// Never hedge sooner than this: below it a second request costs more
    /// than the tail it would cut.
    min_hedge: Duration,
}

impl ReplicaSet {
    pub fn new(shard: u32, replicas: Vec<ReplicaTarget>, book: HealthBook) -> Self {
        ReplicaSet {
            shard,
            replicas,
            book,
            min_hedge: Duration::from_millis(2),
        }
    }

    pub fn replicas(&self) -> &[ReplicaTarget] {
        &self.replicas
    }

    /// When to send the hedged second request: the first copy's p95, once
    /// it has been measured; before that, a conservative 10 ms.
    fn hedge_after(&self, node: u64) -> Duration {
        let h = self.book.get(node);
        if h.latency.samples() < 5 {
            Duration::from_millis(10)
        } else {
            h.latency.p95().max(self.min_hedge)
        }
    }

    async fn search_inner(
        self,
        spec: SearchSpec,
        ctx: CallContext,
    ) -> Result<SearchResult, ShardCallError> {
        let keys: Vec<(u64, bool)> = self.replicas.iter().map(|r| (r.node, r.local)).collect();
        let mut order = try_order(&keys, &self.book, Instant::now());
        // the request's plan names the copy to ask first (a healthy one:
        // the planner saw the same book); the rest keep their order
        if let Some(want) = ctx.plan.as_ref().and_then(|p| p.first(self.shard)) {
            if let Some(pos) = order.iter().position(|&i| self.replicas[i].node == want) {
                let i = order.remove(pos);
                order.insert(0, i);
            }
        }
        let mut next = order.into_iter();
        let mut inflight = FuturesUnordered::new();
        let start = |i: usize| {
            let r = self.replicas[i].clone();
            let (spec, ctx) = (spec.clone(), ctx.clone());
            async move {
                let t0 = Instant::now();
                let res = r.client.search(spec, ctx).await;
                (r.node, t0.elapsed(), res)
            }
        };
        let Some(first) = next.next() else {
            return Err(ShardCallError::NoLiveReplica { shard: self.shard });
        };
        // (node, sent at) of every call still in flight; logged with the
        // request id if the caller's deadline drops this call unanswered
        let mut pending = Unanswered {
            shard: self.shard,
            request_id: ctx.request_id.clone(),
            calls: Vec::with_capacity(2),
            book: self.book.clone(),
        };
        inflight.push(start(first));
        pending.sent(&self.replicas[first]);
        self.book.first_request();
        let hedge = tokio::time::sleep(self.hedge_after(self.replicas[first].node));
        tokio::pin!(hedge);
        let mut hedged = false;
        let mut errors = Vec::new();
        loop {
            tokio::select! {
                done = inflight.next() => {
                    let Some((node, took, res)) = done else { break };
                    pending.answered(node);
                    let outcome = if res.is_ok() { "ok" } else { "error" };
                    crate::telemetry::metrics::metrics()
                        .replica_calls
                        .with_label_values(&[outcome])
                        .inc();
                    match res {
                        Ok(r) => {
                            self.book.update(node, |h| h.record_success(took));
                            // a copy that lost to a hedge is charged the time it
                            // took so far: a stalled node (SIGSTOP, a full queue)
                            // never completes a call, and without this it would
                            // stay first choice and need a hedge every time
                            for (slow, since, _) in pending.calls.drain(..) {
                                self.book.update(slow, |h| h.latency.observe(since.elapsed()));
                            }
                            return Ok(r);
                        }
                        Err(e) => {
                            let now = Instant::now();
                            self.book.update(node, |h| h.record_failure(now));
                            warn_or_debug!(
                                self.book.warn_due(node, now),
                                request_id = pending.request_id(),
                                shard_id = self.shard,
                                node,
                                error = %e,
                                "shard copy failed; failing over"
                            );
                            errors.push(e);
                            // fail over at once
                            if let Some(i) = next.next() {
                                inflight.push(start(i));
                                pending.sent(&self.replicas[i]);
                            }
                        }
                    }
                }
                _ = &mut hedge, if !hedged => {
                    hedged = true;
                    if !self.book.may_hedge() {
                        crate::telemetry::metrics::metrics().hedges_refused.inc();
                    } else if let Some(i) = next.next() {
                        crate::telemetry::metrics::metrics().hedged_requests.inc();
                        // routine (a copy past its own p95), hence debug
                        tracing::debug!(
                            request_id = pending.request_id(),
                            shard_id = self.shard,
                            slow_node = self.replicas[first].node,
                            hedge_node = self.replicas[i].node,
                            "shard copy slow; hedging to another copy"
                        );
                        inflight.push(start(i));
                        pending.sent(&self.replicas[i]);
                    }
                }
            }
            if inflight.is_empty() {
                break;
            }
        }
        Err(match errors.is_empty() {
            true => ShardCallError::NoLiveReplica { shard: self.shard },
            false => ShardCallError::EveryCopyFailed {
                shard: self.shard,
                errors,
            },
        })
    }
}

/// A call a deadline cut off counts as a failure of its node only after
/// this long: a client's tiny deadline says nothing about the node.
const CUT_OFF_COUNTS_AFTER: Duration = Duration::from_millis(20);

/// The calls of one shard search still in flight. Dropped with calls left,
/// the search was cut off by its caller (the coordinator's recall deadline):
/// the slow copies are logged with the request id, so a slow node can be
/// tied to the requests it slowed down, and each remote one that waited
/// long enough counts as a failure of its node: a black-holed peer never
/// answers with an error, so this is how a node learns it stopped
/// answering (`NodeHealth::is_down`).
struct Unanswered {
    shard: u32,
    request_id: Option<Arc<str>>,
    /// (node, sent at, local copy)
    calls: Vec<(u64, Instant, bool)>,
    book: HealthBook,
}

impl Unanswered {
    fn request_id(&self) -> &str {
        self.request_id.as_deref().unwrap_or("-")
    }

    fn sent(&mut self, to: &ReplicaTarget) {
        self.calls.push((to.node, Instant::now(), to.local));
    }

    fn answered(&mut self, node: u64) {
        if let Some(i) = self.calls.iter().position(|p| p.0 == node) {
            self.calls.swap_remove(i);
        }
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        let now = Instant::now();
        for &(node, since, local) in &self.calls {
            if !local && now.saturating_duration_since(since) >= CUT_OFF_COUNTS_AFTER {
                self.book.update(node, |h| h.record_failure(now));
            }
        }
        if let Some(&(node, since, _)) = self.calls.iter().min_by_key(|c| c.1) {
            let nodes: Vec<u64> = self.calls.iter().map(|c| c.0).collect();
            warn_or_debug!(
                self.book.warn_due(node, now),
                request_id = self.request_id(),
                shard_id = self.shard,
                node,
                waiting_on = ?nodes,
                waited_ms = since.elapsed().as_millis() as u64,
                "shard search cut off unanswered (deadline)"
            );
        }
    }
}

/// Whether a copy's mean latency is far above the fastest copy's: more
/// than three times it and more than 2 ms over it.
fn far_slower(mean: Duration, fastest: Duration) -> bool {
    mean > fastest * 3 && mean > fastest + Duration::from_millis(2)
}

impl ShardClient for ReplicaSet {
    fn shard(&self) -> u32 {
        self.shard
    }

    fn search(
        &self,
        spec: SearchSpec,
        ctx: CallContext,
    ) -> BoxFuture<'static, Result<SearchResult, ShardCallError>> {
        Box::pin(self.clone().search_inner(spec, ctx))
    }

    /// Copies a request may plan on: not suspect after a failure, and not
    /// far slower than this shard's fastest copy. A stalled node (paused,
    /// overloaded) never fails a call, it only loses hedges and is charged
    /// for them; planning on it anyway would make every request wait for a
    /// hedge whose delay, that copy's own p95, has grown past the deadline.
    fn copies(&self) -> Vec<CopyInfo> {
        let now = Instant::now();
        let health: Vec<_> = self
            .replicas
            .iter()
            .map(|r| self.book.get(r.node))
            .collect();
        let fastest = health
            .iter()
            .filter(|h| !h.is_suspect(now))
            .map(|h| h.latency.mean())
            .min()
            .unwrap_or_default();
        self.replicas
            .iter()
            .zip(&health)
            .map(|(r, h)| CopyInfo {
                node: r.node,
                local: r.local,
                healthy: (r.local || !h.is_down(now))
                    && !h.is_suspect(now)
                    && !far_slower(h.latency.mean(), fastest),
            })
            .collect()
    }

    fn vectors(&self, keys: Arc<[u64]>, ctx: CallContext) -> BoxFuture<'static, VectorsResult> {
        let this = self.clone();
        Box::pin(async move {
            let order: Vec<(u64, bool)> = this.replicas.iter().map(|r| (r.node, r.local)).collect();
            let mut last = None;
            for i in try_order(&order, &this.book, Instant::now()) {
                let r = &this.replicas[i];
                let t0 = Instant::now();
                match r.client.vectors(keys.clone(), ctx.clone()).await {
                    Ok(v) => {
                        this.book.update(r.node, |h| h.record_success(t0.elapsed()));
                        return Ok(v);
                    }
                    Err(e) => {
                        this.book
                            .update(r.node, |h| h.record_failure(Instant::now()));
                        last = Some(e);
                    }
                }
            }
            Err(last.unwrap_or(ShardCallError::NoLiveReplica { shard: this.shard }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::client::CopyFailure;

    /// A copy that answers after `delay`, or fails.
    struct Fake {
        shard: u32,
        delay: Duration,
        fail: bool,
        tag: u64,
        calls: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl ShardClient for Fake {
        fn shard(&self) -> u32 {
            self.shard
        }
        fn search(
            &self,
            _spec: SearchSpec,
            _ctx: CallContext,
        ) -> BoxFuture<'static, Result<SearchResult, ShardCallError>> {
            let (delay, fail, tag, shard) = (self.delay, self.fail, self.tag, self.shard);
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                if fail {
                    Err(ShardCallError::Copy {
                        shard,
                        node: Some(tag),
                        failure: CopyFailure::Local("down".into()),
                    })
                } else {
                    Ok(SearchResult {
                        shard,
                        hits: vec![(tag, 1.0)],
                        vectors: Default::default(),
                        cpu_micros: 0,
                    })
                }
            })
        }
        fn vectors(&self, _keys: Arc<[u64]>, _: CallContext) -> BoxFuture<'static, VectorsResult> {
            Box::pin(async { Ok(Default::default()) })
        }
    }

    fn spec() -> SearchSpec {
        SearchSpec {
            query: Arc::from(vec![1.0f32]),
            k: 1,
            exclude: Arc::new(vec![]),
            categories: None,
            fetch: Arc::from(Vec::new()),
        }
    }

    fn target(
        node: u64,
        local: bool,
        delay_ms: u64,
        fail: bool,
    ) -> (ReplicaTarget, Arc<std::sync::atomic::AtomicUsize>) {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let client = Arc::new(Fake {
            shard: 0,
            delay: Duration::from_millis(delay_ms),
            fail,
            tag: node,
            calls: calls.clone(),
        });
        (
            ReplicaTarget {
                node,
                local,
                client,
            },
            calls,
        )
    }

    #[tokio::test]
    async fn a_failed_copy_fails_over_to_the_next_and_is_then_avoided() {
        let book = HealthBook::default();
        let (dead, dead_calls) = target(1, true, 0, true);
        let (live, _) = target(2, false, 1, false);
        let set = ReplicaSet::new(0, vec![dead, live], book.clone());
        let r = set.search(spec(), CallContext::default()).await.unwrap();
        assert_eq!(r.hits[0].0, 2);
        assert_eq!(dead_calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        // the dead local copy is suspect now: the next call goes to node 2 first
        let r = set.search(spec(), CallContext::default()).await.unwrap();
        assert_eq!(r.hits[0].0, 2);
        assert_eq!(dead_calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_slow_copy_is_hedged_and_the_fast_answer_wins() {
        let book = HealthBook::default();
        // node 1 is known to answer in about 1 ms, but now stalls
        for _ in 0..10 {
            book.update(1, |h| h.record_success(Duration::from_millis(1)));
        }
        let (stalled, _) = target(1, true, 2_000, false);
        let (other, other_calls) = target(2, false, 1, false);
        let set = ReplicaSet::new(0, vec![stalled, other], book);
        let t0 = Instant::now();
        let r = set.search(spec(), CallContext::default()).await.unwrap();
        assert_eq!(r.hits[0].0, 2);
        assert_eq!(other_calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(
            t0.elapsed() < Duration::from_millis(1_000),
            "{:?}",
            t0.elapsed()
        );
    }

    #[tokio::test]
    async fn a_copy_that_lost_to_a_hedge_is_no_longer_asked_first() {
        let book = HealthBook::default();
        for node in [1, 2] {
            for _ in 0..10 {
                book.update(node, |h| h.record_success(Duration::from_millis(1)));
            }
        }
        // node 1 stalls (a paused process: no answer, no error)
        let (stalled, stalled_calls) = target(1, false, 60_000, false);
        let (other, other_calls) = target(2, false, 1, false);
        let set = ReplicaSet::new(0, vec![stalled, other], book.clone());
        let r = set.search(spec(), CallContext::default()).await.unwrap();
        assert_eq!(r.hits[0].0, 2);
        assert!(book.get(1).latency.mean() > book.get(2).latency.mean());
        // the next call goes to node 2 first and needs no hedge
        let r = set.search(spec(), CallContext::default()).await.unwrap();
        assert_eq!(r.hits[0].0, 2);
        let calls =
            |c: &Arc<std::sync::atomic::AtomicUsize>| c.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!((calls(&stalled_calls), calls(&other_calls)), (1, 2));
    }

    #[tokio::test]
    async fn copies_on_a_black_holed_node_are_skipped_once_it_is_down() {
        let book = HealthBook::default();
        // both copies on nodes that never answer (packets vanish)
        let (a, a_calls) = target(2, false, 60_000, false);
        let (b, b_calls) = target(3, false, 60_000, false);
        let set = ReplicaSet::new(0, vec![a, b], book.clone());
        let cut_off = |set: &ReplicaSet| {
            let call = set.search(spec(), CallContext::default());
            async move {
                tokio::time::timeout(Duration::from_millis(40), call)
                    .await
                    .is_err()
            }
        };
        let t0 = Instant::now();
        // each request waits out its deadline, and each cut-off call
        // counts against its node, until the run is long enough
        while book.down_nodes(Instant::now()) != vec![2, 3] {
            assert!(cut_off(&set).await, "a black-holed copy answered");
            assert!(t0.elapsed() < Duration::from_secs(3), "never marked down");
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let asked =
            |c: &Arc<std::sync::atomic::AtomicUsize>| c.load(std::sync::atomic::Ordering::SeqCst);
        let before = (asked(&a_calls), asked(&b_calls));
        // now the shard fails at once, without asking either copy
        let t1 = Instant::now();
        let e = set
            .search(spec(), CallContext::default())
            .await
            .unwrap_err();
        assert!(
            t1.elapsed() < Duration::from_millis(20),
            "{:?}",
            t1.elapsed()
        );
        assert_eq!(e, ShardCallError::NoLiveReplica { shard: 0 });
        assert_eq!((asked(&a_calls), asked(&b_calls)), before);
        assert!(set.copies().iter().all(|c| !c.healthy));
        // a probe hears from node 3 again: it is asked once more
        book.update(3, |h| h.answered_probe());
        assert!(cut_off(&set).await);
        assert_eq!(asked(&b_calls), before.1 + 1);
    }

    #[test]
    fn a_stalled_copy_is_left_out_of_plans_until_it_is_fast_again() {
        let book = HealthBook::default();
        for _ in 0..10 {
            book.update(1, |h| h.record_success(Duration::from_millis(1)));
            book.update(2, |h| h.record_success(Duration::from_millis(40)));
        }
        let (a, _) = target(1, false, 0, false);
        let (b, _) = target(2, false, 0, false);
        let set = ReplicaSet::new(0, vec![a, b], book.clone());
        let healthy = |set: &ReplicaSet| {
            set.copies()
                .iter()
                .map(|c| (c.node, c.healthy))
                .collect::<Vec<_>>()
        };
        assert_eq!(healthy(&set), vec![(1, true), (2, false)]);
        // a copy only somewhat slower is still planned on
        for _ in 0..60 {
            book.update(2, |h| h.record_success(Duration::from_micros(2500)));
        }
        assert_eq!(healthy(&set), vec![(1, true), (2, true)]);
        assert!(far_slower(
            Duration::from_millis(10),
            Duration::from_millis(1)
        ));
        assert!(!far_slower(
            Duration::from_micros(2900),
            Duration::from_millis(1)
        ));
    }

    #[tokio::test]
    async fn every_copy_failing_is_an_error_naming_them() {
        let (a, _) = target(1, false, 0, true);
        let (b, _) = target(2, false, 0, true);
        let set = ReplicaSet::new(0, vec![a, b], HealthBook::default());
        let e = set
            .search(spec(), CallContext::default())
            .await
            .unwrap_err();
        match &e {
            ShardCallError::EveryCopyFailed { shard: 0, errors } => assert_eq!(errors.len(), 2),
            other => panic!("{other:?}"),
        }
        let text = e.to_string();
        assert!(
            text.starts_with("shard 0: every replica failed: "),
            "{text}"
        );
        assert_eq!(text.matches("shard 0").count(), 1, "{text}");
        let empty = ReplicaSet::new(3, vec![], HealthBook::default());
        assert!(empty
            .search(spec(), CallContext::default())
            .await
            .unwrap_err()
            .to_string()
            .contains("no live replica"));
    }
}
