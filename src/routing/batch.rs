//! One request's remote searches, gathered per node so that the shards a
//! coordinator asks of one peer travel in one `ShardData.SearchBatch`
//! round trip instead of one RPC each.
//!
//! The coordinator opens a `CallBatch`, starts every shard's first call
//! (remote copies only queue here), then `send`s: one RPC per node, a plain
//! `Search` when a node got one search. Calls started after that — hedges,
//! fail-overs — go out on their own at once, so batching never delays the
//! paths that exist to cut the tail.
//!
//! Owns: the queue and the per-node dispatch. Must not touch: which copy
//! to ask (`set`) or what an answer means (`remote` checks each one).

use super::metadata::outgoing;
use crate::cluster::PeerChannel;
use crate::proto::data::shard_data_client::ShardDataClient;
use crate::proto::data::{
    shard_search_outcome, ShardSearchBatch, ShardSearchRequest, ShardSearchResponse,
};
use crate::service::CopyFailure;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::oneshot;

/// Most searches one `SearchBatch` may carry (the serving side refuses
/// more); a coordinator sends at most one per shard a node holds.
pub const MAX_BATCH_SEARCHES: usize = 256;

/// The answer to one queued search: the response, or why it failed.
pub type SearchAnswer = Result<ShardSearchResponse, CopyFailure>;

/// What became of a search offered to a batch.
pub enum Enqueued {
    /// It travels with the batch; the answer arrives here.
    Queued(oneshot::Receiver<SearchAnswer>),
    /// The batch was already sent: send this request on its own.
    SendNow(ShardSearchRequest),
}

struct Queued {
    request: ShardSearchRequest,
    reply: oneshot::Sender<SearchAnswer>,
}

struct NodeQueue {
    client: ShardDataClient<PeerChannel>,
    /// The request's id, sent as metadata with the RPC (`metadata`).
    request_id: Option<Arc<str>>,
    /// Set when `client` is the request thread's own connection to this
    /// address (`remote::thread_channel`): forgotten if it fails.
    own: Option<Arc<str>>,
    deadline: Option<Instant>,
    calls: Vec<Queued>,
}

#[derive(Default)]
struct State {
    sent: bool,
    nodes: BTreeMap<u64, NodeQueue>,
}

/// Searches queued for sending together; see the module doc.
#[derive(Default)]
pub struct CallBatch {
    state: Mutex<State>,
}

impl std::fmt::Debug for CallBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let queued = self
            .state
            .lock()
            .map(|s| s.nodes.values().map(|q| q.calls.len()).sum::<usize>())
            .unwrap_or(0);
        write!(f, "CallBatch {{ queued: {queued} }}")
    }
}

impl CallBatch {
    pub fn new() -> Arc<Self> {
        Arc::new(CallBatch::default())
    }

    /// Queues one search for `node`. Gives the request back when the batch
    /// was already sent: the caller sends it on its own.
    pub fn enqueue(
        &self,
        node: u64,
        client: &ShardDataClient<PeerChannel>,
        own: Option<Arc<str>>,
        request: ShardSearchRequest,
        deadline: Option<Instant>,
        request_id: Option<&Arc<str>>,
    ) -> Enqueued {
        let Ok(mut st) = self.state.lock() else {
            return Enqueued::SendNow(request);
        };
        if st.sent {
            return Enqueued::SendNow(request);
        }
        let (reply, rx) = oneshot::channel();
        let q = st.nodes.entry(node).or_insert_with(|| NodeQueue {
            client: client.clone(),
            request_id: request_id.cloned(),
            own,
            deadline,
            calls: Vec::new(),
        });
        // one deadline for the RPC: the latest any of its searches allows
        q.deadline = match (q.deadline, deadline) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        q.calls.push(Queued { request, reply });
        Enqueued::Queued(rx)
    }

