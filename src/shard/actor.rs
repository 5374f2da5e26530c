//! The shard actor: one sync-arbiter thread that owns the writes to a
//! `ShardIndex`. Upserts and deletes arrive as messages and take the write
//! lock, so they apply in arrival order and a search sees either all of an
//! upsert batch or none of it. Searches skip the actor: they take the read
//! lock on the node's `SearchPool` (see `handle.rs`).

use super::index::ShardIndex;
use super::messages::{Delete, Digest, Stats, Upsert};
use actix::{Actor, Handler, SyncContext};
use std::sync::{Arc, RwLock};

pub struct ShardActor {
    pub(super) index: Arc<RwLock<ShardIndex>>,
}

impl Actor for ShardActor {
    type Context = SyncContext<Self>;
}

impl ShardActor {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, ShardIndex> {
        // a panic while holding the lock would poison it; the data is still
        // consistent (every mutation checks inputs before changing anything)
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ShardIndex> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl Handler<Upsert> for ShardActor {
    type Result = Result<(), super::ShardError>;

    fn handle(&mut self, msg: Upsert, _: &mut SyncContext<Self>) -> Self::Result {
        self.write().upsert(&msg.items)
    }
}

impl Handler<Delete> for ShardActor {
    type Result = Result<usize, super::ShardError>;

    fn handle(&mut self, msg: Delete, _: &mut SyncContext<Self>) -> Self::Result {
        self.write().delete(&msg.keys)
    }
}

impl Handler<Stats> for ShardActor {
    type Result = actix::MessageResult<Stats>;

    fn handle(&mut self, _: Stats, _: &mut SyncContext<Self>) -> Self::Result {
        actix::MessageResult(self.read().stats())
    }
}

impl Handler<Digest> for ShardActor {
    type Result = String;

    fn handle(&mut self, _: Digest, _: &mut SyncContext<Self>) -> Self::Result {
        self.read().digest()
    }
}
