//! Item shards and their prebuilt usearch HNSW indexes.
//!
//! Owns: how items are partitioned into shards (`shard_of(item_key)`), the
//! order of items inside a shard (ascending key), building one inner-product
//! index per shard, and turning an index into bytes and back with checks.
//! Must not touch: files (the writer and reader do I/O) or the manifest.
//!
//! Reproducibility: each shard's index is built by one thread, adding items
//! in key order, so the same vectors give byte-identical index files on the
//! same machine. (usearch seeds a level generator per thread slot and sizes
//! the slot pool by core count, so machines with different core counts may
//! build different, equally valid graphs.) Throughput comes from building
//! shards in parallel instead.

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

fn index_error(context: &str, e: impl std::fmt::Display) -> BundleError {
    BundleError::Index {
        context: context.to_owned(),
        reason: e.to_string(),
    }
}

/// Builds the HNSW index of one shard: `vectors` rows `part.rows`, keyed
/// by `part.keys`, added in key order by a single thread.
pub fn build_index(part: &ShardPart, vectors: &Matrix, params: &IndexParams) -> Result<Index> {
    let context = format!("shard {}", part.shard);
    let index =
        Index::new(&index_options(vectors.cols(), params)).map_err(|e| index_error(&context, e))?;
    index
        .reserve_capacity_and_threads(part.keys.len().max(1), 1)
        .map_err(|e| index_error(&context, e))?;
    for (&key, &row) in part.keys.iter().zip(&part.rows) {
        index
            .add(key, vectors.row(row))
            .map_err(|e| index_error(&context, e))?;
    }
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
        let a = index_to_bytes(&build_index(&parts[0], &m, &params).unwrap(), "t").unwrap();
        let b = index_to_bytes(&build_index(&parts[0], &m, &params).unwrap(), "t").unwrap();
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
        let bytes = index_to_bytes(&build_index(&part, &m, &params).unwrap(), "t").unwrap();
        let idx = index_from_bytes(std::path::Path::new("x"), &bytes, 4, &[], &params).unwrap();
        assert_eq!(idx.size(), 0);
    }
}
