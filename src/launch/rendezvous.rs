//! How agents find each other and number their workers (docs/spec/torchrun.md §4).
//!
//! Static (the default): node 0 hosts the TCPStore at the endpoint (`--rdzv-endpoint`,
//! else `--master-addr:--master-port`), which is also the workers' MASTER_ADDR and
//! MASTER_PORT; every agent ADDs `init/`, node 0 waits until all nodes have; group
//! rank = `--node-rank`. The keys are torch's own (`/<run_id>/torchelastic/…`), so
//! rrun and torchrun agents can form one static job. c10d (and `--standalone`): the endpoint host serves the
//! rendezvous store, agents take group ranks in join order, and group rank 0 hosts a
//! second, ephemeral-port store for the workers — an rrun-to-rrun protocol (torch's
//! c10d state is a Python pickle). Rank assignment (§4.4) and the exit barrier
//! (§3.5) are shared by both.

use std::io;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::config::{Backend, Config};
use super::env::{MasterInfo, RankInfo};
use crate::host::net;
use crate::store::{Client, StoreError, StoreServer};

/// A rendezvous that could not complete.
#[derive(Debug, thiserror::Error)]
pub enum RdzvError {
    #[error(
        "master port {port} is already in use{holder}; pick a free one with --master-port, or use --standalone for a free port"
    )]
    PortInUse { port: u16, holder: String },
    #[error("cannot host the store on port {port}: {err}")]
    Bind { port: u16, err: io::Error },
    #[error(
        "could not reach the node-0 store at {addr} after {secs} s (this is --node-rank {node}); start node 0, or check --master-addr/--master-port and firewalls"
    )]
    Unreachable {
        addr: String,
        secs: u64,
        node: usize,
    },
    #[error("Timed out after {secs} seconds waiting for clients. {joined}/{want} clients joined.")]
    NodesMissing { secs: u64, joined: i64, want: usize },
    #[error(
        "rendezvous {run_id:?} at {addr} already has {max} nodes (--nnodes max); this agent cannot join"
    )]
    Full {
        run_id: String,
        addr: String,
        max: usize,
    },
    #[error("bad rendezvous data under {key}: {value:?}")]
    BadData { key: String, value: String },
    #[error("store error during rendezvous: {0}")]
    Store(#[from] StoreError),
}

/// A completed rendezvous: this agent's place, the store, and what workers are told.
pub struct Rendezvous {
    pub client: Client,
    /// Servers this agent hosts; they live as long as the rendezvous.
    _servers: Vec<StoreServer>,
    pub group_rank: usize,
    pub group_world_size: usize,
    pub master: MasterInfo,
    /// Key prefix of the agents' keys (`<run_id>/` static, `torch.rendezvous.<id>.0/` c10d).
    prefix: String,
}

fn host_store(port: u16) -> Result<StoreServer, RdzvError> {
    StoreServer::start(port).map_err(|err| {
        if err.kind() == io::ErrorKind::AddrInUse {
            let holder = match net::port_holder(port) {
                Some((pid, comm)) => format!(" (held by pid {pid} {comm:?})"),
                None => String::new(),
            };
            RdzvError::PortInUse { port, holder }
        } else {
            RdzvError::Bind { port, err }
        }
    })
}

/// The implicit endpoint host: hosts the store, or joins whoever already serves the
/// endpoint, trying both in turn until one works. Two agents on one host can both lose
/// the bind to a transient holder (a stray connection whose ephemeral port is the
/// endpoint's); trying to host again once the port frees keeps them from both waiting
/// for a store that never comes.
fn host_or_join(
    host: &str,
    port: u16,
    timeout: Duration,
    servers: &mut Vec<StoreServer>,
    report: &dyn Fn(Duration),
) -> Result<Client, RdzvError> {
    let start = Instant::now();
    let mut next_report = Duration::from_secs(5);
    loop {
        match host_and_connect(port, timeout, servers) {
            Ok(c) => return Ok(c),
            Err(RdzvError::PortInUse { .. }) => {}
            Err(e) => return Err(e),
        }
        let left = timeout.saturating_sub(start.elapsed());
        match Client::connect(host, port, left.min(Duration::from_secs(1)), &mut |_| {}) {
            Ok(c) => return Ok(c),
            Err(StoreError::Unreachable { .. }) if left > Duration::from_secs(1) => {}
            Err(StoreError::Unreachable { addr, last, .. }) => {
                let waited = start.elapsed();
                return Err(StoreError::Unreachable { addr, waited, last }.into());
            }
            Err(e) => return Err(e.into()),
        }
        if start.elapsed() >= next_report {
            report(start.elapsed());
            next_report = start.elapsed() + Duration::from_secs(5);
        }
    }
}

