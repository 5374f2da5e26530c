//! `funnel admin faults set|clear`: sets one node's transport fault rules
//! over the `FaultInjection` gRPC service, for tests and debugging (the
//! node must run with `cluster.fault_injection = true`). Rules apply to
//! the requests that node sends; to partition a cluster, set the same
//! rules on every node.
//!
//! Owns: parsing the flags into `FaultRules` and the report. Must not
//! touch: validation beyond syntax (the node checks the rules and refuses
//! bad ones with what is wrong).

use crate::proto::ops::fault_injection_client::FaultInjectionClient;
use crate::proto::ops::{FaultRules, Link, LinkDelay, LinkDrop, NodeGroup};
use anyhow::{anyhow, bail, Result};
use std::time::Duration;

/// The flags of `faults set`, as typed.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FaultFlags {
    /// Cut this group of node ids off from all others, e.g. 1,2 (repeatable).
    #[arg(long, value_name = "IDS")]
    pub isolate: Vec<String>,
    /// Cut the one-way link FROM:TO (repeatable).
    #[arg(long, value_name = "FROM:TO")]
    pub cut: Vec<String>,
    /// Drop requests to TO (0: any) with probability P in [0, 1] (repeatable).
    #[arg(long, value_name = "TO:P")]
    pub drop: Vec<String>,
    /// Delay requests to TO (0: any) by FIXED_MS plus up to JITTER_MS (repeatable).
    #[arg(long, value_name = "TO:FIXED_MS:JITTER_MS")]
    pub delay: Vec<String>,
    /// Seed of the drop and jitter decisions (0: keep the node's).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

fn num<T: std::str::FromStr>(flag: &str, whole: &str, part: &str) -> Result<T> {
    part.trim().parse().map_err(|_| {
        anyhow!("--{flag} {whole}: `{part}` is not a number (see funnel admin faults set --help)")
    })
}

fn fields<'a>(flag: &str, v: &'a str, n: usize, shape: &str) -> Result<Vec<&'a str>> {
    let parts: Vec<&str> = v.split(':').collect();
    if parts.len() != n {
        bail!("--{flag} {v}: expected {shape}");
    }
    Ok(parts)
}

/// The rules the flags describe (syntax only; the node validates).
pub fn rules_from_flags(f: &FaultFlags) -> Result<FaultRules> {
    let mut r = FaultRules {
        seed: f.seed,
        ..FaultRules::default()
    };
    for g in &f.isolate {
        let nodes = g
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| num("isolate", g, s))
            .collect::<Result<Vec<u64>>>()?;
        if nodes.is_empty() {
            bail!("--isolate {g:?}: list node ids, e.g. --isolate 1,2");
        }
        r.isolate.push(NodeGroup { nodes });
    }
    for c in &f.cut {
        let p = fields("cut", c, 2, "FROM:TO, e.g. 1:2")?;
        r.cut.push(Link {
            from: num("cut", c, p[0])?,
            to: num("cut", c, p[1])?,
        });
    }
    for d in &f.drop {
        let p = fields("drop", d, 2, "TO:P, e.g. 2:0.1")?;
        r.drop.push(LinkDrop {
            to: num("drop", d, p[0])?,
            probability: num("drop", d, p[1])?,
        });
    }
    for d in &f.delay {
        let p = fields("delay", d, 3, "TO:FIXED_MS:JITTER_MS, e.g. 0:50:10")?;
        r.delay.push(LinkDelay {
            to: num("delay", d, p[0])?,
            fixed_ms: num("delay", d, p[1])?,
            jitter_ms: num("delay", d, p[2])?,
        });
    }
    Ok(r)
}

/// Sends `rules` to the node at `addr` (its internal address, over mTLS
/// with `tls`); returns the line to print.
pub fn run(
    addr: &str,
    token: &str,
    tls: Option<&crate::tls::NodeTls>,
    rules: FaultRules,
) -> Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let ch = crate::tls::internal_endpoint(addr, tls, Duration::from_secs(2))?
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .map_err(|e| {
                anyhow!(
                    "connecting to {addr}: {}; give a node's internal address (cluster.internal)",
                    crate::tls::error_chain(&e)
                )
            })?;
        let mut req = tonic::Request::new(rules);
        crate::auth::attach(&mut req, token).map_err(|e| anyhow!("--token: {e}"))?;
        let reply = FaultInjectionClient::new(ch).set_faults(req).await;
        let ack = match reply {
            Ok(r) => r.into_inner(),
            Err(s) => {
                let text = super::status_text(&s);
                if let Some(explained) = super::tls_mismatch(addr, tls, &text).await {
                    return Err(explained);
                }
                bail!("{addr} refused the fault rules ({:?}): {text}", s.code())
            }
        };
        Ok(format!(
            "node {}: fault rules {}\n",
            ack.node_id,
            if ack.active { "set" } else { "cleared" }
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_rules() {
        let f = FaultFlags {
            isolate: vec!["1,2".into()],
            cut: vec!["3:1".into()],
            drop: vec!["0:0.25".into()],
            delay: vec!["2:50:10".into()],
            seed: 9,
        };
        let r = rules_from_flags(&f).unwrap();
        assert_eq!(r.isolate[0].nodes, vec![1, 2]);
        assert_eq!((r.cut[0].from, r.cut[0].to), (3, 1));
        assert_eq!((r.drop[0].to, r.drop[0].probability), (0, 0.25));
        assert_eq!(
            (r.delay[0].to, r.delay[0].fixed_ms, r.delay[0].jitter_ms),
            (2, 50, 10)
        );
        assert_eq!(r.seed, 9);
        assert_eq!(
            rules_from_flags(&FaultFlags::default()).unwrap(),
            FaultRules::default()
        );
    }

    #[test]
    fn malformed_flags_say_what_is_expected() {
        let bad = |f: FaultFlags| rules_from_flags(&f).unwrap_err().to_string();
        let e = bad(FaultFlags {
            cut: vec!["1-2".into()],
            ..Default::default()
        });
        assert!(e.contains("FROM:TO"), "{e}");
        let e = bad(FaultFlags {
            drop: vec!["2:lots".into()],
            ..Default::default()
        });
        assert!(e.contains("`lots` is not a number"), "{e}");
        let e = bad(FaultFlags {
            isolate: vec![",".into()],
            ..Default::default()
        });
        assert!(e.contains("list node ids"), "{e}");
    }
}
