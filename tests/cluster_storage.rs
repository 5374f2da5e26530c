//! Durable Raft storage: openraft's own storage suite, restarts, and damaged
//! files (which must give an error naming the file, never a panic).

use std::path::{Path, PathBuf};

use funnel::cluster::state::{Command, CommandResult, ItemRecord, NodeInfo};
use funnel::cluster::state_machine::{decode_state, encode_state};
use funnel::cluster::types::{
    Entry, EntryPayload, LogId, Membership, SnapshotMeta, StorageError, TypeConfig, Vote,
};
use funnel::cluster::{ClusterError, LogStore, StateMachineStore};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, RaftLogReader, RaftSnapshotBuilder};
use tempfile::TempDir;

struct TempDirStores;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for TempDirStores {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = TempDir::new().expect("temp dir");
        let (log, sm) = open_stores(dir.path())
            .map_err(|e| openraft::StorageIOError::read(openraft::AnyError::error(e)))?;
        Ok((dir, log, sm))
    }
}

fn open_stores(root: &Path) -> Result<(LogStore, StateMachineStore), ClusterError> {
    let log = LogStore::open(root.join("log.redb"))?;
    let sm = StateMachineStore::open(root.join("snapshots"))?;
    Ok((log, sm))
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(TempDirStores).expect("openraft storage suite");
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn command_entry(term: u64, index: u64, command: Command) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(command),
    }
}

fn upsert(id: &str, x: f32) -> Command {
    Command::UpsertItems(vec![ItemRecord {
        id: id.into(),
        vector: vec![x, 1.0],
        categories: vec![],
        title: None,
        created_at: 0,
    }])
}

fn membership_entry(index: u64) -> Entry {
    let nodes: std::collections::BTreeMap<u64, NodeInfo> =
        [(1u64, NodeInfo::new(1, "127.0.0.1:1", "", ""))]
            .into_iter()
            .collect();
    let voters = [1u64].into_iter().collect();
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Membership(Membership::new(vec![voters], nodes)),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn log_vote_and_state_survive_a_restart() {
    let dir = TempDir::new().unwrap();
    rt().block_on(async {
        let (mut log, mut sm) = open_stores(dir.path()).unwrap();
        let mut entries = vec![membership_entry(0)];
        for i in 1..=20 {
            entries.push(command_entry(1, i, upsert(&format!("item{i}"), i as f32)));
        }
        log.blocking_append(entries.clone()).await.unwrap();
        log.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
        log.save_committed(Some(log_id(1, 20))).await.unwrap();
        sm.apply(entries[..11].to_vec()).await.unwrap();
        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snap.meta.last_log_id, Some(log_id(1, 10)));
        log.purge(log_id(1, 5)).await.unwrap();
        let digest = sm.handle().read().digest();
        drop((log, sm));

        let (mut log, mut sm) = open_stores(dir.path()).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 5)));
        assert_eq!(state.last_log_id, Some(log_id(1, 20)));
        assert_eq!(
            log.read_vote().await.unwrap(),
            Some(Vote::new_committed(1, 1))
        );
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 20)));
        let read = log.try_get_log_entries(0..100).await.unwrap();
        assert_eq!(
            read.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            (6..=20).collect::<Vec<_>>()
        );
        assert_eq!(read, entries[6..].to_vec());
        // The state machine comes back at its snapshot; openraft re-applies the rest.
        let (applied, membership) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1, 10)));
        assert_eq!(membership.log_id(), &Some(log_id(1, 0)));
        assert_eq!(sm.handle().read().digest(), digest);
        assert_eq!(sm.handle().read().catalog.len(), 10);
    });
}

#[test]
fn apply_results_and_the_applied_watch() {
    let dir = TempDir::new().unwrap();
    rt().block_on(async {
        let (_log, mut sm) = open_stores(dir.path()).unwrap();
        let handle = sm.handle();
        let mut rx = handle.subscribe();
        assert_eq!(*rx.borrow_and_update(), None);
        let results = sm
            .apply(vec![
                membership_entry(0),
                command_entry(1, 1, upsert("a", 1.0)),
                command_entry(1, 2, Command::DeleteItems(vec![])),
            ])
            .await
            .unwrap();
        assert_eq!(results[0], CommandResult::Ok);
        assert_eq!(
            results[1],
            CommandResult::Items {
                applied: 1,
                index: 1
            }
        );
        assert!(matches!(results[2], CommandResult::Rejected(_)));
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), Some(2));
        assert_eq!(handle.applied_index(), Some(2));
        assert!(handle.read().catalog.get("a").is_some());
    });
}

fn flip_byte(path: &Path, at_fraction: f64) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = ((bytes.len() as f64) * at_fraction) as usize;
    bytes[i] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

fn only_snapshot_file(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        files.len(),
        1,
        "expected exactly one snapshot file: {files:?}"
    );
    files[0].clone()
}

fn assert_storage_error_names(result: Result<impl Sized, ClusterError>, file: &Path) {
    match result {
        Err(ClusterError::Storage {
            file: named,
            reason,
        }) => {
            assert_eq!(named, file, "error names the wrong file ({reason})");
            let shown = ClusterError::Storage {
                file: named.clone(),
                reason,
            }
            .to_string();
            assert!(shown.contains(&file.display().to_string()), "{shown}");
        }
        Err(other) => panic!(
            "expected a storage error for {}, got {other:?}",
            file.display()
        ),
        Ok(_) => panic!("a damaged {} was accepted", file.display()),
    }
}

