//! The rrun agent: a drop-in `torchrun` (docs/spec/torchrun.md).
//!
//! [`run`] drives one launch: validate flags ([`config`]), install signal handlers
//! ([`signals`]), rendezvous and host the store ([`rendezvous`]), then per attempt:
//! assign ranks, build each worker's environment ([`env`]) and log routing
//! ([`logs`]), spawn ([`spawn`]), supervise ([`supervise`]), and on failure report
//! ([`summary`]) and maybe restart. It returns the exit status; the binary only
//! parses arguments and exits with it.

pub mod cli;
pub mod config;
pub mod env;
pub mod logs;
pub mod rendezvous;
pub mod signals;
pub mod spawn;
pub mod summary;
pub mod supervise;
pub mod tlog;

use config::{Config, ConfigError};
use rendezvous::{RdzvError, Rendezvous};
use signals::SignalQueue;
use spawn::{Worker, WorkerSpec};
use supervise::Outcome;

/// Why a launch stopped before or between worker groups.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Rendezvous(#[from] RdzvError),
    #[error(transparent)]
    Logs(#[from] logs::LogError),
    #[error(transparent)]
    WorkerEnv(#[from] env::EnvError),
    #[error("cannot start local rank {local_rank} ({program}): {source}")]
    Spawn {
        local_rank: usize,
        program: String,
        source: std::io::Error,
    },
}

const OMP_WARNING: &str = "\n*****************************************\nSetting OMP_NUM_THREADS environment variable for each process to be 1 in default, to avoid your system being overloaded, please further tune the variable for optimal performance in your application as needed. \n*****************************************";

/// Runs a whole launch and returns rrun's exit status (0, or 1 on a worker failure
/// or handled signal). Errors before workers start are returned as `Err`.
pub fn run(cli: cli::Cli) -> Result<i32, LaunchError> {
    let cfg = Config::from_cli(cli)?;
    let (signals, sig_warnings) = SignalQueue::install(&cfg.signals);
    for w in cfg.warnings.iter().chain(&sig_warnings) {
        tlog::log('W', tlog::src::AGENT, w);
    }
    if env::omp_defaulted(cfg.nproc) {
        tlog::log('W', tlog::src::RUN, OMP_WARNING);
    }
    let mut rdzv = Rendezvous::join(&cfg)?;
    let log_root = logs::LogRoot::create(&cfg)?;
    let host = crate::host::net::fqdn();
    let mut restart_count: u32 = 0;
    loop {
        let ranks = rdzv.assign_ranks(&cfg.role, cfg.nproc)?;
        let attempt = log_root.attempt(restart_count, cfg.nproc)?;
        let stdout_dups = logs::Duplicates::new(
            &cfg.stdout_filters,
            attempt.as_deref(),
            "filtered_stdout.log",
        );
        let stderr_dups = logs::Duplicates::new(
            &cfg.stderr_filters,
            attempt.as_deref(),
            "filtered_stderr.log",
        );
        signals.workers_starting();
        let mut workers: Vec<Worker> = Vec::with_capacity(cfg.nproc);
        for lr in 0..cfg.nproc {
            let rank = ranks.base_global_rank + lr;
            let error_file = match &attempt {
                Some(d) => d
                    .join(lr.to_string())
                    .join("error.json")
                    .display()
                    .to_string(),
                None => String::new(),
            };
            let worker_env =
                env::worker_env(&cfg, &ranks, &rdzv.master, lr, restart_count, &error_file);
            let spawned = worker_env.map_err(LaunchError::from).and_then(|env| {
                Worker::spawn(WorkerSpec {
                    local_rank: lr,
                    global_rank: rank,
                    argv: &cfg.argv,
                    env,
                    streams: logs::streams_for(&cfg, attempt.as_deref(), lr, rank),
                    error_file,
                    stdout_dups: stdout_dups.clone(),
                    stderr_dups: stderr_dups.clone(),
                })
                .map_err(|source| LaunchError::Spawn {
                    local_rank: lr,
                    program: cfg.argv[0].clone(),
                    source,
                })
            });
            match spawned {
                Ok(w) => workers.push(w),
                Err(e) => {
                    supervise::shut_down(&mut workers, libc::SIGTERM, cfg.term_timeout, &signals);
                    return Err(e);
                }
            }
        }
        match supervise::monitor(&mut workers, &signals, cfg.monitor_interval) {
            Outcome::Succeeded => {
                for w in workers.iter_mut() {
                    w.join_output(std::time::Duration::from_secs(2));
                }
                rdzv.exit_barrier(&|| signals.pending_signal().is_some());
                return Ok(0);
            }
            Outcome::Signaled(sig) => {
                tlog::log(
                    'W',
                    tlog::src::DEATH_SIGNAL,
                    &format!("Received {sig} death signal, shutting down workers"),
                );
                supervise::shut_down(&mut workers, sig, cfg.term_timeout, &signals);
                crate::eline!(
                    "rrun: SignalException: Process {} got signal: {sig} ({}); workers were shut down, exiting with 1 as torchrun does",
                    std::process::id(),
                    config::signal_name(sig)
                );
                return Ok(1);
            }
            Outcome::Failed => {
                supervise::shut_down(&mut workers, libc::SIGTERM, cfg.term_timeout, &signals);
                let failures = summary::collect(&workers);
                let root = summary::root_cause(&failures);
                let rf = &failures[root];
                tlog::log(
                    'E',
                    tlog::src::FAILED,
                    &format!(
                        "failed (exitcode: {}) local_rank: {} (pid: {}) of binary: {}",
                        rf.exitcode, rf.local_rank, rf.pid, cfg.argv[0]
                    ),
                );
                if restart_count < cfg.max_restarts {
                    restart_count += 1;
                    tlog::log(
                        'W',
                        tlog::src::AGENT,
                        &format!(
                            "[{}] Worker group FAILED (root cause: rank {} exitcode {}). {}/{} attempts left; will restart worker group",
                            cfg.role,
                            rf.global_rank,
                            rf.exitcode,
                            cfg.max_restarts - restart_count + 1,
                            cfg.max_restarts
                        ),
                    );
                    continue;
                }
                summary::propagate_error_file(rf);
                let title = format!("{} FAILED", cfg.entrypoint_name);
                crate::eline!(
                    "rrun: ChildFailedError: {}",
                    summary::render(&title, &failures, root, &host, cfg.tail_lines)
                );
                return Ok(1);
            }
        }
    }
}
