//! The fault vocabulary: kill, pause, restart, rolling restart, shard move,
//! membership change, and (through each node's FaultInjection service)
//! partitions and slow or lossy links; each one applied to the real
//! processes and recorded as a fault window, and the final heal.
//!
//! Owns: which nodes clients are routed to (a node leaves the routing set
//! when it is killed or paused and comes back once it serves again, as
//! behind a load balancer with health checks) and which nodes should be
//! running when everything is healed.
//! Must not touch: the schedule (scenarios choose what and when) or the
//! invariants.

use crate::cluster::{Cluster, HarnessError};
use crate::history::Recorder;
use crate::load::Routing;
use funnel::proto::ops::{FaultRules, LinkDelay, LinkDrop, NodeGroup};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How long a restarted node may take to serve with full coverage.
pub const SERVE_TIMEOUT: Duration = Duration::from_secs(90);

/// A cluster under fault injection.
pub struct Faults {
    pub cluster: Cluster,
    pub rec: Recorder,
    pub routing: Routing,
    /// Nodes that should run once everything is healed.
    members: BTreeSet<u64>,
    /// Open fault window per node that is down or paused.
    down: BTreeMap<u64, usize>,
    /// Open network fault windows (partitions, slow links).
    network: Vec<usize>,
    /// Seed of the nodes' drop and jitter decisions.
    pub seed: u64,
    /// Time from a restart (or resume) to the node serving with coverage 1.
    pub coverage_times: Vec<Duration>,
    /// (node, exit status) of every member whose process ended without the
    /// harness stopping it (an abort, an OOM kill, an unplanned exit),
    /// found when healing.
    pub unexpected_exits: Vec<(u64, String)>,
}

impl Faults {
    /// Starts `voters` nodes of `cluster` and waits until each serves with
    /// full coverage and they agree on a leader.
    pub fn start(mut cluster: Cluster, rec: Recorder) -> Result<Faults, HarnessError> {
        let routing = Routing::default();
        let voters: Vec<u64> = (1..=cluster.spec.voters).collect();
        for &id in &voters {
            cluster.start(id)?;
        }
        for &id in &voters {
            cluster.wait_serving(id, SERVE_TIMEOUT)?;
            routing.set(id, cluster.node(id).http.clone());
        }
        cluster.wait_leader(Duration::from_secs(30))?;
        // 3 or 5 of them vote (`cluster::moves::voter_target`)
        let count = funnel::cluster::moves::voter_target(voters.len());
        cluster.wait_voters(count, Duration::from_secs(30))?;
        Ok(Faults {
            cluster,
            rec,
            routing,
            members: voters.into_iter().collect(),
            down: BTreeMap::new(),
            network: Vec::new(),
            seed: 1,
            coverage_times: Vec::new(),
            unexpected_exits: Vec::new(),
        })
    }

    /// The current leader (id, term).
    pub fn leader(&self) -> Result<(u64, u64), HarnessError> {
        self.cluster.wait_leader(Duration::from_secs(20))
    }

    /// A live node other than `not`.
    pub fn other_than(&self, not: &[u64]) -> Option<u64> {
        self.cluster.live().into_iter().find(|id| !not.contains(id))
    }

    fn leader_term_of(&self, id: u64) -> Option<(u64, u64)> {
        self.cluster
            .status(id, Duration::from_millis(500))
            .filter(|s| s.role == "Leader")
            .map(|s| (id, s.term))
    }

    /// SIGKILL node `id`.
    pub fn kill(&mut self, id: u64) {
        let old_leader = self.leader_term_of(id);
        self.routing.remove(id);
        let w = self.rec.begin_fault(
            format!(
                "kill {id}{}",
                if old_leader.is_some() {
                    " (leader)"
                } else {
                    ""
                }
            ),
            vec![id],
            old_leader,
        );
        self.cluster.kill(id);
        self.down.insert(id, w);
    }

    /// SIGSTOP node `id`.
    pub fn pause(&mut self, id: u64) -> Result<(), HarnessError> {
        let old_leader = self.leader_term_of(id);
        self.routing.remove(id);
        let w = self.rec.begin_fault(
            format!(
                "pause {id}{}",
                if old_leader.is_some() {
                    " (leader)"
                } else {
                    ""
                }
            ),
            vec![id],
            old_leader,
        );
        self.cluster.pause(id)?;
        self.down.insert(id, w);
        Ok(())
    }

