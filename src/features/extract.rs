//! Feature extraction: per request, `UserFeatures::prepare` does the
//! per-user work once (user block, item-CF aggregates over the recent items,
//! normalised taste); `extract` then fills one candidate's vector cheaply.
//! Missing values are NaN; the ranker learns where they go.

use super::context::RequestContext;
use super::item_stats::ItemStats;
use super::schema::N_FEATURES;
use super::user_state::{StateParams, UserState};
use crate::dataset::Gender;
use crate::ids::KeyMap;

/// Weight of the i-th most recent item in the item-CF aggregates is
/// `CF_RECENCY_DECAY^i`: what the user did last matters most.
pub const CF_RECENCY_DECAY: f32 = 0.8;

/// The recall paths, in provenance order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecallPath {
    Ann = 0,
    ItemCf = 1,
    Popular = 2,
    Fresh = 3,
    Rules = 4,
}

impl RecallPath {
    pub const ALL: [RecallPath; 5] = [
        RecallPath::Ann,
        RecallPath::ItemCf,
        RecallPath::Popular,
        RecallPath::Fresh,
        RecallPath::Rules,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RecallPath::Ann => "ann",
            RecallPath::ItemCf => "itemcf",
            RecallPath::Popular => "popular",
            RecallPath::Fresh => "fresh",
            RecallPath::Rules => "rules",
        }
    }

    pub fn parse(s: &str) -> Option<RecallPath> {
        RecallPath::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// Which recall paths proposed a candidate, at what rank (0 = best), and
/// the item-CF path's own score.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RecallProvenance {
    pub rank: [Option<u32>; 5],
    pub itemcf_score: Option<f32>,
}

impl RecallProvenance {
    pub fn set(&mut self, path: RecallPath, rank: u32) {
        let r = &mut self.rank[path as usize];
        *r = Some(r.map_or(rank, |old| old.min(rank)));
    }

    pub fn has(&self, path: RecallPath) -> bool {
        self.rank[path as usize].is_some()
    }

    pub fn paths(&self) -> impl Iterator<Item = RecallPath> + '_ {
        RecallPath::ALL.into_iter().filter(|p| self.has(*p))
    }
}

/// Item-to-item neighbour lists, looked up by item key.
pub trait CfLookup {
    /// Calls `f(neighbour, similarity)` for each stored neighbour of `item`.
    fn for_each_neighbour(&self, item: u64, f: &mut dyn FnMut(u64, f32));
}

/// No item-CF model (e.g. a bundle imported from elsewhere).
pub struct NoCf;

impl CfLookup for NoCf {
    fn for_each_neighbour(&self, _item: u64, _f: &mut dyn FnMut(u64, f32)) {}
}

pub const NO_CF: NoCf = NoCf;

/// What the features need to know about one candidate item.
#[derive(Debug, Clone, Copy)]
pub struct ItemInput<'a> {
    pub key: u64,
    pub stats: ItemStats,
    pub created_at: Option<i64>,
    pub categories: &'a [u16],
    pub vector: Option<&'a [f32]>,
}

#[derive(Debug, Clone, Copy, Default)]
struct CfAgg {
    sum: f32,
    max: f32,
    last: f32,
    last3: f32,
    count: f32,
}

/// Per-request user-side work, shared by all of the request's candidates.
pub struct UserFeatures<'a> {
    user_block: [f32; 5],
    ctx_block: [f32; 3],
    now: i64,
    user_vector: Option<&'a [f32]>,
    cf: KeyMap<CfAgg>,
    taste: Vec<(u16, f32)>,
    last_categories: &'a [u16],
}

