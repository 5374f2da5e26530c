//! Durable Raft log on redb (`<data_dir>/raft/log.redb`).
//!
//! Owns: the log file — entries (index -> postcard entry), the vote, the
//! committed log id, the last purged log id and the vote fence's record
//! (what it means is `vote_fence.rs`'s) — and openraft's `RaftLogStorage` /
//! `RaftLogReader` on top of it. Must not touch: the state machine or
//! snapshots (`state_machine.rs`).
//!
//! Durability: every append, truncate, purge and vote write is one redb
//! transaction committed with `Durability::Immediate` (fsync) before openraft
//! is told it is done; that is what lets a restarted node keep its promises.
//! The committed log id is an optimisation (it lets a restarted node re-apply
//! committed entries before hearing from a leader), and a stale value is
//! always safe, so it is written with `Durability::Eventual`.
//!
//! redb calls block, so they run on tokio's blocking pool.

// openraft's StorageError and redb's Error are large by design and cross
// every function here; boxing them would only add conversions.
#![allow(clippy::result_large_err)]

use std::fmt::{Debug, Display};
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, LogState, OptionalSend, RaftLogReader, StorageIOError};
use redb::{Database, Durability, ReadableTable, TableDefinition};

use super::error::ClusterError;
use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";
const KEY_VOTE_FENCE: &str = "vote_fence";

/// File name of the log inside `<data_dir>/raft/`.
pub const LOG_FILE: &str = "log.redb";

/// Handle to the durable log. Cheap to clone; clones share the database
/// (openraft's replication tasks read through clones).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<LogDb>,
    /// Purges wait for a durable snapshot to cover what they remove.
    purge_guard: Option<super::state_machine::SnapshotWatermark>,
}

struct LogDb {
    db: Database,
    path: PathBuf,
}

impl LogStore {
    /// Purges wait until `guard` (the state machine's durable snapshot)
    /// covers the entries they remove.
    pub fn with_purge_guard(mut self, guard: super::state_machine::SnapshotWatermark) -> Self {
        self.purge_guard = Some(guard);
        self
    }

    /// Opens (or creates) the log file. A damaged or foreign file is an
    /// error naming it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ClusterError> {
        let path = path.as_ref().to_path_buf();
        let db = Database::create(&path)
            .map_err(|e| ClusterError::storage(&path, format!("cannot open the Raft log: {e}")))?;
        // Create the tables up front so readers never see "table missing".
        let init = || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            txn.open_table(ENTRIES)?;
            txn.open_table(META)?;
            txn.commit()?;
            Ok(())
        };
        init().map_err(|e| {
            ClusterError::storage(&path, format!("cannot initialise the Raft log: {e}"))
        })?;
        let store = Self {
            inner: Arc::new(LogDb { db, path }),
            purge_guard: None,
        };
        // Decode the small records now so a corrupt file fails at start-up,
        // not at the first election.
        store
            .inner
            .read_meta::<Vote>(KEY_VOTE)
            .map_err(|e| store.startup_error(e))?;
        store
            .inner
            .read_meta::<LogId>(KEY_PURGED)
            .map_err(|e| store.startup_error(e))?;
        store
            .inner
            .last_entry_log_id()
            .map_err(|e| store.startup_error(e))?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Number of live handles to this log (the file is closed when the
    /// last one goes).
    pub fn handle_count(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    /// The last entry's log id and the last purged log id, read directly
    /// (blocking; for start-up and the vote fence, not for openraft).
    pub fn log_bounds(&self) -> Result<(Option<LogId>, Option<LogId>), ClusterError> {
        let purged = self
            .inner
            .read_meta::<LogId>(KEY_PURGED)
            .map_err(|e| self.startup_error(e))?;
        let last = self
            .inner
            .last_entry_log_id()
            .map_err(|e| self.startup_error(e))?;
        Ok((last, purged))
    }

    /// The vote fence's record: `None` when never written (blocking).
    pub fn vote_fence_record(&self) -> Result<Option<bool>, ClusterError> {
        self.inner
            .read_meta::<bool>(KEY_VOTE_FENCE)
            .map_err(|e| self.startup_error(e))
    }

    /// Writes the vote fence's record durably (blocking).
    pub fn write_vote_fence_record(&self, armed: bool) -> Result<(), ClusterError> {
        self.inner
            .write_meta(KEY_VOTE_FENCE, &armed, Durability::Immediate)
            .map_err(|e| {
                ClusterError::storage(&self.inner.path, format!("saving the vote fence: {e}"))
            })
    }

    fn startup_error(&self, e: StorageError) -> ClusterError {
        ClusterError::storage(&self.inner.path, e)
    }

    /// Runs `f` on the blocking pool with the database.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&LogDb) -> Result<T, StorageError> + Send + 'static,
    {
        let inner = self.inner.clone();
        let path = self.inner.path.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StorageIOError::read_logs(file_error(&path, "storage task failed", e)))?
    }
}

fn file_error(path: &Path, what: &str, e: impl Display) -> AnyError {
    AnyError::error(format!("{}: {what}: {e}", path.display()))
}

