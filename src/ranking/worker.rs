//! `RankWorker`: sync-arbiter threads that score batches of feature rows
//! in parallel when a request has more rows than one batch (`pool` splits
//! the rows and sends them). A request whose rows fit one batch (the common
//! case) is scored on its own thread with `score_batch`: the trip to a worker and back cost two thread wakeups,
//! more than the ~150 µs of scoring it moved, and on a node held to a
//! fraction of a core every wakeup is paid from the same quota.

use super::error::RankError;
use super::score::{Cascade, Ranker};
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

/// Scoring work for the pool with the request's model version.
pub struct ScoreBatch {
    pub ranker: Arc<Ranker>,
    /// Row-major feature rows (`N_FEATURES` each).
    pub rows: Vec<f32>,
    pub work: ScoreWork,
}

pub enum ScoreWork {
    /// Add the outputs of `trees` to `start` (one running score per row): a
    /// whole scoring of one batch, or one phase of a cascade split across
    /// the pool.
    Trees {
        start: Vec<f32>,
        trees: Range<usize>,
    },
    /// Both phases of `Cascade` here: one trip to the pool instead of two
    /// when every row fits one batch (the common case).
    Cascade(Cascade),
}

impl Message for ScoreBatch {
    type Result = Result<Vec<f32>, RankError>;
}

impl Handler<ScoreBatch> for RankWorker {
    type Result = Result<Vec<f32>, RankError>;

    fn handle(&mut self, msg: ScoreBatch, _: &mut SyncContext<Self>) -> Self::Result {
        score_batch(msg)
    }
}

/// Scores one batch on the calling thread (what a worker does with it).
pub fn score_batch(msg: ScoreBatch) -> Result<Vec<f32>, RankError> {
    let t0 = thread_cpu_micros();
    let (r, out) = match msg.work {
        ScoreWork::Trees { start, trees } => {
            let mut out = start;
            (msg.ranker.add_trees(&msg.rows, trees, &mut out), out)
        }
        ScoreWork::Cascade(cascade) => {
            let mut out = vec![0f32; msg.rows.len() / crate::features::N_FEATURES];
            (msg.ranker.score_rows(&msg.rows, &mut out, cascade), out)
        }
    };
    crate::telemetry::metrics::record_cpu("ranking", thread_cpu_micros().saturating_sub(t0));
    r.map(|_| out)
}
