//! `EventSink`: the one writer of this node's durable event log. A sync
//! actor (its own thread), because appends block on fsync. Its failures are
//! `SinkError`s.

use crate::eventlog::{EventLogError, EventLogOptions, EventLogWriter, LogEvent};
use actix::{Actor, Addr, Handler, Message, SyncArbiter, SyncContext};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Why the sink could not append or flush.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// An earlier append panicked while holding the writer; the log's tail
    /// is unknown until the node restarts and recovers it.
    #[error("event log writer is poisoned")]
    Poisoned,
    /// The log itself refused (I/O, a bad event, a poisoned writer).
    #[error(transparent)]
    Log(#[from] EventLogError),
    /// The sink's thread is gone (shutdown) so the message was not handled.
    #[error(transparent)]
    Stopped(#[from] actix::MailboxError),
}

pub struct EventSink {
    writer: Arc<Mutex<EventLogWriter>>,
}

impl Actor for EventSink {
    type Context = SyncContext<Self>;
}

/// Opens (recovering a torn tail) and starts the sink; returns what recovery did.
pub fn start_event_sink(
    dir: &Path,
    opts: EventLogOptions,
) -> Result<(Addr<EventSink>, crate::eventlog::RecoveryReport), EventLogError> {
    let (writer, report) = EventLogWriter::open(dir, opts)?;
    let writer = Arc::new(Mutex::new(writer));
    let addr = SyncArbiter::start(1, move || EventSink {
        writer: writer.clone(),
    });
    Ok((addr, report))
}

/// Appends a batch durably (per the fsync policy); answers (first, last) seq.
pub struct Append(pub Vec<LogEvent>);

impl Message for Append {
    type Result = Result<(u64, u64), SinkError>;
}

impl Handler<Append> for EventSink {
    type Result = Result<(u64, u64), SinkError>;

    fn handle(&mut self, mut msg: Append, _: &mut SyncContext<Self>) -> Self::Result {
        let mut w = self.writer.lock().map_err(|_| SinkError::Poisoned)?;
        Ok(w.append_batch(&mut msg.0)?)
    }
}

/// Runs the interval fsync policy; sent periodically by the node.
pub struct SyncDue;

impl Message for SyncDue {
    type Result = ();
}

impl Handler<SyncDue> for EventSink {
    type Result = ();

    fn handle(&mut self, _: SyncDue, _: &mut SyncContext<Self>) {
        if let Ok(mut w) = self.writer.lock() {
            if let Err(e) = w.maybe_sync_due() {
                tracing::error!(error = %e, "event log fsync failed");
            }
        }
    }
}

/// Flushes and fsyncs (shutdown).
pub struct Flush;

impl Message for Flush {
    type Result = Result<(), SinkError>;
}

impl Handler<Flush> for EventSink {
    type Result = Result<(), SinkError>;

    fn handle(&mut self, _: Flush, _: &mut SyncContext<Self>) -> Self::Result {
        let mut w = self.writer.lock().map_err(|_| SinkError::Poisoned)?;
        Ok(w.sync()?)
    }
}

/// The seq the next appended event will get.
pub struct NextSeq;

impl Message for NextSeq {
    type Result = u64;
}

impl Handler<NextSeq> for EventSink {
    type Result = u64;

    fn handle(&mut self, _: NextSeq, _: &mut SyncContext<Self>) -> u64 {
        self.writer.lock().map(|w| w.next_seq()).unwrap_or(0)
    }
}
