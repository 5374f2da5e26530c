//! `SearchPool`: the few threads that run every shard search of a node.
//!
//! Why one pool and not threads per shard: a request searches every shard
//! the node holds. With two actor threads per shard (the earlier design), a
//! 12-shard node woke twelve threads per request and had 24 threads spinning
//! briefly on their channels between searches; the profile of a 1M-item
//! node showed ~9 % of its CPU in `sched_yield` and futex waits, and on a
//! node held to a fraction of a core that spinning is paid from the quota.
//! Here the searches of all shards queue in one place and a few threads
//! (`shards.search_threads`, 2 by default) take them in turn: a busy thread moves to the
//! next search without sleeping, an idle one sleeps on a condition variable
//! without spinning.
//!
//! Owns: the queue, the threads and their lifetime (they stop when the last
//! handle is dropped). Must not touch: what a job does (the shard module's
//! handle builds the search jobs).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

type Job = Box<dyn FnOnce() + Send + 'static>;

struct Queue {
    jobs: Mutex<State>,
    ready: Condvar,
}

struct State {
    jobs: VecDeque<Job>,
    stop: bool,
}

/// Stops the threads when the last `SearchPool` handle goes.
struct StopOnDrop(Arc<Queue>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let mut st = self.0.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        st.stop = true;
        drop(st);
        self.0.ready.notify_all();
    }
}

/// A handle to the node's search threads; clones share them.
#[derive(Clone)]
pub struct SearchPool {
    queue: Arc<Queue>,
    threads: usize,
    _stop: Arc<StopOnDrop>,
}

impl std::fmt::Debug for SearchPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchPool")
            .field("threads", &self.threads)
            .finish()
    }
}

/// The job's thread went away before answering (the pool was shut down,
/// or the job panicked).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the search thread did not answer (pool shut down or the search panicked)")]
pub struct PoolGone;

impl SearchPool {
    /// Starts `threads` threads (at least one), named `funnel-search`.
    pub fn new(threads: usize) -> std::io::Result<SearchPool> {
        let queue = Arc::new(Queue {
            jobs: Mutex::new(State {
                jobs: VecDeque::new(),
                stop: false,
            }),
            ready: Condvar::new(),
        });
        let threads = threads.max(1);
        for _ in 0..threads {
            let q = queue.clone();
            std::thread::Builder::new()
                .name("funnel-search".into())
                .spawn(move || work(&q))?;
        }
        Ok(SearchPool {
            _stop: Arc::new(StopOnDrop(queue.clone())),
            queue,
            threads,
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on a pool thread; the future resolves with its result.
    pub fn run<T, F>(&self, f: F) -> impl std::future::Future<Output = Result<T, PoolGone>>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(Box::new(move || {
            let _ = tx.send(f());
        }));
        async move { rx.await.map_err(|_| PoolGone) }
    }

    fn submit(&self, job: Job) {
        let mut st = self
            .queue
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if st.stop {
            // dropping the job drops its answer channel: the caller sees PoolGone
            return;
        }
        st.jobs.push_back(job);
        drop(st);
        self.queue.ready.notify_one();
    }
}

fn work(q: &Queue) {
    loop {
        let job = {
            let mut st = q.jobs.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if let Some(job) = st.jobs.pop_front() {
                    break job;
                }
                if st.stop {
                    return;
                }
                st = q.ready.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
        };
        // a panicking search must not take the thread with it: its caller
        // sees PoolGone (the answer channel is dropped), the next job runs
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_on_the_pool_and_answer() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let pool = SearchPool::new(2).unwrap();
        let answers = rt.block_on(async {
            let futs: Vec<_> = (0..50u64)
                .map(|i| {
                    pool.run(move || {
                        let name = std::thread::current().name().map(str::to_owned);
                        (i * i, name)
                    })
                })
                .collect();
            futures::future::join_all(futs).await
        });
        for (i, a) in answers.into_iter().enumerate() {
            let (sq, name) = a.unwrap();
            assert_eq!(sq, (i * i) as u64);
            assert_eq!(name.as_deref(), Some("funnel-search"));
        }
    }

    #[test]
    fn a_panicking_job_answers_pool_gone_and_the_pool_keeps_working() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let pool = SearchPool::new(1).unwrap();
        let bad = rt.block_on(pool.run(|| -> u32 { panic!("boom") }));
        assert_eq!(bad, Err(PoolGone));
        assert_eq!(rt.block_on(pool.run(|| 7)), Ok(7));
    }

    #[test]
    fn threads_stop_when_the_last_handle_goes() {
        let pool = SearchPool::new(2).unwrap();
        let weak = Arc::downgrade(&pool.queue);
        let clone = pool.clone();
        drop(pool);
        assert!(weak.upgrade().is_some(), "a clone keeps the pool");
        drop(clone);
        // the threads hold the queue until they see `stop`
        for _ in 0..200 {
            if weak.upgrade().is_none() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("pool threads did not stop");
    }
}
