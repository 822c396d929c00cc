//! torchrun 2.11's command line, flag for flag (docs/spec/torchrun.md §1.2): both
//! spellings, the same defaults, `PET_*` environment fallbacks, argparse-style prefix
//! matching, and everything from the script on passed through verbatim.
//!
//! This module only parses. Turning the strings into a validated plan (nproc words,
//! `MIN:MAX`, redirect maps) is `config`'s job.

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser};

/// torchrun's `--master-addr` default.
pub const DEFAULT_MASTER_ADDR: &str = "127.0.0.1";
/// torchrun's `--master-port` default.
pub const DEFAULT_MASTER_PORT: u16 = 29500;

/// Torch Distributed Elastic Training Launcher, in Rust: a drop-in `torchrun`.
///
/// Runs `python -u SCRIPT ARGS…` (or `-m MODULE`, or `--no-python PROGRAM`) once per
/// local rank with torchrun's worker environment, and hosts a PyTorch-compatible
/// TCPStore at MASTER_ADDR:MASTER_PORT. A SCRIPT that is not a `.py` file and
/// resolves to an executable program (like `rrank`) is run directly. Every flag can
/// also be set through `PET_<FLAG>` (e.g. PET_NPROC_PER_NODE=2).
#[derive(Debug, Parser)]
#[command(
    name = "rrun",
    version,
    infer_long_args = true,
    max_term_width = 100,
    after_help = "Workers are killed when rrun dies (even by SIGKILL). Exit status: 0 success, \
1 worker failure or handled signal, 2 usage error."
)]
pub struct Cli {
    /// Number of nodes, or the range of nodes in form <minimum_nodes>:<maximum_nodes>.
    #[arg(long, env = "PET_NNODES", default_value = "1:1")]
    pub nnodes: String,

