//! The event pipeline: this node's two durable event logs (the log of
//! events its clients sent, `<data_dir>/events/`, and in a cluster the log
//! of events peers forwarded, `<data_dir>/events-peers/`), which forwarded
//! events were applied already (`catchup::Origins`), and the one path every
//! event takes: validated, logged, then applied to the user-state
//! partitions and, for events this node accepted, the served catalogue's
//! item counters (peers pull those as counts: `item_counts`, which reads
//! the effects `ingest` records in `RecentEvents`). Also forwarding
//! accepted events to the peers, serving this node's own log to a peer that
//! catches up, replaying both logs after a restart, and flushing them; and
//! following the user partitions this node holds (`held_users`): events of
//! partitions held elsewhere change nothing here but the logs, a partition
//! placed here is loaded from the bundle and the logs, one taken away is
//! dropped.
//!
//! Owns: the event sinks, `Origins`, the event log's identity, and the
//! writing side of the user partitions (applied events, seeds, loads and
//! drops).
//! Must not touch: which model version is served (it asks its caller's
//! `current` at each point it needs the catalogue, and never keeps one),
//! the serving mark's file (`model_host`), or the catch-up schedule
//! (`catchup`).

use super::catchup;
mod partitions;
use super::event_sink::{start_event_sink, Append, EventSink, Flush, NextSeq, SinkError, SyncDue};
use super::held_users::{Admit, Claim, HeldPartitions, LogPositions, LogSource, PartitionSet};
use super::model_host::ServingMark;
use super::now_unix;
use crate::config::{ApiConfig, EventAck, NodeConfig};
use crate::control::ClusterLink;
use crate::coordinator::Serving;
use crate::eventlog::{EventLogError, EventOrigin, LogEvent};
use crate::features::event_strength;
use crate::ids::{item_key, shard_of, user_key};
use crate::service::types::*;
use crate::service::validate;
use crate::telemetry::metrics::metrics;
use crate::userstate::{AppliedEvent, ApplyEvents, DropPartitions, SeedUsers, UserStateActor};
use actix::Addr;
use futures::future::join_all;
pub(super) use partitions::PartitionLoad;

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The version being served, or why there is none: the node's `current`,
/// asked anew at every point the pipeline needs a catalogue.
pub(super) type Current<'a> = &'a (dyn Fn() -> Result<Arc<Serving>, ServiceError> + Sync);

/// The logs and the record of applied forwarded events, opened at start
/// before the user partitions exist (`EventPipeline::new` adds them).
pub(super) struct EventLogs {
    events: Addr<EventSink>,
    peer_events: Option<Addr<EventSink>>,
    origins: catchup::Origins,
    event_log_id: u64,
    recent: super::recent_events::RecentEvents,
}

impl EventLogs {
    /// Opens (recovering) this node's event log, in a cluster also the
    /// forwarded-event log, the applied-origins record and the log's
    /// identity.
    pub(super) fn open(config: &NodeConfig, data_dir: &Path) -> anyhow::Result<EventLogs> {
        let (events, recovery) =
            start_event_sink(&data_dir.join("events"), config.events.log_options()).map_err(
                |e| {
                    anyhow::anyhow!(
                        "opening the event log in {}: {e}",
                        data_dir.join("events").display()
                    )
                },
            )?;
        tracing::info!(?recovery, "event log open");
        let recent = super::recent_events::RecentEvents::new(recovery.next_seq);
        let peer_events = if config.is_cluster() {
            let dir = data_dir.join("events-peers");
            let (sink, recovery) = start_event_sink(&dir, config.events.log_options())
                .map_err(|e| anyhow::anyhow!("opening the event log in {}: {e}", dir.display()))?;
            tracing::info!(?recovery, "forwarded-event log open");
            Some(sink)
        } else {
            None
        };
        let origins = catchup::Origins::load(data_dir.join("event_origins.json"));
        let peers_dir = data_dir.join("events-peers");
        let found = origins.recover(&peers_dir).map_err(|e| {
            anyhow::anyhow!(
                "reading the forwarded-event log in {} for the events it holds: {e}",
                peers_dir.display()
            )
        })?;
        if found > 0 {
            tracing::info!(
                events = found,
                "forwarded events logged after the origin table was last written"
            );
        }
        // only a cluster node's events travel to peers
        let event_log_id = if config.is_cluster() {
            catchup::log_id(data_dir).map_err(|e| {
                anyhow::anyhow!("writing {}: {e}", data_dir.join("event_log_id").display())
            })?
        } else {
            0
        };
        Ok(EventLogs {
            events,
            peer_events,
            origins,
            event_log_id,
            recent,
        })
    }
}

