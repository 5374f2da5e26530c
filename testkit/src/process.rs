//! `funnel serve` child processes: which executable, how one is started
//! (arguments, environment, where its output goes), and what can be done to
//! it afterwards (SIGKILL, SIGTERM with a grace period, SIGSTOP/SIGCONT).
//!
//! Owns: the child processes and their signals. Must not touch: configs
//! (`layout`) or anything spoken over the network (`http`, `observe`).

use crate::error::io;
use crate::KitError;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The `RUST_LOG` every node runs with: warnings, Raft internals silent.
pub const NODE_LOG_FILTER: &str = "warn,openraft=off";

/// How long `NodeProc::start` waits for a node to report its addresses
/// (a node loads its bundle and builds its indexes first).
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(120);

/// The `funnel` executable outside funnel's own integration tests (which
/// know it as `env!("CARGO_BIN_EXE_funnel")`): `FUNNEL_BIN`, else
/// `target/<profile>/funnel` next to the running test or binary.
pub fn funnel_bin() -> Result<PathBuf, KitError> {
    const BUILD: &str = "build it with `cargo build --bin funnel --features failpoints` \
         (or point FUNNEL_BIN at a funnel executable)";
    if let Some(p) = std::env::var_os("FUNNEL_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(KitError::Binary(format!(
                "FUNNEL_BIN={} is not a file; {BUILD}",
                p.display()
            )))
        };
    }
    let exe = std::env::current_exe().map_err(io("locating the running executable"))?;
    // target/<profile>/deps/NAME-HASH (tests) or target/<profile>/NAME (binaries)
    let mut candidates = Vec::new();
    for dir in exe.ancestors().skip(1).take(2) {
        candidates.push(dir.join(format!("funnel{}", std::env::consts::EXE_SUFFIX)));
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        KitError::Binary(format!(
            "no funnel executable next to {}; {BUILD}",
            exe.display()
        ))
    })
}

/// A `funnel serve` command line being put together.
pub struct ServeCommand {
    cmd: Command,
    args: Vec<OsString>,
}

impl ServeCommand {
    /// `BIN serve`, logging at `NODE_LOG_FILTER`.
    pub fn new(bin: &Path) -> ServeCommand {
        ServeCommand {
            cmd: Command::new(bin),
            args: Vec::new(),
        }
    }

    /// `ip netns exec NS BIN serve`: the node runs in network namespace
    /// `ns` (`netns::NetLab`); `ip` execs it, so the child is the node.
    pub fn in_netns(ns: &str, bin: &Path) -> ServeCommand {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(bin);
        ServeCommand {
            cmd,
            args: Vec::new(),
        }
    }

    pub fn args<I, S>(mut self, args: I) -> ServeCommand
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> ServeCommand {
        self.cmd.env(key, value);
        self
    }

    pub fn env_remove(mut self, key: &str) -> ServeCommand {
        self.cmd.env_remove(key);
        self
    }

    fn command(mut self) -> (Command, Vec<OsString>) {
        // after the caller's environment: the nodes' log level is the kit's
        self.cmd
            .arg("serve")
            .args(&self.args)
            .env("RUST_LOG", NODE_LOG_FILTER);
        (self.cmd, self.args)
    }