fn progress_every(start: Instant, last: &mut Instant, msg: impl Fn(u64) -> String) {
    if last.elapsed() >= Duration::from_secs(5) {
        *last = Instant::now();
        crate::eline!("rrun: {}", msg(start.elapsed().as_secs()));
    }
}

/// Hosts the store on `port` (kept in `servers`) and connects to it.
fn host_and_connect(
    port: u16,
    timeout: Duration,
    servers: &mut Vec<StoreServer>,
) -> Result<Client, RdzvError> {
    let server = host_store(port)?;
    let c = Client::connect("127.0.0.1", server.port(), timeout, &mut |_| {})?;
    servers.push(server);
    Ok(c)
}

impl Rendezvous {
    /// Runs the configured rendezvous.
    pub fn join(cfg: &Config) -> Result<Rendezvous, RdzvError> {
        match cfg.backend {
            Backend::Static => Self::join_static(cfg),
            Backend::C10d => Self::join_c10d(cfg),
        }
    }

    fn join_static(cfg: &Config) -> Result<Rendezvous, RdzvError> {
        let (addr, port) = (cfg.endpoint.0.clone(), cfg.endpoint.1);
        let nodes = cfg.max_nodes;
        let timeout = cfg.rdzv_timeout;
        let mut servers = Vec::new();
        let mut client = if cfg.node_rank == 0 {
            host_and_connect(port, timeout, &mut servers)?
        } else {
            let shown = format!("{addr}:{port}");
            let node = cfg.node_rank;
            Client::connect(&addr, port, timeout, &mut |t| {
                crate::eline!("rrun: waiting for the node-0 store at {shown} (this is node {node} of {nodes}), {} s", t.as_secs());
            })
            .map_err(|e| match e {
                StoreError::Unreachable { waited, .. } => RdzvError::Unreachable { addr: shown.clone(), secs: waited.as_secs(), node },
                e => e.into(),
            })?
        };
        client.set_timeout(timeout);
        client.add_raw(b"init/", 1)?;
        if cfg.node_rank == 0 {
            // The store owner waits for every node, as torch's TCPStore(is_master, world_size) does.
            let start = Instant::now();
            let mut last = Instant::now();
            loop {
                let joined = String::from_utf8_lossy(&client.get_raw_now(b"init/")?)
                    .trim()
                    .parse::<i64>()
                    .unwrap_or(0);
                if joined >= nodes as i64 {
                    break;
                }
                if start.elapsed() >= timeout {
                    return Err(RdzvError::NodesMissing {
                        secs: start.elapsed().as_secs(),
                        joined,
                        want: nodes,
                    });
                }
                progress_every(start, &mut last, |s| {
                    format!("waiting for nodes: {joined}/{nodes} joined at {addr}:{port}, {s} s")
                });
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // Workers use the agents' store (torch's bootstrap_store_info): the endpoint, or
        // on node 0 with port 0, the port the store got.
        let port = servers.first().map_or(port, StoreServer::port);
        Ok(Rendezvous {
            client,
            _servers: servers,
            group_rank: cfg.node_rank,
            group_world_size: nodes,
            master: MasterInfo {
                addr,
                port,
                use_agent_store: true,
            },
            prefix: format!("{}/", cfg.run_id),
        })
    }

    fn join_c10d(cfg: &Config) -> Result<Rendezvous, RdzvError> {
        let (host, port) = cfg.endpoint.clone();
        let timeout = cfg.join_timeout;
        let explicit_host = cfg
            .rdzv_conf
            .get("is_host")
            .map(|v| matches!(v.to_lowercase().as_str(), "1" | "true" | "t" | "yes" | "y"));
        let mut servers = Vec::new();
        let shown = format!("{host}:{port}");
        let report = |t: Duration| {
            crate::eline!(
                "rrun: waiting for the rendezvous store at {shown}, {} s",
                t.as_secs()
            );
        };
        let mut client = match explicit_host {
            Some(true) => host_and_connect(port, timeout, &mut servers)?,
            None if net::is_local_host(&host) => {
                host_or_join(&host, port, timeout, &mut servers, &report)?
            }
            _ => Client::connect(&host, port, timeout, &mut |t| report(t))?,
        };
        client.set_timeout(timeout);
        let base = format!("rrun.rendezvous.{}", cfg.run_id);
        let index = (client.add(&format!("{base}/joined"), 1)? - 1) as usize;
        if index >= cfg.max_nodes {
            return Err(RdzvError::Full {
                run_id: cfg.run_id.clone(),
                addr: shown,
                max: cfg.max_nodes,
            });
        }
        let size_key = format!("{base}/size");
        if index == 0 {
            // The first agent closes the round: at max nodes, or `last_call_timeout`
            // after min nodes joined.
            let start = Instant::now();
            let mut last = Instant::now();
            let mut min_reached: Option<Instant> = None;
            let size = loop {
                let joined = client.add(&format!("{base}/joined"), 0)?.max(0) as usize;
                if joined >= cfg.max_nodes {
                    break cfg.max_nodes;
                }
                if joined >= cfg.min_nodes {
                    let t = *min_reached.get_or_insert_with(Instant::now);
                    if t.elapsed() >= cfg.last_call_timeout {
                        break joined;
                    }
                }
                if start.elapsed() >= timeout {
                    return Err(RdzvError::NodesMissing {
                        secs: start.elapsed().as_secs(),
                        joined: joined as i64,
                        want: cfg.min_nodes,
                    });
                }
                progress_every(start, &mut last, |s| {
                    format!(
                        "waiting for nodes: {joined}/{} joined at {shown}, {s} s",
                        cfg.max_nodes
                    )
                });
                std::thread::sleep(Duration::from_millis(10));
            };
            client.set(&size_key, size.to_string().as_bytes())?;
        }
        let size_raw = client.get(&size_key)?;
        let size: usize = parse_num(&size_key, &size_raw)?;
        if index >= size {
            return Err(RdzvError::Full {
                run_id: cfg.run_id.clone(),
                addr: shown,
                max: size,
            });
        }
        let prefix = format!("torch.rendezvous.{}.0/", cfg.run_id);
        if index == 0 {
            let addr = cfg.local_addr.clone().unwrap_or_else(net::fqdn);
            let port = if std::env::var("TORCH_DISABLE_SHARE_RDZV_TCP_STORE").as_deref() == Ok("1")
            {
                let l = std::net::TcpListener::bind(("0.0.0.0", 0))
                    .map_err(|err| RdzvError::Bind { port: 0, err })?;
                l.local_addr()
                    .map_err(|err| RdzvError::Bind { port: 0, err })?
                    .port()
            } else {
                let s = host_store(0)?;
                let p = s.port();
                servers.push(s);
                p
            };
            client.multi_set(&[
                (&format!("{prefix}MASTER_ADDR"), addr.as_bytes()),
                (&format!("{prefix}MASTER_PORT"), port.to_string().as_bytes()),
            ])?;
        }
        let addr =
            String::from_utf8_lossy(&client.get(&format!("{prefix}MASTER_ADDR"))?).into_owned();
        let port_key = format!("{prefix}MASTER_PORT");
        let port: u16 = parse_num(&port_key, &client.get(&port_key)?)?;
        let use_agent_store =
            std::env::var("TORCH_DISABLE_SHARE_RDZV_TCP_STORE").as_deref() != Ok("1");
        Ok(Rendezvous {
            client,
            _servers: servers,
            group_rank: index,
            group_world_size: size,
            master: MasterInfo {
                addr,
                port,
                use_agent_store,
            },
            prefix,
        })
    }

    /// Torch's rank assignment through the store (§4.4); re-run on every attempt.
    pub fn assign_ranks(&mut self, role: &str, nproc: usize) -> Result<RankInfo, RdzvError> {
        let p = format!("{}torchelastic", self.prefix);
        let g = self.group_rank;
        let info = serde_json::json!({"role": role, "rank": g, "local_world_size": nproc});
        self.client
            .set(&format!("{p}/role_info/{g}"), python_json(&info).as_bytes())?;
        if g == 0 {
            let keys: Vec<String> = (0..self.group_world_size)
                .map(|i| format!("{p}/role_info/{i}"))
                .collect();
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            let infos = self.client.multi_get(&refs)?;
            let mut parsed = Vec::new();
            for (k, v) in keys.iter().zip(&infos) {
                let j: Value = serde_json::from_slice(v).map_err(|_| RdzvError::BadData {
                    key: k.clone(),
                    value: String::from_utf8_lossy(v).into(),
                })?;
                let field = |name: &str| {
                    j.get(name).cloned().ok_or_else(|| RdzvError::BadData {
                        key: k.clone(),
                        value: j.to_string(),
                    })
                };
                let role = field("role")?.as_str().unwrap_or_default().to_string();
                let rank = field("rank")?.as_u64().unwrap_or(0) as usize;
                let lws = field("local_world_size")?.as_u64().unwrap_or(0) as usize;
                parsed.push((role, rank, lws));
            }
            let assigned = assign(&parsed);
            let values: Vec<(String, String)> = assigned
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    (
                        format!("{p}/assigned_ranks/{i}"),
                        format!("[{}, {}, {}, {}]", a[0], a[1], a[2], a[3]),
                    )
                })
                .collect();
            let kvs: Vec<(&str, &[u8])> = values
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_bytes()))
                .collect();
            self.client.multi_set(&kvs)?;
        }
        let key = format!("{p}/assigned_ranks/{g}");
        let raw = self.client.get(&key)?;
        let v: Vec<usize> = serde_json::from_slice(&raw)
            .ok()
            .filter(|v: &Vec<usize>| v.len() == 4)
            .ok_or_else(|| RdzvError::BadData {
                key: key.clone(),
                value: String::from_utf8_lossy(&raw).into(),
            })?;
        Ok(RankInfo {
            group_rank: g,
            group_world_size: self.group_world_size,
            base_global_rank: v[0],
            global_world_size: v[1],
            base_role_rank: v[2],
            role_world_size: v[3],
        })
    }

    /// Torch's exit barrier (§3.5): wait up to 300 s for every agent to finish.
    /// A timeout is reported and not fatal. `interrupted` is polled each second.
    pub fn exit_barrier(&mut self, interrupted: &dyn Fn() -> bool) {
        let p = format!("{}torchelastic/agent/terminal_state", self.prefix);
        let start = Instant::now();
        let r = (|| -> Result<(), StoreError> {
            let n = self.client.add(&format!("{p}/num_members"), 1)?;
            if n == self.group_world_size as i64 {
                self.client
                    .set(&format!("{p}/last_member"), b"<val_ignored>")?;
            }
            let mut last = Instant::now();
            loop {
                match self
                    .client
                    .wait(&[&format!("{p}/last_member")], Duration::from_secs(1))
                {
                    Ok(()) => return Ok(()),
                    Err(StoreError::Timeout { .. })
                        if start.elapsed() < Duration::from_secs(300) && !interrupted() =>
                    {
                        progress_every(start, &mut last, |s| {
                            format!(
                                "workers of this node finished; waiting for the other nodes to finish, {s} s"
                            )
                        });
                    }
                    Err(e) => return Err(e),
                }
            }
        })();
        if let Err(e) = r {
            crate::eline!(
                "rrun: Error waiting on exit barrier. Elapsed: {} seconds ({e})",
                start.elapsed().as_secs()
            );
        }
    }
}

