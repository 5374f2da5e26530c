//! The writing side of following the user partition map: dropping the
//! partitions taken away from this node, and loading the ones placed here.
//!
//! A node's logs hold the events of the partitions it holds, not every
//! event: a pull names the puller's partitions and the others' events are
//! read past (`catchup`), and a peer's event of a partition held elsewhere
//! is not logged. So a partition placed here cannot be loaded from this
//! node's logs. It is loaded in three steps:
//! 1. `begin`: the partition joins the held set as loading (its events
//!    from now on wait in its buffer, and pulls ask for it), every pull
//!    that began without it has ended (`pull_gate`), the bundle's states
//!    of its users are seeded and this node's own log (events its clients
//!    sent, which it logs whatever their partition) is replayed from the
//!    serving mark;
//! 2. the node fetches every other origin's events of it since the
//!    origin's serving mark from the origin's own log, and for origins
//!    that cannot answer (down, or removed from the cluster) from a
//!    complete copy's log (`Node::load_partitions`, gRPC), and ingests
//!    them like forwarded ones (`ingest_from_peer`: claimed once, logged
//!    in the peers log, buffered);
//! 3. `finish`: the buffer is applied, the partition turns Live, and it is
//!    recorded as complete (`Origins::set_complete`), so a restart replays
//!    it from the logs instead of loading it again.
//!
//! A partition dropped from this node stops being complete on disk before
//! any pull may skip its events.
//!
//! Owns: those steps' effects on the held set, the user states and the
//! complete set. Must not touch: the RPCs (`node::partition_fetch`), the
//! map (`cluster`).

use super::*;
use std::collections::BTreeSet;

/// A load begun by `begin` and ended by `finish` or `abandon`.
pub(in crate::node) struct PartitionLoad {
    pub count: u32,
    pub partitions: Vec<u32>,
    generation: u64,
    /// This node's own log's next seq when loading began: the replay
    /// covered its events below, the buffer every one from it on.
    own_from: u64,
    /// The partitions held when loading began (kept if it fails).
    want: BTreeSet<u32>,
}

impl EventPipeline {
    /// Brings the held user partitions to `want` (out of `count`): drops
    /// the states of partitions no longer held and, when a version is
    /// served, begins loading the new ones (and any left loading, as after
    /// a restart) from its bundle and serving `mark`. The caller holds the
    /// model swap lock, so no version switch runs meanwhile. Answers the
    /// load to go on with, if there is one.
    pub(in crate::node) async fn begin_partitions(
        &self,
        count: u32,
        want: &BTreeSet<u32>,
        serving: Option<(Arc<Serving>, Option<ServingMark>)>,
    ) -> Result<Option<PartitionLoad>, ServiceError> {
        let dropping = self.held.would_drop(count, want);
        if !dropping.is_empty() {
            let complete = self
                .origins
                .complete(count)
                .unwrap_or_else(|| (0..count).collect());
            let left = complete
                .into_iter()
                .filter(|p| !dropping.contains(p))
                .collect();
            self.origins.set_complete(count, left).map_err(|e| {
                ServiceError::internal_from("recording which user partitions are held", e)
            })?;
        }
        let complete = self.origins.complete(count);
        let change = self
            .held
            .change_to(count, want, serving.is_some(), complete.as_ref());
        self.drop_users(count, &change.dropped).await;
        let (Some((serving, mark)), false) = (serving, change.loading.is_empty()) else {
            return Ok(None);
        };
        let mut load = PartitionLoad {
            count,
            partitions: change.loading.clone(),
            generation: change.generation,
            own_from: 0,
            want: want.clone(),
        };
        // a pull that began before these partitions joined the pull set
        // may move past their events; once it has ended, every later pull
        // asks for them
        drop(self.pull_gate.write().await);
        match self.load_local(&mut load, &serving, mark).await {
            Ok(()) => Ok(Some(load)),
            Err(e) => {
                self.abandon(load).await;
                Err(e)
            }
        }
    }

    /// Step 1's states and own events (module doc).
    async fn load_local(
        &self,
        load: &mut PartitionLoad,
        serving: &Arc<Serving>,
        mark: Option<ServingMark>,
    ) -> Result<(), ServiceError> {
        // read after the partitions started buffering: every event of the
        // own log below this is in the log, every one from it on in a buffer
        load.own_from = self.positions().await.own;
        let mark = mark
            .filter(|m| m.model_version == serving.model.version)
            .ok_or_else(|| {
                ServiceError::internal(format!(
                    "no serving mark for version {}: cannot tell which logged events its bundle lacks",
                    serving.model.version
                ))
            })?;
        let count = load.count;
        let loading: Arc<BTreeSet<u32>> = Arc::new(load.partitions.iter().copied().collect());
        let keep = move |set: Arc<BTreeSet<u32>>| {
            move |user: &str| set.contains(&crate::ids::user_partition(user, count))
        };
        let model = serving.model.clone();
        let select = keep(loading.clone());
        let states = tokio::task::spawn_blocking(move || model.load_user_states(select))
            .await
            .map_err(ServiceError::internal_cause)?
            .map_err(|e| ServiceError::internal_from("reading the bundle's user states", e))?;
        let seeded = self.seed(states).await;
        let events = self
            .read_log(LogSource::Own, mark.log_seq, load.own_from, keep(loading))
            .await?;
        for chunk in events.chunks(1000) {
            self.apply_to_users(chunk.iter(), serving).await?;
        }
        tracing::info!(partitions = ?load.partitions, seeded, own_events = events.len(), "user partitions loading");
        Ok(())
    }

