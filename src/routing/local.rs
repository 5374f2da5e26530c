//! A shard copy held by this process: the search runs on the node's own
//! `ShardHandle` with the filter rebuilt from the node's catalogue.

use super::client::{
    CallContext, CopyFailure, SearchSpec, ShardCallError, ShardClient, VectorsResult,
};
use crate::catalog::Catalog;
use crate::shard::{Search, SearchFilter, SearchResult, ShardHandle};
use futures::future::BoxFuture;
use std::sync::Arc;

/// The filter of a spec against a catalogue: not excluded, not deleted (as
/// of the search's start), and in a wanted category.
pub fn search_filter(spec: &SearchSpec, catalog: Arc<Catalog>) -> SearchFilter {
    let deleted = catalog.deleted_set();
    let predicate: Option<crate::shard::KeepFn> = spec.categories.clone().map(|want| {
        Arc::new(move |key: u64| catalog.live_view().allows(key, Some(&want)))
            as crate::shard::KeepFn
    });
    SearchFilter {
        exclude: spec.exclude.clone(),
        deleted,
        predicate,
    }
}

/// A shard copy held by this process.
pub struct LocalShard {
    pub shard: u32,
    pub handle: ShardHandle,
    pub catalog: Arc<Catalog>,
}

impl ShardClient for LocalShard {
    fn shard(&self) -> u32 {
        self.shard
    }

    fn search(
        &self,
        spec: SearchSpec,
        _: CallContext,
    ) -> BoxFuture<'static, Result<SearchResult, ShardCallError>> {
        let filter = search_filter(&spec, self.catalog.clone());
        let msg = Search {
            query: spec.query,
            k: spec.k,
            filter,
            fetch: spec.fetch,
        };
        let handle = self.handle.clone();
        let shard = self.shard;
        Box::pin(async move {
            handle.search(msg).await.map_err(|e| ShardCallError::Copy {
                shard,
                node: None,
                failure: CopyFailure::Local(e.to_string()),
            })
        })
    }

    fn vectors(&self, keys: Arc<[u64]>, _: CallContext) -> BoxFuture<'static, VectorsResult> {
        let handle = self.handle.clone();
        let shard = self.shard;
        Box::pin(async move {
            handle
                .vectors(keys)
                .await
                .map_err(|e| ShardCallError::Copy {
                    shard,
                    node: None,
                    failure: CopyFailure::Local(e.to_string()),
                })
        })
    }
}
