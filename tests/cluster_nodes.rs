//! Real `RaftNode`s in one test process: gRPC over 127.0.0.1 with
//! OS-assigned ports, redb files in temp dirs. Timing is never asserted;
//! waits are generous because other builds may share the machine.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::{Duration, Instant};

use funnel::cluster::state::{
    Command, CommandResult, ItemRecord, ModelRef, NodeInfo, ReplicaState,
};
use funnel::cluster::state_machine::encode_state;
use funnel::cluster::{
    initial_placement, ClusterError, FaultInjector, NodeId, RaftNode, RaftSettings,
};
use tempfile::TempDir;
use tokio::sync::watch;

const PATIENCE: Duration = Duration::from_secs(60);

struct TestNode {
    node: RaftNode,
    dir: TempDir,
    addr: String,
    stop: watch::Sender<bool>,
}

struct TestCluster {
    nodes: BTreeMap<NodeId, TestNode>,
    faults: FaultInjector,
    knobs: Knobs,
}

/// Per-test Raft settings.
#[derive(Clone, Copy)]
struct Knobs {
    snapshot_every: u64,
    max_message_bytes: usize,
}

const DEFAULT_KNOBS: Knobs = Knobs {
    snapshot_every: 1000,
    max_message_bytes: 64 << 20,
};

fn settings(
    id: NodeId,
    addr: &str,
    dir: &TempDir,
    faults: &FaultInjector,
    knobs: Knobs,
) -> RaftSettings {
    let mut s = RaftSettings::new(id, addr, dir.path());
    s.heartbeat_ms = 100;
    s.election_timeout_min_ms = 600;
    s.election_timeout_max_ms = 1200;
    s.snapshot_every = knobs.snapshot_every;
    s.max_message_bytes = knobs.max_message_bytes;
    s.request_timeout_ms = 5_000;
    s.faults = faults.clone();
    s
}

impl TestCluster {
    /// Starts nodes 1..=n; the first `voters` form the initial membership.
    async fn start(n: u64, voters: u64, knobs: Knobs) -> TestCluster {
        let faults = FaultInjector::new(42);
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            let dir = TempDir::new().unwrap();
            let (stop, rx) = watch::channel(false);
            let node = RaftNode::start(settings(id, "127.0.0.1:0", &dir, &faults, knobs), rx)
                .await
                .unwrap();
            let addr = node.internal_addr().to_string();
            nodes.insert(
                id,
                TestNode {
                    node,
                    dir,
                    addr,
                    stop,
                },
            );
        }
        let cluster = TestCluster {
            nodes,
            faults,
            knobs,
        };
        let members: BTreeMap<NodeId, NodeInfo> =
            (1..=voters).map(|id| (id, cluster.info(id))).collect();
        // Every voter may bootstrap with the same membership: it is idempotent.
        for id in 1..=voters {
            cluster.node(id).initialize(members.clone()).await.unwrap();
        }
        cluster
    }

    fn node(&self, id: NodeId) -> &RaftNode {
        &self.nodes[&id].node
    }

    fn info(&self, id: NodeId) -> NodeInfo {
        self.node(id)
            .node_info(format!("127.0.0.1:{}", 18000 + id), "")
    }

    fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// Waits until every node in `among` names the same leader, which is
    /// itself in `among`.
    async fn agreed_leader(&self, among: &[NodeId]) -> NodeId {
        eventually("a leader all nodes agree on", || async {
            let mut leaders = BTreeSet::new();
            for id in among {
                leaders.insert(self.node(*id).metrics().borrow().current_leader);
            }
            match leaders.into_iter().collect::<Vec<_>>().as_slice() {
                [Some(l)] if among.contains(l) => Some(*l),
                _ => None,
            }
        })
        .await
    }

    /// Waits until all `among` applied the same index and hold identical state.
    async fn converged(&self, among: &[NodeId]) -> (u64, String) {
        eventually("identical applied state on all nodes", || async {
            let mut seen = BTreeSet::new();
            for id in among {
                let st = self.node(*id).state();
                let s = st.read();
                seen.insert((s.last_applied.map(|l| l.index), s.digest()));
            }
            match seen.into_iter().collect::<Vec<_>>().as_slice() {
                [(Some(index), digest)] => Some((*index, digest.clone())),
                _ => None,
            }
        })
        .await
    }

    async fn stop(&mut self, id: NodeId) -> TestNode {
        let t = self.nodes.remove(&id).unwrap();
        t.node.shutdown().await;
        t
    }

    /// Restarts a stopped node on its old address and data directory.
    async fn restart(&mut self, id: NodeId, old: TestNode) {
        let TestNode { dir, addr, .. } = old;
        let (stop, rx) = watch::channel(false);
        let node = RaftNode::start(settings(id, &addr, &dir, &self.faults, self.knobs), rx)
            .await
            .unwrap();
        assert_eq!(node.internal_addr(), addr);
        self.nodes.insert(
            id,
            TestNode {
                node,
                dir,
                addr,
                stop,
            },
        );
    }

    async fn shutdown(self) {
        for (_, t) in self.nodes {
            // Exercise the watch-based shutdown path too.
            t.stop.send_replace(true);
            t.node.shutdown().await;
        }
    }
}

