//! Loading a node configuration: file, environment and flag layers, error
//! messages that name the bad key, validation and the TOML round trip.

use funnel::config::{
    CliOverrides, ClusterConfig, ClusterMember, ConfigError, NodeConfig, TlsFiles,
};
use funnel::eventlog::FsyncPolicy;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[path = "support/pki.rs"]
mod pki;

fn no_env() -> HashMap<String, String> {
    HashMap::new()
}

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("node.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn problems(cfg: &NodeConfig) -> Vec<String> {
    match cfg.validate() {
        Ok(()) => Vec::new(),
        Err(ConfigError::Invalid(p)) => p,
        Err(other) => panic!("validate returned {other:?}"),
    }
}

/// Three members on 127.0.0.1, this node being 1.
fn cluster_config() -> NodeConfig {
    let members = (1..=3u64)
        .map(|i| ClusterMember {
            id: i,
            internal: format!("127.0.0.1:{}", 7000 + i),
            http: format!("127.0.0.1:{}", 8080 + i),
            grpc: format!("127.0.0.1:{}", 50060 + i),
        })
        .collect();
    let mut cfg = NodeConfig {
        cluster: Some(ClusterConfig {
            members,
            bootstrap: true,
            ..ClusterConfig::default()
        }),
        ..NodeConfig::default()
    };
    cfg.api.http = "127.0.0.1:8081".into();
    cfg.api.grpc = "127.0.0.1:50061".into();
    cfg
}

fn cluster(cfg: &mut NodeConfig) -> &mut ClusterConfig {
    cfg.cluster.as_mut().unwrap()
}

#[test]
fn defaults_are_a_valid_single_node_on_localhost() {
    let d = NodeConfig::default();
    assert_eq!(problems(&d), Vec::<String>::new());
    assert!(!d.is_cluster());
    assert_eq!(d.api.http, "127.0.0.1:8080");
    assert_eq!(d.events.fsync, FsyncPolicy::Always);
    assert_eq!(d.node.bundle_dir(), None);
    let loaded = NodeConfig::load(None, &no_env(), &CliOverrides::default()).unwrap();
    assert_eq!(loaded, d);
    assert_eq!(problems(&cluster_config()), Vec::<String>::new());
}

#[test]
fn an_empty_file_and_partial_sections_take_the_defaults() {
    let cfg = NodeConfig::from_toml_str("", "empty").unwrap();
    assert_eq!(cfg, NodeConfig::default());
    // only some keys of nested, shared sections
    let cfg = NodeConfig::from_toml_str(
        "[recall.merge]\nbudget = 250\n[rerank]\ndiversity = 0.3\n",
        "partial",
    )
    .unwrap();
    assert_eq!(cfg.recall.merge.budget, 250);
    assert_eq!(
        cfg.recall.merge.quotas,
        NodeConfig::default().recall.merge.quotas
    );
    assert_eq!(cfg.rerank.diversity, 0.3);
    assert_eq!(cfg.rerank.explore_pool, 50);
}