    /// Number of workers per node; supported values: [auto, cpu, gpu, int].
    #[arg(
        long = "nproc-per-node",
        alias = "nproc_per_node",
        env = "PET_NPROC_PER_NODE",
        default_value = "1"
    )]
    pub nproc_per_node: String,

    /// Rendezvous backend: static (default) or c10d.
    #[arg(
        long = "rdzv-backend",
        alias = "rdzv_backend",
        env = "PET_RDZV_BACKEND",
        default_value = "static"
    )]
    pub rdzv_backend: String,

    /// Rendezvous backend endpoint; usually in form <host>:<port>.
    #[arg(
        long = "rdzv-endpoint",
        alias = "rdzv_endpoint",
        env = "PET_RDZV_ENDPOINT",
        default_value = ""
    )]
    pub rdzv_endpoint: String,

    /// User-defined group id (the run id, TORCHELASTIC_RUN_ID).
    #[arg(
        long = "rdzv-id",
        alias = "rdzv_id",
        env = "PET_RDZV_ID",
        default_value = "none"
    )]
    pub rdzv_id: String,

    /// Additional rendezvous configuration (<key1>=<value1>,<key2>=<value2>,...).
    #[arg(
        long = "rdzv-conf",
        alias = "rdzv_conf",
        env = "PET_RDZV_CONF",
        default_value = ""
    )]
    pub rdzv_conf: String,

    /// Single-node job on a free port: c10d backend, endpoint localhost:0, random run id.
    #[arg(long, env = "PET_STANDALONE", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub standalone: bool,

    /// Maximum number of worker group restarts before failing.
    #[arg(
        long = "max-restarts",
        alias = "max_restarts",
        env = "PET_MAX_RESTARTS",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub max_restarts: i64,

    /// Interval, in seconds, to monitor the state of workers.
    #[arg(
        long = "monitor-interval",
        alias = "monitor_interval",
        env = "PET_MONITOR_INTERVAL",
        default_value_t = 0.1
    )]
    pub monitor_interval: f64,

    /// Multiprocessing start method (only used with --run-path, which rrun does not support).
    #[arg(long = "start-method", alias = "start_method", env = "PET_START_METHOD", default_value = "spawn",
          value_parser = ["spawn", "fork", "forkserver"])]
    pub start_method: String,

    /// Name of the events handler (accepted for compatibility; rrun records no events).
    #[arg(
        long = "event-log-handler",
        alias = "event_log_handler",
        env = "PET_EVENT_LOG_HANDLER",
        default_value = "null"
    )]
    pub event_log_handler: String,

    /// User-defined role for the workers (ROLE_NAME, and the `[<role><rank>]:` tee prefix).
    #[arg(long, env = "PET_ROLE", default_value = "default")]
    pub role: String,

    /// Run the script as a Python module: `python -u -m <script>`.
    #[arg(short = 'm', long, env = "PET_MODULE", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub module: bool,

    /// Run the script directly (found on PATH) instead of under `python -u`.
    #[arg(long = "no-python", alias = "no_python", env = "PET_NO_PYTHON", action = ArgAction::SetTrue,
          value_parser = BoolishValueParser::new())]
    pub no_python: bool,

    /// Run the script through runpy.run_path in the same interpreter (not supported by rrun).
    #[arg(long = "run-path", alias = "run_path", env = "PET_RUN_PATH", action = ArgAction::SetTrue,
          value_parser = BoolishValueParser::new())]
    pub run_path: bool,

    /// Base directory for log files (created if missing); /dev/null disables them.
    #[arg(long = "log-dir", alias = "log_dir", env = "PET_LOG_DIR")]
    pub log_dir: Option<String>,

    /// Redirect std streams into a log file in the log directory (e.g. 3 for all
    /// local ranks, or 0:1,1:2 per local rank; 1 stdout, 2 stderr, 3 both).
    #[arg(short = 'r', long, env = "PET_REDIRECTS", default_value = "0")]
    pub redirects: String,

    /// Tee std streams into a log file and also to the console, prefixed per rank
    /// (same format as --redirects).
    #[arg(short = 't', long, env = "PET_TEE", default_value = "0")]
    pub tee: String,

    /// Only show logs from these local ranks (e.g. 0,1); all ranks still write log files.
    #[arg(
        long = "local-ranks-filter",
        alias = "local_ranks_filter",
        env = "PET_LOCAL_RANKS_FILTER",
        default_value = ""
    )]
    pub local_ranks_filter: String,

    /// Tee'd stdout lines containing any of these comma-separated strings (`,,` is a
    /// comma) are also written to <attempt dir>/filtered_stdout.log.
    #[arg(
        long = "duplicate-stdout-filters",
        alias = "duplicate_stdout_filters",
        env = "PET_DUPLICATE_STDOUT_FILTERS",
        default_value = ""
    )]
    pub duplicate_stdout_filters: String,

    /// Same as --duplicate-stdout-filters, for stderr (filtered_stderr.log).
    #[arg(
        long = "duplicate-stderr-filters",
        alias = "duplicate_stderr_filters",
        env = "PET_DUPLICATE_STDERR_FILTERS",
        default_value = ""
    )]
    pub duplicate_stderr_filters: String,

    /// Rank of the node for multi-node static rendezvous.
    #[arg(
        long = "node-rank",
        alias = "node_rank",
        env = "PET_NODE_RANK",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub node_rank: i64,

    /// Address of the node-0 store (static rendezvous without --rdzv-endpoint); passed to workers as MASTER_ADDR verbatim.
    #[arg(
        long = "master-addr",
        alias = "master_addr",
        env = "PET_MASTER_ADDR",
        default_value = DEFAULT_MASTER_ADDR
    )]
    pub master_addr: String,

    /// Port of the node-0 store (static rendezvous without --rdzv-endpoint); MASTER_PORT for workers.
    #[arg(
        long = "master-port",
        alias = "master_port",
        env = "PET_MASTER_PORT",
        default_value_t = DEFAULT_MASTER_PORT
    )]
    pub master_port: u16,

    /// Address of this node as other nodes reach it (c10d); defaults to the FQDN.
    #[arg(long = "local-addr", alias = "local_addr", env = "PET_LOCAL_ADDR")]
    pub local_addr: Option<String>,

    /// Logs specification entry point; only `default` exists in rrun.
    #[arg(long = "logs-specs", alias = "logs_specs")]
    pub logs_specs: Option<String>,

    /// NUMA binding of workers (not supported by rrun; use numactl inside the job).
    #[arg(long = "numa-binding", alias = "numa_binding", value_parser = ["node", "socket", "exclusive", "core-complex"])]
    pub numa_binding: Option<String>,

    /// Comma-separated signals that rrun forwards to the workers before exiting with 1.
    #[arg(
        long = "signals-to-handle",
        alias = "signals_to_handle",
        env = "PET_SIGNALS_TO_HANDLE",
        default_value = "SIGTERM,SIGINT,SIGHUP,SIGQUIT"
    )]
    pub signals_to_handle: String,

    /// Give each worker LOCAL_RANK=0 and CUDA_VISIBLE_DEVICES set to its own GPU.
    #[arg(long = "virtual-local-rank", alias = "virtual_local_rank", env = "PET_VIRTUAL_LOCAL_RANK",
          action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub virtual_local_rank: bool,

    /// rrun: seconds between the closing signal and SIGKILL when shutting workers down
    /// (torchrun hard-codes 30).
    #[arg(
        long = "term-timeout",
        env = "RRUN_TERM_TIMEOUT",
        default_value_t = 30.0
    )]
    pub term_timeout: f64,

    /// rrun: lines of the root-cause rank's captured stderr to show in the failure summary.
    #[arg(long = "tail-lines", env = "RRUN_TAIL_LINES", default_value_t = 20)]
    pub tail_lines: usize,

    /// The training script (or module with -m, or program) followed by its arguments,
    /// passed through unchanged.
    #[arg(value_name = "TRAINING_SCRIPT [TRAINING_SCRIPT_ARGS]", required = true, num_args = 1..,
          trailing_var_arg = true)]
    pub command: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("rrun").chain(args.iter().copied()))
    }

    #[test]
    fn script_args_pass_through_verbatim() {
        let c = parse(&[
            "--nproc_per_node=2",
            "w.py",
            "--nproc-per-node",
            "3",
            "-m",
            "x",
        ])
        .unwrap();
        assert_eq!(c.nproc_per_node, "2");
        assert!(!c.module);
        assert_eq!(c.command, ["w.py", "--nproc-per-node", "3", "-m", "x"]);
    }

    #[test]
    fn prefixes_and_both_spellings() {
        let c = parse(&[
            "--max-r",
            "2",
            "--master_port",
            "29600",
            "--no_python",
            "true",
        ])
        .unwrap();
        assert_eq!(c.max_restarts, 2);
        assert_eq!(c.master_port, 29600);
        assert!(c.no_python);
    }

    #[test]
    fn missing_script_is_a_usage_error() {
        let e = parse(&["--nproc-per-node", "2"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert_eq!(parse(&["--bogus", "w.py"]).unwrap_err().exit_code(), 2);
    }
}
