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

use super::backend::StepSizes;
use super::cli::{EngineArgs, ServeArgs};
use super::engine::executor::Executor;
use super::engine::scheduler::{Limits, Scheduler};
use super::engine::{Engine, Stats};
use super::error::RankError;
use super::kv::BlockAllocator;
use super::startup::{self, Sizing};

/// How long responses in flight may take to reach their clients once the engine
/// has stopped.
const RESPONSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the server (every rank).
pub fn run(engine: &EngineArgs, serve: &ServeArgs) -> Result<(), RankError> {
    let mut s = startup::prepare(engine, true)?;
    let max_model_len = s.max_model_len(engine);
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
        let server = http::spawn(state.clone(), &serve.host, serve.port)
            .map_err(|e| RankError::Runtime(e.to_string()))?;
        crate::eline!(
            "rrank: listening on http://{} (503 until the weights are loaded)",
            server.addr
        );
        front = Some((state, codec, server));
    }
    let seqs = serve.max_num_seqs;
    let tokens = serve.max_num_batched_tokens;
    let mut prefill = vec![tokens];
    if tokens > 512 {
        prefill.insert(0, 512);
    }
    let sizing = Sizing {
        step: StepSizes {
            tokens,
            rows: seqs,
            seqs,
            blocks: seqs * max_model_len.div_ceil(bs),
        },
        kv_tokens: serve.kv_cache_tokens,
        util: serve.gpu_memory_utilization,
        max_model_len,
        warm_up: Some((prefill, seqs)),
        print_memory: true,
    };
    let ready = s.bring_up(engine, &sizing)?;
    let (kv, backend) = (ready.kv, ready.backend);
    let blocks = kv.blocks;
    if env.rank == 0 {
        let graphs = if backend.graphs() {
            " and CUDA-graph capture"
        } else {
            ""
        };
        let [loaded, cache, warm] = ready.times;
        crate::eline!(
            "rrank: start-up: {loaded:.2} s to the loaded weights (libraries, checkpoint, NCCL), {cache:.2} s KV cache, {warm:.2} s warm-up{graphs}"
        );
    }
    let mine = kv.report;
    let mut comm = ready.comm;
    let _store_host = ready._server;
    let mut exec = Executor {
        backend,
        sampler: ready.place.sampler(),
    };
    if env.rank != 0 {
        comm.send(0, mine.to_string().as_bytes())
            .map_err(|e| RankError::Runtime(format!("reporting memory to rank 0: {e}")))?;
        return exec
            .follow(comm.as_mut())
            .map_err(|e| RankError::Runtime(e.to_string()));
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
    result.map_err(|e| RankError::Runtime(e.to_string()))?;
    crate::eline!("rrank: shut down");
    Ok(())
}
