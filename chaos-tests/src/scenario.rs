//! Seeded chaos scenarios and the runner that wraps each one: start a
//! cluster, start the load and the status poller, run the scenario's fault
//! schedule, heal, verify, report.
//!
//! Every random choice (victim, timing, shard) comes from one `Rng` seeded
//! with `--seed`, so a seed replays the same schedule (wall-clock effects,
//! such as which node wins an election, can still differ).
//!
//! Owns: the scenario list and the run lifecycle.
//! Must not touch: the invariants' definitions (`invariants.rs`) or how a
//! fault is applied (`faults.rs`).

use crate::cluster::{placed_copies, small_bundle, Cluster, ClusterSpec, HarnessError};
use crate::faults::Faults;
use crate::history::Recorder;
use crate::invariants::{check_all, FinalObservations};
use crate::load::{Load, LoadSpec, Poller};
use crate::report::{Extra, Report};
use funnel::ids::{item_key, shard_of};
use funnel::rng::Rng;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How late past its deadline a recommend may answer before it counts as a
/// violation: the client, the 2-core machine and the scheduler add latency
/// that is not the coordinator's.
pub const DEADLINE_SLACK: Duration = Duration::from_millis(1000);

/// The state a scenario body works with.
pub struct Run {
    pub faults: Faults,
    pub rng: Rng,
    pub seed: u64,
    /// The fault phase ends at this instant.
    pub until: Instant,
    pub notes: Vec<String>,
}

impl Run {
    /// Time left in the fault phase.
    pub fn left(&self) -> Duration {
        self.until.saturating_duration_since(Instant::now())
    }

    /// A seeded duration in [lo, hi].
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_millis() as u64;
        lo + Duration::from_millis(self.rng.below(span + 1))
    }

    /// Sleeps a seeded time in [lo, hi], cut short at the end of the phase.
    pub fn pause_for(&mut self, lo: Duration, hi: Duration) {
        let d = self.between(lo, hi).min(self.left());
        std::thread::sleep(d);
    }

    /// A seeded pick from `v`.
    /// A seeded choice among the live nodes other than `leader`.
    pub fn pick_follower(&mut self, leader: u64) -> Result<u64, HarnessError> {
        let followers: Vec<u64> = self
            .faults
            .cluster
            .live()
            .into_iter()
            .filter(|n| *n != leader)
            .collect();
        self.pick(&followers)
            .ok_or_else(|| HarnessError::Other(format!("no live follower besides leader {leader}")))
    }

    pub fn pick<T: Copy>(&mut self, v: &[T]) -> Option<T> {
        (!v.is_empty()).then(|| v[self.rng.usize_below(v.len())])
    }
}

/// A named fault schedule.
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    /// Adjusts the default cluster shape.
    pub shape: fn(&mut ClusterSpec, &mut LoadSpec),
    pub body: fn(&mut Run) -> Result<(), HarnessError>,
}

fn default_shape(_: &mut ClusterSpec, _: &mut LoadSpec) {}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// SIGKILL a random non-leader node for `down` (a range), restart it, rest
/// 1-2 s; repeat until the time is up.
fn kill_followers(run: &mut Run, down: (Duration, Duration)) -> Result<(), HarnessError> {
    loop {
        let (leader, _) = run.faults.leader()?;
        let victim = run.pick_follower(leader)?;
        run.faults.kill(victim);
        run.pause_for(down.0, down.1);
        run.faults.restart(victim)?;
        if run.left() < secs(6) {
            return Ok(());
        }
        run.pause_for(secs(1), secs(2));
    }
}

/// The crash failpoints funnel defines (feature `failpoints`).
pub const FAILPOINTS: &[&str] = &[
    "raft-log-append",
    "raft-apply",
    "raft-snapshot-build",
    "eventlog-append",
    "raft-snapshot-install",
];

