//! Writing a bundle atomically.
//!
//! Owns: `BundleWriter` and `WriteOptions`: the temp directory next to the
//! target, the order of writes (every data file, then `manifest.json`), the
//! fsyncs, and the final rename into place. Must not touch: how any part is
//! encoded (items.rs, shard_index.rs, manifest.rs) or read back (reader.rs).
//!
//! Crash safety: nothing is ever written at `out` itself. The bundle is
//! assembled in `.<name>.tmp-<pid>-<nanos>` in the same parent directory
//! (so the final rename stays on one filesystem), every file and directory
//! is fsynced, and only then is the directory renamed to `out` and the
//! parent fsynced. A crash leaves either the old state or the complete new
//! bundle at `out`, plus at worst a dot-prefixed temp directory.

use super::error::{BundleError, Result};
use super::fsio::{fsync_dir, rename_no_replace, swap_into_place, write_synced};
use super::items::{check_finite, encode_f32s, encode_u64s, to_postcard, ItemTable, UserTable};
use super::manifest::{
    self, generator, section_file, shard_index_file, shard_keys_file, shard_vectors_file,
    validate_section_name, FileEntry, IndexParams, Manifest, ManifestFields, COMPONENT_ANN,
    COMPONENT_USERS, COMPONENT_USER_VECTORS, FEATURE_COMPONENTS, FORMAT_VERSION, ITEMS_FILE,
    MANIFEST_FILE, MAX_SHARDS, USERS_FILE, USER_VECTORS_FILE,
};
use super::shard_index::{build_index, index_to_bytes, partition, threads_per_shard, ShardPart};
use crate::matrix::Matrix;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// How to treat an existing output directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Replace an existing bundle at `out` (never a non-bundle directory).
    pub force: bool,
    /// Threads building the shard indexes (0 = one per core). With one
    /// thread per shard (1, or at least as many shards as threads) the same
    /// input gives byte-identical index files.
    pub index_threads: usize,
}

struct AnnState {
    dimension: usize,
    shard_count: u32,
    params: IndexParams,
    keys: Vec<u64>,
}

/// Builds one bundle in a temp directory; `finish` moves it into place.
/// Dropping a writer without `finish` removes the temp directory.
pub struct BundleWriter {
    out: PathBuf,
    tmp: PathBuf,
    aside: PathBuf,
    force: bool,
    index_threads: usize,
    files: Vec<FileEntry>,
    item_keys: Option<Vec<u64>>,
    users: Option<(usize, usize)>,
    ann: Option<AnnState>,
    sections: BTreeSet<String>,
    /// Set once the temp directory no longer holds our new bundle.
    done: bool,
}

impl std::fmt::Debug for BundleWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleWriter")
            .field("out", &self.out)
            .field("tmp", &self.tmp)
            .field("files", &self.files.len())
            .finish()
    }
}

/// An existing `out` may only be replaced if it is a bundle or an empty
/// directory: `--force` with a mistyped `--out` must not delete a home
/// directory.
fn check_replaceable(out: &Path) -> Result<()> {
    let meta =
        std::fs::symlink_metadata(out).map_err(|e| BundleError::io("read metadata of", out, e))?;
    if meta.file_type().is_symlink() {
        return Err(BundleError::RefuseReplace {
            dir: out.to_path_buf(),
            reason: "it is a symbolic link".into(),
        });
    }
    if !meta.is_dir() {
        return Err(BundleError::RefuseReplace {
            dir: out.to_path_buf(),
            reason: "it is a file, not a bundle directory".into(),
        });
    }
    if out.join(MANIFEST_FILE).is_file() {
        return Ok(());
    }
    let mut entries =
        std::fs::read_dir(out).map_err(|e| BundleError::io("list directory", out, e))?;
    if entries.next().is_some() {
        return Err(BundleError::RefuseReplace {
            dir: out.to_path_buf(),
            reason: "it is a non-empty directory without manifest.json, so not a funnel bundle"
                .into(),
        });
    }
    Ok(())
}