#[test]
fn each_invalid_value_is_reported_under_its_key() {
    type Mutation = fn(&mut NodeConfig);
    let cases: Vec<(&str, Mutation)> = vec![
        ("node.id", |c| c.node.id = 0),
        ("node.id", |c| c.node.id = u64::MAX),
        ("node.data_dir", |c| c.node.data_dir = PathBuf::new()),
        ("api.http", |c| c.api.http = "localhost".into()),
        ("api.http", |c| c.api.http = "::1:8080".into()),
        ("api.grpc", |c| c.api.grpc = "127.0.0.1:70000".into()),
        ("api.grpc", |c| c.api.grpc = "127.0.0.1:8080".into()),
        ("api.default_k", |c| c.api.default_k = 0),
        ("api.max_k", |c| c.api.max_k = 5),
        ("api.max_batch", |c| c.api.max_batch = 0),
        ("api.max_message_bytes", |c| c.api.max_message_bytes = 10),
        ("api.default_deadline_ms", |c| c.api.default_deadline_ms = 0),
        ("api.max_deadline_ms", |c| c.api.max_deadline_ms = 10),
        ("api.http_workers", |c| c.api.http_workers = 0),
        ("recall.ann_k", |c| c.recall.ann_k = 0),
        ("recall.fresh_k", |c| c.recall.fresh_k = 0),
        ("recall.merge.budget", |c| c.recall.merge.budget = 0),
        ("recall.merge.quotas[3]", |c| {
            c.recall.merge.quotas[3].min = 60;
            c.recall.merge.quotas[3].max = 50;
        }),
        ("recall.merge.quotas", |c| c.recall.merge.budget = 200),
        ("budget.rank", |c| c.budget.rank = 0.0),
        ("budget.user", |c| c.budget.user = 1.5),
        ("budget.recall", |c| c.budget.recall = f64::NAN),
        ("budget:", |c| c.budget.user = 0.4),
        ("ranking.workers", |c| c.ranking.workers = 0),
        ("ranking.batch_rows", |c| c.ranking.batch_rows = 0),
        ("rerank.diversity", |c| c.rerank.diversity = 1.0),
        ("rerank.exploration", |c| c.rerank.exploration = -0.1),
        ("events.segment_bytes", |c| c.events.segment_bytes = 100),
        ("events.user_partitions", |c| c.events.user_partitions = 0),
        ("shards.search_threads", |c| c.shards.search_threads = 0),
        ("shards.expansion_search", |c| {
            c.shards.expansion_search = 70_000
        }),
    ];
    for (key, mutate) in cases {
        let mut cfg = NodeConfig::default();
        mutate(&mut cfg);
        let p = problems(&cfg);
        assert_eq!(p.len(), 1, "expected one problem for {key}, got {p:?}");
        assert!(p[0].starts_with(key), "{:?} should start with {key}", p[0]);
    }
}

#[test]
fn each_invalid_cluster_value_is_reported_under_its_key() {
    type Mutation = fn(&mut NodeConfig);
    let cases: Vec<(&str, Mutation)> = vec![
        ("cluster.internal", |c| cluster(c).internal = "7001".into()),
        ("cluster.internal", |c| {
            cluster(c).internal = "127.0.0.1:8081".into()
        }),
        ("cluster.members[2].id", |c| cluster(c).members[2].id = 2),
        ("cluster.members[1].id", |c| cluster(c).members[1].id = 0),
        ("cluster.members[1].http", |c| {
            cluster(c).members[1].http = "127.0.0.1:0".into()
        }),
        ("cluster.members[2].grpc", |c| {
            cluster(c).members[2].grpc = "node 3:1".into()
        }),
        ("cluster.members[1].internal", |c| {
            cluster(c).members[1].internal = "127.0.0.1:7001".into()
        }),
        ("node.id", |c| c.node.id = 9),
        ("cluster.replication", |c| cluster(c).replication = 4),
        ("cluster.replication", |c| cluster(c).replication = 0),
        ("cluster.shards", |c| cluster(c).shards = 0),
        ("cluster.heartbeat_ms", |c| cluster(c).heartbeat_ms = 0),
        ("cluster.election_timeout_min_ms", |c| {
            cluster(c).election_timeout_min_ms = 200
        }),
        ("cluster.election_timeout_max_ms", |c| {
            // not above the minimum (250 by default)
            cluster(c).election_timeout_max_ms = 250
        }),
        ("cluster.snapshot_every", |c| cluster(c).snapshot_every = 0),
        ("cluster.max_concurrent_transfers", |c| {
            cluster(c).max_concurrent_transfers = 0
        }),
        ("cluster.tls.cert", |c| {
            cluster(c).tls = TlsFiles {
                cert: "no/such/cert.pem".into(),
                key: "Cargo.toml".into(),
                ca: "Cargo.toml".into(),
            }
        }),
        ("cluster.tls:", |c| cluster(c).tls.ca = "Cargo.toml".into()),
    ];
    for (key, mutate) in cases {
        let mut cfg = cluster_config();
        mutate(&mut cfg);
        let p = problems(&cfg);
        assert_eq!(p.len(), 1, "expected one problem for {key}, got {p:?}");
        assert!(p[0].starts_with(key), "{:?} should start with {key}", p[0]);
    }
}

