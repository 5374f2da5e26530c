//! Getting a staged bundle's files onto this node: use the publisher's path
//! when it is readable here and passes the manifest checksums (a shared
//! filesystem), otherwise copy the manifest and the files this node needs
//! (its hosted shards plus the shared, non-shard files) from a peer that
//! has them over `BundleFiles.FetchBundleFile`, into
//! `<data_dir>/bundles/<version>/`, each checked against the manifest and
//! fsynced before it is renamed into place. A file whose copy was cut off
//! resumes from the bytes that arrived (`<file>.part`).
//!
//! Copies of versions that are no longer staged, active or retired are
//! deleted (`remove_stale_copies`, run by the rollout loop).
//!
//! Owns: the local copy's location, the rules for bundle-relative paths
//! (shared with the serving side, `api::bundle_files`) and the fetch
//! client. Must not touch: loading or serving a version (`rollout`).

use crate::bundle::fsio::{fsync_dir, verify_streaming};
use crate::bundle::manifest::{self, shard_dir, MANIFEST_FILE};
use crate::bundle::{Bundle, BundleError, FileEntry, Manifest, OpenCheck};
use crate::cluster::ModelRef;
use crate::config::{FetchBundles, NodeConfig};
use crate::control::{ChannelError, ClusterLink};
use crate::proto::data::bundle_files_client::BundleFilesClient;
use crate::proto::data::FetchBundleFileRequest;
use crate::service::types::ServiceError;
use crate::telemetry::metrics::metrics;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Largest manifest accepted from a peer.
const MAX_MANIFEST_BYTES: usize = 16 << 20;

/// A peer that sends nothing for this long is given up on.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a path named by a request or a manifest is not a bundle-relative path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelPathError {
    #[error("the file path is empty")]
    Empty,
    #[error("the file path is longer than 1024 bytes")]
    TooLong,
    #[error("{0:?} is not a bundle-relative path (absolute, or with '\\\\' or ':')")]
    NotRelative(String),
    #[error("{0:?} contains a control character")]
    ControlCharacter(String),
    #[error("{0:?} has an empty, '.' or '..' segment; bundle paths go only downwards")]
    BadSegment(String),
}

