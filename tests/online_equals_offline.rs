//! The server and the trainer compute the same thing: the evaluation
//! protocol run through a real `funnel serve` process's HTTP API gives the
//! metrics `funnel eval` computed offline for the same models.

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
    let Some(dir) = funnel::testdata::ml100k_dir("online_equals_offline") else {
        return;
    };
    let ds = load(&DataArgs::movielens(&dir)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let export = tmp.path().join("export");
    let opts = EvalOptions {
        variant: Variant::All,
        params: PipelineParams::default(),
        search: Search::None,
        progress: false,
        export: Some(export.clone()),
    };
    let report = run(&ds, &opts).unwrap();
    let exported: ExportedEval =
        serde_json::from_slice(&std::fs::read(export.join("requests.json")).unwrap()).unwrap();
    let offline = &exported.pipeline;
    assert_eq!(
        offline.ndcg10,
        report
            .rows
            .iter()
            .find(|r| r.model == "pipeline")
            .unwrap()
            .metrics
            .ndcg10
    );

    let node = NodeProc::start(
        Some(&export.join("bundle")),
        &tmp.path().join("node"),
        &[],
        &[],
    );
    let model = funnel::model::ServingModel::load(&export.join("bundle"))
        .unwrap()
        .model;
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
    for r in &exported.requests {
        let body = json!({"user_id": r.user_id, "k": 20, "deadline_ms": 10_000, "context": {"timestamp": r.timestamp}});
        let (s, v) = http.post(&node.url("/v1/recommend"), body);
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
    let online = evaluate(&lists, &targets, exported.n_catalog);
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
