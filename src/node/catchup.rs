//! Catch-up: how the events of a user partition reach every copy's log.
//!
//! An event is logged by the node a client sent it to (its *origin*) in
//! `<data_dir>/events/` and forwarded at once only to the copies of its
//! user's partition (`event_forward`), which the acknowledgement waits
//! for. Every member also pulls from every peer (`ShardData.FetchEvents`,
//! every `PULL_EVERY`) the events of its own partitions (Live or loading)
//! in that peer's own log after its position there, and logs them in
//! `<data_dir>/events-peers/`; the answer says how far the peer read its
//! log, and the position moves past the other partitions' events
//! (`Origins::skip_through`). So a copy that was down or cut off when a
//! forward came gets the event on the next pull, and a node never logs
//! the events of partitions it does not hold (a partition placed on it is
//! loaded from the origins: `events::partitions`). The origin answers a
//! pull only with events whose forwards are over
//! (`EventPipeline::client_events_after`), so a pull never claims an event
//! on a copy while the forward that the acknowledgement waits for is
//! still on its way (that forward would hear "applied already" before the
//! copy's append was durable), and a position never moves past an event
//! whose forward may still fail.
//!
//! Each forwarded event carries its seq in the origin's log, and each node
//! records per origin which seqs it has applied (`Origins`, persisted in
//! `<data_dir>/event_origins.json` and recovered from the peers log).
//!
//! Seqs are only meaningful within one log: each node's log has a random
//! identity (`<data_dir>/event_log_id`, sent with its events), and a
//! receiver that sees a new identity for an origin (it lost its data
//! directory and started a new log at seq 1) counts that origin afresh.
//!
//! Applying goes through the same path as a forwarded event
//! (`Node::ingest_forwarded_events`), which claims (origin, seq) first:
//! an event arriving both by forwarding and by catch-up is applied once.
//! The peers log keeps each forwarded event's origin, and the file records
//! only what that log durably holds, read back after a crash from the log
//! itself (`Origins::recover`): a crash after the append but before the
//! file was written neither fetches the event again (counted twice) nor, for
//! a claim whose append never finished, skips it (lost on this copy).
//! All of it runs in a background task, off the request path.
//!
//! The file also records which held partitions this node's logs hold
//! whole (`Origins::complete`): a restart replays those from the logs and
//! loads the others again.
//!
//! Owns: `Origins` (the applied-seq table and its file), `run` (the
//! catch-up task) and `read_client_events` (the server side's log read).
//! Must not touch: how events are validated, logged or applied (`Node`), or
//! the event log format (`eventlog`).

use super::held_users::PartitionSet;
use super::Node;
use crate::control::{ChannelError, ClusterLink};
use crate::eventlog::{EventLogError, EventLogReader, LogEvent};
use crate::proto::data::shard_data_client::ShardDataClient;
use crate::proto::data::{FetchEventsRequest, ForwardedEvent};
use crate::service::types::ServiceError;
use crate::telemetry::failure_log::StepFailures;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Most events one `FetchEvents` answer carries; the caller asks again.
pub const MAX_FETCH_EVENTS: u32 = 10_000;
/// Most events of the log one filtered `FetchEvents` answer reads (the
/// ones of other partitions are read and skipped).
pub const MAX_FETCH_SCAN: usize = 100_000;
/// Events per streamed message.
pub const FETCH_BATCH: usize = 256;
/// How often every peer is asked for the events it accepted since.
const PULL_EVERY: Duration = Duration::from_millis(500);
/// How often the origin table is written.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Seqs remembered above the contiguous prefix of one origin; beyond this
/// the oldest are forgotten (a catch-up fills the gap anyway, and an event
/// applied twice only counts twice, it corrupts nothing).
const MAX_ABOVE: usize = 100_000;

/// Which seqs of one origin's log this node applied: all up to `through`,
/// plus the ones in `above`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Applied {
    /// Identity of the origin's log these seqs belong to (0: not known).
    #[serde(default)]
    log: u64,
    through: u64,
    above: BTreeSet<u64>,
}

