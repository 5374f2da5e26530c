//! `Graph`: a read-only copy of one shard's HNSW graph laid out for
//! walking, and the walk itself: the ANN search serving runs.
//!
//! Why funnel walks usearch's graph itself: usearch builds and mutates the
//! graph well (concurrent inserts, deletes, its file format), but its search
//! reaches every vector through a table of pointers and never prefetches.
//! On 64-dimensional vectors that left most of a query waiting on memory: a
//! profile of 1,000 queries put ~80 % of the distance kernel's samples on
//! the first load of a neighbour's vector. Here the base layer is one flat
//! array with a fixed stride, a slot's vector is row `slot` of the shard's
//! own f32 table, and the walk prefetches every unvisited neighbour's row
//! before it scores any of them, so the misses of one expansion overlap
//! instead of following each other. Scores are exact f32 inner products from
//! `linalg` (no re-scoring pass), and a query allocates nothing once its
//! thread's scratch has grown to the shard.
//!
//! The walk follows usearch's own rules (greedy descent through the upper
//! layers, then a beam of `ef` over the base layer in which filtered-out
//! nodes are still expanded but never returned), so recall at a given `ef`
//! is the same; `shard::quality` measures both on the same index.
//!
//! Owns: exporting usearch's graph (`Graph::export`), the layout, the
//! per-thread scratch (visit marks, heaps) and the walk. Must not touch:
//! item keys, deletions or filters beyond the `allow(slot)` predicate it is
//! given, or mutation (usearch applies upserts; `ShardIndex` decides when
//! to export again).

use super::half;
use crate::ids::KeyHasher;
use crate::linalg::{prefetch, Backend, Kernels};
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

/// One shard's HNSW graph over slots `0..slots` (the rows of the shard's
/// vector table when it was exported).
pub struct Graph {
    /// Base layer: `stride` u32 per slot, first the neighbour count, then
    /// the neighbours' slots.
    base: Vec<u32>,
    stride: usize,
    /// Layer `l >= 1` at `upper[l - 1]`: slot -> neighbours. Few nodes
    /// reach them, so a map is small and the descent touches a handful.
    upper: Vec<HashMap<u32, Box<[u32]>, KeyHasher>>,
    /// Where every walk starts: a node of the highest layer.
    entry: Option<u32>,
    slots: usize,
    /// Half-precision copy of the slots' vectors, when made (see
    /// `add_half_rows`).
    half: Option<Vec<u16>>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("slots", &self.slots)
            .field("layers", &(self.upper.len() + 1))
            .field("stride", &self.stride)
            .finish()
    }
}

/// A node reached by the walk and its inner product with the query.
#[derive(Debug, Clone, Copy)]
struct Scored {
    score: f32,
    slot: u32,
}

