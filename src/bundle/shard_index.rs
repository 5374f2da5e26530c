//! Item shards and their prebuilt usearch HNSW indexes.
//!
//! Owns: how items are partitioned into shards (`shard_of(item_key)`), the
//! order of items inside a shard (ascending key), building one inner-product
//! index per shard, and turning an index into bytes and back with checks.
//! Must not touch: files (the writer and reader do I/O) or the manifest.
//!
//! Threads and reproducibility: a shard's index is built by `threads`
//! threads adding items concurrently (usearch locks the nodes it links), so
//! a bundle with fewer shards than cores still uses every core. The graph
//! then depends on how the threads interleave: equally good, not the same
//! bytes. With one thread per shard items are added in key order and the
//! same vectors give byte-identical index files on the same machine
//! (`--index-threads 1`, or at least as many shards as threads).

use super::error::{BundleError, Result};
use super::manifest::IndexParams;
use crate::ids::shard_of;
use crate::matrix::Matrix;
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

/// The items of one shard: their keys (ascending) and rows in the item table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPart {
    pub shard: u32,
    pub keys: Vec<u64>,
    pub rows: Vec<usize>,
}

/// Splits items (given by their keys, in item-table order) into
/// `shard_count` shards, each sorted by key. Every shard is returned, even
/// an empty one, so a node can load any shard number below `shard_count`.
pub fn partition(keys: &[u64], shard_count: u32) -> Vec<ShardPart> {
    let mut parts: Vec<ShardPart> = (0..shard_count)
        .map(|shard| ShardPart {
            shard,
            keys: Vec::new(),
            rows: Vec::new(),
        })
        .collect();
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_unstable_by_key(|&i| keys[i]);
    for i in order {
        let part = &mut parts[shard_of(keys[i], shard_count) as usize];
        part.keys.push(keys[i]);
        part.rows.push(i);
    }
    parts
}

/// The usearch storage kind of `params.quantization` (validated names;
/// anything else is f32).
pub fn scalar_kind(params: &IndexParams) -> ScalarKind {
    match params.quantization.as_str() {
        "f16" => ScalarKind::F16,
        _ => ScalarKind::F32,
    }
}

/// usearch options for an index of `dimension` values under `params`.
pub fn index_options(dimension: usize, params: &IndexParams) -> IndexOptions {
    IndexOptions {
        dimensions: dimension,
        metric: MetricKind::IP,
        quantization: scalar_kind(params),
        connectivity: params.connectivity as usize,
        expansion_add: params.expansion_add as usize,
        expansion_search: params.expansion_search as usize,
        multi: false,
    }
}

/// Makes `index` compute its inner-product distance (1 - dot) with
/// funnel's f32 kernel while it is built. usearch's own f32 kernel widens
/// every product to f64; ours stays in f32 like the serving walk, and built
/// a 200k x 64 index about 10 % faster (BENCHMARKS.md). Only the build sees
/// it: the metric is not part of the saved index, and a loaded index uses
/// usearch's again.
fn use_f32_kernel(index: &mut Index, dim: usize) {
    index.change_metric::<f32>(Box::new(move |a: *const f32, b: *const f32| {
        // SAFETY: usearch calls the metric with two vectors of this index,
        // each `dim` f32 values long and alive for the call.
        let (a, b) = unsafe {
            (
                std::slice::from_raw_parts(a, dim),
                std::slice::from_raw_parts(b, dim),
            )
        };
        1.0 - crate::linalg::dot(a, b)
    }));
}

fn index_error(context: &str, e: impl std::fmt::Display) -> BundleError {
    BundleError::Index {
        context: context.to_owned(),
        reason: e.to_string(),
    }
}

/// Items a build thread claims at a time: large enough that the shared
/// counter is not contended, small enough that threads finish together.
const BUILD_BLOCK: usize = 256;

/// How many threads build each of `shards` indexes when `threads` build
/// them all (0 = one per core): the threads split between the shards that
/// are built at the same time, at least one each.
pub fn threads_per_shard(threads: usize, shards: u32) -> usize {
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    };
    (threads / shards.max(1) as usize).max(1)
}

