//! What each node of a benchmark cluster holds in memory once it serves:
//! its user-state store's own figures (`funnel_user_states`,
//! `funnel_user_state_bytes`) and the process's resident set, read before
//! any load so the figures are the data's and not the traffic's.
//!
//! Owns: `NodeMemory` and reading it. Must not touch: how nodes start or
//! how load runs.

use super::cluster::{http_get, LocalCluster};
use crate::bench::server_stats::parse_exposition;
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeMemory {
    pub node: u16,
    /// Users whose state the node holds.
    pub user_states: Option<f64>,
    /// Bytes those states hold, by the store's own estimate.
    pub user_state_bytes: Option<f64>,
    /// The process's resident set (VmRSS), bytes.
    pub rss_bytes: Option<u64>,
}

/// Each node's figures once its user-state gauge has held still for two
/// reads a second apart (a node may still be dropping or loading user
/// partitions right after it starts serving), waiting at most `limit`.
pub fn settled_memory(cluster: &LocalCluster, limit: Duration) -> Vec<NodeMemory> {
    let t0 = Instant::now();
    let mut last = read_all(cluster);
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = read_all(cluster);
        let still = now
            .iter()
            .zip(&last)
            .all(|(a, b)| a.user_states.is_some() && a.user_states == b.user_states);
        if still || t0.elapsed() > limit {
            return now;
        }
        last = now;
    }
}

fn read_all(cluster: &LocalCluster) -> Vec<NodeMemory> {
    let pids = cluster.pids();
    cluster
        .configs
        .iter()
        .enumerate()
        .map(|(i, cfg)| {
            let samples = http_get(&cfg.api.http, "/metrics")
                .ok()
                .filter(|(code, _)| *code == 200)
                .map(|(_, body)| parse_exposition(&body))
                .unwrap_or_default();
            let gauge = |name: &str| samples.iter().find(|s| s.name == name).map(|s| s.value);
            NodeMemory {
                node: i as u16 + 1,
                user_states: gauge("funnel_user_states"),
                user_state_bytes: gauge("funnel_user_state_bytes"),
                rss_bytes: pids.get(i).and_then(|&p| rss_bytes(p)),
            }
        })
        .collect()
}

/// A process's resident set from /proc/PID/status (VmRSS, in kB there).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&text)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resident_set_is_read_from_proc_status() {
        assert_eq!(
            parse_vm_rss("Name:\tfunnel\nVmPeak:\t  9 kB\nVmRSS:\t  1234 kB\n"),
            Some(1234 * 1024)
        );
        assert_eq!(parse_vm_rss("Name:\tfunnel\n"), None);
        let me = rss_bytes(std::process::id()).expect("this process has a resident set");
        assert!(me > 0);
    }
}