impl PartialEq for Scored {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Scored {}
impl PartialOrd for Scored {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scored {
    fn cmp(&self, o: &Self) -> Ordering {
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.slot.cmp(&self.slot))
    }
}

/// What one thread reuses from walk to walk: visit marks stamped with an
/// epoch (so starting a walk clears nothing), the two heaps and the list of
/// newly reached neighbours.
#[derive(Default)]
pub struct Scratch {
    marks: Vec<u16>,
    epoch: u16,
    /// Nodes still to expand, best first.
    frontier: BinaryHeap<Scored>,
    /// The best `ef` allowed nodes so far, worst on top.
    best: BinaryHeap<Reverse<Scored>>,
    fresh: Vec<u32>,
}

impl Scratch {
    fn begin(&mut self, slots: usize) {
        if self.marks.len() < slots {
            self.marks.resize(slots, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.marks.fill(0);
            self.epoch = 1;
        }
        self.frontier.clear();
        self.best.clear();
    }

    /// Marks `slot` visited; true when it was not yet.
    #[inline(always)]
    fn first_visit(&mut self, slot: u32) -> bool {
        let m = &mut self.marks[slot as usize];
        if *m == self.epoch {
            false
        } else {
            *m = self.epoch;
            true
        }
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Why a graph could not be exported.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExportError {
    #[error(
        "node of slot {slot} has {got} base-layer neighbours, more than the {max} usearch allows"
    )]
    TooManyNeighbours { slot: usize, got: usize, max: usize },
}

impl Graph {
    /// Copies `index`'s graph. Slot `s` is the node of key `row_keys[s]`
    /// when `live(s)`; dead slots get no edges and no edge leads to them.
    /// Edges to keys `slot_of` does not know (usearch's removed nodes) are
    /// dropped.
    pub fn export(
        index: &usearch::Index,
        row_keys: &[u64],
        live: &dyn Fn(usize) -> bool,
        slot_of: &dyn Fn(u64) -> Option<u32>,
    ) -> Result<Graph, ExportError> {
        let slots = row_keys.len();
        // usearch's base layer holds up to twice the connectivity
        let max_base = 2 * index.connectivity().max(1);
        let stride = 1 + max_base;
        let mut base: Vec<u32> = super::huge::zeroed(slots * stride);
        let mut upper: Vec<HashMap<u32, Box<[u32]>, KeyHasher>> = Vec::new();
        let mut entry: Option<(usize, u32)> = None;
        let mut keys = vec![0u64; max_base.max(64)];
        for (slot, &key) in row_keys.iter().enumerate() {
            if !live(slot) || !index.contains(key) {
                continue;
            }
            let level = index.level_of_key(key);
            if entry.is_none_or(|(l, _)| level > l) {
                entry = Some((level, slot as u32));
            }
            for l in 0..=level {
                let mut cursor = index.neighbors(key, l);
                let total = cursor.total();
                if keys.len() < total {
                    keys.resize(total, 0);
                }
                let got = cursor.drain_into(&mut keys[..total]);
                let nbrs = keys[..got]
                    .iter()
                    .filter_map(|&k| slot_of(k))
                    .filter(|&s| live(s as usize));
                if l == 0 {
                    if got > max_base {
                        return Err(ExportError::TooManyNeighbours {
                            slot,
                            got,
                            max: max_base,
                        });
                    }
                    let row = &mut base[slot * stride..(slot + 1) * stride];
                    let mut n = 0;
                    for s in nbrs {
                        n += 1;
                        row[n] = s;
                    }
                    row[0] = n as u32;
                } else {
                    if upper.len() < l {
                        upper.resize_with(l, HashMap::default);
                    }
                    upper[l - 1].insert(slot as u32, nbrs.collect());
                }
            }
        }
        Ok(Graph {
            base,
            stride,
            upper,
            entry: entry.map(|(_, s)| s),
            slots,
            half: None,
        })
    }

    /// How many slots the graph spans (live or not).
    pub fn slots(&self) -> usize {
        self.slots
    }

    #[inline(always)]
    fn base_neighbours(&self, slot: u32) -> &[u32] {
        let row = &self.base[slot as usize * self.stride..(slot as usize + 1) * self.stride];
        &row[1..1 + row[0] as usize]
    }

    /// Adds a half-precision copy of `rows` (the first `slots` rows) for
    /// the walk to read: half the cache lines per visited node. The hits
    /// are re-scored exactly from the f32 rows, so answers differ from an
    /// f32 walk only where f16 rounding reorders near-ties at the edge of
    /// the beam. Does nothing on a CPU without F16C (the walk then reads
    /// f32). Returns whether the copy was made.
    pub fn add_half_rows(&mut self, rows: &[f32], dim: usize) -> bool {
        if rows.len() < self.slots * dim {
            return false;
        }
        match half::Half::detect() {
            Some(h) => {
                self.half = Some(h.encode(&rows[..self.slots * dim]));
                true
            }
            None => false,
        }
    }

