//! Opening a bundle and loading its parts, verified.
//!
//! Owns: `Bundle`, `OpenCheck`, `LoadedShard`: the rules for what is
//! verified when (manifest, items, users and sections at `open`; a shard's
//! files only when that shard is loaded, so a node reads only what it
//! hosts) and the checked decoding of every part. Must not touch: writing
//! (writer.rs) or serving logic beyond a plain search on one shard.
//!
//! Nothing read from disk is trusted: each accessor re-reads the file,
//! checks its size and blake3 against the manifest and decodes exactly the
//! verified bytes, so a file swapped after `open` is still caught. Files
//! inside the bundle that the manifest does not list are ignored.

use super::error::{BundleError, Result};
use super::fsio::{read_verified, verify_streaming};
use super::items::{decode_matrix, decode_u64s, from_postcard, ItemTable, UserTable};
use super::manifest::{
    self, section_file, shard_index_file, shard_keys_file, shard_vectors_file,
    validate_section_name, FileEntry, Manifest, COMPONENT_USER_VECTORS, ITEMS_FILE, MANIFEST_FILE,
    USERS_FILE, USER_VECTORS_FILE,
};
use super::shard_index::index_from_bytes;
use crate::ids::shard_of;
use crate::matrix::Matrix;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// What the opener expects of the bundle beyond a readable format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenCheck<'a> {
    /// The feature schema hash this funnel computes; `None` skips the check
    /// (tools that only inspect). A bundle with an empty schema hash holds
    /// no feature-dependent component and passes any expected hash.
    pub feature_schema_hash: Option<&'a str>,
}

/// An opened, verified bundle directory.
#[derive(Debug, Clone)]
pub struct Bundle {
    dir: PathBuf,
    manifest: Manifest,
}

/// One shard loaded into memory: keys ascending, `vectors` row i belongs to
/// `keys[i]`, and the ANN index holds the same keys.
///
/// usearch serves each concurrent search from one of a fixed number of
/// per-thread slots and *fails* a search when all are busy, so a loaded
/// shard reserves `default_search_threads()` slots; a node that runs more
/// concurrent searches must call `reserve_search_threads` first.
pub struct LoadedShard {
    pub shard: u32,
    pub keys: Vec<u64>,
    pub vectors: Matrix,
    pub index: usearch::Index,
    search_threads: usize,
}

/// Search slots reserved per loaded shard: four per core, at least 16, so
/// that a node's worker and blocking threads rarely exceed it.
pub fn default_search_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores * 4).max(16)
}

/// One ANN result: an item key and its inner product with the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShardHit {
    pub key: u64,
    pub score: f32,
}

impl std::fmt::Debug for LoadedShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedShard")
            .field("shard", &self.shard)
            .field("items", &self.keys.len())
            .field("dimension", &self.vectors.cols())
            .finish()
    }
}

impl LoadedShard {
    /// Builds a shard in memory from rows of `vectors` keyed by `keys`
    /// (tests and tools; serving loads shards from bundles), its index by
    /// `threads` threads (see `shard_index::build_index`).
    pub fn build(
        shard: u32,
        keys: Vec<u64>,
        vectors: Matrix,
        params: &manifest::IndexParams,
        threads: usize,
    ) -> Result<LoadedShard> {
        let part = super::shard_index::ShardPart {
            shard,
            rows: (0..keys.len()).collect(),
            keys: keys.clone(),
        };
        let index = super::shard_index::build_index(&part, &vectors, params, threads)?;
        LoadedShard::ready(shard, keys, vectors, index)
    }

    /// A shard with its index, ready for the default number of concurrent
    /// searches.
    fn ready(
        shard: u32,
        keys: Vec<u64>,
        vectors: Matrix,
        index: usearch::Index,
    ) -> Result<LoadedShard> {
        let mut loaded = LoadedShard {
            shard,
            keys,
            vectors,
            index,
            search_threads: 0,
        };
        loaded.reserve_search_threads(default_search_threads())?;
        Ok(loaded)
    }

    /// Makes room for `threads` concurrent searches (never shrinks).
    pub fn reserve_search_threads(&mut self, threads: usize) -> Result<()> {
        if threads <= self.search_threads {
            return Ok(());
        }
        self.index
            .reserve_capacity_and_threads(self.keys.len(), threads)
            .map_err(|e| BundleError::Index {
                context: format!("reserving {threads} search threads in shard {}", self.shard),
                reason: e.to_string(),
            })?;
        self.search_threads = threads;
        Ok(())
    }

    /// How many searches can run on this shard at the same time.
    pub fn search_threads(&self) -> usize {
        self.search_threads
    }