/// Builds the HNSW index of one shard: `vectors` rows `part.rows`, keyed
/// by `part.keys`. One thread adds them in key order (reproducible);
/// more add blocks of them concurrently.
pub fn build_index(
    part: &ShardPart,
    vectors: &Matrix,
    params: &IndexParams,
    threads: usize,
) -> Result<Index> {
    let context = format!("shard {}", part.shard);
    let mut index =
        Index::new(&index_options(vectors.cols(), params)).map_err(|e| index_error(&context, e))?;
    if scalar_kind(params) == ScalarKind::F32 {
        use_f32_kernel(&mut index, vectors.cols());
    }
    // no point in threads that would each get less than a block
    let threads = threads.clamp(1, part.keys.len().div_ceil(BUILD_BLOCK).max(1));
    index
        .reserve_capacity_and_threads(part.keys.len().max(1), threads)
        .map_err(|e| index_error(&context, e))?;
    if threads == 1 {
        for (&key, &row) in part.keys.iter().zip(&part.rows) {
            index
                .add(key, vectors.row(row))
                .map_err(|e| index_error(&context, e))?;
        }
        return Ok(index);
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let add_blocks = || -> Result<()> {
        loop {
            let start = next.fetch_add(BUILD_BLOCK, std::sync::atomic::Ordering::Relaxed);
            if start >= part.keys.len() {
                return Ok(());
            }
            let end = (start + BUILD_BLOCK).min(part.keys.len());
            for (&key, &row) in part.keys[start..end].iter().zip(&part.rows[start..end]) {
                index
                    .add(key, vectors.row(row))
                    .map_err(|e| index_error(&context, e))?;
            }
        }
    };
    std::thread::scope(|s| {
        let helpers: Vec<_> = (1..threads).map(|_| s.spawn(add_blocks)).collect();
        let mut result = add_blocks();
        for h in helpers {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(index_error(&context, "a build thread panicked")));
            result = result.and(r);
        }
        result
    })?;
    Ok(index)
}

/// The serialised form of `index` (what `index.usearch` holds).
pub fn index_to_bytes(index: &Index, context: &str) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; index.serialized_length()];
    index
        .save_to_buffer(&mut buf)
        .map_err(|e| index_error(context, e))?;
    Ok(buf)
}

