//! A serving node's life: restarts after kill -9 (acknowledged events
//! survive, a torn log tail is cut), a disk that fails a write or fsync
//! (EIO through a failpoint: refused with a clear error, nothing
//! acknowledged lost), and model hot swap under load.

mod support;

use serde_json::json;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use support::*;

#[test]
fn acknowledged_events_survive_kill_9_and_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = small_bundle(&tmp.path().join("bundle"), 21, 1);
    let data = tmp.path().join("node");
    let http = Http::default();
    let mut node = NodeProc::start(Some(&bundle), &data, &[], &[]);
    let user = "fresh-user-1";
    for (i, item) in ["i000010", "i000011", "i000012"].iter().enumerate() {
        let e = json!({"events": [{"user_id": user, "item_id": item, "kind": "click", "timestamp": 1_800_000_000 + i as i64}]});
        let (s, v) = http.post(&node.url("/v1/events"), e);
        assert_eq!(s, 200, "{v}");
    }
    node.kill9();

    // a crash mid-append leaves half a record at the end of the last segment
    let seg = std::fs::read_dir(data.join("events"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .max()
        .expect("an event segment exists");
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&[0x40, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3])
        .unwrap();
    drop(f);

    let node = NodeProc::start(Some(&bundle), &data, &[], &[]);
    let (s, u) = http.get(&node.url(&format!("/v1/users/{user}")));
    assert_eq!(s, 200, "{u}");
    let recent: Vec<&str> = u["recent"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["item_id"].as_str())
        .collect();
    assert_eq!(
        recent,
        vec!["i000012", "i000011", "i000010"],
        "replayed after restart: {u}"
    );
    // and the log keeps working after the cut
    let (s, _) = http.post(
        &node.url("/v1/events"),
        json!({"events": [{"user_id": user, "item_id": "i000013", "kind": "view"}]}),
    );
    assert_eq!(s, 200);
    let (_, u) = http.get(&node.url(&format!("/v1/users/{user}")));
    assert_eq!(u["events"], 4);
}

/// The recent items of `user` on `node`, newest first.
fn recent_items(http: &Http, node: &NodeProc, user: &str) -> Vec<String> {
    let (s, u) = http.get(&node.url(&format!("/v1/users/{user}")));
    assert_eq!(s, 200, "{u}");
    u["recent"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["item_id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn an_fsync_error_refuses_events_until_restart_and_loses_no_acknowledged_one() {
    if !cfg!(feature = "failpoints") {
        // `cargo test` at the workspace root (CI's command) builds funnel
        // with the feature, as chaos-tests asks for it; `-p funnel` alone
        // does not
        eprintln!("SKIPPED: funnel was built without the `failpoints` feature; run `cargo test` at the workspace root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let bundle = small_bundle(&tmp.path().join("bundle"), 23, 1);
    let data = tmp.path().join("node");
    let http = Http::default();
    let event = |item: &str| json!({"events": [{"user_id": "disk-user", "item_id": item, "kind": "click"}]});
    // the second fsync of the event log fails, as a failing disk's would
    let node = NodeProc::start(
        Some(&bundle),
        &data,
        &[],
        &[
            ("FUNNEL_EVENTS__FSYNC", "always"),
            ("FUNNEL_FAILPOINTS", "eventlog-fsync-eio=1*off->return"),
        ],
    );
    let (s, v) = http.post(&node.url("/v1/events"), event("i000010"));
    assert_eq!(s, 200, "the first event is acknowledged: {v}");
    let (s, v) = http.post(&node.url("/v1/events"), event("i000011"));
    assert_eq!(s, 500, "an fsync error is not an acknowledgement: {v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Input/output error"),
        "{v}"
    );
    // every later append is refused, with what to do, and changes nothing
    let (s, v) = http.post(&node.url("/v1/events"), event("i000012"));
    assert_eq!(s, 503, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("until the node restarts"),
        "{v}"
    );
    assert!(!recent_items(&http, &node, "disk-user").contains(&"i000012".to_string()));
    // recommends still work
    let (s, v) = http.post(
        &node.url("/v1/recommend"),
        json!({"user_id": "u000001", "k": 5}),
    );
    assert_eq!(s, 200, "{v}");
    drop(node);

    // restarted on a good disk: the acknowledged event is there, the log
    // takes events again (the unacknowledged one may or may not be: it was
    // written, only its fsync failed)
    let node = NodeProc::start(
        Some(&bundle),
        &data,
        &[],
        &[("FUNNEL_EVENTS__FSYNC", "always")],
    );
    let recent = recent_items(&http, &node, "disk-user");
    assert!(recent.contains(&"i000010".to_string()), "{recent:?}");
    assert!(!recent.contains(&"i000012".to_string()), "{recent:?}");
    let (s, v) = http.post(&node.url("/v1/events"), event("i000013"));
    assert_eq!(s, 200, "{v}");
    assert_eq!(recent_items(&http, &node, "disk-user")[0], "i000013");
}

#[test]
fn hot_swap_under_load_fails_no_request() {
    let tmp = tempfile::tempdir().unwrap();
    let v1 = small_bundle(&tmp.path().join("v1"), 31, 2);
    let v2 = small_bundle(&tmp.path().join("v2"), 32, 2);
    let node = NodeProc::start(Some(&v1), &tmp.path().join("node"), &[], &[]);
    let url = node.url("/v1/recommend");
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let versions = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..3)
        .map(|w| {
            let (stop, ok, versions, failures, url) = (stop.clone(), ok.clone(), versions.clone(), failures.clone(), url.clone());
            std::thread::spawn(move || {
                let http = Http::default();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let body = json!({"user_id": format!("u{:06}", (w * 97 + i) % 400), "k": 10, "deadline_ms": 2000});
                    let (s, v) = http.post(&url, body);
                    if s == 200 && v["items"].as_array().is_some_and(|a| a.len() == 10) {
                        ok.fetch_add(1, Ordering::Relaxed);
                        versions.lock().unwrap().insert(v["model_version"].as_str().unwrap_or("").to_string());
                    } else {
                        failures.lock().unwrap().push(format!("{s}: {v}"));
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let http = Http::default();
    assert!(eventually(std::time::Duration::from_secs(30), || ok
        .load(Ordering::Relaxed)
        > 50));
    let (s, v) = http.post(
        &node.url("/v1/admin/publish"),
        json!({"bundle": v2.display().to_string()}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["model_version"], "test-seed-32");
    let after_swap = ok.load(Ordering::Relaxed);
    assert!(eventually(std::time::Duration::from_secs(30), || ok
        .load(Ordering::Relaxed)
        > after_swap + 50));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed requests across the swap, e.g. {:?}",
        failures.len(),
        failures.first()
    );
    let seen = versions.lock().unwrap().clone();
    assert!(
        seen.contains("test-seed-31") && seen.contains("test-seed-32"),
        "{seen:?}"
    );
    let (_, ready) = http.get(&node.url("/readyz"));
    assert_eq!(ready["model_version"], "test-seed-32");
}