#[test]
fn cluster_rules_that_hold() {
    // no member list yet: nothing to check membership against
    let mut cfg = cluster_config();
    cluster(&mut cfg).members.clear();
    assert_eq!(problems(&cfg), Vec::<String>::new());
    // containers: host names, binding every interface
    let mut cfg = cluster_config();
    for (i, m) in cluster(&mut cfg).members.iter_mut().enumerate() {
        m.internal = format!("node{}:7001", i + 1);
    }
    cluster(&mut cfg).internal = "0.0.0.0:7001".into();
    assert_eq!(problems(&cfg), Vec::<String>::new());
    // all three TLS files present, a certificate for this node's host
    let dir = tempfile::tempdir().unwrap();
    let tls = pki::TestCa::new(dir.path(), "a").node("node1", &["127.0.0.1"]);
    let mut cfg = cluster_config();
    cluster(&mut cfg).tls = tls.clone();
    assert_eq!(problems(&cfg), Vec::<String>::new());
    assert_eq!(cfg.cluster.as_ref().unwrap().tls(), Some(&tls));
    assert_eq!(cfg.this_member().map(|m| m.id), Some(1));
    // binding every interface with no members entry: no host to check
    let no_host = pki::TestCa::new(dir.path(), "b").node("any", &["node7"]);
    let mut cfg = cluster_config();
    cluster(&mut cfg).members.clear();
    cluster(&mut cfg).internal = "0.0.0.0:7001".into();
    cluster(&mut cfg).tls = no_host;
    assert_eq!(problems(&cfg), Vec::<String>::new());
}

/// TLS files that exist but cannot work: each is one problem that starts
/// with the key, names the file and says what to do.
#[test]
fn tls_files_that_do_not_parse_or_fit_are_reported_under_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = pki::TestCa::new(d, "main");
    let good = ca.node("node1", &["127.0.0.1"]);
    let other = ca.node("other", &["127.0.0.1"]);
    let foreign = pki::TestCa::new(d, "foreign").node("node1", &["127.0.0.1"]);
    let wrong_host = ca.node("wrong-host", &["node9.example"]);
    let server_only = ca.issue(
        "server-only",
        &["127.0.0.1"],
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth],
    );
    let text = |name: &str, body: &str| {
        let p = d.join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let garbage = text("garbage.pem", "not a certificate\n");
    let broken = text(
        "broken.pem",
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    );
    let with = |f: &dyn Fn(&mut TlsFiles)| {
        let mut t = good.clone();
        f(&mut t);
        t
    };
    let cases: Vec<(&str, &str, TlsFiles)> = vec![
        (
            "cluster.tls.cert",
            "holds no certificate",
            with(&|t| t.cert = garbage.clone()),
        ),
        (
            "cluster.tls.cert",
            "is not valid PEM",
            with(&|t| t.cert = broken.clone()),
        ),
        (
            "cluster.tls.key",
            "holds no private key",
            with(&|t| t.key = good.cert.clone()),
        ),
        (
            "cluster.tls.key",
            "does not fit cluster.tls.cert",
            with(&|t| t.key = other.key.clone()),
        ),
        (
            "cluster.tls.ca",
            "holds no certificate",
            with(&|t| t.ca = garbage.clone()),
        ),
        (
            "cluster.tls.cert",
            "is not accepted as a client certificate",
            with(&|t| {
                t.cert = foreign.cert.clone();
                t.key = foreign.key.clone();
            }),
        ),
        (
            "cluster.tls.cert",
            "is not accepted as a client certificate",
            with(&|t| {
                t.cert = server_only.cert.clone();
                t.key = server_only.key.clone();
            }),
        ),
        (
            "cluster.tls.cert",
            "is not accepted for 127.0.0.1",
            with(&|t| {
                t.cert = wrong_host.cert.clone();
                t.key = wrong_host.key.clone();
            }),
        ),
    ];
    for (key, says, files) in cases {
        let mut cfg = cluster_config();
        cluster(&mut cfg).tls = files.clone();
        let p = problems(&cfg);
        assert_eq!(
            p.len(),
            1,
            "expected one problem for {key} ({says}), got {p:?}"
        );
        let path = if key.ends_with("key") {
            &files.key
        } else if key.ends_with("ca") {
            &files.ca
        } else {
            &files.cert
        };
        assert!(
            p[0].starts_with(&format!("{key} = {:?}", path.display().to_string())),
            "{:?} should start with {key} and the file",
            p[0]
        );
        assert!(p[0].contains(says), "{:?} should say {says:?}", p[0]);
        assert!(p[0].contains("; "), "{:?} should say what to do", p[0]);
    }
}

