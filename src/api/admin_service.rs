//! The gRPC `Admin` service on the internal port: operator commands any
//! node answers (`funnel admin --addr INTERNAL ...`). Every call needs the
//! admin token when `api.admin_token` is set; `Control.Status`/`View` stay
//! open because they only read.
//!
//! Owns: the token check and conversions. Must not touch: what a publish
//! does (`Node::publish_cluster`).

use super::error::grpc_status;
use crate::node::Node;
use crate::proto::ops::admin_server::{Admin, AdminServer};
use crate::proto::ops::{PublishRequest, PublishResponse};
use crate::service::types::ServiceError;
use tonic::{Request, Response, Status};

pub struct AdminService {
    node: Node,
}

pub fn admin_service(node: Node) -> AdminServer<AdminService> {
    AdminServer::new(AdminService { node })
}

impl AdminService {
    fn check_token<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let want = &self.node.config().api.admin_token;
        if crate::auth::bearer_ok(crate::auth::presented(request), want) {
            Ok(())
        } else {
            Err(grpc_status(&ServiceError::Unauthenticated(
                "admin operations need the admin token: funnel admin --token TOKEN (or FUNNEL_ADMIN_TOKEN), metadata authorization: Bearer TOKEN".into(),
            )))
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        self.check_token(&request)?;
        let r = request.into_inner();
        if r.bundle.trim().is_empty() {
            return Err(grpc_status(&ServiceError::InvalidArgument(
                "bundle is empty; give the bundle directory as the node sees it".into(),
            )));
        }
        let staged = self
            .node
            .publish_cluster(r.bundle.into(), r.force)
            .await
            .map_err(|e| grpc_status(&e))?;
        Ok(Response::new(PublishResponse {
            model_version: staged.version,
            previous_version: staged.previous.unwrap_or_default(),
            source_node: staged.source_node,
            already_active: staged.already_active,
        }))
    }
}