pub(super) struct EventPipeline {
    events: Addr<EventSink>,
    /// In a cluster: the log of events other nodes accepted and forwarded
    /// here (`<data_dir>/events-peers/`), so `events` holds only what this
    /// node accepted from clients — the log peers catch up from.
    peer_events: Option<Addr<EventSink>>,
    /// Which forwarded events (by origin node and seq) were applied here.
    origins: Arc<catchup::Origins>,
    /// Identity of this node's own event log (`catchup::log_id`).
    event_log_id: u64,
    /// The item-counter effects of the events logged since the start, for
    /// peers' pulls (`item_counts`).
    recent: super::recent_events::RecentEvents,
    /// One actor per user partition: the only writer of its states.
    users: Arc<Vec<Addr<UserStateActor>>>,
    /// Which of the cluster's user partitions this node applies events to.
    held: Arc<HeldPartitions>,
    /// This node's id.
    me: u64,
    /// The limits events are validated against.
    api: ApiConfig,
    /// `events.ack` and `events.ack_timeout_ms`.
    ack: EventAck,
    ack_timeout_ms: u64,
    /// `node.data_dir`, where the logs live.
    data_dir: PathBuf,
    /// Held for reading by every pull (`catchup`) while it runs; a
    /// partition load takes it for writing once, so that no pull which
    /// began before the partition joined the pull set (and skipped its
    /// events) is still running when the load reads the origins' logs.
    pull_gate: tokio::sync::RwLock<()>,
}

impl EventPipeline {
    pub(super) fn new(
        logs: EventLogs,
        users: Arc<Vec<Addr<UserStateActor>>>,
        held: Arc<HeldPartitions>,
        config: &NodeConfig,
    ) -> EventPipeline {
        EventPipeline {
            held,
            events: logs.events,
            peer_events: logs.peer_events,
            origins: Arc::new(logs.origins),
            event_log_id: logs.event_log_id,
            recent: logs.recent,
            users,
            me: config.node.id,
            api: config.api.clone(),
            ack: config.events.ack,
            ack_timeout_ms: config.events.ack_timeout_ms,
            data_dir: config.node.data_dir.clone(),
            pull_gate: tokio::sync::RwLock::new(()),
        }
    }

    /// See the field: a pull holds this while it runs.
    pub(super) async fn pull_gate(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.pull_gate.read().await
    }

    /// The partitions a pull asks peers for (None: all).
    pub(super) fn pull_set(&self) -> Option<(u32, Vec<u32>)> {
        self.held.pull_set()
    }

