//! Serving-node configuration: a TOML file, overridden by `FUNNEL_*`
//! environment variables, overridden by command-line flags, then validated
//! as a whole.
//!
//! Owns: `NodeConfig` and its sections (`node`), the override layers
//! (`env`, `CliOverrides`), validation (`validate`) and `ConfigError`.
//! Must not touch: sockets, files other than the config file and the TLS
//! files (read to check them, through `cluster::tls`), or any serving
//! state. Addresses stay strings of the form HOST:PORT; they are resolved
//! when the node binds or dials.
//!
//! # Precedence
//!
//! defaults < file < environment < CLI flags. Every section and key is
//! optional; unknown keys are errors wherever they appear. Relative paths
//! (`node.data_dir`, `node.bundle`, `cluster.tls.*`) are relative to the
//! working directory, not to the config file.
//!
//! # Environment
//!
//! `FUNNEL_<SECTION>__<KEY>=value`, with `__` between path segments:
//! `FUNNEL_API__HTTP=0.0.0.0:8080`, `FUNNEL_EVENTS__FSYNC=never`,
//! `FUNNEL_RECALL__MERGE__BUDGET=400`. String keys take the text as is;
//! other keys parse it as a TOML value (so arrays work too:
//! `FUNNEL_CLUSTER__MEMBERS='[{ id = 1, ... }]'`). Setting any
//! `FUNNEL_CLUSTER__*` key makes the node a cluster node. `FUNNEL_*`
//! variables without `__` belong to other tools and are ignored.

pub mod env;
pub mod node;
pub mod span;
pub mod validate;

pub use node::{
    ApiConfig, ClusterConfig, ClusterMember, EventAck, EventsConfig, FetchBundles, NodeConfig,
    NodeSection, RankingConfig, ShardSearchEngine, ShardsConfig, StageBudget, StageDeadlines,
    TelemetryConfig, TlsFiles,
};
pub use span::TextPos;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}; check the path given to --config", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file is not valid TOML or does not fit the schema (unknown key,
    /// wrong type).
    #[error(
        "{source_name}{}: {}{message}; fix the file (`funnel serve --print-config` shows every key with its default)",
        at.map(|p| format!(":{}:{}", p.line, p.column)).unwrap_or_default(),
        key.as_ref().map(|k| format!("key `{k}`: ")).unwrap_or_default()
    )]
    Parse {
        /// The file path or whatever name the caller gave the text.
        source_name: String,
        /// Where in the text, when the parser could tell.
        at: Option<TextPos>,
        /// The dotted key at that position, when it can be recovered.
        key: Option<String>,
        /// The parser's own explanation, e.g. "unknown field `x`, expected
        /// one of ...".
        message: String,
    },

    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },

    /// Every validation problem, each naming its key.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),

    #[error("cannot write the configuration as TOML: {message}")]
    Serialize { message: String },
}

/// Values from command-line flags; they beat the file and the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct CliOverrides {
    /// Bundle directory to load at start (overrides node.bundle).
    #[arg(long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,
    /// Directory for the event log, raft log and shard cache (overrides node.data_dir).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP API address (overrides api.http).
    #[arg(long, value_name = "HOST:PORT")]
    pub http: Option<String>,
    /// gRPC API address (overrides api.grpc).
    #[arg(long, value_name = "HOST:PORT")]
    pub grpc: Option<String>,
    /// Internal cluster address (overrides cluster.internal; cluster nodes only).
    #[arg(long, value_name = "HOST:PORT")]
    pub internal: Option<String>,
    /// This node's id (overrides node.id).
    #[arg(long, value_name = "N")]
    pub node_id: Option<u64>,
}

