//! How the coordinator reaches a shard: a local actor or (in a cluster) a
//! remote node. Both take the same serialisable search spec, so a remote
//! node can rebuild the filter with its own catalogue.

use crate::catalog::Catalog;
use crate::shard::{GetVectors, KeyedVectors, Search, SearchResult, ShardActor};
use actix::Addr;
use futures::future::BoxFuture;
use std::sync::Arc;

/// What to search for on one shard.
#[derive(Debug, Clone)]
pub struct SearchSpec {
    pub query: Arc<[f32]>,
    pub k: usize,
    /// Keys never to return (seen, excluded), sorted.
    pub exclude: Arc<Vec<u64>>,
    /// Only items in one of these categories (None = any).
    pub categories: Option<Arc<Vec<u16>>>,
    /// Keys whose vectors to return if they live on the shard.
    pub fetch: Arc<[u64]>,
    /// When the recall stage ends: a remote call sends the time left as
    /// its grpc-timeout.
    pub deadline: Option<std::time::Instant>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShardCallError {
    #[error("shard {shard}: {reason}")]
    Failed { shard: u32, reason: String },
}

/// One shard, wherever it lives.
pub trait ShardClient: Send + Sync {
    fn shard(&self) -> u32;
    fn search(&self, spec: SearchSpec) -> BoxFuture<'static, Result<SearchResult, ShardCallError>>;
    fn vectors(&self, keys: Arc<[u64]>) -> BoxFuture<'static, VectorsResult>;
}

/// Vectors of the requested keys a shard holds, or why it could not answer.
pub type VectorsResult = Result<KeyedVectors, ShardCallError>;

/// Builds the keep-predicate of a spec against a catalogue: not excluded,
/// not deleted, and in a wanted category.
pub fn keep_fn(spec: &SearchSpec, catalog: Arc<Catalog>) -> crate::shard::KeepFn {
    let exclude = spec.exclude.clone();
    let cats = spec.categories.clone();
    // the deleted keys as of the search's start: the predicate runs for
    // every node the search visits, on several threads at once
    let deleted = catalog.deleted_set();
    Arc::new(move |key: u64| {
        if exclude.binary_search(&key).is_ok() || deleted.contains(&key) {
            return false;
        }
        match &cats {
            None => true,
            Some(want) => catalog.live_view().allows(key, Some(want)),
        }
    })
}

/// A shard served by an actor in this process.
pub struct LocalShard {
    pub shard: u32,
    pub addr: Addr<ShardActor>,
    pub catalog: Arc<Catalog>,
}

impl ShardClient for LocalShard {
    fn shard(&self) -> u32 {
        self.shard
    }

    fn search(&self, spec: SearchSpec) -> BoxFuture<'static, Result<SearchResult, ShardCallError>> {
        let keep = keep_fn(&spec, self.catalog.clone());
        let msg = Search {
            query: spec.query,
            k: spec.k,
            keep,
            fetch: spec.fetch,
        };
        let addr = self.addr.clone();
        let shard = self.shard;
        Box::pin(async move {
            match addr.send(msg).await {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(e)) => Err(ShardCallError::Failed {
                    shard,
                    reason: e.to_string(),
                }),
                Err(e) => Err(ShardCallError::Failed {
                    shard,
                    reason: format!("actor unavailable: {e}"),
                }),
            }
        })
    }

    fn vectors(&self, keys: Arc<[u64]>) -> BoxFuture<'static, VectorsResult> {
        let addr = self.addr.clone();
        let shard = self.shard;
        Box::pin(async move {
            addr.send(GetVectors { keys })
                .await
                .map_err(|e| ShardCallError::Failed {
                    shard,
                    reason: format!("actor unavailable: {e}"),
                })
        })
    }
}
