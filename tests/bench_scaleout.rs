//! `funnel bench scaleout` end to end: a one-node and a three-node cluster
//! of real `funnel serve` processes, every node confined to 0.4 of a core
//! by a cgroup quota, one short run at one rate each. A functional check
//! (the command confines, publishes, loads, measures and reports and then
//! cleans up), not a timed one: nothing here asserts speed.
//!
//! Needs root and a cgroup cpu controller. Without them the test says why
//! and stops, unless FUNNEL_REQUIRE_CGROUP=1 (set by .ci/run), where that
//! is a failure. Ports 16001-16203 (fixed, unique to this file).

mod support;

use std::path::Path;
use std::process::Command;

fn cgroup_cpu_available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not running as root".into());
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let found = funnel::bench::scaleout::cgroup::find_controller(&mounts, |p| {
        std::fs::read_to_string(p.join("cgroup.controllers")).ok()
    });
    found
        .map(|_| ())
        .ok_or_else(|| "no cgroup cpu controller is mounted".into())
}

fn leftover_groups() -> Vec<String> {
    let roots = ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup"];
    let mut out = Vec::new();
    for r in roots {
        if let Ok(entries) = std::fs::read_dir(r) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("funnel-scaleout-") {
                    if !Path::new(&format!("/proc/{pid}")).exists() {
                        out.push(format!("{r}/{name}"));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn scaleout_measures_one_and_three_confined_nodes_and_cleans_up() {
    if let Err(why) = cgroup_cpu_available() {
        if std::env::var("FUNNEL_REQUIRE_CGROUP").is_ok_and(|v| v == "1") {
            panic!("FUNNEL_REQUIRE_CGROUP=1 but this machine cannot confine nodes: {why}");
        }
        eprintln!("skipping: funnel bench scaleout needs root and a cgroup cpu controller ({why})");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let bundle = support::small_bundle(&tmp.path().join("bundle"), 11, 6);
    let out = Command::new(env!("CARGO_BIN_EXE_funnel"))
        .args(["bench", "scaleout", "--bundle"])
        .arg(&bundle)
        .args([
            "--nodes",
            "1,3",
            "--cpu",
            "0.4",
            "--qps",
            "20",
            "--duration",
            "3",
            "--warmup",
            "1",
            "--p99-ms",
            "5000",
            "--users",
            "synthetic:400",
            "--base-port",
            "16000",
            "--json",
            "--dir",
        ])
        .arg(tmp.path().join("so"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scaleout failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));

    // the share: 0.4 core as a 1 ms quota in the shortest period
    assert_eq!(report["share"]["quota_us"], 1000);
    assert_eq!(report["share"]["period_us"], 2500);
    assert_eq!(report["shards"], 6);
    let sizes = report["sizes"].as_array().unwrap();
    assert_eq!(sizes.len(), 2);
    for (size, want_nodes, want_r) in [(&sizes[0], 1, 1), (&sizes[1], 3, 2)] {
        assert_eq!(size["nodes"], want_nodes);
        assert_eq!(size["replication"], want_r);
        let runs = size["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 1, "one run per size with --qps");
        let run = &runs[0];
        assert_eq!(run["qps"], 20.0);
        let f = &run["figures"];
        assert_eq!(f["due"], 60, "20/s for 3 s");
        assert_eq!(f["sent"], f["due"]);
        assert_eq!(f["errors"], 0, "{run}");
        assert_eq!(run["coverage_mean"], 1.0, "every shard answered: {run}");
        let cpu = &run["cpu_per_request"];
        assert!(cpu["total_us"].as_f64().unwrap() > 0.0, "{run}");
        assert!(cpu["ann_us"].as_f64().unwrap() > 0.0, "{run}");
        let nodes = run["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), want_nodes as usize);
        let mut sum = 0.0;
        for n in nodes {
            sum += n["cpu_per_request"]["total_us"].as_f64().unwrap();
            // each node sat in its group: the kernel counted its periods
            assert!(n["throttled_fraction"].is_number(), "{n}");
        }
        let total = cpu["total_us"].as_f64().unwrap();
        assert!(
            (sum - total).abs() < 1e-6 * total.max(1.0),
            "{sum} vs {total}"
        );
        assert!(run["generator_cores"].as_f64().unwrap() > 0.0);
    }
    // node-to-node searches happened in the cluster and only there
    let rpc = |s: &serde_json::Value| s["runs"][0]["cpu_per_request"]["rpc_us"].as_f64().unwrap();
    assert_eq!(rpc(&sizes[0]), 0.0);
    assert!(rpc(&sizes[1]) > 0.0, "{}", sizes[1]);
    assert!(
        stderr.contains("pass") || stderr.contains("fail"),
        "{stderr}"
    );
    assert!(
        leftover_groups().is_empty(),
        "cgroups left behind: {:?}",
        leftover_groups()
    );
}
