//! The deployment files under deploy/ agree with each other and with funnel
//! itself. Kubernetes cannot run here, so the manifests are parsed and
//! checked for what must line up: the StatefulSet's serviceName is the
//! headless Service, selectors match the pod labels, the ConfigMap's node
//! configuration is valid for every pod and its ports and member addresses
//! match the container ports and the pods' DNS names, the probes use paths a
//! real `funnel serve` answers, nodes start without a bundle, and the Job
//! trains the bundle and publishes it (`--if-none-active`) through pod 0's
//! internal address, at a path pod 0 sees in its own mount, with the same
//! optional admin token. The same for docker-compose.yml (the job waits
//! for the nodes' /healthz) and HAProxy's config (it routes on /readyz),
//! and the two Dockerfiles of the funnel image must agree.

mod support;

use funnel::config::NodeConfig;
use funnel::net::parse_host_port;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use support::{Http, NodeProc};

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every YAML document of `path`, with merge keys (`<<: *anchor`) applied,
/// as JSON values.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            let mut v = serde_yaml_ng::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: not valid YAML: {e}", path.display()));
            v.apply_merge()
                .unwrap_or_else(|e| panic!("{}: bad merge key: {e}", path.display()));
            serde_json::to_value(v).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect()
}

/// Loads a node configuration the way `funnel serve --config` does, with
/// `env` as the process environment.
fn load_config(toml_text: &str, env: &[(&str, &str)]) -> Result<NodeConfig, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("funnel.toml");
    std::fs::write(&path, toml_text).unwrap();
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    NodeConfig::load(Some(&path), &env, &Default::default()).map_err(|e| e.to_string())
}

fn port_of(addr: &str) -> u16 {
    parse_host_port(addr).unwrap_or_else(|e| panic!("{e}")).port
}

fn host_of(addr: &str) -> String {
    parse_host_port(addr).unwrap_or_else(|e| panic!("{e}")).host
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v}"))
}

/// `labels` contains every key/value of `selector`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// The value after `flag` in a shell script or argument list text.
fn flag_value(text: &str, flag: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == flag {
            return words.next().map(String::from);
        }
    }
    None
}