impl BundleWriter {
    /// Starts a bundle that `finish` will place at `out`. Fails early when
    /// `out` exists and `opts.force` is false (or `out` is not replaceable).
    pub fn create(out: &Path, opts: WriteOptions) -> Result<Self> {
        let name = out
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                BundleError::InvalidInput(format!(
                    "output path {} has no usable directory name; pass something like --out models/v1",
                    out.display()
                ))
            })?
            .to_owned();
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if out.symlink_metadata().is_ok() {
            if !opts.force {
                return Err(BundleError::Exists {
                    dir: out.to_path_buf(),
                });
            }
            check_replaceable(out)?;
        }
        std::fs::create_dir_all(&parent)
            .map_err(|e| BundleError::io("create directory", &parent, e))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let pid = std::process::id();
        let tmp = parent.join(format!(".{name}.tmp-{pid}-{nanos}"));
        let aside = parent.join(format!(".{name}.old-{pid}-{nanos}"));
        std::fs::create_dir(&tmp).map_err(|e| BundleError::io("create directory", &tmp, e))?;
        Ok(BundleWriter {
            out: out.to_path_buf(),
            tmp,
            aside,
            force: opts.force,
            index_threads: opts.index_threads,
            files: Vec::new(),
            item_keys: None,
            users: None,
            ann: None,
            sections: BTreeSet::new(),
            done: false,
        })
    }

    /// Where the bundle will appear after `finish`.
    pub fn out(&self) -> &Path {
        &self.out
    }

    fn write(&mut self, rel: &str, bytes: &[u8]) -> Result<()> {
        let entry = write_synced(&self.tmp, rel, bytes)?;
        self.files.push(entry);
        Ok(())
    }

    /// Writes `items.bin`. Required once per bundle.
    pub fn put_items(&mut self, items: &ItemTable) -> Result<()> {
        if self.item_keys.is_some() {
            return Err(BundleError::InvalidInput(
                "put_items was called twice; a bundle has one item table".into(),
            ));
        }
        items.validate()?;
        if let Some(ann) = &self.ann {
            check_same_items(&ann.keys, &items.keys)?;
        }
        self.write(ITEMS_FILE, &to_postcard(items)?)?;
        self.item_keys = Some(items.keys.clone());
        Ok(())
    }

    /// Writes `users.bin` and, when `vectors` has columns, `users/vectors.f32`
    /// (row i = user `users.ids[i]`).
    pub fn put_users(&mut self, users: &UserTable, vectors: &Matrix) -> Result<()> {
        if self.users.is_some() {
            return Err(BundleError::InvalidInput(
                "put_users was called twice; a bundle has one user table".into(),
            ));
        }
        users.validate()?;
        if vectors.rows() != users.len() {
            return Err(BundleError::InvalidInput(format!(
                "user vectors have {} rows but there are {} user ids; pass one row per user",
                vectors.rows(),
                users.len()
            )));
        }
        if vectors.cols() > 0 {
            if let Some(ann) = &self.ann {
                check_same_dimension(ann.dimension, vectors.cols())?;
            }
            check_finite(vectors, "user", |r| format!("user {:?}", users.ids[r]))?;
        }
        self.write(USERS_FILE, &to_postcard(users)?)?;
        if vectors.cols() > 0 {
            self.write(USER_VECTORS_FILE, &encode_f32s(vectors.as_slice()))?;
        }
        self.users = Some((users.len(), vectors.cols()));
        Ok(())
    }

    /// Partitions item vectors (row i = item `items.ids[i]`) into
    /// `shard_count` shards by `shard_of(item_key)` and writes each shard's
    /// keys, vectors and prebuilt index. Shards are built in parallel.
    pub fn put_item_vectors(
        &mut self,
        items: &ItemTable,
        vectors: &Matrix,
        shard_count: u32,
        params: IndexParams,
    ) -> Result<()> {
        if self.ann.is_some() {
            return Err(BundleError::InvalidInput(
                "put_item_vectors was called twice; a bundle has one set of item vectors".into(),
            ));
        }
        params.validate()?;
        if !(1..=MAX_SHARDS).contains(&shard_count) {
            return Err(BundleError::InvalidInput(format!(
                "shard count {shard_count} is out of range; use 1..={MAX_SHARDS}"
            )));
        }
        items.validate()?;
        if let Some(keys) = &self.item_keys {
            check_same_items(keys, &items.keys)?;
        }
        if vectors.rows() != items.len() {
            return Err(BundleError::InvalidInput(format!(
                "item vectors have {} rows but there are {} items; pass one row per item, in item-table order",
                vectors.rows(),
                items.len()
            )));
        }
        if vectors.cols() == 0 {
            return Err(BundleError::InvalidInput(
                "item vectors have dimension 0; an ANN index needs at least one column".into(),
            ));
        }
        if let Some((_, user_dim)) = self.users {
            if user_dim > 0 {
                check_same_dimension(vectors.cols(), user_dim)?;
            }
        }
        check_finite(vectors, "item", |r| format!("item {:?}", items.ids[r]))?;

        let parts = partition(&items.keys, shard_count);
        let tmp = self.tmp.clone();
        let per_shard = threads_per_shard(self.index_threads, shard_count);
        let written: Vec<Result<Vec<FileEntry>>> = parts
            .par_iter()
            .map(|part| write_shard(&tmp, part, vectors, &params, per_shard))
            .collect();
        let mut entries = Vec::new();
        for shard_entries in written {
            match shard_entries {
                Ok(e) => entries.extend(e),
                Err(e) => {
                    // Leave no half-written, unlisted shard files behind.
                    let _ = std::fs::remove_dir_all(self.tmp.join("shards"));
                    return Err(e);
                }
            }
        }
        self.files.extend(entries);
        self.ann = Some(AnnState {
            dimension: vectors.cols(),
            shard_count,
            params,
            keys: items.keys.clone(),
        });
        Ok(())
    }

    /// Writes `sections/<name>.bin`, a postcard blob another module reads
    /// back with `Bundle::section`.
    pub fn put_section<T: Serialize + ?Sized>(&mut self, name: &str, value: &T) -> Result<()> {
        validate_section_name(name)?;
        let bytes = to_postcard(value)?;
        self.put_section_bytes(name, &bytes)
    }

    /// Writes section `name` from bytes another bundle holds (already
    /// postcard, verified by `Bundle::section_bytes`).
    pub fn put_section_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        validate_section_name(name)?;
        if !self.sections.insert(name.to_owned()) {
            return Err(BundleError::InvalidInput(format!(
                "section {name:?} was put twice; each section name is used once per bundle"
            )));
        }
        self.write(&section_file(name), bytes)
    }

    /// Writes `manifest.json` last, fsyncs everything and renames the
    /// bundle into place. Returns the manifest as written.
    pub fn finish(mut self, fields: ManifestFields) -> Result<Manifest> {
        let manifest = self.build_manifest(fields)?;
        let bytes = manifest::encode(&manifest);
        write_synced(&self.tmp, MANIFEST_FILE, &bytes)?;
        self.sync_dirs()?;

        let parent = self
            .tmp
            .parent()
            .expect("the temp directory was created inside a parent")
            .to_path_buf();
        if self.force && self.out.symlink_metadata().is_ok() {
            check_replaceable(&self.out)?;
            let old = swap_into_place(&self.tmp, &self.out, &self.aside)?;
            self.done = true;
            fsync_dir(&parent)?;
            if let Err(e) = std::fs::remove_dir_all(&old) {
                tracing::warn!(
                    path = %old.display(),
                    error = %e,
                    "the new bundle is in place but the replaced one could not be removed; delete it by hand"
                );
            }
        } else {
            rename_no_replace(&self.tmp, &self.out)?;
            self.done = true;
            fsync_dir(&parent)?;
        }
        Ok(manifest)
    }

    fn build_manifest(&mut self, fields: ManifestFields) -> Result<Manifest> {
        let Some(item_keys) = &self.item_keys else {
            return Err(BundleError::InvalidInput(
                "finish was called before put_items; every bundle needs an item table".into(),
            ));
        };
        crate::ids::validate_id(&fields.model_version).map_err(|e| {
            BundleError::InvalidInput(format!(
                "model version {:?} is not usable: {e}; pass a short label such as --model-version v3",
                fields.model_version
            ))
        })?;

        let mut components: Vec<String> = Vec::new();
        if self.ann.is_some() {
            components.push(COMPONENT_ANN.to_owned());
        }
        match self.users {
            Some((_, dim)) if dim > 0 => components.push(COMPONENT_USER_VECTORS.to_owned()),
            Some(_) => components.push(COMPONENT_USERS.to_owned()),
            None => {}
        }
        for c in fields.components {
            validate_section_name(&c).map_err(|_| {
                BundleError::InvalidInput(format!(
                    "component name {c:?} is not allowed; use 1-64 characters from a-z, 0-9, '_', '-', '.'"
                ))
            })?;
            if [COMPONENT_ANN, COMPONENT_USER_VECTORS, COMPONENT_USERS].contains(&c.as_str())
                && !components.contains(&c)
            {
                return Err(BundleError::InvalidInput(format!(
                    "component {c:?} is declared but its data was never put; the writer records it by itself"
                )));
            }
            if !components.contains(&c) {
                components.push(c);
            }
        }
        if let Some(c) = components
            .iter()
            .find(|c| FEATURE_COMPONENTS.contains(&c.as_str()))
        {
            if fields.feature_schema.hash.is_empty() {
                return Err(BundleError::InvalidInput(format!(
                    "component {c:?} depends on features but the feature schema hash is empty; pass the schema the model was trained with"
                )));
            }
        }

        let dimension = match (&self.ann, self.users) {
            (Some(ann), _) => ann.dimension,
            (None, Some((_, dim))) => dim,
            (None, None) => 0,
        };
        let created_at_unix = fields.created_at_unix.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
        });
        let mut files = self.files.clone();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Manifest {
            format_version: FORMAT_VERSION,
            model_version: fields.model_version,
            created_at_unix,
            input_fingerprint: fields.input_fingerprint,
            feature_schema: fields.feature_schema,
            dimension: dimension as u32,
            shard_count: self.ann.as_ref().map_or(0, |a| a.shard_count),
            n_items: item_keys.len() as u64,
            n_users: self.users.map_or(0, |(n, _)| n as u64),
            index: self
                .ann
                .as_ref()
                .map_or_else(IndexParams::default, |a| a.params.clone()),
            components,
            metrics: fields.metrics,
            params: fields.params,
            files,
            generator: generator(),
        })
    }

    /// Fsyncs every directory of the bundle (deepest first) so that all the
    /// names exist on disk before the bundle becomes visible.
    fn sync_dirs(&self) -> Result<()> {
        let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
        for f in &self.files {
            let mut p = Path::new(&f.path).parent();
            while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
                dirs.insert(d.to_path_buf());
                p = d.parent();
            }
        }
        for d in dirs.iter().rev() {
            fsync_dir(&self.tmp.join(d))?;
        }
        fsync_dir(&self.tmp)
    }
}

