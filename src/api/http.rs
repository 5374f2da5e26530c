//! The HTTP/JSON API: the same operations as the gRPC service, plus
//! /metrics, /healthz and /readyz.

use crate::node::Node;
use crate::service::types::{EventIn, ItemIn, RecommendQuery, ServiceError};
use actix_web::error::JsonPayloadError;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsBody {
    pub events: Vec<EventIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemsBody {
    pub items: Vec<ItemIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteBody {
    pub item_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    pub bundle: String,
}

#[derive(Serialize)]
struct Count {
    #[serde(skip_serializing_if = "Option::is_none")]
    accepted: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upserted: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted: Option<u32>,
}

/// Registers every route; `max_bytes` bounds JSON bodies.
pub fn configure(cfg: &mut web::ServiceConfig, node: Node, max_bytes: usize) {
    cfg.app_data(web::Data::new(node))
        .app_data(
            web::JsonConfig::default()
                .limit(max_bytes)
                .error_handler(json_error),
        )
        .app_data(web::PayloadConfig::default().limit(max_bytes))
        .route("/v1/recommend", web::post().to(recommend))
        .route("/v1/events", web::post().to(events))
        .route("/v1/items", web::post().to(upsert))
        .route("/v1/items", web::delete().to(delete))
        .route("/v1/items/delete", web::post().to(delete))
        .route("/v1/users/{id}", web::get().to(get_user))
        .route("/v1/items/{id}", web::get().to(get_item))
        .route("/v1/admin/publish", web::post().to(publish))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .default_service(web::to(not_found));
}

/// Malformed or oversized JSON gets the same error body as every other
/// failure, never a panic or an HTML page.
fn json_error(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let e = match &err {
        JsonPayloadError::OverflowKnownLength { .. } | JsonPayloadError::Overflow { .. } => {
            ServiceError::ResourceExhausted(format!(
                "request body too large: {err}; split it or raise api.max_message_bytes"
            ))
        }
        JsonPayloadError::ContentType => ServiceError::InvalidArgument(
            "send the body as JSON with Content-Type: application/json".into(),
        ),
        _ => ServiceError::InvalidArgument(format!("malformed JSON body: {err}")),
    };
    e.into()
}

fn observe(op: &str, ok: bool) {
    let m = crate::telemetry::metrics::metrics();
    m.requests
        .with_label_values(&[op, if ok { "ok" } else { "error" }])
        .inc();
}

async fn recommend(
    node: web::Data<Node>,
    body: web::Json<RecommendQuery>,
) -> Result<HttpResponse, ServiceError> {
    let r = node.recommend(body.into_inner()).await;
    observe("recommend", r.is_ok());
    Ok(HttpResponse::Ok().json(r?))
}

async fn events(
    node: web::Data<Node>,
    body: web::Json<EventsBody>,
) -> Result<HttpResponse, ServiceError> {
    let r = node.ingest_events(body.into_inner().events).await;
    observe("events", r.is_ok());
    Ok(HttpResponse::Ok().json(Count {
        accepted: Some(r?),
        upserted: None,
        deleted: None,
    }))
}

async fn upsert(
    node: web::Data<Node>,
    body: web::Json<ItemsBody>,
) -> Result<HttpResponse, ServiceError> {
    let r = node.upsert_items(body.into_inner().items).await;
    observe("upsert_items", r.is_ok());
    Ok(HttpResponse::Ok().json(Count {
        accepted: None,
        upserted: Some(r?),
        deleted: None,
    }))
}

async fn delete(
    node: web::Data<Node>,
    body: web::Json<DeleteBody>,
) -> Result<HttpResponse, ServiceError> {
    let r = node.delete_items(body.into_inner().item_ids).await;
    observe("delete_items", r.is_ok());
    Ok(HttpResponse::Ok().json(Count {
        accepted: None,
        upserted: None,
        deleted: Some(r?),
    }))
}

async fn get_user(
    node: web::Data<Node>,
    id: web::Path<String>,
) -> Result<HttpResponse, ServiceError> {
    let r = node.get_user(id.into_inner()).await;
    observe("get_user", r.is_ok());
    Ok(HttpResponse::Ok().json(r?))
}

async fn get_item(
    node: web::Data<Node>,
    id: web::Path<String>,
) -> Result<HttpResponse, ServiceError> {
    let r = node.get_item(id.into_inner());
    observe("get_item", r.is_ok());
    Ok(HttpResponse::Ok().json(r?))
}

async fn publish(
    node: web::Data<Node>,
    req: HttpRequest,
    body: web::Json<PublishBody>,
) -> Result<HttpResponse, ServiceError> {
    check_admin(
        &node,
        req.headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok()),
    )?;
    let version = node
        .publish_requested(body.into_inner().bundle.into())
        .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "model_version": version })))
}

/// Admin operations need `Authorization: Bearer <api.admin_token>` when a
/// token is configured.
pub fn check_admin(node: &Node, header: Option<&str>) -> Result<(), ServiceError> {
    if crate::auth::bearer_ok(header, &node.config().api.admin_token) {
        Ok(())
    } else {
        Err(ServiceError::Unauthenticated(
            "admin operations need the admin token (Authorization: Bearer TOKEN)".into(),
        ))
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(node: web::Data<Node>) -> HttpResponse {
    let h = node.health();
    if h.status == "serving" {
        HttpResponse::Ok().json(h)
    } else {
        HttpResponse::ServiceUnavailable().json(h)
    }
}

async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::telemetry::metrics::render())
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ServiceError> {
    Err(ServiceError::NotFound(format!(
        "no route {} {}; see /v1/recommend, /v1/events, /v1/items, /v1/items/ID, /v1/users/ID, /metrics, /healthz, /readyz",
        req.method(),
        req.path()
    )))
}