#[test]
fn damaged_snapshot_files_are_errors_naming_the_file() {
    let dir = TempDir::new().unwrap();
    let snap_dir = dir.path().join("snapshots");
    rt().block_on(async {
        let (_log, mut sm) = open_stores(dir.path()).unwrap();
        sm.apply(vec![
            membership_entry(0),
            command_entry(1, 1, upsert("a", 1.0)),
        ])
        .await
        .unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
    });
    let file = only_snapshot_file(&snap_dir);
    let good = std::fs::read(&file).unwrap();

    for fraction in [0.0, 0.3, 0.6, 0.99] {
        std::fs::write(&file, &good).unwrap();
        flip_byte(&file, fraction);
        assert_storage_error_names(StateMachineStore::open(&snap_dir), &file);
    }
    std::fs::write(&file, &good[..good.len() / 2]).unwrap();
    assert_storage_error_names(StateMachineStore::open(&snap_dir), &file);
    std::fs::write(&file, b"").unwrap();
    assert_storage_error_names(StateMachineStore::open(&snap_dir), &file);

    // Restored bytes load again, and an unfinished temp file is ignored and cleaned up.
    std::fs::write(&file, &good).unwrap();
    let tmp = snap_dir.join("snapshot-00000000000000000099.snap.tmp");
    std::fs::write(&tmp, b"half written").unwrap();
    let sm = StateMachineStore::open(&snap_dir).unwrap();
    assert!(sm.handle().read().catalog.get("a").is_some());
    assert!(!tmp.exists());
}

#[test]
fn damaged_log_files_are_errors_naming_the_file() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("log.redb");

    // Not a redb file at all.
    std::fs::write(&path, vec![0xabu8; 64 * 1024]).unwrap();
    assert_storage_error_names(LogStore::open(&path), &path);
    std::fs::remove_file(&path).unwrap();

    // A valid redb file whose last entry does not decode.
    rt().block_on(async {
        let mut log = LogStore::open(&path).unwrap();
        log.blocking_append(vec![
            membership_entry(0),
            command_entry(1, 1, upsert("a", 1.0)),
        ])
        .await
        .unwrap();
    });
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn
                .open_table(redb::TableDefinition::<u64, &[u8]>::new("entries"))
                .unwrap();
            table.insert(2u64, &[0xffu8, 0xff, 0xff][..]).unwrap();
        }
        txn.commit().unwrap();
    }
    assert_storage_error_names(LogStore::open(&path), &path);

    // A damaged entry in the middle is a read error that names file and index.
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn
                .open_table(redb::TableDefinition::<u64, &[u8]>::new("entries"))
                .unwrap();
            table.remove(2u64).unwrap();
            table.insert(0u64, &[0xffu8][..]).unwrap();
        }
        txn.commit().unwrap();
    }
    rt().block_on(async {
        let mut log = LogStore::open(&path).unwrap();
        let err = log
            .try_get_log_entries(0..10)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("log entry 0"), "{err}");
    });
}

#[test]
fn a_damaged_snapshot_transfer_is_refused_and_the_state_kept() {
    let dir = TempDir::new().unwrap();
    rt().block_on(async {
        let (_log, mut sm) = open_stores(dir.path()).unwrap();
        sm.apply(vec![
            membership_entry(0),
            command_entry(1, 1, upsert("a", 1.0)),
        ])
        .await
        .unwrap();
        let before = sm.handle().read().digest();

        let mut donor_state = sm.handle().snapshot();
        donor_state.apply_command(2, upsert("b", 2.0));
        donor_state.last_applied = Some(log_id(1, 2));
        let meta = SnapshotMeta {
            last_log_id: Some(log_id(1, 2)),
            last_membership: donor_state.membership.clone(),
            snapshot_id: "t-1".into(),
        };
        let mut data = encode_state(&donor_state).unwrap();
        assert_eq!(decode_state(&data).unwrap(), donor_state);
        let last = data.len() - 1;
        data[last] ^= 1;
        let err = sm
            .install_snapshot(&meta, Box::new(std::io::Cursor::new(data)))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("checksum"), "{err}");
        assert_eq!(sm.handle().read().digest(), before);

        // Metadata that does not describe the data is refused as well.
        let wrong_meta = SnapshotMeta {
            last_log_id: Some(log_id(1, 7)),
            ..meta.clone()
        };
        let data = encode_state(&donor_state).unwrap();
        assert!(sm
            .install_snapshot(&wrong_meta, Box::new(std::io::Cursor::new(data.clone())))
            .await
            .is_err());
        assert_eq!(sm.handle().read().digest(), before);

        sm.install_snapshot(&meta, Box::new(std::io::Cursor::new(data)))
            .await
            .unwrap();
        assert!(sm.handle().read().catalog.get("b").is_some());
        assert_eq!(sm.handle().applied_index(), Some(2));
        let current = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("installed snapshot is current");
        assert_eq!(current.meta, meta);
    });
}
