//! Validation of a complete `NodeConfig`: every rule that a single field's
//! type cannot express (ranges, orderings, cross-field and cluster rules).
//!
//! Owns: the rules and their messages. Each problem is one line that starts
//! with the dotted key it is about and says what is allowed, and all
//! problems are reported together so an operator fixes a file in one pass.
//! Must not touch: parsing or the environment. The only I/O is reading
//! the configured TLS files, which `cluster::tls` checks (PEM, key fits
//! the certificate, the CA accepts it, its SAN covers this node's host).

use super::node::{ClusterConfig, NodeConfig};
use crate::net::{parse_host_port, HostPort};
use crate::tls::{self, NodeTls};
use std::collections::HashMap;

/// Largest id a node can have: TOML integers are signed 64-bit, so a larger
/// id could not be written back by `--print-config`.
pub const MAX_NODE_ID: u64 = i64::MAX as u64;

/// Smallest event-log segment worth having: below this every batch gets a
/// file of its own.
pub const MIN_SEGMENT_BYTES: u64 = 4096;

/// Smallest request body limit: a recommend request with a few ids must fit.
pub const MIN_MESSAGE_BYTES: usize = 1024;

/// Budget shares may add up to slightly more than 1.0 through decimal
/// rounding (0.1 + 0.2 + ...); this much is tolerated.
const BUDGET_EPSILON: f64 = 1e-9;

/// Every problem with `cfg`, each naming its key; empty when it is valid.
pub fn problems(cfg: &NodeConfig) -> Vec<String> {
    let mut out = Vec::new();
    check_node(cfg, &mut out);
    check_api(cfg, &mut out);
    check_recall(cfg, &mut out);
    check_budget(cfg, &mut out);
    check_workers(cfg, &mut out);
    if let Err(msg) = cfg.rerank.validate() {
        // RerankConfig's messages start with the field name
        out.push(format!("rerank.{msg}"));
    }
    // its messages start with `telemetry.<key>`
    out.extend(cfg.telemetry.problems());
    if let Some(cluster) = &cfg.cluster {
        check_cluster(cfg.node.id, cluster, &mut out);
    }
    check_bind_clashes(cfg, &mut out);
    out
}

fn at_least<T: PartialOrd + std::fmt::Display + Copy>(
    out: &mut Vec<String>,
    key: &str,
    value: T,
    min: T,
    why: &str,
) {
    if value < min {
        out.push(format!("{key} = {value}: must be at least {min}{why}"));
    }
}

fn check_node(cfg: &NodeConfig, out: &mut Vec<String>) {
    let id = cfg.node.id;
    if !(1..=MAX_NODE_ID).contains(&id) {
        out.push(format!(
            "node.id = {id}: must be between 1 and {MAX_NODE_ID}; give every node its own id"
        ));
    }
    if cfg.node.data_dir.as_os_str().is_empty() {
        out.push(
            "node.data_dir is empty: set the directory for the event log and raft log, \
             e.g. data_dir = \"funnel-data/node-1\" or --data-dir DIR"
                .into(),
        );
    }
}

fn check_address(out: &mut Vec<String>, key: &str, text: &str, allow_port_zero: bool) {
    match parse_host_port(text) {
        Err(e) => out.push(format!("{key} = {text:?}: {e}")),
        Ok(hp) if hp.port == 0 && !allow_port_zero => out.push(format!(
            "{key} = {text:?}: port 0 cannot be dialled; other nodes and clients need the real port"
        )),
        Ok(_) => {}
    }
}