    /// Runs the interval fsync policy's clock (`interval`: the policy is
    /// `IntervalMs`).
    pub(super) fn start_sync_ticks(&self, interval: bool) {
        // the interval fsync policy needs a clock; the others do not, and an
        // idle tick 100 times a second woke three threads each time (about
        // 2% of a core per node, measured on a 0.4-core node)
        let sink = self.events.clone();
        let peer_events = self.peer_events.clone();
        actix::spawn(async move {
            if !interval {
                return;
            }
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(10));
            loop {
                tick.tick().await;
                if sink.send(SyncDue).await.is_err() {
                    break;
                }
                if let Some(peers) = &peer_events {
                    if peers.send(SyncDue).await.is_err() {
                        break;
                    }
                }
            }
        });
    }

    /// Events from this node's clients: logged in its own log and applied
    /// (see `Node::ingest_events`).
    pub(super) async fn ingest_client(
        &self,
        events: Vec<EventIn>,
        current: Current<'_>,
    ) -> Result<Vec<LogEvent>, ServiceError> {
        self.ingest(events, Vec::new(), &self.events, LogSource::Own, current)
            .await
    }

    /// Sends events this node accepted to every other node and answers
    /// once the copies `events.ack` names hold them (`event_ack`), or why
    /// they do not.
    pub(super) async fn forward(
        &self,
        link: &Arc<ClusterLink>,
        log: &[LogEvent],
    ) -> Result<(), ServiceError> {
        super::event_forward::forward_events(
            link,
            log,
            self.event_log_id,
            self.ack,
            std::time::Duration::from_millis(self.ack_timeout_ms),
        )
        .await
    }

    /// Events node `origin` accepted and forwarded (see
    /// `Node::ingest_forwarded_events`).
    pub(super) async fn ingest_forwarded(
        &self,
        cluster: Option<&Arc<ClusterLink>>,
        origin: u64,
        origin_log: u64,
        events: Vec<crate::proto::data::ForwardedEvent>,
        current: Current<'_>,
    ) -> Result<u32, ServiceError> {
        if let Some(link) = cluster {
            let known = {
                let st = link.raft.state();
                let st = st.read();
                st.nodes.contains_key(&origin)
            };
            if !known || origin == self.me {
                return Err(ServiceError::InvalidArgument(format!(
                    "events forwarded from node {origin}, which is not another member of this cluster"
                )));
            }
        }
        self.ingest_from_peer(origin, origin_log, events, current)
            .await
    }

    /// Logs and applies the events `origin` accepted (forwarded, pulled or
    /// fetched for a load) that this node holds the partition of and did
    /// not take yet; answers how many that was.
    pub(super) async fn ingest_from_peer(
        &self,
        origin: u64,
        origin_log: u64,
        events: Vec<crate::proto::data::ForwardedEvent>,
        current: Current<'_>,
    ) -> Result<u32, ServiceError> {
        // refuse before claiming: a claimed event must get applied
        current()?;
        let claims = self.held.claim_forwarded(
            origin,
            origin_log,
            events.iter().map(|e| (e.user_id.as_str(), e.origin_seq)),
            |seq| self.origins.claim(origin, origin_log, seq),
        );
        // what to undo if applying fails: per-origin claims, and those of
        // loading partitions
        let mut claimed = Vec::new();
        let mut claimed_loading = Vec::new();
        let mut from = Vec::new();
        let fresh: Vec<EventIn> = events
            .into_iter()
            .zip(claims)
            .filter(|(e, claim)| {
                let new = matches!(claim, Claim::New | Claim::NewLoading);
                if e.origin_seq > 0 {
                    match claim {
                        Claim::New => claimed.push(e.origin_seq),
                        Claim::NewLoading => {
                            claimed_loading.push((origin, origin_log, e.origin_seq))
                        }
                        _ => {}
                    }
                }
                if new {
                    from.push((e.origin_seq > 0).then_some(EventOrigin {
                        node: origin,
                        log: origin_log,
                        seq: e.origin_seq,
                    }));
                }
                new
            })
            .map(|(e, _)| EventIn::from(e))
            .collect();
        if fresh.is_empty() {
            return Ok(0);
        }
        let (sink, source) = match &self.peer_events {
            Some(p) => (p, LogSource::Peers),
            None => (&self.events, LogSource::Own),
        };
        // the peers log keeps each event's origin, which is what a restart
        // reads back (`Origins::recover`), so the sender hears back as soon
        // as the append is durable, without a second fsync for the table
        match self.ingest(fresh, from, sink, source, current).await {
            Ok(log) => Ok(log.len() as u32),
            // events this node refuses now it will refuse on every retry:
            // they stay claimed, so a catch-up moves past them
            Err(e @ (ServiceError::InvalidArgument(_) | ServiceError::ResourceExhausted(_))) => {
                tracing::warn!(origin, events = claimed.len() + claimed_loading.len(), error = %e, "forwarded events refused; skipping them");
                Err(e)
            }
            Err(e) => {
                self.origins.release(origin, &claimed);
                self.held.release_loading(&claimed_loading);
                Err(e)
            }
        }
    }

    /// Identity of this node's own event log, sent with its events.
    pub(super) fn event_log_id(&self) -> u64 {
        self.event_log_id
    }

    /// Which forwarded events were applied here (`catchup`).
    pub(super) fn origins(&self) -> &catchup::Origins {
        &self.origins
    }

    /// The counter effects of the events logged since the start.
    pub(super) fn recent(&self) -> &super::recent_events::RecentEvents {
        &self.recent
    }

    /// Events this node accepted from clients with seq > `after` whose user
    /// `keep` selects (None: all; at most `max` of them, at most `scan`
    /// read), for a peer catching up (`ShardData.FetchEvents`): from
    /// memory once the forwards of them are over (a pull must not claim an
    /// event on a copy before the forward the acknowledgement waits for
    /// does: that forward would hear "had it" before the copy's append was
    /// durable), older ones from the log.
    pub(super) async fn client_events_after(
        &self,
        after: u64,
        max: usize,
        scan: usize,
        keep: Option<PartitionSet>,
    ) -> Result<catchup::Scanned, ServiceError> {
        let settle = super::event_forward::longest_forward(std::time::Duration::from_millis(
            self.ack_timeout_ms,
        )) + std::time::Duration::from_secs(1);
        if let Some(found) = self
            .recent
            .events_after(after, max, scan, settle, keep.as_ref())
        {
            return Ok(found);
        }
        // the log's part below what memory holds (stays in seq order)
        let scan = (self.recent.first().saturating_sub(after.saturating_add(1)) as usize).min(scan);
        let dir = self.data_dir.join("events");
        tokio::task::spawn_blocking(move || {
            catchup::read_client_events(&dir, after, max, scan, keep.as_ref())
        })
        .await
        .map_err(ServiceError::internal_cause)?
        .map_err(|e| ServiceError::internal_from("reading the event log", e))
    }

    /// Validates, logs in `sink` and applies `events`; `origins` is empty
    /// (events accepted here) or names each forwarded event's origin.
    async fn ingest(
        &self,
        events: Vec<EventIn>,
        origins: Vec<Option<EventOrigin>>,
        sink: &Addr<EventSink>,
        source: LogSource,
        current: Current<'_>,
    ) -> Result<Vec<LogEvent>, ServiceError> {
        let valid = validate::events(events, &self.api, now_unix())?;
        // refuse before logging: applying needs a model's catalogue
        current()?;
        let mut log: Vec<LogEvent> = valid
            .iter()
            .enumerate()
            .map(|(i, e)| LogEvent {
                seq: 0,
                ts: e.timestamp,
                user_id: e.user_id.clone(),
                item_id: e.item_id.clone(),
                kind: e.kind,
                weight: e.weight,
                device: e.device.clone(),
                origin: origins.get(i).copied().flatten(),
            })
            .collect();
        let (first, _) = sink
            .send(Append(log.clone()))
            .await
            .map_err(|e| ServiceError::unavailable_from("event log unavailable", e))?
            .map_err(append_error)?;
        // the writer numbered its copy the same way: consecutive from first
        for (i, e) in log.iter_mut().enumerate() {
            e.seq = first + i as u64;
        }
        match source {
            LogSource::Peers => self.origins.record_logged(&log),
            // in a cluster, peers pull these events' item counts
            LogSource::Own if self.peer_events.is_some() => self.recent.record(first, &log),
            LogSource::Own => {}
        }
        for e in &log {
            metrics().events.with_label_values(&[e.kind.as_str()]).inc();
        }
        self.apply_logged(&log, source, false, current).await?;
        Ok(log)
    }

    /// After a restart, applies what the event logs hold since `mark` was
    /// taken to user state and item counters: this node's own log from
    /// `log_seq` and, in a cluster, the log of events forwarded by peers
    /// from `peer_log_seq` (the bundle holds neither), up to `upto`, the
    /// logs' positions read before the version was installed. Events logged
    /// from then on were applied as they arrived (a node that serves no
    /// version refuses events before logging them); replaying them too
    /// counted each twice.
    pub(super) async fn replay_logs(
        &self,
        mark: &ServingMark,
        upto: LogPositions,
        current: Current<'_>,
    ) -> Result<usize, ServiceError> {
        let mut n = self
            .replay_log(LogSource::Own, mark.log_seq, upto.own, current)
            .await?;
        if self.peer_events.is_some() {
            n += self
                .replay_log(LogSource::Peers, mark.peer_log_seq, upto.peers, current)
                .await?;
        }
        tracing::info!(
            events = n,
            from_seq = mark.log_seq,
            from_peer_seq = mark.peer_log_seq,
            to_seq = upto.own,
            to_peer_seq = upto.peers,
            "replayed the event logs into user state"
        );
        Ok(n)
    }

    /// The logs' positions now (the next seq each will assign).
    pub(super) async fn positions(&self) -> LogPositions {
        let (own, peers) = self.next_seqs().await;
        LogPositions { own, peers }
    }

    /// Applies the events of `source`'s log with `from <= seq < to`.
    async fn replay_log(
        &self,
        source: LogSource,
        from: u64,
        to: u64,
        current: Current<'_>,
    ) -> Result<usize, ServiceError> {
        let mut events = self.read_log(source, from, to, |_| true).await?;
        // the peers log can hold an event twice (a partition loaded again
        // fetches its events anew): each counts once
        let mut seen = std::collections::HashSet::new();
        events.retain(|e| e.origin.is_none_or(|o| seen.insert((o.node, o.log, o.seq))));
        let n = events.len();
        for chunk in events.chunks(1000) {
            self.apply_logged(chunk, source, true, current).await?;
        }
        Ok(n)
    }

    /// The events of `source`'s log with `from <= seq < to` whose user
    /// `keep` selects.
    async fn read_log(
        &self,
        source: LogSource,
        from: u64,
        to: u64,
        keep: impl Fn(&str) -> bool + Send + 'static,
    ) -> Result<Vec<LogEvent>, ServiceError> {
        let log = log_dir_name(source);
        let dir = self.data_dir.join(log);
        if !dir.exists() {
            return Ok(Vec::new());
        }
        tokio::task::spawn_blocking(move || -> Result<Vec<LogEvent>, EventLogError> {
            let mut out = Vec::new();
            for e in crate::eventlog::EventLogReader::open_after(&dir, from.saturating_sub(1))? {
                let e = e?;
                if e.seq >= to {
                    break;
                }
                if e.seq >= from && keep(&e.user_id) {
                    out.push(e);
                }
            }
            Ok(out)
        })
        .await
        .map_err(ServiceError::internal_cause)?
        .map_err(|e| ServiceError::internal_from(format!("reading the event log {log}"), e))
    }

    /// Applies events that are already durable to the user states this
    /// node keeps (see `HeldPartitions::admit`) and, for events this node
    /// accepted, to item counters (those of events other nodes accepted
    /// are pulled from them as counts: `item_counts`).
    /// A `replay` (after a restart) applies to Live partitions only: a
    /// partition still loading gets its events from its load.
    async fn apply_logged(
        &self,
        events: &[LogEvent],
        source: LogSource,
        replay: bool,
        current: Current<'_>,
    ) -> Result<(), ServiceError> {
        let serving = current()?;
        let own = if source == LogSource::Own {
            events
        } else {
            &[]
        };
        for e in own {
            serving.catalog.record_event(
                item_key(&e.item_id),
                e.ts,
                event_strength(e.kind, e.weight),
            );
        }
        let admitted = if replay {
            self.held.admit_replay(events)
        } else {
            self.held.admit(source, events)
        };
        let mine = events
            .iter()
            .zip(admitted)
            .filter(|(_, a)| *a == Admit::Apply)
            .map(|(e, _)| e);
        let sends = self
            .by_user_partition(mine, &serving)
            .into_iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .map(|(p, v)| self.users[p].send(ApplyEvents(v)));
        for r in join_all(sends).await {
            r.map_err(|e| {
                ServiceError::internal_from(
                    "events are logged but a user partition is unavailable",
                    e,
                )
            })?;
        }
        Ok(())
    }

    /// `events` ready to apply, grouped by this node's user state actor.
    fn by_user_partition<'a>(
        &self,
        events: impl Iterator<Item = &'a LogEvent>,
        serving: &Serving,
    ) -> Vec<Vec<AppliedEvent>> {
        let parts = self.users.len() as u32;
        let mut by_part: Vec<Vec<AppliedEvent>> = vec![Vec::new(); parts as usize];
        for e in events {
            let key = item_key(&e.item_id);
            by_part[shard_of(user_key(&e.user_id), parts) as usize].push(AppliedEvent {
                user_id: e.user_id.clone(),
                item_key: key,
                categories: serving.catalog.categories_of(key),
                ts: e.ts,
                kind: e.kind,
                weight: e.weight,
            });
        }
        by_part
    }

    /// Seeds user states (users already tracked keep theirs).
    pub(super) async fn seed(&self, states: Vec<(String, crate::features::UserState)>) -> usize {
        let parts = self.users.len() as u32;
        let mut seeds: Vec<Vec<(String, crate::features::UserState)>> =
            vec![Vec::new(); parts as usize];
        for (id, s) in states {
            if self.held.keeps(&id) {
                seeds[shard_of(user_key(&id), parts) as usize].push((id, s));
            }
        }
        let sends = seeds
            .into_iter()
            .enumerate()
            .filter(|(_, s)| !s.is_empty())
            .map(|(p, s)| self.users[p].send(SeedUsers(s)));
        let n = join_all(sends).await.into_iter().flatten().sum();
        // the states of users held elsewhere were decoded and dropped
        release_free_memory();
        n
    }

    /// Selects the users whose states this node keeps now (for decoding a
    /// bundle's states; `seed` checks again when they arrive).
    pub(super) fn user_filter(&self) -> super::model_host::UserFilter {
        let held = self.held.clone();
        Arc::new(move |user| held.keeps(user))
    }

    /// Whether the held user partitions are `want` out of `count` already.
    pub(super) fn holds(&self, count: u32, want: &std::collections::BTreeSet<u32>) -> bool {
        self.held.is(count, want)
    }

    /// The user partitions whose state is complete here (None: all).
    pub(super) fn live_partitions(&self) -> Option<Vec<u32>> {
        self.held.live()
    }

    /// The next seq this node's own log and (in a cluster) the
    /// forwarded-event log will assign, in that order (0 for a log this
    /// node does not keep, or whose sink is gone).
    pub(super) async fn next_seqs(&self) -> (u64, u64) {
        let log_seq = next_seq(&self.events).await;
        let peer_log_seq = match &self.peer_events {
            Some(p) => next_seq(p).await,
            None => 0,
        };
        (log_seq, peer_log_seq)
    }

    /// Flushes the event logs; call on shutdown.
    pub(super) async fn flush(&self) -> Result<(), SinkError> {
        if let Some(peers) = &self.peer_events {
            peers.send(Flush).await??;
        }
        if let Err(e) = self.origins.flush() {
            tracing::warn!(error = %e, "cannot record which forwarded events were applied");
        }
        self.events.send(Flush).await?
    }
}