    /// Approximate top-`k` items by inner product with `query`, best first.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<ShardHit>> {
        self.check_query(query)?;
        let m = self
            .index
            .search(query, k)
            .map_err(|e| BundleError::Index {
                context: format!("search in shard {}", self.shard),
                reason: e.to_string(),
            })?;
        Ok(hits(&m.keys, &m.distances))
    }

    /// Like `search`, keeping only keys for which `keep(key)` is true (for
    /// example, items the user has not seen).
    pub fn search_filtered<F: Fn(u64) -> bool>(
        &self,
        query: &[f32],
        k: usize,
        keep: F,
    ) -> Result<Vec<ShardHit>> {
        self.check_query(query)?;
        let m = self
            .index
            .filtered_search(query, k, keep)
            .map_err(|e| self.search_error("filtered search", e))?;
        Ok(hits(&m.keys, &m.distances))
    }

    fn search_error(&self, what: &str, e: impl std::fmt::Display) -> BundleError {
        let reason = e.to_string();
        // usearch's message for "no free thread slot" talks about capacity.
        let reason = if reason.contains("Reserve capacity") {
            format!(
                "more than {} searches ran at once on this shard; call reserve_search_threads with the node's number of concurrent searchers ({reason})",
                self.search_threads
            )
        } else {
            reason
        };
        BundleError::Index {
            context: format!("{what} in shard {}", self.shard),
            reason,
        }
    }

    fn check_query(&self, query: &[f32]) -> Result<()> {
        if query.len() != self.vectors.cols() {
            return Err(BundleError::InvalidInput(format!(
                "query has {} values but shard {} holds {}-dimensional vectors",
                query.len(),
                self.shard,
                self.vectors.cols()
            )));
        }
        if query.iter().any(|v| !v.is_finite()) {
            return Err(BundleError::InvalidInput(
                "query vector contains NaN or infinity".into(),
            ));
        }
        Ok(())
    }
}

/// usearch reports inner-product "distance" as `1 - dot`; callers want the dot.
fn hits(keys: &[u64], distances: &[f32]) -> Vec<ShardHit> {
    keys.iter()
        .zip(distances)
        .map(|(&key, &d)| ShardHit {
            key,
            score: 1.0 - d,
        })
        .collect()
}

impl Bundle {
    /// Opens `dir`: reads and checks the manifest (format version, schema
    /// hash if `expected` gives one) and verifies size and blake3 of every
    /// listed file outside `shards/`.
    pub fn open(dir: &Path, expected: &OpenCheck<'_>) -> Result<Bundle> {
        let bundle = Bundle::open_unverified(dir)?;
        if let Some(want) = expected.feature_schema_hash {
            let have = &bundle.manifest.feature_schema.hash;
            if !have.is_empty() && have != want {
                return Err(BundleError::Schema {
                    dir: dir.to_path_buf(),
                    expected: want.to_owned(),
                    found: have.clone(),
                });
            }
        }
        for entry in bundle.non_shard_files() {
            verify_streaming(&bundle.dir, entry)?;
        }
        Ok(bundle)
    }