    /// SIGCONT node `id`; waits until it serves again.
    pub fn resume(&mut self, id: u64) -> Result<(), HarnessError> {
        self.cluster.resume(id)?;
        self.back(id)
    }

    /// Starts node `id` again (same data directory); waits until it serves.
    pub fn restart(&mut self, id: u64) -> Result<(), HarnessError> {
        self.cluster.start(id)?;
        self.back(id)
    }

    fn back(&mut self, id: u64) -> Result<(), HarnessError> {
        let t0 = Instant::now();
        let served = self.cluster.wait_serving(id, SERVE_TIMEOUT);
        let was_down = self.down.remove(&id);
        if let Some(w) = was_down {
            self.rec.end_fault(w);
        }
        served?;
        if was_down.is_some() {
            self.coverage_times.push(t0.elapsed());
        }
        self.routing.set(id, self.cluster.node(id).http.clone());
        Ok(())
    }

    /// Stops node `id` gracefully (SIGTERM; SIGKILL after 10 s): taken out
    /// of the routing set first, as a load balancer drains a node before an
    /// orchestrator stops it.
    pub fn stop(&mut self, id: u64) -> Result<(), HarnessError> {
        let old_leader = self.leader_term_of(id);
        self.routing.remove(id);
        let w = self.rec.begin_fault(
            format!(
                "stop {id}{}",
                if old_leader.is_some() {
                    " (leader)"
                } else {
                    ""
                }
            ),
            vec![id],
            old_leader,
        );
        self.down.insert(id, w);
        if self.cluster.stop(id, Duration::from_secs(10)) {
            Ok(())
        } else {
            Err(HarnessError::Other(format!(
                "node {id} did not exit within 10 s of SIGTERM"
            )))
        }
    }

    /// Stops (SIGTERM) and starts every running node in turn, each serving
    /// again before the next goes down.
    pub fn rolling_restart(&mut self, down_for: Duration) -> Result<(), HarnessError> {
        for id in self.cluster.live() {
            self.stop(id)?;
            std::thread::sleep(down_for);
            self.restart(id)?;
        }
        Ok(())
    }

