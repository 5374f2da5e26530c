//! `funnel demo`: the README's main command. Generates the built-in data
//! set, trains a bundle, starts a serving node on it, shows a few users'
//! recommendations with provenance (and how one click changes them), then
//! keeps serving until Ctrl-C.

use crate::api::server::{block_on, run, shutdown_signal, Ready};
use crate::config::NodeConfig;
use crate::gen::{generate, GenParams};
use crate::node::types::{EventIn, RecommendQuery};
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
    let bundle = args.dir.join("bundle");
    println!(
        "2/3 training (ALS, item-CF, lists, GBDT ranker) into {}",
        bundle.display()
    );
    let summary = train(
        &ds,
        &TrainOptions {
            out: bundle.clone(),
            force: true,
            shards: args.shards,
            params: PipelineParams::default(),
            index: Default::default(),
            model_version: None,
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            metrics: serde_json::Value::Null,
        },
    )
    .map_err(anyhow::Error::msg)?;
    println!(
        "    model {} trained in {:.1}s",
        summary.model_version, summary.seconds
    );

    let mut config = NodeConfig::default();
    config.node.data_dir = args.dir.join("node");
    config.node.bundle = bundle;
    config.api.http = args.http.clone();
    config.api.grpc = args.grpc.clone();
    config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("3/3 starting a serving node");
    let users: Vec<String> = ds.users.ids().iter().take(3).cloned().collect();
    let exit = args.exit_after_examples;
    block_on(async move {
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
                println!("  curl -s -XPOST http://{}/v1/recommend -H 'content-type: application/json' -d '{{\"user_id\":\"{}\",\"k\":5}}'", ready.http, users.first().map(String::as_str).unwrap_or("u000000"));
                println!("  curl -s http://{}/metrics | grep funnel_", ready.http);
                if !exit {
                    println!("Ctrl-C to stop.");
                }
                let _ = done_tx.send(());
            });
        })
        .await
    })
}

async fn show_examples(ready: &Ready, users: &[String]) -> Result<()> {
    let node = &ready.node;
    for user in users {
        let r = node
            .recommend(RecommendQuery {
                user_id: user.clone(),
                k: 5,
                deadline_ms: 200,
                ..Default::default()
            })
            .await?;
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
        let before = node
            .recommend(RecommendQuery {
                user_id: user.clone(),
                k: 5,
                deadline_ms: 200,
                ..Default::default()
            })
            .await?;
        if let Some(clicked) = before.items.last() {
            node.ingest_events(vec![EventIn {
                user_id: user.clone(),
                item_id: clicked.item_id.clone(),
                kind: "click".into(),
                ..Default::default()
            }])
            .await?;
            let after = node
                .recommend(RecommendQuery {
                    user_id: user.clone(),
                    k: 5,
                    deadline_ms: 200,
                    ..Default::default()
                })
                .await?;
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
