//! The node's root span (`node{node_id}`) over everything a node serves.
//! tokio tasks and actix arbiters do not inherit the span that spawned
//! them, and a server handles each connection on a task of its own, so
//! every server and long-running task of a node is put under the span
//! explicitly: `api::server::run` runs inside it, every gRPC service (the
//! public one, the internal data and ops services, and `cluster`'s Raft and
//! Control services) is wrapped in `InNodeSpan`, the HTTP app instruments
//! each request, and the background loops are spawned in it. Every log line and span of the node
//! then carries node_id, which tells nodes apart in one log stream.
//!
//! Owns: the span and the service wrapper. Must not touch: what the
//! services do.

use tonic::codegen::{Context, Poll, Service};
use tonic::server::NamedService;
use tracing::instrument::{Instrument, Instrumented};

/// The root span of node `node_id`.
pub fn node_span(node_id: u64) -> tracing::Span {
    tracing::info_span!("node", node_id)
}

/// A tonic service whose every call runs inside `span` (the node's).
#[derive(Clone)]
pub struct InNodeSpan<S> {
    inner: S,
    span: tracing::Span,
}

impl<S> InNodeSpan<S> {
    pub fn new(inner: S, span: tracing::Span) -> Self {
        InNodeSpan { inner, span }
    }
}

impl<S, R> Service<R> for InNodeSpan<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let _in_span = self.span.enter();
        self.inner.call(request).instrument(self.span.clone())
    }
}

impl<S: NamedService> NamedService for InNodeSpan<S> {
    const NAME: &'static str = S::NAME;
}
