//! Test clusters on 127.0.0.1 (or, in network namespaces, each node on an
//! address of its own: `netns`): each node's address and ports, the
//! `members = [...]` list, and the node config files (fast elections,
//! fixed ports).
//!
//! Owns: ports and config text. Must not touch: processes (`process`).

use crate::error::io;
use crate::KitError;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Address and ports of one node of a test cluster.
#[derive(Debug, Clone, Copy)]
pub struct NodePorts {
    pub id: u64,
    /// The address every port binds (127.0.0.1 unless the node runs in a
    /// network namespace of its own).
    pub host: Ipv4Addr,
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
                host: Ipv4Addr::LOCALHOST,
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
                    host: Ipv4Addr::LOCALHOST,
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

    /// `HOST:PORT` of one of its ports.
    pub fn addr(&self, port: u16) -> String {
        format!("{}:{port}", self.host)
    }

    /// Its entry in a `members = [...]` list.
    pub fn member_line(&self) -> String {
        format!(
            "  {{ id = {}, internal = \"{}\", http = \"{}\", grpc = \"{}\" }},",
            self.id,
            self.addr(self.internal),
            self.addr(self.http),
            self.addr(self.grpc)
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
/// 100 ms, election timeout 250–500 ms, the defaults); node 1 bootstraps.
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
http = "{h}"
grpc = "{g}"
{api_extra}

[cluster]
internal = "{r}"
bootstrap = {boot}
shards = {shards}
replication = {replication}
heartbeat_ms = 100
election_timeout_min_ms = 250
election_timeout_max_ms = 500
{cluster_extra}
"#,
            id = p.id,
            data = data_dir.display(),
            bundle = self
                .bundle
                .map_or(String::new(), |b| b.display().to_string()),
            h = p.addr(p.http),
            g = p.addr(p.grpc),
            r = p.addr(p.internal),
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
            http: ports.addr(ports.http),
            grpc: ports.addr(ports.grpc),
            internal: ports.addr(ports.internal),
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