/// Why copying a bundle from one peer failed. The caller tries the next
/// peer; the cases say whether the peer, its data or this node's disk is
/// to blame.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No channel to the peer could be made.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The peer is unreachable, refused the request or broke the stream.
    #[error("{rel}: {}: {}", status.code(), status.message())]
    Peer {
        rel: String,
        #[source]
        status: tonic::Status,
    },
    #[error("{rel}: the peer sent nothing for {secs} s")]
    Silent { rel: String, secs: u64 },
    #[error("{rel}: chunk at offset {got} where {want} was expected")]
    OutOfOrder { rel: String, got: u64, want: u64 },
    #[error("the manifest is over {MAX_MANIFEST_BYTES} bytes")]
    ManifestTooLarge,
    #[error("the peer sent the manifest of version {got}, not {want}")]
    WrongVersion { got: String, want: String },
    /// A local copy holds another version than the one asked for.
    #[error("{} holds version {found}, not {want}", dir.display())]
    OtherVersionHere {
        dir: PathBuf,
        found: String,
        want: String,
    },
    /// The manifest names a file outside the bundle directory.
    #[error("the manifest lists {0}")]
    UnsafePath(#[source] RelPathError),
    /// The peer's copy of a file has another size than the manifest says.
    #[error("{path} is {total} bytes at the peer, the manifest says {want}")]
    SizeAtPeer { path: String, total: u64, want: u64 },
    /// What arrived does not match the manifest's size and checksum.
    #[error(
        "{path} arrived with {bytes} bytes and blake3 {blake3}; the manifest says {want_bytes} bytes, {want_blake3}"
    )]
    Checksum {
        path: String,
        bytes: u64,
        blake3: String,
        want_bytes: u64,
        want_blake3: String,
    },
    /// A bundle rule or file check failed (a bad manifest, a damaged local
    /// file, a directory that cannot be fsynced).
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// This node's disk refused: `action` names the step.
    #[error("{action} {}: {source}", path.display())]
    Disk {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A blocking disk task did not finish (the runtime is shutting down).
    #[error("{what}: {source}")]
    Task {
        what: String,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl FetchError {
    fn disk(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FetchError {
        let path = path.to_path_buf();
        move |source| FetchError::Disk {
            action,
            path,
            source,
        }
    }

    fn task(what: impl Into<String>) -> impl FnOnce(tokio::task::JoinError) -> FetchError {
        let what = what.into();
        move |source| FetchError::Task { what, source }
    }
}

/// Checks that `rel` is a plain bundle-relative path: `/`-separated
/// segments, none empty, `.` or `..`, no backslash, not absolute, no
/// control characters. Both the serving side (a request naming a file) and
/// the fetching side (a manifest listing files) use it, so a peer can
/// neither read nor write outside a bundle directory.
pub fn check_rel_path(rel: &str) -> Result<(), RelPathError> {
    if rel.is_empty() {
        return Err(RelPathError::Empty);
    }
    if rel.len() > 1024 {
        return Err(RelPathError::TooLong);
    }
    if rel.starts_with('/') || rel.contains('\\') || rel.contains(':') {
        return Err(RelPathError::NotRelative(rel.to_string()));
    }
    if rel.chars().any(|c| c.is_control()) {
        return Err(RelPathError::ControlCharacter(rel.to_string()));
    }
    if rel
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(RelPathError::BadSegment(rel.to_string()));
    }
    Ok(())
}

/// The directory name of a version's copy: the version itself when it is
/// a plain name, else a hash of it (versions may hold any printable text).
pub fn version_dir_name(version: &str) -> String {
    let plain = !version.is_empty()
        && version.len() <= 128
        && version != "."
        && version != ".."
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if plain {
        version.to_string()
    } else {
        format!("v-{}", &blake3::hash(version.as_bytes()).to_hex()[..32])
    }
}

/// Where this node keeps a fetched copy of `version`.
pub fn local_dir(data_dir: &Path, version: &str) -> PathBuf {
    data_dir.join("bundles").join(version_dir_name(version))
}

/// A copy of `version` fetched earlier, if its manifest is there.
pub fn fetched_copy(data_dir: &Path, version: &str) -> Option<PathBuf> {
    let dir = local_dir(data_dir, version);
    dir.join(MANIFEST_FILE).is_file().then_some(dir)
}

/// The directories under `<data_dir>/bundles/` (by name) that hold none
/// of the `keep` versions: copies a sweep may delete.
pub fn stale_copies(names: &[String], keep: &[&str]) -> Vec<String> {
    let kept: Vec<String> = keep.iter().map(|v| version_dir_name(v)).collect();
    names
        .iter()
        .filter(|n| !kept.contains(n))
        .cloned()
        .collect()
}

/// Deletes the fetched copies of every version but `keep` (see
/// `stale_copies`); returns the directories removed. A copy that cannot
/// be removed is logged and left for the next sweep.
pub fn remove_stale_copies(data_dir: &Path, keep: &[&str]) -> Vec<PathBuf> {
    let root = data_dir.join("bundles");
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Vec::new();
    };
    let names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    let mut removed = Vec::new();
    for name in stale_copies(&names, keep) {
        let dir = root.join(&name);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => removed.push(dir),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove an old bundle copy")
            }
        }
    }
    if !removed.is_empty() {
        if let Err(e) = fsync_dir(&root) {
            tracing::warn!(dir = %root.display(), error = %e, "fsync after removing old bundle copies");
        }
    }
    removed
}