#[test]
fn environment_sets_the_tls_files() {
    let dir = tempfile::tempdir().unwrap();
    let tls = pki::TestCa::new(dir.path(), "env").node("node1", &["127.0.0.1"]);
    let (cert, key, ca) = (
        tls.cert.display().to_string(),
        tls.key.display().to_string(),
        tls.ca.display().to_string(),
    );
    let cfg = NodeConfig::load(
        None,
        &env(&[
            ("FUNNEL_CLUSTER__INTERNAL", "127.0.0.1:7001"),
            ("FUNNEL_CLUSTER__TLS__CERT", &cert),
            ("FUNNEL_CLUSTER__TLS__KEY", &key),
            ("FUNNEL_CLUSTER__TLS__CA", &ca),
        ]),
        &CliOverrides::default(),
    )
    .unwrap();
    assert_eq!(cfg.cluster.as_ref().unwrap().tls(), Some(&tls));
    // one of them alone is refused, naming the others
    let err = NodeConfig::load(
        None,
        &env(&[("FUNNEL_CLUSTER__TLS__CA", &ca)]),
        &CliOverrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("cluster.tls: cluster.tls.ca set but cluster.tls.cert, cluster.tls.key empty"),
        "{err}"
    );
}

#[test]
fn a_joining_node_names_a_member_and_does_not_bootstrap() {
    let mut cfg = cluster_config();
    let c = cluster(&mut cfg);
    c.members.clear();
    c.bootstrap = false;
    c.join = "127.0.0.1:7001".into();
    assert_eq!(problems(&cfg), Vec::<String>::new());
    cluster(&mut cfg).bootstrap = true;
    let p = problems(&cfg);
    assert!(
        p.iter()
            .any(|x| x.contains("cluster.join") && x.contains("bootstrap")),
        "{p:?}"
    );
    let mut cfg = cluster_config();
    cluster(&mut cfg).bootstrap = false;
    cluster(&mut cfg).join = "no-port".into();
    let p = problems(&cfg);
    assert!(p.iter().any(|x| x.contains("cluster.join")), "{p:?}");
}

#[test]
fn all_problems_are_reported_together() {
    let mut cfg = cluster_config();
    cfg.api.max_k = 1;
    cfg.budget.rerank = 2.0;
    cluster(&mut cfg).shards = 0;
    let p = problems(&cfg);
    assert_eq!(p.len(), 3, "{p:?}");
    for key in ["api.max_k", "budget.rerank", "cluster.shards"] {
        assert!(
            p.iter().any(|m| m.starts_with(key)),
            "{key} missing in {p:?}"
        );
    }
    let shown = ConfigError::Invalid(p).to_string();
    assert_eq!(shown.lines().count(), 4, "{shown}");
}

