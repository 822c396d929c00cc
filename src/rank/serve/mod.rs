//! `rrank` serving: every rank loads its shard and sizes its KV cache; rank 0 runs
//! the HTTP front ([`http`]: server and routing; [`openai`] and [`vllm`] routes;
//! [`body`] reading, [`api`] validation, [`error`]; [`respond`] helpers; [`state`]
//! shared by handlers; [`exposition`] and [`metrics`] for /metrics)
//! and the engine loop, the other ranks follow the StepPlans. SIGTERM/SIGINT on rank 0
//! stops new requests (503), lets the ones in flight finish, then shuts every rank
//! down; every response in flight gets its end before rank 0 exits, also when the
//! engine fails.

pub mod api;
pub mod body;
pub mod error;
pub mod exposition;
pub mod http;
pub mod metrics;
pub mod openai;
pub mod respond;
pub mod state;
pub mod vllm;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::RankError;
use super::backend::cuda::model::graph_bucket;
use super::cli::{EngineArgs, ServeArgs};
use super::engine::executor::{Backend, Executor};
use super::engine::scheduler::{Limits, Scheduler};
use super::engine::{Engine, Stats};
use super::kv::BlockAllocator;
use super::startup;

/// How long responses in flight may take to reach their clients once the engine
/// has stopped.
const RESPONSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the server (every rank).
pub fn run(engine: &EngineArgs, serve: &ServeArgs) -> Result<(), RankError> {
    let t_start = Instant::now();
    let mut s = startup::prepare(engine, true)?;
    let max_model_len = startup::max_model_len(engine, &s.cfg, s.device);
    let bs = engine.block_size;
    if let Some(tokens) = serve.kv_cache_tokens
        && tokens.div_ceil(bs) * bs < max_model_len
    {
        return Err(RankError::Invalid(format!(
            "--kv-cache-tokens {tokens} cannot hold one --max-model-len {max_model_len} sequence; raise --kv-cache-tokens or lower --max-model-len"
        )));
    }
    if serve.max_num_seqs == 0 || serve.max_num_batched_tokens == 0 {
        return Err(RankError::Invalid(
            "--max-num-seqs and --max-num-batched-tokens must be at least 1".into(),
        ));
    }
    // Every rank stops on the signal only through rank 0's Shutdown plan.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    // Rank 0 answers /health (503) and requests (503) while the weights load.
    let served = serve.served_model_name.clone().unwrap_or_else(|| {
        engine
            .model
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    let stats = Arc::new(Mutex::new(Stats::default()));
    let (tx, rx) = std::sync::mpsc::channel();
    let mut front = None;
    let (env, cfg) = (s.env.clone(), s.cfg.clone());
    if env.rank == 0 {
        let codec = Arc::new(s.codec.take().expect("tokenizer loaded for serving"));
        if !(serve.body_timeout > 0.0 && serve.body_timeout.is_finite()) {
            return Err(RankError::Invalid(format!(
                "--body-timeout {} must be a positive number of seconds",
                serve.body_timeout
            )));
        }
        let state = Arc::new(state::AppState {
            codec: codec.clone(),
            submit: Mutex::new(tx),
            served: served.clone(),
            max_model_len,
            vocab: cfg.vocab_size,
            api_key: serve.api_key.clone(),
            body_timeout: std::time::Duration::from_secs_f64(serve.body_timeout),
            max_queued: serve.max_queued_seqs,
            queued: Default::default(),
            stats: stats.clone(),
            stopping: stop.clone(),
            ready: AtomicBool::new(false),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            gauges: Mutex::new(vec![]),
            latency: Arc::new(Mutex::new(metrics::Latency::default())),
        });
        let server = http::spawn(state.clone(), &serve.host, serve.port)?;
        crate::eline!(
            "rrank: listening on http://{} (503 until the weights are loaded)",
            server.addr
        );
        front = Some((state, codec, server));
    }
    let mut backend = startup::load_backend(engine, &mut s)?;
    let t_loaded = Instant::now();
    if let Backend::Cuda(m) = &mut backend {
        // The step workspace is sized for the largest step (a decode step is padded
        // to its CUDA-graph size) before the cache takes the rest.
        let seqs = serve.max_num_seqs;
        let padded = graph_bucket(seqs).unwrap_or(seqs);
        let tokens = serve.max_num_batched_tokens.max(padded);
        m.reserve(tokens, padded, seqs, 0, seqs * max_model_len.div_ceil(bs))
            .map_err(|e| RankError::Runtime(e.to_string()))?;
    }
    let kv = startup::plan_kv(
        &mut s,
        &mut backend,
        serve.kv_cache_tokens,
        serve.gpu_memory_utilization,
        bs,
        max_model_len,
    )?;
    let blocks = kv.blocks;
    crate::eline!("rrank: {}", kv.line);
    let t_kv = Instant::now();
    if let Backend::Cuda(m) = &mut backend {
        let tokens = serve.max_num_batched_tokens;
        let mut sizes = vec![tokens];
        if tokens > 512 {
            sizes.insert(0, 512);
        }
        m.warmup(&sizes, serve.max_num_seqs)
            .map_err(|e| RankError::Runtime(format!("warm-up: {e}")))?;
    }
    if env.rank == 0 {
        let graphs = match &backend {
            Backend::Cuda(m) if m.graphs.enabled => " and CUDA-graph capture",
            _ => "",
        };
        crate::eline!(
            "rrank: start-up: {:.2} s to the loaded weights (libraries, checkpoint, NCCL), {:.2} s KV cache, {:.2} s warm-up{graphs}",
            (t_loaded - t_start).as_secs_f64(),
            (t_kv - t_loaded).as_secs_f64(),
            t_kv.elapsed().as_secs_f64()
        );
    }
    let mine = kv.report;
    let mut comm = s.comm;
    let mut exec = Executor { backend };
    if env.rank != 0 {
        comm.send(0, mine.to_string().as_bytes())
            .map_err(|e| RankError::Runtime(format!("reporting memory to rank 0: {e}")))?;
        return exec.follow(comm.as_mut()).map_err(RankError::Runtime);
    }
    let (state, codec, server) = front.expect("rank 0 serves");
    let addr = server.addr;
    let mut reports = vec![mine];
    for r in 1..env.world_size {
        let b = comm
            .recv(r)
            .map_err(|e| RankError::Runtime(format!("memory report of rank {r}: {e}")))?;
        reports.push(
            serde_json::from_slice(&b)
                .map_err(|e| RankError::Runtime(format!("memory report of rank {r}: {e}")))?,
        );
    }
    *state.gauges.lock().unwrap() = reports
        .iter()
        .flat_map(|r| {
            let rank = &r["rank"];
            [
                "weight_bytes",
                "kv_bytes",
                "kv_tokens",
                "workspace_bytes",
                "used_bytes",
                "total_bytes",
            ]
            .into_iter()
            .filter(|k| !r[*k].is_null())
            .map(|k| format!("rrun:rank_{k}{{rank=\"{rank}\"}} {}", r[k]))
            .collect::<Vec<_>>()
        })
        .collect();
    let eos = cfg.eos_token_ids.clone();
    let mut eng = Engine {
        steps: Default::default(),
        exec,
        sched: Scheduler::new(
            BlockAllocator::with_prefix_caching(blocks, bs, !serve.no_enable_prefix_caching),
            Limits {
                max_num_seqs: serve.max_num_seqs,
                max_batched_tokens: serve.max_num_batched_tokens,
                max_model_len,
            },
            eos,
        ),
        codec,
    };
    // /metrics shows the real KV capacity from the first scrape, not zeros until a step ran.
    *stats.lock().unwrap() = eng.stats();
    state.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    crate::eline!(
        "rrank: serving {served} on http://{addr} (max_model_len {max_model_len}, {} ranks)",
        env.world_size
    );
    let result = eng.run(comm.as_mut(), rx, stop, stats);
    // Sequences still held end here, so their streams get an error event.
    drop(eng);
    if !server.shutdown(RESPONSE_GRACE) {
        crate::eline!(
            "rrank: some responses were still being sent {RESPONSE_GRACE:?} after the engine stopped"
        );
    }
    result.map_err(RankError::Runtime)?;
    crate::eline!("rrank: shut down");
    Ok(())
}
