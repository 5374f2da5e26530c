//! The gRPC `FaultInjection` service on the internal port: lets a test
//! harness (the chaos suite, `funnel admin faults`) set this node's
//! transport fault rules at run time.
//!
//! Owns: the `cluster.fault_injection` gate, the admin-token check, turning
//! the wire rules into `FaultRules` (validated: nothing changes on a bad
//! rule) and logging each change. Must not touch: how rules are applied
//! (`cluster::fault`, `cluster::peer_channel`).

use crate::cluster::fault::{Delay, FaultInjector, FaultRules};
use crate::proto::ops::fault_injection_server::{FaultInjection, FaultInjectionServer};
use crate::proto::ops::{self, FaultAck};
use std::collections::BTreeSet;
use std::time::Duration;
use tonic::{Request, Response, Status};

pub struct FaultService {
    node_id: u64,
    enabled: bool,
    admin_token: String,
    faults: FaultInjector,
}

pub fn fault_service(
    node_id: u64,
    enabled: bool,
    admin_token: String,
    faults: FaultInjector,
) -> FaultInjectionServer<FaultService> {
    FaultInjectionServer::new(FaultService {
        node_id,
        enabled,
        admin_token,
        faults,
    })
}

/// The wire rules as `FaultRules`, validated, and the seed to restart from
/// (`None` for 0: keep the current one).
pub fn rules_from_proto(r: &ops::FaultRules) -> Result<(FaultRules, Option<u64>), String> {
    let target = |to: u64| (to != 0).then_some(to);
    let rules = FaultRules {
        isolate: r
            .isolate
            .iter()
            .map(|g| g.nodes.iter().copied().collect::<BTreeSet<u64>>())
            .collect(),
        cut: r.cut.iter().map(|l| (l.from, l.to)).collect(),
        drop: r
            .drop
            .iter()
            .map(|d| (target(d.to), d.probability))
            .collect(),
        delay: r
            .delay
            .iter()
            .map(|d| {
                (
                    target(d.to),
                    Delay {
                        fixed: Duration::from_millis(d.fixed_ms.into()),
                        jitter: Duration::from_millis(d.jitter_ms.into()),
                    },
                )
            })
            .collect(),
    };
    rules.validate()?;
    Ok((rules, (r.seed != 0).then_some(r.seed)))
}

#[tonic::async_trait]
impl FaultInjection for FaultService {
    async fn set_faults(
        &self,
        request: Request<ops::FaultRules>,
    ) -> Result<Response<FaultAck>, Status> {
        if !self.enabled {
            return Err(Status::failed_precondition(format!(
                "fault injection is disabled on node {}: start it with [cluster] fault_injection = true (or FUNNEL_CLUSTER__FAULT_INJECTION=true); it is meant for tests only",
                self.node_id
            )));
        }
        if !crate::auth::bearer_ok(crate::auth::presented(&request), &self.admin_token) {
            return Err(Status::unauthenticated(
                "fault injection needs the admin token: funnel admin --token TOKEN (or FUNNEL_ADMIN_TOKEN), metadata authorization: Bearer TOKEN",
            ));
        }
        let (rules, seed) = rules_from_proto(request.get_ref()).map_err(|e| {
            Status::invalid_argument(format!("fault rules refused, nothing changed: {e}"))
        })?;
        self.faults
            .replace(&rules, seed)
            .map_err(|e| Status::invalid_argument(format!("fault rules refused: {e}")))?;
        tracing::info!(
            node_id = self.node_id,
            isolate = ?rules.isolate,
            cut = ?rules.cut,
            drop = ?rules.drop,
            delay = ?rules.delay,
            seed = ?seed,
            "fault rules replaced"
        );
        Ok(Response::new(FaultAck {
            node_id: self.node_id,
            active: self.faults.active(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_rules_convert_with_zero_meaning_any() {
        let r = ops::FaultRules {
            isolate: vec![ops::NodeGroup { nodes: vec![3, 1] }],
            cut: vec![ops::Link { from: 1, to: 2 }],
            drop: vec![ops::LinkDrop {
                to: 0,
                probability: 0.25,
            }],
            delay: vec![ops::LinkDelay {
                to: 2,
                fixed_ms: 40,
                jitter_ms: 5,
            }],
            seed: 0,
        };
        let (rules, seed) = rules_from_proto(&r).unwrap();
        assert_eq!(seed, None);
        assert_eq!(rules.isolate, vec![BTreeSet::from([1, 3])]);
        assert_eq!(rules.cut, vec![(1, 2)]);
        assert_eq!(rules.drop, vec![(None, 0.25)]);
        assert_eq!(rules.delay[0].0, Some(2));
        assert_eq!(rules.delay[0].1.fixed, Duration::from_millis(40));
        let seeded = ops::FaultRules {
            seed: 7,
            ..Default::default()
        };
        assert_eq!(rules_from_proto(&seeded).unwrap().1, Some(7));
    }

    #[test]
    fn bad_wire_rules_are_refused() {
        let p = ops::FaultRules {
            drop: vec![ops::LinkDrop {
                to: 2,
                probability: 1.5,
            }],
            ..Default::default()
        };
        assert!(rules_from_proto(&p).unwrap_err().contains("1.5"));
        let d = ops::FaultRules {
            delay: vec![ops::LinkDelay {
                to: 0,
                fixed_ms: 60_001,
                jitter_ms: 0,
            }],
            ..Default::default()
        };
        assert!(rules_from_proto(&d).is_err());
        let z = ops::FaultRules {
            isolate: vec![ops::NodeGroup { nodes: vec![0] }],
            ..Default::default()
        };
        assert!(rules_from_proto(&z).is_err());
    }

    #[tokio::test]
    async fn disabled_means_failed_precondition_and_token_is_checked() {
        let faults = FaultInjector::new(1);
        let off = FaultService {
            node_id: 4,
            enabled: false,
            admin_token: String::new(),
            faults: faults.clone(),
        };
        let e = off
            .set_faults(Request::new(ops::FaultRules::default()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(
            e.message().contains("fault_injection = true"),
            "{}",
            e.message()
        );
        let on = FaultService {
            node_id: 4,
            enabled: true,
            admin_token: "tok".into(),
            faults: faults.clone(),
        };
        let isolate = ops::FaultRules {
            isolate: vec![ops::NodeGroup { nodes: vec![4] }],
            ..Default::default()
        };
        let e = on
            .set_faults(Request::new(isolate.clone()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(!faults.active());
        let mut req = Request::new(isolate);
        crate::auth::attach(&mut req, "tok").unwrap();
        let ack = on.set_faults(req).await.unwrap().into_inner();
        assert_eq!((ack.node_id, ack.active), (4, true));
        assert!(faults.decide(4, 1).1.is_err());
    }
}