fn parse_num<T: std::str::FromStr>(key: &str, raw: &[u8]) -> Result<T, RdzvError> {
    String::from_utf8_lossy(raw)
        .trim()
        .parse()
        .map_err(|_| RdzvError::BadData {
            key: key.into(),
            value: String::from_utf8_lossy(raw).into(),
        })
}

/// Python's `json.dumps` layout (`, ` and `: ` separators) for flat objects.
fn python_json(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let items: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{}: {}", Value::from(k.as_str()), python_json(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// `[base_global_rank, global_world_size, base_role_rank, role_world_size]` per
/// group rank, from `(role, group_rank, local_world_size)` (torch's algorithm).
pub fn assign(infos: &[(String, usize, usize)]) -> Vec<[usize; 4]> {
    let total: usize = infos.iter().map(|i| i.2).sum();
    let mut by_group: Vec<usize> = (0..infos.len()).collect();
    by_group.sort_by_key(|&i| infos[i].1);
    let mut out = vec![[0usize; 4]; infos.len()];
    let mut base = 0;
    for &i in &by_group {
        out[i][0] = base;
        out[i][1] = total;
        base += infos[i].2;
    }
    let mut by_role: Vec<usize> = (0..infos.len()).collect();
    by_role.sort_by(|&a, &b| (&infos[a].0, infos[a].1).cmp(&(&infos[b].0, infos[b].1)));
    for role in by_role
        .iter()
        .map(|&i| infos[i].0.clone())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let members: Vec<usize> = by_role
            .iter()
            .copied()
            .filter(|&i| infos[i].0 == role)
            .collect();
        let size: usize = members.iter().map(|&i| infos[i].2).sum();
        let mut rb = 0;
        for i in members {
            out[i][2] = rb;
            out[i][3] = size;
            rb += infos[i].2;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_json_layout() {
        let v = serde_json::json!({"role": "default", "rank": 0, "local_world_size": 2});
        // serde_json sorts keys alphabetically without preserve_order; torch only parses it.
        let s = python_json(&v);
        assert!(
            s.contains("\"role\": \"default\"") && s.contains(", "),
            "{s}"
        );
        let back: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn assigns_like_torch() {
        let a = assign(&[("default".into(), 1, 2), ("default".into(), 0, 2)]);
        assert_eq!(a[1], [0, 4, 0, 4]);
        assert_eq!(a[0], [2, 4, 2, 4]);
        let h = assign(&[("default".into(), 0, 3), ("default".into(), 1, 1)]);
        assert_eq!(h, vec![[0, 4, 0, 4], [3, 4, 3, 4]]);
    }
}
