//! Transport fault injection for tests (in the style of TiKV's transport
//! filters): a shared, seeded handle that the cluster's gRPC clients consult
//! before every request.
//!
//! Owns: the fault rules (partitions, one-way link cuts, per-target drop
//! probability, added delay with jitter) and the decision for one request.
//! Must not touch: the network itself; `network.rs` and `node/` act on the
//! decision. Always compiled in: when no rule was ever set, a request costs
//! one relaxed atomic load.
//!
//! Faults are applied by the sender, so a "blocked" request never reaches
//! the target and its caller sees `Unreachable`; a "dropped" one fails like
//! a lost packet (a network error the caller retries).
//!
//! In a running node the rules come from the `FaultInjection` gRPC service
//! (`api::fault_service`, only with `cluster.fault_injection = true`) as one
//! `FaultRules` value that replaces the previous rules; every outgoing
//! node-to-node request consults them in `peer_channel`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::types::NodeId;
use crate::rng::Rng;

/// Why the injector refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InjectedFault {
    #[error("fault injector: link {from} -> {to} is partitioned")]
    Blocked { from: NodeId, to: NodeId },
    #[error("fault injector: request {from} -> {to} dropped")]
    Dropped { from: NodeId, to: NodeId },
}

/// Longest delay a rule may add: more is surely a typo, and would hold
/// requests for longer than any caller waits.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// A complete rule set, as the `FaultInjection.SetFaults` RPC carries it.
/// Node ids are never 0; a target of `None` means any target without a
/// rule of its own.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultRules {
    /// Groups each cut off from every node outside it (both directions).
    pub isolate: Vec<BTreeSet<NodeId>>,
    /// One-way cuts (from, to).
    pub cut: Vec<(NodeId, NodeId)>,
    /// Drop probability per target.
    pub drop: Vec<(Option<NodeId>, f64)>,
    pub delay: Vec<(Option<NodeId>, Delay)>,
}

/// Why a set of fault rules is refused; nothing changes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultRuleError {
    #[error("isolate[{index}] is an empty group; list the node ids to isolate")]
    EmptyGroup { index: usize },
    #[error("isolate[{index}] contains node id 0; node ids start at 1")]
    GroupWithNodeZero { index: usize },
    #[error("cut {from}:{to} names node 0; node ids start at 1")]
    CutWithNodeZero { from: NodeId, to: NodeId },
    #[error("cut {from}:{to} cuts a node from itself; name two nodes")]
    CutToSelf { from: NodeId, to: NodeId },
    #[error(
        "drop probability {probability} for target {} is not a number in [0, 1]",
        target_name(*target)
    )]
    DropProbability {
        probability: f64,
        target: Option<NodeId>,
    },
    #[error(
        "delay {} ms + jitter {} ms for target {} is above the limit of {} ms each",
        delay.fixed.as_millis(),
        delay.jitter.as_millis(),
        target_name(*target),
        MAX_DELAY.as_millis()
    )]
    DelayTooLong {
        delay: Delay,
        target: Option<NodeId>,
    },
}

/// `api::fault_service` turns the wire rules into `FaultRules` and reports a
/// refusal as text.
impl From<FaultRuleError> for String {
    fn from(e: FaultRuleError) -> String {
        e.to_string()
    }
}

impl FaultRules {
    pub fn is_empty(&self) -> bool {
        self.isolate.is_empty()
            && self.cut.is_empty()
            && self.drop.is_empty()
            && self.delay.is_empty()
    }

    /// Checks every rule; the message says which one is wrong and why.
    pub fn validate(&self) -> Result<(), FaultRuleError> {
        for (index, group) in self.isolate.iter().enumerate() {
            if group.is_empty() {
                return Err(FaultRuleError::EmptyGroup { index });
            }
            if group.contains(&0) {
                return Err(FaultRuleError::GroupWithNodeZero { index });
            }
        }
        for &(from, to) in &self.cut {
            if from == 0 || to == 0 {
                return Err(FaultRuleError::CutWithNodeZero { from, to });
            }
            if from == to {
                return Err(FaultRuleError::CutToSelf { from, to });
            }
        }
        for &(target, probability) in &self.drop {
            if !probability.is_finite() || !(0.0..=1.0).contains(&probability) {
                return Err(FaultRuleError::DropProbability {
                    probability,
                    target,
                });
            }
        }
        for &(target, delay) in &self.delay {
            if delay.fixed > MAX_DELAY || delay.jitter > MAX_DELAY {
                return Err(FaultRuleError::DelayTooLong { delay, target });
            }
        }
        Ok(())
    }
}

