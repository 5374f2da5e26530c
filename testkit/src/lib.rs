//! Dev-only test kit shared by funnel's integration tests (`tests/`,
//! through the thin `tests/support` layer) and the chaos harness
//! (`chaos-tests`): real `funnel serve` processes on 127.0.0.1 and the
//! calls that look at them. Never a dependency of funnel itself.
//!
//! One concept per module:
//! - [`bundle`]: the small seeded bundle the multi-process tests serve;
//! - [`process`]: the `funnel` executable and `funnel serve` child
//!   processes (start, report, SIGKILL/SIGTERM/SIGSTOP/SIGCONT);
//! - [`layout`]: ports, `members = [...]` and node config files;
//! - [`http`]: a blocking JSON client and the public API requests tests
//!   make (recommend, item upsert, `/metrics`);
//! - [`observe`]: Raft status and voters, the cluster view and placement,
//!   shard digests and convergence, and the polling loop of the waits;
//! - [`netns`]: nodes in network namespaces of their own on a bridge, and
//!   partitions as kernel packet filters (root only).
//!
//! Every call that can fail returns [`KitError`]: the chaos harness passes
//! it on, tests `.expect(..)` it.

pub mod bundle;
pub mod error;
pub mod http;
pub mod layout;
pub mod netns;
pub mod observe;
pub mod process;

pub use error::KitError;