    /// Restarts node `id` with the failpoint `name` set to crash
    /// (`FUNNEL_FAILPOINTS=name=return`), waits until it fires (exit code
    /// 86 and the failpoint's line in the node log), then starts it again
    /// without failpoints and waits until it serves. Returns how long the
    /// failpoint took to fire.
    pub fn crash_at(
        &mut self,
        id: u64,
        name: &str,
        fire_within: Duration,
    ) -> Result<Duration, HarnessError> {
        // the window opens before the kill, so requests in flight to the
        // node are inside it; it covers any earlier down time of the node
        let w = self
            .rec
            .begin_fault(format!("crash at {name} on {id}"), vec![id], None);
        self.routing.remove(id);
        self.cluster.kill(id);
        if let Some(prev) = self.down.remove(&id) {
            self.rec.end_fault(prev);
        }
        self.cluster
            .spec
            .failpoints
            .insert(id, format!("{name}=return"));
        let started = self.cluster.start(id);
        self.cluster.spec.failpoints.remove(&id);
        started?;
        let t0 = Instant::now();
        let status = loop {
            if let Some(st) = self.cluster.exited(id) {
                break st;
            }
            if t0.elapsed() > fire_within {
                self.cluster.kill(id);
                self.rec.end_fault(w);
                return Err(HarnessError::Timeout(
                    fire_within,
                    format!("failpoint {name} on node {id} never fired"),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let fired_after = t0.elapsed();
        let log = std::fs::read_to_string(&self.cluster.node(id).log).unwrap_or_default();
        let line = format!("failpoint {name} fired");
        if status.code() != Some(86) || !log.contains(&line) {
            self.rec.end_fault(w);
            return Err(HarnessError::Other(format!(
                "node {id} with failpoint {name} exited with {status}, not the failpoint's code 86 \
                 (is the funnel binary built with --features failpoints?); see {}",
                self.cluster.node(id).log.display()
            )));
        }
        self.down.insert(id, w);
        self.restart(id)?;
        Ok(fired_after)
    }

    // --- network faults (each node's FaultInjection service) --------------

    /// Sends `rules` to every running node (faults are applied by the
    /// sender, so a partition needs the same rules everywhere).
    fn set_rules(&self, rules: &FaultRules) -> Result<(), HarnessError> {
        for id in self.cluster.running() {
            if self.cluster.node(id).paused() {
                continue;
            }
            self.cluster.set_faults(id, rules.clone())?;
        }
        Ok(())
    }

    /// Cuts `side` off from every other node (both ways), on every node.
    pub fn partition(&mut self, side: &[u64]) -> Result<usize, HarnessError> {
        let leader = self.cluster.leader();
        let old_leader = leader.filter(|(l, _)| side.contains(l));
        let rest: Vec<u64> = self
            .cluster
            .running()
            .into_iter()
            .filter(|n| !side.contains(n))
            .collect();
        let rules = FaultRules {
            isolate: vec![NodeGroup {
                nodes: side.to_vec(),
            }],
            seed: self.seed,
            ..Default::default()
        };
        let w = self.rec.begin_fault(
            format!(
                "partition {side:?} | {rest:?}{}",
                match leader {
                    Some((l, _)) if side.contains(&l) => " (leader cut off)",
                    Some(_) => " (leader with the rest)",
                    None => "",
                }
            ),
            vec![],
            // a minority leader must be replaced by the majority side
            old_leader.filter(|_| side.len() * 2 < side.len() + rest.len()),
        );
        self.network.push(w);
        self.set_rules(&rules)?;
        Ok(w)
    }

    /// Delay (fixed ± jitter) and drop on the link between `a` and `b`,
    /// both directions.
    pub fn slow_link(
        &mut self,
        a: u64,
        b: u64,
        fixed_ms: u32,
        jitter_ms: u32,
        drop: f64,
    ) -> Result<usize, HarnessError> {
        let w = self.rec.begin_fault(
            // delay is fixed + uniform [0, jitter]: shown as mean +/- half-width
            format!(
                "link {a}<->{b} {}+/-{} ms, {:.0}% drop",
                fixed_ms + jitter_ms / 2,
                jitter_ms / 2,
                drop * 100.0
            ),
            vec![],
            None,
        );
        self.network.push(w);
        for (from, to) in [(a, b), (b, a)] {
            let rules = FaultRules {
                drop: vec![LinkDrop {
                    to,
                    probability: drop,
                }],
                delay: vec![LinkDelay {
                    to,
                    fixed_ms,
                    jitter_ms,
                }],
                seed: self.seed ^ from,
                ..Default::default()
            };
            self.cluster.set_faults(from, rules)?;
        }
        Ok(w)
    }

    /// Clears every node's network rules and closes their fault windows.
    pub fn heal_network(&mut self) -> Result<(), HarnessError> {
        self.set_rules(&FaultRules::default())?;
        for w in self.network.drain(..) {
            self.rec.end_fault(w);
        }
        Ok(())
    }

    /// `funnel admin move-shard`, then waits until the map settles with the
    /// copy on `to`; recorded as a fault window (no node unreachable).
    pub fn move_shard(&mut self, shard: u32, from: u64, to: u64) -> Result<(), HarnessError> {
        let entry = self.entry()?;
        let w = self
            .rec
            .begin_fault(format!("move shard {shard} {from}->{to}"), vec![], None);
        let result = self
            .cluster
            .admin(
                entry,
                &[
                    "move-shard",
                    "--shard",
                    &shard.to_string(),
                    "--from",
                    &from.to_string(),
                    "--to",
                    &to.to_string(),
                ],
            )
            .and_then(|_| {
                self.wait_view(Duration::from_secs(90), "the move to finish", |v| {
                    crate::cluster::settled(v)
                        && v.shard_map.as_ref().is_some_and(|m| {
                            m.replica(shard, to).is_some() && m.replica(shard, from).is_none()
                        })
                })
            });
        self.rec.end_fault(w);
        result
    }

    /// Starts spare node `id` and admits it with `funnel admin add-node`.
    pub fn add_node(&mut self, id: u64) -> Result<(), HarnessError> {
        let entry = self.entry()?;
        self.cluster.start(id)?;
        let (internal, http, grpc) = {
            let n = self.cluster.node(id);
            (n.internal.clone(), n.http.clone(), n.grpc.clone())
        };
        let w = self.rec.begin_fault(format!("add node {id}"), vec![], None);
        let r = self.cluster.admin(
            entry,
            &[
                "add-node",
                "--id",
                &id.to_string(),
                "--internal",
                &internal,
                "--http",
                &http,
                "--grpc",
                &grpc,
            ],
        );
        let r = r.and_then(|_| self.cluster.wait_serving(id, SERVE_TIMEOUT));
        self.rec.end_fault(w);
        r?;
        self.members.insert(id);
        self.routing.set(id, self.cluster.node(id).http.clone());
        Ok(())
    }

    /// `funnel admin remove-node --drain`, waits until it is out of Raft
    /// and holds nothing, then stops its process.
    pub fn remove_node(&mut self, id: u64) -> Result<(), HarnessError> {
        let entry = self.entry_other_than(id)?;
        let w = self
            .rec
            .begin_fault(format!("remove node {id} (drain)"), vec![], None);
        let r = self
            .cluster
            .admin(entry, &["remove-node", "--drain", &id.to_string()])
            .and_then(|_| {
                self.wait_view(Duration::from_secs(120), "the drain to finish", |v| {
                    v.nodes
                        .get(&id)
                        .is_some_and(|n| n.status == funnel::cluster::NodeStatus::Removed)
                        && crate::cluster::settled(v)
                })
            });
        // clients stop using it once it is drained; it goes away once the
        // requests already sent to it had their deadline to answer
        self.routing.remove(id);
        self.members.remove(&id);
        self.rec.end_fault(w);
        r?;
        std::thread::sleep(Duration::from_millis(1500));
        self.stop(id)
    }

    /// Voters and learners as a live node sees them.
    pub fn raft_members(&self) -> Option<(Vec<u64>, Vec<u64>)> {
        let id = self.entry().ok()?;
        let s = self.cluster.status(id, Duration::from_millis(500))?;
        Some((s.voters, s.learners))
    }

    /// Waits until Raft has `n` voters (learners are promoted once they
    /// caught up, a moment after `add_node` returns).
    pub fn wait_voters(&self, n: usize, timeout: Duration) -> Result<(), HarnessError> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if self.raft_members().is_some_and(|(v, _)| v.len() == n) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(HarnessError::Timeout(
            timeout,
            format!(
                "waiting for {n} Raft voters (last seen: {:?})",
                self.raft_members()
            ),
        ))
    }

    fn entry(&self) -> Result<u64, HarnessError> {
        self.entry_other_than(0)
    }

    fn entry_other_than(&self, not: u64) -> Result<u64, HarnessError> {
        self.other_than(&[not])
            .ok_or_else(|| HarnessError::Other("no live node to send admin commands to".into()))
    }

    /// Waits until the view from a live node satisfies `ok`.
    pub fn wait_view(
        &self,
        timeout: Duration,
        what: &str,
        ok: impl Fn(&funnel::cluster::ClusterView) -> bool,
    ) -> Result<(), HarnessError> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if self.cluster.any_view().is_some_and(|v| ok(&v)) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(HarnessError::Timeout(
            timeout,
            format!("waiting for {what}"),
        ))
    }

    /// Heals everything: resumes paused nodes, restarts killed members,
    /// closes every fault window. Returns the time until every member
    /// served with full coverage again (restarts here are not also counted
    /// in `coverage_times`).
    pub fn heal(&mut self) -> Result<Duration, HarnessError> {
        let t0 = Instant::now();
        if self.cluster.spec.fault_injection {
            self.heal_network()?;
        }
        let members: Vec<u64> = self.members.iter().copied().collect();
        for &id in &members {
            // a member the harness left running that is gone: it died on its
            // own (a planned crash, a failpoint's, is reaped where it is set)
            if let Some(status) = self.cluster.exited(id) {
                self.unexpected_exits.push((id, status.to_string()));
            }
            if self.cluster.node(id).paused() {
                self.cluster.resume(id)?;
            } else if !self.cluster.node(id).running() {
                self.cluster.start(id)?;
            }
        }
        let before = self.coverage_times.len();
        for &id in &members {
            self.back(id)?;
        }
        self.coverage_times.truncate(before);
        self.rec.end_all_faults();
        Ok(t0.elapsed())
    }

    /// Nodes that should be running.
    pub fn members(&self) -> Vec<u64> {
        self.members.iter().copied().collect()
    }
}
