//! A real `funnel serve` process on a small trained bundle, driven through
//! its HTTP and gRPC APIs.

mod support;

use funnel::features::CfLookup;
use funnel::ids::item_key;
use funnel::proto::public::funnel_client::FunnelClient;
use funnel::proto::public::{Item, RecommendRequest, UpsertItemsRequest};
use serde_json::json;
use support::*;

fn rec(http: &Http, node: &NodeProc, user: &str, k: u32) -> serde_json::Value {
    rec_at(http, node, user, k, 0)
}

fn rec_at(http: &Http, node: &NodeProc, user: &str, k: u32, ts: i64) -> serde_json::Value {
    let body = json!({"user_id": user, "k": k, "deadline_ms": 2000, "seed": 7, "context": {"timestamp": ts}});
    let (s, v) = http.post(&node.url("/v1/recommend"), body);
    assert_eq!(s, 200, "{v}");
    v
}

#[test]
fn recommend_click_upsert_delete_through_both_apis() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = small_bundle(&tmp.path().join("bundle"), 11, 2);
    let node = NodeProc::start(Some(&bundle), &tmp.path().join("node"), &[], &[]);
    let http = Http::default();

    let (s, ready) = http.get(&node.url("/readyz"));
    assert_eq!(s, 200, "{ready}");
    assert_eq!(ready["model_version"], "test-seed-11");

    let user = "u000001";
    let first = rec(&http, &node, user, 10);
    let ids = item_ids(&first);
    assert_eq!(ids.len(), 10, "{first}");
    assert_eq!(first["model_version"], "test-seed-11");
    assert_eq!(first["coverage"], 1.0);
    assert!(first["timings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["stage"] == "rank"));
    assert!(first["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| !i["sources"].as_array().unwrap().is_empty()));

    // gRPC answers the same request identically
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let grpc_ids: Vec<String> = rt.block_on(async {
        let mut c = FunnelClient::connect(format!("http://{}", node.grpc))
            .await
            .unwrap();
        let r = c
            .recommend(RecommendRequest {
                user_id: user.into(),
                k: 10,
                deadline_ms: 2000,
                seed: 7,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        r.items.into_iter().map(|i| i.item_id).collect()
    });
    assert_eq!(grpc_ids, ids);

    // a click on X: X disappears and X's item-CF neighbours rise. The
    // click and both requests happen just after the user's last known
    // event, as they would live.
    let (_, u) = http.get(&node.url(&format!("/v1/users/{user}")));
    let last = u["recent"][0]["timestamp"]
        .as_i64()
        .expect("the user has history");
    let model = funnel::model::ServingModel::load(&bundle).unwrap().model;
    let wide_before = item_ids(&rec_at(&http, &node, user, 100, last + 120));
    let x = wide_before[20].clone();
    let mut neighbours = Vec::new();
    model
        .cf
        .for_each_neighbour(item_key(&x), &mut |k, _| neighbours.push(k));
    let neighbour_ids: Vec<String> = neighbours
        .iter()
        .filter_map(|k| {
            model
                .item_index(*k)
                .map(|i| model.items.ids[i as usize].clone())
        })
        .take(10)
        .collect();
    assert!(!neighbour_ids.is_empty());
    let click = json!({"events": [{"user_id": user, "item_id": x, "kind": "click", "timestamp": last + 60}]});
    let (s, v) = http.post(&node.url("/v1/events"), click);
    assert_eq!((s, v["accepted"].as_u64()), (200, Some(1)), "{v}");
    let wide_after = item_ids(&rec_at(&http, &node, user, 100, last + 120));
    assert!(!wide_after.contains(&x), "the clicked item is filtered");
    let mean_rank = |list: &[String]| -> f64 {
        neighbour_ids
            .iter()
            .map(|n| list.iter().position(|i| i == n).unwrap_or(150) as f64)
            .sum::<f64>()
            / neighbour_ids.len() as f64
    };
    assert!(
        mean_rank(&wide_after) < mean_rank(&wide_before),
        "neighbours of {x} rise: mean rank {} -> {}",
        mean_rank(&wide_before),
        mean_rank(&wide_after)
    );
    let (s, u) = http.get(&node.url(&format!("/v1/users/{user}")));
    assert_eq!(s, 200);
    assert_eq!(u["recent"][0]["item_id"], x.as_str());

    // an upserted item is searchable at once; a deleted one is gone
    let top = &wide_after[0];
    let shard_vec = {
        let b = funnel::bundle::Bundle::open(&bundle, &Default::default()).unwrap();
        let key = item_key(top);
        let sh = b
            .load_shard(funnel::ids::shard_of(key, model.shard_count))
            .unwrap();
        let row = sh.keys.iter().position(|k| *k == key).unwrap();
        sh.vectors.row(row).to_vec()
    };
    rt.block_on(async {
        let mut c = FunnelClient::connect(format!("http://{}", node.grpc))
            .await
            .unwrap();
        let n = c
            .upsert_items(UpsertItemsRequest {
                items: vec![Item {
                    item_id: "brand-new".into(),
                    vector: shard_vec.clone(),
                    categories: vec!["drama".into()],
                    ..Default::default()
                }],
            })
            .await
            .unwrap()
            .into_inner()
            .upserted;
        assert_eq!(n, 1);
    });
    let with_new = rec(&http, &node, user, 50);
    let entry = with_new["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["item_id"] == "brand-new")
        .cloned();
    let entry = entry.unwrap_or_else(|| panic!("upserted item is recommended: {with_new}"));
    assert!(
        entry["sources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "ann" || s == "fresh"),
        "{entry}"
    );
    let (s, v) = http.call(
        &node.url("/v1/items/delete"),
        Some(json!({"item_ids": ["brand-new"]}).to_string()),
        None,
    );
    assert_eq!((s, v["deleted"].as_u64()), (200, Some(1)), "{v}");
    assert!(!item_ids(&rec(&http, &node, user, 50)).contains(&"brand-new".to_string()));

    // a user nobody has seen still gets an answer, and events make it personal
    let stranger = rec(&http, &node, "nobody-knows-me", 10);
    assert_eq!(item_ids(&stranger).len(), 10);
    let (s, _) = http.post(
        &node.url("/v1/events"),
        json!({"events": [{"user_id": "nobody-knows-me", "item_id": ids[0], "kind": "like"}]}),
    );
    assert_eq!(s, 200);
    let after = rec(&http, &node, "nobody-knows-me", 10);
    assert!(
        after["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["sources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s == "itemcf")),
        "{after}"
    );

    let (s, m) = http.call(&node.url("/metrics"), None, None);
    assert_eq!(s, 200);
    let text = m.as_str().unwrap_or_default().to_string();
    for needle in [
        "funnel_stage_duration_seconds_bucket",
        "funnel_recall_candidates",
        "funnel_coverage",
        "funnel_cpu_seconds_total",
    ] {
        assert!(text.contains(needle), "/metrics has {needle}");
    }
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = small_bundle(&tmp.path().join("bundle"), 12, 1);
    let node = NodeProc::start(
        Some(&bundle),
        &tmp.path().join("node"),
        &[],
        &[("FUNNEL_API__MAX_BATCH", "5")],
    );
    let http = Http::default();
    let err = |v: &serde_json::Value| {
        (
            v["error"]["code"].as_str().unwrap_or("").to_string(),
            v["error"]["message"].as_str().unwrap_or("").to_string(),
        )
    };

    let (s, v) = http.post(
        &node.url("/v1/items"),
        json!({"items": [{"item_id": "bad", "vector": [1.0, 2.0]}]}),
    );
    assert_eq!(s, 400);
    let (code, msg) = err(&v);
    assert_eq!(code, "invalid_argument");
    assert!(
        msg.contains("items[0].vector") && msg.contains("dimension 2"),
        "{msg}"
    );
    let (s, v) = http.post(
        &node.url("/v1/recommend"),
        json!({"user_id": "u000001", "k": 100000}),
    );
    assert_eq!(s, 400);
    assert!(err(&v).1.starts_with("k:"), "{v}");
    let (s, v) = http.post(&node.url("/v1/recommend"), json!({"user_id": ""}));
    assert_eq!(s, 400, "{v}");
    let (s, v) = http.post(
        &node.url("/v1/events"),
        json!({"events": [{"user_id": "u", "item_id": "i", "kind": "hover"}]}),
    );
    assert_eq!(s, 400);
    assert!(err(&v).1.contains("events[0].kind"), "{v}");
    let six: Vec<_> = (0..6)
        .map(|i| json!({"user_id": "u", "item_id": format!("i{i}"), "kind": "view"}))
        .collect();
    let (s, v) = http.post(&node.url("/v1/events"), json!({ "events": six }));
    assert_eq!(s, 413, "{v}");
    assert_eq!(err(&v).0, "resource_exhausted");
    let (s, v) = http.call(&node.url("/v1/recommend"), Some("{not json".into()), None);
    assert_eq!(s, 400, "{v}");
    assert_eq!(err(&v).0, "invalid_argument");
    let (s, v) = http.post(
        &node.url("/v1/recommend"),
        json!({"user_id": "u1", "surprise": 1}),
    );
    assert_eq!(s, 400, "unknown fields are refused: {v}");
    let huge = format!("{{\"user_id\":\"{}\"}}", "x".repeat(5 * 1024 * 1024));
    let (s, v) = http.call(&node.url("/v1/recommend"), Some(huge), None);
    assert_eq!(s, 413, "{v}");
    let (s, v) = http.get(&node.url("/v1/nowhere"));
    assert_eq!(s, 404, "{v}");

    // gRPC: NaN vector and oversized message
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = FunnelClient::connect(format!("http://{}", node.grpc))
            .await
            .unwrap();
        let dim = 16;
        let mut v = vec![0.5f32; dim];
        v[3] = f32::NAN;
        let e = c
            .upsert_items(UpsertItemsRequest {
                items: vec![Item {
                    item_id: "nan".into(),
                    vector: v,
                    ..Default::default()
                }],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        assert!(e.message().contains("items[0].vector[3]"), "{e}");
        let big = Item {
            item_id: "big".into(),
            title: "t".repeat(5 * 1024 * 1024),
            ..Default::default()
        };
        let e = c
            .upsert_items(UpsertItemsRequest { items: vec![big] })
            .await
            .unwrap_err();
        assert!(
            matches!(
                e.code(),
                tonic::Code::ResourceExhausted | tonic::Code::OutOfRange
            ),
            "{e:?}"
        );
    });
    // nothing changed: neither bad item exists
    let (_, r) = http.post(
        &node.url("/v1/recommend"),
        json!({"user_id": "u000002", "k": 200, "deadline_ms": 2000}),
    );
    let ids = item_ids(&r);
    assert!(!ids.iter().any(|i| i == "bad" || i == "nan" || i == "big"));

    // admin needs the token when one is configured (this node has none: allowed)
    let (s, _) = http.post(
        &node.url("/v1/admin/publish"),
        json!({"bundle": "/definitely/not/a/bundle"}),
    );
    assert_eq!(
        s, 409,
        "a bundle that cannot be loaded is refused and the node keeps serving"
    );
    let (s, _) = http.get(&node.url("/readyz"));
    assert_eq!(s, 200);
}

#[test]
fn admin_operations_need_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = small_bundle(&tmp.path().join("bundle"), 13, 1);
    let node = NodeProc::start(
        Some(&bundle),
        &tmp.path().join("node"),
        &[],
        &[("FUNNEL_API__ADMIN_TOKEN", "s3cret")],
    );
    let http = Http::default();
    let body = json!({"bundle": bundle.display().to_string()}).to_string();
    let (s, v) = http.call(&node.url("/v1/admin/publish"), Some(body.clone()), None);
    assert_eq!(s, 401, "{v}");
    let (s, v) = http.call(
        &node.url("/v1/admin/publish"),
        Some(body.clone()),
        Some("wrong"),
    );
    assert_eq!(s, 401, "{v}");
    let (s, v) = http.call(&node.url("/v1/admin/publish"), Some(body), Some("s3cret"));
    assert_eq!(s, 200, "{v}");
}
