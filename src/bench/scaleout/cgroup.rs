//! CPU shares for node processes: one cgroup per node with a CFS quota, so
//! every node of a benchmark behaves like an equal small host.
//!
//! Owns: finding the mounted cpu controller (cgroup v1 `cpu` hierarchy or
//! cgroup2 with `cpu` in `cgroup.controllers`), the groups' lifetime
//! (created under `funnel-scaleout-<pid>`, removed on drop, leftovers of a
//! crashed run removed at the next start), putting a child process in its
//! group before it runs (so every thread it ever starts is counted), and
//! reading the throttling counters. Must not touch: what runs in a group.
//!
//! The period: a quota throttles a group for the rest of its period once
//! the group has spent it, and a request that crosses nodes can meet that
//! wait at every hop. So the period is the shortest the kernel accepts with
//! a quota of at least 1 ms: quota 1 ms and period 1 ms / share (2.5 ms for
//! 0.4 of a core), not the usual 100 ms.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The smallest quota (and period) the kernel takes, microseconds.
pub const MIN_QUOTA_US: u64 = 1000;
/// The largest period the kernel takes, microseconds.
pub const MAX_PERIOD_US: u64 = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("a CPU share of {0} cores is not usable: give a share above 0.001 and at most the machine's {1} cores")]
    BadShare(f64, usize),
    #[error("confining nodes to a CPU share needs root (cgroups are written under /sys/fs/cgroup); run `funnel bench scaleout` as root")]
    NotRoot,
    #[error("no cgroup cpu controller is mounted: looked for a cgroup v1 hierarchy with the `cpu` option and for cgroup2 with `cpu` in cgroup.controllers ({0}); mount one (e.g. `mount -t cgroup -o cpu cgroup /sys/fs/cgroup/cpu`)")]
    NoController(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A fraction of a core as a CFS quota and period.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct CpuShare {
    pub cores: f64,
    pub quota_us: u64,
    pub period_us: u64,
}

impl CpuShare {
    /// The shortest period whose quota is at least `MIN_QUOTA_US`.
    pub fn new(cores: f64) -> Result<CpuShare, CgroupError> {
        let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
        if !cores.is_finite() || cores <= 0.001 || cores > nproc as f64 {
            return Err(CgroupError::BadShare(cores, nproc));
        }
        let (quota_us, period_us) = if cores >= 1.0 {
            // a whole core or more: period 1 ms, quota a multiple of it
            ((cores * MIN_QUOTA_US as f64).round() as u64, MIN_QUOTA_US)
        } else {
            let period = ((MIN_QUOTA_US as f64 / cores).ceil() as u64).min(MAX_PERIOD_US);
            (
                ((cores * period as f64).round() as u64).max(MIN_QUOTA_US),
                period,
            )
        };
        Ok(CpuShare {
            cores: quota_us as f64 / period_us as f64,
            quota_us,
            period_us,
        })
    }
}

/// Which cgroup interface is mounted, and where.
#[derive(Debug, Clone, PartialEq)]
pub enum Controller {
    V1 { root: PathBuf },
    V2 { root: PathBuf },
}

/// Finds the cpu controller in a mount table (the text of /proc/self/mounts).
/// v1 is preferred where both exist (hybrid hosts mount cpu only as v1).
pub fn find_controller(
    mounts: &str,
    v2_controllers: impl Fn(&Path) -> Option<String>,
) -> Option<Controller> {
    let mut v2 = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        let (path, fstype, opts) = (f[1], f[2], f[3]);
        if fstype == "cgroup" && opts.split(',').any(|o| o == "cpu") {
            return Some(Controller::V1 {
                root: PathBuf::from(path),
            });
        }
        if fstype == "cgroup2" && v2.is_none() {
            let p = PathBuf::from(path);
            if v2_controllers(&p).is_some_and(|c| c.split_whitespace().any(|x| x == "cpu")) {
                v2 = Some(Controller::V2 { root: p });
            }
        }
    }
    v2
}

/// Throttling counters of one group since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Throttling {
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_us: u64,
}

impl Throttling {
    /// Parses `cpu.stat` (v1: throttled_time in ns; v2: throttled_usec).
    pub fn parse(text: &str) -> Throttling {
        let mut t = Throttling::default();
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (Some(k), Some(v)) = (it.next(), it.next()) else {
                continue;
            };
            let Ok(v) = v.parse::<u64>() else { continue };
            match k {
                "nr_periods" => t.periods = v,
                "nr_throttled" => t.throttled_periods = v,
                "throttled_time" => t.throttled_us = v / 1000,
                "throttled_usec" => t.throttled_us = v,
                _ => {}
            }
        }
        t
    }

    pub fn since(&self, earlier: &Throttling) -> Throttling {
        Throttling {
            periods: self.periods.saturating_sub(earlier.periods),
            throttled_periods: self
                .throttled_periods
                .saturating_sub(earlier.throttled_periods),
            throttled_us: self.throttled_us.saturating_sub(earlier.throttled_us),
        }
    }
}

/// One group per node, all with the same share; removed on drop (stop
/// the processes first: a group with live members cannot be removed).
pub struct CpuGroups {
    controller: Controller,
    parent: PathBuf,
    groups: Vec<PathBuf>,
    pub share: CpuShare,
}

const PREFIX: &str = "funnel-scaleout-";

