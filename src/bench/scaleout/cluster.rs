//! A local cluster of `funnel serve` processes for one benchmark size: the
//! node configs, the processes (each in its CPU group from its first
//! instruction), the bundle published, readiness, CPU read from /proc, and
//! stopping everything.
//!
//! One node runs as a single node with the bundle (what a user runs on one
//! host); two or more form a Raft cluster with the bundle's shard count and
//! `min(R, nodes)` copies, and get the bundle through `publish` as an
//! operator would. Must not touch: the load or the verdicts.

use super::cgroup::CpuGroups;
use crate::config::{ClusterConfig, ClusterMember, NodeConfig};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where node `i` (1-based) listens: http, grpc, internal.
pub fn ports(base: u16, i: u16) -> (u16, u16, u16) {
    (base + i, base + 100 + i, base + 200 + i)
}

/// The configs of an `n`-node run under `dir`.
pub fn node_configs(
    n: u16,
    base_port: u16,
    dir: &Path,
    bundle: &Path,
    shards: u32,
    replication: u32,
) -> Vec<NodeConfig> {
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let members: Vec<ClusterMember> = (1..=n)
        .map(|i| {
            let (h, g, x) = ports(base_port, i);
            ClusterMember {
                id: i as u64,
                internal: addr(x),
                http: addr(h),
                grpc: addr(g),
            }
        })
        .collect();
    (1..=n)
        .map(|i| {
            let (h, g, x) = ports(base_port, i);
            let mut cfg = NodeConfig::default();
            cfg.node.id = i as u64;
            cfg.node.data_dir = dir.join(format!("node-{i}"));
            cfg.api.http = addr(h);
            cfg.api.grpc = addr(g);
            if n == 1 {
                cfg.node.bundle = bundle.to_path_buf();
            } else {
                cfg.cluster = Some(ClusterConfig {
                    internal: addr(x),
                    bootstrap: i == 1,
                    members: members.clone(),
                    shards,
                    replication: replication.min(n as u32),
                    ..ClusterConfig::default()
                });
            }
            cfg
        })
        .collect()
}

/// The running nodes of one size.
pub struct LocalCluster {
    children: Vec<Child>,
    pub configs: Vec<NodeConfig>,
    pub groups: Option<CpuGroups>,
    pub dir: PathBuf,
}