impl Applied {
    /// Marks `seq` applied; false when it already was.
    fn claim(&mut self, seq: u64) -> bool {
        if seq <= self.through || !self.above.insert(seq) {
            return false;
        }
        while self.above.remove(&(self.through + 1)) {
            self.through += 1;
        }
        while self.above.len() > MAX_ABOVE {
            self.above.pop_first();
        }
        true
    }

    /// Marks every seq up to `seq` handled: a filtered pull read the
    /// origin's log that far, and what it skipped belongs to partitions
    /// held elsewhere.
    fn skip_to(&mut self, seq: u64) {
        if seq > self.through {
            self.through = seq;
            self.above = self.above.split_off(&(seq + 1));
        }
        while self.above.remove(&(self.through + 1)) {
            self.through += 1;
        }
    }

    /// Undoes `claim(seq)` (applying failed).
    fn release(&mut self, seq: u64) {
        if seq > self.through {
            self.above.remove(&seq);
        } else if seq > 0 {
            self.above.extend(seq + 1..=self.through);
            self.through = seq - 1;
        }
    }

    #[cfg(test)]
    fn has_gap(&self) -> bool {
        !self.above.is_empty()
    }
}

/// What `<data_dir>/event_origins.json` holds: the forwarded events this
/// node's peers log holds, per origin, and which seqs of the peers log that
/// accounts for (so a start reads only the part of the log after it).
#[derive(Debug, Default, Serialize, Deserialize)]
struct OriginFile {
    origins: BTreeMap<u64, Applied>,
    /// Seqs of the peers log whose origins `origins` holds (absent in a
    /// file written before it existed: the whole log is read once).
    #[serde(default)]
    peer_log: Applied,
    /// See `Origins::complete` (absent: every partition).
    #[serde(default)]
    complete: Option<Complete>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Complete {
    count: u32,
    partitions: BTreeSet<u32>,
}

impl OriginFile {
    /// Records that the peers log holds `e` (at `e.seq`), forwarded from
    /// `e.origin`. A new log identity of the origin counts it afresh.
    fn record(&mut self, e: &LogEvent) {
        self.peer_log.claim(e.seq);
        if let Some(o) = e.origin {
            entry_for(&mut self.origins, o.node, o.log).claim(o.seq);
        }
    }
}

/// `origin`'s entry in `table` for its log `log`: a new identity (the
/// origin lost its log and started another) starts the entry afresh; an
/// entry whose log was unknown adopts it; 0 (not known) keeps the entry.
fn entry_for(table: &mut BTreeMap<u64, Applied>, origin: u64, log: u64) -> &mut Applied {
    let applied = table.entry(origin).or_default();
    if log != 0 && applied.log != log {
        if applied.log != 0 {
            tracing::warn!(
                origin,
                "the origin's event log is new; counting its events afresh"
            );
            *applied = Applied::default();
        }
        applied.log = log;
    }
    applied
}

#[derive(Default)]
struct Table {
    origins: BTreeMap<u64, Applied>,
}

/// Per origin node, the seqs of its event log this node applied.
///
/// Two tables: `table`, the claims (an event being applied is claimed
/// first, so one arriving twice at once is applied once), and `logged`,
/// what the peers log durably holds, which is all the file keeps. A claim
/// whose append never finished is not in the file, so a crash cannot turn
/// it into an event skipped for good; an append whose claim was not yet
/// written is found again by `recover`, which reads the peers log after
/// the part the file accounts for, so a restart does not fetch it twice.
pub struct Origins {
    path: PathBuf,
    table: Mutex<Table>,
    logged: Mutex<Logged>,
    writing: Mutex<()>,
}

#[derive(Default)]
struct Logged {
    file: OriginFile,
    dirty: bool,
}

impl Origins {
    /// Loads `path` (absent: nothing applied yet). An unreadable file is
    /// reported and treated as absent: `recover` then reads the whole peers
    /// log, and a catch-up re-applies what the peers still have of what the
    /// log no longer holds, which can count an event twice but loses none.
    pub fn load(path: PathBuf) -> Origins {
        let file = match std::fs::read_to_string(&path) {
            Ok(text) => match serde_json::from_str::<OriginFile>(&text) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "ignoring an unreadable event origin table");
                    OriginFile::default()
                }
            },
            Err(_) => OriginFile::default(),
        };
        Origins {
            path,
            table: Mutex::new(Table {
                origins: file.origins.clone(),
            }),
            logged: Mutex::new(Logged { file, dirty: false }),
            writing: Mutex::new(()),
        }
    }

    /// Reads the peers log (`dir`) after the part the file accounts for and
    /// records (and claims) the origins of the forwarded events there: the
    /// ones appended since the last flush. Answers how many it found. Call
    /// it once, after `load` and before any event is ingested.
    pub fn recover(&self, dir: &Path) -> Result<usize, EventLogError> {
        if !dir.exists() {
            return Ok(0);
        }
        let after = self.logged.lock().map_or(0, |l| l.file.peer_log.through);
        let mut found = 0;
        for e in EventLogReader::open_after(dir, after)? {
            let e = e?;
            if e.seq <= after {
                continue;
            }
            if let Some(o) = e.origin {
                self.claim(o.node, o.log, o.seq);
                found += 1;
            }
            self.record_logged(std::slice::from_ref(&e));
        }
        Ok(found)
    }

    /// Records that the peers log now holds `events` (numbered there, with
    /// their origins): what `flush` writes.
    pub fn record_logged(&self, events: &[LogEvent]) {
        if let Ok(mut l) = self.logged.lock() {
            for e in events {
                l.file.record(e);
            }
            l.dirty = true;
        }
    }

    /// Claims (origin, seq) of the origin's log `log` for applying; false
    /// when it was applied. A new `log` (the origin lost its log and
    /// started another) forgets what was applied from the old one.
    pub fn claim(&self, origin: u64, log: u64, seq: u64) -> bool {
        let Ok(mut guard) = self.table.lock() else {
            return true;
        };
        entry_for(&mut guard.origins, origin, log).claim(seq)
    }

    /// Records that a filtered pull read `origin`'s log `log` up to
    /// `through` and that everything of this node's partitions up to there
    /// is durable in the peers log (the caller appended it first); the
    /// rest belonged to partitions held elsewhere.
    pub fn skip_through(&self, origin: u64, log: u64, through: u64) {
        if let Ok(mut t) = self.table.lock() {
            entry_for(&mut t.origins, origin, log).skip_to(through);
        }
        if let Ok(mut l) = self.logged.lock() {
            entry_for(&mut l.file.origins, origin, log).skip_to(through);
            l.dirty = true;
        }
    }

    /// The user partitions whose events since they were placed here this
    /// node's logs hold whole (`count` partitions in all); None: every one
    /// (the node never skipped an event of any).
    pub fn complete(&self, count: u32) -> Option<BTreeSet<u32>> {
        let l = self.logged.lock().ok()?;
        l.file.complete.as_ref().map(|c| {
            if c.count == count {
                c.partitions.clone()
            } else {
                BTreeSet::new()
            }
        })
    }

    /// Records which partitions are complete (`complete`) and writes the
    /// file at once: a pull skips a partition's events only once the file
    /// no longer calls it complete, so a restart cannot replay it from
    /// logs that lack them.
    pub fn set_complete(&self, count: u32, partitions: BTreeSet<u32>) -> std::io::Result<()> {
        if let Ok(mut l) = self.logged.lock() {
            l.file.complete = Some(Complete { count, partitions });
            l.dirty = true;
        }
        self.flush()
    }

    /// Undoes claims whose events could not be applied.
    pub fn release(&self, origin: u64, seqs: &[u64]) {
        if let Ok(mut t) = self.table.lock() {
            if let Some(a) = t.origins.get_mut(&origin) {
                for &s in seqs.iter().rev() {
                    a.release(s);
                }
            }
        }
    }

    /// Highest seq of `origin` applied without a gap below it.
    pub fn through(&self, origin: u64) -> u64 {
        self.table
            .lock()
            .ok()
            .and_then(|t| t.origins.get(&origin).map(|a| a.through))
            .unwrap_or(0)
    }

    /// Writes what the peers log holds (`record_logged`) when it changed:
    /// temp file, fsync, rename.
    pub fn flush(&self) -> std::io::Result<()> {
        // one writer at a time: two flushes could otherwise land in the
        // wrong order (an older table last) or share the temp file
        let _one = self
            .writing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let text = {
            let Ok(mut l) = self.logged.lock() else {
                return Ok(());
            };
            if !l.dirty {
                return Ok(());
            }
            l.dirty = false;
            serde_json::to_string(&l.file).map_err(std::io::Error::other)?
        };
        let written = write_atomic(&self.path, text.as_bytes());
        if written.is_err() {
            if let Ok(mut l) = self.logged.lock() {
                l.dirty = true;
            }
        }
        written
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// What a read of this node's own log for a peer's pull found: the events
/// it asked for, and how far the log was read for them (`after` when
/// nothing was read).
#[derive(Debug, Default, PartialEq)]
pub struct Scanned {
    pub events: Vec<LogEvent>,
    pub through: u64,
}

/// The events of this node's own log (`dir`, events accepted from clients)
/// with seq > `after` whose user `keep` selects (None: all), at most `max`
/// of them and at most `scan` read, in seq order. Blocking: call it off
/// the async threads.
pub fn read_client_events(
    dir: &Path,
    after: u64,
    max: usize,
    scan: usize,
    keep: Option<&PartitionSet>,
) -> Result<Scanned, EventLogError> {
    let mut out = Scanned {
        events: Vec::new(),
        through: after,
    };
    if !dir.exists() || scan == 0 {
        return Ok(out);
    }
    let mut read = 0usize;
    for e in EventLogReader::open_after(dir, after)? {
        let e = e?;
        if e.seq <= after {
            continue;
        }
        out.through = e.seq;
        read += 1;
        if keep.is_none_or(|k| k.keeps(&e.user_id)) {
            out.events.push(e);
        }
        if out.events.len() >= max || read >= scan {
            break;
        }
    }
    Ok(out)
}

/// This node's event-log identity: read from `<data_dir>/event_log_id`, or
/// made (random) and written there when the file is absent. Lives beside
/// the log, so a lost data directory gets a new one.
pub fn log_id(data_dir: &Path) -> std::io::Result<u64> {
    let path = data_dir.join("event_log_id");
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(id) = text.trim().parse::<u64>() {
            if id != 0 {
                return Ok(id);
            }
        }
        tracing::warn!(file = %path.display(), "unreadable event log id; making a new one");
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = format!("{nanos} {} {}", std::process::id(), data_dir.display());
    let hash = blake3::hash(seed.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&hash.as_bytes()[..8]);
    let id = u64::from_le_bytes(bytes).max(1);
    write_atomic(&path, id.to_string().as_bytes())?;
    Ok(id)
}

/// One logged event as it travels between nodes.
pub fn to_wire(e: &LogEvent) -> ForwardedEvent {
    ForwardedEvent {
        user_id: e.user_id.clone(),
        item_id: e.item_id.clone(),
        kind: e.kind.as_str().to_string(),
        weight: e.weight,
        timestamp: e.ts,
        device: e.device.clone(),
        origin_seq: e.seq,
    }
}

/// The catch-up task: see the module doc. Also writes the origin table
/// once a second.
pub async fn run(node: Node, link: Arc<ClusterLink>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(PULL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut flushed = Instant::now();
    // per peer: a peer down for a moment is routine, one that stays
    // unreachable is logged at warn (`failure_log`)
    let mut failures: BTreeMap<u64, StepFailures> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => {
                let _ = node.origins().flush();
                return;
            }
            _ = tick.tick() => {}
        }
        if flushed.elapsed() >= FLUSH_EVERY {
            flushed = Instant::now();
            if let Err(e) = node.origins().flush() {
                tracing::warn!(error = %e, "cannot record which forwarded events were applied");
            }
        }
        // applying needs a model; until then there is nothing to catch up on
        if node.model_version().is_none() {
            continue;
        }
        let pulled = pull_every_peer(&link, &mut failures, "event catch-up", |peer, addr| {
            catch_up_from(&node, &link, peer, addr)
        })
        .await;
        for (peer, n) in pulled.into_iter().filter(|(_, n)| *n > 0) {
            tracing::debug!(origin = peer, events = n, "events caught up from a peer");
        }
    }
}