impl CpuGroups {
    /// Creates `count` groups limited to `share`.
    pub fn create(share: CpuShare, count: usize) -> Result<CpuGroups, CgroupError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(CgroupError::NotRoot);
        }
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let controller = find_controller(&mounts, |p| {
            fs::read_to_string(p.join("cgroup.controllers")).ok()
        })
        .ok_or_else(|| {
            let seen: Vec<&str> = mounts
                .lines()
                .filter(|l| l.contains("cgroup"))
                .filter_map(|l| l.split_whitespace().nth(1))
                .collect();
            CgroupError::NoController(if seen.is_empty() {
                "no cgroup mounts at all".into()
            } else {
                format!("cgroup mounts: {}", seen.join(", "))
            })
        })?;
        let root = match &controller {
            Controller::V1 { root } | Controller::V2 { root } => root.clone(),
        };
        remove_leftovers(&root);
        let parent = root.join(format!("{PREFIX}{}", std::process::id()));
        fs::create_dir_all(&parent).map_err(io("creating", &parent))?;
        let mut made = CpuGroups {
            controller: controller.clone(),
            parent: parent.clone(),
            groups: Vec::new(),
            share,
        };
        if let Controller::V2 { root } = &controller {
            // the cpu controller must be handed down to our groups
            write(&root.join("cgroup.subtree_control"), "+cpu")?;
            write(&parent.join("cgroup.subtree_control"), "+cpu")?;
        }
        for i in 0..count {
            let g = parent.join(format!("node-{}", i + 1));
            fs::create_dir_all(&g).map_err(io("creating", &g))?;
            made.groups.push(g.clone());
            match &controller {
                Controller::V1 { .. } => {
                    write(&g.join("cpu.cfs_period_us"), &share.period_us.to_string())?;
                    write(&g.join("cpu.cfs_quota_us"), &share.quota_us.to_string())?;
                }
                Controller::V2 { .. } => {
                    write(
                        &g.join("cpu.max"),
                        &format!("{} {}", share.quota_us, share.period_us),
                    )?;
                }
            }
        }
        Ok(made)
    }

    pub fn controller(&self) -> &Controller {
        &self.controller
    }

    /// Makes `cmd`'s process join group `i` before it runs its program,
    /// so every thread it starts is in the group from the beginning.
    pub fn confine(&self, i: usize, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt as _;
        let procs = self.groups[i].join("cgroup.procs");
        let path = std::ffi::CString::new(procs.as_os_str().as_encoded_bytes())
            .expect("cgroup paths have no NUL bytes");
        // SAFETY: between fork and exec the closure only calls
        // async-signal-safe functions (open, write, close) on memory
        // prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" moves the writing process itself
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(err);
                }
                Ok(())
            });
        }
    }

    /// Group `i`'s throttling counters.
    pub fn throttling(&self, i: usize) -> Throttling {
        fs::read_to_string(self.groups[i].join("cpu.stat"))
            .map(|t| Throttling::parse(&t))
            .unwrap_or_default()
    }
}

impl Drop for CpuGroups {
    fn drop(&mut self) {
        for g in self.groups.iter().rev() {
            let _ = fs::remove_dir(g);
        }
        let _ = fs::remove_dir(&self.parent);
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io("opening", path))?;
    f.write_all(value.as_bytes()).map_err(io("writing", path))
}

/// Removes the groups of earlier runs whose process is gone (a run that
/// was killed cannot clean up after itself).
fn remove_leftovers(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(kids) = fs::read_dir(e.path()) {
            for k in kids.flatten() {
                if k.path().is_dir() {
                    let _ = fs::remove_dir(k.path());
                }
            }
        }
        let _ = fs::remove_dir(e.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_use_the_shortest_period_with_a_quota_of_one_millisecond() {
        let s = CpuShare::new(0.4).unwrap();
        assert_eq!((s.quota_us, s.period_us), (1000, 2500));
        assert!((s.cores - 0.4).abs() < 1e-9);
        let s = CpuShare::new(0.3).unwrap();
        assert_eq!((s.quota_us, s.period_us), (1000, 3334));
        assert!((s.cores - 0.3).abs() < 1e-3);
        let s = CpuShare::new(1.0).unwrap();
        assert_eq!((s.quota_us, s.period_us), (1000, 1000));
        assert!(CpuShare::new(0.0).is_err());
        assert!(CpuShare::new(f64::NAN).is_err());
        assert!(CpuShare::new(1e6).is_err());
    }

    #[test]
    fn the_controller_is_found_in_v1_and_v2_mount_tables() {
        let v1 = "cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0\n\
                  cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n\
                  cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            find_controller(v1, |_| Some("cpu io".into())),
            Some(Controller::V1 {
                root: "/sys/fs/cgroup/cpu".into()
            })
        );
        let v2 = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n";
        assert_eq!(
            find_controller(v2, |_| Some("cpuset cpu io memory".into())),
            Some(Controller::V2 {
                root: "/sys/fs/cgroup".into()
            })
        );
        // cgroup2 without the cpu controller, and a v1 cpuacct-only mount
        assert_eq!(find_controller(v2, |_| Some("io memory".into())), None);
        assert_eq!(
            find_controller("cgroup /x cgroup rw,cpuacct 0 0\n", |_| None),
            None
        );
    }

    #[test]
    fn throttling_counters_parse_in_both_versions() {
        let v1 = "nr_periods 120\nnr_throttled 30\nthrottled_time 4500000\n";
        assert_eq!(
            Throttling::parse(v1),
            Throttling {
                periods: 120,
                throttled_periods: 30,
                throttled_us: 4500
            }
        );
        let v2 = "usage_usec 1\nnr_periods 10\nnr_throttled 2\nthrottled_usec 900\n";
        let t = Throttling::parse(v2);
        assert_eq!(
            (t.periods, t.throttled_periods, t.throttled_us),
            (10, 2, 900)
        );
        assert_eq!(t.since(&Throttling::default()), t);
    }
}
