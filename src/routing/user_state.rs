//! Where a request reads its user's realtime state: this node's copy of the
//! user's partition when the user partition map places one here, else a
//! copy on another node (`ShardData.GetUserState`, one RPC inside the user
//! stage's budget, hedged to a second copy when the first is slow).
//!
//! `UserStates` is built from the map by the node whenever the placement
//! changes (`UserRoutes` are the map's Active copies with their addresses)
//! and read by every request; a standalone node reads everything locally.
//!
//! Owns: the routing of user reads and the decoding of a remote answer.
//! Must not touch: which node holds which partition (the Raft state
//! decides), how events change a state (`userstate`, `features`).

use super::metadata::outgoing;
use crate::cluster::PeerChannel;
use crate::features::UserState;
use crate::ids::{shard_of, user_key};
use crate::proto::data::shard_data_client::ShardDataClient;
use crate::proto::data::UserStateRequest;
use crate::telemetry::metrics::metrics;
use crate::userstate::UserReader;
use futures::stream::{FuturesUnordered, StreamExt};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A copy of a partition on another node, ready to call.
#[derive(Clone)]
pub struct RemoteCopy {
    pub node: u64,
    pub client: ShardDataClient<PeerChannel>,
}

/// Per user partition: `None` when this node holds an Active copy,
/// otherwise the Active copies elsewhere, in the order to ask them.
pub type UserRoutes = Vec<Option<Vec<RemoteCopy>>>;

/// Why no copy answered with the user's state.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UserReadError {
    #[error("user partition {partition} has no Active copy")]
    NoCopy { partition: u32 },
    #[error("no copy of user partition {partition} answered before the deadline")]
    Deadline { partition: u32 },
    #[error("every copy of user partition {partition} failed: {}", .failures.join("; "))]
    EveryCopyFailed {
        partition: u32,
        failures: Vec<String>,
    },
}

/// How a request reads user states; see the module doc.
pub struct UserStates {
    /// This node's state partitions (the user state actors' readers).
    local: Arc<Vec<UserReader>>,
    /// The cluster's user partitions and where each is read; empty on a
    /// standalone node (every read is local).
    routes: UserRoutes,
}

/// A second copy is asked when the first has not answered after this long
/// (or a third of the time left, whichever is less).
const HEDGE_AFTER: Duration = Duration::from_millis(20);

impl UserStates {
    /// Every read local (a standalone node, or a cluster before its
    /// partition map exists).
    pub fn local_only(local: Arc<Vec<UserReader>>) -> UserStates {
        UserStates {
            local,
            routes: Vec::new(),
        }
    }

    /// Reads routed by `routes` (one entry per user partition).
    pub fn routed(local: Arc<Vec<UserReader>>, routes: UserRoutes) -> UserStates {
        UserStates { local, routes }
    }

    /// This node's own state of the user (None: never seen here).
    pub fn local(&self, user_id: &str) -> Option<Arc<UserState>> {
        self.local_by_key(user_id, user_key(user_id))
    }

    fn local_by_key(&self, user_id: &str, key: u64) -> Option<Arc<UserState>> {
        let part = shard_of(key, self.local.len().max(1) as u32) as usize;
        self.local.get(part)?.get(user_id)
    }

    /// The user's partition and its copies elsewhere, by the user's key
    /// (`ids::user_partition` is `shard_of` of the same key).
    fn remote_copies(&self, key: u64) -> Option<(u32, &[RemoteCopy])> {
        if self.routes.is_empty() {
            return None;
        }
        let p = shard_of(key, self.routes.len() as u32);
        let copies = self.routes.get(p as usize)?.as_deref()?;
        Some((p, copies))
    }

    /// The user's state (None: never seen), from this node's copy of the
    /// partition or from another copy before `deadline`.
    pub async fn get(
        &self,
        user_id: &str,
        deadline: Instant,
        request_id: &str,
    ) -> Result<Option<Arc<UserState>>, UserReadError> {
        // one hash of the id serves both the cluster's partition and the
        // local store's
        let key = user_key(user_id);
        let Some((partition, copies)) = self.remote_copies(key) else {
            metrics()
                .user_state_reads
                .with_label_values(&["local"])
                .inc();
            return Ok(self.local_by_key(user_id, key));
        };
        let r = read_remote(partition, copies, user_id, deadline, request_id).await;
        let source = if r.is_ok() { "remote" } else { "failed" };
        metrics()
            .user_state_reads
            .with_label_values(&[source])
            .inc();
        r
    }
}

