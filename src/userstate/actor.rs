//! The actor owning one user partition.

use super::store::{AppliedEvent, UserStore};
use crate::features::{StateParams, UserState};
use crate::telemetry::metrics::metrics;
use actix::{Actor, Context, Handler, Message};
use std::sync::{Arc, PoisonError, RwLock, RwLockWriteGuard};

/// The only writer of one partition: events apply here, in arrival order.
pub struct UserStateActor {
    partition: u32,
    store: Arc<RwLock<UserStore>>,
    params: StateParams,
}

/// A read-only view of one partition, for the request path.
///
/// Why not a `GetUser` message: a read is a hash lookup and an `Arc`
/// clone, while a message is two cross-thread wake-ups (coordinator ->
/// partition arbiter -> back), which on a 2-core node cost more than the
/// lookup by an order of magnitude. The actor still owns every change, so
/// events stay ordered; a reader holds the lock only for the lookup, and
/// the `Arc<UserState>` it gets stays valid (copy-on-write) while later
/// events apply. An event acknowledged to its sender has been applied
/// under the write lock, so the sender's next read sees it.
#[derive(Clone)]
pub struct UserReader {
    store: Arc<RwLock<UserStore>>,
}

impl UserReader {
    /// The user's current state (None = never seen).
    pub fn get(&self, user_id: &str) -> Option<Arc<UserState>> {
        // a panic while applying cannot leave a state half-written (the
        // `Arc` is swapped whole), so a poisoned lock is still readable
        self.store
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(user_id)
    }
}

impl UserStateActor {
    /// The partition's actor (not started) and a reader of its states.
    pub fn new(partition: u32, params: StateParams) -> (Self, UserReader) {
        let store = Arc::new(RwLock::new(UserStore::default()));
        let reader = UserReader {
            store: store.clone(),
        };
        let actor = UserStateActor {
            partition,
            store,
            params,
        };
        (actor, reader)
    }

    fn write(&self) -> RwLockWriteGuard<'_, UserStore> {
        self.store.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Actor for UserStateActor {
    type Context = Context<Self>;
}

/// Applies events in order; answers how many were applied.
pub struct ApplyEvents(pub Vec<AppliedEvent>);

impl Message for ApplyEvents {
    type Result = usize;
}

impl Handler<ApplyEvents> for UserStateActor {
    type Result = usize;

    fn handle(&mut self, msg: ApplyEvents, _: &mut Context<Self>) -> usize {
        let _span =
            tracing::trace_span!("apply_events", partition = self.partition, n = msg.0.len())
                .entered();
        let mut store = self.write();
        let before = (store.len(), store.bytes());
        for e in &msg.0 {
            store.apply(e, &self.params);
        }
        report_growth(before, &store);
        msg.0.len()
    }
}

/// Moves the node's user gauges by what one partition's store grew.
fn report_growth(before: (usize, usize), store: &UserStore) {
    let m = metrics();
    m.user_states.add(store.len() as i64 - before.0 as i64);
    m.user_state_bytes
        .add(store.bytes() as i64 - before.1 as i64);
}

/// States from a freshly loaded bundle, for users not tracked yet.
pub struct SeedUsers(pub Vec<(String, UserState)>);

impl Message for SeedUsers {
    type Result = usize;
}

impl Handler<SeedUsers> for UserStateActor {
    type Result = usize;

    fn handle(&mut self, msg: SeedUsers, _: &mut Context<Self>) -> usize {
        let mut store = self.write();
        let before = (store.len(), store.bytes());
        let added = store.seed(msg.0);
        report_growth(before, &store);
        added
    }
}

/// Drops the states of the users in user partitions this node no longer
/// holds (`partitions` out of `count`); answers how many went.
pub struct DropPartitions {
    pub count: u32,
    pub partitions: Arc<std::collections::BTreeSet<u32>>,
}

impl Message for DropPartitions {
    type Result = usize;
}

impl Handler<DropPartitions> for UserStateActor {
    type Result = usize;

    fn handle(&mut self, msg: DropPartitions, _: &mut Context<Self>) -> usize {
        let mut store = self.write();
        let before = (store.len(), store.bytes());
        let dropped = store.retain(|id| {
            !msg.partitions
                .contains(&crate::ids::user_partition(id, msg.count))
        });
        report_growth(before, &store);
        dropped
    }
}
