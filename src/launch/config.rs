//! Turns parsed flags into a validated launch plan: nproc words resolved, `MIN:MAX`
//! nodes, the `--standalone` rewrite, rendezvous endpoint and conf, redirect/tee maps,
//! the worker command line, and the handled signals.
//!
//! Every mistake becomes one [`ConfigError`] line that names the value and the fix.
//! Nothing here touches the network or spawns anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use super::cli::{Cli, DEFAULT_MASTER_ADDR, DEFAULT_MASTER_PORT};
use crate::host::devices;

/// A flag value that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
}

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

/// Which std streams of a worker are redirected (bit 1 stdout, bit 2 stderr).
pub type Std = u8;
pub const STD_OUT: Std = 1;
pub const STD_ERR: Std = 2;

/// `-r`/`-t` value: one mask for every local rank, or a per-rank map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StdSpec {
    All(Std),
    PerRank(BTreeMap<usize, Std>),
}

impl StdSpec {
    pub fn parse(flag: &str, s: &str) -> Result<StdSpec, ConfigError> {
        let s = s.trim();
        let mask = |v: &str| match v {
            "0" | "1" | "2" | "3" => Ok(v.parse::<u8>().unwrap()),
            _ => Err(bad(format!(
                "{flag} {s:?}: each value must be 0 (none), 1 (stdout), 2 (stderr) or 3 (both), e.g. {flag} 3 or {flag} 0:3,1:1"
            ))),
        };
        if !s.contains(':') {
            return Ok(StdSpec::All(mask(s)?));
        }
        let mut map = BTreeMap::new();
        for item in s.split(',') {
            let (lr, v) = item.split_once(':').ok_or_else(|| {
                bad(format!(
                    "{flag} {s:?}: expected LOCAL_RANK:VALUE pairs like 0:3,1:1"
                ))
            })?;
            let lr: usize = lr
                .trim()
                .parse()
                .map_err(|_| bad(format!("{flag} {s:?}: {lr:?} is not a local rank")))?;
            map.insert(lr, mask(v.trim())?);
        }
        Ok(StdSpec::PerRank(map))
    }

    pub fn for_rank(&self, lr: usize) -> Std {
        match self {
            StdSpec::All(m) => *m,
            StdSpec::PerRank(m) => m.get(&lr).copied().unwrap_or(0),
        }
    }
}

/// How workers are started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// `python -u script args…`
    Python,
    /// `python -u -m module args…`
    Module,
    /// `script args…` (PATH lookup): `--no-python`, or a non-`.py` executable.
    Binary,
}

/// Rendezvous kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Static,
    C10d,
}

/// A validated launch plan.
#[derive(Debug, Clone)]
pub struct Config {
    pub min_nodes: usize,
    pub max_nodes: usize,
    pub nproc: usize,
    pub backend: Backend,
    /// Rendezvous endpoint host and port (port 0 = ephemeral). Static: where node 0
    /// hosts the store and what workers get as MASTER_ADDR/MASTER_PORT — the
    /// `--rdzv-endpoint` if given, else `--master-addr`/`--master-port`.
    pub endpoint: (String, u16),
    pub run_id: String,
    pub rdzv_conf: BTreeMap<String, String>,
    pub standalone: bool,
    pub max_restarts: u32,
    pub monitor_interval: Duration,
    pub role: String,
    pub mode: Mode,
    /// argv of every worker (same for all local ranks).
    pub argv: Vec<String>,
    /// What the failure summary calls the job (`worker.py FAILED`).
    pub entrypoint_name: String,
    pub log_dir: Option<String>,
    pub redirects: StdSpec,
    pub tee: StdSpec,
    pub local_ranks_filter: Option<BTreeSet<usize>>,
    pub stdout_filters: Vec<String>,
    pub stderr_filters: Vec<String>,
    pub node_rank: usize,
    pub local_addr: Option<String>,
    /// The `--signals-to-handle` string as given (exported to workers).
    pub signals_string: String,
    /// Signal numbers to handle (unknown names dropped with a warning).
    pub signals: Vec<i32>,
    pub virtual_local_rank: bool,
    pub term_timeout: Duration,
    pub tail_lines: usize,
    /// Static rendezvous timeout (`--rdzv-conf timeout=`, default 900 s).
    pub rdzv_timeout: Duration,
    /// c10d: seconds to wait for more nodes once `min` joined (default 30).
    pub last_call_timeout: Duration,
    /// c10d: join timeout (default 600 s).
    pub join_timeout: Duration,
    /// Warnings to print once logging is set up.
    pub warnings: Vec<String>,
}