impl<'a> UserFeatures<'a> {
    pub fn prepare(
        state: &'a UserState,
        user_vector: Option<&'a [f32]>,
        last_categories: &'a [u16],
        ctx: &RequestContext,
        cf: &dyn CfLookup,
        params: &StateParams,
    ) -> Self {
        let now = ctx.now;
        let d = &state.demographics;
        let user_block = [
            (state.events as f32).ln_1p(),
            match (state.first_ts, state.last_ts) {
                (Some(f), Some(l)) => (l - f) as f32 / 86_400.0,
                _ => f32::NAN,
            },
            state
                .last_ts
                .map_or(f32::NAN, |l| ((now - l).max(0) as f32 / 3600.0).ln_1p()),
            d.age.map_or(f32::NAN, |a| a as f32),
            match d.gender {
                Some(Gender::Female) => 0.0,
                Some(Gender::Male) => 1.0,
                Some(Gender::Other) => 2.0,
                None => f32::NAN,
            },
        ];
        let (hour, weekday) = ctx.hour_and_weekday();
        let ctx_block = [hour as f32, weekday as f32, ctx.device.code()];

        let mut aggs: KeyMap<CfAgg> = KeyMap::default();
        // Recency is by time, not by list position: events logged in the
        // same second have no order between them (bulk ratings, batched
        // clients), so they share a recency step.
        let mut pos = 0usize;
        let mut prev_ts = None;
        for ev in state.recent.iter().rev() {
            if prev_ts.is_some_and(|t| t != ev.ts) {
                pos += 1;
            }
            prev_ts = Some(ev.ts);
            let w = CF_RECENCY_DECAY.powi(pos as i32) * ev.strength.min(6.0);
            cf.for_each_neighbour(ev.item, &mut |n, s| {
                let a = aggs.entry(n).or_default();
                a.sum += w * s;
                a.max = a.max.max(s);
                a.count += 1.0;
                if pos == 0 {
                    a.last = a.last.max(s);
                }
                if pos < 3 {
                    a.last3 += s;
                }
            });
        }
        UserFeatures {
            user_block,
            ctx_block,
            now,
            user_vector,
            cf: aggs,
            taste: state.taste_at(now, params),
            last_categories,
        }
    }

    /// The item-CF path's score for a candidate (same aggregate the feature uses).
    pub fn cf_score(&self, item: u64) -> f32 {
        self.cf.get(&item).map_or(0.0, |a| a.sum)
    }

    /// The user's taste per category at request time, normalised.
    pub fn taste(&self) -> &[(u16, f32)] {
        &self.taste
    }

    /// Candidates the item-CF aggregates know about, with their score.
    pub fn cf_candidates(&self) -> impl Iterator<Item = (u64, f32)> + '_ {
        self.cf.iter().map(|(&k, a)| (k, a.sum))
    }

    /// Writes the candidate's feature vector into `out` (length `N_FEATURES`).
    pub fn extract(&self, item: &ItemInput, recall: &RecallProvenance, out: &mut [f32]) {
        assert_eq!(
            out.len(),
            N_FEATURES,
            "feature buffer must have N_FEATURES slots"
        );
        out[..5].copy_from_slice(&self.user_block);
        out[5] = item.stats.count.ln_1p();
        out[6] = item.stats.trending_at(self.now).ln_1p();
        out[7] = item
            .created_at
            .map_or(f32::NAN, |c| (self.now - c).max(0) as f32 / 86_400.0);
        out[8] = item.categories.len() as f32;
        out[9..12].copy_from_slice(&self.ctx_block);
        out[12] = match (self.user_vector, item.vector) {
            (Some(u), Some(v)) if u.len() == v.len() => crate_dot(u, v),
            _ => f32::NAN,
        };
        let cf = self.cf.get(&item.key).copied().unwrap_or_default();
        out[13] = cf.sum;
        out[14] = cf.max;
        out[15] = cf.last;
        out[16] = cf.last3;
        out[17] = cf.count;
        out[18] = if self.taste.is_empty() {
            f32::NAN
        } else {
            item.categories
                .iter()
                .map(|c| {
                    self.taste
                        .binary_search_by_key(c, |t| t.0)
                        .map_or(0.0, |i| self.taste[i].1)
                })
                .sum()
        };
        out[19] = if item.categories.is_empty() || self.last_categories.is_empty() {
            f32::NAN
        } else {
            let shared = item
                .categories
                .iter()
                .filter(|c| self.last_categories.contains(c))
                .count();
            shared as f32 / item.categories.len() as f32
        };
        for (i, r) in recall.rank.iter().enumerate() {
            out[20 + i] = r.map_or(f32::NAN, |r| r as f32);
        }
        out[25] = recall.rank.iter().filter(|r| r.is_some()).count() as f32;
        out[26] = recall.itemcf_score.unwrap_or(f32::NAN);
    }
}