impl Drop for BundleWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

fn check_same_items(a: &[u64], b: &[u64]) -> Result<()> {
    if a != b {
        return Err(BundleError::InvalidInput(
            "put_items and put_item_vectors were given different item tables; pass the same table to both".into(),
        ));
    }
    Ok(())
}

fn check_same_dimension(items: usize, users: usize) -> Result<()> {
    if items != users {
        return Err(BundleError::InvalidInput(format!(
            "item vectors have dimension {items} but user vectors have {users}; recall scores are dot products, so both must match"
        )));
    }
    Ok(())
}

/// Builds and writes one shard's three files; runs on a rayon worker.
fn write_shard(
    dir: &Path,
    part: &ShardPart,
    vectors: &Matrix,
    params: &IndexParams,
    threads: usize,
) -> Result<Vec<FileEntry>> {
    let mut shard_vectors = Vec::with_capacity(part.rows.len() * vectors.cols());
    for &r in &part.rows {
        shard_vectors.extend_from_slice(vectors.row(r));
    }
    let index = build_index(part, vectors, params, threads)?;
    let index_bytes = index_to_bytes(&index, &format!("shard {}", part.shard))?;
    Ok(vec![
        write_synced(dir, &shard_keys_file(part.shard), &encode_u64s(&part.keys))?,
        write_synced(
            dir,
            &shard_vectors_file(part.shard),
            &encode_f32s(&shard_vectors),
        )?,
        write_synced(dir, &shard_index_file(part.shard), &index_bytes)?,
    ])
}
