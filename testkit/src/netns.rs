//! Nodes on a network of their own: each node of a test cluster in a Linux
//! network namespace, joined to the others (and to the test, which stays in
//! the host's namespace) by a bridge; faults as kernel packet filters
//! (nftables) inside a node's namespace. A packet dropped there vanishes
//! as in a real partition: no error, no reset, nothing funnel can see.
//!
//! Needs root and the `ip` and `nft` commands (iproute2, nftables).
//! `NetLab::available` says whether this machine can, and why not.
//!
//! Names carry a per-lab tag, and a lab removes what it made when dropped;
//! `NetLab::create` first removes leftovers of the same tag (a test that
//! was killed before its drop ran).
//!
//! Owns: namespaces, the bridge, veth pairs, addresses and nftables
//! tables. Must not touch: processes (`process` starts a node inside a
//! namespace) or configs (`layout` writes the addresses given here).

use crate::KitError;
use std::net::Ipv4Addr;
use std::process::Command;

/// The nftables table a cut lives in, inside a node's namespace.
const CUT_TABLE: &str = "funnel_cut";

/// Whether network namespaces and nftables can be used here; the reason
/// when not (not root, a command missing).
pub fn available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("network namespaces need root".into());
    }
    for (cmd, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        let found = Command::new(cmd)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Err(format!("`{cmd}` is missing (apt-get install {package})"));
        }
    }
    Ok(())
}

/// Whether bridged frames go through the host's iptables (br_netfilter).
fn forwarding_filtered() -> bool {
    std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
        .is_ok_and(|v| v.trim() == "1")
}

/// Runs `program args`, an error with its stderr when it fails.
fn run<S: AsRef<std::ffi::OsStr>>(program: &str, args: &[S]) -> Result<(), KitError> {
    let shown = || {
        args.iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(crate::error::io(format!("running {program} {}", shown())))?;
    if out.status.success() {
        return Ok(());
    }
    Err(KitError::Other(format!(
        "{program} {}: {}",
        shown(),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Runs `nft -f -` with `script` on stdin, inside namespace `ns`.
fn nft_in(ns: &str, script: &str) -> Result<(), KitError> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(crate::error::io("running nft"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(crate::error::io("writing the nft script"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(crate::error::io("waiting for nft"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(KitError::Other(format!(
        "nft in {ns}: {}\n{script}",
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// A bridge with one namespace per node. Node `id` has address
/// `10.<subnet>.0.<10 + id>`; the host (the test) `10.<subnet>.0.1`.
pub struct NetLab {
    tag: String,
    subnet: u8,
    nodes: Vec<u64>,
}

impl NetLab {
    /// Makes the bridge and a namespace for each of `nodes`. `tag` (a few
    /// letters, unique per test) names everything; `subnet` picks the
    /// 10.`subnet`.0.0/24 network (unique per test too, as tests of one
    /// run may overlap).
    pub fn create(tag: &str, subnet: u8, nodes: &[u64]) -> Result<NetLab, KitError> {
        available().map_err(KitError::Other)?;
        let lab = NetLab {
            tag: tag.to_string(),
            subnet,
            nodes: nodes.to_vec(),
        };
        lab.remove();
        let bridge = lab.bridge();
        let host = format!("{}/24", lab.host_addr());
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        run("ip", &["addr", "add", &host, "dev", &bridge])?;
        run("ip", &["link", "set", &bridge, "up"])?;
        // with br_netfilter loaded (Docker loads it), frames bridged between
        // the namespaces pass the host's FORWARD chain, whose policy Docker
        // sets to DROP: let this bridge's own traffic through
        if forwarding_filtered() {
            run("iptables", &lab.forward_rule("-I"))?;
        }
        for &id in nodes {
            let ns = lab.ns(id);
            let veth = lab.veth(id);
            let addr = format!("{}/24", lab.addr(id));
            run("ip", &["netns", "add", &ns])?;
            run(
                "ip",
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            )?;
            run("ip", &["link", "set", &veth, "master", &bridge])?;
            run("ip", &["link", "set", &veth, "up"])?;
            run("ip", &["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    fn bridge(&self) -> String {
        format!("fb-{}", self.tag)
    }

    fn veth(&self, id: u64) -> String {
        format!("fv-{}-{id}", self.tag)
    }

    /// The namespace node `id` runs in.
    pub fn ns(&self, id: u64) -> String {
        format!("funnel-{}-{id}", self.tag)
    }

    /// Node `id`'s address.
    pub fn addr(&self, id: u64) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet, 0, 10 + id as u8)
    }

    /// The host's address on the bridge (where the test's requests come
    /// from).
    pub fn host_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet, 0, 1)
    }

    /// Cuts node `id` off from `peers`, both ways, at its own namespace's
    /// packet filter: every packet between them is dropped silently. The
    /// host still reaches it (clients keep calling the cut-off node).
    pub fn cut_off(&self, id: u64, peers: &[u64]) -> Result<(), KitError> {
        let addrs: Vec<String> = peers.iter().map(|p| self.addr(*p).to_string()).collect();
        let set = addrs.join(", ");
        let script = format!(
            "table inet {CUT_TABLE} {{\n\
             \tchain in {{ type filter hook input priority 0; policy accept; ip saddr {{ {set} }} drop; }}\n\
             \tchain out {{ type filter hook output priority 0; policy accept; ip daddr {{ {set} }} drop; }}\n\
             }}\n"
        );
        nft_in(&self.ns(id), &script)
    }

    /// Removes node `id`'s cut (no cut: nothing to do).
    pub fn heal(&self, id: u64) -> Result<(), KitError> {
        let ns = self.ns(id);
        let listed = Command::new("ip")
            .args([
                "netns", "exec", &ns, "nft", "list", "table", "inet", CUT_TABLE,
            ])
            .output()
            .is_ok_and(|o| o.status.success());
        if !listed {
            return Ok(());
        }
        run(
            "ip",
            &[
                "netns", "exec", &ns, "nft", "delete", "table", "inet", CUT_TABLE,
            ],
        )
    }

    /// `iptables ACTION FORWARD` arguments accepting this bridge's frames.
    fn forward_rule(&self, action: &'static str) -> Vec<String> {
        let bridge = self.bridge();
        [
            action, "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    }

    /// Removes the namespaces and the bridge (and with them the veths and
    /// any filter); errors are ignored, as what is gone is gone.
    fn remove(&self) {
        if forwarding_filtered() {
            // every copy a crashed run may have left
            while run("iptables", &self.forward_rule("-D")).is_ok() {}
        }
        for &id in &self.nodes {
            let _ = run("ip", &["netns", "del", &self.ns(id)]);
            let _ = run("ip", &["link", "del", &self.veth(id)]);
        }
        let _ = run("ip", &["link", "del", &self.bridge()]);
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        self.remove();
    }
}
