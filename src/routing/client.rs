//! The shard client: what a request asks of one shard (`SearchSpec`), how
//! the call is sent (`CallContext`) and the trait every copy, local or
//! remote, answers through. Both kinds take the same serialisable spec, so
//! a remote node can rebuild the filter with its own catalogue.

use crate::ids::shard_of;
use crate::shard::{KeyedVectors, SearchResult};
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
}

/// How a shard call is sent, as opposed to what it asks (`SearchSpec`):
/// one per request's fan-out, shared by every shard's call. Local shards
/// ignore it.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// When the recall stage ends: a remote call sends the time left as
    /// its grpc-timeout.
    pub deadline: Option<std::time::Instant>,
    /// Remote copies queue their search here while the fan-out starts
    /// every shard's call, so the searches for one node share one RPC
    /// (`routing::CallBatch`); `None`, or a batch already sent (hedges,
    /// fail-overs): the call goes out on its own.
    pub batch: Option<Arc<super::CallBatch>>,
    /// The copy each shard asks first, planned for the whole request
    /// (`routing::plan_copies`); None: each shard's own order.
    pub plan: Option<Arc<super::CopyPlan>>,
    /// The request's id: remote calls send it as metadata so the serving
    /// node logs under it (`routing::metadata`), and failing or slow
    /// copies are logged with it.
    pub request_id: Option<Arc<str>>,
}

pub use crate::service::{CopyFailure, ShardCallError};

/// One shard, wherever it lives.
pub trait ShardClient: Send + Sync {
    fn shard(&self) -> u32;
    fn search(
        &self,
        spec: SearchSpec,
        ctx: CallContext,
    ) -> BoxFuture<'static, Result<SearchResult, ShardCallError>>;
    /// The vectors of `keys` this shard holds; `ctx` as for `search`
    /// (only its deadline and request id apply).
    fn vectors(&self, keys: Arc<[u64]>, ctx: CallContext) -> BoxFuture<'static, VectorsResult>;
    /// The copies behind this client, for planning a request's copies
    /// (empty: one copy, nothing to choose).
    fn copies(&self) -> Vec<super::CopyInfo> {
        Vec::new()
    }
}

/// Vectors of the requested keys a shard holds, or why it could not answer.
pub type VectorsResult = Result<KeyedVectors, ShardCallError>;

impl SearchSpec {
    /// One spec per shard, each carrying only the excluded and fetched keys
    /// that live on that shard (`ids::shard_of`): a shard can neither return
    /// nor hold another shard's items, and with a few hundred keys to fetch
    /// per request, sending every list to every shard cost more than the
    /// search on small shards. Lists stay in their order (`exclude` sorted).
    pub fn split_by_shard(&self, shards: u32) -> Vec<SearchSpec> {
        let n = shards.max(1);
        let mut exclude: Vec<Vec<u64>> = vec![Vec::new(); n as usize];
        let mut fetch: Vec<Vec<u64>> = vec![Vec::new(); n as usize];
        for &k in self.exclude.iter() {
            exclude[shard_of(k, n) as usize].push(k);
        }
        for &k in self.fetch.iter() {
            fetch[shard_of(k, n) as usize].push(k);
        }
        exclude
            .into_iter()
            .zip(fetch)
            .map(|(exclude, fetch)| SearchSpec {
                query: self.query.clone(),
                k: self.k,
                exclude: Arc::new(exclude),
                categories: self.categories.clone(),
                fetch: Arc::from(fetch),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_spec_gives_each_shard_only_its_own_keys_in_order() {
        let spec = SearchSpec {
            query: Arc::from(vec![0.5f32, 1.0]),
            k: 7,
            exclude: Arc::new(vec![1, 2, 3, 4, 5, 6, 9, 12]),
            categories: Some(Arc::new(vec![2u16])),
            fetch: Arc::from(vec![10u64, 4, 7, 3]),
        };
        let parts = spec.split_by_shard(3);
        assert_eq!(parts.len(), 3);
        for (s, p) in parts.iter().enumerate() {
            assert!(p.exclude.iter().all(|&k| shard_of(k, 3) == s as u32));
            assert!(p.fetch.iter().all(|&k| shard_of(k, 3) == s as u32));
            assert!(p.exclude.windows(2).all(|w| w[0] < w[1]));
            assert_eq!((p.k, &*p.query), (7, &[0.5f32, 1.0][..]));
            assert_eq!(p.categories.as_deref(), Some(&vec![2u16]));
        }
        assert_eq!(*parts[0].exclude, vec![3, 6, 9, 12]);
        assert_eq!(&*parts[1].fetch, &[10u64, 4, 7][..]);
        let total: usize = parts.iter().map(|p| p.exclude.len()).sum();
        assert_eq!(total, spec.exclude.len());
    }
}
