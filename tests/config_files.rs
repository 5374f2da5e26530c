//! Every file in cluster-configs/ loads and validates, and the clusters
//! follow the documented port scheme (cluster-configs/README.md).

use funnel::config::{CliOverrides, NodeConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster-configs")
}

fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(toml_files(&path));
        } else if path.extension().is_some_and(|e| e == "toml") {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn load(path: &Path) -> NodeConfig {
    NodeConfig::load(Some(path), &HashMap::new(), &CliOverrides::default())
        .unwrap_or_else(|e| panic!("{} does not load: {e}", path.display()))
}

#[test]
fn every_file_loads_and_validates() {
    let files = toml_files(&configs_dir());
    // single-node + 3 + 5; a missing or extra file should be noticed here
    assert_eq!(files.len(), 9, "{files:?}");
    for f in &files {
        let cfg = load(f);
        let text = cfg.to_toml_string().unwrap();
        assert_eq!(
            NodeConfig::from_toml_str(&text, "printed").unwrap(),
            cfg,
            "{} does not round-trip",
            f.display()
        );
    }
}

#[test]
fn single_node_spells_out_the_defaults() {
    let cfg = load(&configs_dir().join("single-node.toml"));
    assert_eq!(cfg, NodeConfig::default());
    assert_eq!(cfg.node.bundle_dir(), None);
}

fn check_cluster(name: &str, n: u64) {
    let mut data_dirs = Vec::new();
    for id in 1..=n {
        let path = configs_dir().join(name).join(format!("node{id}.toml"));
        let cfg = load(&path);
        let c = cfg.cluster.as_ref().expect("cluster section");
        assert_eq!(cfg.node.id, id, "{}", path.display());
        assert_eq!(cfg.api.http, format!("127.0.0.1:{}", 8080 + id));
        assert_eq!(cfg.api.grpc, format!("127.0.0.1:{}", 50060 + id));
        assert_eq!(c.internal, format!("127.0.0.1:{}", 7000 + id));
        assert_eq!(c.bootstrap, id == 1, "bootstrap only on node1");
        assert_eq!((c.shards, c.replication), (12, 2));
        let ids: Vec<u64> = c.members.iter().map(|m| m.id).collect();
        assert_eq!(ids, (1..=n).collect::<Vec<_>>());
        for m in &c.members {
            assert_eq!(m.internal, format!("127.0.0.1:{}", 7000 + m.id));
            assert_eq!(m.http, format!("127.0.0.1:{}", 8080 + m.id));
            assert_eq!(m.grpc, format!("127.0.0.1:{}", 50060 + m.id));
        }
        data_dirs.push(cfg.node.data_dir.clone());
    }
    data_dirs.sort();
    data_dirs.dedup();
    assert_eq!(
        data_dirs.len() as u64,
        n,
        "every node needs its own data_dir"
    );
}

#[test]
fn three_node_cluster_follows_the_port_scheme() {
    check_cluster("three-node", 3);
}

#[test]
fn five_node_cluster_follows_the_port_scheme() {
    check_cluster("five-node", 5);
}