fn target_name(to: Option<NodeId>) -> String {
    to.map_or("any".to_string(), |t| format!("node {t}"))
}

/// Added latency: `fixed` plus a uniform random part in `[0, jitter)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delay {
    pub fixed: Duration,
    pub jitter: Duration,
}

#[derive(Debug, Default)]
struct Rules {
    /// Groups cut off from everyone outside them (both directions).
    isolated: Vec<BTreeSet<NodeId>>,
    /// One-way cuts: (from, to).
    cut_links: BTreeSet<(NodeId, NodeId)>,
    /// Drop probability per target; `None` key = any target.
    drop: BTreeMap<Option<NodeId>, f64>,
    delay: BTreeMap<Option<NodeId>, Delay>,
}

impl Rules {
    fn blocked(&self, from: NodeId, to: NodeId) -> bool {
        if self.cut_links.contains(&(from, to)) {
            return true;
        }
        self.isolated
            .iter()
            .any(|group| group.contains(&from) != group.contains(&to))
    }

    fn per_target<T: Copy>(map: &BTreeMap<Option<NodeId>, T>, to: NodeId) -> Option<T> {
        map.get(&Some(to)).or_else(|| map.get(&None)).copied()
    }
}

struct Inner {
    /// False until a rule is set: the fast path for production.
    active: AtomicBool,
    rules: Mutex<Rules>,
    rng: Mutex<Rng>,
}

/// Shared fault injector. Clones share the rules; give the same handle to
/// every node of a test cluster.
#[derive(Clone)]
pub struct FaultInjector {
    inner: Arc<Inner>,
}

impl Default for FaultInjector {
    fn default() -> Self {
        Self::new(0)
    }
}

impl std::fmt::Debug for FaultInjector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultInjector")
            .field("active", &self.inner.active.load(Ordering::Relaxed))
            .finish()
    }
}