    /// Sends everything queued (one task per node and chunk) and closes the
    /// batch: later `enqueue` calls get their request back.
    pub fn send(&self) {
        let nodes = match self.state.lock() {
            Ok(mut st) => {
                st.sent = true;
                std::mem::take(&mut st.nodes)
            }
            Err(_) => return,
        };
        for (node, mut q) in nodes {
            while !q.calls.is_empty() {
                let rest = q.calls.split_off(q.calls.len().min(MAX_BATCH_SEARCHES));
                let chunk = std::mem::replace(&mut q.calls, rest);
                // a spawned task leaves the request's span behind: this one
                // is made here, inside it, so the RPC stays its child
                let span = tracing::debug_span!("shard_call", peer = node, searches = chunk.len());
                let call = Call {
                    client: q.client.clone(),
                    own: q.own.clone(),
                    deadline: q.deadline,
                    request_id: q.request_id.clone(),
                };
                tokio::spawn(tracing::Instrument::instrument(
                    crate::telemetry::cpu::CpuTimed::new("rpc", send_chunk(call, chunk)),
                    span,
                ));
            }
        }
    }
}

/// How one node's chunk of searches is sent.
struct Call {
    client: ShardDataClient<PeerChannel>,
    own: Option<Arc<str>>,
    deadline: Option<Instant>,
    request_id: Option<Arc<str>>,
}

async fn send_chunk(call: Call, mut calls: Vec<Queued>) {
    let Call {
        mut client,
        own,
        deadline,
        request_id,
    } = call;
    let request_id = request_id.as_deref();
    let failed = |s: &tonic::Status| {
        if let (Some(addr), true) = (&own, super::remote::is_transport_failure(s.code())) {
            super::remote::forget_thread_channel(addr);
        }
        CopyFailure::status(s)
    };
    if calls.len() == 1 {
        let Some(call) = calls.pop() else { return };
        let answer = match outgoing(call.request, deadline, request_id) {
            None => Err(CopyFailure::DeadlineBeforeSend),
            Some(req) => client
                .search(req)
                .await
                .map(|r| r.into_inner())
                .map_err(|s| failed(&s)),
        };
        // the caller may have stopped waiting (its own deadline): fine
        let _ = call.reply.send(answer);
        return;
    }
    let (requests, replies): (Vec<_>, Vec<_>) =
        calls.into_iter().map(|c| (c.request, c.reply)).unzip();
    let n = requests.len();
    let answers: Vec<SearchAnswer> = match outgoing(
        ShardSearchBatch { searches: requests },
        deadline,
        request_id,
    ) {
        None => vec![Err(CopyFailure::DeadlineBeforeSend); n],
        Some(req) => match client.search_batch(req).await {
            Err(s) => vec![Err(failed(&s)); n],
            Ok(r) => {
                let outcomes = r.into_inner().outcomes;
                if outcomes.len() != n {
                    let e = CopyFailure::Malformed(format!(
                        "malformed batch answer: {} outcomes for {n} searches",
                        outcomes.len()
                    ));
                    vec![Err(e); n]
                } else {
                    outcomes.into_iter().map(outcome_answer).collect()
                }
            }
        },
    };
    for (reply, answer) in replies.into_iter().zip(answers) {
        let _ = reply.send(answer);
    }
}

fn outcome_answer(o: crate::proto::data::ShardSearchOutcome) -> SearchAnswer {
    match o.result {
        Some(shard_search_outcome::Result::Ok(r)) => Ok(r),
        Some(shard_search_outcome::Result::Failed(f)) => Err(CopyFailure::Status {
            code: tonic::Code::from(f.code),
            message: f.message,
        }),
        None => Err(CopyFailure::Malformed(
            "malformed batch answer: an outcome with no result".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::data::{SearchFailure, ShardSearchOutcome};

    #[test]
    fn outcomes_map_to_answers_and_an_empty_one_is_malformed() {
        let ok = ShardSearchOutcome {
            result: Some(shard_search_outcome::Result::Ok(ShardSearchResponse {
                keys: vec![7],
                scores: vec![0.5],
                ..Default::default()
            })),
        };
        assert_eq!(outcome_answer(ok).unwrap().keys, vec![7]);
        let failed = ShardSearchOutcome {
            result: Some(shard_search_outcome::Result::Failed(SearchFailure {
                code: tonic::Code::FailedPrecondition as i32,
                message: "shard 3 is not served here".into(),
            })),
        };
        let e = outcome_answer(failed).unwrap_err();
        assert_eq!(
            e,
            CopyFailure::Status {
                code: tonic::Code::FailedPrecondition,
                message: "shard 3 is not served here".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "FailedPrecondition: shard 3 is not served here"
        );
        let e = outcome_answer(ShardSearchOutcome { result: None }).unwrap_err();
        assert!(matches!(e, CopyFailure::Malformed(_)), "{e}");
    }
}
