//! `RankWorker`: sync-arbiter threads that score batches of feature rows,
//! so ranking's CPU work never runs on the threads that move requests.

use super::score::Ranker;
use crate::telemetry::cpu::thread_cpu_micros;
use actix::{Actor, Addr, Handler, Message, SyncArbiter, SyncContext};
use std::ops::Range;
use std::sync::Arc;

pub struct RankWorker;

impl Actor for RankWorker {
    type Context = SyncContext<Self>;
}

pub fn start_rank_workers(threads: usize) -> Addr<RankWorker> {
    SyncArbiter::start(threads.max(1), || RankWorker)
}

/// Adds the outputs of `trees` of the request's model version to `start`
/// (one running score per row) for row-major feature rows: a whole scoring
/// or one phase of a cascade (`ranking::score::Cascade`).
pub struct ScoreBatch {
    pub ranker: Arc<Ranker>,
    pub rows: Vec<f32>,
    pub start: Vec<f32>,
    pub trees: Range<usize>,
}

impl Message for ScoreBatch {
    type Result = Result<Vec<f32>, String>;
}

impl Handler<ScoreBatch> for RankWorker {
    type Result = Result<Vec<f32>, String>;

    fn handle(&mut self, msg: ScoreBatch, _: &mut SyncContext<Self>) -> Self::Result {
        let t0 = thread_cpu_micros();
        let mut out = msg.start;
        let r = msg.ranker.add_trees(&msg.rows, msg.trees, &mut out);
        crate::telemetry::metrics::record_cpu("ranking", thread_cpu_micros().saturating_sub(t0));
        r.map(|_| out)
    }
}