/// Polls `check` until it yields a value or PATIENCE runs out.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let give_up = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < give_up, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes, retrying errors that say "try again" (elections in progress).
async fn write_retrying(
    node: &RaftNode,
    command: Command,
) -> Result<(CommandResult, u64), ClusterError> {
    let give_up = Instant::now() + PATIENCE;
    loop {
        match node.write_indexed(command.clone()).await {
            Err(e) if e.is_retryable() && Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// An item with a 64-dimensional vector (about 300 bytes encoded).
fn wide_item(id: &str, x: f32) -> ItemRecord {
    ItemRecord {
        vector: (0..64).map(|d| (x + d as f32).sin()).collect(),
        ..item(id, 0.0)
    }
}

fn item(id: &str, x: f32) -> ItemRecord {
    ItemRecord {
        id: id.to_string(),
        vector: vec![x, 1.0 - x, 0.5],
        categories: vec!["news".to_string()],
        title: Some(format!("item {id}")),
        created_at: 1_700_000_000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_agree_on_writes_from_any_node_and_run_a_model_rollout() {
    let cluster = TestCluster::start(3, 3, DEFAULT_KNOBS).await;
    let all = cluster.ids();
    let leader = cluster.agreed_leader(&all).await;

    // Writes from every node (followers forward) get increasing log indexes:
    // one total order, whichever node took them.
    let started = Instant::now();
    let mut last_index = 0;
    for round in 0..10u32 {
        for &id in &all {
            let cmd =
                Command::UpsertItems(vec![item(&format!("r{round}-n{id}"), round as f32 / 10.0)]);
            let (result, index) = write_retrying(cluster.node(id), cmd).await.unwrap();
            assert_eq!(result, CommandResult::Items { applied: 1, index });
            assert!(index > last_index, "index {index} after {last_index}");
            last_index = index;
            // write() returns after the writing node applied the entry.
            assert!(cluster
                .node(id)
                .state()
                .read()
                .catalog
                .get(&format!("r{round}-n{id}"))
                .is_some());
        }
    }
    println!(
        "FIGURE 30 sequential writes (10 per node, 2/3 forwarded) took {} ms",
        started.elapsed().as_millis()
    );
    let (applied, _) = cluster.converged(&all).await;
    assert!(applied >= last_index);
    for &id in &all {
        let state = cluster.node(id).state();
        let s = state.read();
        let order: Vec<String> = s
            .catalog
            .changed_since(0)
            .map(|c| c.id().to_string())
            .collect();
        let expected: Vec<String> = (0..10u32)
            .flat_map(|r| all.iter().map(move |n| format!("r{r}-n{n}")))
            .collect();
        assert_eq!(
            order, expected,
            "node {id} applied the writes in another order"
        );
    }

    // Members were registered from the Raft membership; RegisterNode updates addresses.
    let follower = *all.iter().find(|&&id| id != leader).unwrap();
    for &id in &all {
        let mut info = cluster.info(id);
        info.grpc = format!("127.0.0.1:{}", 19000 + id);
        write_retrying(cluster.node(follower), Command::RegisterNode(info))
            .await
            .unwrap();
    }
    let active = cluster.node(follower).state().read().active_node_ids();
    assert_eq!(active, all);

    let placement = initial_placement(4, 2, &active).unwrap();
    let init = Command::InitShards {
        shards: 4,
        replication: 2,
        placement: placement.clone(),
    };
    write_retrying(cluster.node(follower), init.clone())
        .await
        .unwrap();
    match cluster.node(leader).write(init).await {
        Err(ClusterError::Rejected(reason)) => {
            assert!(reason.contains("already exists"), "{reason}")
        }
        other => panic!("a second InitShards must be rejected, got {other:?}"),
    }
    for (shard, nodes) in placement.iter().enumerate() {
        for &node in nodes {
            let cmd = Command::SetReplicaState {
                shard: shard as u32,
                node,
                state: ReplicaState::Active,
            };
            write_retrying(cluster.node(node), cmd).await.unwrap();
        }
    }

    let model = ModelRef {
        version: "v1".into(),
        bundle_path: "/bundles/v1".into(),
        source_node: leader,
    };
    write_retrying(cluster.node(leader), Command::StageModel(model))
        .await
        .unwrap();
    let activate = Command::ActivateModel {
        version: "v1".into(),
        force: false,
    };
    assert!(matches!(
        cluster.node(follower).write(activate.clone()).await,
        Err(ClusterError::Rejected(_))
    ));
    for &id in &all {
        let report = Command::ReportLoaded {
            node: id,
            version: "v1".into(),
        };
        write_retrying(cluster.node(id), report).await.unwrap();
    }
    write_retrying(cluster.node(follower), activate)
        .await
        .unwrap();
    cluster.converged(&all).await;
    for &id in &all {
        let state = cluster.node(id).state();
        let s = state.read();
        assert_eq!(
            s.models.active.as_ref().map(|m| m.version.as_str()),
            Some("v1")
        );
        assert_eq!(s.shard_map.as_ref().unwrap().replicas.len(), 4);
        assert_eq!(s.nodes[&id].grpc, format!("127.0.0.1:{}", 19000 + id));
    }

    // Status over Control.Status: followers refuse linearizable reads and
    // name the leader; the leader confirms and reports the read index.
    let leader_addr = cluster.nodes[&leader].addr.clone();
    let follower_addr = cluster.nodes[&follower].addr.clone();
    match cluster
        .node(leader)
        .remote_status(&follower_addr, true)
        .await
    {
        Err(ClusterError::NotLeader {
            leader: named,
            address,
            ..
        }) => {
            assert_eq!(named, leader);
            assert_eq!(address, leader_addr);
        }
        other => panic!("expected NotLeader from a follower, got {other:?}"),
    }
    let st = cluster
        .node(follower)
        .remote_status(&leader_addr, true)
        .await
        .unwrap();
    assert_eq!(st.id, leader);
    assert_eq!(st.role, "Leader");
    assert_eq!(st.voters, all);
    assert!(st.read_index.is_some());
    assert_eq!(st.state.active_version.as_deref(), Some("v1"));
    assert_eq!(st.state.shards, 4);
    let local = cluster.node(follower).status(false).await.unwrap();
    assert_eq!(local.leader, Some(leader));
    assert_eq!(local.leader_addr.as_deref(), Some(leader_addr.as_str()));
    assert_eq!(local.role, "Follower");

    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_leader_takes_over_when_the_leader_stops() {
    let mut cluster = TestCluster::start(3, 3, DEFAULT_KNOBS).await;
    let all = cluster.ids();
    let old = cluster.agreed_leader(&all).await;
    write_retrying(
        cluster.node(old),
        Command::UpsertItems(vec![item("before", 0.1)]),
    )
    .await
    .unwrap();

    let stopped_at = Instant::now();
    let _old_node = cluster.stop(old).await;
    let stop_took = stopped_at.elapsed();
    let rest: Vec<NodeId> = all.iter().copied().filter(|&id| id != old).collect();
    let new = cluster.agreed_leader(&rest).await;
    let took = stopped_at.elapsed();
    println!(
        "FIGURE leader re-election after leader shutdown: {} ms from the start of shutdown \
         (RaftNode::shutdown itself took {} ms; heartbeat 100 ms, election timeout 600-1200 ms)",
        took.as_millis(),
        stop_took.as_millis()
    );
    assert_ne!(new, old);

    for (i, &id) in rest.iter().enumerate() {
        let cmd = Command::UpsertItems(vec![item(&format!("after-{i}"), 0.2)]);
        write_retrying(cluster.node(id), cmd).await.unwrap();
    }
    cluster.converged(&rest).await;
    let state = cluster.node(rest[0]).state();
    assert_eq!(state.read().catalog.len(), 3);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_node_catches_up_through_a_snapshot() {
    // Small messages, so the snapshot has to travel in several chunks.
    let knobs = Knobs {
        snapshot_every: 20,
        max_message_bytes: 64 << 10,
    };
    let mut cluster = TestCluster::start(3, 3, knobs).await;
    let all = cluster.ids();
    let leader = cluster.agreed_leader(&all).await;
    let lagger = *all.iter().find(|&&id| id != leader).unwrap();
    for i in 0..5 {
        write_retrying(
            cluster.node(leader),
            Command::UpsertItems(vec![wide_item(&format!("early-{i}"), 0.1)]),
        )
        .await
        .unwrap();
    }
    cluster.converged(&all).await;
    let stopped = cluster.stop(lagger).await;
    let lagger_last = stopped.node.metrics().borrow().last_log_index.unwrap_or(0);

    let rest: Vec<NodeId> = all.iter().copied().filter(|&id| id != lagger).collect();
    for i in 0..200 {
        let cmd = Command::UpsertItems(vec![wide_item(&format!("late-{i}"), i as f32)]);
        write_retrying(cluster.node(rest[i % 2]), cmd)
            .await
            .unwrap();
    }
    // The leader compacted past everything the stopped node has, so log
    // replication alone cannot bring it back.
    let purged = eventually("the leader to purge its log", || async {
        let leader = cluster.agreed_leader(&rest).await;
        let m = cluster.node(leader).metrics().borrow().clone();
        m.purged.map(|p| p.index).filter(|&p| p > lagger_last)
    })
    .await;
    assert!(purged > lagger_last);

    cluster.restart(lagger, stopped).await;
    let (index, _) = cluster.converged(&all).await;
    let m = cluster.node(lagger).metrics().borrow().clone();
    assert!(
        m.snapshot.is_some_and(|s| s.index > lagger_last),
        "no snapshot on the restarted node: {m:?}"
    );
    assert!(index > purged);
    let lagger_state = cluster.node(lagger).state().snapshot();
    let other_state = cluster.node(rest[0]).state().snapshot();
    assert_eq!(lagger_state.catalog.len(), 205);
    let snapshot_bytes = encode_state(&lagger_state).unwrap().len();
    assert!(
        snapshot_bytes > 3 * (knobs.max_message_bytes / 4),
        "snapshot of {snapshot_bytes} bytes fits one chunk; the test would not exercise chunking"
    );
    for shard in 0..4 {
        assert_eq!(
            lagger_state.digest_shard(shard, 4),
            other_state.digest_shard(shard, 4)
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_old_leader_cannot_commit_or_serve_linearizable_reads() {
    let cluster = TestCluster::start(3, 3, DEFAULT_KNOBS).await;
    let all = cluster.ids();
    let old = cluster.agreed_leader(&all).await;
    write_retrying(
        cluster.node(old),
        Command::UpsertItems(vec![item("agreed", 0.1)]),
    )
    .await
    .unwrap();
    cluster.converged(&all).await;

    cluster.faults.isolate([old]);
    let majority: Vec<NodeId> = all.iter().copied().filter(|&id| id != old).collect();

    // The old leader still believes it leads, but nothing commits there;
    // the write is answered within the write timeout (twice the longest
    // election timeout here, 2.4 s), not the 5 s request budget, and says
    // its outcome is unknown (the entry sits in the old leader's log).
    let t0 = Instant::now();
    match cluster
        .node(old)
        .write(Command::UpsertItems(vec![item("lost", 0.9)]))
        .await
    {
        Err(e @ ClusterError::Timeout { .. }) => {
            assert!(e.is_retryable());
            let text = e.to_string();
            assert!(text.contains("no quorum acknowledged"), "{text}");
            assert!(text.contains("the outcome is unknown"), "{text}");
        }
        Err(e) => panic!("unexpected error kind {e:?}"),
        Ok(r) => panic!("the minority side committed a write: {r:?}"),
    }
    let took = t0.elapsed();
    assert!(
        took < Duration::from_millis(4_500),
        "a write to a cut-off leader took {took:?}"
    );
    match cluster.node(old).status(true).await {
        Err(
            ClusterError::NoQuorum(_)
            | ClusterError::NotLeader { .. }
            | ClusterError::NoLeader
            | ClusterError::Timeout { .. },
        ) => {}
        other => panic!("a cut-off leader served a linearizable status: {other:?}"),
    }
    // Its non-linearizable status still answers (stale, but it says so by role/term).
    assert!(cluster.node(old).status(false).await.is_ok());

    let new = cluster.agreed_leader(&majority).await;
    assert_ne!(new, old);
    for &id in &majority {
        write_retrying(
            cluster.node(id),
            Command::UpsertItems(vec![item(&format!("majority-{id}"), 0.3)]),
        )
        .await
        .unwrap();
    }
    let st = cluster.node(new).status(true).await.unwrap();
    assert!(st.read_index.is_some());
    for &id in &majority {
        let stale = cluster
            .node(old)
            .state()
            .read()
            .catalog
            .get(&format!("majority-{id}"))
            .is_some();
        assert!(
            !stale,
            "the cut-off node saw a write it cannot have received"
        );
    }

    cluster.faults.heal();
    cluster.agreed_leader(&all).await;
    cluster.converged(&all).await;
    let s = cluster.node(old).state().snapshot();
    assert!(
        s.catalog.get("lost").is_none(),
        "the uncommitted write survived the heal"
    );
    for &id in &majority {
        assert!(s.catalog.get(&format!("majority-{id}")).is_some());
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_grows_from_three_to_five_voters_and_back() {
    let cluster = TestCluster::start(5, 3, DEFAULT_KNOBS).await;
    let leader = cluster.agreed_leader(&[1, 2, 3]).await;
    write_retrying(
        cluster.node(leader),
        Command::UpsertItems(vec![item("a", 0.1)]),
    )
    .await
    .unwrap();

    for id in [4, 5] {
        cluster
            .node(leader)
            .add_learner(id, cluster.info(id), true)
            .await
            .unwrap();
    }
    let st = cluster.node(leader).status(false).await.unwrap();
    assert_eq!(st.voters, vec![1, 2, 3]);
    assert_eq!(st.learners, vec![4, 5]);
    // Learners replicate the state, and are registered nodes.
    cluster.converged(&[1, 2, 3, 4, 5]).await;
    assert!(cluster.node(5).state().read().nodes.contains_key(&4));

    let five: BTreeSet<NodeId> = (1..=5).collect();
    let leader = cluster.agreed_leader(&[1, 2, 3, 4, 5]).await;
    cluster.node(leader).change_membership(five).await.unwrap();
    let st = cluster.node(leader).status(false).await.unwrap();
    assert_eq!(st.voters, vec![1, 2, 3, 4, 5]);
    assert!(st.learners.is_empty());
    // A write from a former learner goes through the five-voter group.
    write_retrying(cluster.node(5), Command::UpsertItems(vec![item("b", 0.2)]))
        .await
        .unwrap();

    // A follower cannot change membership; it names the leader.
    let follower = (1..=5).find(|&id| id != leader).unwrap();
    match cluster
        .node(follower)
        .change_membership((1..=3).collect())
        .await
    {
        Err(ClusterError::NotLeader { leader: named, .. }) => assert_eq!(named, leader),
        other => panic!("expected NotLeader, got {other:?}"),
    }

    let three: BTreeSet<NodeId> = (1..=3).collect();
    let leader = cluster.agreed_leader(&[1, 2, 3, 4, 5]).await;
    cluster.node(leader).change_membership(three).await.unwrap();
    // A demoted leader steps down once the change commits.
    let leader = eventually("a leader among the remaining voters", || async {
        let l = cluster.agreed_leader(&[1, 2, 3, 4, 5]).await;
        (l <= 3).then_some(l)
    })
    .await;
    let st = cluster.node(leader).status(false).await.unwrap();
    assert_eq!(st.voters, vec![1, 2, 3]);
    assert_eq!(st.learners, vec![4, 5], "demoted voters stay as learners");
    write_retrying(cluster.node(4), Command::UpsertItems(vec![item("c", 0.3)]))
        .await
        .unwrap();

    cluster
        .node(leader)
        .remove_nodes([4, 5].into_iter().collect())
        .await
        .unwrap();
    let st = cluster.node(leader).status(false).await.unwrap();
    assert_eq!(st.voters, vec![1, 2, 3]);
    assert!(st.learners.is_empty());
    cluster.converged(&[1, 2, 3]).await;
    assert_eq!(cluster.node(1).state().read().catalog.len(), 3);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_get_through_lossy_slow_links_and_nodes_converge() {
    let cluster = TestCluster::start(3, 3, DEFAULT_KNOBS).await;
    let all = cluster.ids();
    cluster.agreed_leader(&all).await;
    cluster.faults.set_drop(None, 0.1);
    cluster.faults.set_delay(
        None,
        funnel::cluster::Delay {
            fixed: Duration::from_millis(2),
            jitter: Duration::from_millis(8),
        },
    );
    for i in 0..30u32 {
        let id = all[i as usize % all.len()];
        let cmd = Command::SetSetting {
            key: format!("k{i}"),
            value: format!("v{i}"),
        };
        write_retrying(cluster.node(id), cmd).await.unwrap();
    }
    cluster.faults.clear();
    cluster.converged(&all).await;
    let s = cluster.node(all[0]).state().snapshot();
    for i in 0..30 {
        assert_eq!(s.settings.get(&format!("k{i}")), Some(&format!("v{i}")));
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_catch_up_splits_batches_that_exceed_the_message_limit() {
    // No snapshot: the restarted node must get everything from the log, in
    // AppendEntries calls that each stay under 64 KiB.
    let knobs = Knobs {
        snapshot_every: 100_000,
        max_message_bytes: 64 << 10,
    };
    let mut cluster = TestCluster::start(3, 3, knobs).await;
    let all = cluster.ids();
    let leader = cluster.agreed_leader(&all).await;
    let lagger = *all.iter().find(|&&id| id != leader).unwrap();
    let stopped = cluster.stop(lagger).await;
    let rest: Vec<NodeId> = all.iter().copied().filter(|&id| id != lagger).collect();
    let mut backlog = 0;
    for batch in 0..60 {
        let items: Vec<ItemRecord> = (0..20)
            .map(|i| wide_item(&format!("b{batch}-{i}"), (batch * 20 + i) as f32))
            .collect();
        let cmd = Command::UpsertItems(items);
        backlog += funnel::cluster::network::encode_payload(&cmd)
            .unwrap()
            .len();
        write_retrying(cluster.node(rest[batch % 2]), cmd)
            .await
            .unwrap();
    }
    assert!(
        backlog > 4 * knobs.max_message_bytes,
        "backlog of {backlog} bytes would fit in few messages"
    );
    cluster.restart(lagger, stopped).await;
    cluster.converged(&all).await;
    assert_eq!(cluster.node(lagger).state().read().catalog.len(), 1200);
    cluster.shutdown().await;
}
