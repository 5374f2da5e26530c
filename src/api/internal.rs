//! The data-plane half of the internal gRPC API (`ShardData` in
//! `proto/data.proto`): other nodes' coordinators search this node's
//! shard copies. Served on the cluster's internal port next to Raft.
//! Conversion only; the work is `Node::local_shard_search`. Each search RPC
//! runs in a `shard_rpc{request_id}` span (the coordinator's id, sent as
//! metadata: `routing::metadata`) and each search in a
//! `shard_search{shard_id}` child, so this node's part of a request can be
//! found by the id the coordinator logged.

use super::error::grpc_status;
use crate::node::Node;
use crate::proto::data::shard_data_server::{ShardData, ShardDataServer};
use crate::proto::data::{
    shard_search_outcome, FetchEventsRequest, ForwardEventsRequest, ForwardEventsResponse,
    ItemCountsRequest, ItemCountsResponse, PartitionEventsRequest, SearchFailure,
    ShardDigestRequest, ShardDigestResponse, ShardSearchBatch, ShardSearchBatchResponse,
    ShardSearchOutcome, ShardSearchRequest, ShardSearchResponse, UserStateRequest,
    UserStateResponse,
};
use crate::routing::batch::MAX_BATCH_SEARCHES;
use crate::routing::metadata::request_id_of;
use crate::routing::SearchSpec;
use crate::service::types::ServiceError;
use crate::telemetry::cpu::CpuTimed;
use crate::telemetry::metrics::metrics;
use futures::future::join_all;
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

pub struct ShardDataService {
    node: Node,
}

pub fn shard_data_service(
    node: Node,
    max_message_bytes: usize,
) -> ShardDataServer<ShardDataService> {
    ShardDataServer::new(ShardDataService { node })
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes)
}

/// Streams `batches` back to the caller from a task of their own (the
/// answer is built already; the caller reads at its pace).
fn stream_batches(
    batches: Vec<ForwardEventsRequest>,
) -> ReceiverStream<Result<ForwardEventsRequest, Status>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(
        async move {
            for batch in batches {
                if tx.send(Ok(batch)).await.is_err() {
                    return;
                }
            }
        }
        .in_current_span(),
    );
    ReceiverStream::new(rx)
}

fn bad(msg: String) -> Status {
    grpc_status(&ServiceError::InvalidArgument(msg))
}

/// The caller's request id for a span field ("-" when it sent none).
fn request_id_field<T>(request: &Request<T>) -> String {
    request_id_of(request).unwrap_or("-").to_string()
}

impl ShardDataService {
    /// One search, as `Search` and every item of `SearchBatch` answer it,
    /// in a `shard_search` span (a child of the call's span); a refused
    /// search is logged there, so with the request id.
    async fn search_one(&self, r: ShardSearchRequest) -> Result<ShardSearchResponse, Status> {
        let span = tracing::info_span!("shard_search", shard_id = r.shard);
        let answer = self.search_unlogged(r).instrument(span.clone()).await;
        if let Err(s) = &answer {
            span.in_scope(
                || tracing::debug!(code = ?s.code(), error = %s.message(), "shard search refused"),
            );
        }
        answer
    }

    async fn search_unlogged(&self, r: ShardSearchRequest) -> Result<ShardSearchResponse, Status> {
        if r.query.iter().any(|x| !x.is_finite()) {
            return Err(bad("query has a non-finite value".into()));
        }
        let max_k = self.node.config().recall.ann_k.max(1) * 4;
        if r.k as usize > max_k {
            return Err(bad(format!("k {} is above this node's limit {max_k}", r.k)));
        }
        let mut exclude = r.exclude;
        exclude.sort_unstable();
        let categories = if r.filter_categories {
            let mut cats = Vec::with_capacity(r.categories.len());
            for c in r.categories {
                cats.push(
                    u16::try_from(c)
                        .map_err(|_| bad(format!("category id {c} is out of range")))?,
                );
            }
            Some(Arc::new(cats))
        } else {
            None
        };
        let spec = SearchSpec {
            query: Arc::from(r.query),
            k: r.k as usize,
            exclude: Arc::new(exclude),
            categories,
            fetch: Arc::from(r.fetch),
        };
        let (res, model_version) = self
            .node
            .local_shard_search(r.shard, &r.model_version, spec)
            .await
            .map_err(|e| grpc_status(&e))?;
        let (dimension, vector_keys, vectors) = res.vectors.into_parts();
        let (keys, scores) = res.hits.into_iter().unzip();
        Ok(ShardSearchResponse {
            keys,
            scores,
            vector_keys,
            vectors,
            dimension: dimension as u32,
            node_id: self.node.config().node.id,
            model_version,
        })
    }
}

#[tonic::async_trait]
impl ShardData for ShardDataService {
    async fn search(
        &self,
        request: Request<ShardSearchRequest>,
    ) -> Result<Response<ShardSearchResponse>, Status> {
        metrics()
            .shard_searches_served
            .with_label_values(&["search"])
            .inc();
        let span = tracing::info_span!("shard_rpc", request_id = %request_id_field(&request));
        CpuTimed::new("rpc", self.search_one(request.into_inner()))
            .instrument(span)
            .await
            .map(Response::new)
    }