/// Every scenario, in the order `--scenario all` runs them.
pub fn all() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "leader-kill",
            about: "SIGKILL the Raft leader, restart it after 2-5 s; repeat until the time is up",
            shape: default_shape,
            body: |run| {
                loop {
                    let (leader, _) = run.faults.leader()?;
                    run.faults.kill(leader);
                    run.pause_for(secs(2), secs(5));
                    run.faults.restart(leader)?;
                    if run.left() < secs(6) {
                        return Ok(());
                    }
                    run.pause_for(secs(1), secs(3));
                }
            },
        },
        Scenario {
            name: "leader-pause",
            about: "SIGSTOP the leader for 1.5-3 s (past the 250-500 ms election timeout), SIGCONT; repeat",
            shape: default_shape,
            body: |run| loop {
                let (leader, _) = run.faults.leader()?;
                run.faults.pause(leader)?;
                let d = run.between(ms(1500), secs(3));
                std::thread::sleep(d);
                run.faults.resume(leader)?;
                if run.left() < secs(6) {
                    return Ok(());
                }
                run.pause_for(secs(1), secs(3));
            },
        },
        Scenario {
            name: "replica-kill",
            about: "SIGKILL a non-leader node (a replica the coordinators fan out to) for 2-5 s, restart; repeat",
            shape: default_shape,
            body: |run| kill_followers(run, (secs(2), secs(5))),
        },
        Scenario {
            name: "partition-copy-kill",
            about: "SIGKILL a non-leader node (a copy of a third of the user partitions, R=2) under \
                    40 events/s for 2-4 s, restart; repeat. Every acknowledged event must be in \
                    its user's state on every copy after the heal, none counted twice",
            shape: |_, l| l.events_per_s = 40.0,
            body: |run| kill_followers(run, (secs(2), secs(4))),
        },
        Scenario {
            name: "snapshot-catchup",
            about: "SIGKILL a follower while upserts advance the log far past the snapshot \
                    threshold (snapshot_every = 50), then restart it: it must catch up from a snapshot",
            shape: |c, l| {
                c.snapshot_every = 50;
                l.upserts_per_s = 20.0;
            },
            body: |run| {
                let (leader, _) = run.faults.leader()?;
                let before = run
                    .faults
                    .cluster
                    .status(leader, secs(1))
                    .and_then(|s| s.last_log_index)
                    .unwrap_or(0);
                let victim = run.pick_follower(leader)?;
                run.faults.kill(victim);
                // most of the phase down, so the log moves on by hundreds
                let down = run.left().saturating_sub(secs(3)).max(secs(8));
                std::thread::sleep(down);
                let after = run
                    .faults
                    .cluster
                    .leader()
                    .and_then(|(l, _)| run.faults.cluster.status(l, secs(1)))
                    .and_then(|s| s.last_log_index)
                    .unwrap_or(0);
                run.notes.push(format!(
                    "the log advanced {} entries (index {before} -> {after}) while node {victim} was down; snapshot_every = 50",
                    after.saturating_sub(before)
                ));
                run.faults.restart(victim)
            },
        },
        Scenario {
            name: "failpoint-crash",
            about: "restart a seeded follower with a crash failpoint at raft-log-append, raft-apply, \
                    raft-snapshot-build, eventlog-append and raft-snapshot-install in turn (needs \
                    --features failpoints); each must fire (exit 86) and the node recover; \
                    rounds repeat while time is left",
            shape: |c, l| {
                c.snapshot_every = 50;
                l.upserts_per_s = 20.0;
                l.events_per_s = 20.0;
            },
            body: |run| loop {
                for name in FAILPOINTS {
                    let (leader, _) = run.faults.leader()?;
                    let victim = run.pick_follower(leader)?;
                    if *name == "raft-snapshot-install" {
                        // down long enough for the leader to compact past it,
                        // so it can only catch up from a snapshot
                        run.faults.kill(victim);
                        std::thread::sleep(secs(10));
                    }
                    let fired = run.faults.crash_at(victim, name, secs(30))?;
                    run.notes.push(format!(
                        "{name} fired on node {victim} {:.1} s after its start; it recovered",
                        fired.as_secs_f64()
                    ));
                }
                // another round of all five only if it fits in the time left
                if run.left() < secs(45) {
                    return Ok(());
                }
            },
        },
        Scenario {
            name: "partition-leader-minority",
            about: "cut the leader off alone (minority side) for 3-6 s, heal; then cut a follower off \
                    alone so the leader stays on the majority side; repeat",
            shape: |c, _| c.fault_injection = true,
            body: |run| loop {
                let (leader, _) = run.faults.leader()?;
                run.faults.partition(&[leader])?;
                run.pause_for(secs(3), secs(6));
                run.faults.heal_network()?;
                run.faults.leader()?;
                run.pause_for(secs(1), secs(2));
                let (leader, _) = run.faults.leader()?;
                let f = run.pick_follower(leader)?;
                run.faults.partition(&[f])?;
                run.pause_for(secs(3), secs(6));
                run.faults.heal_network()?;
                if run.left() < secs(12) {
                    return Ok(());
                }
                run.pause_for(secs(1), secs(2));
            },
        },
        Scenario {
            name: "slow-lossy-link",
            about: "75 +/- 50 ms delay and 50% drop on the link between the leader and a seeded \
                    follower (both ways) for most of the run",
            shape: |c, _| c.fault_injection = true,
            body: |run| {
                let (leader, _) = run.faults.leader()?;
                let f = run.pick_follower(leader)?;
                // FaultRules delay = fixed + uniform [0, jitter]: 25 + [0, 100] = 75 +/- 50 ms
                run.faults.slow_link(leader, f, 25, 100, 0.5)?;
                let d = run.left().saturating_sub(secs(2));
                std::thread::sleep(d);
                run.faults.heal_network()
            },
        },
        Scenario {
            name: "move-during-upserts",
            about: "funnel admin move-shard of a seeded shard to a node without it, one after another, while upserts run",
            shape: |_, l| l.upserts_per_s = 15.0,
            body: |run| {
                let mut moves = 0;
                while run.left() > secs(8) || moves == 0 {
                    let view = run
                        .faults
                        .cluster
                        .any_view()
                        .ok_or_else(|| HarnessError::Other("no cluster view".into()))?;
                    let shards = run.faults.cluster.spec.shards;
                    let shard = run.rng.below(shards as u64) as u32;
                    let holders: Vec<u64> = placed_copies(&view)
                        .into_iter()
                        .filter(|(s, _)| *s == shard)
                        .map(|(_, n)| n)
                        .collect();
                    let spare: Vec<u64> = run
                        .faults
                        .members()
                        .into_iter()
                        .filter(|n| !holders.contains(n))
                        .collect();
                    let (Some(from), Some(to)) = (run.pick(&holders), run.pick(&spare)) else {
                        return Err(HarnessError::Other(format!(
                            "shard {shard}: no holder or no spare node ({holders:?})"
                        )));
                    };
                    run.faults.move_shard(shard, from, to)?;
                    moves += 1;
                    run.pause_for(ms(500), secs(2));
                }
                run.notes.push(format!("{moves} shard moves completed"));
                Ok(())
            },
        },
        Scenario {
            name: "rolling-restart",
            about: "restart every node in turn (SIGTERM, 1-2 s down, start, serve again), then again while time is left",
            shape: default_shape,
            body: |run| {
                let mut rounds = 0;
                while run.left() > secs(10) || rounds == 0 {
                    let d = run.between(secs(1), secs(2));
                    run.faults.rolling_restart(d)?;
                    rounds += 1;
                }
                run.notes.push(format!("{rounds} rolling restart(s)"));
                Ok(())
            },
        },
        Scenario {
            name: "membership-3-5-3",
            about: "grow the voters 3 -> 5 with funnel admin add-node, SIGKILL a seeded voter and restart it, \
                    then drain nodes 5 and 4 back to 3",
            shape: |c, _| c.spares = 2,
            body: |run| {
                run.faults.add_node(4)?;
                run.faults.add_node(5)?;
                let five = run.faults.wait_view(secs(30), "five active nodes", |v| {
                    v.nodes
                        .values()
                        .filter(|n| n.status == funnel::cluster::NodeStatus::Active)
                        .count()
                        == 5
                });
                five?;
                // the 3 -> 5 voters step: both learners caught up and promoted
                run.faults.wait_voters(5, secs(30))?;
                if let Some((voters, learners)) = run.faults.raft_members() {
                    run.notes
                        .push(format!("at 5 nodes: voters {voters:?}, learners {learners:?}"));
                }
                let members = run.faults.members();
                let victim = run.pick(&members).unwrap_or(1);
                run.faults.kill(victim);
                run.pause_for(secs(2), secs(4));
                run.faults.restart(victim)?;
                run.faults.remove_node(5)?;
                run.faults.remove_node(4)?;
                if let Some((voters, learners)) = run.faults.raft_members() {
                    run.notes
                        .push(format!("back at 3: voters {voters:?}, learners {learners:?}"));
                }
                Ok(())
            },
        },
    ]
}

