//! The model host: the version this node serves and the versions it holds
//! beside it. Holds the served `Serving` (model, catalogue, shard clients),
//! this version's shard actors and bundle directory, the one-swap-at-a-time
//! lock, the prepared and retired versions (`Versions`), and the serving
//! mark (`<data_dir>/serving.json`). Loads a bundle (model, this node's
//! shards as actors on the search pool, the catalogue overlay carried
//! over), loads single shards for a shard move, and installs a version or
//! a new set of shards with one pointer store, so a request holds one
//! version from start to end.
//!
//! Owns: the serving tables and their locks (`serving`, `shard_actors`,
//! `bundle_dir`: when more than one is written they are taken in that
//! order; `versions` only after those are released), `swap`, loading and
//! checking bundles and shards, `ServingMark`.
//! Must not touch: the event logs (`events`: the caller replays them and
//! asks for their positions), the cluster's state or the shard map (the
//! caller says which shards to load and builds the shard clients,
//! `peer`), or the rollout's decisions (`rollout`).

use crate::catalog::Catalog;
use crate::config::{ShardSearchEngine, ShardsConfig};
use crate::coordinator::Serving;
use crate::ids::shard_of;
use crate::model::ServingModel;
use crate::service::types::ServiceError;
use crate::shard::{start_shard, Delete, SearchPool, ShardHandle, ShardIndex, Upsert};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Instant;

/// A version loaded on this node besides (or instead of) the served one.
pub struct Standby {
    pub version: String,
    pub dir: PathBuf,
    pub model: Arc<ServingModel>,
    pub catalog: Arc<Catalog>,
    pub actors: BTreeMap<u32, ShardHandle>,
}

/// A prepared version with what the switch still needs.
pub struct Prepared {
    pub(super) standby: Arc<Standby>,
    pub(super) user_states: Vec<(String, crate::features::UserState)>,
}

/// The versions this node holds besides the served one.
#[derive(Default)]
pub struct Versions {
    /// A staged version, loaded and ready to switch to.
    pub(super) prepared: Option<Prepared>,
    /// The version being loaded in the background.
    pub(super) loading: Option<String>,
    /// The last version whose loading failed, and when (the error is
    /// logged).
    pub(super) failed: Option<(String, Instant)>,
    /// The version served before the last switch, and when it was retired.
    pub(super) retired: Option<(Arc<Standby>, Instant)>,
    /// The prepared version while a switch to it is under way: taken out
    /// of `prepared`, not served yet. Peers' searches for it are answered
    /// from it meanwhile (`standby`): a peer that switched first must not
    /// find this node holding neither version for that moment.
    pub(super) switching: Option<Arc<Standby>>,
    /// The last version this node staged as source, and its directory:
    /// known here before the peers that fetch it have applied the stage.
    pub(super) published: Option<(String, PathBuf)>,
}

pub(super) struct ModelHost {
    serving: RwLock<Option<Arc<Serving>>>,
    /// The shard actors this node hosts for the current version, by shard.
    shard_actors: RwLock<BTreeMap<u32, ShardHandle>>,
    /// The threads every local shard search runs on.
    search_pool: SearchPool,
    /// The bundle directory of the current version.
    bundle_dir: RwLock<Option<PathBuf>>,
    /// One model swap at a time.
    swap: tokio::sync::Mutex<()>,
    /// Versions loaded beside the served one (staged, or just retired).
    versions: std::sync::Mutex<Versions>,
    /// `[shards]`: how loaded shards search.
    search: ShardsConfig,
    /// `<data_dir>/serving.json`.
    mark_path: PathBuf,
}

impl ModelHost {
    pub(super) fn new(search_pool: SearchPool, search: ShardsConfig, data_dir: &Path) -> ModelHost {
        ModelHost {
            serving: RwLock::new(None),
            shard_actors: RwLock::new(BTreeMap::new()),
            search_pool,
            bundle_dir: RwLock::new(None),
            swap: tokio::sync::Mutex::new(()),
            versions: std::sync::Mutex::new(Versions::default()),
            search,
            mark_path: data_dir.join("serving.json"),
        }
    }

    /// The version being served, if any.
    pub(super) fn serving(&self) -> Option<Arc<Serving>> {
        self.serving.read().ok().and_then(|s| s.clone())
    }