/// Runs `pull` against every peer at once and records each outcome in
/// `failures` under `step` (a peer down for a moment is routine, one that
/// stays unreachable is logged at warn: `failure_log`); answers what the
/// pulls that succeeded returned.
pub(super) async fn pull_every_peer<T, E, F>(
    link: &ClusterLink,
    failures: &mut BTreeMap<u64, StepFailures>,
    step: &'static str,
    pull: impl Fn(u64, String) -> F,
) -> Vec<(u64, T)>
where
    E: std::fmt::Display,
    F: std::future::Future<Output = Result<T, E>>,
{
    let peers = link.peers();
    let pulls = peers.iter().map(|(peer, addr)| pull(*peer, addr.clone()));
    let results = futures::future::join_all(pulls).await;
    let mut done = Vec::new();
    for ((peer, _), r) in peers.iter().zip(results) {
        let log = failures
            .entry(*peer)
            .or_insert_with(|| StepFailures::new(step));
        match r {
            Ok(t) => {
                log.succeeded();
                done.push((*peer, t));
            }
            Err(e) => {
                log.failed(&format!("from node {peer}: {e}"));
            }
        }
    }
    done
}

/// Why catching up from one peer stopped; the next round tries again.
#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The peer refused or broke the `FetchEvents` stream.
    #[error("FetchEvents from node {peer}: {}", status.message())]
    Fetch {
        peer: u64,
        #[source]
        status: tonic::Status,
    },
    /// Applying the fetched events here failed.
    #[error(transparent)]
    Apply(#[from] ServiceError),
}

