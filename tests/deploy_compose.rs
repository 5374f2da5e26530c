//! The container deployment, for real: builds the images offline
//! (deploy/offline/build-images.sh, from this test build's funnel binary),
//! starts deploy/docker-compose.yml with an admin token (three nodes start
//! without a model; once they answer /healthz the one-shot job trains the
//! demo bundle and publishes it to the cluster; HAProxy in front), sends
//! recommendations through the load balancer over HTTP and gRPC, runs
//! `up` again, kills one node container and starts it again, later
//! disconnects another from the network and reconnects it, and tears
//! everything down (down -v) even when it fails.
//!
//! What must hold: the job exits 0 once its model is active, and every
//! node then serves exactly the job's `--model-version` (in /readyz, in
//! every recommend answer, HTTP and gRPC, and as the cluster's active
//! version); `up` again runs the job again without publishing anything
//! (the cluster has a model), and publishing the active bundle again is a
//! no-op while a publish without the token is refused. During and after
//! each fault: every recommend request through the load balancer answers
//! 200 (coverage 1, or below 1 with the degraded reasons) on that version,
//! the node's own answer within its deadline and the whole round trip
//! within the deadline plus the load balancer's failover bound (never a
//! hang, never a 5xx); no node log contains a panic; after each heal an
//! item upsert and reads succeed, and every shard's two copies have equal
//! digests. The Grafana dashboard may only use metric names the nodes
//! really export (scraped here from all three).
//!
//! Docker is required when FUNNEL_REQUIRE_DOCKER=1 (CI sets it); otherwise
//! a machine without a usable Docker engine skips this test and says why.
//! Host ports: two free ports in 17300-17399 for the load balancer.

mod support;

use funnel::bench::server_stats::parse_exposition;
use funnel::proto::public::funnel_client::FunnelClient;
use serde_json::json;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use support::{digests_converged, eventually, shard_digests, Http};

/// Compose project names of this test: the prefix and the test's pid.
const PROJECT_PREFIX: &str = "funneldeploy";
/// Shards of the demo bundle and cluster (deploy/compose/funnel.toml).
const SHARDS: u32 = 12;
/// Deadline of the recommend requests sent during the faults.
const DEADLINE_MS: u64 = 1000;
/// What the load balancer may add to a request when a node vanishes in the
/// middle of it: deploy/haproxy/haproxy.cfg gives up on a node after
/// `timeout server 2500ms` (recommend) and retries on another, whose answer
/// then takes up to the deadline again; connection attempts time out after
/// 500 ms.
const LB_FAILOVER_MS: u64 = 2500 + 500;
/// Scheduling slack for the node's own total time (the machine is shared).
const NODE_SLACK_MS: u64 = 250;
/// The admin token the compose file hands to the nodes and the job.
const ADMIN_TOKEN: &str = "deploy-compose-test-token";
/// How long the job may take to train and publish on a busy machine.
const JOB_TIMEOUT: Duration = Duration::from_secs(600);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs a command; its stdout, or an error with everything it printed.
fn run(cmd: &mut Command) -> Result<String, String> {
    let o = cmd
        .output()
        .map_err(|e| format!("{cmd:?} could not start: {e}"))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}",
            o.status,
            output_text(&o)
        ))
    }
}

fn docker(args: &[&str]) -> Result<String, String> {
    run(Command::new("docker").args(args))
}

/// The compose CLI: `docker-compose` (v1) or the `docker compose` plugin.
fn compose_cli() -> Result<Vec<String>, String> {
    if run(Command::new("docker-compose").arg("version")).is_ok() {
        return Ok(vec!["docker-compose".into()]);
    }
    if run(Command::new("docker").args(["compose", "version"])).is_ok() {
        return Ok(vec!["docker".into(), "compose".into()]);
    }
    Err("neither `docker-compose` nor `docker compose` works; install docker-compose".into())
}