    /// Step 3 (module doc): answers the partitions that turned Live.
    pub(in crate::node) async fn finish_partitions(
        &self,
        load: PartitionLoad,
        serving: &Arc<Serving>,
    ) -> Result<Vec<u32>, ServiceError> {
        let live = self.held.finish_loading(
            &load.partitions,
            load.generation,
            load.own_from,
            |(origin, log, seq)| {
                self.origins.claim(origin, log, seq);
            },
            |buffered| {
                // sent while the lock is held: queued before any later event
                for (p, v) in self
                    .by_user_partition(buffered.iter(), serving)
                    .into_iter()
                    .enumerate()
                    .filter(|(_, v)| !v.is_empty())
                {
                    self.users[p].do_send(ApplyEvents(v));
                }
            },
        );
        // None: every partition is complete already
        if let Some(mut complete) = self.origins.complete(load.count) {
            complete.extend(live.iter().copied());
            self.origins
                .set_complete(load.count, complete)
                .map_err(|e| {
                    ServiceError::internal_from("recording which user partitions are loaded", e)
                })?;
        }
        tracing::info!(partitions = ?live, "user partitions loaded here");
        Ok(live)
    }

    /// A load that failed: its partitions are not held after all (their
    /// seeded states are dropped); the next round begins again.
    pub(in crate::node) async fn abandon(&self, load: PartitionLoad) {
        let kept: BTreeSet<u32> = load
            .want
            .iter()
            .filter(|p| !load.partitions.contains(p))
            .copied()
            .collect();
        let complete = self.origins.complete(load.count);
        let change = self
            .held
            .change_to(load.count, &kept, true, complete.as_ref());
        self.drop_users(load.count, &change.dropped).await;
    }

    /// Drops the states of the users in `partitions` (out of `count`).
    async fn drop_users(&self, count: u32, partitions: &[u32]) {
        if partitions.is_empty() {
            return;
        }
        let dropped = Arc::new(partitions.iter().copied().collect());
        let sends = self.users.iter().map(|u| {
            u.send(DropPartitions {
                count,
                partitions: Arc::clone(&dropped),
            })
        });
        let n: usize = join_all(sends).await.into_iter().flatten().sum();
        release_free_memory();
        tracing::info!(
            ?partitions,
            users = n,
            "user partitions no longer held here: states dropped"
        );
    }

    /// Applies events to user states only (their item counts were taken
    /// when they first arrived).
    async fn apply_to_users<'a>(
        &self,
        events: impl Iterator<Item = &'a LogEvent>,
        serving: &Serving,
    ) -> Result<(), ServiceError> {
        let sends = self
            .by_user_partition(events, serving)
            .into_iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .map(|(p, v)| self.users[p].send(ApplyEvents(v)));
        for r in join_all(sends).await {
            r.map_err(|e| ServiceError::internal_from("a user partition is unavailable", e))?;
        }
        Ok(())
    }

    /// For a peer loading `parts` (out of `count`): the events of them in
    /// this node's own log from `mark` on (`forwarded` false), or in its
    /// peers log from `mark` on, one batch list per origin not in `skip`
    /// (`forwarded` true; refused unless every one of `parts` is Live and
    /// complete here, since only then does that log hold them whole).
    pub(in crate::node) async fn partition_events(
        &self,
        mark: &ServingMark,
        parts: PartitionSet,
        requested: &[u32],
        forwarded: bool,
        skip: BTreeSet<u64>,
    ) -> Result<Vec<LogEvent>, ServiceError> {
        let keep = move |user: &str| parts.keeps(user);
        if !forwarded {
            return self
                .read_log(LogSource::Own, mark.log_seq, u64::MAX, keep)
                .await;
        }
        let count = requested_count(&self.held);
        let live: BTreeSet<u32> = match self.held.live() {
            None => requested.iter().copied().collect(),
            Some(l) => l.into_iter().collect(),
        };
        let complete = count.and_then(|c| self.origins.complete(c));
        let whole = |p: &u32| live.contains(p) && complete.as_ref().is_none_or(|c| c.contains(p));
        if let Some(p) = requested.iter().find(|p| !whole(p)) {
            return Err(ServiceError::failed_precondition(format!(
                "node {} holds no complete copy of user partition {p}; ask another copy",
                self.me
            )));
        }
        let mut events = self
            .read_log(LogSource::Peers, mark.peer_log_seq, u64::MAX, keep)
            .await?;
        let mut seen = std::collections::HashSet::new();
        events.retain(|e| {
            e.origin.is_some_and(|o| {
                o.node != self.me && !skip.contains(&o.node) && seen.insert((o.node, o.log, o.seq))
            })
        });
        Ok(events)
    }
}

/// The held set's partition count (None: no map known).
fn requested_count(held: &HeldPartitions) -> Option<u32> {
    held.pull_set().map(|(count, _)| count)
}