impl LogDb {
    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let read = || -> Result<Option<Vec<u8>>, redb::Error> {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(META)?;
            Ok(table.get(key)?.map(|v| v.value().to_vec()))
        };
        let bytes = read().map_err(|e| {
            StorageIOError::read(file_error(&self.path, &format!("reading {key}"), e))
        })?;
        match bytes {
            None => Ok(None),
            Some(b) => postcard::from_bytes(&b).map(Some).map_err(|e| {
                StorageIOError::read(file_error(
                    &self.path,
                    &format!("record {key:?} is corrupt"),
                    e,
                ))
                .into()
            }),
        }
    }

    fn write_meta<T: serde::Serialize>(
        &self,
        key: &str,
        value: &T,
        durability: Durability,
    ) -> Result<(), redb::Error> {
        let bytes = postcard::to_stdvec(value).map_err(|e| redb::Error::Io(io::Error::other(e)))?;
        let mut txn = self.db.begin_write()?;
        txn.set_durability(durability);
        {
            let mut table = txn.open_table(META)?;
            table.insert(key, bytes.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    fn decode_entry(&self, index: u64, bytes: &[u8]) -> Result<Entry, StorageError> {
        postcard::from_bytes::<Entry>(bytes).map_err(|e| {
            StorageIOError::read_log_at_index(
                index,
                file_error(&self.path, &format!("log entry {index} is corrupt"), e),
            )
            .into()
        })
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let read = || -> Result<Option<(u64, Vec<u8>)>, redb::Error> {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(ENTRIES)?;
            let last = table.last()?.map(|(k, v)| (k.value(), v.value().to_vec()));
            Ok(last)
        };
        let last = read().map_err(|e| {
            StorageIOError::read_logs(file_error(&self.path, "reading the last entry", e))
        })?;
        match last {
            None => Ok(None),
            Some((index, bytes)) => Ok(Some(self.decode_entry(index, &bytes)?.log_id)),
        }
    }

    fn read_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<Vec<Entry>, StorageError> {
        let read = || -> Result<Vec<(u64, Vec<u8>)>, redb::Error> {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(ENTRIES)?;
            let mut out = Vec::new();
            for row in table.range::<u64>((start, end))? {
                let (k, v) = row?;
                out.push((k.value(), v.value().to_vec()));
            }
            Ok(out)
        };
        let rows = read()
            .map_err(|e| StorageIOError::read_logs(file_error(&self.path, "reading entries", e)))?;
        rows.iter().map(|(i, b)| self.decode_entry(*i, b)).collect()
    }

    fn append(&self, rows: &[(u64, Vec<u8>)]) -> Result<(), redb::Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate);
        {
            let mut table = txn.open_table(ENTRIES)?;
            for (index, bytes) in rows {
                table.insert(*index, bytes.as_slice())?;
            }
        }
        // chaos tests: crash with the entries written but not yet durable
        crate::failpoint!("raft-log-append");
        txn.commit()?;
        Ok(())
    }

    /// Deletes entries with index >= `from` (truncate) or <= `upto` and
    /// records the purge point, in one durable transaction.
    fn remove(
        &self,
        range: (Bound<u64>, Bound<u64>),
        purged: Option<&LogId>,
    ) -> Result<(), redb::Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate);
        {
            let mut table = txn.open_table(ENTRIES)?;
            table.retain_in::<u64, _>(range, |_, _| false)?;
            if let Some(log_id) = purged {
                let bytes = postcard::to_stdvec(log_id)
                    .map_err(|e| redb::Error::Io(io::Error::other(e)))?;
                let mut meta = txn.open_table(META)?;
                meta.insert(KEY_PURGED, bytes.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = range.start_bound().cloned();
        let end = range.end_bound().cloned();
        self.blocking(move |db| db.read_range(start, end)).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        self.blocking(|db| {
            let last_purged_log_id = db.read_meta::<LogId>(KEY_PURGED)?;
            let last_log_id = db.last_entry_log_id()?.or(last_purged_log_id);
            Ok(LogState {
                last_purged_log_id,
                last_log_id,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = *vote;
        self.blocking(move |db| {
            db.write_meta(KEY_VOTE, &vote, Durability::Immediate)
                .map_err(|e| {
                    StorageIOError::write_vote(file_error(&db.path, "saving the vote", e)).into()
                })
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.blocking(|db| db.read_meta::<Vote>(KEY_VOTE)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.blocking(move |db| {
            db.write_meta(KEY_COMMITTED, &committed, Durability::Eventual)
                .map_err(|e| {
                    StorageIOError::write(file_error(&db.path, "saving the committed log id", e))
                        .into()
                })
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        self.blocking(|db| Ok(db.read_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten()))
            .await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        for entry in entries {
            let bytes = postcard::to_stdvec(&entry).map_err(|e| {
                StorageIOError::write_log_entry(
                    entry.log_id,
                    file_error(&self.inner.path, "encoding an entry", e),
                )
            })?;
            rows.push((entry.log_id.index, bytes));
        }
        let result = self
            .blocking(move |db| {
                db.append(&rows).map_err(|e| {
                    StorageIOError::write_logs(file_error(&db.path, "appending entries", e)).into()
                })
            })
            .await;
        // The entries are durable (or the write failed) before openraft hears back.
        match &result {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(io::Error::other(e.to_string()))),
        }
        result
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.blocking(move |db| {
            db.remove((Bound::Included(log_id.index), Bound::Unbounded), None)
                .map_err(|e| {
                    StorageIOError::write_logs(file_error(&db.path, "truncating the log", e)).into()
                })
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        if let Some(guard) = &self.purge_guard {
            // an installed snapshot may still be on its way to disk
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !guard.covers(log_id.index) {
                if std::time::Instant::now() >= deadline {
                    tracing::warn!(
                        upto = log_id.index,
                        "no durable snapshot covers the entries to purge yet; keeping them"
                    );
                    return Ok(());
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        self.blocking(move |db| {
            db.remove(
                (Bound::Unbounded, Bound::Included(log_id.index)),
                Some(&log_id),
            )
            .map_err(|e| {
                StorageIOError::write_logs(file_error(&db.path, "purging the log", e)).into()
            })
        })
        .await
    }
}