/// Why Docker cannot be used here, if it cannot.
fn docker_unusable() -> Option<String> {
    if let Err(e) = docker(&["info", "--format", "{{.ServerVersion}}"]) {
        return Some(format!("the Docker engine is not reachable: {e}"));
    }
    compose_cli().err()
}

/// Two free host ports in this test's range.
fn free_ports() -> (u16, u16) {
    let mut free =
        (17300..17400).filter(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok());
    let a = free.next().expect("a free port in 17300-17399");
    let b = free.next().expect("two free ports in 17300-17399");
    (a, b)
}

/// A compose project: images, containers, network and volumes; all removed
/// when dropped (with the logs printed first when the test is failing).
struct Project {
    name: String,
    cli: Vec<String>,
    file: PathBuf,
    env: Vec<(String, String)>,
    images: Vec<String>,
}

impl Project {
    fn compose(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new(&self.cli[0]);
        cmd.args(&self.cli[1..])
            .args(["-p", &self.name, "-f"])
            .arg(&self.file)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        run(&mut cmd)
    }

    fn network(&self) -> String {
        format!("{}_funnel", self.name)
    }

    fn container(&self, service: &str) -> String {
        let id = self
            .compose(&["ps", "-q", service])
            .unwrap_or_else(|e| panic!("{e}"));
        let id = id.trim();
        assert!(!id.is_empty(), "no container for service {service}");
        id.to_string()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(logs) = self.compose(&["logs", "--no-color", "--tail", "60"]) {
                eprintln!("--- compose logs of {} ---\n{logs}", self.name);
            }
        }
        if let Err(e) = self.compose(&["down", "-v", "--remove-orphans", "-t", "5"]) {
            eprintln!("cleaning up {}: {e}", self.name);
        }
        for image in &self.images {
            let _ = docker(&["rmi", "-f", image]);
        }
    }
}