/// How to run a scenario.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub seed: u64,
    /// Length of the fault phase.
    pub duration: Duration,
    /// First port of the cluster (each node takes 3).
    pub base_port: u16,
}

/// Runs `scenario` start to verdict. `Err` only when the harness itself
/// could not run it (no binary, a node never started); broken invariants
/// are in the report.
pub fn run(scenario: &Scenario, opts: &RunOptions) -> Result<Report, HarnessError> {
    let wall = Instant::now();
    // fail before training anything when there is no binary to run
    crate::cluster::funnel_bin()?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!("funnel-chaos-{}-", scenario.name))
        .tempdir()
        .map_err(|source| HarnessError::Io {
            what: "creating the run directory".into(),
            source,
        })?;
    let mut spec = ClusterSpec {
        base_port: opts.base_port,
        ..ClusterSpec::default()
    };
    let mut load_spec = LoadSpec::default();
    (scenario.shape)(&mut spec, &mut load_spec);
    let rec = Recorder::new();
    let bundle = tmp.path().join("bundle");
    let started = small_bundle(&bundle, opts.seed, spec.shards)
        .and_then(|bundle| Cluster::new(spec.clone(), tmp.path(), &bundle))
        .and_then(|cluster| Faults::start(cluster, rec.clone()));
    let mut faults = match started {
        Ok(f) => f,
        // keep the configs and node logs: they say why
        Err(e) => {
            return Err(HarnessError::Other(format!(
                "{e} (run directory kept: {})",
                tmp.keep().display()
            )))
        }
    };
    faults.seed = opts.seed;
    let nodes: Vec<(u64, String)> = faults
        .cluster
        .nodes
        .iter()
        .map(|n| (n.id, n.internal.clone()))
        .collect();
    let rt = faults.cluster.rt.clone();
    let poller = Poller::start(rt.clone(), nodes, rec.clone(), ms(150));
    let load = Load::start(
        rt,
        load_spec,
        faults.routing.clone(),
        rec.clone(),
        opts.seed,
        format!("chaos-{}-{}", scenario.name, opts.seed),
    );
    // a little steady state first: the "outside faults" baseline
    std::thread::sleep(secs(2));
    let mut run = Run {
        faults,
        rng: Rng::derive(opts.seed, 0xC4A05),
        seed: opts.seed,
        until: Instant::now() + opts.duration,
        notes: Vec::new(),
    };
    let body = (scenario.body)(&mut run);
    if let Err(e) = &body {
        run.notes
            .push(format!("the fault schedule stopped early: {e}"));
    }
    let heal = run.faults.heal();
    let mut coverage_times = std::mem::take(&mut run.faults.coverage_times);
    let healed = match heal {
        Ok(d) => {
            coverage_times.push(d);
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    };
    let converge_t0 = Instant::now();
    let converged = wait_converged(&run.faults, secs(60));
    run.notes.push(match converged {
        true => format!(
            "replica digests equal {:.1} s after the heal",
            converge_t0.elapsed().as_secs_f64()
        ),
        false => "replica digests still differ 60 s after the heal".into(),
    });
    // steady state again after the heal
    std::thread::sleep(secs(2));
    load.stop();
    poller.stop();

    let history = rec.snapshot();
    let mut finals = observe(&run.faults, &history, &bundle, opts.seed);
    finals.heal = healed;
    finals.unexpected_exits = run.faults.unexpected_exits.clone();
    let mut violations = check_all(&history, &finals, DEADLINE_SLACK);
    let copies: usize = finals.user_events.values().map(|u| u.copies.len()).sum();
    run.notes.push(format!(
        "event counts read from {copies} copies of {} users",
        finals.user_events.len()
    ));
    if let Err(e) = body {
        violations.push(crate::invariants::Violation {
            invariant: "the fault schedule ran",
            detail: e.to_string(),
        });
    }
    let kept_dir = (!violations.is_empty()).then(|| tmp.keep().display().to_string());
    let spec = &run.faults.cluster.spec;
    let extra = Extra {
        duration: opts.duration,
        wall: wall.elapsed(),
        nodes: spec.voters + spec.spares,
        shards: spec.shards,
        replication: spec.replication,
        coverage_times,
        notes: run.notes,
        kept_dir,
    };
    Ok(Report::build(
        scenario.name,
        opts.seed,
        &history,
        violations,
        extra,
    ))
}