impl FaultInjector {
    /// An injector with no rules; `seed` drives drop and jitter decisions.
    pub fn new(seed: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                active: AtomicBool::new(false),
                rules: Mutex::new(Rules::default()),
                rng: Mutex::new(Rng::new(seed)),
            }),
        }
    }

    fn update(&self, f: impl FnOnce(&mut Rules)) {
        let mut rules = self.inner.rules.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut rules);
        self.inner.active.store(true, Ordering::Release);
    }

    /// Cuts `group` off from every node outside it, in both directions.
    /// Several groups may be isolated at once.
    pub fn isolate(&self, group: impl IntoIterator<Item = NodeId>) {
        let group: BTreeSet<NodeId> = group.into_iter().collect();
        self.update(|r| r.isolated.push(group));
    }

    /// Cuts the one-way link `from -> to`.
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.update(|r| {
            r.cut_links.insert((from, to));
        });
    }

    /// Removes every partition and link cut (drops and delays stay).
    pub fn heal(&self) {
        self.update(|r| {
            r.isolated.clear();
            r.cut_links.clear();
        });
    }

    /// Drops requests to `target` (`None` = any target without its own
    /// rule) with probability `p` in [0, 1].
    pub fn set_drop(&self, target: Option<NodeId>, p: f64) {
        let p = if p.is_finite() {
            p.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.update(|r| {
            r.drop.insert(target, p);
        });
    }

    /// Delays requests to `target` (`None` = any target without its own rule).
    pub fn set_delay(&self, target: Option<NodeId>, delay: Delay) {
        self.update(|r| {
            r.delay.insert(target, delay);
        });
    }

    /// Replaces every rule with `rules` at once (the empty set clears them);
    /// with `seed`, restarts the random decisions from it. Refuses (and
    /// changes nothing) when a rule is invalid.
    pub fn replace(&self, rules: &FaultRules, seed: Option<u64>) -> Result<(), FaultRuleError> {
        rules.validate()?;
        let mut current = self.inner.rules.lock().unwrap_or_else(|p| p.into_inner());
        *current = Rules {
            isolated: rules.isolate.clone(),
            cut_links: rules.cut.iter().copied().collect(),
            drop: rules.drop.iter().copied().collect(),
            delay: rules.delay.iter().copied().collect(),
        };
        if let Some(seed) = seed {
            *self.inner.rng.lock().unwrap_or_else(|p| p.into_inner()) = Rng::new(seed);
        }
        self.inner
            .active
            .store(!rules.is_empty(), Ordering::Release);
        Ok(())
    }

    /// True while any rule is set.
    pub fn active(&self) -> bool {
        self.inner.active.load(Ordering::Acquire)
    }

    /// Removes every rule.
    pub fn clear(&self) {
        let mut rules = self.inner.rules.lock().unwrap_or_else(|p| p.into_inner());
        *rules = Rules::default();
        self.inner.active.store(false, Ordering::Release);
    }

    /// Decides the fate of one request `from -> to`: the delay to add, then
    /// whether it goes through.
    pub fn decide(&self, from: NodeId, to: NodeId) -> (Duration, Result<(), InjectedFault>) {
        if !self.inner.active.load(Ordering::Acquire) {
            return (Duration::ZERO, Ok(()));
        }
        let rules = self.inner.rules.lock().unwrap_or_else(|p| p.into_inner());
        if rules.blocked(from, to) {
            return (Duration::ZERO, Err(InjectedFault::Blocked { from, to }));
        }
        let drop_p = Rules::per_target(&rules.drop, to).unwrap_or(0.0);
        let delay = Rules::per_target(&rules.delay, to).unwrap_or_default();
        drop(rules);
        let mut rng = self.inner.rng.lock().unwrap_or_else(|p| p.into_inner());
        let mut wait = delay.fixed;
        if !delay.jitter.is_zero() {
            wait += delay.jitter.mul_f64(rng.f64());
        }
        if drop_p > 0.0 && rng.f64() < drop_p {
            return (wait, Err(InjectedFault::Dropped { from, to }));
        }
        (wait, Ok(()))
    }

    /// Applies the decision for one request: sleeps the delay, then says
    /// whether to send it.
    pub async fn before_request(&self, from: NodeId, to: NodeId) -> Result<(), InjectedFault> {
        let (wait, verdict) = self.decide(from, to);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_rules_means_everything_passes() {
        let f = FaultInjector::new(1);
        for to in 0..10 {
            assert_eq!(f.decide(1, to), (Duration::ZERO, Ok(())));
        }
    }

    #[test]
    fn isolation_blocks_both_directions_only_across_the_cut() {
        let f = FaultInjector::new(1);
        f.isolate([1]);
        assert!(matches!(
            f.decide(1, 2).1,
            Err(InjectedFault::Blocked { from: 1, to: 2 })
        ));
        assert!(f.decide(2, 1).1.is_err());
        assert!(f.decide(2, 3).1.is_ok(), "the majority side still talks");
        f.heal();
        assert!(f.decide(1, 2).1.is_ok());
    }

    #[test]
    fn one_way_cut() {
        let f = FaultInjector::new(1);
        f.cut(1, 2);
        assert!(f.decide(1, 2).1.is_err());
        assert!(f.decide(2, 1).1.is_ok());
    }

    #[test]
    fn drop_rate_is_roughly_honoured_and_seeded() {
        let run = |seed| {
            let f = FaultInjector::new(seed);
            f.set_drop(Some(2), 0.3);
            (0..10_000)
                .map(|_| f.decide(1, 2).1.is_err())
                .collect::<Vec<_>>()
        };
        let a = run(5);
        let dropped = a.iter().filter(|d| **d).count();
        assert!(
            (2_700..3_300).contains(&dropped),
            "dropped {dropped} of 10000 at p=0.3"
        );
        assert_eq!(a, run(5), "same seed, same decisions");
        let f = FaultInjector::new(5);
        f.set_drop(Some(2), 0.3);
        assert!(
            (0..1000).all(|_| f.decide(1, 3).1.is_ok()),
            "other targets unaffected"
        );
    }

    #[test]
    fn delay_is_fixed_plus_bounded_jitter_and_per_target_overrides_default() {
        let f = FaultInjector::new(3);
        f.set_delay(
            None,
            Delay {
                fixed: Duration::from_millis(10),
                jitter: Duration::from_millis(5),
            },
        );
        f.set_delay(
            Some(9),
            Delay {
                fixed: Duration::from_millis(100),
                jitter: Duration::ZERO,
            },
        );
        for _ in 0..100 {
            let (d, ok) = f.decide(1, 2);
            assert!(ok.is_ok());
            assert!(
                d >= Duration::from_millis(10) && d < Duration::from_millis(15),
                "{d:?}"
            );
        }
        assert_eq!(f.decide(1, 9).0, Duration::from_millis(100));
        f.clear();
        assert_eq!(f.decide(1, 9), (Duration::ZERO, Ok(())));
    }

    fn isolate_1() -> FaultRules {
        FaultRules {
            isolate: vec![BTreeSet::from([1])],
            ..FaultRules::default()
        }
    }

    #[test]
    fn replace_swaps_the_whole_rule_set_and_empty_clears() {
        let f = FaultInjector::new(1);
        f.cut(2, 3);
        f.replace(&isolate_1(), None).unwrap();
        assert!(f.active());
        assert!(f.decide(1, 2).1.is_err() && f.decide(3, 1).1.is_err());
        assert!(f.decide(2, 3).1.is_ok(), "the earlier cut is gone");
        f.replace(&FaultRules::default(), None).unwrap();
        assert!(!f.active());
        assert_eq!(f.decide(1, 2), (Duration::ZERO, Ok(())));
    }

    #[test]
    fn invalid_rules_are_refused_and_change_nothing() {
        let f = FaultInjector::new(1);
        f.replace(&isolate_1(), None).unwrap();
        let bad = [
            FaultRules {
                drop: vec![(Some(2), 1.5)],
                ..FaultRules::default()
            },
            FaultRules {
                drop: vec![(None, f64::NAN)],
                ..FaultRules::default()
            },
            FaultRules {
                delay: vec![(
                    None,
                    Delay {
                        fixed: Duration::from_millis(60_001),
                        jitter: Duration::ZERO,
                    },
                )],
                ..FaultRules::default()
            },
            FaultRules {
                cut: vec![(0, 2)],
                ..FaultRules::default()
            },
            FaultRules {
                isolate: vec![BTreeSet::new()],
                ..FaultRules::default()
            },
        ];
        for rules in &bad {
            assert!(f.replace(rules, Some(9)).is_err(), "{rules:?} accepted");
            assert!(f.decide(1, 2).1.is_err(), "the old isolation still holds");
            assert!(f.decide(2, 3).1.is_ok());
        }
        let e = bad[0].validate().unwrap_err();
        assert!(
            matches!(e, FaultRuleError::DropProbability { probability, target: Some(2) } if probability == 1.5),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(text.contains("1.5") && text.contains("[0, 1]"), "{text}");
    }

    #[test]
    fn replace_with_a_seed_replays_the_same_decisions() {
        let f = FaultInjector::new(1);
        let rules = FaultRules {
            drop: vec![(None, 0.5)],
            ..FaultRules::default()
        };
        let run = |f: &FaultInjector| {
            f.replace(&rules, Some(42)).unwrap();
            (0..200)
                .map(|_| f.decide(1, 2).1.is_err())
                .collect::<Vec<_>>()
        };
        let a = run(&f);
        assert_eq!(a, run(&f));
        assert!(a.iter().any(|d| *d) && a.iter().any(|d| !*d));
    }
}