    /// The best `k` allowed slots by inner product with `query`, best
    /// first, into `out` (cleared first); scores are exact f32 dot
    /// products. `rows` holds slot `s`'s vector at `rows[s * dim..(s + 1)
    /// * dim]` for every slot the graph spans; `ef` is the beam (widened to
    /// `k`).
    #[allow(clippy::too_many_arguments)]
    pub fn search(
        &self,
        rows: &[f32],
        dim: usize,
        query: &[f32],
        k: usize,
        ef: usize,
        allow: &dyn Fn(u32) -> bool,
        out: &mut Vec<(u32, f32)>,
    ) {
        out.clear();
        if k == 0 || query.len() != dim || rows.len() < self.slots * dim {
            return;
        }
        let exact = |kern: &dyn Fn(&[f32], &[f32]) -> f32, out: &mut Vec<(u32, f32)>| {
            for hit in out.iter_mut() {
                let at = hit.0 as usize * dim;
                hit.1 = kern(query, &rows[at..at + dim]);
            }
            out.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        };
        SCRATCH.with(|s| {
            let s = &mut s.borrow_mut();
            let walk = Walk { graph: self, k, ef };
            match (Backend::detect(), &self.half) {
                #[cfg(target_arch = "x86_64")]
                (Backend::Avx2Fma(kern), Some(half)) => {
                    let h = half::Half::detect().expect("half rows exist only on an F16C CPU");
                    let rows = half::HalfRows::new(h, half, dim, query);
                    // SAFETY: `kern` and `h` exist only on a CPU with AVX2,
                    // FMA and F16C.
                    unsafe { walk_half(&walk, &rows, allow, s, out) };
                    exact(&|a, b| kern.dot(a, b), out);
                }
                #[cfg(target_arch = "x86_64")]
                (Backend::Avx2Fma(kern), None) => {
                    let rows = ExactRows {
                        kern,
                        rows,
                        dim,
                        query,
                    };
                    // SAFETY: `kern` exists only on a CPU with AVX2 and FMA.
                    unsafe { walk_avx2(&walk, &rows, allow, s, out) }
                }
                #[cfg(not(target_arch = "x86_64"))]
                (Backend::Avx2Fma(kern), _) => walk.run(
                    &ExactRows {
                        kern,
                        rows,
                        dim,
                        query,
                    },
                    allow,
                    s,
                    out,
                ),
                (Backend::Portable(kern), _) => walk.run(
                    &ExactRows {
                        kern,
                        rows,
                        dim,
                        query,
                    },
                    allow,
                    s,
                    out,
                ),
            }
        });
    }
}

/// How the walk scores a slot against the query and hints its vector
/// into the cache.
pub(super) trait Rows {
    fn score(&self, slot: u32) -> f32;
    fn prefetch(&self, slot: u32);
}

/// The shard's f32 rows: scores are final.
struct ExactRows<'a, K> {
    kern: K,
    rows: &'a [f32],
    dim: usize,
    query: &'a [f32],
}

impl<K: Kernels> ExactRows<'_, K> {
    #[inline(always)]
    fn row(&self, slot: u32) -> &[f32] {
        let at = slot as usize * self.dim;
        &self.rows[at..at + self.dim]
    }
}

impl<K: Kernels> Rows for ExactRows<'_, K> {
    #[inline(always)]
    fn score(&self, slot: u32) -> f32 {
        self.kern.dot(self.query, self.row(slot))
    }
    #[inline(always)]
    fn prefetch(&self, slot: u32) {
        prefetch(self.row(slot));
    }
}