/// Parses `N` or `MIN:MAX`.
pub fn parse_nnodes(s: &str) -> Result<(usize, usize), ConfigError> {
    let parts: Vec<&str> = s.split(':').collect();
    let num = |p: &str| {
        p.trim().parse::<i64>().map_err(|_| {
            bad(format!("--nnodes {s:?} is not a number of nodes: use N or MIN:MAX, e.g. --nnodes 2 or --nnodes 1:4"))
        })
    };
    let (lo, hi) = match parts.as_slice() {
        [n] => (num(n)?, num(n)?),
        [a, b] => (num(a)?, num(b)?),
        _ => {
            return Err(bad(format!(
                "--nnodes {s:?} is not in \"MIN:MAX\" format, e.g. --nnodes 1:4"
            )));
        }
    };
    if lo <= 0 || lo > hi {
        return Err(bad(format!(
            "--nnodes {s:?}: need 0 < MIN <= MAX (got min {lo}, max {hi})"
        )));
    }
    Ok((lo as usize, hi as usize))
}

/// Resolves `--nproc-per-node`: an int, `gpu`, `cpu` or `auto`.
pub fn resolve_nproc(s: &str) -> Result<usize, ConfigError> {
    let s = s.trim();
    match s {
        "gpu" => match devices::visible_gpu_count() {
            0 => Err(bad(
                "--nproc-per-node gpu: Cuda is not available (no NVIDIA GPU visible: /proc/driver/nvidia/gpus is empty, nvidia-smi lists none, or CUDA_VISIBLE_DEVICES hides them); give a number instead",
            )),
            n => Ok(n),
        },
        "cpu" => Ok(devices::cpu_count()),
        "auto" => Ok(match devices::visible_gpu_count() {
            0 => devices::cpu_count(),
            n => n,
        }),
        "xpu" => Err(bad(
            "--nproc-per-node xpu: Xpu is not available to rrun; give a number instead",
        )),
        _ => match s.parse::<i64>() {
            Ok(n) if n >= 1 => Ok(n as usize),
            Ok(n) => Err(bad(format!(
                "--nproc-per-node {n}: need at least 1 worker per node"
            ))),
            Err(_) => Err(bad(format!(
                "Unsupported nproc_per_node value: {s} (use a number, gpu, cpu or auto)"
            ))),
        },
    }
}

/// Parses `k1=v1,k2=v2`.
pub fn parse_rdzv_conf(s: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut m = BTreeMap::new();
    if s.trim().is_empty() {
        return Ok(m);
    }
    for item in s.split(',') {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| bad(format!("--rdzv-conf {s:?}: {item:?} is not key=value")))?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || v.is_empty() {
            return Err(bad(format!(
                "--rdzv-conf {s:?}: empty key or value in {item:?}"
            )));
        }
        m.insert(k.to_string(), v.to_string());
    }
    Ok(m)
}

/// Splits `host[:port]` (IPv6 hosts in brackets).
pub fn parse_endpoint(s: &str, default_port: u16) -> Result<(String, u16), ConfigError> {
    let (host, port) = parse_endpoint_parts(s)?;
    Ok((host, port.unwrap_or(default_port)))
}

