//! The gRPC API (`proto/funnel.proto`): converts messages to the node's
//! own types and back; semantics live in `Node`.

use super::error::grpc_status;
use crate::node::Node;
use crate::proto::public;
use crate::proto::public::funnel_server::{Funnel, FunnelServer};
use crate::service::types::{ContextIn, EventIn, ItemIn, RecommendQuery};
use tonic::{Request, Response, Status};

pub struct FunnelService {
    node: Node,
}

/// The tonic service with explicit message size limits.
pub fn service(node: Node) -> FunnelServer<FunnelService> {
    let max = node.config().api.max_message_bytes;
    FunnelServer::new(FunnelService { node })
        .max_decoding_message_size(max)
        .max_encoding_message_size(max * 4)
}

fn observe(op: &str, ok: bool) {
    let m = crate::telemetry::metrics::metrics();
    m.requests
        .with_label_values(&[op, if ok { "ok" } else { "error" }])
        .inc();
}

#[tonic::async_trait]
impl Funnel for FunnelService {
    async fn recommend(
        &self,
        req: Request<public::RecommendRequest>,
    ) -> Result<Response<public::RecommendResponse>, Status> {
        let r = req.into_inner();
        let ctx = r.context.unwrap_or_default();
        let q = RecommendQuery {
            user_id: r.user_id,
            k: r.k,
            deadline_ms: r.deadline_ms,
            exclude_item_ids: r.exclude_item_ids,
            categories: r.categories,
            context: ContextIn {
                timestamp: ctx.timestamp,
                device: ctx.device,
            },
            seed: r.seed,
            request_id: r.request_id,
        };
        let out = self.node.recommend(q).await;
        observe("recommend", out.is_ok());
        let out = out.map_err(|e| grpc_status(&e))?;
        Ok(Response::new(public::RecommendResponse {
            items: out
                .items
                .into_iter()
                .map(|i| public::RecommendedItem {
                    item_id: i.item_id,
                    score: i.score,
                    sources: i.sources,
                    exploration: i.exploration,
                })
                .collect(),
            model_version: out.model_version,
            coverage: out.coverage,
            degraded: out.degraded.iter().map(ToString::to_string).collect(),
            timings: out
                .timings
                .into_iter()
                .map(|t| public::StageTiming {
                    stage: t.stage,
                    micros: t.micros,
                })
                .collect(),
            request_id: out.request_id,
        }))
    }

    async fn ingest_events(
        &self,
        req: Request<public::IngestEventsRequest>,
    ) -> Result<Response<public::IngestEventsResponse>, Status> {
        let events = req
            .into_inner()
            .events
            .into_iter()
            .map(EventIn::from)
            .collect();
        let out = self.node.ingest_events(events).await;
        observe("events", out.is_ok());
        Ok(Response::new(public::IngestEventsResponse {
            accepted: out.map_err(|e| grpc_status(&e))?,
        }))
    }

    async fn upsert_items(
        &self,
        req: Request<public::UpsertItemsRequest>,
    ) -> Result<Response<public::UpsertItemsResponse>, Status> {
        let items = req
            .into_inner()
            .items
            .into_iter()
            .map(|i| ItemIn {
                item_id: i.item_id,
                vector: i.vector,
                categories: i.categories,
                title: i.title,
                created_at: i.created_at,
            })
            .collect();
        let out = self.node.upsert_items(items).await;
        observe("upsert_items", out.is_ok());
        Ok(Response::new(public::UpsertItemsResponse {
            upserted: out.map_err(|e| grpc_status(&e))?,
        }))
    }

    async fn delete_items(
        &self,
        req: Request<public::DeleteItemsRequest>,
    ) -> Result<Response<public::DeleteItemsResponse>, Status> {
        let out = self.node.delete_items(req.into_inner().item_ids).await;
        observe("delete_items", out.is_ok());
        Ok(Response::new(public::DeleteItemsResponse {
            deleted: out.map_err(|e| grpc_status(&e))?,
        }))
    }

    async fn get_item(
        &self,
        req: Request<public::GetItemRequest>,
    ) -> Result<Response<public::GetItemResponse>, Status> {
        let out = self.node.get_item(req.into_inner().item_id);
        observe("get_item", out.is_ok());
        let i = out.map_err(|e| grpc_status(&e))?;
        Ok(Response::new(public::GetItemResponse {
            item_id: i.item_id,
            known: i.known,
            categories: i.categories,
            created_at: i.created_at,
            interactions: i.interactions,
            trending: i.trending,
        }))
    }

    async fn get_user(
        &self,
        req: Request<public::GetUserRequest>,
    ) -> Result<Response<public::GetUserResponse>, Status> {
        let out = self.node.get_user(req.into_inner().user_id).await;
        observe("get_user", out.is_ok());
        let u = out.map_err(|e| grpc_status(&e))?;
        Ok(Response::new(public::GetUserResponse {
            user_id: u.user_id,
            known: u.known,
            events: u.events,
            recent: u
                .recent
                .into_iter()
                .map(|r| public::RecentItem {
                    item_id: r.item_id,
                    kind: r.kind,
                    timestamp: r.timestamp,
                })
                .collect(),
            tastes: u
                .tastes
                .into_iter()
                .map(|t| public::CategoryTaste {
                    category: t.category,
                    weight: t.weight,
                })
                .collect(),
            has_vector: u.has_vector,
        }))
    }

    async fn health(
        &self,
        _: Request<public::HealthRequest>,
    ) -> Result<Response<public::HealthResponse>, Status> {
        let h = self.node.health();
        Ok(Response::new(public::HealthResponse {
            status: h.status,
            node_id: h.node_id,
            model_version: h.model_version,
            shards_local: h.shards_local,
            shards_total: h.shards_total,
        }))
    }
}
