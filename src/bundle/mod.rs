//! The model bundle: a versioned, checksummed directory that `funnel train`
//! and `funnel import` write atomically and serving nodes load without
//! rebuilding ANN indexes.
//!
//! Owns: the bundle layout and format version, writing (`BundleWriter`),
//! verified reading (`Bundle`), `inspect`, `import` of externally
//! trained vectors (with our own `.npy` reader) and `reindex` (new indexes
//! or shard count for an existing bundle). Must not touch: training,
//! feature computation or serving; other modules store their artefacts as
//! named sections and decode them themselves.
//!
//! # Layout (format version 1)
//!
//! ```text
//! <bundle>/manifest.json          written last; lists every other file with size + blake3,
//!                                 and carries its own blake3 (see manifest.rs)
//! <bundle>/items.bin              postcard ItemTable (row = dense item index)
//! <bundle>/users.bin              postcard UserTable (ids)
//! <bundle>/users/vectors.f32      raw little-endian f32 [n_users x dimension]
//!                                 (only with component "user_vectors")
//! <bundle>/shards/shard-0000/keys.u64       raw LE u64 item keys of this shard, ascending
//! <bundle>/shards/shard-0000/vectors.f32    raw LE f32 [n x dimension], same order as keys
//! <bundle>/shards/shard-0000/index.usearch  prebuilt usearch HNSW index, metric IP, f32,
//!                                           usearch key = item_key(external id)
//! <bundle>/sections/<name>.bin    named postcard blobs written by other modules (ranker,
//!                                 item-CF lists, popularity lists, user states, eval report)
//! ```
//!
//! Items belong to shard `ids::shard_of(ids::item_key(id), shard_count)`, so
//! keys and shard membership are stable across bundles and nodes. Shard
//! files are verified when the shard is loaded (`Bundle::load_shard`), all
//! other files when the bundle is opened. A bundle appears at its target
//! path only complete: it is built in a dot-prefixed temp directory next to
//! it and renamed into place after everything is fsynced.

pub mod error;
pub mod fsio;
pub mod import;
pub mod inspect;
pub mod items;
pub mod manifest;
pub mod npy;
pub mod reader;
pub mod reindex;
pub mod shard_index;
pub mod writer;

pub use error::{BundleError, Result};
pub use import::{import, ImportArgs, IndexArgs};
pub use inspect::{inspect, inspect_report, InspectReport};
pub use items::{ItemTable, UserTable};
pub use manifest::{
    FeatureSchemaRef, FileEntry, IndexParams, Manifest, ManifestFields, FORMAT_VERSION,
};
pub use reader::{default_search_threads, Bundle, LoadedShard, OpenCheck, ShardHit};
pub use reindex::{reindex, ReindexOptions};
pub use shard_index::threads_per_shard;
pub use writer::{BundleWriter, WriteOptions};
