//! `ShardHandle`: how the rest of the node reaches one loaded shard copy.
//! Writes (upsert, delete) and the digest go to the shard's actor, in
//! order; searches and vector lookups take the index's read lock on the
//! node's `SearchPool`, beside every other shard's.
//!
//! Owns: starting a shard (its actor and the shared index) and the search
//! job (the search, the vectors sent back with it, its CPU time). Must not
//! touch: which shards a node holds or how requests pick a copy.

use super::actor::ShardActor;
use super::index::{ShardError, ShardIndex};
use super::keyed_vectors::KeyedVectors;
use super::messages::{Search, SearchResult};
use super::pool::{PoolGone, SearchPool};
use crate::telemetry::cpu::thread_cpu_micros;
use actix::{Addr, SyncArbiter};
use std::sync::{Arc, RwLock, RwLockReadGuard};

/// One loaded shard copy; clones share it.
#[derive(Clone)]
pub struct ShardHandle {
    shard: u32,
    actor: Addr<ShardActor>,
    index: Arc<RwLock<ShardIndex>>,
    pool: SearchPool,
}

impl std::fmt::Debug for ShardHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardHandle")
            .field("shard", &self.shard)
            .finish()
    }
}

/// Why a search or lookup did not answer.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error(transparent)]
    Pool(#[from] PoolGone),
}

/// Starts the actor that applies `index`'s writes and returns the handle
/// that searches it on `pool`.
pub fn start_shard(index: ShardIndex, pool: &SearchPool) -> ShardHandle {
    let shard = index.shard();
    let shared = Arc::new(RwLock::new(index));
    let for_actor = shared.clone();
    let actor = SyncArbiter::start(1, move || ShardActor {
        index: for_actor.clone(),
    });
    ShardHandle {
        shard,
        actor,
        index: shared,
        pool: pool.clone(),
    }
}

fn read(index: &RwLock<ShardIndex>) -> RwLockReadGuard<'_, ShardIndex> {
    // a panic while holding the lock would poison it; the data is still
    // consistent (every mutation checks inputs before changing anything)
    index.read().unwrap_or_else(|p| p.into_inner())
}

impl ShardHandle {
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// Sends a write or a question to the shard's actor (upsert, delete,
    /// stats, digest): they are answered in the order they were sent.
    pub fn send<M>(&self, msg: M) -> actix::dev::Request<ShardActor, M>
    where
        M: actix::Message + Send + 'static,
        M::Result: Send,
        ShardActor: actix::Handler<M>,
    {
        self.actor.send(msg)
    }

    /// The filtered top-k and the vectors of the hits and of `fetch` keys
    /// held here, on a pool thread.
    pub async fn search(&self, msg: Search) -> Result<SearchResult, SearchError> {
        let index = self.index.clone();
        Ok(self.pool.run(move || search_now(&index, msg)).await??)
    }

    /// Vectors of the given keys held here, on a pool thread.
    pub async fn vectors(&self, keys: Arc<[u64]>) -> Result<KeyedVectors, SearchError> {
        let index = self.index.clone();
        Ok(self
            .pool
            .run(move || {
                let idx = read(&index);
                let mut out = KeyedVectors::with_capacity(idx.dimension(), keys.len());
                for &k in keys.iter() {
                    if let Some(v) = idx.vector(k) {
                        out.push(k, v);
                    }
                }
                out
            })
            .await?)
    }
}

fn search_now(index: &RwLock<ShardIndex>, msg: Search) -> Result<SearchResult, ShardError> {
    let cpu0 = thread_cpu_micros();
    let idx = read(index);
    let _span = tracing::trace_span!("shard_search", shard_id = idx.shard()).entered();
    let hits = idx.search(&msg.query, msg.k, &msg.filter)?;
    let mut vectors = KeyedVectors::with_capacity(idx.dimension(), hits.len() + msg.fetch.len());
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