/// One query's walk: the graph and the sizes asked for.
struct Walk<'a> {
    graph: &'a Graph,
    k: usize,
    ef: usize,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn walk_avx2<R: Rows>(
    walk: &Walk<'_>,
    rows: &R,
    allow: &dyn Fn(u32) -> bool,
    s: &mut Scratch,
    out: &mut Vec<(u32, f32)>,
) {
    walk.run(rows, allow, s, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn walk_half(
    walk: &Walk<'_>,
    rows: &half::HalfRows<'_>,
    allow: &dyn Fn(u32) -> bool,
    s: &mut Scratch,
    out: &mut Vec<(u32, f32)>,
) {
    walk.run(rows, allow, s, out)
}

impl Walk<'_> {
    #[inline(always)]
    fn run<R: Rows>(
        &self,
        rows: &R,
        allow: &dyn Fn(u32) -> bool,
        s: &mut Scratch,
        out: &mut Vec<(u32, f32)>,
    ) {
        let g = self.graph;
        let Some(entry) = g.entry else { return };
        let (k, ef) = (self.k, self.ef.max(self.k));

        // Greedy descent through the upper layers: move to a better
        // neighbour until none is better, then go one layer down.
        let mut at = Scored {
            score: rows.score(entry),
            slot: entry,
        };
        for layer in g.upper.iter().rev() {
            loop {
                let mut moved = false;
                if let Some(nbrs) = layer.get(&at.slot) {
                    for &n in nbrs.iter() {
                        rows.prefetch(n);
                    }
                    for &n in nbrs.iter() {
                        let score = rows.score(n);
                        if score > at.score {
                            at = Scored { score, slot: n };
                            moved = true;
                        }
                    }
                }
                if !moved {
                    break;
                }
            }
        }

        // Beam search over the base layer. `bound` is the worst score in
        // `best` once it is full (usearch's radius, as a score); nodes the
        // filter refuses still guide the walk but never enter `best`.
        s.begin(g.slots);
        s.first_visit(at.slot);
        s.frontier.push(at);
        let mut bound = at.score;
        if allow(at.slot) {
            s.best.push(Reverse(at));
        }
        while let Some(&c) = s.frontier.peek() {
            if c.score < bound && s.best.len() >= ef {
                break;
            }
            s.frontier.pop();
            let nbrs = g.base_neighbours(c.slot);
            s.fresh.clear();
            for &n in nbrs {
                if s.first_visit(n) {
                    rows.prefetch(n);
                    s.fresh.push(n);
                }
            }
            for i in 0..s.fresh.len() {
                let n = s.fresh[i];
                let score = rows.score(n);
                if s.best.len() < ef || score > bound {
                    let node = Scored { score, slot: n };
                    s.frontier.push(node);
                    if allow(n) {
                        s.best.push(Reverse(node));
                        if s.best.len() > ef {
                            s.best.pop();
                        }
                        bound = s.best.peek().map_or(bound, |w| w.0.score);
                    }
                }
            }
            // the next node to expand is usually the frontier's best: start
            // loading its neighbour list while this iteration's bookkeeping ends
            if let Some(next) = s.frontier.peek() {
                let at = next.slot as usize * g.stride;
                prefetch_u32(&g.base[at..at + g.stride]);
            }
        }
        out.extend(s.best.drain().map(|Reverse(c)| (c.slot, c.score)));
        out.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out.truncate(k);
    }
}

/// Hints the CPU to load the cache lines of `xs` (a neighbour list).
#[inline(always)]
fn prefetch_u32(xs: &[u32]) {
    // SAFETY of the cast: f32 and u32 have the same size and alignment, and
    // prefetching only reads the addresses.
    let as_f32 = unsafe { std::slice::from_raw_parts(xs.as_ptr().cast::<f32>(), xs.len()) };
    prefetch(as_f32);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

    fn random_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..n * dim).map(|_| rng.normal() as f32).collect()
    }

    fn build(rows: &[f32], dim: usize, keys: &[u64]) -> Index {
        let ix = Index::new(&IndexOptions {
            dimensions: dim,
            metric: MetricKind::IP,
            quantization: ScalarKind::F32,
            connectivity: 8,
            expansion_add: 64,
            expansion_search: 64,
            multi: false,
        })
        .unwrap();
        ix.reserve(keys.len()).unwrap();
        for (i, &k) in keys.iter().enumerate() {
            ix.add(k, &rows[i * dim..(i + 1) * dim]).unwrap();
        }
        ix
    }

    fn exact(
        rows: &[f32],
        dim: usize,
        q: &[f32],
        k: usize,
        allow: impl Fn(u32) -> bool,
    ) -> Vec<u32> {
        let mut all: Vec<(u32, f32)> = (0..rows.len() / dim)
            .filter(|&s| allow(s as u32))
            .map(|s| {
                (
                    s as u32,
                    crate::linalg::dot(q, &rows[s * dim..(s + 1) * dim]),
                )
            })
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(k);
        all.into_iter().map(|x| x.0).collect()
    }

    fn recall(got: &[(u32, f32)], want: &[u32]) -> f64 {
        let hit = got.iter().filter(|g| want.contains(&g.0)).count();
        hit as f64 / want.len() as f64
    }

    #[test]
    fn the_walk_finds_what_an_exact_scan_finds_and_scores_exactly() {
        let (n, dim) = (3000, 16);
        let rows = random_rows(n, dim, 7);
        let keys: Vec<u64> = (0..n as u64).map(|i| 1000 + i * 7).collect();
        let ix = build(&rows, dim, &keys);
        let slot_of = |k: u64| {
            (k >= 1000 && (k - 1000) % 7 == 0 && (k - 1000) / 7 < n as u64)
                .then(|| ((k - 1000) / 7) as u32)
        };
        let g = Graph::export(&ix, &keys, &|_| true, &slot_of).unwrap();
        assert_eq!(g.slots(), n);
        let queries = random_rows(50, dim, 8);
        let mut out = Vec::new();
        let mut total = 0.0;
        for q in queries.chunks(dim) {
            g.search(&rows, dim, q, 10, 128, &|_| true, &mut out);
            assert_eq!(out.len(), 10);
            assert!(out.windows(2).all(|w| w[0].1 >= w[1].1), "best first");
            for &(s, score) in &out {
                let want = crate::linalg::dot(q, &rows[s as usize * dim..][..dim]);
                assert_eq!(score, want, "scores are the exact dot product");
            }
            total += recall(&out, &exact(&rows, dim, q, 10, |_| true));
        }
        let mean = total / 50.0;
        assert!(mean > 0.95, "recall@10 {mean}");
    }

    #[test]
    fn refused_nodes_are_walked_through_but_never_returned() {
        let (n, dim) = (2000, 8);
        let rows = random_rows(n, dim, 11);
        let keys: Vec<u64> = (0..n as u64).collect();
        let ix = build(&rows, dim, &keys);
        let g = Graph::export(&ix, &keys, &|_| true, &|k| {
            (k < n as u64).then_some(k as u32)
        })
        .unwrap();
        // refuse two thirds of the nodes: the rest must still be found
        let allow = |s: u32| s % 3 == 0;
        let queries = random_rows(30, dim, 12);
        let mut out = Vec::new();
        let mut total = 0.0;
        for q in queries.chunks(dim) {
            g.search(&rows, dim, q, 10, 96, &allow, &mut out);
            assert!(out.iter().all(|&(s, _)| allow(s)));
            total += recall(&out, &exact(&rows, dim, q, 10, allow));
        }
        assert!(total / 30.0 > 0.9, "filtered recall@10 {}", total / 30.0);
    }

    #[test]
    fn dead_slots_and_unknown_keys_get_no_edges() {
        let (n, dim) = (500, 8);
        let rows = random_rows(n, dim, 3);
        let keys: Vec<u64> = (0..n as u64).collect();
        let ix = build(&rows, dim, &keys);
        // slots 0..100 are dead (deleted items); keys 400.. are unknown to
        // the shard (usearch's removed nodes), as are their slots
        let live = |s: usize| (100..400).contains(&s);
        let g = Graph::export(&ix, &keys, &live, &|k| (k < 400).then_some(k as u32)).unwrap();
        for s in (0..100u32).chain(400..n as u32) {
            assert!(g.base_neighbours(s).is_empty());
        }
        for s in 100..400u32 {
            assert!(g.base_neighbours(s).iter().all(|&x| live(x as usize)));
        }
        assert!(live(g.entry.unwrap() as usize));
        let q = vec![1.0f32; dim];
        let mut out = Vec::new();
        g.search(&rows, dim, &q, 20, 64, &|s| live(s as usize), &mut out);
        assert_eq!(out.len(), 20);
        assert!(out.iter().all(|&(s, _)| live(s as usize)));
    }

    #[test]
    fn an_empty_graph_or_a_bad_query_finds_nothing() {
        let dim = 4;
        let ix = build(&[], dim, &[]);
        let g = Graph::export(&ix, &[], &|_| true, &|_| None).unwrap();
        let mut out = vec![(1, 1.0)];
        g.search(&[], dim, &[1.0; 4], 5, 16, &|_| true, &mut out);
        assert!(out.is_empty());
        let rows = random_rows(50, dim, 1);
        let keys: Vec<u64> = (0..50).collect();
        let ix = build(&rows, dim, &keys);
        let g = Graph::export(&ix, &keys, &|_| true, &|k| (k < 50).then_some(k as u32)).unwrap();
        g.search(&rows, dim, &[1.0; 3], 5, 16, &|_| true, &mut out);
        assert!(out.is_empty(), "wrong dimension");
        g.search(&rows, dim, &[1.0; 4], 0, 16, &|_| true, &mut out);
        assert!(out.is_empty(), "k = 0");
        g.search(&rows[..8], dim, &[1.0; 4], 5, 16, &|_| true, &mut out);
        assert!(out.is_empty(), "too few rows for the graph");
    }
}
