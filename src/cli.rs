//! The command line (clap derive). Parsing only; `main.rs` dispatches.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// certkeeper: keeps TLS certificates renewed, installed safely and reloaded.
#[derive(Debug, Parser)]
#[command(name = "certkeeper", version, about, long_about = None)]
pub struct Cli {
    /// Config file [env: CERTKEEPER_CONFIG] [default: /etc/certkeeper/certkeeper.toml]
    #[arg(short, long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// More detail (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Readable lines.
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// One pass: renew every certificate that is missing, invalid or due; install; reload.
    Renew {
        /// Renew even certificates that are not due, ignoring the retry back-off.
        #[arg(long)]
        force: bool,
        /// Print each decision and its reason; order nothing, write nothing.
        #[arg(long)]
        dry_run: bool,
        /// After the pass, write Prometheus metrics for node_exporter's textfile
        /// collector to this file (atomically).
        #[arg(long, value_name = "PATH")]
        metrics_file: Option<PathBuf>,
        /// Only these certificates (by name).
        names: Vec<String>,
    },
    /// Run as a daemon: renew on schedule, watch the files, reload on SIGHUP, serve metrics.
    Run,
    /// Show each certificate's expiry, renewal time and reason, state and last error.
    Status {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Validate the config and the paths it names; exit 0 if all is well, 2 otherwise.
    Check,
    /// Fleet mode (`[cluster]`): the replicas and what each installed.
    Cluster {
        /// What to show.
        #[command(subcommand)]
        what: ClusterCommand,
    },
}

/// `certkeeper cluster ...`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// List the nodes, the revision each installed, and who holds each lock; exit 1 when
    /// etcd is unavailable.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}