/// Asks the copies in order: the next one joins when the ones asked have
/// all failed, or have been silent for `HEDGE_AFTER`; the first answer wins.
async fn read_remote(
    partition: u32,
    copies: &[RemoteCopy],
    user_id: &str,
    deadline: Instant,
    request_id: &str,
) -> Result<Option<Arc<UserState>>, UserReadError> {
    if copies.is_empty() {
        return Err(UserReadError::NoCopy { partition });
    }
    let mut failures = Vec::new();
    let mut pending = FuturesUnordered::new();
    let mut next = copies.iter();
    let ask = |copy: &RemoteCopy| {
        let mut client = copy.client.clone();
        let node = copy.node;
        let body = UserStateRequest {
            user_id: user_id.to_string(),
            partition,
        };
        let req = outgoing(body, Some(deadline), Some(request_id));
        async move {
            let Some(req) = req else {
                return (node, Err("the deadline passed before sending".to_string()));
            };
            let r = match client.get_user_state(req).await {
                Ok(r) => decode(r.into_inner()),
                Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
            };
            (node, r)
        }
    };
    if let Some(c) = next.next() {
        pending.push(ask(c));
    }
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(UserReadError::Deadline { partition });
        }
        let hedge = HEDGE_AFTER.min(left / 3);
        tokio::select! {
            done = pending.next() => match done {
                Some((_, Ok(state))) => return Ok(state),
                Some((node, Err(e))) => {
                    failures.push(format!("node {node}: {e}"));
                    if pending.is_empty() {
                        match next.next() {
                            Some(c) => pending.push(ask(c)),
                            None => return Err(UserReadError::EveryCopyFailed { partition, failures }),
                        }
                    }
                }
                None => return Err(UserReadError::EveryCopyFailed { partition, failures }),
            },
            _ = tokio::time::sleep(hedge) => {
                if let Some(c) = next.next() {
                    metrics().hedged_requests.inc();
                    pending.push(ask(c));
                }
            }
        }
    }
}

/// A copy's answer as a state; a body that does not decode is that copy's
/// failure, never a panic.
fn decode(r: crate::proto::data::UserStateResponse) -> Result<Option<Arc<UserState>>, String> {
    if !r.found {
        return Ok(None);
    }
    postcard::from_bytes::<UserState>(&r.state)
        .map(|s| Some(Arc::new(s)))
        .map_err(|e| format!("its user state does not decode: {e}"))
}

/// Encodes a state for `UserStateResponse.state`.
pub fn encode(state: &UserState) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::user_partition;
    use crate::proto::data::UserStateResponse;

    #[test]
    fn a_state_survives_the_wire_and_a_bad_body_is_an_error() {
        let mut s = UserState::default();
        let p = crate::features::StateParams::default();
        s.apply(7, &[1, 2], 100, crate::dataset::EventKind::Click, 0.0, &p);
        let wire = UserStateResponse {
            found: true,
            state: encode(&s).unwrap(),
            node_id: 2,
        };
        assert_eq!(decode(wire).unwrap().as_deref(), Some(&s));
        let missing = UserStateResponse {
            found: false,
            ..Default::default()
        };
        assert_eq!(decode(missing).unwrap(), None);
        let bad = UserStateResponse {
            found: true,
            state: vec![0xff; 3],
            node_id: 2,
        };
        assert!(decode(bad).unwrap_err().contains("does not decode"));
    }

    /// Whether `states` reads the user locally.
    fn holds(states: &UserStates, user_id: &str) -> bool {
        states.remote_copies(user_key(user_id)).is_none()
    }

    #[test]
    fn a_standalone_node_and_a_held_partition_read_locally() {
        let (_, reader) =
            crate::userstate::UserStateActor::new(0, crate::features::StateParams::default());
        let local = Arc::new(vec![reader]);
        let standalone = UserStates::local_only(local.clone());
        assert!(holds(&standalone, "anyone"));
        // four partitions, all held here but the user's own
        let p = user_partition("u1", 4) as usize;
        let mut routes: UserRoutes = vec![None; 4];
        routes[p] = Some(Vec::new());
        let routed = UserStates::routed(local, routes);
        assert!(!holds(&routed, "u1"));
        let other = (0..100)
            .map(|i| format!("v{i}"))
            .find(|u| user_partition(u, 4) as usize != p)
            .unwrap();
        assert!(holds(&routed, &other));
    }

    #[tokio::test]
    async fn a_partition_without_copies_is_an_error_not_a_wait() {
        let (_, reader) =
            crate::userstate::UserStateActor::new(0, crate::features::StateParams::default());
        let p = user_partition("u1", 2) as usize;
        let mut routes: UserRoutes = vec![None; 2];
        routes[p] = Some(Vec::new());
        let routed = UserStates::routed(Arc::new(vec![reader]), routes);
        let deadline = Instant::now() + Duration::from_secs(5);
        let t0 = Instant::now();
        let r = routed.get("u1", deadline, "r1").await;
        assert_eq!(
            r,
            Err(UserReadError::NoCopy {
                partition: p as u32
            })
        );
        assert!(t0.elapsed() < Duration::from_secs(1));
    }
}