impl CliOverrides {
    /// Applies the flags that were given; returns problems for flags that do
    /// not fit this config (reported together with validation problems).
    fn apply(&self, cfg: &mut NodeConfig) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(b) = &self.bundle {
            cfg.node.bundle = b.clone();
        }
        if let Some(d) = &self.data_dir {
            cfg.node.data_dir = d.clone();
        }
        if let Some(h) = &self.http {
            cfg.api.http = h.clone();
        }
        if let Some(g) = &self.grpc {
            cfg.api.grpc = g.clone();
        }
        if let Some(id) = self.node_id {
            cfg.node.id = id;
        }
        if let Some(i) = &self.internal {
            match &mut cfg.cluster {
                Some(c) => c.internal = i.clone(),
                None => problems.push(format!(
                    "--internal {i}: this config has no [cluster] section, and only cluster \
                     nodes have an internal address; add [cluster] or drop the flag"
                )),
            }
        }
        problems
    }
}

impl NodeConfig {
    /// Parses a TOML document (without validating it). `source_name` names
    /// the text in errors, usually the file path.
    pub fn from_toml_str(text: &str, source_name: &str) -> Result<NodeConfig, ConfigError> {
        toml::from_str(text).map_err(|e| parse_error(text, source_name, &e))
    }

    /// Builds the configuration a node starts with: `path`'s TOML (or the
    /// defaults when `None`), then the `FUNNEL_*__*` variables in `env`
    /// (pass `env::process_env()` in production), then the flags,
    /// and validates the result.
    pub fn load(
        path: Option<&Path>,
        env: &HashMap<String, String>,
        cli: &CliOverrides,
    ) -> Result<NodeConfig, ConfigError> {
        let mut tree = match path {
            None => toml::Table::new(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                let name = p.display().to_string();
                // Deserializing the text itself first gives errors with
                // line numbers; the tree below has no positions.
                Self::from_toml_str(&text, &name)?;
                toml::from_str::<toml::Table>(&text).map_err(|e| parse_error(&text, &name, &e))?
            }
        };

        let overrides = env::overrides(env).map_err(env_error)?;
        if !overrides.is_empty() {
            let hints = key_hints();
            for ov in &overrides {
                env::apply(&mut tree, &hints, ov).map_err(env_error)?;
                // one variable at a time, so a bad value is blamed on its variable
                tree.clone()
                    .try_into::<NodeConfig>()
                    .map_err(|e| ConfigError::Env {
                        var: ov.var.clone(),
                        message: format!(
                            "{} = {:?}: {}; see `funnel serve --print-config` for the expected values",
                            ov.dotted_key(),
                            ov.raw,
                            e.message().trim_end()
                        ),
                    })?;
            }
        }
        let mut cfg: NodeConfig = tree.try_into().map_err(|e: toml::de::Error| {
            // unreachable in practice: the same tree deserialized above
            ConfigError::Parse {
                source_name: path.map_or("defaults".into(), |p| p.display().to_string()),
                at: None,
                key: None,
                message: e.message().to_string(),
            }
        })?;

        let mut problems = cli.apply(&mut cfg);
        problems.extend(validate::problems(&cfg));
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Checks every rule and reports all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = validate::problems(self);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// The configuration as TOML that `load` reads back to the same value
    /// (for `funnel serve --print-config`).
    pub fn to_toml_string(&self) -> Result<String, ConfigError> {
        toml::to_string_pretty(self).map_err(|e| ConfigError::Serialize {
            message: format!(
                "{e}; node and member ids must be at most {}",
                validate::MAX_NODE_ID
            ),
        })
    }
}

/// Every key a config may have, with a value of its type: the defaults with
/// the optional `[cluster]` section filled in.
fn key_hints() -> toml::Table {
    let all = NodeConfig {
        cluster: Some(ClusterConfig::default()),
        ..NodeConfig::default()
    };
    toml::Table::try_from(&all).expect("the default configuration is representable in TOML")
}

fn env_error(p: env::EnvProblem) -> ConfigError {
    ConfigError::Env {
        var: p.var,
        message: p.message,
    }
}

fn parse_error(text: &str, source_name: &str, e: &toml::de::Error) -> ConfigError {
    let span = e.span();
    ConfigError::Parse {
        source_name: source_name.to_string(),
        at: span.clone().map(|s| span::text_pos(text, s.start)),
        key: span.and_then(|s| span::key_path_at(text, s.start)),
        message: e.message().trim_end().to_string(),
    }
}
