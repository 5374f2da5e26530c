//! `funnel demo`: the README's main command. Generates the built-in data
//! set, trains a bundle, starts a local three-node cluster on it (the
//! configs of `cluster-configs/three-node/`; this process is node 1, the
//! others are child `funnel serve` processes), shows a few users'
//! recommendations with provenance (and how one click changes them), then
//! keeps serving until Ctrl-C. `--nodes 1` runs a single node instead.

use crate::api::server::{block_on, run, shutdown_signal, Ready};
use crate::config::NodeConfig;
use crate::gen::{generate, GenParams};
use crate::service::types::{EventIn, RecommendQuery};
use crate::training::pipeline::PipelineParams;
use crate::training::trainer::{train, TrainOptions};
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Working directory for the data, bundle and node state.
    #[arg(long, default_value = "funnel-demo")]
    pub dir: PathBuf,
    /// HTTP address to serve on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: String,
    /// gRPC address to serve on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub grpc: String,
    /// Item shards in the bundle.
    #[arg(long, default_value_t = 2)]
    pub shards: u32,
    /// Stop after printing the examples instead of serving on.
    #[arg(long)]
    pub exit_after_examples: bool,
    /// 3: a local cluster from --cluster-configs; 1: a single node.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=3))]
    pub nodes: u32,
    /// The three node configs (node1.toml..node3.toml) of the local cluster.
    #[arg(long, default_value = "cluster-configs/three-node")]
    pub cluster_configs: PathBuf,
}

/// Child node processes, killed when the demo ends.
struct Children(Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The cluster's node configs with this demo's data directories and bundle.
fn cluster_configs(args: &DemoArgs, bundle: &std::path::Path) -> Result<Vec<NodeConfig>> {
    let env = std::collections::HashMap::new();
    let mut out = Vec::new();
    for n in 1..=3 {
        let path = args.cluster_configs.join(format!("node{n}.toml"));
        if !path.exists() {
            anyhow::bail!(
                "{} not found: run the demo from the repository root, pass --cluster-configs DIR, or use --nodes 1",
                path.display()
            );
        }
        let mut cfg = NodeConfig::load(Some(&path), &env, &Default::default())
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        cfg.node.data_dir = args.dir.join(format!("node-{n}"));
        cfg.node.bundle = bundle.to_path_buf();
        out.push(cfg);
    }
    Ok(out)
}

pub fn run_demo(args: &DemoArgs) -> Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let params = GenParams::default();
    println!(
        "1/3 generating the built-in data set ({} users, {} items, {} interactions)",
        params.users, params.items, params.interactions
    );
    let ds = generate(&params)?;
    let bundle = std::path::absolute(args.dir.join("bundle"))?;
    let cluster = if args.nodes > 1 {
        Some(cluster_configs(args, &bundle)?)
    } else {
        None
    };
    let shards = cluster
        .as_ref()
        .and_then(|c| c[0].cluster.as_ref())
        .map_or(args.shards, |c| c.shards);
    println!(
        "2/3 training (ALS, item-CF, lists, GBDT ranker) into {}",
        bundle.display()
    );
    let summary = train(
        &ds,
        &TrainOptions {
            out: bundle.clone(),
            force: true,
            shards,
            params: PipelineParams::default(),
            index: Default::default(),
            index_threads: 0,
            model_version: None,
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            metrics: serde_json::Value::Null,
        },
    )?;
    println!(
        "    model {} trained in {:.1}s",
        summary.model_version, summary.seconds
    );

    let mut children = Children(Vec::new());
    let mut others: Vec<String> = Vec::new();
    let config = match cluster {
        None => {
            let mut config = NodeConfig::default();
            config.node.data_dir = args.dir.join("node");
            config.node.bundle = bundle;
            config.api.http = args.http.clone();
            config.api.grpc = args.grpc.clone();
            config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("3/3 starting a serving node");
            config
        }
        Some(mut nodes) => {
            println!(
                "3/3 starting a three-node cluster ({} shards x {} replicas, configs from {})",
                shards,
                nodes[0].cluster.as_ref().map_or(0, |c| c.replication),
                args.cluster_configs.display()
            );
            let exe = std::env::current_exe()?;
            for cfg in nodes.iter().skip(1) {
                let path = args.dir.join(format!("node{}.toml", cfg.node.id));
                std::fs::write(&path, cfg.to_toml_string()?)
                    .with_context(|| format!("writing {}", path.display()))?;
                let log = std::fs::File::create(args.dir.join(format!("node{}.log", cfg.node.id)))?;
                let child = std::process::Command::new(&exe)
                    .arg("serve")
                    .arg("--config")
                    .arg(&path)
                    .env("RUST_LOG", "warn,openraft=off")
                    .stdout(std::process::Stdio::null())
                    .stderr(log)
                    .spawn()
                    .with_context(|| format!("starting node {}", cfg.node.id))?;
                println!(
                    "    node {} pid {} http {} (log {}/node{}.log)",
                    cfg.node.id,
                    child.id(),
                    cfg.api.http,
                    args.dir.display(),
                    cfg.node.id
                );
                children.0.push(child);
                others.push(format!("http://{}", cfg.api.http));
            }
            println!("    node 1 (this process) http {}", nodes[0].api.http);
            nodes.swap_remove(0)
        }
    };
    let users: Vec<String> = ds.users.ids().iter().take(3).cloned().collect();
    let exit = args.exit_after_examples;
    let admin_addr = config.cluster.as_ref().map(|c| c.internal.clone());
    let result = block_on(async move {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            if exit {
                let _ = done_rx.await;
            } else {
                shutdown_signal().await;
            }
        };
        run(config, shutdown, move |ready: Ready| {
            actix_rt::spawn(async move {
                if let Err(e) = show_examples(&ready, &users).await {
                    eprintln!("demo examples failed: {e}");
                }
                println!("\nserving: http://{}  (gRPC {})", ready.http, ready.grpc);
                if let Some(internal) = &admin_addr {
                    println!("  any node answers: {} too", others.join(", "));
                    println!("  funnel admin --addr {internal} status");
                }
                println!("  curl -s -XPOST http://{}/v1/recommend -H 'content-type: application/json' -d '{{\"user_id\":\"{}\",\"k\":5}}'", ready.http, users.first().map(String::as_str).unwrap_or("u000000"));
                println!("  curl -s http://{}/metrics | grep funnel_", ready.http);
                if !exit {
                    println!("Ctrl-C to stop.");
                }
                let _ = done_tx.send(());
            });
        })
        .await
    });
    drop(children);
    result
}