    /// Starts it with stdin closed and stdout and stderr appended to `log`;
    /// does not wait for it to serve.
    pub fn spawn_logged(self, log: &Path) -> Result<ServeProcess, KitError> {
        let opening = || format!("opening {}", log.display());
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io(opening()))?;
        let err = out.try_clone().map_err(io(opening()))?;
        let (mut cmd, _) = self.command();
        let program = cmd.get_program().to_owned();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd.spawn().map_err(io(format!(
            "starting {} serve",
            Path::new(&program).display()
        )))?;
        Ok(ServeProcess::new(child))
    }

    /// Starts it with stderr shown (the test's output) and waits until it
    /// prints `funnel serving: ... http=ADDR grpc=ADDR` on stdout (within
    /// `REPORT_TIMEOUT`): a node may bind port 0 and say where it landed.
    pub fn spawn_reporting(self, data_dir: &Path) -> Result<NodeProc, KitError> {
        let (mut cmd, args) = self.command();
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let child = cmd.spawn().map_err(io("starting the funnel binary"))?;
        let mut process = ServeProcess::new(child);
        let stdout = process
            .child
            .stdout
            .take()
            .ok_or_else(|| KitError::Other("the node's stdout is not piped".into()))?;
        let (tx, rx) = std::sync::mpsc::channel();
        // keeps draining stdout after the line, so the node never blocks on it
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("funnel serving:") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = match rx.recv_timeout(REPORT_TIMEOUT) {
            Ok(line) => line,
            // stdout closed: the process ended (its stderr is above)
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let status = process.child.wait().map(|s| s.to_string());
                return Err(KitError::Exited {
                    args: format!("{args:?}"),
                    status: format!("{status:?}"),
                });
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                process.kill();
                return Err(KitError::Timeout(
                    REPORT_TIMEOUT,
                    "funnel serve did not report its addresses".into(),
                ));
            }
        };
        let field = |name: &str| -> Result<SocketAddr, KitError> {
            let v = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .ok_or_else(|| KitError::Other(format!("no {name} in {line:?}")))?;
            v.trim_start_matches("http://")
                .parse()
                .map_err(|e| KitError::Other(format!("{name}{v} in {line:?}: {e}")))
        };
        Ok(NodeProc {
            http: field("http=")?,
            grpc: field("grpc=")?,
            process,
            data_dir: data_dir.to_path_buf(),
        })
    }
}

/// A running `funnel serve` child, SIGKILLed and reaped when dropped.
#[derive(Debug)]
pub struct ServeProcess {
    child: Child,
    paused: bool,
}

impl ServeProcess {
    fn new(child: Child) -> ServeProcess {
        ServeProcess {
            child,
            paused: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stopped with SIGSTOP and not yet continued.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Its exit status if it has ended on its own (reaped), else `None`.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.paused = false;
    }

    /// Sends `sig` (kill(2)).
    pub fn signal(&mut self, sig: libc::c_int) -> Result<(), KitError> {
        let pid = self.pid();
        // SAFETY: kill(2) with the pid of a child this process started and
        // has not reaped (so the pid cannot have been reused).
        let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
        if rc != 0 {
            return Err(KitError::Io {
                what: format!("signalling pid {pid}"),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// SIGSTOP: the process freezes with its sockets open.
    pub fn pause(&mut self) -> Result<(), KitError> {
        self.signal(libc::SIGSTOP)?;
        self.paused = true;
        Ok(())
    }

    /// SIGCONT.
    pub fn resume(&mut self) -> Result<(), KitError> {
        self.signal(libc::SIGCONT)?;
        self.paused = false;
        Ok(())
    }

    /// SIGTERM (a graceful stop, as an orchestrator does it), reaped; a
    /// process still running after `grace` is SIGKILLed. True when it
    /// exited within the grace period.
    pub fn stop(mut self, grace: Duration) -> bool {
        if self.signal(libc::SIGTERM).is_err() {
            return false;
        }
        let t0 = Instant::now();
        while t0.elapsed() < grace {
            if self.try_exit().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `funnel serve` process that reported where it listens, SIGKILLed when
/// dropped.
#[derive(Debug)]
pub struct NodeProc {
    pub process: ServeProcess,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub data_dir: PathBuf,
}

impl NodeProc {
    /// `BIN serve --data-dir DIR --http 127.0.0.1:0 --grpc 127.0.0.1:0
    /// [--bundle B] EXTRA...` with `env`, once it reported its addresses.
    pub fn start(
        bin: &Path,
        bundle: Option<&Path>,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<NodeProc, KitError> {
        let mut args: Vec<OsString> = vec!["--data-dir".into(), data_dir.into()];
        args.extend(
            ["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"]
                .iter()
                .map(Into::into),
        );
        if let Some(b) = bundle {
            args.push("--bundle".into());
            args.push(b.into());
        }
        args.extend(extra.iter().map(Into::into));
        let mut cmd = ServeCommand::new(bin).args(args);
        for (k, v) in env {
            cmd = cmd.env(k, v);
        }
        cmd.spawn_reporting(data_dir)
    }

    /// `BIN serve --config FILE` with nothing overridden.
    pub fn start_config(bin: &Path, config: &Path, data_dir: &Path) -> Result<NodeProc, KitError> {
        ServeCommand::new(bin)
            .args(["--config".into(), OsString::from(config)])
            .spawn_reporting(data_dir)
    }

    pub fn kill9(&mut self) {
        self.process.kill();
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }
}