/// Plain dot product with a fixed summation order, so offline and online
/// agree to the bit.
fn crate_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::EventKind;
    use crate::features::{Demographics, FEATURE_NAMES};

    struct Table(KeyMap<Vec<(u64, f32)>>);
    impl CfLookup for Table {
        fn for_each_neighbour(&self, item: u64, f: &mut dyn FnMut(u64, f32)) {
            for &(n, s) in self.0.get(&item).map(|v| v.as_slice()).unwrap_or(&[]) {
                f(n, s);
            }
        }
    }

    fn idx(name: &str) -> usize {
        FEATURE_NAMES.iter().position(|n| *n == name).unwrap()
    }

    #[test]
    fn features_from_hand_built_state() {
        let p = StateParams::default();
        let mut s = UserState::new(Demographics {
            age: Some(30),
            gender: Some(Gender::Female),
            occupation: None,
        });
        s.apply(1, &[0], 1000, EventKind::View, 1.0, &p);
        s.apply(2, &[1], 2000, EventKind::View, 1.0, &p);
        let cf = Table(KeyMap::from_iter([
            (1, vec![(9, 0.5)]),
            (2, vec![(9, 0.25), (8, 1.0)]),
        ]));
        let ctx = RequestContext::at(2000 + 3600);
        let uv = [1.0f32, 2.0];
        let uf = UserFeatures::prepare(&s, Some(&uv), &[1], &ctx, &cf, &p);
        let iv = [3.0f32, 4.0];
        let mut stats = ItemStats::default();
        stats.apply(2000, 1.0);
        let item = ItemInput {
            key: 9,
            stats,
            created_at: Some(2000 - 86_400),
            categories: &[1, 2],
            vector: Some(&iv),
        };
        let mut prov = RecallProvenance::default();
        prov.set(RecallPath::ItemCf, 4);
        prov.set(RecallPath::Ann, 0);
        let mut out = vec![0f32; N_FEATURES];
        uf.extract(&item, &prov, &mut out);
        assert_eq!(out[idx("user_log_events")], 2f32.ln_1p());
        assert_eq!(out[idx("user_age")], 30.0);
        assert!((out[idx("user_log_hours_since_last")] - 1f32.ln_1p()).abs() < 1e-6);
        assert_eq!(out[idx("x_embedding_dot")], 11.0);
        // item 2 is the latest (weight 1), item 1 one step older (0.8)
        assert!((out[idx("x_cf_sum")] - (0.25 + 0.8 * 0.5)).abs() < 1e-6);
        assert_eq!(out[idx("x_cf_max")], 0.5);
        assert_eq!(out[idx("x_cf_last")], 0.25);
        assert_eq!(out[idx("x_cf_count")], 2.0);
        assert!((out[idx("item_age_days")] - (1.0 + 1.0 / 24.0)).abs() < 1e-5);
        assert_eq!(out[idx("x_last_category_match")], 0.5);
        // taste: cat 1 is the newer event, cat 2 unknown
        let taste = out[idx("x_taste_match")];
        assert!(taste > 0.5 && taste < 1.0, "{taste}");
        assert_eq!(out[idx("r_ann_rank")], 0.0);
        assert_eq!(out[idx("r_itemcf_rank")], 4.0);
        assert!(out[idx("r_popular_rank")].is_nan());
        assert_eq!(out[idx("r_n_paths")], 2.0);
        assert!(out[idx("ctx_device")].is_nan());
    }

    #[test]
    fn unknown_user_gets_missing_values_not_garbage() {
        let p = StateParams::default();
        let s = UserState::default();
        let uf = UserFeatures::prepare(&s, None, &[], &RequestContext::at(0), &NO_CF, &p);
        let item = ItemInput {
            key: 1,
            stats: ItemStats::default(),
            created_at: None,
            categories: &[],
            vector: None,
        };
        let mut out = vec![0f32; N_FEATURES];
        uf.extract(&item, &RecallProvenance::default(), &mut out);
        assert!(out[idx("x_embedding_dot")].is_nan());
        assert!(out[idx("user_active_days")].is_nan());
        assert_eq!(out[idx("x_cf_sum")], 0.0);
        assert!(out.iter().all(|v| v.is_nan() || v.is_finite()));
    }

    #[test]
    fn dot_matches_naive_sum() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..19).map(|i| 1.0 - i as f32 * 0.1).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((crate_dot(&a, &b) - naive).abs() < 1e-4);
    }
}
