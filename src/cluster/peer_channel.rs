//! `PeerChannel`: the gRPC channel every node-to-node client uses (Raft,
//! Control, ShardData, BundleFiles), which consults the `FaultInjector`
//! before each request. This is the one place transport faults are
//! applied, so a new internal client gets them by using this type.
//!
//! Owns: acting on the injector's decision for one request — fail fast
//! like an unreachable peer (`Unavailable`) when the link is cut, fail like
//! a lost packet (`Unknown`, a network error) when dropped, sleep before
//! sending when delayed, within the request's own deadline. Must not
//! touch: the rules (`fault`) or connection management (the caller's
//! channel cache).
//!
//! A delay longer than the request's `grpc-timeout` sleeps only the
//! timeout and answers `DeadlineExceeded`, as a slow network would; a
//! shorter one shortens the deadline sent on by the time slept. Callers
//! that bound a call with their own timer instead simply drop the future.

use std::task::{Context, Poll};
use std::time::Duration;

use tonic::body::Body;
use tonic::codegen::http::{HeaderMap, HeaderValue, Request, Response};
use tonic::codegen::{BoxFuture, Service, StdError};
use tonic::transport::Channel;

use super::fault::{FaultInjector, InjectedFault};
use super::types::NodeId;

const GRPC_TIMEOUT: &str = "grpc-timeout";

/// A channel to one peer, tagged with the sending and the receiving node.
#[derive(Clone)]
pub struct PeerChannel {
    inner: Channel,
    faults: FaultInjector,
    from: NodeId,
    /// `None` when the peer's id is unknown (an address outside the
    /// membership): nothing is injected.
    to: Option<NodeId>,
}

impl PeerChannel {
    pub fn new(inner: Channel, faults: FaultInjector, from: NodeId, to: Option<NodeId>) -> Self {
        Self {
            inner,
            faults,
            from,
            to,
        }
    }

    /// The same link (nodes, fault rules) over another connection to the
    /// same peer.
    pub fn over(&self, inner: Channel) -> Self {
        Self {
            inner,
            faults: self.faults.clone(),
            from: self.from,
            to: self.to,
        }
    }
}

/// The status a request refused by the injector fails with.
pub fn fault_status(fault: InjectedFault) -> tonic::Status {
    match fault {
        // what a refused connection looks like to a tonic client
        InjectedFault::Blocked { .. } => tonic::Status::unavailable(fault.to_string()),
        // a lost request: a transport error the caller may retry
        InjectedFault::Dropped { .. } => tonic::Status::unknown(fault.to_string()),
    }
}

/// The deadline a request carries in its `grpc-timeout` header
/// (`<digits><unit>`, unit one of H M S m u n); `None` when absent or
/// malformed.
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(GRPC_TIMEOUT)?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// What to do with one request, given the injector's delay and verdict and
/// the request's deadline: `Err` ends it (after sleeping the returned
/// time), `Ok` sends it after sleeping, with the deadline left.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    Send {
        wait: Duration,
        deadline_left: Option<Duration>,
    },
    Fail {
        wait: Duration,
        code: tonic::Code,
        message: String,
    },
}

pub fn plan(
    wait: Duration,
    verdict: Result<(), InjectedFault>,
    deadline: Option<Duration>,
    to: NodeId,
) -> Plan {
    if let Some(budget) = deadline {
        if wait >= budget && !wait.is_zero() {
            return Plan::Fail {
                wait: budget,
                code: tonic::Code::DeadlineExceeded,
                message: format!(
                    "fault injector: a delay of {} ms to node {to} outlasted the request's {} ms deadline",
                    wait.as_millis(),
                    budget.as_millis()
                ),
            };
        }
    }
    match verdict {
        Err(fault) => {
            let status = fault_status(fault);
            Plan::Fail {
                wait,
                code: status.code(),
                message: status.message().to_string(),
            }
        }
        Ok(()) => Plan::Send {
            wait,
            deadline_left: deadline.map(|d| d.saturating_sub(wait)),
        },
    }
}