/// Waits until every shard has its copies with equal digests.
fn wait_converged(f: &Faults, timeout: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if let Some(v) = f.cluster.any_view() {
            let want = v.shard_map.as_ref().map_or(0, |m| m.replication as usize);
            let d = f.cluster.digests(&v);
            if d.len() == f.cluster.spec.shards as usize
                && d.values()
                    .all(|c| c.len() == want && c.iter().all(|x| x.1 == c[0].1))
            {
                return true;
            }
        }
        std::thread::sleep(ms(250));
    }
    false
}

/// Everything the invariants need from the healed cluster.
fn observe(
    f: &Faults,
    history: &crate::history::History,
    bundle: &std::path::Path,
    seed: u64,
) -> FinalObservations {
    let acked = &history.acknowledged_items();
    let shards = f.cluster.spec.shards;
    let mut out = FinalObservations {
        shards,
        logs: Vec::new(),
        fresh_write_and_read: Err("not attempted".into()),
        ..Default::default()
    };
    let Some(view) = f.cluster.any_view() else {
        out.fresh_write_and_read = Err("no node answered with a cluster view".into());
        out.logs = f.cluster.logs();
        return out;
    };
    out.replication = view
        .shard_map
        .as_ref()
        .map_or(0, |m| m.replication as usize);
    out.digests = f.cluster.digests(&view);
    out.items = presence(f, &view, acked, secs(30));
    // a copy that missed the tail of a burst learns of it at the next
    // catch-up sweep (every 30 s), so wait a little longer than one
    out.user_events = user_events(f, history, bundle, secs(40));
    out.fresh_write_and_read = fresh_write_and_read(f, seed);
    // read last, so a panic during the checks above is seen too
    out.logs = f.cluster.logs();
    out
}