/// The directory (under `node.data_dir`) of `source`'s log.
fn log_dir_name(source: LogSource) -> &'static str {
    match source {
        LogSource::Own => "events",
        LogSource::Peers => "events-peers",
    }
}

/// Gives the allocator's free pages back to the system after many user
/// states were dropped, so the process's RSS follows the store's own
/// figure (glibc keeps freed small blocks otherwise).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims glibc's own arenas; it takes
    // no pointer from us and is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The next seq an event log will assign (0 if its sink is gone).
async fn next_seq(sink: &Addr<EventSink>) -> u64 {
    sink.send(NextSeq).await.unwrap_or(0)
}

/// What a client hears when the event log refused an append. A log that
/// failed a write or fsync refuses every later append (after a failed
/// fsync the kernel may have dropped the data, so a retry could report
/// success for lost events) until the node restarts and recovers its tail:
/// that is 503, and the message says what to do.
fn append_error(e: SinkError) -> ServiceError {
    match e {
        SinkError::Log(EventLogError::Poisoned { .. }) => ServiceError::unavailable_from(
            "this node's event log failed a write or fsync earlier (see its log) and takes no \
             events until the node restarts, which recovers the log; send events to another \
             node meanwhile",
            e,
        ),
        other => ServiceError::internal_from("event log append failed", other),
    }
}
