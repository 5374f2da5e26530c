//! The CI-sized chaos set: short runs of the scenarios that together cover
//! a killed leader, a paused leader, a killed replica under fan-out, a
//! partition with the leader on either side, a slow and lossy link, a
//! crash at every failpoint, shard moves under upserts and a killed copy of
//! user partitions under events, one after another (a 2-core machine runs one
//! 3-node cluster at a time well; parallel clusters would measure the
//! machine, not funnel). Each run must break no invariant.
//!
//! Seed: CHAOS_SEED (default 7). Ports 20000-20199 (20 per run).

use chaos_tests::scenario::{all, run, RunOptions};
use std::time::Duration;

/// (scenario, seconds of faults)
const CI_SET: &[(&str, u64)] = &[
    ("leader-kill", 20),
    ("leader-pause", 15),
    ("replica-kill", 15),
    ("partition-copy-kill", 12),
    ("partition-leader-minority", 15),
    ("slow-lossy-link", 12),
    ("failpoint-crash", 10),
    ("move-during-upserts", 15),
];

#[test]
fn ci_chaos_set_keeps_every_invariant() {
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .map(|s| s.parse().expect("CHAOS_SEED is an unsigned integer"))
        .unwrap_or(7);
    let scenarios = all();
    let mut failures = Vec::new();
    for (i, (name, secs)) in CI_SET.iter().enumerate() {
        let s = scenarios
            .iter()
            .find(|s| s.name == *name)
            .unwrap_or_else(|| panic!("scenario {name} exists"));
        let opts = RunOptions {
            seed,
            duration: Duration::from_secs(*secs),
            // a fresh range per run: no TIME_WAIT or straggler collisions
            base_port: 20000 + 20 * i as u16,
        };
        let report = run(s, &opts)
            .unwrap_or_else(|e| panic!("scenario {name} seed {seed} could not run: {e}"));
        print!("{}", report.render());
        assert!(
            report.acknowledged_writes > 0,
            "scenario {name} seed {seed}: no upsert was acknowledged, so nothing was tested"
        );
        if !report.passed() {
            failures.push(format!("{name} (seed {seed}): {:?}", report.violations));
        }
    }
    assert!(
        failures.is_empty(),
        "chaos invariants broken: {failures:#?}"
    );
}
