//! The `funnel` command line: parses arguments and hands each subcommand to
//! the library. No logic lives here.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use funnel::cluster::MapKind;
use funnel::dataset::split::Variant;
use funnel::eval::run::{EvalOptions, Search};
use funnel::gen::GenParams;
use funnel::ingest::DataArgs;
use funnel::training::pipeline::PipelineParams;
use funnel::training::trainer::{train, TrainOptions};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "funnel",
    version,
    about = "A recommendation system: offline training, multi-path recall, online ranking."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a synthetic interaction log (CSV files) with planted structure.
    Gen {
        #[command(flatten)]
        params: GenParams,
        /// Directory to write interactions.csv, items.csv and users.csv into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Train every model and write a bundle the serving nodes load.
    Train {
        #[command(flatten)]
        source: Source,
        /// Bundle directory to create.
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing bundle directory.
        #[arg(long)]
        force: bool,
        /// Number of item shards (S).
        #[arg(long, default_value_t = 1)]
        shards: u32,
        #[command(flatten)]
        index: funnel::bundle::IndexArgs,
        /// TOML file with pipeline parameters (any subset; the rest default).
        #[arg(long)]
        params: Option<PathBuf>,
        /// Model version id (default: derived from the time and the input).
        #[arg(long)]
        model_version: Option<String>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Evaluate every recall path and the ranked pipeline under the protocol.
    Eval {
        #[command(flatten)]
        source: Source,
        /// Only ratings >= this count as positives (variant posN); default: all.
        #[arg(long)]
        min_rating: Option<f32>,
        /// Hyper-parameter search on the validation split.
        #[arg(long, value_enum, default_value_t = Search::Small)]
        search: Search,
        /// TOML file with pipeline parameters (any subset; the rest default).
        #[arg(long)]
        params: Option<PathBuf>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Also write an HTML report with a recall@K chart per path.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Also write the test phase's models as a servable bundle (DIR/bundle)
        /// and the evaluation requests (DIR/requests.json).
        #[arg(long, value_name = "DIR")]
        export: Option<PathBuf>,
    },
    /// Build a bundle from embeddings trained elsewhere (.npy or Parquet).
    Import {
        #[command(flatten)]
        args: funnel::bundle::import::ImportArgs,
    },
    /// Work with bundles.
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
    },
    /// Run a serving node (gRPC + HTTP/JSON APIs).
    Serve {
        /// Node configuration (TOML); without it, single-node defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: funnel::config::CliOverrides,
        /// Print the effective configuration and exit.
        #[arg(long)]
        print_config: bool,
    },
    /// The built-in demonstration: generate data, train, serve, show recommendations.
    Demo(funnel::demo::DemoArgs),
    /// Open-loop load generator against a running node's HTTP API;
    /// `funnel bench scaleout` measures capacity by cluster size.
    Bench(BenchCommand),
    /// Operator commands against a running node.
    Admin {
        /// A node's HTTP address (HOST:PORT or URL), or in a cluster any
        /// node's internal address (cluster.internal) for the whole cluster.
        #[arg(long, env = "FUNNEL_ADMIN_ADDR", default_value = "127.0.0.1:8080")]
        addr: String,
        /// Admin token (api.admin_token of the node).
        #[arg(long, env = "FUNNEL_ADMIN_TOKEN", default_value = "")]
        token: String,
        /// CA bundle (PEM) that signed the cluster's certificates, for a
        /// cluster running mTLS ([cluster.tls]); with --tls-cert and --tls-key.
        #[arg(long, env = "FUNNEL_ADMIN_TLS_CA", value_name = "PEM")]
        tls_ca: Option<PathBuf>,
        /// Client certificate (PEM) signed by that CA.
        #[arg(long, env = "FUNNEL_ADMIN_TLS_CERT", value_name = "PEM")]
        tls_cert: Option<PathBuf>,
        /// Private key (PEM) of --tls-cert.
        #[arg(long, env = "FUNNEL_ADMIN_TLS_KEY", value_name = "PEM")]
        tls_key: Option<PathBuf>,
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Load a bundle on the node and switch to it atomically; given a
    /// cluster node's internal address, roll it out to the whole cluster
    /// (two-phase: every node loads it, then all switch together).
    Publish {
        /// Bundle directory, as seen by the node.
        bundle: PathBuf,
        /// Cluster: activate without waiting for every node holding
        /// replicas to load it (e.g. one is down); also replaces a version
        /// still being rolled out.
        #[arg(long)]
        force: bool,
        /// Cluster: seconds to wait in all, for a cluster still forming
        /// to take the publish and for the activation (0: do not wait).
        #[arg(long, default_value_t = 600)]
        wait_secs: u64,
        /// Publish only if no model is active (served, on a single node)
        /// yet; otherwise print what is and exit successfully. For a job
        /// that gives a new cluster its first model and may run again.
        #[arg(long)]
        if_none_active: bool,
    },
    /// Print the node's health (the whole cluster's, given an internal address).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Register a new node; the leader adds it to Raft as a learner
    /// (promoted while there are fewer than 3 voters, or 5 once 5 nodes are live).
    AddNode {
        #[arg(long)]
        id: u64,
        /// The node's internal address (its cluster.internal, as others reach it).
        #[arg(long)]
        internal: String,
        /// Its public HTTP address.
        #[arg(long, default_value = "")]
        http: String,
        /// Its public gRPC address.
        #[arg(long, default_value = "")]
        grpc: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a node: with --drain, move its replicas off first; the leader
    /// then takes it out of Raft and marks it Removed.
    RemoveNode {
        id: u64,
        #[arg(long)]
        drain: bool,
        #[arg(long)]
        json: bool,
    },
    /// Move one replica of a shard (or, with --user-partition, one copy of
    /// a user partition) to another node (load, activate, drain, drop).
    MoveShard {
        #[arg(
            long,
            required_unless_present = "user_partition",
            conflicts_with = "user_partition"
        )]
        shard: Option<u32>,
        /// The user partition to move instead of a shard.
        #[arg(long)]
        user_partition: Option<u32>,
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: u64,
        #[arg(long)]
        json: bool,
    },
    /// Balance replicas over the Active nodes with the fewest moves.
    Rebalance {
        /// Print the plan without changing anything.
        #[arg(long)]
        dry_run: bool,
        /// Most transfers in flight at once (cluster setting transfers.max_concurrent).
        #[arg(long)]
        max_concurrent: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Add or drop copies until every shard (or, with --user-partitions,
    /// every user partition) has R copies on distinct nodes.
    SetReplication {
        replication: u32,
        /// Set the user partitions' copies instead of the shards'.
        #[arg(long)]
        user_partitions: bool,
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Stop queued transfers (all, one shard's, or one user partition's).
    CancelMoves {
        #[arg(long, conflicts_with = "user_partition")]
        shard: Option<u32>,
        #[arg(long)]
        user_partition: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Set a cluster setting (empty value removes it), e.g.
    /// transfers.max_concurrent, transfers.drain_grace_ms or
    /// cluster.replace_dead_after (seconds; 0 = never re-place a dead node's shards).
    SetSetting { key: String, value: String },
    /// For tests: transport faults on the node at --addr (its internal
    /// address), applied to the requests it sends. The node must run with
    /// cluster.fault_injection = true.
    Faults {
        #[command(subcommand)]
        command: FaultsCommand,
    },
}

#[derive(Subcommand)]
enum FaultsCommand {
    /// Replace the node's fault rules with these.
    Set(funnel::admin::faults::FaultFlags),
    /// Remove every fault rule of the node.
    Clear,
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Verify a bundle and print a summary.
    Inspect {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Copy a bundle with its ANN indexes rebuilt: another shard count (a
    /// cluster's is fixed), other HNSW parameters or f16 storage; everything
    /// else is copied unchanged, so the copy ranks like the source.
    Reindex {
        src: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        opts: funnel::bundle::ReindexOptions,
    },
    /// Measure the sharded ANN search's recall@k against an exact scan,
    /// querying the way the coordinator does.
    AnnRecall {
        dir: PathBuf,
        /// Query vectors to sample (user vectors, else item vectors).
        #[arg(long, default_value_t = 300)]
        queries: usize,
        /// Further unseen query vectors each search path is timed on once
        /// (the cold figure: serving rarely repeats a query).
        #[arg(long, default_value_t = 1000)]
        cold_queries: usize,
        /// Candidates the ANN path returns (the node's recall.ann_k).
        #[arg(long, default_value_t = 200)]
        k: usize,
        /// usearch ef at query time (the node's shards.expansion_search);
        /// a comma-separated list measures each. Default: the bundle's.
        #[arg(long, value_name = "EF[,EF...]", value_delimiter = ',')]
        expansion_search: Vec<usize>,
        /// Rebuild the indexes in memory with this HNSW connectivity instead
        /// of the bundle's (tries index parameters without retraining).
        #[arg(long, value_name = "M")]
        connectivity: Option<u32>,
        /// Rebuild the indexes in memory with this build-time expansion.
        #[arg(long, value_name = "N")]
        expansion_add: Option<u32>,
        /// Rebuild the indexes in memory storing vectors as KIND.
        #[arg(long, value_name = "KIND",
              value_parser = clap::builder::PossibleValuesParser::new(funnel::bundle::manifest::QUANTIZATIONS))]
        quantization: Option<String>,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
}

/// `funnel bench [--target ...]`, or `funnel bench scaleout ...`.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct BenchCommand {
    #[command(subcommand)]
    mode: Option<BenchMode>,
    #[command(flatten)]
    run: Option<funnel::bench::BenchArgs>,
}

#[derive(Subcommand)]
enum BenchMode {
    /// Capacity by cluster size: starts local clusters of each --nodes
    /// count, every node held to the same CPU share (cgroup quota; root),
    /// and finds the highest rate within the p99 target.
    Scaleout(funnel::bench::scaleout::ScaleoutArgs),
}

/// Where the interactions come from: files (`--data ...`) or the built-in
/// synthetic set.
#[derive(Args, Clone)]
struct Source {
    #[command(flatten)]
    data: DataArgs,
    /// Use the built-in synthetic data set instead of files (see `funnel gen`).
    #[arg(long, conflicts_with_all = ["data", "interactions"])]
    synthetic: bool,
}

impl Source {
    fn load(&self) -> Result<funnel::dataset::Dataset> {
        if self.synthetic {
            return funnel::gen::generate(&GenParams::default())
                .context("generating the built-in data set");
        }
        if self.data.data.is_none() && self.data.interactions.is_none() {
            bail!("no input: pass --data PATH (a MovieLens directory, CSV/TSV/Parquet file or event log) or --synthetic");
        }
        let ds = funnel::ingest::load(&self.data)?;
        for b in &ds.bad_rows {
            eprintln!("skipped bad row: {}:{}: {}", b.file, b.line, b.reason);
        }
        Ok(ds)
    }
}

fn load_params(path: &Option<PathBuf>) -> Result<PipelineParams> {
    match path {
        None => Ok(PipelineParams::default()),
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("{}: invalid pipeline parameters", p.display()))
        }
    }
}

/// Runs the command; an error prints as its message and the chain of
/// causes on one line, never as a backtrace: `main` returning `Result`
/// would print anyhow's `Debug` form, which appends a stack backtrace
/// whenever RUST_BACKTRACE is set (common on developer machines) and buries
/// the message a user has to act on. A panic still reports its backtrace.
fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, joined by ": ", leaving out a cause whose
/// text the message already quotes (many of our errors name their cause
/// in their own message, so anyhow's `{:#}` would say it twice).
fn one_line(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str(": ");
            out.push_str(&c);
        }
    }
    out
}