/// Projects left behind by earlier runs of this test that were killed
/// before their cleanup ran (their process is gone): taken down now so they
/// hold no ports or CPU.
fn remove_stale_projects(cli: &[String]) {
    let Ok(names) = docker(&[
        "ps",
        "-a",
        "--filter",
        "label=com.docker.compose.project",
        "--format",
        "{{.Label \"com.docker.compose.project\"}}",
    ]) else {
        return;
    };
    let stale: BTreeSet<&str> = names
        .lines()
        .filter(|n| {
            n.strip_prefix(PROJECT_PREFIX)
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect();
    for name in stale {
        eprintln!("removing {name}, left behind by an earlier run");
        drop(Project {
            name: name.to_string(),
            cli: cli.to_vec(),
            file: repo().join("deploy/docker-compose.yml"),
            env: Vec::new(),
            images: vec![format!("funnel:{name}"), format!("funnel-lb:{name}")],
        });
    }
}

/// A node container as the host reaches it (its address on the compose
/// network; it may change when the container restarts or reconnects).
struct NodeView {
    id: u64,
    container: String,
}

impl NodeView {
    fn ip(&self) -> Option<String> {
        let ip = docker(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &self.container,
        ])
        .ok()?;
        let ip = ip.trim();
        (!ip.is_empty()).then(|| ip.to_string())
    }

    fn http(&self) -> Option<String> {
        self.ip().map(|ip| format!("http://{ip}:8080"))
    }

    fn ready(&self, http: &Http) -> bool {
        self.http().is_some_and(|base| {
            http.try_call(&format!("{base}/readyz"), None, None)
                .is_ok_and(|(s, _)| s == 200)
        })
    }

    fn logs(&self) -> String {
        Command::new("docker")
            .args(["logs", &self.container])
            .output()
            .map(|o| output_text(&o))
            .unwrap_or_default()
    }
}

/// What one recommend call through the load balancer showed.
#[derive(Default)]
struct LoadReport {
    requests: usize,
    degraded: usize,
    worst: Duration,
    failures: Vec<String>,
}

/// Checks one recommend answer against the invariants; `None` when it holds.
fn recommend_violation(
    answer: Result<(u16, serde_json::Value), String>,
    took: Duration,
    deadline_ms: u64,
    version: &str,
) -> Option<String> {
    let (status, v) = match answer {
        Err(e) => return Some(format!("no answer: {e}")),
        Ok(a) => a,
    };
    if status != 200 {
        return Some(format!("status {status}: {v}"));
    }
    if v["model_version"] != version {
        return Some(format!(
            "model version {} instead of {version}",
            v["model_version"]
        ));
    }
    let coverage = v["coverage"].as_f64().unwrap_or(-1.0);
    let reasons = v["degraded"].as_array().map_or(0, Vec::len);
    if !(coverage == 1.0 || (0.0..1.0).contains(&coverage) && reasons > 0) {
        return Some(format!(
            "coverage {coverage} with {reasons} degraded reasons: {v}"
        ));
    }
    let node_total = v["timings"].as_array().and_then(|t| {
        t.iter()
            .find(|s| s["stage"] == "total")
            .and_then(|s| s["micros"].as_u64())
    });
    match node_total {
        None => return Some(format!("no total timing: {v}")),
        Some(us) if us / 1000 > deadline_ms + NODE_SLACK_MS => {
            return Some(format!(
                "the node took {us} us for a {deadline_ms} ms deadline"
            ))
        }
        Some(_) => {}
    }
    if took > Duration::from_millis(deadline_ms + LB_FAILOVER_MS) {
        return Some(format!(
            "the round trip took {took:?}, more than the deadline + {LB_FAILOVER_MS} ms"
        ));
    }
    None
}

/// Steady recommend traffic through the load balancer until `stop`; every
/// answer must come from model `version`.
fn load(lb: String, version: String, stop: Arc<AtomicBool>) -> JoinHandle<LoadReport> {
    std::thread::spawn(move || {
        let http = Http::default();
        let mut r = LoadReport::default();
        while !stop.load(Ordering::SeqCst) {
            let user = format!("u{:06}", (r.requests * 7919) % 5000);
            let body = json!({"user_id": user, "k": 10, "deadline_ms": DEADLINE_MS});
            let t0 = Instant::now();
            let answer = http.try_call(&format!("{lb}/v1/recommend"), Some(body.to_string()), None);
            let took = t0.elapsed();
            if answer
                .as_ref()
                .is_ok_and(|(_, v)| v["coverage"].as_f64().is_some_and(|c| c < 1.0))
            {
                r.degraded += 1;
            }
            if let Some(why) = recommend_violation(answer, took, DEADLINE_MS, &version) {
                r.failures.push(format!("{user}: {why}"));
            }
            r.worst = r.worst.max(took);
            r.requests += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    })
}

fn assert_load_held(phase: &str, r: &LoadReport) {
    println!(
        "{phase}: {} requests through the load balancer, {} degraded, worst round trip {:?}",
        r.requests, r.degraded, r.worst
    );
    assert!(
        r.requests >= 20,
        "{phase}: the load ran ({} requests)",
        r.requests
    );
    assert!(
        r.failures.is_empty(),
        "{phase}: {} of {} requests broke the invariants: {:#?}",
        r.failures.len(),
        r.requests,
        &r.failures[..r.failures.len().min(5)]
    );
}

fn wait_ready(http: &Http, node: &NodeView, what: &str) {
    assert!(
        eventually(Duration::from_secs(180), || node.ready(http)),
        "node {} never became ready {what}",
        node.id
    );
}

fn internal_addrs(nodes: &[NodeView]) -> Vec<(u64, String)> {
    nodes
        .iter()
        .filter_map(|n| n.ip().map(|ip| (n.id, format!("{ip}:7001"))))
        .collect()
}

/// After a heal: a fresh item upsert and reads succeed through the load
/// balancer, every node answers on model `version`, and all three nodes'
/// shard copies converge.
fn check_healed(http: &Http, lb: &str, nodes: &[NodeView], item: &str, version: &str) {
    let mut last = (0, json!(null));
    assert!(
        eventually(Duration::from_secs(30), || {
            last = http
                .try_call(
                    &format!("{lb}/v1/items"),
                    Some(
                        json!({"items": [{"item_id": item, "vector": vec![0.05f32; 64], "categories": ["deploy-test"]}]})
                            .to_string(),
                    ),
                    None,
                )
                .unwrap_or((0, json!(null)));
            last.0 == 200
        }),
        "the item upsert {item} never succeeded after the heal: {last:?}"
    );
    for n in nodes {
        let base = n.http().expect("a healed node has an address");
        let (s, v) = http.call(
            &format!("{base}/v1/recommend"),
            Some(json!({"user_id": "u000042", "k": 10, "deadline_ms": DEADLINE_MS}).to_string()),
            None,
        );
        assert_eq!(s, 200, "node {}: {v}", n.id);
        assert_eq!(v["coverage"], 1.0, "node {} after the heal: {v}", n.id);
        assert_eq!(
            v["model_version"], version,
            "node {} after the heal: {v}",
            n.id
        );
    }
    let (s, v) = http.call(&format!("{lb}/v1/users/u000042"), None, None);
    assert_eq!(s, 200, "{v}");
    let mut last = Default::default();
    assert!(
        eventually(Duration::from_secs(60), || {
            last = shard_digests(&internal_addrs(nodes), SHARDS);
            digests_converged(&last, SHARDS, 2)
        }),
        "shard copies did not converge after the heal: {last:?}"
    );
}

fn assert_no_panics(nodes: &[NodeView]) {
    for n in nodes {
        let logs = n.logs();
        assert!(!logs.is_empty(), "node {} has no logs", n.id);
        assert!(
            !logs.contains("panicked"),
            "node {} panicked:\n{}",
            n.id,
            logs.lines()
                .filter(|l| l.contains("panicked"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// `funnel admin --addr node1:7001 status --json`, run in a container on the
/// compose network (members are known by their service names there).
fn admin_status(project: &Project, image: &str) -> serde_json::Value {
    let out = docker(&[
        "run",
        "--rm",
        "--network",
        &project.network(),
        image,
        "admin",
        "--addr",
        "node1:7001",
        "status",
        "--json",
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("admin status is not JSON ({e}): {out}"))
}

/// `funnel admin --addr node1:7001 ARGS`, run in a container on the
/// compose network with `token` (if any): its output, or why it failed.
fn admin(
    project: &Project,
    image: &str,
    token: Option<&str>,
    args: &[&str],
) -> Result<String, String> {
    let net = project.network();
    let mut cmd = vec!["run", "--rm", "--network", net.as_str()];
    let env = token.map(|t| format!("FUNNEL_ADMIN_TOKEN={t}"));
    if let Some(e) = &env {
        cmd.extend(["-e", e.as_str()]);
    }
    cmd.extend([image, "admin", "--addr", "node1:7001"]);
    cmd.extend(args);
    docker(&cmd)
}

/// The `--model-version` the compose file's job trains (what the cluster
/// must serve once the job is done).
fn job_model_version() -> String {
    let text = std::fs::read_to_string(repo().join("deploy/docker-compose.yml"))
        .expect("the compose file exists");
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "--model-version" {
            if let Some(v) = words.next() {
                return v.to_string();
            }
        }
    }
    panic!("the compose file's job trains without --model-version")
}

/// The container of the one-shot job: found by label, since `compose ps`
/// lists exited containers only in some compose versions.
fn job_container(project: &Project) -> String {
    let out = docker(&[
        "ps",
        "-a",
        "-q",
        "--filter",
        &format!("label=com.docker.compose.project={}", project.name),
        "--filter",
        "label=com.docker.compose.service=demo-bundle",
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(ids.len(), 1, "one demo-bundle container: {out}");
    ids[0].to_string()
}

/// Waits until the job's container has exited after `started_after` (its
/// StartedAt differs, for a second run); answers its StartedAt and logs,
/// and fails when it exited non-zero or did not finish in time.
fn wait_job(project: &Project, started_after: Option<&str>) -> (String, String) {
    let deadline = Instant::now() + JOB_TIMEOUT;
    loop {
        let id = job_container(project);
        let state = docker(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}} {{.State.StartedAt}}",
            &id,
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let parts: Vec<&str> = state.split_whitespace().collect();
        if let [status, code, started] = parts.as_slice() {
            if *status == "exited" && Some(*started) != started_after {
                let logs = Command::new("docker")
                    .args(["logs", &id])
                    .output()
                    .map(|o| output_text(&o))
                    .unwrap_or_default();
                assert_eq!(*code, "0", "the demo-bundle job failed:\n{logs}");
                return (started.to_string(), logs);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the demo-bundle job did not finish within {JOB_TIMEOUT:?}: {state}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Metric names a dashboard expression refers to: funnel's own
/// (`funnel_*`) and the process counter it exports.
fn dashboard_metric_names(dashboard: &serde_json::Value) -> BTreeSet<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("expr" | "definition", serde_json::Value::String(s)) => {
                            out.push(s.clone())
                        }
                        _ => walk(x, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut exprs = Vec::new();
    walk(dashboard, &mut exprs);
    assert!(!exprs.is_empty(), "the dashboard has no expressions");
    exprs
        .iter()
        .flat_map(|e| {
            e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .filter(|t| t.starts_with("funnel_") || t.starts_with("process_"))
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Makes every node record each kind of metric the dashboard shows (a
/// labelled metric appears in /metrics only once it has a value), then
/// scrapes all three and checks the dashboard against what they export.
fn check_dashboard_metrics(http: &Http, nodes: &[NodeView]) {
    let mut exported = BTreeSet::new();
    for n in nodes {
        let base = n.http().expect("node address");
        // a deadline no shard can meet: a degraded answer
        let (s, v) = http.call(
            &format!("{base}/v1/recommend"),
            Some(json!({"user_id": "u000007", "k": 10, "deadline_ms": 1}).to_string()),
            None,
        );
        assert_eq!(s, 200, "{v}");
        // a request the node refuses: an error by kind
        let (s, v) = http.call(
            &format!("{base}/v1/recommend"),
            Some(json!({"user_id": "u000007", "k": 100000}).to_string()),
            None,
        );
        assert_eq!(s, 400, "{v}");
        let (s, v) = http.call(
            &format!("{base}/v1/events"),
            Some(
                json!({"events": [{"user_id": "u000007", "item_id": "i000003", "kind": "click"}]})
                    .to_string(),
            ),
            None,
        );
        assert_eq!(s, 200, "{v}");
        let (s, text) = http.call(&format!("{base}/metrics"), None, None);
        assert_eq!(s, 200);
        let text = text.as_str().expect("metrics are text");
        exported.extend(parse_exposition(text).into_iter().map(|m| m.name));
    }
    let text = std::fs::read_to_string(repo().join("deploy/grafana/funnel-dashboard.json"))
        .expect("the dashboard file exists");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let used = dashboard_metric_names(&dashboard);
    let missing: Vec<&String> = used.iter().filter(|m| !exported.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard uses metrics no node exports: {missing:?}; exported: {exported:?}"
    );
    println!(
        "dashboard: all {} metric names it uses are exported",
        used.len()
    );
}

#[test]
fn compose_cluster_behind_the_load_balancer_survives_a_kill_and_a_partition() {
    let required = std::env::var("FUNNEL_REQUIRE_DOCKER").as_deref() == Ok("1");
    if let Some(why) = docker_unusable() {
        if required {
            panic!("FUNNEL_REQUIRE_DOCKER=1 but {why}");
        }
        eprintln!("skipping the compose deployment test: {why} (FUNNEL_REQUIRE_DOCKER=1 makes this a failure)");
        return;
    }
    let t0 = Instant::now();
    let cli = compose_cli().expect("checked above");
    remove_stale_projects(&cli);
    let name = format!("{PROJECT_PREFIX}{}", std::process::id());
    let image = format!("funnel:{name}");
    let lb_image = format!("funnel-lb:{name}");
    let (http_port, grpc_port) = free_ports();
    let project = Project {
        name: name.clone(),
        cli,
        file: repo().join("deploy/docker-compose.yml"),
        env: vec![
            ("FUNNEL_IMAGE".into(), image.clone()),
            ("FUNNEL_LB_IMAGE".into(), lb_image.clone()),
            ("FUNNEL_LB_HTTP".into(), format!("127.0.0.1:{http_port}")),
            ("FUNNEL_LB_GRPC".into(), format!("127.0.0.1:{grpc_port}")),
            ("FUNNEL_ADMIN_TOKEN".into(), ADMIN_TOKEN.into()),
        ],
        images: vec![image.clone(), lb_image.clone()],
    };

    // --- build offline and start -------------------------------------------
    run(
        Command::new(repo().join("deploy/offline/build-images.sh")).args([
            "--funnel",
            env!("CARGO_BIN_EXE_funnel"),
            "--tag",
            &image,
            "--lb-tag",
            &lb_image,
        ]),
    )
    .unwrap_or_else(|e| panic!("building the images offline: {e}"));
    println!("images built after {:?}", t0.elapsed());
    // blocks until the nodes answer /healthz and the job has started
    let version = job_model_version();
    project
        .compose(&["up", "-d"])
        .unwrap_or_else(|e| panic!("compose up: {e}"));
    println!("compose up after {:?}", t0.elapsed());
    let nodes: Vec<NodeView> = (1..=3)
        .map(|id| NodeView {
            id,
            container: project.container(&format!("node{id}")),
        })
        .collect();
    let http = Http::default();
    // the job trains, publishes and exits once the model is active
    let (job_started, job_logs) = wait_job(&project, None);
    assert!(
        job_logs.contains(&format!("active on the cluster: {version}")),
        "the job did not report {version} active:\n{job_logs}"
    );
    println!(
        "demo-bundle job published {version} after {:?}",
        t0.elapsed()
    );
    // what the operator sees of the publish (training progress left out)
    for line in job_logs.lines().filter(|l| {
        ["staged", "active", "retrying", "waiting for", "models:"]
            .iter()
            .any(|w| l.contains(w))
    }) {
        println!("  job: {line}");
    }
    for n in &nodes {
        wait_ready(&http, n, "after the publish");
        let base = n.http().expect("node address");
        let (s, v) = http.call(&format!("{base}/readyz"), None, None);
        assert_eq!(
            (s, &v["model_version"]),
            (200, &json!(version)),
            "node {}: {v}",
            n.id
        );
    }
    let lb = format!("http://127.0.0.1:{http_port}");
    let mut last = (0, json!(null));
    assert!(
        eventually(Duration::from_secs(30), || {
            last = http
                .try_call(
                    &format!("{lb}/v1/recommend"),
                    Some(
                        json!({"user_id": "u000001", "k": 10, "deadline_ms": DEADLINE_MS})
                            .to_string(),
                    ),
                    None,
                )
                .unwrap_or((0, json!(null)));
            last.0 == 200 && last.1["coverage"] == 1.0
        }),
        "the load balancer never answered a recommendation with full coverage: {last:?}"
    );
    assert_eq!(last.1["model_version"], version, "{}", last.1);

    // --- gRPC through the load balancer ------------------------------------
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = FunnelClient::connect(format!("http://127.0.0.1:{grpc_port}"))
            .await
            .expect("gRPC through the load balancer connects");
        for user in ["u000001", "u000002", "u000003"] {
            let r = c
                .recommend(funnel::proto::public::RecommendRequest {
                    user_id: user.into(),
                    k: 10,
                    deadline_ms: DEADLINE_MS as u32,
                    ..Default::default()
                })
                .await
                .expect("gRPC recommend through the load balancer")
                .into_inner();
            assert_eq!(r.items.len(), 10, "{r:?}");
            assert_eq!(r.coverage, 1.0, "{r:?}");
            assert_eq!(r.model_version, version);
        }
    });

    // --- the operator's view -------------------------------------------------
    let status = admin_status(&project, &image);
    let roles: Vec<&str> = status["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["role"].as_str())
        .collect();
    assert_eq!(roles.len(), 3, "{status}");
    assert_eq!(
        roles.iter().filter(|r| **r == "Leader").count(),
        1,
        "{status}"
    );
    assert_eq!(status["view"]["shard_map"]["shards"], SHARDS, "{status}");
    assert_eq!(
        status["view"]["models"]["active"]["version"], version,
        "{status}"
    );
    assert!(status["view"]["models"]["staged"].is_null(), "{status}");

    // --- publishing again -----------------------------------------------------
    // the active bundle again: a no-op; without the token: refused
    let again = admin(
        &project,
        &image,
        Some(ADMIN_TOKEN),
        &["publish", "/bundles/demo"],
    )
    .unwrap_or_else(|e| panic!("publishing the active bundle again: {e}"));
    assert!(again.contains("already active"), "{again}");
    let refused = admin(&project, &image, None, &["publish", "/bundles/demo"])
        .expect_err("a publish without the admin token must be refused");
    assert!(refused.contains("Unauthenticated"), "{refused}");
    // `up` again: the job runs again and leaves the cluster's model alone
    project
        .compose(&["up", "-d"])
        .unwrap_or_else(|e| panic!("compose up again: {e}"));
    let (_, job_logs) = wait_job(&project, Some(&job_started));
    assert!(
        job_logs.contains(&format!("the cluster already serves {version}")),
        "the job run again did not leave the model alone:\n{job_logs}"
    );
    let status = admin_status(&project, &image);
    assert_eq!(
        status["view"]["models"]["active"]["version"], version,
        "{status}"
    );
    assert!(status["view"]["models"]["staged"].is_null(), "{status}");
    println!("up again: the job published nothing, {version} still active");

    // --- kill one node container, start it again ----------------------------
    let stop = Arc::new(AtomicBool::new(false));
    let load_thread = load(lb.clone(), version.clone(), stop.clone());
    std::thread::sleep(Duration::from_millis(1500));
    docker(&["kill", &nodes[1].container]).unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_secs(5));
    docker(&["start", &nodes[1].container]).unwrap_or_else(|e| panic!("{e}"));
    wait_ready(
        &http,
        &nodes[1],
        "after its container was killed and started",
    );
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    assert_load_held("node 2 killed and restarted", &load_thread.join().unwrap());
    check_healed(&http, &lb, &nodes, "after-kill", &version);
    assert_no_panics(&nodes);

    // --- disconnect one node from the network, reconnect it -------------------
    let net = project.network();
    let stop = Arc::new(AtomicBool::new(false));
    let load_thread = load(lb.clone(), version.clone(), stop.clone());
    std::thread::sleep(Duration::from_millis(1500));
    docker(&["network", "disconnect", &net, &nodes[2].container]).unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_secs(6));
    // the service name must resolve to it again
    docker(&[
        "network",
        "connect",
        "--alias",
        "node3",
        &net,
        &nodes[2].container,
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    wait_ready(&http, &nodes[2], "after it was reconnected");
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    assert_load_held(
        "node 3 disconnected and reconnected",
        &load_thread.join().unwrap(),
    );
    check_healed(&http, &lb, &nodes, "after-partition", &version);

    let status = admin_status(&project, &image);
    let members = status["members"].as_array().expect("members");
    assert!(
        members.len() == 3 && members.iter().all(|m| m["error"].is_null()),
        "every member answers the operator after the heal: {status}"
    );

    check_dashboard_metrics(&http, &nodes);
    assert_no_panics(&nodes);
    println!("compose deployment test done after {:?}", t0.elapsed());
}