/// The static rendezvous endpoint: torch hosts its store there and tells workers
/// MASTER_ADDR/MASTER_PORT from it, so the port is required (as in torch).
pub fn parse_static_endpoint(s: &str) -> Result<(String, u16), ConfigError> {
    match parse_endpoint_parts(s)? {
        (host, Some(port)) => Ok((host, port)),
        (host, None) => Err(bad(format!(
            "--rdzv-endpoint {:?}: port is missing in endpoint; the static rendezvous hosts its store at the endpoint and gives workers its host and port, so give both (e.g. --rdzv-endpoint {host}:29500), or drop --rdzv-endpoint to use --master-addr/--master-port",
            s.trim()
        ))),
    }
}

/// Splits `host[:port]` into the host and the port, if one is given.
fn parse_endpoint_parts(s: &str) -> Result<(String, Option<u16>), ConfigError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(("localhost".into(), None));
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| bad(format!("rendezvous endpoint {s:?}: missing ']'")))?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h.to_string(), Some(p)),
            _ => (s.to_string(), None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => Some(p.parse().map_err(|_| {
            bad(format!(
                "rendezvous endpoint {s:?}: port {p:?} is not a number 0-65535"
            ))
        })?),
    };
    Ok((host, port))
}

fn parse_filters(s: &str) -> Vec<String> {
    if s.is_empty() {
        return vec![];
    }
    // `,,` stands for a literal comma.
    s.replace(",,", "\u{0}")
        .split(',')
        .map(|p| p.replace('\u{0}', ","))
        .filter(|p| !p.is_empty())
        .collect()
}

fn seconds(v: &str, key: &str) -> Result<Duration, ConfigError> {
    v.parse::<f64>()
        .ok()
        .filter(|s| *s >= 0.0 && s.is_finite())
        .map(Duration::from_secs_f64)
        .ok_or_else(|| bad(format!("--rdzv-conf {key}={v}: not a number of seconds")))
}

/// Maps a signal name (`SIGTERM`, `TERM`) to its number.
pub fn signal_number(name: &str) -> Option<i32> {
    let n = name.trim();
    let n = n.strip_prefix("SIG").unwrap_or(n);
    Some(match n {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ABRT" => libc::SIGABRT,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "TSTP" => libc::SIGTSTP,
        "XCPU" => libc::SIGXCPU,
        "XFSZ" => libc::SIGXFSZ,
        "VTALRM" => libc::SIGVTALRM,
        "PROF" => libc::SIGPROF,
        "WINCH" => libc::SIGWINCH,
        "PWR" => libc::SIGPWR,
        _ => return None,
    })
}

/// The short name torch prints for a signal number (`SIGTERM`).
pub fn signal_name(n: i32) -> String {
    let names = [
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGINT, "SIGINT"),
        (libc::SIGQUIT, "SIGQUIT"),
        (libc::SIGILL, "SIGILL"),
        (libc::SIGTRAP, "SIGTRAP"),
        (libc::SIGABRT, "SIGABRT"),
        (libc::SIGBUS, "SIGBUS"),
        (libc::SIGFPE, "SIGFPE"),
        (libc::SIGKILL, "SIGKILL"),
        (libc::SIGUSR1, "SIGUSR1"),
        (libc::SIGSEGV, "SIGSEGV"),
        (libc::SIGUSR2, "SIGUSR2"),
        (libc::SIGPIPE, "SIGPIPE"),
        (libc::SIGALRM, "SIGALRM"),
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGCHLD, "SIGCHLD"),
        (libc::SIGCONT, "SIGCONT"),
        (libc::SIGSTOP, "SIGSTOP"),
        (libc::SIGXCPU, "SIGXCPU"),
        (libc::SIGPWR, "SIGPWR"),
    ];
    names
        .iter()
        .find(|(v, _)| *v == n)
        .map(|(_, s)| s.to_string())
        .unwrap_or_else(|| format!("SIG{n}"))
}

/// Finds `prog` as an executable file: a path with a `/`, or a PATH entry.
pub fn find_executable(prog: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &Path| {
        p.is_file()
            && p.metadata()
                .map(|m| m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
    };
    if prog.contains('/') {
        let p = Path::new(prog);
        return is_exec(p).then(|| p.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(prog))
            .find(|p| is_exec(p))
    })
}