    async fn search_batch(
        &self,
        request: Request<ShardSearchBatch>,
    ) -> Result<Response<ShardSearchBatchResponse>, Status> {
        let request_id = request_id_field(&request);
        let searches = request.into_inner().searches;
        let span = tracing::info_span!(
            "shard_rpc",
            request_id = %request_id,
            searches = searches.len()
        );
        if searches.len() > MAX_BATCH_SEARCHES {
            return Err(bad(format!(
                "{} searches in one batch; send at most {MAX_BATCH_SEARCHES} per call",
                searches.len()
            )));
        }
        metrics()
            .shard_searches_served
            .with_label_values(&["batch"])
            .inc_by(searches.len() as u64);
        let answers = CpuTimed::new(
            "rpc",
            join_all(searches.into_iter().map(|r| self.search_one(r))),
        )
        .instrument(span)
        .await;
        let outcomes = answers
            .into_iter()
            .map(|a| ShardSearchOutcome {
                result: Some(match a {
                    Ok(ok) => shard_search_outcome::Result::Ok(ok),
                    Err(s) => shard_search_outcome::Result::Failed(SearchFailure {
                        code: s.code() as i32,
                        message: s.message().to_string(),
                    }),
                }),
            })
            .collect();
        Ok(Response::new(ShardSearchBatchResponse { outcomes }))
    }

    async fn forward_events(
        &self,
        request: Request<ForwardEventsRequest>,
    ) -> Result<Response<ForwardEventsResponse>, Status> {
        let r = request.into_inner();
        tracing::debug!(
            origin = r.origin_node,
            events = r.events.len(),
            "forwarded events"
        );
        let applied = self
            .node
            .ingest_forwarded_events(r.origin_node, r.origin_log, r.events)
            .await
            .map_err(|e| grpc_status(&e))?;
        Ok(Response::new(ForwardEventsResponse { applied }))
    }

    type FetchEventsStream = ReceiverStream<Result<ForwardEventsRequest, Status>>;

    async fn fetch_events(
        &self,
        request: Request<FetchEventsRequest>,
    ) -> Result<Response<Self::FetchEventsStream>, Status> {
        let r = request.into_inner();
        let max = match r.max_events {
            0 => crate::node::catchup::MAX_FETCH_EVENTS,
            n => n.min(crate::node::catchup::MAX_FETCH_EVENTS),
        } as usize;
        let keep = if r.filtered {
            let set = crate::node::PartitionSet::new(r.partition_count, &r.partitions)
                .map_err(|m| Status::invalid_argument(format!("FetchEvents: {m}")))?;
            Some(set)
        } else {
            None
        };
        let scanned = self
            .node
            .client_events_after(r.after_seq, max, crate::node::catchup::MAX_FETCH_SCAN, keep)
            .await
            .map_err(|e| grpc_status(&e))?;
        let origin_node = self.node.config().node.id;
        let origin_log = self.node.event_log_id();
        // every batch says how far the log was read; the caller moves its
        // position there only once the whole answer arrived, and an answer
        // without events still carries it
        let through_seq = scanned.through;
        let mut batches: Vec<ForwardEventsRequest> = scanned
            .events
            .chunks(crate::node::catchup::FETCH_BATCH)
            .map(|chunk| ForwardEventsRequest {
                origin_node,
                origin_log,
                events: chunk.iter().map(crate::node::catchup::to_wire).collect(),
                through_seq,
            })
            .collect();
        if batches.is_empty() {
            batches.push(ForwardEventsRequest {
                origin_node,
                origin_log,
                events: Vec::new(),
                through_seq,
            });
        }
        Ok(Response::new(stream_batches(batches)))
    }

    type FetchPartitionEventsStream = ReceiverStream<Result<ForwardEventsRequest, Status>>;

    async fn fetch_partition_events(
        &self,
        request: Request<PartitionEventsRequest>,
    ) -> Result<Response<Self::FetchPartitionEventsStream>, Status> {
        let batches = self
            .node
            .partition_events_for_peer(request.into_inner())
            .await
            .map_err(|e| grpc_status(&e))?;
        Ok(Response::new(stream_batches(batches)))
    }

    async fn fetch_item_counts(
        &self,
        request: Request<ItemCountsRequest>,
    ) -> Result<Response<ItemCountsResponse>, Status> {
        let answer = self
            .node
            .item_counts_for_peer(request.into_inner())
            .await
            .map_err(|e| grpc_status(&e))?;
        Ok(Response::new(answer))
    }

    async fn get_user_state(
        &self,
        request: Request<UserStateRequest>,
    ) -> Result<Response<UserStateResponse>, Status> {
        let r = request.into_inner();
        let state = self
            .node
            .user_state_for_peer(&r.user_id, r.partition)
            .map_err(|e| grpc_status(&e))?;
        let node_id = self.node.config().node.id;
        let response = match state {
            None => UserStateResponse {
                found: false,
                state: Vec::new(),
                node_id,
            },
            Some(s) => UserStateResponse {
                found: true,
                state: crate::routing::user_state::encode(&s).map_err(|e| {
                    grpc_status(&ServiceError::internal_from("encoding a user state", e))
                })?,
                node_id,
            },
        };
        Ok(Response::new(response))
    }

    async fn digest(
        &self,
        request: Request<ShardDigestRequest>,
    ) -> Result<Response<ShardDigestResponse>, Status> {
        let shard = request.into_inner().shard;
        let d = self
            .node
            .local_shard_digest(shard)
            .await
            .map_err(|e| grpc_status(&e))?;
        Ok(Response::new(d))
    }
}