fn parse_err(text: &str) -> (Option<(usize, usize)>, Option<String>, String, String) {
    match NodeConfig::from_toml_str(text, "node.toml") {
        Err(e @ ConfigError::Parse { .. }) => {
            let shown = e.to_string();
            let ConfigError::Parse {
                at, key, message, ..
            } = e
            else {
                unreachable!()
            };
            (at.map(|p| (p.line, p.column)), key, message, shown)
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn unknown_key_in_the_file_is_named_with_its_line() {
    let (at, key, message, shown) =
        parse_err("[node]\nid = 2\n\n[api]\nhttp = \"127.0.0.1:1\"\nmax_kk = 5\n");
    assert_eq!(at.map(|(line, _)| line), Some(6));
    assert_eq!(key.as_deref(), Some("api.max_kk"));
    assert!(message.contains("unknown field `max_kk`"), "{message}");
    assert!(
        message.contains("`max_k`"),
        "should list the known keys: {message}"
    );
    assert!(shown.starts_with("node.toml:6:"), "{shown}");

    let (at, key, message, _) = parse_err("[nodes]\nid = 2\n");
    assert_eq!(at.map(|(line, _)| line), Some(1));
    assert_eq!(key.as_deref(), Some("nodes"));
    assert!(message.contains("unknown field `nodes`"), "{message}");

    let (at, key, message, _) = parse_err(
        "[cluster]\nmembers = [\n  { id = 1, internal = \"a:1\", http = \"a:2\", grpc = \"a:3\", role = 1 },\n]\n",
    );
    assert_eq!(at.map(|(line, _)| line), Some(3));
    assert_eq!(key.as_deref(), Some("cluster.members.role"));
    assert!(message.contains("unknown field `role`"), "{message}");
}

#[test]
fn wrong_types_and_syntax_errors_carry_position_and_key() {
    let (at, key, message, _) = parse_err("[api]\nmax_k = \"many\"\n");
    assert_eq!(at.map(|(line, _)| line), Some(2));
    assert_eq!(key.as_deref(), Some("api.max_k"));
    assert!(
        message.contains("integer") || message.contains("usize"),
        "{message}"
    );

    let (at, key, message, _) = parse_err("[events]\nfsync = \"sometimes\"\n");
    assert_eq!(at.map(|(line, _)| line), Some(2));
    assert_eq!(key.as_deref(), Some("events.fsync"));
    assert!(message.contains("sometimes"), "{message}");

    let (at, _, _, _) = parse_err("[api]\nhttp = \"unterminated\n");
    assert_eq!(at.map(|(line, _)| line), Some(2));
}

#[test]
fn a_missing_file_is_a_read_error_naming_it() {
    let err = NodeConfig::load(
        Some(Path::new("no/such/node.toml")),
        &no_env(),
        &CliOverrides::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, ConfigError::Read { path, .. } if path == Path::new("no/such/node.toml")),
        "{err:?}"
    );
}

#[test]
fn environment_overrides_apply_with_the_right_types() {
    let cfg = NodeConfig::load(
        None,
        &env(&[
            ("FUNNEL_API__HTTP", "0.0.0.0:9080"),
            ("FUNNEL_API__MAX_K", "500"),
            ("FUNNEL_API__ADMIN_TOKEN", "12345"),
            ("FUNNEL_EVENTS__FSYNC", "interval:20ms"),
            ("FUNNEL_RECALL__MERGE__BUDGET", "400"),
            ("FUNNEL_BUDGET__RANK", "0.25"),
            ("FUNNEL_RERANK__DIVERSITY", "0.5"),
            ("FUNNEL_NODE__BUNDLE", "bundles/v1"),
            ("FUNNEL_ADMIN_ADDR", "not an override"),
        ]),
        &CliOverrides::default(),
    )
    .unwrap();
    assert_eq!(cfg.api.http, "0.0.0.0:9080");
    assert_eq!(cfg.api.max_k, 500);
    assert_eq!(cfg.api.admin_token, "12345");
    assert_eq!(cfg.events.fsync, FsyncPolicy::IntervalMs(20));
    assert_eq!(cfg.recall.merge.budget, 400);
    assert_eq!(cfg.budget.rank, 0.25);
    assert_eq!(cfg.rerank.diversity, 0.5);
    assert_eq!(cfg.node.bundle_dir(), Some(Path::new("bundles/v1")));
    assert!(!cfg.is_cluster());
}

#[test]
fn environment_can_make_a_cluster_node_and_set_whole_arrays() {
    let cfg = NodeConfig::load(
        None,
        &env(&[
            ("FUNNEL_CLUSTER__BOOTSTRAP", "true"),
            ("FUNNEL_CLUSTER__REPLICATION", "1"),
            (
                "FUNNEL_CLUSTER__MEMBERS",
                r#"[{ id = 1, internal = "127.0.0.1:7001", http = "127.0.0.1:8081", grpc = "127.0.0.1:50061" }]"#,
            ),
        ]),
        &CliOverrides::default(),
    )
    .unwrap();
    let c = cfg.cluster.as_ref().expect("cluster section created");
    assert!(c.bootstrap);
    assert_eq!(c.replication, 1);
    assert_eq!(c.members.len(), 1);
    assert_eq!(c.shards, ClusterConfig::default().shards);
}

fn env_err(pairs: &[(&str, &str)]) -> (String, String) {
    match NodeConfig::load(None, &env(pairs), &CliOverrides::default()) {
        Err(ConfigError::Env { var, message }) => (var, message),
        other => panic!("expected an env error, got {other:?}"),
    }
}

#[test]
fn bad_environment_overrides_name_the_variable() {
    let (var, message) = env_err(&[("FUNNEL_API__HTTP", "0.0.0.0:1"), ("FUNNEL_API__NOPE", "1")]);
    assert_eq!(var, "FUNNEL_API__NOPE");
    assert!(
        message.contains("api.nope") && message.contains("max_k"),
        "{message}"
    );

    let (var, message) = env_err(&[("FUNNEL_APIS__HTTP", "x")]);
    assert_eq!(var, "FUNNEL_APIS__HTTP");
    assert!(message.contains("apis"), "{message}");

    let (var, message) = env_err(&[("FUNNEL_API__MAX_K", "lots")]);
    assert_eq!(var, "FUNNEL_API__MAX_K");
    assert!(message.contains("api.max_k"), "{message}");

    let (var, _) = env_err(&[("FUNNEL_API__MAX_K", "-1")]);
    assert_eq!(var, "FUNNEL_API__MAX_K");

    let (var, message) = env_err(&[("FUNNEL_EVENTS__FSYNC", "sometimes")]);
    assert_eq!(var, "FUNNEL_EVENTS__FSYNC");
    assert!(message.contains("sometimes"), "{message}");

    let (var, _) = env_err(&[("FUNNEL_API", "x"), ("FUNNEL_RECALL__MERGE", "5")]);
    assert_eq!(var, "FUNNEL_RECALL__MERGE");

    let (var, message) = env_err(&[("FUNNEL_NODE__ID__X", "5")]);
    assert_eq!(var, "FUNNEL_NODE__ID__X");
    assert!(message.contains("FUNNEL_NODE__ID"), "{message}");
}

#[test]
fn flags_beat_environment_beat_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "[node]\nid = 1\ndata_dir = \"from-file\"\n[api]\nhttp = \"127.0.0.1:9001\"\ngrpc = \"127.0.0.1:9101\"\nmax_k = 300\n",
    );
    let environment = env(&[
        ("FUNNEL_API__HTTP", "127.0.0.1:9002"),
        ("FUNNEL_NODE__DATA_DIR", "from-env"),
    ]);
    let flags = CliOverrides {
        http: Some("127.0.0.1:9003".into()),
        bundle: Some("from-flag-bundle".into()),
        ..CliOverrides::default()
    };

    let file_only = NodeConfig::load(Some(&path), &no_env(), &CliOverrides::default()).unwrap();
    assert_eq!(file_only.api.http, "127.0.0.1:9001");
    assert_eq!(file_only.node.data_dir, Path::new("from-file"));

    let with_env = NodeConfig::load(Some(&path), &environment, &CliOverrides::default()).unwrap();
    assert_eq!(with_env.api.http, "127.0.0.1:9002");
    assert_eq!(with_env.node.data_dir, Path::new("from-env"));
    assert_eq!(
        with_env.api.max_k, 300,
        "keys the env does not set stay as in the file"
    );

    let all = NodeConfig::load(Some(&path), &environment, &flags).unwrap();
    assert_eq!(all.api.http, "127.0.0.1:9003");
    assert_eq!(all.node.data_dir, Path::new("from-env"));
    assert_eq!(all.node.bundle, Path::new("from-flag-bundle"));
    assert_eq!(all.api.grpc, "127.0.0.1:9101");
}

