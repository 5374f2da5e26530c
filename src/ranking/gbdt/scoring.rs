//! The in-memory layout `GbdtModel` scores with, derived from its
//! validated trees and never serialised.
//!
//! Owns: the complete-tree and linked layouts, row preparation and the
//! lockstep walks. Must not touch: tree validation (a `Scorer` is only
//! built from trees that passed `GbdtModel::validate`), serde.
//!
//! Three things make scoring cheap:
//! - Missing values cost nothing per node. Each row is copied once into a
//!   stack buffer twice over: with NaN as -inf, then with NaN as +inf. A
//!   node whose missing values go right reads the second copy, others the
//!   first, so `value > threshold` alone routes NaN the learned way (and
//!   every other value exactly as `Tree::predict` does).
//! - Trees of ordinary depth (default max_depth 6) are padded to complete
//!   binary trees: a step is `i = 2i + 1 + (value > threshold)` over 8-byte
//!   nodes, no child pointers. Deeper trees (max_depth 0 allows any depth)
//!   would blow up when padded and keep explicit child links, with leaves
//!   looping onto themselves. Either way a walk is exactly `depth`
//!   branch-free steps: the direction is data-dependent, so a jump would
//!   mispredict half the time.
//! - Eight rows walk a tree in lockstep so the CPU overlaps their loads,
//!   and all rows go through one tree before the next (tree-major), so
//!   the tree and the prepared rows stay in L1.

use super::model::Tree;
use std::ops::Range;

/// Rows walked together through a tree.
const LANES: usize = 8;

/// Trees up to this depth use the complete layout (2^10 - 1 nodes, 8 KiB).
const COMPLETE_MAX_DEPTH: u32 = 10;

/// Floats in the stack buffer for prepared rows (16 KiB). Each prepared
/// row takes 2 x n_features, so models with more than 2048 features are
/// scored by the plain tree walk instead.
const PREPARED_FLOATS: usize = 4096;

/// Smaller buffer for single rows of narrow models, so `predict_row` does
/// not clear 16 KiB per call.
const ROW_FLOATS: usize = 256;

/// A split as the walks read it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Split {
    threshold: f32,
    /// Index into a prepared row: the feature, plus n_features when
    /// missing values go right.
    column: u32,
}

impl Split {
    fn new(node: &super::model::Node, n_features: usize) -> Self {
        let offset = if node.default_left {
            0
        } else {
            n_features as u32
        };
        Split {
            threshold: node.threshold,
            column: node.feature + offset,
        }
    }

    /// A split in padding (or a self-looping leaf): where it goes does not
    /// matter, column 0 always exists.
    const PADDING: Split = Split {
        threshold: 0.0,
        column: 0,
    };

    /// 1 if the prepared row at `buf[start..]` goes right, else 0.
    #[inline(always)]
    fn goes_right(&self, buf: &[f32], start: usize) -> usize {
        (buf[start + self.column as usize] > self.threshold) as usize
    }
}

/// Copies row-major `rows` (width d) into `buf` as [NaN -> -inf copy,
/// NaN -> +inf copy] per row.
fn prepare(rows: &[f32], d: usize, buf: &mut [f32]) {
    for (row, out) in rows.chunks_exact(d).zip(buf.chunks_exact_mut(2 * d)) {
        let (low, high) = out.split_at_mut(d);
        for ((&v, lo), hi) in row.iter().zip(low).zip(high) {
            let missing = v.is_nan();
            *lo = if missing { f32::NEG_INFINITY } else { v };
            *hi = if missing { f32::INFINITY } else { v };
        }
    }
}

/// A layout that can walk K prepared rows (starting at `starts[k]` in
/// `buf`) through one tree in lockstep, returning each row's leaf value.
trait Walk {
    fn n_trees(&self) -> usize;
    fn walk<const K: usize>(&self, tree: usize, buf: &[f32], starts: [usize; K]) -> [f32; K];
}

/// Padded complete trees, heap-ordered: node i's children are 2i+1, 2i+2.
#[derive(Debug, Clone, Default, PartialEq)]
struct CompleteTrees {
    nodes: Vec<Split>,
    values: Vec<f32>,
    /// (first node, first value, depth) per tree.
    trees: Vec<(usize, usize, u32)>,
}