/// The files a node hosting `hosted` needs: everything outside `shards/`
/// and its own shards' files.
pub fn needed_files<'a>(manifest: &'a Manifest, hosted: &[u32]) -> Vec<&'a FileEntry> {
    let mine: Vec<String> = hosted
        .iter()
        .map(|&s| format!("{}/", shard_dir(s)))
        .collect();
    manifest
        .files
        .iter()
        .filter(|f| !f.path.starts_with("shards/") || mine.iter().any(|d| f.path.starts_with(d)))
        .collect()
}

/// Opens the bundle in `dir` (manifest, checksums of the non-shard files)
/// for a publish; a path that is not a readable bundle is the caller's
/// mistake.
pub async fn read_manifest(dir: PathBuf) -> Result<Manifest, ServiceError> {
    tokio::task::spawn_blocking(move || {
        let schema = crate::features::FeatureSchema::current();
        Bundle::open(
            &dir,
            &OpenCheck {
                feature_schema_hash: Some(&schema.hash),
            },
        )
        .map(|b| b.manifest().clone())
        .map_err(|e| {
            ServiceError::InvalidArgument(format!(
                "{} is not a usable bundle on this node: {e}; give the path of a bundle as this node sees it",
                dir.display()
            ))
        })
    })
    .await
    .map_err(|e| ServiceError::internal_from("bundle check task failed", e))?
}

/// Checks that `dir` holds `version` with every file a node hosting
/// `hosted` needs, intact.
fn verify_local(dir: &Path, version: &str, hosted: &[u32]) -> Result<(), FetchError> {
    let bundle = Bundle::open(dir, &OpenCheck::default())?;
    let m = bundle.manifest();
    if m.model_version != version {
        return Err(FetchError::OtherVersionHere {
            dir: dir.to_path_buf(),
            found: m.model_version.clone(),
            want: version.to_string(),
        });
    }
    for f in needed_files(m, hosted) {
        verify_streaming(dir, f)?;
    }
    Ok(())
}

/// A local directory holding `m`'s files for this node, fetched from a
/// peer when needed (see the module doc and `cluster.fetch_bundles`).
pub async fn ensure_local(
    link: &ClusterLink,
    config: &NodeConfig,
    m: &ModelRef,
    hosted: &[u32],
) -> Result<PathBuf, ServiceError> {
    let mode = config
        .cluster
        .as_ref()
        .map_or(FetchBundles::IfMissing, |c| c.fetch_bundles);
    let published = PathBuf::from(&m.bundle_path);
    let use_published = mode == FetchBundles::IfMissing || m.source_node == link.id();
    let local = local_dir(&config.node.data_dir, &m.version);
    let (version, hosted_v) = (m.version.clone(), hosted.to_vec());
    let (p, l) = (published.clone(), local.clone());
    let found = tokio::task::spawn_blocking(move || {
        if use_published && verify_local(&p, &version, &hosted_v).is_ok() {
            return Some(p);
        }
        verify_local(&l, &version, &hosted_v).is_ok().then_some(l)
    })
    .await
    .map_err(|e| ServiceError::internal_from("bundle check task failed", e))?;
    if let Some(dir) = found {
        return Ok(dir);
    }
    // the source first, then any node that reported the version loaded
    let peers: Vec<(u64, String)> = {
        let st = link.raft.state();
        let st = st.read();
        let mut ids = vec![m.source_node];
        ids.extend(
            st.models
                .loaded
                .iter()
                .filter(|(n, v)| **v == m.version && **n != m.source_node)
                .map(|(n, _)| *n),
        );
        ids.into_iter()
            .filter(|&n| n != link.id())
            .filter_map(|n| st.nodes.get(&n).map(|i| (n, i.internal.clone())))
            .collect()
    };
    let mut errors = Vec::new();
    for (id, addr) in peers {
        let ch = match link.channel(id, &addr) {
            Ok(ch) => ch,
            Err(e) => {
                errors.push(format!("node {id}: {e}"));
                continue;
            }
        };
        let client = BundleFilesClient::new(ch)
            .max_decoding_message_size(link.max_message_bytes())
            .max_encoding_message_size(link.max_message_bytes());
        match fetch_bundle(client, &m.version, &local, hosted).await {
            Ok(()) => {
                tracing::info!(version = %m.version, from = id, dir = %local.display(), "bundle fetched");
                return Ok(local);
            }
            Err(e) => {
                tracing::warn!(version = %m.version, from = id, error = %e, "fetching the bundle failed");
                errors.push(format!("node {id}: {e}"));
            }
        }
    }
    Err(ServiceError::unavailable(format!(
        "version {} is not readable at {} here and no peer could send it ({}); check the source node",
        m.version,
        published.display(),
        if errors.is_empty() {
            "no peer has it".to_string()
        } else {
            errors.join("; ")
        }
    )))
}