#[test]
fn flags_are_validated_like_file_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &NodeConfig::to_toml_string(&cluster_config()).unwrap(),
    );
    let flags = CliOverrides {
        node_id: Some(2),
        internal: Some("127.0.0.1:7002".into()),
        http: Some("127.0.0.1:8082".into()),
        grpc: Some("127.0.0.1:50062".into()),
        data_dir: Some("funnel-data/node-2".into()),
        ..CliOverrides::default()
    };
    let cfg = NodeConfig::load(Some(&path), &no_env(), &flags).unwrap();
    assert_eq!(cfg.node.id, 2);
    assert_eq!(cfg.cluster.as_ref().unwrap().internal, "127.0.0.1:7002");
    assert_eq!(cfg.this_member().map(|m| m.id), Some(2));

    let not_a_member = CliOverrides {
        node_id: Some(7),
        ..CliOverrides::default()
    };
    match NodeConfig::load(Some(&path), &no_env(), &not_a_member) {
        Err(ConfigError::Invalid(p)) => {
            assert_eq!(p.len(), 1, "{p:?}");
            assert!(p[0].starts_with("node.id"), "{p:?}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }

    let internal_without_cluster = CliOverrides {
        internal: Some("127.0.0.1:7009".into()),
        ..CliOverrides::default()
    };
    match NodeConfig::load(None, &no_env(), &internal_without_cluster) {
        Err(ConfigError::Invalid(p)) => {
            assert_eq!(p.len(), 1, "{p:?}");
            assert!(p[0].starts_with("--internal"), "{p:?}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn load_validates_the_merged_result() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "[api]\ndefault_k = 20\nmax_k = 30\n");
    let err = NodeConfig::load(
        Some(&path),
        &env(&[("FUNNEL_API__MAX_K", "15")]),
        &CliOverrides::default(),
    )
    .unwrap_err();
    match err {
        ConfigError::Invalid(p) => assert!(p[0].starts_with("api.max_k = 15"), "{p:?}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn print_config_round_trips() {
    let mut cfg = cluster_config();
    cfg.events.fsync = FsyncPolicy::IntervalMs(50);
    cfg.rerank.diversity = 0.3;
    cfg.rerank.exploration = 0.1;
    cfg.budget.recall = 0.45;
    cfg.recall.merge.quotas[4].max = 77;
    cfg.node.bundle = "bundles/v7".into();
    cfg.api.admin_token = "s3cret".into();
    cluster(&mut cfg).tls = TlsFiles {
        cert: "c.pem".into(),
        key: "k.pem".into(),
        ca: "ca.pem".into(),
    };
    for original in [NodeConfig::default(), cfg] {
        let text = original.to_toml_string().unwrap();
        let back = NodeConfig::from_toml_str(&text, "printed").unwrap();
        assert_eq!(back, original, "printed:\n{text}");
    }
}

#[test]
fn ids_too_large_for_toml_are_a_serialize_error() {
    let mut cfg = NodeConfig::default();
    cfg.node.id = u64::MAX;
    assert!(matches!(
        cfg.to_toml_string(),
        Err(ConfigError::Serialize { .. })
    ));
}
