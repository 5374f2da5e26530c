//! The shard actor: a few sync-arbiter threads sharing one `ShardIndex`.
//! Searches take a read lock and run in parallel; upserts and deletes take
//! the write lock, so they apply in arrival order and a search sees either
//! all of an upsert batch or none of it.

use super::index::ShardIndex;
use super::keyed_vectors::KeyedVectors;
use super::messages::{Delete, Digest, GetVectors, Search, SearchResult, Stats, Upsert};
use crate::telemetry::cpu::thread_cpu_micros;
use actix::{Actor, Addr, Handler, MessageResult, SyncArbiter, SyncContext};
use std::sync::{Arc, RwLock};

pub struct ShardActor {
    index: Arc<RwLock<ShardIndex>>,
}

impl Actor for ShardActor {
    type Context = SyncContext<Self>;
}

/// Starts `threads` actor threads serving `index`.
pub fn start_shard(index: ShardIndex, threads: usize) -> Addr<ShardActor> {
    let shared = Arc::new(RwLock::new(index));
    SyncArbiter::start(threads.max(1), move || ShardActor {
        index: shared.clone(),
    })
}

impl ShardActor {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, ShardIndex> {
        // a panic while holding the lock would poison it; the data is still
        // consistent (every mutation checks inputs before changing anything)
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ShardIndex> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl Handler<Search> for ShardActor {
    type Result = Result<SearchResult, super::ShardError>;

    fn handle(&mut self, msg: Search, _: &mut SyncContext<Self>) -> Self::Result {
        let cpu0 = thread_cpu_micros();
        let idx = self.read();
        let _span = tracing::trace_span!("shard_search", shard_id = idx.shard()).entered();
        let hits = idx.search(&msg.query, msg.k, &msg.filter)?;
        let mut vectors =
            KeyedVectors::with_capacity(idx.dimension(), hits.len() + msg.fetch.len());
        let keys = hits.iter().map(|h| h.0).chain(msg.fetch.iter().copied());
        for key in keys {
            if let Some(v) = idx.vector(key) {
                vectors.push(key, v);
            }
        }
        let cpu_micros = thread_cpu_micros().saturating_sub(cpu0);
        crate::telemetry::metrics::record_cpu("ann", cpu_micros);
        Ok(SearchResult {
            shard: idx.shard(),
            hits,
            vectors,
            cpu_micros,
        })
    }
}

impl Handler<GetVectors> for ShardActor {
    type Result = MessageResult<GetVectors>;

    fn handle(&mut self, msg: GetVectors, _: &mut SyncContext<Self>) -> Self::Result {
        let idx = self.read();
        let mut out = KeyedVectors::with_capacity(idx.dimension(), msg.keys.len());
        for &k in msg.keys.iter() {
            if let Some(v) = idx.vector(k) {
                out.push(k, v);
            }
        }
        MessageResult(out)
    }
}

impl Handler<Upsert> for ShardActor {
    type Result = Result<(), super::ShardError>;

    fn handle(&mut self, msg: Upsert, _: &mut SyncContext<Self>) -> Self::Result {
        self.write().upsert(&msg.items)
    }
}

impl Handler<Delete> for ShardActor {
    type Result = Result<usize, super::ShardError>;

    fn handle(&mut self, msg: Delete, _: &mut SyncContext<Self>) -> Self::Result {
        self.write().delete(&msg.keys)
    }
}

impl Handler<Stats> for ShardActor {
    type Result = actix::MessageResult<Stats>;

    fn handle(&mut self, _: Stats, _: &mut SyncContext<Self>) -> Self::Result {
        actix::MessageResult(self.read().stats())
    }
}

impl Handler<Digest> for ShardActor {
    type Result = String;

    fn handle(&mut self, _: Digest, _: &mut SyncContext<Self>) -> Self::Result {
        self.read().digest()
    }
}