/// Restores an index from verified bytes and checks it matches what the
/// bundle says: inner-product with the manifest's quantization, `dimension`
/// wide, holding exactly `keys`.
pub fn index_from_bytes(
    file: &std::path::Path,
    bytes: &[u8],
    dimension: usize,
    keys: &[u64],
    params: &IndexParams,
) -> Result<Index> {
    let meta = Index::metadata_from_buffer(bytes)
        .map_err(|e| BundleError::decode(file, format!("not a usearch index ({e})")))?;
    if meta.dimensions != dimension as u64
        || meta.metric != MetricKind::IP
        || meta.quantization != scalar_kind(params)
        || meta.multi
    {
        return Err(BundleError::decode(
            file,
            format!(
                "index is {}-dimensional {:?}/{:?} (multi={}), expected {dimension}-dimensional IP/{:?}",
                meta.dimensions, meta.metric, meta.quantization, meta.multi, scalar_kind(params)
            ),
        ));
    }
    if meta.count_present != keys.len() as u64 || meta.count_deleted != 0 {
        return Err(BundleError::decode(
            file,
            format!(
                "index holds {} items ({} deleted), the shard's key list has {}",
                meta.count_present,
                meta.count_deleted,
                keys.len()
            ),
        ));
    }
    let index = Index::restore_from_buffer(bytes)
        .map_err(|e| BundleError::decode(file, format!("usearch could not load it ({e})")))?;
    if let Some(missing) = keys.iter().find(|&&k| !index.contains(k)) {
        return Err(BundleError::decode(
            file,
            format!("key {missing:#018x} of the shard's key list is not in the index"),
        ));
    }
    // Search-time expansion is a serving knob, not part of the index file.
    index.change_expansion_search(params.expansion_search as usize);
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random_matrix(rows: usize, cols: usize, seed: u64) -> Matrix {
        let mut rng = Rng::new(seed);
        let data = (0..rows * cols).map(|_| rng.normal() as f32).collect();
        Matrix::from_vec(rows, cols, data).unwrap()
    }

    #[test]
    fn partition_covers_every_item_once_in_key_order() {
        let keys: Vec<u64> = (0..100u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let parts = partition(&keys, 3);
        assert_eq!(parts.len(), 3);
        let mut seen: Vec<usize> = parts.iter().flat_map(|p| p.rows.clone()).collect();
        seen.sort();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        for p in &parts {
            assert!(p.keys.windows(2).all(|w| w[0] < w[1]));
            for (&k, &r) in p.keys.iter().zip(&p.rows) {
                assert_eq!(k, keys[r]);
                assert_eq!(shard_of(k, 3), p.shard);
            }
        }
    }

    #[test]
    fn index_bytes_round_trip_and_builds_are_reproducible() {
        let m = random_matrix(200, 8, 1);
        let keys: Vec<u64> = (1000..1200).collect();
        let parts = partition(&keys, 1);
        let params = IndexParams::default();
        let a = index_to_bytes(&build_index(&parts[0], &m, &params, 1).unwrap(), "t").unwrap();
        let b = index_to_bytes(&build_index(&parts[0], &m, &params, 1).unwrap(), "t").unwrap();
        assert_eq!(a, b, "same input must give the same index bytes");
        let f = std::path::Path::new("index.usearch");
        let restored = index_from_bytes(f, &a, 8, &parts[0].keys, &params).unwrap();
        assert_eq!(restored.size(), 200);
        // wrong expectations are reported, not trusted
        assert!(index_from_bytes(f, &a, 9, &parts[0].keys, &params).is_err());
        assert!(index_from_bytes(f, &a, 8, &parts[0].keys[1..], &params).is_err());
        assert!(index_from_bytes(f, &a[..10], 8, &parts[0].keys, &params).is_err());
    }

    #[test]
    fn empty_shard_index_round_trips() {
        let m = Matrix::zeros(0, 4);
        let part = ShardPart {
            shard: 0,
            keys: vec![],
            rows: vec![],
        };
        let params = IndexParams::default();
        let bytes = index_to_bytes(&build_index(&part, &m, &params, 4).unwrap(), "t").unwrap();
        let idx = index_from_bytes(std::path::Path::new("x"), &bytes, 4, &[], &params).unwrap();
        assert_eq!(idx.size(), 0);
    }

    #[test]
    fn a_threaded_build_holds_every_key_and_finds_neighbours() {
        // unit vectors: under inner product each one's best match is itself
        let mut m = random_matrix(3000, 8, 5);
        for r in 0..m.rows() {
            let row = m.row_mut(r);
            let norm = crate::linalg::norm(row);
            row.iter_mut().for_each(|x| *x /= norm);
        }
        let keys: Vec<u64> = (0..3000u64).map(|i| i * 3 + 1).collect();
        let parts = partition(&keys, 1);
        let params = IndexParams::default();
        let index = build_index(&parts[0], &m, &params, 3).unwrap();
        assert_eq!(index.size(), 3000);
        assert!(keys.iter().all(|&k| index.contains(k)));
        // every vector finds itself as its own best match at least mostly
        let mut found = 0;
        for &k in keys.iter().step_by(30) {
            let row = parts[0].rows[parts[0].keys.binary_search(&k).unwrap()];
            let hits = index.search(m.row(row), 1).unwrap();
            found += usize::from(hits.keys.first() == Some(&k));
        }
        assert!(found >= 95, "{found} of 100 found themselves");
    }

    #[test]
    fn threads_split_between_shards_at_least_one_each() {
        assert_eq!(threads_per_shard(8, 2), 4);
        assert_eq!(threads_per_shard(2, 12), 1);
        assert_eq!(threads_per_shard(3, 2), 1);
        assert!(threads_per_shard(0, 1) >= 1);
    }
}