fn run(cli: Cli) -> Result<()> {
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match cli.command {
        Command::Gen { params, out } => {
            let bar = interactive.then(|| indicatif::ProgressBar::new(params.interactions));
            let s = funnel::gen::write_csv(&params, &out, bar.as_ref())?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            println!(
                "wrote {} interactions ({} users, {} items of which {} arrive late) to {}",
                s.interactions,
                s.users,
                s.items,
                s.new_items,
                s.dir.display()
            );
            // the directory, not interactions.csv: `--data DIR` also reads
            // items.csv (categories, so cold items get vectors) and users.csv
            println!(
                "train on it with: funnel train --data {} --out BUNDLE_DIR",
                s.dir.display()
            );
        }
        Command::Train {
            source,
            out,
            force,
            shards,
            index,
            params,
            model_version,
            json,
        } => {
            let ds = source.load()?;
            let opts = TrainOptions {
                out,
                force,
                shards,
                params: load_params(&params)?,
                index: index.params(),
                index_threads: index.index_threads,
                model_version,
                progress: interactive && !json,
                metrics: serde_json::Value::Null,
            };
            let s = train(&ds, &opts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!(
                    "trained {} on {} ({} users, {} items of which {} cold with a vector folded from their categories, {} interactions) in {:.1}s",
                    s.model_version, ds.name, s.users, s.items, s.cold_items_folded, s.interactions, s.seconds
                );
                for (step, secs) in &s.steps {
                    println!("  {step:<16} {secs:>8.2}s");
                }
                println!(
                    "  ranker: {} groups, best iteration {}, validation ndcg {:.4}",
                    s.ranker.train_groups, s.ranker.best_iteration, s.ranker.valid_ndcg
                );
                println!(
                    "bundle: {} ({} shards, dimension {})",
                    s.bundle.display(),
                    s.shards,
                    s.dimension
                );
            }
        }
        Command::Eval {
            source,
            min_rating,
            search,
            params,
            json,
            report,
            export,
        } => {
            let ds = source.load()?;
            let variant = match min_rating {
                Some(r) if r.is_finite() => Variant::MinRating(r),
                Some(r) => bail!("--min-rating must be a finite number, got {r}"),
                None => Variant::All,
            };
            let opts = EvalOptions {
                variant,
                params: load_params(&params)?,
                search,
                progress: interactive && !json,
                export,
            };
            let r = funnel::eval::run::run(&ds, &opts)?;
            if let Some(path) = report {
                std::fs::write(&path, funnel::eval::report::html(&r))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", funnel::eval::report::table(&r));
            }
        }
        Command::Import { args } => {
            let m = funnel::bundle::import::import(&args)?;
            println!(
                "imported {} items ({} users) into {} as {} ({} shards, dimension {})",
                m.n_items,
                m.n_users,
                args.out.display(),
                m.model_version,
                m.shard_count,
                m.dimension
            );
        }
        Command::Bundle {
            command: BundleCommand::Inspect { dir, json },
        } => {
            print!("{}", funnel::bundle::inspect::inspect(&dir, json)?);
        }
        Command::Bundle {
            command: BundleCommand::Reindex { src, out, opts },
        } => {
            let t = std::time::Instant::now();
            let m = funnel::bundle::reindex(&src, &out, &opts)?;
            println!(
                "wrote {} to {} ({} items in {} shards, {} {} connectivity {}, expansion add {} / search {}) in {:.1}s",
                m.model_version,
                out.display(),
                m.n_items,
                m.shard_count,
                m.index.metric,
                m.index.quantization,
                m.index.connectivity,
                m.index.expansion_add,
                m.index.expansion_search,
                t.elapsed().as_secs_f64()
            );
        }
        Command::Bundle {
            command:
                BundleCommand::AnnRecall {
                    dir,
                    queries,
                    cold_queries,
                    k,
                    expansion_search,
                    connectivity,
                    expansion_add,
                    quantization,
                    seed,
                    json,
                },
        } => {
            let rebuild = funnel::shard::quality::IndexOverrides {
                connectivity,
                expansion_add,
                quantization,
            };
            let opts = funnel::shard::quality::BundleCheckOptions {
                queries,
                cold_queries,
                k,
                expansion_search,
                rebuild,
                seed,
            };
            let checks =
                funnel::shard::quality::check_bundle(&dir, &opts).map_err(anyhow::Error::msg)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&checks)?);
            } else {
                for c in &checks {
                    let (r, ix) = (&c.check, &c.index);
                    if let Some(s) = c.rebuild_seconds {
                        println!("rebuilt the indexes in {s:.1}s");
                    }
                    println!(
                        "ANN recall@{} vs exact: mean {:.4}, worst query {:.4} ({} queries, {} items in {} shards, {} asked of each shard, ef {}, M {}, {})",
                        r.k, r.recall, r.min_recall, r.queries, r.items, r.shards, r.per_shard_k,
                        c.expansion_search, ix.connectivity, ix.quantization
                    );
                    println!(
                        "warm time per query, one thread, shards one after another: ANN {:.4} ms; usearch's own search of the same index {:.4} ms (recall {:.4}); exact scan {:.3} ms",
                        r.ann_ms_per_query, r.usearch_ms_per_query, r.usearch_recall, r.exact_ms_per_query
                    );
                    if r.cold_queries > 0 {
                        println!(
                            "cold time per query ({} unseen queries per path, each searched once): ANN {:.4} ms; usearch's own search {:.4} ms",
                            r.cold_queries, r.ann_cold_ms_per_query, r.usearch_cold_ms_per_query
                        );
                    }
                }
            }
        }
        Command::Serve {
            config,
            overrides,
            print_config,
        } => {
            let env = funnel::config::env::process_env();
            let cfg = funnel::config::NodeConfig::load(config.as_deref(), &env, &overrides)?;
            if print_config {
                print!("{}", cfg.to_toml_string()?);
                return Ok(());
            }
            // a chaos test that asked for crash points must not run without them
            funnel::failpoints::setup_from_env()?;
            // installed once the config is known: [telemetry] may add the
            // OTLP export layer
            let export = funnel::telemetry::init_node_tracing(&cfg.telemetry, cfg.node.id)?;
            let shutdown = funnel::api::server::shutdown_signal();
            let served =
                funnel::api::server::block_on(funnel::api::server::run(cfg, shutdown, |r| {
                    let model = r
                        .node
                        .model_version()
                        .unwrap_or_else(|| "(none yet)".into());
                    println!(
                        "funnel serving: http=http://{} grpc={} model={model}",
                        r.http, r.grpc
                    );
                }));
            // send the spans still queued, also those of a failed start
            if let Some(export) = export {
                export.shutdown();
            }
            served?;
        }
        Command::Demo(args) => funnel::demo::run_demo(&args)?,
        Command::Bench(BenchCommand {
            mode: Some(BenchMode::Scaleout(args)),
            ..
        }) => {
            let report = funnel::bench::scaleout::run_scaleout(&args)?;
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
        }
        Command::Bench(BenchCommand {
            run: Some(args), ..
        }) => {
            let report = funnel::bench::run_blocking(&args)?;
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
        }
        Command::Bench(BenchCommand { .. }) => {
            anyhow::bail!("funnel bench needs --target URL --qps N --duration S, or the scaleout subcommand (funnel bench --help)")
        }
        Command::Admin {
            addr,
            token,
            tls_ca,
            tls_cert,
            tls_key,
            command,
        } => {
            use funnel::admin::cluster_ops::ClusterOp;
            let tls = funnel::tls::NodeTls::from_flags(tls_cert, tls_key, tls_ca)?;
            let tls = tls.as_ref();
            let (op, json) = match command {
                AdminCommand::Publish {
                    bundle,
                    force,
                    wait_secs,
                    if_none_active,
                } => {
                    // a node's internal (cluster) address rolls out to the cluster
                    let opts = funnel::admin::PublishOptions {
                        force,
                        wait: std::time::Duration::from_secs(wait_secs),
                        if_none_active,
                    };
                    if let Some(out) =
                        funnel::admin::cluster_publish(&addr, &token, tls, &bundle, &opts)?
                    {
                        print!("{out}");
                        return Ok(());
                    }
                    if if_none_active {
                        if let Some(v) = funnel::admin::served_version(&addr, &token)? {
                            println!(
                                "the node already serves {v}; not publishing {} (--if-none-active)",
                                bundle.display()
                            );
                            return Ok(());
                        }
                    }
                    let op = funnel::admin::AdminOp::Publish(bundle);
                    print!("{}", funnel::admin::run_http(&addr, &token, op)?);
                    return Ok(());
                }
                AdminCommand::Status { json } => {
                    // a node's internal (cluster) address answers with the whole cluster
                    if let Some(report) = funnel::admin::cluster_report(&addr, tls)? {
                        if json {
                            println!("{}", serde_json::to_string_pretty(&report)?);
                        } else {
                            print!("{}", funnel::admin::render_cluster(&report));
                        }
                        return Ok(());
                    }
                    let op = funnel::admin::AdminOp::Status { json };
                    print!("{}", funnel::admin::run_http(&addr, &token, op)?);
                    return Ok(());
                }
                AdminCommand::AddNode {
                    id,
                    internal,
                    http,
                    grpc,
                    json,
                } => (
                    ClusterOp::AddNode(funnel::cluster::NodeInfo::new(id, internal, http, grpc)),
                    json,
                ),
                AdminCommand::RemoveNode { id, drain, json } => {
                    (ClusterOp::RemoveNode { id, drain }, json)
                }
                AdminCommand::MoveShard {
                    shard,
                    user_partition,
                    from,
                    to,
                    json,
                } => (ClusterOp::move_copy(shard, user_partition, from, to)?, json),
                AdminCommand::Rebalance {
                    dry_run,
                    max_concurrent,
                    json,
                } => (
                    ClusterOp::Rebalance {
                        dry_run,
                        max_concurrent,
                    },
                    json,
                ),
                AdminCommand::SetReplication {
                    replication,
                    user_partitions,
                    dry_run,
                    json,
                } => (
                    ClusterOp::SetReplication {
                        kind: MapKind::of_flag(user_partitions),
                        replication,
                        dry_run,
                    },
                    json,
                ),
                AdminCommand::CancelMoves {
                    shard,
                    user_partition,
                    json,
                } => (ClusterOp::cancel(shard, user_partition), json),
                AdminCommand::SetSetting { key, value } => {
                    (ClusterOp::SetSetting { key, value }, false)
                }
                AdminCommand::Faults { command } => {
                    let rules = match command {
                        FaultsCommand::Set(flags) => {
                            funnel::admin::faults::rules_from_flags(&flags)?
                        }
                        FaultsCommand::Clear => Default::default(),
                    };
                    print!("{}", funnel::admin::faults::run(&addr, &token, tls, rules)?);
                    return Ok(());
                }
            };
            let report = funnel::admin::cluster_ops::run(&addr, &token, tls, op)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", funnel::admin::cluster_ops::render(&report));
            }
        }
    }
    Ok(())
}