impl CompleteTrees {
    fn new(trees: &[Tree], depths: &[u32], n_features: usize) -> Self {
        let mut c = CompleteTrees::default();
        for (tree, &depth) in trees.iter().zip(depths) {
            let first_node = c.nodes.len();
            let first_value = c.values.len();
            let internal = (1usize << depth) - 1;
            // A leaf above the bottom level becomes a padding subtree whose
            // bottom leaves all hold its value.
            // One spare padding node makes the slice a power of two long,
            // so the walk can index with a mask the compiler trusts.
            c.nodes.resize(first_node + internal + 1, Split::PADDING);
            c.values.resize(first_value + internal + 1, 0.0);
            // (child reference in `tree`, heap index, level)
            let root = if tree.nodes.is_empty() {
                Tree::leaf_ref(0)
            } else {
                0
            };
            let mut stack = vec![(root, 0usize, 0u32)];
            while let Some((reference, heap, level)) = stack.pop() {
                if reference >= 0 {
                    let node = &tree.nodes[reference as usize];
                    c.nodes[first_node + heap] = Split::new(node, n_features);
                    stack.push((node.left, 2 * heap + 1, level + 1));
                    stack.push((node.right, 2 * heap + 2, level + 1));
                } else {
                    let value = tree.leaf_values[!reference as usize];
                    let (mut lo, mut hi) = (heap, heap);
                    for _ in level..depth {
                        lo = 2 * lo + 1;
                        hi = 2 * hi + 2;
                    }
                    c.values[first_value + lo - internal..=first_value + hi - internal].fill(value);
                }
            }
            c.trees.push((first_node, first_value, depth));
        }
        c
    }
}

impl Walk for CompleteTrees {
    fn n_trees(&self) -> usize {
        self.trees.len()
    }

    #[inline(always)]
    fn walk<const K: usize>(&self, tree: usize, buf: &[f32], starts: [usize; K]) -> [f32; K] {
        let (first_node, first_value, depth) = self.trees[tree];
        let internal = (1usize << depth) - 1;
        // Both slices are `internal + 1` long and every index below is
        // masked with `internal`, so no bounds checks remain in the loop.
        let nodes = &self.nodes[first_node..first_node + internal + 1];
        let values = &self.values[first_value..first_value + internal + 1];
        let mut at = [0usize; K];
        for _ in 0..depth {
            for k in 0..K {
                at[k] = 2 * at[k] + 1 + nodes[at[k] & internal].goes_right(buf, starts[k]);
            }
        }
        // After `depth` steps at[k] is in internal..2 * internal + 1, so
        // subtracting and masking are the same.
        at.map(|i| values[(i - internal) & internal])
    }
}

/// Trees with explicit child links; leaves are nodes whose children are
/// themselves.
#[derive(Debug, Clone, Default, PartialEq)]
struct LinkedTrees {
    nodes: Vec<(Split, [u32; 2])>,
    /// Leaf value per node (0 for split nodes).
    values: Vec<f32>,
    /// (root node, depth) per tree.
    trees: Vec<(u32, u32)>,
}

impl LinkedTrees {
    fn new(trees: &[Tree], depths: &[u32], n_features: usize) -> Self {
        let mut c = LinkedTrees::default();
        for (tree, &depth) in trees.iter().zip(depths) {
            let base = c.nodes.len() as u32;
            let leaves_at = base + tree.nodes.len() as u32;
            let global = |child: i32| {
                if child < 0 {
                    leaves_at + !child as u32
                } else {
                    base + child as u32
                }
            };
            for node in &tree.nodes {
                c.nodes.push((
                    Split::new(node, n_features),
                    [global(node.left), global(node.right)],
                ));
                c.values.push(0.0);
            }
            for (k, &value) in tree.leaf_values.iter().enumerate() {
                let me = leaves_at + k as u32;
                c.nodes.push((Split::PADDING, [me, me]));
                c.values.push(value);
            }
            c.trees.push((base, depth));
        }
        c
    }
}

impl Walk for LinkedTrees {
    fn n_trees(&self) -> usize {
        self.trees.len()
    }

