//! Serving from fitted models offline: the `ItemSource` the scorer reads,
//! per-user feature preparation, the local recall paths (exact or through
//! the trainer's ANN index) and the full recommend cascade, with the same
//! pure functions the server uses. Must not touch: fitting (see the parent).

use super::{FittedModels, PipelineParams};
use crate::features::{ItemInput, RecallPath, RequestContext, UserFeatures, UserState};
use crate::ranking::rerank::rerank;
use crate::ranking::score::{feature_rows, ItemSource, Ranker};
use crate::recall::{local_paths, merge, top_by_score, Candidate, PathResult, RecallConfig};

impl ItemSource for FittedModels {
    fn item_input(&self, key: u64) -> Option<ItemInput<'_>> {
        let i = *self.key_to_idx.get(&key)? as usize;
        Some(ItemInput {
            key,
            stats: self.item_stats[i],
            created_at: self.item_created[i],
            categories: &self.item_categories[i],
            vector: Some(self.als.item_factors.row(i)),
        })
    }
}

impl FittedModels {
    pub fn idx(&self, key: u64) -> Option<u32> {
        self.key_to_idx.get(&key).copied()
    }

    pub fn n_items(&self) -> usize {
        self.item_keys.len()
    }

    /// A user's request context: right after their last known event.
    pub fn default_context(&self, user: u32) -> RequestContext {
        RequestContext::at(
            self.user_states[user as usize]
                .last_ts
                .unwrap_or(self.as_of),
        )
    }

    /// Per-request user features from the user's state at the end of the
    /// fitted data.
    pub fn prepare_user(&self, user: u32, ctx: &RequestContext) -> UserFeatures<'_> {
        self.prepare_with_state(user, &self.user_states[user as usize], ctx)
    }

    /// Per-request user features from a given state of the user.
    pub fn prepare_with_state<'a>(
        &'a self,
        user: u32,
        state: &'a UserState,
        ctx: &RequestContext,
    ) -> UserFeatures<'a> {
        let last_cats: &[u16] = state
            .recent
            .back()
            .and_then(|r| self.idx(r.item))
            .map_or(&[], |i| &self.item_categories[i as usize]);
        UserFeatures::prepare(
            state,
            Some(self.als.user_factors.row(user as usize)),
            last_cats,
            ctx,
            &self.cf,
            &self.state_params,
        )
    }

    /// Whether recall may propose `key` to a user in `state`: in the
    /// catalogue and not seen.
    pub fn allowed(&self, state: &UserState, key: u64) -> bool {
        self.idx(key).is_some_and(|i| self.in_catalog[i as usize]) && !state.has_seen(key)
    }

    /// Embedding search: exact (what the shards approximate online), or
    /// over the HNSW index for large catalogues (`ann_index_min_items`).
    pub fn ann_path(
        &self,
        user: u32,
        k: usize,
        allow: &(dyn Fn(u64) -> bool + Sync),
    ) -> PathResult {
        let u = self.als.user_factors.row(user as usize);
        if let Some(index) = &self.ann_index {
            // an index error leaves the path empty, as a failed shard would
            let items = index.search_where(u, k, allow).unwrap_or_default();
            return PathResult {
                path: RecallPath::Ann,
                items,
            };
        }
        let scores = (0..self.n_items()).map(|i| {
            (
                self.item_keys[i],
                crate::linalg::dot(u, self.als.item_factors.row(i)),
            )
        });
        PathResult {
            path: RecallPath::Ann,
            items: top_by_score(scores, k, allow),
        }
    }

    /// Every recall path, merged, for a user in `state`.
    pub fn candidates(
        &self,
        user: u32,
        state: &UserState,
        uf: &UserFeatures,
        cfg: &RecallConfig,
    ) -> Vec<Candidate> {
        let allow = |key: u64| self.allowed(state, key);
        let mut paths = vec![self.ann_path(user, cfg.ann_k, &allow)];
        paths.extend(local_paths(uf, &self.key_lists, None, cfg, &allow));
        merge(&paths, &cfg.merge)
    }

    /// Cosine similarity of two items' embeddings, clamped to [0, 1].
    pub fn item_similarity(&self, a: u64, b: u64) -> f32 {
        match (self.idx(a), self.idx(b)) {
            (Some(a), Some(b)) => {
                let (na, nb) = (self.item_norms[a as usize], self.item_norms[b as usize]);
                if na == 0.0 || nb == 0.0 {
                    return 0.0;
                }
                let d = crate::linalg::dot(
                    self.als.item_factors.row(a as usize),
                    self.als.item_factors.row(b as usize),
                );
                (d / (na * nb)).clamp(0.0, 1.0)
            }
            _ => 0.0,
        }
    }

    /// The full pipeline for one user: recall, features, ranker, rerank.
    pub fn recommend(
        &self,
        ranker: &Ranker,
        user: u32,
        ctx: &RequestContext,
        k: usize,
        p: &PipelineParams,
        seed: u64,
    ) -> Vec<u64> {
        let state = &self.user_states[user as usize];
        let uf = self.prepare_with_state(user, state, ctx);
        let cands = self.candidates(user, state, &uf, &p.recall);
        let (rows, kept) = feature_rows(&uf, &cands, self);
        let mut scores = vec![0f32; kept.len()];
        if ranker.score_rows(&rows, &mut scores, p.cascade).is_err() {
            return Vec::new();
        }
        let keys: Vec<u64> = kept.iter().map(|&i| cands[i].key).collect();
        let sim = |a: usize, b: usize| self.item_similarity(keys[a], keys[b]);
        rerank(&scores, k, &p.rerank, &sim, seed)
            .into_iter()
            .map(|r| keys[r.index])
            .collect()
    }
}