/// For each id: (node, holds it) over every copy of its shard; polled until
/// every copy holds every id or `timeout` passes (a copy may still be
/// applying the tail of the log).
fn presence(
    f: &Faults,
    view: &funnel::cluster::ClusterView,
    ids: &[&str],
    timeout: Duration,
) -> BTreeMap<String, Vec<(u64, bool)>> {
    let shards = f.cluster.spec.shards;
    let mut by_shard: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for id in ids {
        let k = item_key(id);
        by_shard.entry(shard_of(k, shards)).or_default().push(k);
    }
    let copies = placed_copies(view);
    let t0 = Instant::now();
    loop {
        let held = f.cluster.held_keys(view, &by_shard);
        let out: BTreeMap<String, Vec<(u64, bool)>> = ids
            .iter()
            .map(|id| {
                let k = item_key(id);
                let s = shard_of(k, shards);
                let per_copy = copies
                    .iter()
                    .filter(|(cs, _)| *cs == s)
                    .map(|(_, node)| (*node, held.get(&(s, *node)).is_some_and(|h| h.contains(&k))))
                    .collect();
                (id.to_string(), per_copy)
            })
            .collect();
        let complete = out.values().all(|c| c.iter().all(|x| x.1));
        if complete || t0.elapsed() > timeout {
            return out;
        }
        std::thread::sleep(ms(500));
    }
}