    #[inline(always)]
    fn walk<const K: usize>(&self, tree: usize, buf: &[f32], starts: [usize; K]) -> [f32; K] {
        let (root, depth) = self.trees[tree];
        let mut at = [root; K];
        for _ in 0..depth {
            for k in 0..K {
                let (split, children) = &self.nodes[at[k] as usize];
                at[k] = children[split.goes_right(buf, starts[k]) & 1];
            }
        }
        at.map(|i| self.values[i as usize])
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Layout {
    Complete(CompleteTrees),
    Linked(LinkedTrees),
}

/// Scores rows with a model's trees. Built only from validated trees.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scorer {
    n_features: usize,
    layout: Layout,
}

impl Default for Scorer {
    fn default() -> Self {
        Scorer {
            n_features: 0,
            layout: Layout::Complete(CompleteTrees::default()),
        }
    }
}

/// Depth of a validated tree (children after parents, so one forward
/// pass suffices).
fn depth_of(tree: &Tree) -> u32 {
    let mut node_depth = vec![0u32; tree.nodes.len()];
    let mut depth = 0;
    for (i, node) in tree.nodes.iter().enumerate() {
        let d = node_depth[i] + 1;
        depth = depth.max(d);
        for child in [node.left, node.right] {
            if child >= 0 {
                node_depth[child as usize] = d;
            }
        }
    }
    depth
}

impl Scorer {
    pub(crate) fn new(trees: &[Tree], n_features: usize) -> Self {
        let depths: Vec<u32> = trees.iter().map(depth_of).collect();
        let layout = if depths.iter().all(|&d| d <= COMPLETE_MAX_DEPTH) {
            Layout::Complete(CompleteTrees::new(trees, &depths, n_features))
        } else {
            Layout::Linked(LinkedTrees::new(trees, &depths, n_features))
        };
        Scorer { n_features, layout }
    }

    #[cfg(test)]
    pub(crate) fn is_complete(&self) -> bool {
        matches!(self.layout, Layout::Complete(_))
    }

    /// Whether this scorer handles the model's rows; if not (no features,
    /// or too many for the stack buffer) the caller walks the trees.
    pub(crate) fn supported(&self) -> bool {
        self.n_features > 0 && 2 * self.n_features <= PREPARED_FLOATS
    }

    /// Score of one row; only its first n_features values are read, and
    /// it must have that many (checked by the caller, as is `supported`).
    pub(crate) fn score_row(&self, base: f32, row: &[f32]) -> f32 {
        let d = self.n_features;
        let mut out = [base];
        if 2 * d <= ROW_FLOATS {
            let mut buf = [0.0f32; ROW_FLOATS];
            self.score_chunk(&row[..d], &mut buf, 0..usize::MAX, &mut out);
        } else {
            let mut buf = [0.0f32; PREPARED_FLOATS];
            self.score_chunk(&row[..d], &mut buf, 0..usize::MAX, &mut out);
        }
        out[0]
    }

    /// Adds the outputs of every tree to `out` (which holds the base
    /// score) for row-major `rows` with `out.len()` rows of n_features
    /// (checked by the caller, as is `supported`).
    pub(crate) fn score_rows(&self, rows: &[f32], out: &mut [f32]) {
        self.add_trees(rows, 0..usize::MAX, out);
    }

    /// Adds the outputs of the trees in `trees` (clamped to the model) to
    /// `out`. Scoring trees `0..a` and then `a..` on the same `out` gives
    /// the same bits as all trees at once: each row still sums its trees in
    /// order, which is what lets a ranking cascade stop early on some rows.
    pub(crate) fn add_trees(&self, rows: &[f32], trees: Range<usize>, out: &mut [f32]) {
        let d = self.n_features;
        let per_chunk = PREPARED_FLOATS / (2 * d);
        let mut buf = [0.0f32; PREPARED_FLOATS];
        for (rows, out) in rows.chunks(per_chunk * d).zip(out.chunks_mut(per_chunk)) {
            self.score_chunk(rows, &mut buf, trees.clone(), out);
        }
    }