/// Fetches and applies every event of this node's partitions that `peer`
/// accepted after what this node applied from it, and moves this node's
/// position in the peer's log past the other partitions' events; answers
/// how many were new here.
async fn catch_up_from(
    node: &Node,
    link: &ClusterLink,
    peer: u64,
    addr: String,
) -> Result<usize, CatchUpError> {
    let max_batch = node.config().api.max_batch.max(1);
    let mut applied = 0usize;
    // a partition load waits until no pull that may have skipped its
    // events is still running (`events::partitions`)
    let _gate = node.inner.events.pull_gate().await;
    loop {
        let after = node.origins().through(peer);
        let set = node.inner.events.pull_set();
        let ch = link.channel(peer, &addr)?;
        let mut client = ShardDataClient::new(ch)
            .max_decoding_message_size(link.max_message_bytes())
            .max_encoding_message_size(link.max_message_bytes());
        let (filtered, partition_count, partitions) = match set {
            Some((count, parts)) => (true, count, parts),
            None => (false, 0, Vec::new()),
        };
        let mut req = tonic::Request::new(FetchEventsRequest {
            after_seq: after,
            max_events: MAX_FETCH_EVENTS,
            filtered,
            partition_count,
            partitions,
        });
        req.set_timeout(Duration::from_secs(10));
        let mut stream = client
            .fetch_events(req)
            .await
            .map_err(|status| CatchUpError::Fetch { peer, status })?
            .into_inner();
        let mut received = 0usize;
        let mut through = (0u64, 0u64);
        while let Some(batch) = stream
            .message()
            .await
            .map_err(|status| CatchUpError::Fetch { peer, status })?
        {
            received += batch.events.len();
            for chunk in batch.events.chunks(max_batch) {
                applied += node
                    .ingest_forwarded_events(peer, batch.origin_log, chunk.to_vec())
                    .await? as usize;
            }
            through = through.max((batch.through_seq, batch.origin_log));
        }
        // everything of this node's partitions up to there is applied
        // (and durable): the rest is held elsewhere
        let (through, log) = through;
        if through > after {
            node.origins().skip_through(peer, log, through);
        }
        let scanned_all = through.saturating_sub(after) < MAX_FETCH_SCAN as u64;
        if received < MAX_FETCH_EVENTS as usize && scanned_all {
            return Ok(applied);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_dedupe_and_track_the_contiguous_prefix() {
        let mut a = Applied::default();
        assert!(a.claim(1) && a.claim(2));
        assert_eq!(a.through, 2);
        assert!(!a.claim(2) && !a.claim(1), "applied twice");
        // out of order: a gap until 3 arrives
        assert!(a.claim(5) && a.claim(4));
        assert!(a.has_gap());
        assert_eq!(a.through, 2);
        assert!(a.claim(3));
        assert_eq!(a.through, 5);
        assert!(!a.has_gap());
        // releasing a claim folded into the prefix reopens it
        a.release(4);
        assert_eq!(a.through, 3);
        assert!(a.claim(4));
        assert_eq!(a.through, 5);
        a.release(9);
        assert_eq!(a.through, 5);
    }

    #[test]
    fn the_table_survives_a_restart_and_a_bad_file_is_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("event_origins.json");
        let o = Origins::load(path.clone());
        assert!(o.claim(1, 9, 1) && o.claim(1, 9, 2) && o.claim(2, 0, 7) && o.claim(1, 9, 3));
        // three reached the peers log; 1/3 was claimed but its append never
        // finished, so the file must not say it was applied
        o.record_logged(&[
            forwarded(1, 1, 9, 1),
            forwarded(2, 1, 9, 2),
            forwarded(3, 2, 0, 7),
        ]);
        o.flush().unwrap();
        let o = Origins::load(path.clone());
        assert_eq!(o.through(1), 2);
        assert_eq!(o.through(2), 0);
        assert!(!o.claim(1, 9, 2) && !o.claim(2, 0, 7));
        assert!(
            o.claim(1, 9, 3),
            "a claim whose append never finished comes again"
        );
        // origin 1 lost its log: its new seq 1 is a new event
        assert!(o.claim(1, 10, 1));
        assert_eq!(o.through(1), 1);
        // an origin whose log was unknown adopts the first one it sees
        assert!(!o.claim(2, 5, 7));
        let id = log_id(tmp.path()).unwrap();
        assert!(id != 0);
        assert_eq!(log_id(tmp.path()).unwrap(), id);
        std::fs::write(&path, "{not json").unwrap();
        let o = Origins::load(path);
        assert_eq!(o.through(1), 0);
    }

    #[test]
    fn a_filtered_pull_moves_the_position_past_other_partitions_and_the_complete_set_persists() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("event_origins.json");
        let o = Origins::load(path.clone());
        assert_eq!(
            o.complete(8),
            None,
            "a new node's logs hold every partition"
        );
        // a forward above the position, then a pull that read to 10
        assert!(o.claim(1, 9, 12));
        o.skip_through(1, 9, 10);
        assert_eq!(o.through(1), 10);
        assert!(!o.claim(1, 9, 7), "read past by the pull");
        assert!(o.claim(1, 9, 11));
        // 11 and 12 are contiguous with the position now
        assert_eq!(o.through(1), 12);
        // a position never moves back
        o.skip_through(1, 9, 3);
        assert_eq!(o.through(1), 12);
        // another log identity of the origin starts afresh
        o.skip_through(1, 10, 2);
        assert_eq!(o.through(1), 2);
        o.set_complete(8, [1, 4].into()).unwrap();
        let o = Origins::load(path);
        assert_eq!(o.complete(8), Some([1, 4].into()));
        assert_eq!(o.complete(16), Some(BTreeSet::new()), "another count: none");
        assert_eq!(o.through(1), 2, "the skipped position was written too");
    }

    /// The event at `seq` of a peers log, forwarded by `node` from its log
    /// `log` where it had `origin_seq`.
    fn forwarded(seq: u64, node: u64, log: u64, origin_seq: u64) -> LogEvent {
        let mut e = LogEvent::new(1, "u", "i", crate::dataset::EventKind::Click, 1.0);
        e.seq = seq;
        e.origin = Some(crate::eventlog::EventOrigin {
            node,
            log,
            seq: origin_seq,
        });
        e
    }

    /// The crash the chaos failpoint makes: forwarded events appended to
    /// the peers log, the process gone before the table was written. A
    /// restart must know it holds them (else a catch-up fetches them again
    /// and they count twice).
    #[test]
    fn a_restart_finds_the_forwarded_events_logged_after_the_last_flush() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("event_origins.json");
        let dir = tmp.path().join("events-peers");
        let (mut w, _) = crate::eventlog::EventLogWriter::open(&dir, Default::default()).unwrap();
        let mut first = vec![forwarded(0, 1, 9, 1), forwarded(0, 1, 9, 2)];
        w.append_batch(&mut first).unwrap();
        let o = Origins::load(path.clone());
        assert!(o.claim(1, 9, 1) && o.claim(1, 9, 2));
        o.record_logged(&first);
        o.flush().unwrap();
        // appended after the flush: origin 1's seq 3, origin 2's seq 5, and
        // an event of a sender that did not number it
        let mut unflushed = vec![forwarded(0, 1, 9, 3), forwarded(0, 2, 4, 5)];
        let mut plain = vec![LogEvent::new(
            1,
            "u",
            "i",
            crate::dataset::EventKind::View,
            1.0,
        )];
        w.append_batch(&mut unflushed).unwrap();
        w.append_batch(&mut plain).unwrap();
        w.close().unwrap();
        drop(o);

        let o = Origins::load(path.clone());
        assert!(o.claim(1, 9, 3), "the file alone does not know seq 3");
        let o = Origins::load(path.clone());
        assert_eq!(o.recover(&dir).unwrap(), 2);
        assert_eq!(o.through(1), 3);
        assert!(!o.claim(1, 9, 3) && !o.claim(2, 4, 5));
        assert!(o.claim(1, 9, 4), "the next event is new");
        // recovered, flushed and reopened: nothing is read twice
        o.flush().unwrap();
        let o = Origins::load(path);
        assert_eq!(o.recover(&dir).unwrap(), 0);
        assert_eq!(o.through(1), 3);
        assert!(!o.claim(2, 4, 5));
    }

    #[test]
    fn client_events_are_read_after_a_position() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("events");
        assert_eq!(
            read_client_events(&dir, 0, 10, 10, None).unwrap(),
            Scanned::default()
        );
        let (mut w, _) = crate::eventlog::EventLogWriter::open(&dir, Default::default()).unwrap();
        let mut batch: Vec<LogEvent> = (0..5)
            .map(|i| {
                LogEvent::new(
                    1_700_000_000 + i,
                    format!("u{}", i % 3),
                    format!("i{i}"),
                    crate::dataset::EventKind::Click,
                    1.0,
                )
            })
            .collect();
        w.append_batch(&mut batch).unwrap();
        w.close().unwrap();
        let seqs = |after, max| -> Vec<u64> {
            read_client_events(&dir, after, max, usize::MAX, None)
                .unwrap()
                .events
                .iter()
                .map(|e| e.seq)
                .collect()
        };
        assert_eq!(seqs(0, 10), vec![1, 2, 3, 4, 5]);
        assert_eq!(seqs(3, 10), vec![4, 5]);
        assert_eq!(seqs(1, 2), vec![2, 3]);
        assert!(seqs(5, 10).is_empty());
        // filtered: the other partitions' events are read past, and the
        // answer says how far; a scan limit stops early
        let keep = PartitionSet::new(2, &[crate::ids::user_partition("u2", 2)]).unwrap();
        let got = read_client_events(&dir, 0, 10, 100, Some(&keep)).unwrap();
        assert_eq!(got.through, 5);
        let wanted = (0..5)
            .filter(|i| keep.keeps(&format!("u{}", i % 3)))
            .count();
        assert_eq!(got.events.len(), wanted);
        assert!(wanted > 0 && got.events.iter().all(|e| keep.keeps(&e.user_id)));
        let got = read_client_events(&dir, 0, 10, 3, Some(&keep)).unwrap();
        assert_eq!(got.through, 3);
    }
}
