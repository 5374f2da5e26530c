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

/// Shards of at most this many items are searched on the caller's thread.
/// Handing a search to the pool costs two thread wakeups (there and back),
/// which on a node held to a fraction of a core is paid from the same
/// quota as the search: measured on ml-100k (140 items per shard), pool
/// hand-offs cost more CPU than the searches they carried. A walk over
/// 20,000 items at ef 96 takes ~0.1 ms, about what the hand-offs cost;
/// larger shards go to the pool, where a request's searches run in
/// parallel.
pub const INLINE_MAX_ITEMS: usize = 20_000;

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
    /// held here: on a pool thread, or on the caller's thread when the
    /// shard is small (`INLINE_MAX_ITEMS`).
    pub async fn search(&self, msg: Search) -> Result<SearchResult, SearchError> {
        if self.runs_inline() {
            return Ok(search_now(&self.index, msg)?);
        }
        let index = self.index.clone();
        Ok(self.pool.run(move || search_now(&index, msg)).await??)
    }

    /// Whether a search here runs on the caller's thread: the shard walks
    /// its own graph (thread-safe from any thread; usearch's own search
    /// needs one of its reserved slots) and is small enough that handing
    /// the search to a pool thread costs more than the search.
    fn runs_inline(&self) -> bool {
        let idx = read(&self.index);
        idx.walks_own_graph() && idx.len() <= INLINE_MAX_ITEMS
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
    let found = idx.search_rows(&msg.query, msg.k, &msg.filter)?;
    let mut vectors = KeyedVectors::with_capacity(idx.dimension(), found.len() + msg.fetch.len());
    // the hits' rows are known: no lookup by key (the walk just read them)
    for &(key, _, row) in &found {
        vectors.push(key, idx.row_vector(row));
    }
    for &key in msg.fetch.iter() {
        if let Some(v) = idx.vector(key) {
            vectors.push(key, v);
        }
    }
    let hits = found
        .into_iter()
        .map(|(key, score, _)| (key, score))
        .collect();
    let cpu_micros = thread_cpu_micros().saturating_sub(cpu0);
    crate::telemetry::metrics::record_cpu("ann", cpu_micros);
    Ok(SearchResult {
        shard: idx.shard(),
        hits,
        vectors,
        cpu_micros,
    })
}