    fn score_chunk(&self, rows: &[f32], buf: &mut [f32], trees: Range<usize>, out: &mut [f32]) {
        let stride = 2 * self.n_features;
        let buf = &mut buf[..out.len() * stride];
        prepare(rows, self.n_features, buf);
        match &self.layout {
            Layout::Complete(c) => add_tree_outputs(c, buf, stride, trees, out),
            Layout::Linked(l) => add_tree_outputs(l, buf, stride, trees, out),
        }
    }
}

/// Tree-major over prepared rows. Each row still accumulates tree 0, tree
/// 1, ... in order, so scores equal those of `Tree::predict` summed in
/// order, bit for bit.
fn add_tree_outputs<W: Walk>(
    layout: &W,
    buf: &[f32],
    stride: usize,
    trees: Range<usize>,
    out: &mut [f32],
) {
    let full = out.len() / LANES * LANES;
    let end = trees.end.min(layout.n_trees());
    for t in trees.start.min(end)..end {
        for first in (0..full).step_by(LANES) {
            let starts: [usize; LANES] = std::array::from_fn(|k| (first + k) * stride);
            let values = layout.walk(t, buf, starts);
            for (score, value) in out[first..first + LANES].iter_mut().zip(values) {
                *score += value;
            }
        }
        for (r, score) in out.iter_mut().enumerate().skip(full) {
            *score += layout.walk(t, buf, [r * stride])[0];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ranking::gbdt::model::Node;
    use crate::rng::Rng;

    /// A random valid tree with `splits` splits; `chain` always splits the
    /// newest leaf, making the tree as deep as it is large.
    fn random_tree(rng: &mut Rng, d: usize, splits: usize, chain: bool) -> Tree {
        let mut nodes: Vec<Node> = Vec::new();
        // Per leaf: the node pointing at it and whether as left child.
        let mut leaf_parent: Vec<Option<(usize, bool)>> = vec![None];
        for _ in 0..splits {
            let leaf = if chain {
                leaf_parent.len() - 1
            } else {
                rng.usize_below(leaf_parent.len())
            };
            let at = nodes.len();
            let right_leaf = leaf_parent.len();
            nodes.push(Node {
                feature: rng.usize_below(d) as u32,
                threshold: rng.f32(),
                default_left: rng.below(2) == 0,
                left: Tree::leaf_ref(leaf),
                right: Tree::leaf_ref(right_leaf),
                gain: 1.0,
            });
            if let Some((p, is_left)) = leaf_parent[leaf] {
                if is_left {
                    nodes[p].left = at as i32;
                } else {
                    nodes[p].right = at as i32;
                }
            }
            leaf_parent[leaf] = Some((at, true));
            leaf_parent.push(Some((at, false)));
        }
        let leaf_values = (0..leaf_parent.len())
            .map(|_| rng.normal() as f32)
            .collect();
        Tree { nodes, leaf_values }
    }

    fn random_rows(rng: &mut Rng, n: usize, d: usize) -> Vec<f32> {
        (0..n * d)
            .map(|_| match rng.below(10) {
                0 => f32::NAN,
                1 => f32::INFINITY,
                _ => rng.f32(),
            })
            .collect()
    }

    fn check_against_reference(trees: &[Tree], d: usize, expect_complete: bool) {
        let scorer = Scorer::new(trees, d);
        assert!(scorer.supported());
        assert_eq!(scorer.is_complete(), expect_complete);
        let mut rng = Rng::new(77);
        let n = 19; // two full lanes of 8 and a remainder of 3
        let rows = random_rows(&mut rng, n, d);
        let mut out = vec![0.5f32; n];
        scorer.score_rows(&rows, &mut out);
        for (row, &got) in rows.chunks(d).zip(&out) {
            let mut want = 0.5f32;
            for tree in trees {
                want += tree.predict(row);
            }
            assert_eq!(got.to_bits(), want.to_bits());
            assert_eq!(scorer.score_row(0.5, row).to_bits(), want.to_bits());
        }
    }

    #[test]
    fn complete_layout_matches_tree_walks() {
        let mut rng = Rng::new(1);
        let d = 4;
        let mut trees: Vec<Tree> = (0..20)
            .map(|i| random_tree(&mut rng, d, i % 12, false))
            .collect();
        trees.push(random_tree(&mut rng, d, 10, true)); // depth exactly 10
        check_against_reference(&trees, d, true);
    }

    #[test]
    fn deep_trees_use_the_linked_layout_and_match() {
        let mut rng = Rng::new(2);
        let d = 4;
        let mut trees: Vec<Tree> = (0..5)
            .map(|_| random_tree(&mut rng, d, 30, false))
            .collect();
        trees.push(random_tree(&mut rng, d, 25, true)); // depth 25
        check_against_reference(&trees, d, false);
    }

    #[test]
    fn depth_counts_the_longest_path() {
        let mut rng = Rng::new(3);
        assert_eq!(depth_of(&random_tree(&mut rng, 2, 0, false)), 0);
        assert_eq!(depth_of(&random_tree(&mut rng, 2, 7, true)), 7);
        let bushy = random_tree(&mut rng, 2, 40, false);
        assert!(depth_of(&bushy) >= 6 && depth_of(&bushy) <= 40);
    }
}