    /// The shard actors of the served version, by shard.
    pub(super) fn shard_actors(&self) -> BTreeMap<u32, ShardHandle> {
        self.shard_actors
            .read()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// The bundle directory of the version being served.
    pub(super) fn bundle_dir(&self) -> Option<PathBuf> {
        self.bundle_dir.read().ok().and_then(|d| d.clone())
    }

    /// Held for a whole model swap (`publish`, a rollout switch, a rehost).
    pub(super) async fn one_at_a_time(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.swap.lock().await
    }

    pub(super) fn versions(&self) -> std::sync::MutexGuard<'_, Versions> {
        // the table holds plain handles; a panic elsewhere cannot leave it
        // half-updated
        self.versions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A prepared or retired version this node still holds.
    pub(super) fn standby(&self, version: &str) -> Option<Arc<Standby>> {
        let v = self.versions();
        if let Some(p) = v.prepared.as_ref().filter(|p| p.standby.version == version) {
            return Some(p.standby.clone());
        }
        if let Some(s) = v.switching.as_ref().filter(|s| s.version == version) {
            return Some(s.clone());
        }
        v.retired
            .as_ref()
            .filter(|(s, _)| s.version == version)
            .map(|(s, _)| s.clone())
    }

    pub(super) fn prepared_version(&self) -> Option<String> {
        self.versions()
            .prepared
            .as_ref()
            .map(|p| p.standby.version.clone())
    }

    /// Loads the bundle in `dir` beside the served version: the model,
    /// the shards `hosted` (all when `None`, started as actors) and the
    /// catalogue overlay carried over. Nothing is served from it until it
    /// is installed (`Node::switch_to`).
    pub(super) async fn prepare(
        &self,
        dir: PathBuf,
        hosted: Option<Vec<u32>>,
        keep_user: UserFilter,
    ) -> Result<Prepared, ServiceError> {
        let pool = self.search_pool.clone();
        let search = self.search;
        let (model, user_states, indexes) =
            load_version(dir.clone(), search, hosted, keep_user).await?;
        let model = Arc::new(model);
        let actors: BTreeMap<u32, ShardHandle> = indexes
            .into_iter()
            .map(|ix| (ix.shard(), start_shard(ix, &pool)))
            .collect();
        let catalog = self.carry_catalog(&model, &actors).await;
        Ok(Prepared {
            standby: Arc::new(Standby {
                version: model.version.clone(),
                dir,
                model,
                catalog,
                actors,
            }),
            user_states,
        })
    }

    /// A catalogue for `model` holding the served version's overlay, with
    /// the items upserted since training put into `actors`.
    pub(super) async fn carry_catalog(
        &self,
        model: &Arc<ServingModel>,
        actors: &BTreeMap<u32, ShardHandle>,
    ) -> Arc<Catalog> {
        let catalog = Arc::new(match self.serving() {
            Some(old) => old.catalog.carry_over(model.clone()),
            None => Catalog::new(model.clone()),
        });
        put_overlay(&catalog, model, actors).await;
        catalog
    }

    /// The served version's shard actors brought to `want`: the shards
    /// that stay, and each added one loaded from `dir` (the served
    /// version's files) with the catalogue overlay put into it as
    /// `prepare` does. Nothing is installed; the caller holds `swap`.
    pub(super) async fn load_added_shards(
        &self,
        cur: &Serving,
        want: &[u32],
        dir: PathBuf,
    ) -> Result<BTreeMap<u32, ShardHandle>, ServiceError> {
        let have = self.shard_actors();
        let added: Vec<u32> = want
            .iter()
            .copied()
            .filter(|s| !have.contains_key(s))
            .collect();
        let pool = self.search_pool.clone();
        let search = self.search;
        let shard_count = cur.model.shard_count;
        let indexes = tokio::task::spawn_blocking(move || {
            load_shards_blocking(&dir, search, shard_count, &added)
        })
        .await
        .map_err(|e| ServiceError::internal_from("shard loading task failed", e))??;
        let fresh: BTreeMap<u32, ShardHandle> = indexes
            .into_iter()
            .map(|ix| (ix.shard(), start_shard(ix, &pool)))
            .collect();
        put_overlay(&cur.catalog, &cur.model, &fresh).await;
        let mut next = have;
        next.retain(|s, _| want.contains(s));
        next.extend(fresh);
        Ok(next)
    }

    /// Serves `serving` with the shard actors `actors` from now on (the
    /// same version, other shards: see `load_added_shards`).
    pub(super) fn install_shards(
        &self,
        serving: Arc<Serving>,
        actors: BTreeMap<u32, ShardHandle>,
    ) -> Result<(), ServiceError> {
        match (self.serving.write(), self.shard_actors.write()) {
            (Ok(mut cur), Ok(mut sa)) => {
                *cur = Some(serving);
                *sa = actors;
                Ok(())
            }
            _ => Err(ServiceError::internal(
                "the node's model tables are poisoned; restart the node",
            )),
        }
    }

    /// Replaces the served version's `Serving` (new shard clients, same
    /// model, catalogue and shards).
    pub(super) fn replace_serving(&self, next: Arc<Serving>) {
        if let Ok(mut s) = self.serving.write() {
            *s = Some(next);
        }
    }

    /// Serves `serving` (built from `standby`) from now on; the version
    /// served before is retired (kept for `rollout::RETIRED_GRACE`) and a
    /// prepared copy of this version is dropped. Answers whether nothing
    /// was served before (the first load since start).
    pub(super) fn install(
        &self,
        serving: Arc<Serving>,
        standby: &Standby,
    ) -> Result<bool, ServiceError> {
        let version = &standby.version;
        let dir = &standby.dir;
        let old = match (
            self.serving.write(),
            self.shard_actors.write(),
            self.bundle_dir.write(),
        ) {
            (Ok(mut cur), Ok(mut sa), Ok(mut bd)) => {
                let old_serving = cur.replace(serving);
                let old_actors = std::mem::replace(&mut *sa, standby.actors.clone());
                let old_dir = bd.replace(dir.clone());
                old_serving.map(|s| Standby {
                    version: s.model.version.clone(),
                    dir: old_dir.unwrap_or_default(),
                    model: s.model.clone(),
                    catalog: s.catalog.clone(),
                    actors: old_actors,
                })
            }
            _ => {
                return Err(ServiceError::internal(
                    "the node's model tables are poisoned; restart the node",
                ))
            }
        };
        let first_load = old.is_none();
        {
            let mut v = self.versions();
            if v.prepared
                .as_ref()
                .is_some_and(|p| p.standby.version == *version)
            {
                v.prepared = None;
            }
            if let Some(old) = old.filter(|o| o.version != *version) {
                v.retired = Some((Arc::new(old), Instant::now()));
            }
        }
        Ok(first_load)
    }

    /// The serving mark on disk, if it is readable.
    pub(super) fn read_mark(&self) -> Option<ServingMark> {
        ServingMark::read(&self.mark_path)
    }

    /// Records `mark`; a failure is logged (a restart then does not
    /// replay).
    pub(super) fn write_mark(&self, mark: &ServingMark) {
        if let Err(e) = mark.write(&self.mark_path) {
            tracing::warn!(error = %e, "cannot record the serving mark; a restart will not replay the event log");
        }
    }
}

/// Puts the overlay of `catalog` (items upserted and deleted since
/// training) into freshly loaded shard `actors`, so a copy loaded from the
/// bundle matches its peers' digests.
async fn put_overlay(catalog: &Catalog, model: &ServingModel, actors: &BTreeMap<u32, ShardHandle>) {
    let n = model.shard_count.max(1);
    let mut by_shard: BTreeMap<u32, Vec<(u64, Vec<f32>)>> = BTreeMap::new();
    for it in catalog
        .upserted_items()
        .into_iter()
        .filter(|it| it.vector.len() == model.dimension)
    {
        by_shard
            .entry(shard_of(it.key, n))
            .or_default()
            .push((it.key, it.vector));
    }
    for (s, b) in by_shard {
        if let Some(a) = actors.get(&s) {
            let _ = a.send(Upsert { items: b }).await;
        }
    }
    // and items deleted since training stay deleted: a shard copy loaded
    // fresh from the bundle (e.g. the target of a shard move) must match
    // its peers' digests
    let mut gone: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for key in catalog.deleted_keys() {
        gone.entry(shard_of(key, n)).or_default().push(key);
    }
    for (s, keys) in gone {
        if let Some(a) = actors.get(&s) {
            let _ = a.send(Delete { keys }).await;
        }
    }
}
type LoadedVersion = (
    ServingModel,
    Vec<(String, crate::features::UserState)>,
    Vec<ShardIndex>,
);

/// Reads and verifies a bundle and every shard off the async threads.
/// Which users' states a load keeps (the user partitions this node holds).
pub(super) type UserFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

async fn load_version(
    dir: PathBuf,
    search: ShardsConfig,
    hosted: Option<Vec<u32>>,
    keep_user: UserFilter,
) -> Result<LoadedVersion, ServiceError> {
    tokio::task::spawn_blocking(move || load_version_blocking(&dir, search, hosted, &*keep_user))
        .await
        .map_err(|e| ServiceError::internal_from("model loading task failed", e))?
}

fn load_version_blocking(
    dir: &Path,
    search: ShardsConfig,
    hosted: Option<Vec<u32>>,
    keep_user: &dyn Fn(&str) -> bool,
) -> Result<LoadedVersion, ServiceError> {
    let precondition = |e: String| {
        ServiceError::failed_precondition(format!("cannot load bundle {}: {e}", dir.display()))
    };
    let loaded = ServingModel::load_keeping(dir, keep_user).map_err(|e| cannot_load(dir, e))?;
    let bundle = crate::bundle::Bundle::open(dir, &crate::bundle::OpenCheck::default())
        .map_err(|e| cannot_load(dir, e))?;
    let mut indexes = Vec::new();
    let shards = hosted.unwrap_or_else(|| (0..loaded.model.shard_count).collect());
    for s in shards {
        if s >= loaded.model.shard_count {
            return Err(precondition(format!(
                "the cluster places shard {s} here but the bundle has only {} shards; train with the cluster's shard count",
                loaded.model.shard_count
            )));
        }
        let shard = bundle.load_shard(s).map_err(|e| cannot_load(dir, e))?;
        indexes.push(shard_index(shard, search));
    }
    Ok((loaded.model, loaded.user_states, indexes))
}

/// The bundle in `dir` cannot be served because of `cause`.
fn cannot_load(dir: &Path, cause: impl std::error::Error + Send + Sync + 'static) -> ServiceError {
    ServiceError::failed_precondition_from(format!("cannot load bundle {}", dir.display()), cause)
}

/// Loads shards `shards` of the bundle in `dir` (the served version's, of
/// `shard_count` shards), checked as a full load checks them.
fn load_shards_blocking(
    dir: &Path,
    search: ShardsConfig,
    shard_count: u32,
    shards: &[u32],
) -> Result<Vec<ShardIndex>, ServiceError> {
    if shards.is_empty() {
        return Ok(Vec::new());
    }
    let precondition = |e: String| {
        ServiceError::failed_precondition(format!("cannot load bundle {}: {e}", dir.display()))
    };
    let bundle = crate::bundle::Bundle::open(dir, &crate::bundle::OpenCheck::default())
        .map_err(|e| cannot_load(dir, e))?;
    let mut out = Vec::with_capacity(shards.len());
    for &s in shards {
        if s >= shard_count {
            return Err(precondition(format!(
                "the cluster places shard {s} here but the bundle has only {shard_count} shards"
            )));
        }
        let shard = bundle.load_shard(s).map_err(|e| cannot_load(dir, e))?;
        out.push(shard_index(shard, search));
    }
    Ok(out)
}

/// A loaded shard, searched as `[shards]` says.
fn shard_index(shard: crate::bundle::LoadedShard, search: ShardsConfig) -> ShardIndex {
    let mut index = ShardIndex::from_loaded(shard, search.expansion_search);
    if search.search == ShardSearchEngine::Usearch {
        index.search_through_usearch();
    }
    index
}

/// `data_dir/serving.json`: which model version is live and the first
/// event-log seq it has not seen (events from there are replayed into user
/// state after a restart).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct ServingMark {
    pub(super) model_version: String,
    pub(super) log_seq: u64,
    /// The same for `<data_dir>/events-peers/` (cluster nodes; absent in
    /// marks written before that log existed).
    #[serde(default)]
    pub(super) peer_log_seq: u64,
}

impl ServingMark {
    fn read(path: &Path) -> Option<ServingMark> {
        let text = std::fs::read_to_string(path).ok()?;
        match serde_json::from_str(&text) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "ignoring an unreadable serving mark");
                None
            }
        }
    }

    /// Atomic: temp file, fsync, rename, fsync the directory.
    fn write(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(serde_json::to_string(self).unwrap_or_default().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// Marks `standby` as being switched to for as long as it lives (see
/// `Versions::switching`).
pub(super) struct SwitchingTo<'a>(&'a ModelHost);

impl<'a> SwitchingTo<'a> {
    pub(super) fn new(host: &'a ModelHost, standby: &Arc<Standby>) -> Self {
        host.versions().switching = Some(standby.clone());
        SwitchingTo(host)
    }
}

impl Drop for SwitchingTo<'_> {
    fn drop(&mut self) {
        self.0.versions().switching = None;
    }
}