/// Copies the manifest and this node's files of `version` from a peer
/// into `dir`, skipping files already there intact. Disk work runs off the
/// async thread (it is the node's actor system's).
async fn fetch_bundle(
    mut client: BundleFilesClient<crate::cluster::PeerChannel>,
    version: &str,
    dir: &Path,
    hosted: &[u32],
) -> Result<(), FetchError> {
    let mut bytes = Vec::new();
    let mut file = FileStream::open(&mut client, version, MANIFEST_FILE, 0).await?;
    while let Some((chunk, _)) = file.next().await? {
        if bytes.len() + chunk.len() > MAX_MANIFEST_BYTES {
            return Err(FetchError::ManifestTooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    let manifest = manifest::decode(dir, &bytes)?;
    if manifest.model_version != version {
        return Err(FetchError::WrongVersion {
            got: manifest.model_version,
            want: version.to_string(),
        });
    }
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(FetchError::disk("cannot create", dir))?;
    for entry in needed_files(&manifest, hosted) {
        check_rel_path(&entry.path).map_err(FetchError::UnsafePath)?;
        let (d, e) = (dir.to_path_buf(), entry.clone());
        let intact = tokio::task::spawn_blocking(move || verify_streaming(&d, &e).is_ok())
            .await
            .unwrap_or(false);
        if !intact {
            fetch_checked(&mut client, version, dir, entry).await?;
        }
    }
    // the manifest last: its presence marks a copy worth checking
    let (d, b) = (dir.to_path_buf(), bytes);
    tokio::task::spawn_blocking(move || write_synced_atomic(&d, MANIFEST_FILE, &b))
        .await
        .map_err(FetchError::task("writing the manifest"))?
}

/// Copies one file into `<file>.part` and renames it into place only when
/// size and blake3 match the manifest. A `.part` left by an interrupted
/// earlier attempt is resumed: its bytes are hashed and only the rest is
/// asked for, from whichever peer this attempt uses (a version's files are
/// the same on every node; the checksum decides). A resumed file that does
/// not check out is fetched once more from the start. When the stream
/// breaks, what arrived stays in `.part` for the next attempt.
async fn fetch_checked(
    client: &mut BundleFilesClient<crate::cluster::PeerChannel>,
    version: &str,
    dir: &Path,
    entry: &FileEntry,
) -> Result<(), FetchError> {
    let path = dir.join(&entry.path);
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(FetchError::disk("cannot create", parent))?;
    }
    let part = part_path(&path);
    let mut check = fill_part(client, version, entry, &part, true).await?;
    if let PartCheck::Mismatch { reused, reason } = &check {
        if *reused > 0 {
            tracing::warn!(file = %entry.path, reused, %reason, "a resumed bundle file did not check out; fetching it again from the start");
            check = fill_part(client, version, entry, &part, false).await?;
        }
    }
    if let PartCheck::Mismatch { reason, .. } = check {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(reason);
    }
    tokio::fs::rename(&part, &path)
        .await
        .map_err(FetchError::disk("rename to", &path))?;
    let parent = path.parent().unwrap_or(dir).to_path_buf();
    let what = format!("fsync {}", parent.display());
    tokio::task::spawn_blocking(move || fsync_dir(&parent))
        .await
        .map_err(FetchError::task(what))??;
    Ok(())
}

/// What a filled `.part` file holds against its manifest entry.
enum PartCheck {
    /// The whole file, size and blake3 as the manifest says (fsynced).
    Intact,
    /// Something else; `reused` bytes of it came from an earlier attempt.
    Mismatch { reused: u64, reason: FetchError },
}

/// Brings `part` to `entry`'s full length, keeping the bytes already in it
/// when `resume` and asking the peer for the rest, then checks it. An error
/// (the peer, the stream, the disk) leaves whatever arrived in `part`.
async fn fill_part(
    client: &mut BundleFilesClient<crate::cluster::PeerChannel>,
    version: &str,
    entry: &FileEntry,
    part: &Path,
    resume: bool,
) -> Result<PartCheck, FetchError> {
    let (mut hasher, reused) = if resume {
        let (p, want) = (part.to_path_buf(), entry.bytes);
        tokio::task::spawn_blocking(move || hash_prefix(&p, want))
            .await
            .map_err(FetchError::task(format!("reading {}", part.display())))??
    } else {
        (blake3::Hasher::new(), 0)
    };
    let mut out = if reused > 0 {
        tokio::fs::OpenOptions::new().append(true).open(part).await
    } else {
        tokio::fs::File::create(part).await
    }
    .map_err(FetchError::disk("cannot open", part))?;
    let mut written = reused;
    if written < entry.bytes {
        let mut file = FileStream::open(client, version, &entry.path, written).await?;
        while let Some((chunk, total)) = file.next().await? {
            if total != entry.bytes || written + chunk.len() as u64 > entry.bytes {
                return Ok(PartCheck::Mismatch {
                    reused,
                    reason: FetchError::SizeAtPeer {
                        path: entry.path.clone(),
                        total,
                        want: entry.bytes,
                    },
                });
            }
            hasher.update(&chunk);
            out.write_all(&chunk)
                .await
                .map_err(FetchError::disk("writing", part))?;
            written += chunk.len() as u64;
            metrics()
                .bundle_fetch_bytes
                .with_label_values(&["fetched"])
                .inc_by(chunk.len() as u64);
        }
    }
    let hash = hasher.finalize().to_hex().to_string();
    if written != entry.bytes || hash != entry.blake3 {
        return Ok(PartCheck::Mismatch {
            reused,
            reason: FetchError::Checksum {
                path: entry.path.clone(),
                bytes: written,
                blake3: hash,
                want_bytes: entry.bytes,
                want_blake3: entry.blake3.clone(),
            },
        });
    }
    out.sync_all()
        .await
        .map_err(FetchError::disk("fsync", part))?;
    if reused > 0 {
        tracing::info!(file = %entry.path, reused, "resumed an interrupted bundle file fetch");
        metrics()
            .bundle_fetch_bytes
            .with_label_values(&["resumed"])
            .inc_by(reused);
    }
    Ok(PartCheck::Intact)
}

/// The blake3 state and length of what an earlier attempt left in `part`;
/// nothing (start over) when there is no such file or it is longer than
/// the whole file should be.
fn hash_prefix(part: &Path, want: u64) -> Result<(blake3::Hasher, u64), FetchError> {
    let mut hasher = blake3::Hasher::new();
    let mut f = match std::fs::File::open(part) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((hasher, 0)),
        Err(e) => return Err(FetchError::disk("cannot open", part)(e)),
    };
    let len = f
        .metadata()
        .map_err(FetchError::disk("cannot stat", part))?
        .len();
    if len > want {
        return Ok((blake3::Hasher::new(), 0));
    }
    let n = std::io::copy(&mut f, &mut hasher).map_err(FetchError::disk("reading", part))?;
    Ok((hasher, n))
}

/// One file of a bundle arriving from a peer, chunk by chunk, in order.
struct FileStream {
    rel: String,
    stream: tonic::Streaming<crate::proto::data::BundleFileChunk>,
    at: u64,
}

impl FileStream {
    async fn open(
        client: &mut BundleFilesClient<crate::cluster::PeerChannel>,
        version: &str,
        rel: &str,
        offset: u64,
    ) -> Result<FileStream, FetchError> {
        let req = FetchBundleFileRequest {
            version: version.to_string(),
            path: rel.to_string(),
            offset,
        };
        let stream = client
            .fetch_bundle_file(req)
            .await
            .map_err(|status| FetchError::Peer {
                rel: rel.to_string(),
                status,
            })?
            .into_inner();
        Ok(FileStream {
            rel: rel.to_string(),
            stream,
            at: offset,
        })
    }

    /// The next chunk and the file's total size; `None` at the end.
    async fn next(&mut self) -> Result<Option<(Vec<u8>, u64)>, FetchError> {
        let rel = &self.rel;
        let next = tokio::time::timeout(CHUNK_TIMEOUT, self.stream.message())
            .await
            .map_err(|_| FetchError::Silent {
                rel: rel.clone(),
                secs: CHUNK_TIMEOUT.as_secs(),
            })?
            .map_err(|status| FetchError::Peer {
                rel: rel.clone(),
                status,
            })?;
        let Some(chunk) = next else {
            return Ok(None);
        };
        if chunk.offset != self.at {
            return Err(FetchError::OutOfOrder {
                rel: rel.clone(),
                got: chunk.offset,
                want: self.at,
            });
        }
        self.at += chunk.data.len() as u64;
        Ok(Some((chunk.data, chunk.total_bytes)))
    }
}

/// The temporary name a file is written under before it is checked.
fn part_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".part");
    PathBuf::from(p)
}

