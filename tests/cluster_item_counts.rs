//! Item counters on a real cluster: three `funnel serve` processes, each
//! counting the events it accepted and pulling the counts of the events the
//! others accepted (`node::item_counts`), not receiving every event.
//!
//! Clicks on one item sent to two different nodes show on all three as the
//! same count (`GET /v1/items/ID`), the bundle's count plus every click; a
//! node restarted rebuilds that count (it pulls again from each node's
//! serving mark), and a restarted origin is not counted twice by the
//! others.
//!
//! Ports 24100-24129 only (fixed, so they do not collide with other test
//! files).

mod support;

use funnel::dataset::EventKind;
use funnel::features::event_strength;
use serde_json::json;
use std::time::Duration;
use support::{eventually, recommend, rt, small_bundle, start_partitioned, Http, NodePorts};

const LIMIT: Duration = Duration::from_secs(60);

/// `interactions` of `item` as the node at `node_http` reports it.
fn interactions(http: &Http, node_http: &str, item: &str) -> Option<f64> {
    let (s, v) = http.get(&format!("http://{node_http}/v1/items/{item}"));
    (s == 200).then(|| v["interactions"].as_f64()).flatten()
}

/// Waits until every node in `nodes` reports `want` for `item`, then
/// through a few more pull rounds (a count added twice would show).
fn assert_counted(http: &Http, nodes: &[&str], item: &str, want: f64, when: &str) {
    let close = |v: Option<f64>| v.is_some_and(|v| (v - want).abs() < 1e-3 * want.max(1.0));
    for n in nodes {
        assert!(
            eventually(LIMIT, || close(interactions(http, n, item))),
            "{when}: node {n} counts {:?} for {item}, want {want}",
            interactions(http, n, item)
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    for n in nodes {
        let v = interactions(http, n, item);
        assert!(close(v), "{when}: node {n} moved on to {v:?}, want {want}");
    }
}

fn click(http: &Http, node_http: &str, user: &str, item: &str) {
    let (s, v) = http.post(
        &format!("http://{node_http}/v1/events"),
        json!({"events": [{"user_id": user, "item_id": item, "kind": "click"}]}),
    );
    assert_eq!(s, 200, "click through {node_http}: {v}");
}

#[test]
fn every_node_counts_every_accepted_event_once_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = small_bundle(&tmp.path().join("bundle"), 41, 4);
    let rt = rt();
    let http = Http::default();
    let (members, procs, _) = start_partitioned(
        tmp.path(),
        &NodePorts::layout(3, 24100),
        &bundle,
        4,
        (16, 2),
        "",
        &rt,
        Duration::from_secs(90),
    );
    let mut procs: Vec<Option<support::NodeProc>> = procs.into_iter().map(Some).collect();
    let nodes: Vec<&str> = members.iter().map(|m| m.http.as_str()).collect();
    let rec = recommend(&http, nodes[0], "u000001").expect("node 1 recommends");
    let item = support::item_ids(&rec)
        .first()
        .cloned()
        .expect("a recommendation");
    let base = interactions(&http, nodes[0], &item).expect("the item's counters");
    for n in &nodes {
        assert_eq!(interactions(&http, n, &item), Some(base), "node {n} before");
    }
    // an id the catalogue does not hold answers as unknown, not an error
    let (s, v) = http.get(&format!("http://{}/v1/items/no-such-item", nodes[1]));
    assert_eq!((s, v["known"].as_bool()), (200, Some(false)), "{v}");

    // no weight sent: the kind's default
    let strength = f64::from(event_strength(EventKind::Click, 0.0));
    for i in 0..5 {
        click(&http, nodes[0], &format!("u{:06}", 10 + i), &item);
    }
    for i in 0..3 {
        click(&http, nodes[1], &format!("u{:06}", 20 + i), &item);
    }
    let want = base + 8.0 * strength;
    assert_counted(
        &http,
        &nodes,
        &item,
        want,
        "after 8 clicks through nodes 1 and 2",
    );

    // node 3 accepted none of them: after a restart it pulls them again
    drop(procs[2].take());
    procs[2] = Some(support::NodeProc::start_config(
        &members[2].config,
        &members[2].data_dir,
    ));
    assert_counted(&http, &nodes, &item, want, "after node 3 restarted");

    // node 1 accepted five: restarted, it replays its own log and the
    // others go on from where they were in it
    drop(procs[0].take());
    procs[0] = Some(support::NodeProc::start_config(
        &members[0].config,
        &members[0].data_dir,
    ));
    assert_counted(&http, &nodes, &item, want, "after node 1 restarted");

    // and counting goes on after the restarts
    click(&http, nodes[2], "u000030", &item);
    click(&http, nodes[0], "u000031", &item);
    assert_counted(
        &http,
        &nodes,
        &item,
        want + 2.0 * strength,
        "after two more clicks",
    );
}