fn check_api(cfg: &NodeConfig, out: &mut Vec<String>) {
    let api = &cfg.api;
    check_address(out, "api.http", &api.http, true);
    check_address(out, "api.grpc", &api.grpc, true);
    at_least(out, "api.default_k", api.default_k, 1, "");
    if api.max_k < api.default_k {
        out.push(format!(
            "api.max_k = {}: must be at least api.default_k ({})",
            api.max_k, api.default_k
        ));
    }
    at_least(out, "api.max_batch", api.max_batch, 1, "");
    at_least(
        out,
        "api.max_message_bytes",
        api.max_message_bytes,
        MIN_MESSAGE_BYTES,
        " (the default is 4194304)",
    );
    at_least(
        out,
        "api.default_deadline_ms",
        api.default_deadline_ms,
        1,
        "",
    );
    if api.max_deadline_ms < api.default_deadline_ms {
        out.push(format!(
            "api.max_deadline_ms = {}: must be at least api.default_deadline_ms ({})",
            api.max_deadline_ms, api.default_deadline_ms
        ));
    }
    at_least(out, "api.http_workers", api.http_workers, 1, "");
}

fn check_recall(cfg: &NodeConfig, out: &mut Vec<String>) {
    let r = &cfg.recall;
    for (key, k) in [
        ("recall.ann_k", r.ann_k),
        ("recall.itemcf_k", r.itemcf_k),
        ("recall.popular_k", r.popular_k),
        ("recall.fresh_k", r.fresh_k),
        ("recall.rules_k", r.rules_k),
    ] {
        at_least(out, key, k, 1, "");
    }
    let merge = &r.merge;
    at_least(out, "recall.merge.budget", merge.budget, 1, "");
    let names = ["ann", "itemcf", "popular", "fresh", "rules"];
    for (i, q) in merge.quotas.iter().enumerate() {
        if q.min > q.max {
            out.push(format!(
                "recall.merge.quotas[{i}] ({} path): min = {} exceeds max = {}; min must be <= max",
                names[i], q.min, q.max
            ));
        }
    }
    let min_total: usize = merge.quotas.iter().map(|q| q.min).sum();
    if merge.budget >= 1 && min_total > merge.budget {
        out.push(format!(
            "recall.merge.quotas: the minimums add up to {min_total}, more than \
             recall.merge.budget = {}; later paths would lose their guaranteed slots, \
             so lower the minimums or raise the budget",
            merge.budget
        ));
    }
}

fn check_budget(cfg: &NodeConfig, out: &mut Vec<String>) {
    let b = &cfg.budget;
    let shares = [
        ("budget.user", b.user),
        ("budget.recall", b.recall),
        ("budget.rank", b.rank),
        ("budget.rerank", b.rerank),
    ];
    let mut all_in_range = true;
    for (key, share) in shares {
        // written so that NaN fails too
        if !(share > 0.0 && share <= 1.0) {
            all_in_range = false;
            out.push(format!(
                "{key} = {share}: a stage's share of the deadline must be in (0, 1]"
            ));
        }
    }
    let sum: f64 = shares.iter().map(|(_, s)| s).sum();
    if all_in_range && sum > 1.0 + BUDGET_EPSILON {
        out.push(format!(
            "budget: user + recall + rank + rerank = {sum}, must be at most 1.0 \
             (they are shares of one request deadline)"
        ));
    }
}

fn check_workers(cfg: &NodeConfig, out: &mut Vec<String>) {
    at_least(out, "ranking.workers", cfg.ranking.workers, 1, "");
    at_least(out, "ranking.batch_rows", cfg.ranking.batch_rows, 1, "");
    at_least(
        out,
        "events.segment_bytes",
        cfg.events.segment_bytes,
        MIN_SEGMENT_BYTES,
        " (the default is 67108864)",
    );
    at_least(
        out,
        "events.user_partitions",
        cfg.events.user_partitions,
        1,
        "",
    );
    if !(10..=60_000).contains(&cfg.events.ack_timeout_ms) {
        out.push(format!(
            "events.ack_timeout_ms = {}: must be between 10 and 60000 (the default is 1000)",
            cfg.events.ack_timeout_ms
        ));
    }
    at_least(
        out,
        "shards.search_threads",
        cfg.shards.search_threads,
        1,
        "",
    );
    if cfg.shards.expansion_search > 65_536 {
        out.push(format!(
            "shards.expansion_search = {}: must be at most 65536 (0 uses the bundle's, set by funnel train --expansion-search)",
            cfg.shards.expansion_search
        ));
    }
}

