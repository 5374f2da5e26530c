//! Scoring one request's feature rows under a deadline: on the calling
//! thread when they fit one batch, split into batches across the
//! `RankWorker` pool otherwise. With a cascade the two phases run as
//! `Ranker::score_rows` runs them (every row with the first trees, the best
//! `keep` with the rest), each phase split across the pool, so a request
//! gets the scores the one-thread form gives.
//!
//! Owns: batching, the deadline on pool calls, the cascade over the pool.
//! Must not touch: what the caller does when scoring fails (the coordinator
//! falls back to rank fusion) or how a batch is scored (`Ranker`).

use super::error::RankError;
use super::score::{
    cascade_phases, finish_cascade, gather_rows, second_phase_rows, Cascade, Ranker,
};
use super::worker::{score_batch, RankWorker, ScoreBatch, ScoreWork};
use crate::features::N_FEATURES;
use actix::Addr;
use futures::future::join_all;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

/// Where and how a request's rows are scored.
#[derive(Clone, Copy)]
pub struct PoolScoring<'a> {
    pub workers: &'a Addr<RankWorker>,
    /// Rows per batch; a request with no more rows is scored on its own thread.
    pub batch_rows: usize,
    pub cascade: Cascade,
}

impl PoolScoring<'_> {
    /// Scores row-major feature rows (`N_FEATURES` each), one score per row.
    /// No pool call is awaited past `until`; rows that fit one batch are
    /// scored here whatever the clock says (about 150 µs, and a trip to a
    /// worker would cost more than it saves).
    pub async fn score(
        &self,
        ranker: &Arc<Ranker>,
        rows: Vec<f32>,
        until: Instant,
    ) -> Result<Vec<f32>, RankError> {
        if rows.len() % N_FEATURES != 0 {
            return Err(RankError::RowShape {
                values: rows.len(),
                rows: rows.len() / N_FEATURES,
            });
        }
        let n_rows = rows.len() / N_FEATURES;
        let start = vec![ranker.initial_score(); n_rows];
        let Some((first, rest)) = cascade_phases(self.cascade, ranker.n_trees(), n_rows) else {
            return self
                .add_trees(ranker, &rows, start, 0..usize::MAX, until)
                .await;
        };
        if n_rows <= self.batch() {
            // one batch: both phases here, one call instead of two
            return score_batch(ScoreBatch {
                ranker: ranker.clone(),
                rows,
                work: ScoreWork::Cascade(self.cascade),
            });
        }
        let mut scores = self.add_trees(ranker, &rows, start, first, until).await?;
        let kept = second_phase_rows(&scores, self.cascade.keep);
        let start = kept.iter().map(|&i| scores[i]).collect();
        let second = self
            .add_trees(ranker, &gather_rows(&rows, &kept), start, rest, until)
            .await?;
        finish_cascade(&mut scores, &kept, &second);
        Ok(scores)
    }

    fn batch(&self) -> usize {
        self.batch_rows.max(1)
    }

    /// One scoring pass (`trees` added to `start`, one running score per
    /// row): here for one batch, else split into batches across the pool.
    async fn add_trees(
        &self,
        ranker: &Arc<Ranker>,
        rows: &[f32],
        start: Vec<f32>,
        trees: Range<usize>,
        until: Instant,
    ) -> Result<Vec<f32>, RankError> {
        let batch = self.batch();
        if start.len() <= batch {
            return score_batch(ScoreBatch {
                ranker: ranker.clone(),
                rows: rows.to_vec(),
                work: ScoreWork::Trees { start, trees },
            });
        }
        if rows.len() != start.len() * N_FEATURES {
            return Err(RankError::RowShape {
                values: rows.len(),
                rows: start.len(),
            });
        }
        // work sent now could not come back in time: the workers stay free
        if Instant::now() >= until {
            return Err(RankError::Deadline);
        }
        let calls = rows
            .chunks(batch * N_FEATURES)
            .zip(start.chunks(batch))
            .map(|(chunk, start)| {
                let msg = ScoreBatch {
                    ranker: ranker.clone(),
                    rows: chunk.to_vec(),
                    work: ScoreWork::Trees {
                        start: start.to_vec(),
                        trees: trees.clone(),
                    },
                };
                tokio::time::timeout_at(until.into(), self.workers.send(msg))
            });
        let mut scores = Vec::with_capacity(start.len());
        for answer in join_all(calls).await {
            match answer {
                Ok(Ok(batch)) => scores.extend(batch?),
                Ok(Err(mailbox)) => return Err(RankError::WorkersUnavailable(mailbox)),
                Err(_elapsed) => return Err(RankError::Deadline),
            }
        }
        Ok(scores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ranking::score::trained_test_ranker;
    use crate::ranking::worker::start_rank_workers;
    use std::time::Duration;

    fn in_system<F: std::future::Future<Output = ()>>(f: impl FnOnce() -> F) {
        actix::System::new().block_on(async move { f().await });
    }

    #[test]
    fn pool_scores_equal_one_thread_scores_across_batches() {
        let (ranker, rows) = trained_test_ranker(7, 400, 30);
        let ranker = Arc::new(ranker);
        in_system(|| async move {
            let workers = start_rank_workers(2);
            let until = Instant::now() + Duration::from_secs(30);
            let cascade = Cascade {
                first_trees: 5,
                keep: 40,
            };
            // 300 rows in batches of 16: the first phase goes out as 19
            // batches, the second (40 kept rows) as 3
            for (n, cascade) in [(300, cascade), (300, Cascade::OFF), (33, cascade)] {
                let request = rows[..n * N_FEATURES].to_vec();
                let mut expected = vec![0.0; n];
                ranker.score_rows(&request, &mut expected, cascade).unwrap();
                let pool = PoolScoring {
                    workers: &workers,
                    batch_rows: 16,
                    cascade,
                };
                let got = pool.score(&ranker, request, until).await.unwrap();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&expected), "{n} rows, {cascade:?}");
            }
            // one batch: scored on this thread, the same scores again
            let one = PoolScoring {
                workers: &workers,
                batch_rows: 512,
                cascade,
            };
            let request = rows[..300 * N_FEATURES].to_vec();
            let mut expected = vec![0.0; 300];
            ranker.score_rows(&request, &mut expected, cascade).unwrap();
            assert_eq!(one.score(&ranker, request, until).await.unwrap(), expected);
        });
    }

    #[test]
    fn rows_past_the_deadline_on_the_pool_give_deadline() {
        let (ranker, rows) = trained_test_ranker(8, 200, 10);
        let ranker = Arc::new(ranker);
        in_system(|| async move {
            let workers = start_rank_workers(1);
            let pool = PoolScoring {
                workers: &workers,
                batch_rows: 16,
                cascade: Cascade::default(),
            };
            let past = Instant::now() - Duration::from_millis(1);
            assert_eq!(
                pool.score(&ranker, rows.clone(), past).await,
                Err(RankError::Deadline)
            );
            // one batch is scored here whatever the clock says
            let one = rows[..10 * N_FEATURES].to_vec();
            assert_eq!(
                pool.score(&ranker, one, past).await.map(|s| s.len()),
                Ok(10)
            );
            // a broken request is refused, not scored
            assert!(matches!(
                pool.score(
                    &ranker,
                    rows[1..].to_vec(),
                    Instant::now() + Duration::from_secs(5)
                )
                .await,
                Err(RankError::RowShape { .. })
            ));
        });
    }
}
