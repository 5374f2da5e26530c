//! A shard copy on another node, reached over the cluster's internal gRPC
//! (`ShardData.Search`). The request carries the coordinator's model
//! version and the remaining stage time as its grpc-timeout, so a remote
//! node never works on an answer nobody waits for. Inside a request's
//! fan-out the search joins the request's `CallBatch` (`batch`), which sends
//! all searches for one node together. Either way the request id goes with
//! it as metadata (`metadata`).

use super::batch::Enqueued;
use super::client::{
    CallContext, CopyFailure, SearchSpec, ShardCallError, ShardClient, VectorsResult,
};
use super::metadata::outgoing;
use crate::cluster::PeerChannel;
use crate::proto::data::shard_data_client::ShardDataClient;
use crate::proto::data::ShardSearchRequest;
use crate::shard::{KeyedVectors, SearchResult};
use crate::tls::{internal_endpoint, NodeTls, TlsError};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

#[derive(Clone)]
pub struct RemoteShard {
    shard: u32,
    node: u64,
    model_version: Arc<str>,
    client: ShardDataClient<PeerChannel>,
    /// The shared channel's link (nodes, fault rules), reused over a
    /// thread's own connection.
    peer: PeerChannel,
    /// The peer's internal address and our TLS identity, for the request
    /// thread's own connection (`thread_channel`).
    addr: Arc<str>,
    tls: Option<NodeTls>,
    max_message_bytes: usize,
}

thread_local! {
    /// Connections opened by this thread, by peer address.
    static THREAD_CHANNELS: std::cell::RefCell<std::collections::HashMap<Arc<str>, Channel>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// This thread's own connection to `addr`, when the thread runs a
/// current-thread runtime (an actix worker: where requests are handled).
/// A shared channel's connection task lives on the multi-thread runtime,
/// so every remote search crossed threads twice on the way out and twice
/// back; on a node held to a fraction of a core those wakeups cost about
/// as much CPU as the search. A connection opened here runs its tasks on
/// the same thread as the request that uses it. None elsewhere (the
/// shared channel is used).
fn thread_channel(addr: &Arc<str>, tls: Option<&NodeTls>) -> Option<Channel> {
    let rt = tokio::runtime::Handle::try_current().ok()?;
    if rt.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread {
        return None;
    }
    THREAD_CHANNELS
        .try_with(|m| {
            let mut m = m.try_borrow_mut().ok()?;
            if let Some(ch) = m.get(addr) {
                return Some(ch.clone());
            }
            let ch = peer_channel(addr, tls).ok()?;
            m.insert(addr.clone(), ch.clone());
            Some(ch)
        })
        .ok()
        .flatten()
}

/// Drops this thread's connection to `addr` after a transport failure, so
/// the next call opens a fresh one (a connection whose tasks died with an
/// earlier runtime on this thread would otherwise fail every call).
pub fn forget_thread_channel(addr: &str) {
    let _ = THREAD_CHANNELS.try_with(|m| {
        if let Ok(mut m) = m.try_borrow_mut() {
            m.remove(addr);
        }
    });
}

/// Whether a failed call says the connection itself is broken.
pub fn is_transport_failure(code: tonic::Code) -> bool {
    matches!(code, tonic::Code::Unavailable | tonic::Code::Unknown)
}

/// A lazily connected channel to a peer's internal address (over mTLS
/// with `tls`): creating it never blocks, and a dead peer fails the first
/// call fast (connection refused) instead of stalling node start-up.
pub fn peer_channel(addr: &str, tls: Option<&NodeTls>) -> Result<Channel, TlsError> {
    let ep = internal_endpoint(addr, tls, Duration::from_millis(300))?.tcp_nodelay(true);
    Ok(ep.connect_lazy())
}

impl RemoteShard {
    pub fn new(
        shard: u32,
        node: u64,
        model_version: Arc<str>,
        channel: PeerChannel,
        max_message_bytes: usize,
        addr: &str,
        tls: Option<NodeTls>,
    ) -> Self {
        let client = ShardDataClient::new(channel.clone())
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        RemoteShard {
            shard,
            node,
            model_version,
            client,
            peer: channel,
            addr: Arc::from(addr),
            tls,
            max_message_bytes,
        }
    }

    /// The client a call on this thread uses: over the thread's own
    /// connection when it has one, else the shared channel; and the
    /// address to forget when that connection fails.
    fn client_here(&self) -> (ShardDataClient<PeerChannel>, Option<Arc<str>>) {
        match thread_channel(&self.addr, self.tls.as_ref()) {
            Some(ch) => (
                ShardDataClient::new(self.peer.over(ch))
                    .max_decoding_message_size(self.max_message_bytes)
                    .max_encoding_message_size(self.max_message_bytes),
                Some(self.addr.clone()),
            ),
            None => (self.client.clone(), None),
        }
    }

    pub fn node(&self) -> u64 {
        self.node
    }

    fn call(
        &self,
        spec: SearchSpec,
        ctx: CallContext,
    ) -> BoxFuture<'static, Result<SearchResult, ShardCallError>> {
        let (mut client, own) = self.client_here();
        let shard = self.shard;
        let node = self.node;
        let body = ShardSearchRequest {
            shard,
            model_version: self.model_version.to_string(),
            query: spec.query.to_vec(),
            k: spec.k as u32,
            exclude: spec.exclude.to_vec(),
            filter_categories: spec.categories.is_some(),
            categories: spec
                .categories
                .as_ref()
                .map(|c| c.iter().map(|&x| x as u32).collect())
                .unwrap_or_default(),
            fetch: spec.fetch.to_vec(),
        };
        let deadline = ctx.deadline;
        let request_id = ctx.request_id.clone();
        let want_version = self.model_version.clone();
        // queued in the request's batch when it is still open; else sent now
        let queued = match &ctx.batch {
            Some(batch) => batch.enqueue(
                node,
                &client,
                own.clone(),
                body,
                deadline,
                ctx.request_id.as_ref(),
            ),
            None => Enqueued::SendNow(body),
        };
        // the call's own CPU (building, decoding the answer) counts as rpc
        Box::pin(crate::telemetry::cpu::CpuTimed::new("rpc", async move {
            let fail = |failure: CopyFailure| ShardCallError::Copy {
                shard,
                node: Some(node),
                failure,
            };
            let r = match queued {
                Enqueued::Queued(rx) => rx
                    .await
                    .map_err(|_| fail(CopyFailure::BatchDropped))?
                    .map_err(fail)?,
                Enqueued::SendNow(body) => {
                    let Some(req) = outgoing(body, deadline, request_id.as_deref()) else {
                        return Err(fail(CopyFailure::DeadlineBeforeSend));
                    };
                    client
                        .search(req)
                        .await
                        .map_err(|s| {
                            if let (Some(addr), true) = (&own, is_transport_failure(s.code())) {
                                forget_thread_channel(addr);
                            }
                            fail(CopyFailure::status(&s))
                        })?
                        .into_inner()
                }
            };
            // an answer from another model version would mix two models'
            // vector spaces in one request
            if !r.model_version.is_empty() && r.model_version != *want_version {
                return Err(fail(CopyFailure::OtherModel {
                    answered: r.model_version,
                    wanted: want_version.to_string(),
                }));
            }
            if r.keys.len() != r.scores.len() {
                return Err(fail(CopyFailure::Malformed(
                    "malformed answer: keys and scores differ in length".into(),
                )));
            }
            let hits = r.keys.into_iter().zip(r.scores).collect();
            let vectors = KeyedVectors::from_flat(r.dimension as usize, r.vector_keys, r.vectors)
                .map_err(|e| {
                fail(CopyFailure::Malformed(format!(
                    "malformed answer: vectors do not match their keys ({e})"
                )))
            })?;
            Ok(SearchResult {
                shard,
                hits,
                vectors,
                cpu_micros: 0,
            })
        }))
    }
}