fn check_cluster(node_id: u64, c: &ClusterConfig, out: &mut Vec<String>) {
    // a bind address: port 0 is fine for tests that start nodes on any port
    check_address(out, "cluster.internal", &c.internal, true);
    if !c.join.is_empty() {
        check_address(out, "cluster.join", &c.join, false);
        if c.bootstrap {
            out.push(
                "cluster.join is set but so is cluster.bootstrap; a bootstrap node starts the cluster, \
                 a joining node asks an existing member: keep one of them"
                    .to_string(),
            );
        }
    }

    let mut first_index_of_id: HashMap<u64, usize> = HashMap::new();
    let mut first_index_of_addr: HashMap<(String, u16), (usize, &str)> = HashMap::new();
    for (i, m) in c.members.iter().enumerate() {
        if !(1..=MAX_NODE_ID).contains(&m.id) {
            out.push(format!(
                "cluster.members[{i}].id = {}: must be between 1 and {MAX_NODE_ID}",
                m.id
            ));
        }
        if let Some(&j) = first_index_of_id.get(&m.id) {
            out.push(format!(
                "cluster.members[{i}].id = {}: the same id as cluster.members[{j}]; \
                 every node needs its own id",
                m.id
            ));
        } else {
            first_index_of_id.insert(m.id, i);
        }
        // advertised addresses: others dial them, so port 0 is meaningless
        for (field, addr) in [
            ("internal", &m.internal),
            ("http", &m.http),
            ("grpc", &m.grpc),
        ] {
            let key = format!("cluster.members[{i}].{field}");
            check_address(out, &key, addr, false);
            if let Ok(hp) = parse_host_port(addr) {
                if let Some((j, other)) = first_index_of_addr.get(&(hp.host.clone(), hp.port)) {
                    out.push(format!(
                        "{key} = {addr:?}: the same address as cluster.members[{j}].{other}; \
                         every endpoint needs its own port"
                    ));
                } else {
                    first_index_of_addr.insert((hp.host, hp.port), (i, field));
                }
            }
        }
    }
    if !c.members.is_empty() && !first_index_of_id.contains_key(&node_id) {
        let ids: Vec<String> = c.members.iter().map(|m| m.id.to_string()).collect();
        out.push(format!(
            "node.id = {node_id}: not in cluster.members (ids {}); add this node to members \
             or fix node.id / --node-id",
            ids.join(", ")
        ));
    }

    at_least(out, "cluster.shards", c.shards, 1, "");
    if c.members.is_empty() {
        at_least(out, "cluster.replication", c.replication, 1, "");
    } else if c.replication < 1 || c.replication as usize > c.members.len() {
        out.push(format!(
            "cluster.replication = {}: must be between 1 and the number of members ({})",
            c.replication,
            c.members.len()
        ));
    }

    let max = crate::cluster::state::MAX_SHARDS;
    if c.user_partitions < 1 || c.user_partitions > max {
        out.push(format!(
            "cluster.user_partitions = {}: must be between 1 and {max} (64 suits most clusters)",
            c.user_partitions
        ));
    }
    at_least(out, "cluster.user_replication", c.user_replication, 1, "");

    at_least(out, "cluster.heartbeat_ms", c.heartbeat_ms, 1, "");
    let two_beats = c.heartbeat_ms.saturating_mul(2);
    if c.election_timeout_min_ms <= two_beats {
        out.push(format!(
            "cluster.election_timeout_min_ms = {}: must be more than twice cluster.heartbeat_ms \
             ({two_beats}), or followers start elections while the leader is healthy",
            c.election_timeout_min_ms
        ));
    }
    if c.election_timeout_max_ms <= c.election_timeout_min_ms {
        out.push(format!(
            "cluster.election_timeout_max_ms = {}: must be more than \
             cluster.election_timeout_min_ms ({}); the spread keeps nodes from timing out together",
            c.election_timeout_max_ms, c.election_timeout_min_ms
        ));
    }
    at_least(out, "cluster.snapshot_every", c.snapshot_every, 1, "");
    at_least(
        out,
        "cluster.max_concurrent_transfers",
        c.max_concurrent_transfers,
        1,
        "",
    );
    if c.replace_dead_after > MAX_REPLACE_DEAD_AFTER {
        out.push(format!(
            "cluster.replace_dead_after = {}: must be at most {MAX_REPLACE_DEAD_AFTER} seconds \
             (one week); use 0 to never re-place a dead node's shards automatically",
            c.replace_dead_after
        ));
    }
    check_tls(node_id, c, out);
}