/// The demo's question: five recommendations for `user`.
async fn ask(
    node: &crate::node::Node,
    user: &str,
) -> Result<crate::service::types::Recommendation, crate::service::types::ServiceError> {
    node.recommend(RecommendQuery {
        user_id: user.to_string(),
        k: 5,
        deadline_ms: 200,
        ..Default::default()
    })
    .await
}

async fn show_examples(ready: &Ready, users: &[String]) -> Result<()> {
    let node = &ready.node;
    // a cluster needs a moment to elect a leader and load every shard
    let first = users.first().cloned().unwrap_or_default();
    let t0 = std::time::Instant::now();
    loop {
        let r = ask(node, &first).await;
        match r {
            Ok(r) if r.coverage >= 1.0 => break,
            _ if t0.elapsed() > std::time::Duration::from_secs(120) => {
                anyhow::bail!(
                    "the cluster did not serve every shard within 120 s; see the node logs"
                )
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
    for user in users {
        let r = ask(node, user).await?;
        println!(
            "\nuser {user} (model {}, coverage {:.2}):",
            r.model_version, r.coverage
        );
        for it in &r.items {
            println!(
                "  {:<10} score {:>7.3}  from {}{}",
                it.item_id,
                it.score,
                it.sources.join("+"),
                if it.exploration { " (exploration)" } else { "" }
            );
        }
    }
    // one click, and the next answer follows it
    if let Some(user) = users.first() {
        let before = ask(node, user).await?;
        if let Some(clicked) = before.items.last() {
            node.ingest_events(vec![EventIn {
                user_id: user.clone(),
                item_id: clicked.item_id.clone(),
                kind: "click".into(),
                ..Default::default()
            }])
            .await?;
            let after = ask(node, user).await?;
            println!("\nafter {user} clicks {}:", clicked.item_id);
            for it in &after.items {
                println!(
                    "  {:<10} score {:>7.3}  from {}",
                    it.item_id,
                    it.score,
                    it.sources.join("+")
                );
            }
        }
    }
    Ok(())
}
