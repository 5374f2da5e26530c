//! Which copy a request reads its user's state from, kept in line with the
//! user partition map: the routes (`routing::UserRoutes`) are rebuilt when
//! the map's Active copies or their addresses change, and a peer's
//! `GetUserState` is answered only for a partition this node holds.
//!
//! Owns: `UserRouting` (the current `UserStates` and what it was built
//! from). Must not touch: the map's rules (`cluster`), how a read is routed
//! or hedged (`routing::user_state`).

use crate::cluster::{ClusterState, ReplicaState};
use crate::control::ClusterLink;
use crate::features::UserState;
use crate::ids::user_partition;
use crate::proto::data::shard_data_client::ShardDataClient;
use crate::routing::{RemoteCopy, UserRoutes, UserStates};
use crate::service::types::ServiceError;
use crate::userstate::UserReader;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

/// Per partition: None when held here, else the (node, internal address)
/// of its Active copies; what the routes were built from.
type Placement = Vec<Option<Vec<(u64, String)>>>;

/// The node's current user-state routes.
pub(super) struct UserRouting {
    local: Arc<Vec<UserReader>>,
    current: RwLock<Arc<UserStates>>,
    built_from: Mutex<Option<Placement>>,
}

/// Whether a copy in `state` serves reads: Active, or Draining (it still
/// answers while coordinators move off it).
fn serves(state: ReplicaState) -> bool {
    matches!(state, ReplicaState::Active | ReplicaState::Draining)
}

/// Where each partition is read from on node `me`.
fn placement(st: &ClusterState, me: u64) -> Option<Placement> {
    let map = st.partition_map.as_ref()?;
    Some(
        map.replicas
            .iter()
            .map(|copies| {
                let held = copies.iter().any(|r| r.node == me && serves(r.state));
                (!held).then(|| {
                    copies
                        .iter()
                        .filter(|r| r.state == ReplicaState::Active)
                        .filter_map(|r| Some((r.node, st.nodes.get(&r.node)?.internal.clone())))
                        .collect()
                })
            })
            .collect(),
    )
}

impl UserRouting {
    /// Every read local until the map says otherwise.
    pub(super) fn new(local: Arc<Vec<UserReader>>) -> UserRouting {
        UserRouting {
            current: RwLock::new(Arc::new(UserStates::local_only(local.clone()))),
            local,
            built_from: Mutex::new(None),
        }
    }

    /// The routes requests use now.
    pub(super) fn current(&self) -> Arc<UserStates> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Rebuilds the routes when the map's placement moved (cheap when it
    /// did not: one read of the state and a comparison).
    pub(super) fn follow_map(&self, link: &ClusterLink) {
        let want = {
            let st = link.raft.state();
            let st = st.read();
            placement(&st, link.id())
        };
        let mut built = self
            .built_from
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *built == want {
            return;
        }
        let states = match &want {
            None => UserStates::local_only(self.local.clone()),
            Some(p) => UserStates::routed(self.local.clone(), routes(link, p)),
        };
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(states);
        tracing::info!(
            remote = want
                .as_ref()
                .map_or(0, |p| p.iter().filter(|x| x.is_some()).count()),
            "user state routes follow the partition map"
        );
        *built = want;
    }
}

fn routes(link: &ClusterLink, placement: &Placement) -> UserRoutes {
    placement
        .iter()
        .map(|p| {
            p.as_ref().map(|copies| {
                copies
                    .iter()
                    .filter_map(|(node, addr)| match link.channel(*node, addr) {
                        Ok(ch) => Some(RemoteCopy {
                            node: *node,
                            client: ShardDataClient::new(ch)
                                .max_decoding_message_size(link.max_message_bytes())
                                .max_encoding_message_size(link.max_message_bytes()),
                        }),
                        Err(e) => {
                            tracing::warn!(node_id = node, error = %e, "no channel to a user partition copy");
                            None
                        }
                    })
                    .collect()
            })
        })
        .collect()
}

/// A peer asks for a user's state: answered from this node's copy of the
/// partition, refused (FailedPrecondition, the peer asks another copy)
/// when this node holds none.
pub(super) fn answer(
    link: Option<&Arc<ClusterLink>>,
    states: &UserStates,
    user_id: &str,
    partition: u32,
) -> Result<Option<Arc<UserState>>, ServiceError> {
    crate::ids::validate_id(user_id)
        .map_err(|e| ServiceError::InvalidArgument(format!("user_id: {e}")))?;
    let Some(link) = link else {
        return Err(ServiceError::failed_precondition(
            "this node is not part of a cluster",
        ));
    };
    let st = link.raft.state();
    let st = st.read();
    let Some(map) = &st.partition_map else {
        return Err(ServiceError::failed_precondition(
            "this node has no user partition map yet",
        ));
    };
    let want = user_partition(user_id, map.shards);
    if want != partition {
        return Err(ServiceError::InvalidArgument(format!(
            "user {user_id:?} is in user partition {want} of {}, not {partition}",
            map.shards
        )));
    }
    let held = map
        .replica(partition, link.id())
        .is_some_and(|r| serves(r.state));
    if !held {
        return Err(ServiceError::failed_precondition(format!(
            "user partition {partition} is not held on node {}",
            link.id()
        )));
    }
    Ok(states.local(user_id))
}