/// Longest `cluster.replace_dead_after`, in seconds.
const MAX_REPLACE_DEAD_AFTER: u64 = 7 * 24 * 3600;

fn check_tls(node_id: u64, c: &ClusterConfig, out: &mut Vec<String>) {
    let files = [
        ("cluster.tls.cert", &c.tls.cert),
        ("cluster.tls.key", &c.tls.key),
        ("cluster.tls.ca", &c.tls.ca),
    ];
    let set: Vec<&str> = files
        .iter()
        .filter(|(_, p)| !p.as_os_str().is_empty())
        .map(|(k, _)| *k)
        .collect();
    if set.is_empty() {
        return;
    }
    if set.len() < files.len() {
        let missing: Vec<&str> = files
            .iter()
            .filter(|(_, p)| p.as_os_str().is_empty())
            .map(|(k, _)| *k)
            .collect();
        out.push(format!(
            "cluster.tls: {} set but {} empty; mTLS needs cert, key and ca together \
             (or none of them for plain connections)",
            set.join(", "),
            missing.join(", ")
        ));
    }
    let mut all_there = set.len() == files.len();
    for (key, path) in files {
        if !path.as_os_str().is_empty() && !path.is_file() {
            all_there = false;
            out.push(format!(
                "{key} = {:?}: no such file (relative paths start at the working directory)",
                path.display().to_string()
            ));
        }
    }
    if all_there {
        if let Err(e) = NodeTls::load(
            &c.tls,
            tls::CONFIG_KEYS,
            dialled_host(node_id, c).as_deref(),
        ) {
            out.push(e.to_string());
        }
    }
}

/// The host other nodes dial this one at: its `members` entry's, else the
/// bind address's when that names one host. Its certificate must carry it.
fn dialled_host(node_id: u64, c: &ClusterConfig) -> Option<String> {
    let advertised = c
        .members
        .iter()
        .find(|m| m.id == node_id)
        .map_or(&c.internal, |m| &m.internal);
    parse_host_port(advertised)
        .ok()
        .filter(|hp| !hp.binds_everything())
        .map(|hp| hp.host)
}

/// Two listeners on one port fail at bind time with a less helpful error.
fn check_bind_clashes(cfg: &NodeConfig, out: &mut Vec<String>) {
    let mut binds = vec![("api.http", &cfg.api.http), ("api.grpc", &cfg.api.grpc)];
    if let Some(c) = &cfg.cluster {
        binds.push(("cluster.internal", &c.internal));
    }
    let parsed: Vec<(&str, HostPort)> = binds
        .into_iter()
        .filter_map(|(k, a)| parse_host_port(a).ok().map(|hp| (k, hp)))
        .collect();
    for (i, (key_a, a)) in parsed.iter().enumerate() {
        for (key_b, b) in &parsed[i + 1..] {
            let same_host = a.host == b.host || a.binds_everything() || b.binds_everything();
            if a.port != 0 && a.port == b.port && same_host {
                out.push(format!(
                    "{key_b}: port {} is also used by {key_a}; give each listener its own port",
                    b.port
                ));
            }
        }
    }
}
