//! Running a node's front ends: `run(config, shutdown, on_ready)` starts
//! the node, the HTTP and gRPC servers, hands the bound addresses to
//! `on_ready`, and on `shutdown` stops accepting, drains, and flushes the
//! event log. All of it runs under the node's root span (`node_span`).

use super::{grpc, http};
use crate::config::NodeConfig;
use crate::node::Node;
use crate::telemetry::node_span::{node_span, InNodeSpan};
use actix_web::dev::Service as _;
use actix_web::{App, HttpServer};
use std::future::Future;
use std::net::SocketAddr;

/// What a started node tells its caller.
#[derive(Clone)]
pub struct Ready {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub node: Node,
}

/// Runs until `shutdown` resolves. Must be called inside an actix `System`
/// whose runtime is tokio multi-thread (see `block_on`).
pub async fn run<F>(
    config: NodeConfig,
    shutdown: F,
    on_ready: impl FnOnce(Ready),
) -> anyhow::Result<()>
where
    F: Future<Output = ()>,
{
    let span = node_span(config.node.id);
    tracing::Instrument::instrument(serve(config, shutdown, on_ready, span.clone()), span).await
}

/// `run`, inside the node's `span`; the servers and tasks it starts are put
/// under the span too (they do not inherit it).
async fn serve<F>(
    config: NodeConfig,
    shutdown: F,
    on_ready: impl FnOnce(Ready),
    span: tracing::Span,
) -> anyhow::Result<()>
where
    F: Future<Output = ()>,
{
    let node = Node::start(config.clone()).await?;
    let (stop_cluster, cluster_stopping) = tokio::sync::watch::channel(false);
    if config.is_cluster() {
        // the data and ops services beside Raft on the internal port are the
        // api's to build; the node only hosts them
        let (for_rpc, me, token) = (node.clone(), config.node.id, config.api.admin_token.clone());
        let fault_injection = config.cluster.as_ref().is_some_and(|c| c.fault_injection);
        let span = span.clone();
        let services = move |routes: tonic::service::Routes,
                             faults: &crate::cluster::FaultInjector,
                             max: usize| {
            routes
                .add_service(InNodeSpan::new(
                    super::internal::shard_data_service(for_rpc.clone(), max),
                    span.clone(),
                ))
                .add_service(InNodeSpan::new(
                    super::bundle_files::bundle_files_service(for_rpc.clone(), max),
                    span.clone(),
                ))
                .add_service(InNodeSpan::new(
                    super::admin_service::admin_service(for_rpc),
                    span.clone(),
                ))
                .add_service(InNodeSpan::new(
                    super::fault_service::fault_service(me, fault_injection, token, faults.clone()),
                    span.clone(),
                ))
        };
        let link =
            crate::node::start_cluster(node.clone(), &config, cluster_stopping, services).await?;
        tracing::info!(node_id = config.node.id, internal = %link.raft.internal_addr(), "joined the cluster");
    }
    let max = config.api.max_message_bytes;
    let for_http = node.clone();
    let http_span = span.clone();
    let server = HttpServer::new(move || {
        let n = for_http.clone();
        let span = http_span.clone();
        // the HTTP workers are arbiters of their own: each request is put
        // under the node's span here
        App::new()
            .wrap_fn(move |req, srv| tracing::Instrument::instrument(srv.call(req), span.clone()))
            .configure(move |c| http::configure(c, n, max))
    })
    .workers(config.api.http_workers.max(1))
    .disable_signals()
    .shutdown_timeout(5)
    .bind(&config.api.http)
    .map_err(|e| anyhow::anyhow!("api.http: cannot listen on {}: {e}", config.api.http))?;
    let http_addr = *server
        .addrs()
        .first()
        .ok_or_else(|| anyhow::anyhow!("api.http: no address bound"))?;
    let server = server.run();
    let http_handle = server.handle();
    let http_task = actix_rt::spawn(server);

    let listener = tokio::net::TcpListener::bind(&config.api.grpc)
        .await
        .map_err(|e| anyhow::anyhow!("api.grpc: cannot listen on {}: {e}", config.api.grpc))?;
    let grpc_addr = listener.local_addr()?;
    let (stop_grpc, grpc_stopped) = tokio::sync::oneshot::channel::<()>();
    let grpc_server = tonic::transport::Server::builder()
        .add_service(InNodeSpan::new(grpc::service(node.clone()), span.clone()))
        .serve_with_incoming_shutdown(crate::cluster::node::nodelay_incoming(listener), async {
            let _ = grpc_stopped.await;
        });
    let grpc_task = tokio::spawn(tracing::Instrument::in_current_span(grpc_server));

    tracing::info!(http = %http_addr, grpc = %grpc_addr, node_id = config.node.id, "funnel node serving");
    on_ready(Ready {
        http: http_addr,
        grpc: grpc_addr,
        node: node.clone(),
    });
    shutdown.await;

    tracing::info!("shutting down: draining requests");
    http_handle.stop(true).await;
    let _ = stop_cluster.send(true);
    let _ = stop_grpc.send(());
    let _ = grpc_task.await;
    let _ = http_task.await;
    if let Err(e) = node.flush().await {
        tracing::error!(error = %e, "flushing the event log at shutdown failed");
    }
    Ok(())
}

/// Runs `fut` in a fresh actix system on a multi-thread tokio runtime (the
/// gRPC server and blocking model loads need one).
pub fn block_on<T>(fut: impl Future<Output = T>) -> T {
    actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            // the cores this process may use: std reads the cgroup CPU quota,
            // so a node held to 0.4 of a core runs one worker instead of
            // two that wake each other for every task they hand over
            .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
            .enable_all()
            .build()
            .expect("a tokio runtime can be built")
    })
    .block_on(fut)
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
