//! The one error type of the bundle module.
//!
//! Owns: `BundleError` and its messages. Must not touch: files (it only
//! describes what went wrong with them).
//!
//! Every variant names the file or directory it is about and the message
//! ends with what to do, because these errors reach operators through
//! `funnel train`, `funnel admin publish` and serving-node logs.

use std::path::PathBuf;

/// Result alias used throughout `crate::bundle`.
pub type Result<T, E = BundleError> = std::result::Result<T, E>;

/// Why a bundle could not be written, opened, verified or imported.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The directory has no readable manifest: not a bundle at all.
    #[error("{} is not a funnel bundle ({reason}); pass the directory written by `funnel train` or `funnel import`", dir.display())]
    NotABundle { dir: PathBuf, reason: String },

    /// The bundle's format is newer or older than this build understands.
    #[error("{} has bundle format version {found}, but this funnel {this_funnel} reads format versions {min_supported}..={max_supported}; {advice}", dir.display())]
    Version {
        dir: PathBuf,
        found: u32,
        min_supported: u32,
        max_supported: u32,
        this_funnel: String,
        advice: String,
    },

    /// The bundle was trained against different feature definitions.
    #[error("bundle {} was trained with feature schema {found}, this funnel computes {expected}; retrain the bundle or upgrade funnel so both agree", dir.display())]
    Schema {
        dir: PathBuf,
        expected: String,
        found: String,
    },

    /// A file the manifest lists (or the format requires) is absent.
    #[error("bundle file {} is missing; the bundle is incomplete: copy it again or re-create it", file.display())]
    MissingFile { file: PathBuf },

    /// A file's content does not hash to what the manifest recorded.
    #[error("bundle file {} is corrupted (blake3 {actual}, manifest says {expected}); copy the bundle again or re-create it", file.display())]
    Checksum {
        file: PathBuf,
        expected: String,
        actual: String,
    },

    /// A file is shorter than the manifest recorded.
    #[error("bundle file {} is truncated ({actual} bytes, manifest says {expected}); copy the bundle again or re-create it", file.display())]
    Truncated {
        file: PathBuf,
        expected: u64,
        actual: u64,
    },

    /// A file is longer than the manifest recorded (appended to or replaced).
    #[error("bundle file {} has {actual} bytes but the manifest says {expected}; it was modified after the bundle was written: copy the bundle again or re-create it", file.display())]
    Oversized {
        file: PathBuf,
        expected: u64,
        actual: u64,
    },

    /// A file passed its checksum (or has none) but its content is not what
    /// the format requires.
    #[error("bundle file {} cannot be decoded: {reason}; the bundle was not written by a compatible funnel: re-create it", file.display())]
    Decode { file: PathBuf, reason: String },

    /// The output directory exists and `force` was not given.
    #[error("bundle directory {} already exists; choose another --out or pass --force", dir.display())]
    Exists { dir: PathBuf },

    /// `force` was given but the existing path does not look like a bundle,
    /// so replacing it could destroy unrelated data.
    #[error("refusing to replace {}: {reason}; choose another --out", dir.display())]
    RefuseReplace { dir: PathBuf, reason: String },

    /// A shard number outside `0..shard_count`.
    #[error("shard {shard} does not exist: this bundle has {shard_count} shard(s) (0..{shard_count}); check the node's shard assignment")]
    ShardOutOfRange { shard: u32, shard_count: u32 },

    /// Two different item ids hash to the same 64-bit key.
    #[error("item ids {first:?} and {second:?} have the same 64-bit key {key:#018x}; rename one of them (keys are a hash of the id)")]
    KeyCollision {
        first: String,
        second: String,
        key: u64,
    },

    /// Values handed to the writer (or import arguments) are unusable.
    #[error("{0}")]
    InvalidInput(String),

    /// An input file given to `import` is unusable.
    #[error("cannot import {}: {reason}", file.display())]
    Import { file: PathBuf, reason: String },

    /// The ANN library refused an operation.
    #[error("ANN index for {context} failed: {reason}; this is a bug or an out-of-memory condition: report it with the bundle's manifest")]
    Index { context: String, reason: String },

    /// The operating system refused a file operation.
    #[error("could not {action} {}: {source}; check the path, permissions and free disk space", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl BundleError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        BundleError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn decode(file: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        BundleError::Decode {
            file: file.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn import(file: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        BundleError::Import {
            file: file.into(),
            reason: reason.into(),
        }
    }

    /// The file this error is about, when there is one: lets callers (and
    /// tests) check that corruption is blamed on the right file.
    pub fn file(&self) -> Option<&std::path::Path> {
        match self {
            BundleError::MissingFile { file }
            | BundleError::Checksum { file, .. }
            | BundleError::Truncated { file, .. }
            | BundleError::Oversized { file, .. }
            | BundleError::Decode { file, .. }
            | BundleError::Import { file, .. } => Some(file),
            BundleError::Io { path, .. } => Some(path),
            _ => None,
        }
    }
}