    /// Reads and checks only the manifest (used by `inspect`, which then
    /// verifies file by file to report everything it can).
    pub(crate) fn open_unverified(dir: &Path) -> Result<Bundle> {
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(BundleError::NotABundle {
                    dir: dir.to_path_buf(),
                    reason: "it is a file, not a directory".into(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BundleError::NotABundle {
                    dir: dir.to_path_buf(),
                    reason: "the directory does not exist".into(),
                })
            }
            Err(e) => return Err(BundleError::io("read metadata of", dir, e)),
        }
        let manifest_path = dir.join(MANIFEST_FILE);
        let bytes = match std::fs::read(&manifest_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BundleError::NotABundle {
                    dir: dir.to_path_buf(),
                    reason: "no manifest.json".into(),
                })
            }
            Err(e) => return Err(BundleError::io("read", &manifest_path, e)),
        };
        let manifest = manifest::decode(dir, &bytes)?;
        Ok(Bundle {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    pub(crate) fn non_shard_files(&self) -> impl Iterator<Item = &FileEntry> {
        self.manifest
            .files
            .iter()
            .filter(|f| !f.path.starts_with("shards/"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn entry(&self, rel: &str) -> Result<&FileEntry> {
        self.manifest.file(rel).ok_or_else(|| BundleError::Decode {
            file: self.dir.join(MANIFEST_FILE),
            reason: format!("{rel} is not listed"),
        })
    }

    fn read(&self, rel: &str) -> Result<Vec<u8>> {
        read_verified(&self.dir, self.entry(rel)?)
    }

    /// The item table, checked against the manifest and `ItemTable::validate`.
    pub fn items(&self) -> Result<ItemTable> {
        let file = self.dir.join(ITEMS_FILE);
        let items: ItemTable = from_postcard(&file, &self.read(ITEMS_FILE)?)?;
        if items.len() as u64 != self.manifest.n_items {
            return Err(BundleError::decode(
                &file,
                format!(
                    "holds {} items, the manifest says {}",
                    items.len(),
                    self.manifest.n_items
                ),
            ));
        }
        items
            .validate()
            .map_err(|e| BundleError::decode(&file, e.to_string()))?;
        Ok(items)
    }

    /// The user table and user vectors (row i = `ids[i]`). Without user
    /// vectors the matrix has zero columns; without users both are empty.
    pub fn users(&self) -> Result<(UserTable, Matrix)> {
        if self.manifest.file(USERS_FILE).is_none() {
            return Ok((UserTable::default(), Matrix::zeros(0, 0)));
        }
        let file = self.dir.join(USERS_FILE);
        let users: UserTable = from_postcard(&file, &self.read(USERS_FILE)?)?;
        if users.len() as u64 != self.manifest.n_users {
            return Err(BundleError::decode(
                &file,
                format!(
                    "holds {} users, the manifest says {}",
                    users.len(),
                    self.manifest.n_users
                ),
            ));
        }
        users
            .validate()
            .map_err(|e| BundleError::decode(&file, e.to_string()))?;
        let vectors = if self.manifest.has_component(COMPONENT_USER_VECTORS) {
            decode_matrix(
                &self.dir.join(USER_VECTORS_FILE),
                &self.read(USER_VECTORS_FILE)?,
                users.len(),
                self.manifest.dimension as usize,
            )?
        } else {
            Matrix::zeros(users.len(), 0)
        };
        Ok((users, vectors))
    }

    /// Names of the sections this bundle holds.
    pub fn section_names(&self) -> Vec<String> {
        self.manifest
            .files
            .iter()
            .filter_map(|f| {
                f.path
                    .strip_prefix("sections/")
                    .and_then(|n| n.strip_suffix(".bin"))
                    .map(str::to_owned)
            })
            .collect()
    }

    /// The verified bytes of section `name`, undecoded (to copy it into
    /// another bundle); `None` when the bundle has no such section.
    pub fn section_bytes(&self, name: &str) -> Result<Option<Vec<u8>>> {
        validate_section_name(name)?;
        let rel = section_file(name);
        if self.manifest.file(&rel).is_none() {
            return Ok(None);
        }
        self.read(&rel).map(Some)
    }

    /// Decodes section `name`; `None` when the bundle has no such section.
    pub fn section<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        validate_section_name(name)?;
        let rel = section_file(name);
        if self.manifest.file(&rel).is_none() {
            return Ok(None);
        }
        let bytes = self.read(&rel)?;
        from_postcard(&self.dir.join(&rel), &bytes).map(Some)
    }

    /// Decodes section `name`, a sequence, keeping the elements whose index
    /// `keep` selects (`seq_from_postcard_filtered`): the sequence's length
    /// and the kept (index, element) pairs; `None` without the section.
    pub fn section_filtered<T: DeserializeOwned>(
        &self,
        name: &str,
        keep: &mut dyn FnMut(usize) -> bool,
    ) -> Result<Option<super::items::KeptElements<T>>> {
        validate_section_name(name)?;
        let rel = section_file(name);
        if self.manifest.file(&rel).is_none() {
            return Ok(None);
        }
        let bytes = self.read(&rel)?;
        super::items::seq_from_postcard_filtered(&self.dir.join(&rel), &bytes, keep).map(Some)
    }

    /// Verifies (size + blake3) and loads shard `shard`: keys, vectors and
    /// the prebuilt index, cross-checked against each other.
    pub fn load_shard(&self, shard: u32) -> Result<LoadedShard> {
        let m = &self.manifest;
        if shard >= m.shard_count {
            return Err(BundleError::ShardOutOfRange {
                shard,
                shard_count: m.shard_count,
            });
        }
        let keys_rel = shard_keys_file(shard);
        let keys_file = self.dir.join(&keys_rel);
        let keys = decode_u64s(&keys_file, &self.read(&keys_rel)?)?;
        if !keys.windows(2).all(|w| w[0] < w[1]) {
            return Err(BundleError::decode(
                &keys_file,
                "keys are not strictly ascending",
            ));
        }
        if let Some(k) = keys.iter().find(|&&k| shard_of(k, m.shard_count) != shard) {
            return Err(BundleError::decode(
                &keys_file,
                format!("key {k:#018x} belongs to another shard"),
            ));
        }
        if keys.len() as u64 > m.n_items {
            return Err(BundleError::decode(
                &keys_file,
                format!(
                    "{} keys, but the bundle has {} items",
                    keys.len(),
                    m.n_items
                ),
            ));
        }
        let dim = m.dimension as usize;
        let vectors_rel = shard_vectors_file(shard);
        let vectors = decode_matrix(
            &self.dir.join(&vectors_rel),
            &self.read(&vectors_rel)?,
            keys.len(),
            dim,
        )?;
        let index_rel = shard_index_file(shard);
        let index = index_from_bytes(
            &self.dir.join(&index_rel),
            &self.read(&index_rel)?,
            dim,
            &keys,
            &m.index,
        )?;
        LoadedShard::ready(shard, keys, vectors, index)
    }
}
