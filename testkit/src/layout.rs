//! Test clusters on 127.0.0.1: each node's ports, the `members = [...]`
//! list, and the node config files (fast elections, fixed ports).
//!
//! Owns: ports and config text. Must not touch: processes (`process`).

use crate::error::io;
use crate::KitError;
use std::path::{Path, PathBuf};

/// Ports of one node of a test cluster on 127.0.0.1.
#[derive(Debug, Clone, Copy)]
pub struct NodePorts {
    pub id: u64,
    pub http: u16,
    pub grpc: u16,
    pub internal: u16,
}

/// `127.0.0.1:PORT`.
pub fn local(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

impl NodePorts {
    /// Nodes 1..=`n` on fixed ports from `base`: http `base + id`, grpc
    /// `base + 10 + id`, internal `base + 20 + id` (so `n` <= 9). Fixed
    /// ports below the kernel's ephemeral range: a port picked by binding
    /// port 0 and letting go of it could be taken by the nodes' own
    /// outgoing connections before the node binds it.
    pub fn layout(n: u64, base: u16) -> Vec<NodePorts> {
        assert!(n <= 9, "the layout has room for nine nodes");
        (1..=n)
            .map(|id| NodePorts {
                id,
                http: base + id as u16,
                grpc: base + 10 + id as u16,
                internal: base + 20 + id as u16,
            })
            .collect()
    }

    /// Nodes 1..=`n` packed three ports each from `base`: node `i` uses
    /// http `base + 3(i-1)`, grpc `+ 1`, internal `+ 2` (any node count).
    pub fn packed(n: u64, base: u16) -> Vec<NodePorts> {
        (1..=n)
            .map(|id| {
                let first = base + 3 * (id as u16 - 1);
                NodePorts {
                    id,
                    http: first,
                    grpc: first + 1,
                    internal: first + 2,
                }
            })
            .collect()
    }

    pub fn ports(&self) -> [u16; 3] {
        [self.http, self.grpc, self.internal]
    }

    /// Its entry in a `members = [...]` list.
    pub fn member_line(&self) -> String {
        format!(
            "  {{ id = {}, internal = \"127.0.0.1:{}\", http = \"127.0.0.1:{}\", grpc = \"127.0.0.1:{}\" }},",
            self.id, self.internal, self.http, self.grpc
        )
    }
}

/// `members = [...]` listing `nodes`.
pub fn members_list(nodes: &[NodePorts]) -> String {
    let lines: Vec<String> = nodes.iter().map(NodePorts::member_line).collect();
    format!("members = [\n{}\n]", lines.join("\n"))
}

/// The first port of `nodes` something else already listens on: (node,
/// port, why binding it failed). Nodes of another run on the same ports
/// would talk Raft to this cluster's nodes.
pub fn taken_port(nodes: &[NodePorts]) -> Option<(u64, u16, std::io::Error)> {
    nodes.iter().find_map(|n| {
        n.ports().into_iter().find_map(|p| {
            std::net::TcpListener::bind(("127.0.0.1", p))
                .err()
                .map(|e| (n.id, p, e))
        })
    })
}

/// The config of one node of a test cluster: fast elections (heartbeat
/// 100 ms, election timeout 300–600 ms); node 1 bootstraps.
#[derive(Debug, Clone, Copy)]
pub struct NodeConfig<'a> {
    pub ports: &'a NodePorts,
    /// `node.bundle` (empty when `None`: the node starts without a model).
    pub bundle: Option<&'a Path>,
    pub shards: u32,
    pub replication: u32,
    /// Extra TOML lines of `[api]` (e.g. a token).
    pub api_extra: &'a str,
    /// Extra TOML lines of `[cluster]` (e.g. `members = [...]`, `join = ...`).
    pub cluster_extra: &'a str,
}

impl NodeConfig<'_> {
    /// The TOML text, with `data_dir` as `node.data_dir`.
    pub fn toml(&self, data_dir: &Path) -> String {
        let p = self.ports;
        format!(
            r#"[node]
id = {id}
data_dir = "{data}"
bundle = "{bundle}"

[api]
http = "127.0.0.1:{h}"
grpc = "127.0.0.1:{g}"
{api_extra}

[cluster]
internal = "127.0.0.1:{r}"
bootstrap = {boot}
shards = {shards}
replication = {replication}
heartbeat_ms = 100
election_timeout_min_ms = 300
election_timeout_max_ms = 600
{cluster_extra}
"#,
            id = p.id,
            data = data_dir.display(),
            bundle = self
                .bundle
                .map_or(String::new(), |b| b.display().to_string()),
            h = p.http,
            g = p.grpc,
            r = p.internal,
            boot = p.id == 1,
            shards = self.shards,
            replication = self.replication,
            api_extra = self.api_extra,
            cluster_extra = self.cluster_extra,
        )
    }

    /// Writes `dir/node{id}.toml` with data directory `dir/node-{id}`:
    /// (config, data_dir).
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf), KitError> {
        let id = self.ports.id;
        let data_dir = dir.join(format!("node-{id}"));
        let config = dir.join(format!("node{id}.toml"));
        std::fs::write(&config, self.toml(&data_dir))
            .map_err(io(format!("writing {}", config.display())))?;
        Ok((config, data_dir))
    }
}

/// A member of a multi-process test cluster: its config file and data
/// directory, and the addresses the tests talk to.
#[derive(Debug, Clone)]
pub struct Member {
    pub id: u64,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub http: String,
    pub grpc: String,
    pub internal: String,
}

impl Member {
    /// `ports`' member with the files `NodeConfig::write` wrote.
    pub fn new(ports: &NodePorts, config: PathBuf, data_dir: PathBuf) -> Member {
        Member {
            id: ports.id,
            config,
            data_dir,
            http: local(ports.http),
            grpc: local(ports.grpc),
            internal: local(ports.internal),
        }
    }
}

/// Writes one config per node of `nodes` (the same bundle, shard count,
/// replication 2, `[api]` and `[cluster]` extra lines for each).
pub fn write_members(
    dir: &Path,
    nodes: &[NodePorts],
    bundle: Option<&Path>,
    shards: u32,
    api_extra: &str,
    cluster_extra: &str,
) -> Result<Vec<Member>, KitError> {
    nodes
        .iter()
        .map(|me| {
            let (config, data_dir) = NodeConfig {
                ports: me,
                bundle,
                shards,
                replication: 2,
                api_extra,
                cluster_extra,
            }
            .write(dir)?;
            Ok(Member::new(me, config, data_dir))
        })
        .collect()
}