impl Config {
    /// Validates the flags. Reads the environment (`PYTHON_EXEC`, `PATH`) and
    /// GPU presence, nothing else.
    pub fn from_cli(cli: Cli) -> Result<Config, ConfigError> {
        let mut warnings = Vec::new();
        let (min_nodes, max_nodes) = parse_nnodes(&cli.nnodes)?;
        let nproc = resolve_nproc(&cli.nproc_per_node)?;
        if cli.max_restarts < 0 {
            return Err(bad(format!(
                "--max-restarts {}: must be 0 or more",
                cli.max_restarts
            )));
        }
        if !(cli.monitor_interval > 0.0 && cli.monitor_interval.is_finite()) {
            return Err(bad(format!(
                "--monitor-interval {}: must be > 0 seconds",
                cli.monitor_interval
            )));
        }
        if !(cli.term_timeout >= 0.0 && cli.term_timeout.is_finite()) {
            return Err(bad(format!(
                "--term-timeout {}: must be >= 0 seconds",
                cli.term_timeout
            )));
        }
        if cli.node_rank < 0 {
            return Err(bad(format!(
                "--node-rank {}: must be 0 or more",
                cli.node_rank
            )));
        }
        if cli.run_path {
            return Err(bad(
                "--run-path (function entrypoints through runpy) is not supported by rrun; drop the flag to run the script as `python -u script`",
            ));
        }
        if cli.numa_binding.is_some() {
            return Err(bad(
                "--numa-binding is not supported by rrun; wrap the script in `numactl` instead (e.g. --no-python numactl --cpunodebind=0 python train.py)",
            ));
        }
        if let Some(s) = &cli.logs_specs
            && s != "default"
        {
            return Err(bad(format!(
                "Could not find entrypoint under 'torchrun.logs_specs[{s}]' key (rrun only has `default`)"
            )));
        }
        if cli.module && cli.no_python {
            return Err(bad(
                "Don't use both the '--no-python' flag and the '--module' flag at the same time.",
            ));
        }

        let mut backend = match cli.rdzv_backend.as_str() {
            "static" => Backend::Static,
            "c10d" => Backend::C10d,
            other => {
                return Err(bad(format!(
                    "--rdzv-backend {other}: rrun supports static and c10d (etcd is not supported)"
                )));
            }
        };
        let mut endpoint = cli.rdzv_endpoint.clone();
        let mut run_id = cli.rdzv_id.clone();
        if cli.standalone {
            backend = Backend::C10d;
            endpoint = "localhost:0".into();
            run_id = uuid::Uuid::new_v4().to_string();
        }
        if backend == Backend::Static && min_nodes != max_nodes {
            return Err(bad(format!(
                "--nnodes {}: static rendezvous needs a fixed number of nodes; use --nnodes {max_nodes}, or --rdzv-backend c10d for a range",
                cli.nnodes
            )));
        }
        let endpoint = match backend {
            Backend::Static if endpoint.is_empty() => (cli.master_addr.clone(), cli.master_port),
            Backend::Static => {
                let (host, port) = parse_static_endpoint(&endpoint)?;
                let mut unused = Vec::new();
                if cli.master_addr != DEFAULT_MASTER_ADDR {
                    unused.push(format!("--master-addr {}", cli.master_addr));
                }
                if cli.master_port != DEFAULT_MASTER_PORT {
                    unused.push(format!("--master-port {}", cli.master_port));
                }
                if !unused.is_empty() {
                    warnings.push(format!(
                        "{} not used: with --rdzv-endpoint, the static rendezvous hosts its store at {host}:{port} and gives workers that MASTER_ADDR/MASTER_PORT (as torchrun does)",
                        unused.join(" and ")
                    ));
                }
                (host, port)
            }
            Backend::C10d => {
                if cli.rdzv_endpoint.is_empty() && !cli.standalone {
                    warnings.push("master_addr is only used for static rdzv_backend and when rdzv_endpoint is not specified.".into());
                }
                parse_endpoint(&endpoint, 29400)?
            }
        };
        let rdzv_conf = parse_rdzv_conf(&cli.rdzv_conf)?;
        let conf_secs = |key: &str, default: f64| -> Result<Duration, ConfigError> {
            match rdzv_conf.get(key) {
                Some(v) => seconds(v, key),
                None => Ok(Duration::from_secs_f64(default)),
            }
        };
        let rdzv_timeout = conf_secs("timeout", 900.0)?;
        let last_call_timeout = conf_secs("last_call_timeout", 30.0)?;
        let join_timeout = conf_secs("join_timeout", 600.0)?;

        let redirects = StdSpec::parse("--redirects", &cli.redirects)?;
        let tee = StdSpec::parse("--tee", &cli.tee)?;
        let local_ranks_filter = if cli.local_ranks_filter.trim().is_empty() {
            None
        } else {
            let set: Result<BTreeSet<usize>, _> = cli
                .local_ranks_filter
                .split(',')
                .map(|x| x.trim().parse::<usize>())
                .collect();
            Some(set.map_err(|_| bad(format!(
                "--local-ranks-filter {:?}: must be a comma-separated list of integers e.g. --local-ranks-filter=0,1,2",
                cli.local_ranks_filter
            )))?)
        };

        let mut signals = Vec::new();
        for name in cli.signals_to_handle.split(',') {
            match signal_number(name) {
                Some(n) if !signals.contains(&n) => signals.push(n),
                Some(_) => {}
                None if name.trim().is_empty() => {}
                None => warnings.push(format!("Signal {} not found, ignoring", name.trim())),
            }
        }

        let script = cli.command[0].clone();
        let script_args = &cli.command[1..];
        let python = std::env::var("PYTHON_EXEC").unwrap_or_else(|_| "python3".into());
        let (mode, argv) = if cli.no_python {
            (Mode::Binary, cli.command.clone())
        } else if cli.module {
            let mut a = vec![python, "-u".into(), "-m".into(), script.clone()];
            a.extend_from_slice(script_args);
            (Mode::Module, a)
        } else if !script.ends_with(".py") && find_executable(&script).is_some() {
            (Mode::Binary, cli.command.clone())
        } else {
            if !Path::new(&script).exists() {
                let cwd = std::env::current_dir()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                return Err(bad(format!(
                    "training script {script:?} not found (looked in {cwd}); check the path, or pass -m for a module or --no-python for a program on PATH"
                )));
            }
            let mut a = vec![python, "-u".into(), script.clone()];
            a.extend_from_slice(script_args);
            (Mode::Python, a)
        };
        if mode == Mode::Binary && find_executable(&script).is_none() {
            return Err(bad(format!(
                "program {script:?} not found or not executable (searched PATH); give a path or install it"
            )));
        }
        let entrypoint_name = cli
            .command
            .iter()
            .find(|a| !a.starts_with('-'))
            .cloned()
            .unwrap_or_else(|| script.clone());

        Ok(Config {
            min_nodes,
            max_nodes,
            nproc,
            backend,
            endpoint,
            run_id,
            rdzv_conf,
            standalone: cli.standalone,
            max_restarts: cli.max_restarts as u32,
            monitor_interval: Duration::from_secs_f64(cli.monitor_interval),
            role: cli.role,
            mode,
            argv,
            entrypoint_name,
            log_dir: cli.log_dir,
            redirects,
            tee,
            local_ranks_filter,
            stdout_filters: parse_filters(&cli.duplicate_stdout_filters),
            stderr_filters: parse_filters(&cli.duplicate_stderr_filters),
            node_rank: cli.node_rank as usize,
            local_addr: cli.local_addr,
            signals_string: cli.signals_to_handle,
            signals,
            virtual_local_rank: cli.virtual_local_rank,
            term_timeout: Duration::from_secs_f64(cli.term_timeout),
            tail_lines: cli.tail_lines,
            rdzv_timeout,
            last_call_timeout,
            join_timeout,
            warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nnodes_forms() {
        assert_eq!(parse_nnodes("2").unwrap(), (2, 2));
        assert_eq!(parse_nnodes("1:4").unwrap(), (1, 4));
        assert!(
            parse_nnodes("1:2:3")
                .unwrap_err()
                .to_string()
                .contains("MIN:MAX")
        );
        assert!(parse_nnodes("3:1").is_err());
        assert!(parse_nnodes("0").is_err());
        assert!(parse_nnodes("x").is_err());
    }

    #[test]
    fn nproc_words() {
        assert_eq!(resolve_nproc("3").unwrap(), 3);
        assert!(resolve_nproc("cpu").unwrap() >= 1);
        assert!(resolve_nproc("0").is_err());
        let e = resolve_nproc("foo").unwrap_err().to_string();
        assert!(
            e.starts_with("Unsupported nproc_per_node value: foo"),
            "{e}"
        );
    }

    #[test]
    fn std_specs_accept_ranks_above_nine() {
        assert_eq!(StdSpec::parse("-t", "3").unwrap().for_rank(5), 3);
        let m = StdSpec::parse("-t", "0:1,12:2").unwrap();
        assert_eq!((m.for_rank(0), m.for_rank(12), m.for_rank(3)), (1, 2, 0));
        assert!(StdSpec::parse("-t", "4").is_err());
        assert!(StdSpec::parse("-t", "a:1").is_err());
    }

    #[test]
    fn endpoints_and_conf() {
        assert_eq!(parse_endpoint("h:1", 2).unwrap(), ("h".into(), 1));
        assert_eq!(parse_endpoint("h", 2).unwrap(), ("h".into(), 2));
        assert_eq!(parse_endpoint("[::1]:5", 2).unwrap(), ("::1".into(), 5));
        assert_eq!(
            parse_endpoint("", 29400).unwrap(),
            ("localhost".into(), 29400)
        );
        let c = parse_rdzv_conf("timeout=5, join_timeout = 7").unwrap();
        assert_eq!(c["timeout"], "5");
        assert_eq!(c["join_timeout"], "7");
        assert!(parse_rdzv_conf("a=").is_err());
        assert_eq!(parse_filters("a,,b,c"), ["a,b", "c"]);
    }

    fn plan(args: &[&str]) -> Result<Config, ConfigError> {
        use clap::Parser;
        let mut argv = vec!["rrun"];
        argv.extend_from_slice(args);
        argv.extend_from_slice(&["--no-python", "true"]);
        Config::from_cli(Cli::try_parse_from(argv).unwrap())
    }

    #[test]
    fn static_endpoint_is_the_store_and_the_workers_master() {
        let c = plan(&["--rdzv-id", "101", "--rdzv-endpoint", "localhost:23456"]).unwrap();
        assert_eq!(c.endpoint, ("localhost".into(), 23456));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        // The endpoint wins over --master-addr/--master-port, with a warning.
        let c = plan(&["--master-port", "1234", "--rdzv-endpoint", "[::1]:23456"]).unwrap();
        assert_eq!(c.endpoint, ("::1".into(), 23456));
        assert!(
            c.warnings[0].starts_with("--master-port 1234 not used"),
            "{:?}",
            c.warnings
        );
        // Without an endpoint: --master-addr verbatim and --master-port.
        let c = plan(&["--master-addr", "node0.example", "--master-port", "1234"]).unwrap();
        assert_eq!(c.endpoint, ("node0.example".into(), 1234));
        // An endpoint without a port is refused, as torch does.
        let e = plan(&["--master-port", "1234", "--rdzv-endpoint", "localhost"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("port is missing in endpoint"), "{e}");
        // c10d keeps its default port.
        let c = plan(&["--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost"]).unwrap();
        assert_eq!(c.endpoint, ("localhost".into(), 29400));
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_number("SIGTERM"), Some(15));
        assert_eq!(signal_number(" SIGUSR1"), Some(libc::SIGUSR1));
        assert_eq!(signal_number("SIGNOPE"), None);
        assert_eq!(signal_name(15), "SIGTERM");
    }
}