impl ShardClient for RemoteShard {
    fn shard(&self) -> u32 {
        self.shard
    }

    fn search(
        &self,
        spec: SearchSpec,
        ctx: CallContext,
    ) -> BoxFuture<'static, Result<SearchResult, ShardCallError>> {
        self.call(spec, ctx)
    }

    fn vectors(&self, keys: Arc<[u64]>, ctx: CallContext) -> BoxFuture<'static, VectorsResult> {
        let spec = SearchSpec {
            query: Arc::from(Vec::new()),
            k: 0,
            exclude: Arc::new(Vec::new()),
            categories: None,
            fetch: keys,
        };
        // a fetch rides the search RPC on its own: never in a batch
        let ctx = CallContext {
            batch: None,
            plan: None,
            ..ctx
        };
        let f = self.call(spec, ctx);
        Box::pin(async move { f.await.map(|r| r.vectors) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::FaultInjector;
    use crate::proto::data::shard_data_server::{ShardData, ShardDataServer};
    use crate::proto::data::{
        shard_search_outcome, FetchEventsRequest, ForwardEventsRequest, ForwardEventsResponse,
        ShardDigestRequest, ShardDigestResponse, ShardSearchBatch, ShardSearchBatchResponse,
        ShardSearchOutcome, ShardSearchResponse,
    };
    use crate::routing::metadata::request_id_of;
    use crate::routing::CallBatch;
    use std::sync::Mutex;
    use tonic::{Request, Response, Status};

    /// A peer's ShardData that records, per RPC, the request id it was sent
    /// (read as `api::internal` reads it) and answers each search with one
    /// hit: the shard's number as the key.
    #[derive(Clone, Default)]
    struct Recorder {
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    /// (RPC, the request id it carried)
    type Seen = (&'static str, Option<String>);

    impl Recorder {
        fn record<T>(&self, rpc: &'static str, req: &Request<T>) {
            let id = request_id_of(req).map(str::to_string);
            self.seen.lock().unwrap().push((rpc, id));
        }
    }

    fn answer(r: &ShardSearchRequest) -> ShardSearchResponse {
        ShardSearchResponse {
            keys: vec![r.shard as u64],
            scores: vec![1.0],
            model_version: r.model_version.clone(),
            node_id: 2,
            ..Default::default()
        }
    }

    #[tonic::async_trait]
    impl ShardData for Recorder {
        async fn search(
            &self,
            req: Request<ShardSearchRequest>,
        ) -> Result<Response<ShardSearchResponse>, Status> {
            self.record("search", &req);
            Ok(Response::new(answer(req.get_ref())))
        }

        async fn search_batch(
            &self,
            req: Request<ShardSearchBatch>,
        ) -> Result<Response<ShardSearchBatchResponse>, Status> {
            self.record("batch", &req);
            let outcomes = req
                .get_ref()
                .searches
                .iter()
                .map(|r| ShardSearchOutcome {
                    result: Some(shard_search_outcome::Result::Ok(answer(r))),
                })
                .collect();
            Ok(Response::new(ShardSearchBatchResponse { outcomes }))
        }

        async fn digest(
            &self,
            _: Request<ShardDigestRequest>,
        ) -> Result<Response<ShardDigestResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn forward_events(
            &self,
            _: Request<ForwardEventsRequest>,
        ) -> Result<Response<ForwardEventsResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        type FetchEventsStream =
            tokio_stream::wrappers::ReceiverStream<Result<ForwardEventsRequest, Status>>;

        async fn fetch_events(
            &self,
            _: Request<FetchEventsRequest>,
        ) -> Result<Response<Self::FetchEventsStream>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        type FetchPartitionEventsStream = tokio_stream::wrappers::ReceiverStream<
            Result<crate::proto::data::ForwardEventsRequest, Status>,
        >;

        async fn fetch_partition_events(
            &self,
            _: Request<crate::proto::data::PartitionEventsRequest>,
        ) -> Result<Response<Self::FetchPartitionEventsStream>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn get_user_state(
            &self,
            _: Request<crate::proto::data::UserStateRequest>,
        ) -> Result<Response<crate::proto::data::UserStateResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }

        async fn fetch_item_counts(
            &self,
            _: Request<crate::proto::data::ItemCountsRequest>,
        ) -> Result<Response<crate::proto::data::ItemCountsResponse>, Status> {
            Err(Status::unimplemented("not in this test"))
        }
    }

    fn spec() -> SearchSpec {
        SearchSpec {
            query: Arc::from(vec![0.5f32, 0.5]),
            k: 3,
            exclude: Arc::new(Vec::new()),
            categories: None,
            fetch: Arc::from(Vec::new()),
        }
    }

    /// A coordinator (node 1) and a peer (node 2) in one process, over real
    /// gRPC on 127.0.0.1: the peer sees the coordinator's request id on a
    /// search sent alone and on a batch, and none when there is none.
    #[tokio::test]
    async fn the_request_id_reaches_the_peer_on_searches_and_batches() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let recorder = Recorder::default();
        let server = tonic::transport::Server::builder()
            .add_service(ShardDataServer::new(recorder.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        let server = tokio::spawn(server);

        let channel = PeerChannel::new(
            peer_channel(&addr, None).unwrap(),
            FaultInjector::new(1),
            1,
            Some(2),
        );
        let copy = |shard| {
            RemoteShard::new(
                shard,
                2,
                Arc::from("v1"),
                channel.clone(),
                1 << 20,
                &addr,
                None,
            )
        };
        let deadline = Some(std::time::Instant::now() + Duration::from_secs(10));

        // alone
        let ctx = CallContext {
            deadline,
            request_id: Some(Arc::from("req-alone")),
            ..Default::default()
        };
        let r = copy(0).search(spec(), ctx).await.expect("the peer answers");
        assert_eq!(r.hits, vec![(0, 1.0)]);

        // two shards of one request on the same peer: one batch RPC
        let batch = CallBatch::new();
        let ctx = CallContext {
            deadline,
            batch: Some(batch.clone()),
            request_id: Some(Arc::from("req-batch")),
            ..Default::default()
        };
        let a = copy(3).search(spec(), ctx.clone());
        let b = copy(4).search(spec(), ctx);
        batch.send();
        let (a, b) = futures::future::join(a, b).await;
        assert_eq!(a.unwrap().hits, vec![(3, 1.0)]);
        assert_eq!(b.unwrap().hits, vec![(4, 1.0)]);

        // no id: none invented
        let ctx = CallContext {
            deadline,
            ..Default::default()
        };
        copy(5).search(spec(), ctx).await.expect("the peer answers");

        let seen = recorder.seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                ("search", Some("req-alone".to_string())),
                ("batch", Some("req-batch".to_string())),
                ("search", None),
            ]
        );
        server.abort();
    }
}