/// A command given as a list of words (`["/bin/sh", "-ec", SCRIPT]`) as
/// one text, so flags can be found across the script's lines.
fn script_text(command: &Value) -> String {
    command
        .as_array()
        .unwrap_or_else(|| panic!("a command list, got {command}"))
        .iter()
        .map(|w| str_of(w, "command word"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A script's `funnel admin --addr ADDR publish [FLAGS] DIR` line.
#[derive(Debug)]
struct Publish {
    addr: String,
    flags: Vec<String>,
    bundle: String,
}

fn publish_command(script: &str) -> Option<Publish> {
    script.lines().find_map(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "publish")?;
        let admin = words.iter().position(|w| *w == "admin")?;
        let addr = flag_value(&words[admin..at].join(" "), "--addr")?;
        let (bundle, flags) = words[at + 1..].split_last()?;
        Some(Publish {
            addr,
            flags: flags.iter().map(|f| f.to_string()).collect(),
            bundle: bundle.to_string(),
        })
    })
}

/// A compose value with `${NAME:-default}` / `${NAME}` replaced by what
/// compose puts there when NAME is unset.
fn compose_default(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find('}') else {
            panic!("unclosed ${{ in {value}");
        };
        let inner = &rest[start + 2..start + len];
        if let Some((_, default)) = inner.split_once(":-") {
            out.push_str(default);
        }
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    out
}

struct K8s {
    docs: Vec<(String, Value)>,
}

impl K8s {
    fn load() -> K8s {
        let mut docs = Vec::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(deploy().join("k8s"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        for f in files {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            for d in yaml_docs(&f) {
                for key in ["apiVersion", "kind"] {
                    assert!(d[key].is_string(), "{name}: a document without {key}: {d}");
                }
                docs.push((name.clone(), d));
            }
        }
        K8s { docs }
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.docs
            .iter()
            .filter(|(_, d)| d["kind"] == kind)
            .map(|(_, d)| d)
            .collect()
    }

    fn one(&self, kind: &str) -> &Value {
        let all = self.all(kind);
        assert_eq!(all.len(), 1, "expected one {kind}, found {}", all.len());
        all[0]
    }
}

#[test]
fn kubernetes_manifests_line_up() {
    let k = K8s::load();
    // kustomization lists every other manifest
    let kust = k.one("Kustomization");
    let listed: BTreeSet<&str> = kust["resources"]
        .as_array()
        .expect("kustomization resources")
        .iter()
        .map(|r| str_of(r, "resource"))
        .collect();
    let files: BTreeSet<&str> = k
        .docs
        .iter()
        .filter(|(_, d)| d["kind"] != "Kustomization")
        .map(|(f, _)| f.as_str())
        .collect();
    assert_eq!(listed, files, "kustomization.yaml must list every manifest");
    for (f, d) in &k.docs {
        if d["kind"] != "Kustomization" {
            assert!(
                d["metadata"]["name"].is_string(),
                "{f}: unnamed {}",
                d["kind"]
            );
        }
    }

    let sts = k.one("StatefulSet");
    let spec = &sts["spec"];
    let sts_name = str_of(&sts["metadata"]["name"], "StatefulSet name");
    let replicas = spec["replicas"].as_u64().expect("replicas") as usize;
    let pod_labels = &spec["template"]["metadata"]["labels"];
    assert!(selects(&spec["selector"]["matchLabels"], pod_labels));
    assert_eq!(
        spec["podManagementPolicy"], "Parallel",
        "see statefulset.yaml"
    );

    // services: the headless one is the StatefulSet's, the client one selects the pods
    let services = k.all("Service");
    let headless: Vec<&&Value> = services
        .iter()
        .filter(|s| s["spec"]["clusterIP"] == "None")
        .collect();
    assert_eq!(headless.len(), 1, "one headless Service for peers");
    let headless = headless[0];
    let peers = str_of(&headless["metadata"]["name"], "headless Service name");
    assert_eq!(
        spec["serviceName"], peers,
        "serviceName must be the headless Service"
    );
    assert_eq!(
        headless["spec"]["publishNotReadyAddresses"], true,
        "peers must resolve each other before they are ready"
    );
    let client: Vec<&&Value> = services
        .iter()
        .filter(|s| s["spec"]["clusterIP"] != "None")
        .collect();
    assert_eq!(client.len(), 1, "one client Service");
    for s in &services {
        assert!(
            selects(&s["spec"]["selector"], pod_labels),
            "Service {} does not select the funnel pods",
            s["metadata"]["name"]
        );
    }
    let pdb = k.one("PodDisruptionBudget");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], pod_labels));
    let max_unavailable = pdb["spec"]["maxUnavailable"]
        .as_u64()
        .expect("maxUnavailable") as usize;
    assert!(
        replicas - max_unavailable > replicas / 2,
        "the PDB must leave a Raft quorum"
    );

    // the funnel container, its ports and probes
    let pod = &spec["template"]["spec"];
    let containers = pod["containers"].as_array().expect("containers");
    let c = containers
        .iter()
        .find(|c| c["name"] == "funnel")
        .expect("a container named funnel");
    let ports: BTreeMap<&str, u64> = c["ports"]
        .as_array()
        .expect("container ports")
        .iter()
        .map(|p| {
            (
                str_of(&p["name"], "port name"),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    for s in &services {
        for p in s["spec"]["ports"].as_array().expect("service ports") {
            let target = str_of(&p["targetPort"], "targetPort");
            assert!(
                ports.contains_key(target),
                "Service {} targets port {target}, which the container does not name",
                s["metadata"]["name"]
            );
        }
    }
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        assert_eq!(
            c[probe]["httpGet"]["port"], "http",
            "{probe} must use the http port"
        );
    }

    // the configuration every pod starts with
    let script = c["command"]
        .as_array()
        .expect("command")
        .iter()
        .map(|w| str_of(w, "command word"))
        .collect::<Vec<_>>()
        .join(" ");
    let config_path = flag_value(&script, "--config").expect("serve --config PATH");
    let mounts = c["volumeMounts"].as_array().expect("volumeMounts");
    let mount_of = |volume: &str| -> String {
        let m = mounts
            .iter()
            .find(|m| m["name"] == volume)
            .unwrap_or_else(|| panic!("volume {volume} not mounted"));
        str_of(&m["mountPath"], "mountPath").to_string()
    };
    let volumes = pod["volumes"].as_array().expect("volumes");
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name);
    let config_volume = volume("config").expect("a config volume");
    let cm_name = str_of(&config_volume["configMap"]["name"], "configMap name");
    let cm = k
        .all("ConfigMap")
        .into_iter()
        .find(|m| m["metadata"]["name"] == cm_name)
        .unwrap_or_else(|| panic!("ConfigMap {cm_name} is not among the manifests"));
    let key = Path::new(&config_path)
        .strip_prefix(mount_of("config"))
        .expect("--config lies in the config mount");
    let toml_text = str_of(&cm["data"][key.to_str().unwrap()], "config data");
    assert!(script.contains("FUNNEL_NODE__ID") && script.contains("FUNNEL_CLUSTER__BOOTSTRAP"));

    for ordinal in 0..replicas {
        let id = (ordinal + 1).to_string();
        let mut env = vec![("FUNNEL_NODE__ID", id.as_str())];
        if ordinal == 0 {
            env.push(("FUNNEL_CLUSTER__BOOTSTRAP", "true"));
        }
        let cfg = load_config(toml_text, &env)
            .unwrap_or_else(|e| panic!("pod {sts_name}-{ordinal}: {e}"));
        let cluster = cfg.cluster.as_ref().expect("a [cluster] section");
        assert_eq!(port_of(&cfg.api.http) as u64, ports["http"]);
        assert_eq!(port_of(&cfg.api.grpc) as u64, ports["grpc"]);
        assert_eq!(port_of(&cluster.internal) as u64, ports["internal"]);
        assert_eq!(
            host_of(&cfg.api.http),
            "0.0.0.0",
            "pods bind every interface"
        );
        assert_eq!(cluster.members.len(), replicas, "one member per pod");
        assert!(cluster.replication as usize <= replicas);
        for (i, m) in cluster.members.iter().enumerate() {
            assert_eq!(m.id, i as u64 + 1, "member ids follow the ordinals");
            let dns = format!("{sts_name}-{i}.{peers}");
            for (addr, port) in [
                (&m.internal, "internal"),
                (&m.http, "http"),
                (&m.grpc, "grpc"),
            ] {
                assert_eq!(host_of(addr), dns, "member {}", m.id);
                assert_eq!(port_of(addr) as u64, ports[port], "member {} {port}", m.id);
            }
        }
        // no model at start: the Job publishes the first one
        assert!(
            cfg.node.bundle_dir().is_none(),
            "pod {sts_name}-{ordinal} must start without a bundle (the Job publishes it)"
        );
    }

    // the Job: trains into the shared claim, then publishes that path to
    // pod 0's internal address, where pod 0 resolves it in its own mount
    let cfg0 = load_config(
        toml_text,
        &[
            ("FUNNEL_NODE__ID", "1"),
            ("FUNNEL_CLUSTER__BOOTSTRAP", "true"),
        ],
    )
    .unwrap_or_else(|e| panic!("pod {sts_name}-0: {e}"));
    let cluster0 = cfg0.cluster.as_ref().expect("a [cluster] section");
    let bundle_mount = mount_of("bundles");
    let claim = str_of(
        &volume("bundles").expect("bundles volume")["persistentVolumeClaim"]["claimName"],
        "claimName",
    );
    let job = k.one("Job");
    let jpod = &job["spec"]["template"]["spec"];
    let containers = jpod["containers"].as_array().expect("Job containers");
    assert_eq!(containers.len(), 1, "one Job container");
    let jc = &containers[0];
    let jscript = script_text(&jc["command"]);
    let jvol = jpod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["persistentVolumeClaim"]["claimName"] == claim)
        .expect("the Job mounts the bundles claim");
    let jmount = jc["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == jvol["name"])
        .expect("the Job mounts it");
    assert_eq!(
        jmount["mountPath"],
        bundle_mount.as_str(),
        "the Job and the pods mount the bundles at one path"
    );
    let out = flag_value(&jscript, "--out").expect("the Job trains with --out");
    assert!(
        Path::new(&out).starts_with(&bundle_mount),
        "the Job writes {out} outside the bundles mount {bundle_mount}"
    );
    assert_eq!(
        flag_value(&jscript, "--shards"),
        Some(cluster0.shards.to_string()),
        "the bundle's shard count is the cluster's"
    );
    let p = publish_command(&jscript).expect("the Job runs funnel admin publish");
    assert_eq!(p.bundle, out, "the Job publishes the bundle it trained");
    assert_eq!(
        p.addr, cluster0.members[0].internal,
        "the Job publishes through pod 0's internal address"
    );
    assert!(
        p.flags.contains(&"--if-none-active".to_string()),
        "a Job run again must not replace the cluster's model: {:?}",
        p.flags
    );
    assert!(
        !p.flags.contains(&"--force".to_string()),
        "the first publish waits for every pod"
    );
    let pvc = k.one("PersistentVolumeClaim");
    assert_eq!(pvc["metadata"]["name"], claim);
    assert!(pvc["spec"]["accessModes"]
        .as_array()
        .unwrap()
        .contains(&Value::from("ReadWriteMany")));
    assert!(
        pod["initContainers"].is_null(),
        "pods wait for nothing at start: {}",
        pod["initContainers"]
    );
    // the admin token: the same optional Secret for the pods and the Job
    let secret_of = |c: &Value, var: &str| -> Value {
        let e = c["env"]
            .as_array()
            .and_then(|env| env.iter().find(|e| e["name"] == var))
            .unwrap_or_else(|| panic!("{var} is not set in {}", c["name"]));
        e["valueFrom"]["secretKeyRef"].clone()
    };
    let node_secret = secret_of(c, "FUNNEL_API__ADMIN_TOKEN");
    assert_eq!(node_secret, secret_of(jc, "FUNNEL_ADMIN_TOKEN"));
    assert_eq!(
        node_secret["optional"], true,
        "without the Secret the cluster runs without a token"
    );

    // one image everywhere
    let mut images = BTreeSet::new();
    for cs in [&pod["containers"], &jpod["containers"]] {
        for c in cs.as_array().unwrap() {
            images.insert(str_of(&c["image"], "image"));
        }
    }
    assert_eq!(images.len(), 1, "{images:?}");
}

/// The services that run `funnel serve`, with their environment.
fn compose_nodes(services: &serde_json::Map<String, Value>) -> Vec<(&String, &Value)> {
    services
        .iter()
        .filter(|(_, s)| {
            s["command"]
                .as_array()
                .is_some_and(|c| c.first() == Some(&Value::from("serve")))
        })
        .collect()
}

#[test]
fn compose_file_and_load_balancer_line_up() {
    let docs = yaml_docs(&deploy().join("docker-compose.yml"));
    assert_eq!(docs.len(), 1);
    let services = docs[0]["services"].as_object().expect("services");
    let nodes = compose_nodes(services);
    assert_eq!(nodes.len(), 3, "three nodes");
    // the one-shot job: trains, then publishes to the cluster
    let job = &services["demo-bundle"];
    let job_script = script_text(&job["command"]);
    let publish = publish_command(&job_script).expect("the job runs funnel admin publish");
    assert_eq!(
        flag_value(&job_script, "--out"),
        Some(publish.bundle.clone()),
        "the job publishes the bundle it trains"
    );
    assert!(
        publish.flags.contains(&"--if-none-active".to_string()),
        "`up` again must not replace the cluster's model: {:?}",
        publish.flags
    );
    assert!(
        job["environment"]["FUNNEL_ADMIN_TOKEN"].is_string(),
        "the job passes the admin token"
    );
    let mut publish_to_internal = None;
    let mut bootstraps = 0;
    let mut ports = None;
    for (name, s) in &nodes {
        let cmd: Vec<&str> = s["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| str_of(w, "command"))
            .collect();
        let config_path = flag_value(&cmd.join(" "), "--config").expect("--config");
        let host_file = s["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .map(|v| str_of(v, "volume"))
            .find_map(|v| {
                let parts: Vec<&str> = v.split(':').collect();
                (parts.get(1) == Some(&config_path.as_str())).then(|| parts[0].to_string())
            })
            .expect("the config file is mounted");
        let toml_text = read(&deploy().join(&host_file));
        // as compose starts it with none of the file's variables set
        let env: Vec<(String, String)> = s["environment"]
            .as_object()
            .expect("environment")
            .iter()
            .map(|(k, v)| (k.clone(), compose_default(str_of(v, k))))
            .collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let cfg = load_config(&toml_text, &env).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            format!("node{}", cfg.node.id),
            **name,
            "service name = node + id"
        );
        let cluster = cfg.cluster.as_ref().unwrap();
        bootstraps += usize::from(cluster.bootstrap);
        let me = cfg.this_member().expect("in members");
        assert_eq!(
            host_of(&me.internal),
            **name,
            "members are reached by service name"
        );
        ports = Some((port_of(&cfg.api.http), port_of(&cfg.api.grpc)));
        // no model at start: the job publishes the first one
        assert!(
            cfg.node.bundle_dir().is_none(),
            "{name} must start without a bundle (the job publishes it)"
        );
        // the health check asks /healthz: the job waits for it, and /readyz
        // cannot pass before the job has published
        let check = s["healthcheck"]["test"].to_string();
        assert!(
            check.contains(&format!("127.0.0.1:{}/healthz", port_of(&cfg.api.http))),
            "{check}"
        );
        assert_eq!(
            job["depends_on"][name.as_str()]["condition"],
            "service_healthy",
            "the job waits for {name}"
        );
        // the node sees the job's bundle at the path the job publishes
        let mount = |svc: &Value| -> Option<(String, String)> {
            svc["volumes"].as_array()?.iter().find_map(|v| {
                let parts: Vec<&str> = v.as_str()?.split(':').collect();
                (parts.len() >= 2 && Path::new(&publish.bundle).starts_with(parts[1]))
                    .then(|| (parts[0].to_string(), parts[1].to_string()))
            })
        };
        assert_eq!(
            mount(s),
            mount(job),
            "{name} mounts the job's bundle volume at the same path"
        );
        assert_eq!(
            flag_value(&job_script, "--shards"),
            Some(cluster.shards.to_string()),
            "the bundle's shard count is the cluster's"
        );
        if cluster.bootstrap {
            publish_to_internal = Some(me.internal.clone());
        }
        // one admin token for the nodes and the job
        assert_eq!(
            s["environment"]["FUNNEL_API__ADMIN_TOKEN"], job["environment"]["FUNNEL_ADMIN_TOKEN"],
            "{name}"
        );
    }
    assert_eq!(
        publish_to_internal.as_deref(),
        Some(publish.addr.as_str()),
        "the job publishes through the bootstrap node's internal address"
    );
    assert_eq!(bootstraps, 1, "exactly one node bootstraps");
    let (http, grpc) = ports.unwrap();

    // HAProxy: every backend lists every node on a port the nodes serve,
    // and a node gets traffic once it serves a model
    let cfg = read(&deploy().join("haproxy/haproxy.cfg"));
    assert!(
        cfg.lines()
            .any(|l| l.trim() == "option httpchk GET /readyz"),
        "the load balancer must check /readyz"
    );
    let mut backends: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current = None;
    let mut binds = BTreeSet::new();
    for line in cfg.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["backend", name, ..] => current = Some(name.to_string()),
            ["frontend", ..] | ["defaults", ..] | ["global", ..] | ["resolvers", ..] => {
                current = None
            }
            ["bind", addr, ..] => {
                binds.insert(addr.trim_start_matches(':').parse::<u16>().unwrap());
            }
            ["server", _, addr, ..] => {
                let b = current.clone().expect("server lines belong to a backend");
                let port = port_of(addr);
                assert!(
                    port == http || port == grpc,
                    "{line}: port {port} is not a node port"
                );
                backends.entry(b).or_default().insert(host_of(addr));
            }
            _ => {}
        }
    }
    let node_names: BTreeSet<String> = nodes.iter().map(|(n, _)| n.to_string()).collect();
    assert!(!backends.is_empty());
    for (b, servers) in &backends {
        assert_eq!(servers, &node_names, "backend {b}");
    }
    let lb_ports: BTreeSet<u16> = services["lb"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let p = str_of(p, "port");
            p.rsplit(':').next().unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(
        lb_ports, binds,
        "the compose file publishes what HAProxy binds"
    );
}

/// The instructions of a Dockerfile's final stage that define the image's
/// contract.
fn contract(path: &Path) -> Vec<String> {
    let text = read(path);
    let last_stage = text.rsplit("\nFROM ").next().unwrap_or(&text);
    last_stage
        .lines()
        .filter(|l| {
            ["ENTRYPOINT", "USER", "WORKDIR", "EXPOSE", "CMD", "ENV"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(String::from)
        .collect()
}

#[test]
fn standard_and_offline_images_agree() {
    let standard = contract(&deploy().join("Dockerfile"));
    let offline = contract(&deploy().join("offline/funnel.Dockerfile"));
    assert!(standard.iter().any(|l| l.starts_with("ENTRYPOINT")));
    assert_eq!(standard, offline);
    let lb_config = "/usr/local/etc/haproxy/haproxy.cfg";
    assert!(read(&deploy().join("offline/lb.Dockerfile")).contains(lb_config));
    assert!(read(&deploy().join("haproxy/Dockerfile")).contains(lb_config));
    assert!(read(&deploy().join("offline/build-images.sh")).contains(lb_config));
}

/// The probe paths the manifests and the compose file use, asked of a real
/// `funnel serve` without a model: alive, not ready, and routes that exist.
#[test]
fn probe_paths_are_answered_by_a_real_node() {
    let k = K8s::load();
    let c = &k.one("StatefulSet")["spec"]["template"]["spec"]["containers"][0];
    let live = str_of(&c["livenessProbe"]["httpGet"]["path"], "liveness path");
    let ready = str_of(&c["readinessProbe"]["httpGet"]["path"], "readiness path");
    let tmp = tempfile::tempdir().unwrap();
    let node = NodeProc::start(None, &tmp.path().join("data"), &[], &[]);
    let http = Http::default();
    let (s, v) = http.get(&node.url(live));
    assert_eq!(s, 200, "{live}: {v}");
    let (s, v) = http.get(&node.url(ready));
    assert_eq!(s, 503, "{ready} without a model must say not ready: {v}");
    // and a request before any publish says what is missing
    let (s, v) = http.call(
        &node.url("/v1/recommend"),
        Some(serde_json::json!({"user_id": "u000001", "k": 10}).to_string()),
        None,
    );
    assert_eq!(s, 503, "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("funnel admin") && msg.contains("publish"),
        "{v}"
    );
    let (s, _) = http.get(&node.url("/metrics"));
    assert_eq!(s, 200, "the scrape path of the pod annotations");
}

#[test]
fn grafana_dashboard_is_well_formed() {
    let text = read(&deploy().join("grafana/funnel-dashboard.json"));
    let d: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(d["uid"].is_string() && d["title"].is_string());
    let panels = d["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate panel id"
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            let e = str_of(&t["expr"], "expr");
            assert!(
                e.contains("funnel_") || e.contains("process_cpu_seconds_total"),
                "{}: {e} uses none of funnel's metrics",
                p["title"]
            );
        }
    }
    // whether each metric name is really exported is checked against a live
    // cluster in tests/deploy_compose.rs
}
