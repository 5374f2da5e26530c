//! The actor owning one user partition.

use super::store::{AppliedEvent, UserStore};
use crate::features::{StateParams, UserState};
use actix::{Actor, Context, Handler, Message, MessageResult};
use std::sync::Arc;

pub struct UserStateActor {
    partition: u32,
    store: UserStore,
    params: StateParams,
}

impl UserStateActor {
    pub fn new(partition: u32, params: StateParams) -> Self {
        UserStateActor {
            partition,
            store: UserStore::default(),
            params,
        }
    }
}

impl Actor for UserStateActor {
    type Context = Context<Self>;
}

/// The user's current state (None = never seen).
pub struct GetUser(pub String);

impl Message for GetUser {
    type Result = Option<Arc<UserState>>;
}

impl Handler<GetUser> for UserStateActor {
    type Result = MessageResult<GetUser>;

    fn handle(&mut self, msg: GetUser, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.store.get(&msg.0))
    }
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
        for e in &msg.0 {
            self.store.apply(e, &self.params);
        }
        msg.0.len()
    }
}

/// States from a freshly loaded bundle, for users not tracked yet.
pub struct SeedUsers(pub Vec<(String, UserState)>);

impl Message for SeedUsers {
    type Result = usize;
}

impl Handler<SeedUsers> for UserStateActor {
    type Result = usize;

    fn handle(&mut self, msg: SeedUsers, _: &mut Context<Self>) -> usize {
        self.store.seed(msg.0)
    }
}
