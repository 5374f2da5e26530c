//! The server and the trainer compute the same thing: the evaluation
//! protocol run through a real `funnel serve` process's HTTP API gives the
//! metrics `funnel eval` computed offline for the same models — on one
//! node, and on a three-node cluster with the items in three shards and
//! each user's state on one node only, so two requests in three read their
//! user from another node.
//!
//! Ports 24000-24029 (the cluster).

mod support;

use funnel::dataset::split::Variant;
use funnel::eval::metrics::evaluate;
use funnel::eval::run::{run, EvalOptions, ExportedEval, Search};
use funnel::ingest::{load, DataArgs};
use funnel::training::pipeline::PipelineParams;
use serde_json::json;
use std::collections::HashMap;
use support::*;

#[test]
fn ml100k_metrics_through_the_server_match_offline_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let export = tmp.path().join("export");
    let Some(exported) = export_eval("online_equals_offline", &export) else {
        return;
    };
    let offline = &exported.pipeline;
    let node = NodeProc::start(
        Some(&export.join("bundle")),
        &tmp.path().join("node"),
        &[],
        &[],
    );
    let url = node.url("/v1/recommend");
    let online = online_metrics(&exported, &export.join("bundle"), |_| url.clone());
    assert_close(offline, &online);
}

/// Exports the protocol's test-phase models and requests from ml-100k
/// (None, having said why, when the data is not here).
fn export_eval(test: &str, export: &std::path::Path) -> Option<ExportedEval> {
    let dir = funnel::testdata::ml100k_dir(test)?;
    let ds = load(&DataArgs::movielens(&dir)).unwrap();
    let opts = EvalOptions {
        variant: Variant::All,
        params: PipelineParams::default(),
        search: Search::None,
        progress: false,
        export: Some(export.to_path_buf()),
    };
    let report = run(&ds, &opts).unwrap();
    let exported: ExportedEval =
        serde_json::from_slice(&std::fs::read(export.join("requests.json")).unwrap()).unwrap();
    assert_eq!(
        exported.pipeline.ndcg10,
        report
            .rows
            .iter()
            .find(|r| r.model == "pipeline")
            .unwrap()
            .metrics
            .ndcg10
    );
    Some(exported)
}

/// The protocol's metrics over the answers of the recommend endpoint
/// `url(i)` gives for request i (nothing may degrade).
fn online_metrics(
    exported: &ExportedEval,
    bundle: &std::path::Path,
    url: impl Fn(usize) -> String,
) -> funnel::eval::metrics::Metrics {
    let model = funnel::model::ServingModel::load(bundle).unwrap().model;
    let index: HashMap<&str, u32> = model
        .items
        .ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i as u32))
        .collect();
    assert_eq!(index.len(), exported.n_catalog);
    let http = Http::default();
    let mut lists = Vec::new();
    let mut targets = Vec::new();
    for (i, r) in exported.requests.iter().enumerate() {
        let body = json!({"user_id": r.user_id, "k": 20, "deadline_ms": 10_000, "context": {"timestamp": r.timestamp}});
        let (s, v) = http.post(&url(i), body);
        assert_eq!(s, 200, "{v}");
        assert!(
            v["degraded"].as_array().unwrap().is_empty(),
            "nothing may degrade here: {v}"
        );
        lists.push(
            item_ids(&v)
                .iter()
                .map(|id| index[id.as_str()])
                .collect::<Vec<u32>>(),
        );
        let mut t: Vec<u32> = r.targets.iter().map(|id| index[id.as_str()]).collect();
        t.sort_unstable();
        targets.push(t);
    }
    evaluate(&lists, &targets, exported.n_catalog)
}

fn assert_close(offline: &funnel::eval::metrics::Metrics, online: &funnel::eval::metrics::Metrics) {
    println!(
        "offline ndcg@10 {:.4} recall@20 {:.4} | online ndcg@10 {:.4} recall@20 {:.4}",
        offline.ndcg10, offline.recall20, online.ndcg10, online.recall20
    );
    // the only difference allowed is approximate (HNSW) versus exact search
    for (name, a, b) in [
        ("ndcg@10", offline.ndcg10, online.ndcg10),
        ("recall@20", offline.recall20, online.recall20),
        ("hr@10", offline.hr10, online.hr10),
    ] {
        assert!(
            (a - b).abs() <= 0.005,
            "{name}: offline {a:.4} vs online {b:.4}"
        );
    }
}

#[test]
fn ml100k_metrics_through_a_three_node_cluster_with_partitioned_users_match_offline_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let export = tmp.path().join("export");
    let Some(exported) = export_eval("online_equals_offline (three nodes)", &export) else {
        return;
    };
    const SHARDS: u32 = 3;
    let bundle = tmp.path().join("bundle3");
    funnel::bundle::reindex(
        &export.join("bundle"),
        &bundle,
        &funnel::bundle::ReindexOptions {
            shards: Some(SHARDS),
            model_version: Some("ml100k-eval-s3".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let rt = rt();
    let http = Http::default();
    let (members, _procs, _) = start_partitioned(
        tmp.path(),
        &NodePorts::layout(3, 24000),
        &bundle,
        SHARDS,
        (16, 1),
        "",
        &rt,
        std::time::Duration::from_secs(120),
    );
    let remote = |http: &Http| -> f64 {
        members
            .iter()
            .map(|m| {
                metric_value(
                    http,
                    &m.http,
                    "funnel_user_state_reads_total{source=\"remote\"}",
                )
            })
            .sum()
    };
    let before = remote(&http);
    // request i goes to node i mod 3
    let urls: Vec<String> = members
        .iter()
        .map(|m| format!("http://{}/v1/recommend", m.http))
        .collect();
    let online = online_metrics(&exported, &bundle, |i| urls[i % urls.len()].clone());
    let remote_reads = remote(&http) - before;
    let n = exported.requests.len() as f64;
    println!("{remote_reads} of {n} requests read their user from another node");
    assert!(
        remote_reads > n / 3.0,
        "only {remote_reads} of {n} requests read their user remotely; the test would not show the partitioning"
    );
    assert_close(&exported.pipeline, &online);
}