impl LocalCluster {
    /// Writes the configs, starts every node (confined to its group when
    /// `groups` is given) and waits until each answers /readyz as
    /// listening; a cluster then gets `bundle` published.
    pub fn start(
        exe: &Path,
        configs: Vec<NodeConfig>,
        groups: Option<CpuGroups>,
        dir: &Path,
        bundle: &Path,
    ) -> Result<LocalCluster> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut cluster = LocalCluster {
            children: Vec::new(),
            configs,
            groups,
            dir: dir.to_path_buf(),
        };
        for (i, cfg) in cluster.configs.iter().enumerate() {
            let path = dir.join(format!("node{}.toml", cfg.node.id));
            std::fs::write(&path, cfg.to_toml_string()?)
                .with_context(|| format!("writing {}", path.display()))?;
            let log_path = dir.join(format!("node{}.log", cfg.node.id));
            let log = std::fs::File::create(&log_path)
                .with_context(|| format!("creating {}", log_path.display()))?;
            let mut cmd = Command::new(exe);
            cmd.arg("serve")
                .arg("--config")
                .arg(&path)
                .env("RUST_LOG", "warn,openraft=off")
                .stdout(Stdio::null())
                .stderr(log);
            if let Some(g) = &cluster.groups {
                g.confine(i, &mut cmd);
            }
            let child = cmd
                .spawn()
                .with_context(|| format!("starting node {} ({})", cfg.node.id, exe.display()))?;
            cluster.children.push(child);
        }
        cluster.wait_listening(Duration::from_secs(120))?;
        if cluster.configs.len() > 1 {
            let internal = cluster.configs[0]
                .cluster
                .as_ref()
                .map(|c| c.internal.clone())
                .unwrap_or_default();
            let opts = crate::admin::PublishOptions {
                wait: Duration::from_secs(600),
                ..Default::default()
            };
            crate::admin::cluster_publish(&internal, "", None, bundle, &opts)
                .context("publishing the bundle to the benchmark cluster")?;
        }
        cluster.wait_serving(Duration::from_secs(600))?;
        Ok(cluster)
    }

    /// The nodes' HTTP base URLs.
    pub fn targets(&self) -> Vec<String> {
        self.configs
            .iter()
            .map(|c| format!("http://{}", c.api.http))
            .collect()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id()).collect()
    }

    fn check_alive(&mut self) -> Result<()> {
        for (i, c) in self.children.iter_mut().enumerate() {
            if let Some(status) = c.try_wait()? {
                bail!(
                    "node {} exited ({status}) before the benchmark ended; see {}",
                    i + 1,
                    self.dir.join(format!("node{}.log", i + 1)).display()
                );
            }
        }
        Ok(())
    }

    fn wait_listening(&mut self, limit: Duration) -> Result<()> {
        let until = Instant::now() + limit;
        for cfg in self.configs.clone() {
            loop {
                self.check_alive()?;
                if http_get(&cfg.api.http, "/healthz").is_ok() {
                    break;
                }
                if Instant::now() > until {
                    bail!(
                        "node {} did not listen on {} within {limit:?}",
                        cfg.node.id,
                        cfg.api.http
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Waits until every node says it serves a model (`/readyz` 200).
    fn wait_serving(&mut self, limit: Duration) -> Result<()> {
        let until = Instant::now() + limit;
        for cfg in self.configs.clone() {
            loop {
                self.check_alive()?;
                if http_get(&cfg.api.http, "/readyz").is_ok_and(|(code, _)| code == 200) {
                    break;
                }
                if Instant::now() > until {
                    bail!("node {} was not serving within {limit:?}", cfg.node.id);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(())
    }

    /// Fails when a node died.
    pub fn ensure_alive(&mut self) -> Result<()> {
        self.check_alive()
    }

    /// Stops every node (SIGTERM, then SIGKILL after 10 s).
    pub fn stop(&mut self) {
        for c in &self.children {
            // SAFETY: kill only sends a signal to a child we started.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        }
        let until = Instant::now() + Duration::from_secs(10);
        for c in &mut self.children {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > until => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        self.children.clear();
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
        // the groups go after their processes
        self.groups.take();
    }
}

/// User + system CPU seconds a process has used (from /proc/PID/stat).
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the command name may hold spaces: fields start after the last ')'
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((utime + stime) / hz)
}

/// A blocking GET on 127.0.0.1: (status, body).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((code, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_node_serves_the_bundle_and_more_form_a_cluster_with_at_most_n_copies() {
        let dir = Path::new("/tmp/x");
        let one = node_configs(1, 17000, dir, Path::new("/b"), 12, 2);
        assert_eq!(one.len(), 1);
        assert!(one[0].cluster.is_none());
        assert_eq!(one[0].node.bundle, PathBuf::from("/b"));
        assert_eq!(one[0].api.http, "127.0.0.1:17001");

        let three = node_configs(3, 17000, dir, Path::new("/b"), 12, 2);
        assert_eq!(three.len(), 3);
        for (i, c) in three.iter().enumerate() {
            let cl = c.cluster.as_ref().unwrap();
            assert_eq!(cl.members.len(), 3);
            assert_eq!(cl.bootstrap, i == 0);
            assert_eq!((cl.shards, cl.replication), (12, 2));
            assert_eq!(c.node.bundle, PathBuf::new(), "the bundle is published");
            assert!(c.validate().is_ok(), "{:?}", c.validate());
        }
        let two = node_configs(2, 17000, dir, Path::new("/b"), 12, 3);
        assert_eq!(two[0].cluster.as_ref().unwrap().replication, 2);
    }

    #[test]
    fn process_cpu_is_read_from_proc() {
        let me = std::process::id();
        let t = process_cpu_seconds(me).unwrap();
        assert!(t >= 0.0);
    }
}