/// Writes `dir/rel` through a temporary file, fsync and rename.
fn write_synced_atomic(dir: &Path, rel: &str, bytes: &[u8]) -> Result<(), FetchError> {
    let path = dir.join(rel);
    let tmp = part_path(&path);
    let mut f = std::fs::File::create(&tmp).map_err(FetchError::disk("create", &tmp))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(FetchError::disk("write", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(FetchError::disk("rename to", &path))?;
    Ok(fsync_dir(dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_paths_go_only_downwards() {
        for ok in [
            "manifest.json",
            "items.bin",
            "shards/shard-0003/index.usearch",
        ] {
            assert!(check_rel_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../secret",
            "shards/../../x",
            "a//b",
            "./items.bin",
            "shards/.",
            "a\\b",
            "C:x",
            "a\nb",
        ] {
            assert!(check_rel_path(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn refused_paths_say_why() {
        assert_eq!(check_rel_path(""), Err(RelPathError::Empty));
        assert_eq!(
            check_rel_path("../x"),
            Err(RelPathError::BadSegment("../x".into()))
        );
        assert_eq!(
            check_rel_path("/etc/passwd"),
            Err(RelPathError::NotRelative("/etc/passwd".into()))
        );
        assert_eq!(
            check_rel_path("a\\b").unwrap_err().to_string(),
            r#""a\\b" is not a bundle-relative path (absolute, or with '\\' or ':')"#
        );
        let e = FetchError::UnsafePath(check_rel_path("a//b").unwrap_err());
        assert!(
            e.to_string().starts_with("the manifest lists \"a//b\""),
            "{e}"
        );
    }

    #[test]
    fn a_disk_failure_is_a_disk_error_with_the_io_cause() {
        use std::error::Error as _;
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("no-such-dir");
        let e = write_synced_atomic(&missing, MANIFEST_FILE, b"{}").unwrap_err();
        let FetchError::Disk { action, path, .. } = &e else {
            panic!("{e:?}");
        };
        assert_eq!(*action, "create");
        assert!(path.starts_with(&missing));
        let io = e.source().and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(io.map(|e| e.kind()), Some(std::io::ErrorKind::NotFound));
        // a part file that is not there is no error: start from zero
        let (_, n) = hash_prefix(&tmp.path().join("x.part"), 10).unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn a_local_copy_of_another_version_is_not_used() {
        let tmp = tempfile::tempdir().unwrap();
        // no bundle at all: the bundle layer says why
        assert!(matches!(
            verify_local(tmp.path(), "v1", &[]),
            Err(FetchError::Bundle(_))
        ));
    }

    #[test]
    fn odd_versions_get_hashed_directory_names() {
        assert_eq!(version_dir_name("test-seed-2"), "test-seed-2");
        for odd in ["..", ".", "a/b", "../../etc", "v 1", ""] {
            let name = version_dir_name(odd);
            assert!(
                name.starts_with("v-") && name.len() == 34,
                "{odd:?} -> {name}"
            );
        }
        assert_ne!(version_dir_name("a/b"), version_dir_name("a/c"));
        let d = local_dir(Path::new("/data"), "../x");
        assert!(d.starts_with("/data/bundles/"));
    }

    #[test]
    fn only_copies_of_versions_no_longer_wanted_are_stale() {
        let names: Vec<String> = ["v1", "v2", "v3", &version_dir_name("odd/name")]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            stale_copies(&names, &["v2", "v3"]),
            ["v1", names[3].as_str()]
        );
        assert_eq!(
            stale_copies(&names, &["odd/name", "v1", "v2", "v3"]),
            Vec::<String>::new()
        );
        assert_eq!(stale_copies(&names, &[]), names);
    }

    #[test]
    fn a_sweep_removes_old_copies_and_leaves_the_kept_ones() {
        let tmp = tempfile::tempdir().unwrap();
        for v in ["v1", "v2", "v3"] {
            let d = local_dir(tmp.path(), v).join("shards");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("f.part"), b"x").unwrap();
        }
        std::fs::write(tmp.path().join("bundles").join("note.txt"), b"x").unwrap();
        let removed = remove_stale_copies(tmp.path(), &["v2", "v3"]);
        assert_eq!(removed, [local_dir(tmp.path(), "v1")]);
        assert!(!local_dir(tmp.path(), "v1").exists());
        assert!(local_dir(tmp.path(), "v2").join("shards/f.part").is_file());
        assert!(local_dir(tmp.path(), "v3").exists());
        // plain files there are not bundle copies: left alone
        assert!(tmp.path().join("bundles/note.txt").is_file());
        // no bundles directory at all: nothing to do
        assert!(remove_stale_copies(&tmp.path().join("none"), &[]).is_empty());
    }

    #[test]
    fn a_node_needs_shared_files_and_its_own_shards() {
        let f = |p: &str| FileEntry {
            path: p.into(),
            bytes: 1,
            blake3: String::new(),
        };
        let m = Manifest {
            format_version: crate::bundle::FORMAT_VERSION,
            model_version: "v".into(),
            created_at_unix: 0,
            input_fingerprint: String::new(),
            feature_schema: Default::default(),
            dimension: 4,
            shard_count: 12,
            n_items: 0,
            n_users: 0,
            index: Default::default(),
            components: vec![],
            metrics: serde_json::Value::Null,
            params: serde_json::Value::Null,
            files: vec![
                f("items.bin"),
                f("sections/ranker.bin"),
                f("shards/shard-0001/keys.u64"),
                f("shards/shard-0010/keys.u64"),
                f("shards/shard-0011/index.usearch"),
            ],
            generator: String::new(),
        };
        let got: Vec<&str> = needed_files(&m, &[1, 11])
            .iter()
            .map(|e| e.path.as_str())
            .collect();
        assert_eq!(
            got,
            [
                "items.bin",
                "sections/ranker.bin",
                "shards/shard-0001/keys.u64",
                "shards/shard-0011/index.usearch"
            ]
        );
    }
}