impl Service<Request<Body>> for PeerChannel {
    type Response = Response<Body>;
    type Error = StdError;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let (wait, verdict) = match self.to {
            Some(to) => self.faults.decide(self.from, to),
            None => (Duration::ZERO, Ok(())),
        };
        if wait.is_zero() && verdict.is_ok() {
            // the production path: no rule applies
            let fut = self.inner.call(request);
            return Box::pin(async move { fut.await.map_err(Into::into) });
        }
        let to = self.to.unwrap_or_default();
        let decided = plan(wait, verdict, grpc_timeout(request.headers()), to);
        // `poll_ready` reserved capacity on this handle: it goes with the
        // request, a fresh clone serves the next one
        let fresh = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, fresh);
        Box::pin(async move {
            match decided {
                Plan::Fail {
                    wait,
                    code,
                    message,
                } => {
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    Err(Box::new(tonic::Status::new(code, message)) as StdError)
                }
                Plan::Send {
                    wait,
                    deadline_left,
                } => {
                    tokio::time::sleep(wait).await;
                    if let Some(left) = deadline_left {
                        let millis = left.as_millis().clamp(1, 99_999_999);
                        if let Ok(v) = HeaderValue::from_str(&format!("{millis}m")) {
                            request.headers_mut().insert(GRPC_TIMEOUT, v);
                        }
                    }
                    ready.call(request).await.map_err(Into::into)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(GRPC_TIMEOUT, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn reads_grpc_timeouts() {
        assert_eq!(
            grpc_timeout(&headers("10m")),
            Some(Duration::from_millis(10))
        );
        assert_eq!(grpc_timeout(&headers("2S")), Some(Duration::from_secs(2)));
        assert_eq!(
            grpc_timeout(&headers("1H")),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            grpc_timeout(&headers("500u")),
            Some(Duration::from_micros(500))
        );
        assert_eq!(grpc_timeout(&headers("m")), None);
        assert_eq!(grpc_timeout(&headers("10x")), None);
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn a_blocked_request_fails_at_once_as_unavailable() {
        let blocked = Err(InjectedFault::Blocked { from: 1, to: 2 });
        match plan(Duration::ZERO, blocked, Some(Duration::from_secs(1)), 2) {
            Plan::Fail { wait, code, .. } => {
                assert_eq!(wait, Duration::ZERO);
                assert_eq!(code, tonic::Code::Unavailable);
            }
            other => panic!("{other:?}"),
        }
        let dropped = Err(InjectedFault::Dropped { from: 1, to: 2 });
        assert!(matches!(
            plan(Duration::ZERO, dropped, None, 2),
            Plan::Fail {
                code: tonic::Code::Unknown,
                ..
            }
        ));
    }

    #[test]
    fn a_delay_respects_the_callers_deadline() {
        // a 10 ms search must not wait for a 75 ms delay
        let p = plan(
            Duration::from_millis(75),
            Ok(()),
            Some(Duration::from_millis(10)),
            3,
        );
        match p {
            Plan::Fail {
                wait,
                code,
                message,
            } => {
                assert_eq!(wait, Duration::from_millis(10));
                assert_eq!(code, tonic::Code::DeadlineExceeded);
                assert!(
                    message.contains("75 ms") && message.contains("10 ms"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        // a shorter delay is slept and taken off the deadline sent on
        assert_eq!(
            plan(
                Duration::from_millis(30),
                Ok(()),
                Some(Duration::from_millis(100)),
                3
            ),
            Plan::Send {
                wait: Duration::from_millis(30),
                deadline_left: Some(Duration::from_millis(70)),
            }
        );
        assert_eq!(
            plan(Duration::from_millis(30), Ok(()), None, 3),
            Plan::Send {
                wait: Duration::from_millis(30),
                deadline_left: None,
            }
        );
    }

    /// The whole path through a real tonic client: with the link cut, a
    /// call to a port nobody listens on fails with the injector's status
    /// (not a connection error), at once; without rules it reaches the
    /// transport.
    #[tokio::test]
    async fn a_real_client_sees_the_injected_status() {
        use crate::proto::control::control_client::ControlClient;
        use crate::proto::control::StatusRequest;
        let ch = tonic::transport::Endpoint::from_static("http://127.0.0.1:9")
            .connect_timeout(Duration::from_millis(200))
            .connect_lazy();
        let faults = FaultInjector::new(1);
        faults.isolate([1]);
        let mut client = ControlClient::new(PeerChannel::new(ch, faults.clone(), 1, Some(2)));
        let t0 = std::time::Instant::now();
        let err = client
            .status(StatusRequest {
                linearizable: false,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(err.message().contains("partitioned"), "{}", err.message());
        assert!(t0.elapsed() < Duration::from_millis(100));
        faults.clear();
        let err = client
            .status(StatusRequest {
                linearizable: false,
            })
            .await
            .unwrap_err();
        assert!(
            !err.message().contains("fault injector"),
            "{}",
            err.message()
        );
        // a delay beyond the deadline answers DeadlineExceeded at the deadline
        faults.set_delay(
            Some(2),
            super::super::fault::Delay {
                fixed: Duration::from_millis(300),
                jitter: Duration::ZERO,
            },
        );
        let mut req = tonic::Request::new(StatusRequest {
            linearizable: false,
        });
        req.set_timeout(Duration::from_millis(20));
        let t0 = std::time::Instant::now();
        let err = client.status(req).await.unwrap_err();
        let took = t0.elapsed();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
        assert!(
            took >= Duration::from_millis(20) && took < Duration::from_millis(200),
            "{took:?}"
        );
    }
}