/// For each user events were sent for: the bundle's count and what every
/// copy of the user's partition counts, read from that copy's node (which
/// reads its own copy). Waits for every copy to be Active and polls until
/// every count is within what the history allows, or `timeout` passes (a
/// copy may still be catching up).
fn user_events(
    f: &Faults,
    history: &crate::history::History,
    bundle: &std::path::Path,
    timeout: Duration,
) -> BTreeMap<String, crate::invariants::UserEventsSeen> {
    use crate::invariants::UserEventsSeen;
    let sent = history.events_by_user();
    if sent.is_empty() {
        return BTreeMap::new();
    }
    let base: BTreeMap<String, u64> = match funnel::model::ServingModel::load(bundle) {
        Ok(l) => l
            .user_states
            .into_iter()
            .map(|(id, s)| (id, s.events as u64))
            .collect(),
        Err(_) => BTreeMap::new(),
    };
    let t0 = Instant::now();
    loop {
        let map = f.cluster.any_view().and_then(|v| v.partition_map);
        let settled = map.as_ref().is_some_and(|m| {
            m.replicas.iter().all(|rs| {
                rs.iter()
                    .all(|r| r.state == funnel::cluster::ReplicaState::Active)
            })
        });
        let seen: BTreeMap<String, UserEventsSeen> = sent
            .keys()
            .map(|user| {
                let copies = map.as_ref().map_or(Vec::new(), |m| {
                    let p = funnel::ids::user_partition(user, m.shards);
                    m.replicas.get(p as usize).map_or(Vec::new(), |rs| {
                        rs.iter()
                            .map(|r| {
                                let count = f
                                    .cluster
                                    .get(r.node, &format!("/v1/users/{user}"), secs(3))
                                    .ok()
                                    .filter(|(s, _)| *s == 200)
                                    .and_then(|(_, v)| v["events"].as_u64());
                                (r.node, count)
                            })
                            .collect()
                    })
                });
                let seen = UserEventsSeen {
                    base: base.get(user).copied().unwrap_or(0),
                    copies,
                };
                (user.clone(), seen)
            })
            .collect();
        let within = seen.iter().all(|(user, s)| {
            let (acked, all) = sent[user];
            !s.copies.is_empty()
                && s.copies
                    .iter()
                    .all(|(_, c)| c.is_some_and(|c| (s.base + acked..=s.base + all).contains(&c)))
        });
        if (settled && within) || t0.elapsed() > timeout {
            return seen;
        }
        std::thread::sleep(ms(500));
    }
}

/// After the heal: an upsert through one node, read back from every copy
/// of its shard, and a recommend with coverage 1 from every member.
fn fresh_write_and_read(f: &Faults, seed: u64) -> Result<(), String> {
    let members = f.members();
    let via = *members.first().ok_or("no member node")?;
    let id = format!("chaos-fresh-{seed}");
    let vector = vec![0.25f32; crate::cluster::DIM as usize];
    let body = serde_json::json!({"items": [{"item_id": id, "vector": vector, "categories": []}]});
    match f.cluster.post(via, "/v1/items", body, secs(10)) {
        Ok((200, _)) => {}
        Ok((s, v)) => return Err(format!("fresh upsert via node {via}: {s} {v}")),
        Err(e) => return Err(format!("fresh upsert via node {via}: {e}")),
    }
    let view = f
        .cluster
        .any_view()
        .ok_or("no cluster view after the fresh upsert")?;
    let got = presence(f, &view, &[&id], secs(15));
    let copies = got.get(&id).cloned().unwrap_or_default();
    if copies.is_empty() || copies.iter().any(|c| !c.1) {
        return Err(format!("fresh upsert {id} not on every copy: {copies:?}"));
    }
    for n in members {
        if !f.cluster.full_coverage(n) {
            return Err(format!(
                "node {n} did not answer a recommend with coverage 1"
            ));
        }
    }
    Ok(())
}
