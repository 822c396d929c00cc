//! rrank's start-up, in DESIGN.md's order: env contract, flags, validation of
//! placement and checkpoint (headers only — no weight is read before everything
//! checks out), the GPU (libraries, one rank per GPU, kernels), then the store and
//! the communicator, then this rank's weights on its device.

use std::path::PathBuf;

use super::RankError;
use super::backend::cuda::libs::{self, Lib};
use super::backend::cuda::model::CudaModel;
use super::backend::cuda::{DType, Gpu, GpuError};
use super::cli::EngineArgs;
use super::dist::tcp::TcpComm;
use super::dist::{Comm, Placement, RankEnv, Solo};
use super::engine::executor::Backend;
use super::model::checkpoint::Checkpoint;
use super::model::config::ModelConfig;
use super::model::llama::RankModel;
use super::tokenizer::TextCodec;
use crate::store::{Client, StoreServer};

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(DType),
}

/// Everything validated and connected; weights not yet loaded.
pub struct Startup {
    pub env: RankEnv,
    pub place: Placement,
    pub cfg: ModelConfig,
    pub codec: Option<TextCodec>,
    pub comm: Box<dyn Comm>,
    pub device: Device,
    /// This rank's GPU, opened and with its kernels loaded (CUDA only).
    pub gpu: Option<Gpu>,
    /// The job's store (multi-rank only), for the NCCL ids.
    pub store: Option<Client>,
    /// The store this rank hosts when no launcher does (rank 0 only).
    pub _server: Option<StoreServer>,
}

fn model_dir(engine: &EngineArgs) -> Result<PathBuf, RankError> {
    engine
        .model
        .clone()
        .ok_or_else(|| RankError::Invalid("--model DIR is required".into()))
}

fn gpu_err(e: GpuError) -> RankError {
    match e {
        GpuError::Setup(m) => RankError::Invalid(m),
        GpuError::Run(m) => RankError::Runtime(m),
    }
}

/// `--device` and `--dtype` resolved against the machine and the checkpoint.
fn resolve_device(engine: &EngineArgs, ckpt: &Checkpoint) -> Result<Device, RankError> {
    let cuda = match engine.device.as_str() {
        "cpu" => false,
        "cuda" => true,
        _ => libs::available(Lib::Driver) && crate::launch::devices::visible_gpu_count() > 0,
    };
    let stored = ckpt
        .meta("model.embed_tokens.weight")
        .and_then(|m| DType::parse(&m.dtype))
        .unwrap_or(DType::F32);
    let dtype = match engine.dtype.as_str() {
        "auto" => match stored {
            DType::Bf16 => DType::Bf16,
            _ => DType::F16,
        },
        other => DType::parse(other).expect("clap checked the value"),
    };
    if !cuda {
        if !matches!(engine.dtype.as_str(), "auto" | "float32" | "float") {
            return Err(RankError::Invalid(format!(
                "--dtype {} needs a GPU (--device cuda); the CPU backend computes in float32",
                engine.dtype
            )));
        }
        return Ok(Device::Cpu);
    }
    Ok(Device::Cuda(dtype))
}

/// Publishes this rank's GPU and refuses when two ranks would share one.
fn check_gpu_sharing(store: &mut Client, env: &RankEnv, gpu: &Gpu) -> Result<(), RankError> {
    let uuid = gpu
        .ctx
        .uuid()
        .map(|u| {
            u.bytes
                .iter()
                .map(|b| format!("{:02x}", *b as u8))
                .collect::<String>()
        })
        .map_err(|e| RankError::Runtime(format!("GPU uuid: {e:?}")))?;
    let host = crate::launch::net::hostname();
    let me = format!("{host} {uuid}");
    let key = |r: usize| format!("rrank/{}/gpu/{r}", env.attempt);
    store
        .set(&key(env.rank), me.as_bytes())
        .map_err(|e| RankError::Runtime(format!("publishing the GPU: {e}")))?;
    for r in 0..env.world_size {
        if r == env.rank {
            continue;
        }
        let other = store
            .get(&key(r))
            .map_err(|e| RankError::Runtime(format!("GPU of rank {r}: {e}")))?;
        if other == me.as_bytes() {
            let (a, b) = (r.min(env.rank), r.max(env.rank));
            return Err(RankError::Invalid(format!(
                "ranks {a} and {b} would share GPU {uuid} ({}) on {host}; give every rank its own GPU (CUDA_VISIBLE_DEVICES, --nproc-per-node)",
                gpu.name
            )));
        }
    }
    Ok(())
}

/// Validates everything that can be validated without weights, then connects.
pub fn prepare(engine: &EngineArgs, need_tokenizer: bool) -> Result<Startup, RankError> {
    let env = RankEnv::from_env()?;
    let dir = model_dir(engine)?;
    let cfg = ModelConfig::load(&dir)?;
    let (tp, pp) = (engine.tensor_parallel_size, engine.pipeline_parallel_size);
    cfg.validate_placement(tp, pp, env.world_size)?;
    if engine.block_size == 0 {
        return Err(RankError::Invalid("--block-size must be at least 1".into()));
    }
    let ckpt = Checkpoint::open(&dir)?;
    ckpt.validate(&cfg)?;
    let device = resolve_device(engine, &ckpt)?;
    let gpu = match device {
        Device::Cpu => None,
        Device::Cuda(_) => {
            if env.world_size > 1 {
                // Before any store or thread: this may re-execute rrank.
                libs::ensure(&[Lib::Nccl]).map_err(RankError::Invalid)?;
            }
            if cfg.head_dim > 256 || cfg.head_dim % 2 == 1 {
                return Err(RankError::Invalid(format!(
                    "head_dim {} is not supported on GPU (even, at most 256)",
                    cfg.head_dim
                )));
            }
            Some(Gpu::open(env.local_rank, env.local_world_size).map_err(gpu_err)?)
        }
    };
    let codec = if need_tokenizer || dir.join("tokenizer.json").exists() {
        Some(TextCodec::load(&dir)?)
    } else {
        None
    };
    if let Some(c) = &codec
        && c.vocab_size() > cfg.vocab_size
    {
        return Err(RankError::Invalid(format!(
            "the tokenizer has {} tokens but the embedding has only {} rows (vocab_size in config.json); the tokenizer belongs to another model",
            c.vocab_size(),
            cfg.vocab_size
        )));
    }
    let place = Placement {
        tp,
        pp,
        rank: env.rank,
    };
    let mut server = None;
    let mut kept_store = None;
    let comm: Box<dyn Comm> = if env.world_size == 1 {
        Box::new(Solo)
    } else {
        if !env.agent_store && env.rank == 0 {
            server = Some(StoreServer::start(env.master_port).map_err(|e| {
                RankError::Runtime(format!(
                    "cannot host the store on port {}: {e}",
                    env.master_port
                ))
            })?);
        }
        let mut store = Client::connect(
            &env.master_addr,
            env.master_port,
            std::time::Duration::from_secs(300),
            &mut |t| {
                crate::eline!(
                    "rrank: rank {} waiting for the store at {}:{}, {} s",
                    env.rank,
                    env.master_addr,
                    env.master_port,
                    t.as_secs()
                );
            },
        )
        .map_err(|e| RankError::Runtime(e.to_string()))?;
        let comm = TcpComm::connect(&env, &mut store)?;
        if let Some(g) = &gpu {
            check_gpu_sharing(&mut store, &env, g)?;
        }
        kept_store = Some(store);
        Box::new(comm)
    };
    Ok(Startup {
        env,
        place,
        cfg,
        codec,
        comm,
        device,
        gpu,
        store: kept_store,
        _server: server,
    })
}

/// The effective --max-model-len: the model's max_position_embeddings (at most 4096
/// on CPU, where the KV cache is small).
pub fn max_model_len(engine: &EngineArgs, cfg: &ModelConfig, device: Device) -> usize {
    engine.max_model_len.unwrap_or(match device {
        Device::Cpu => cfg.max_position_embeddings.min(4096),
        Device::Cuda(_) => cfg.max_position_embeddings,
    })
}

/// `n` with thousands separators (475,000).
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The KV cache, sized and agreed by every rank, with this rank's memory report.
pub struct KvPlan {
    pub blocks: usize,
    pub kv_bytes: usize,
    /// The start-up line ("rank 1 [tp 1/2 pp 0/1] GPU 1 H100: weights …").
    pub line: String,
    /// Figures for /metrics: weight_bytes, kv_bytes, kv_tokens, workspace_bytes, used_bytes.
    pub report: serde_json::Value,
}

/// Sizes the KV cache: `tokens` when given (the CPU default is 16384), else on GPU
/// what `--gpu-memory-utilization` leaves after weights and workspace. Every rank
/// takes the smallest count of any rank, allocates it, and refuses with the numbers
/// when one `max_model_len` sequence does not fit.
pub fn plan_kv(
    s: &mut Startup,
    backend: &mut Backend,
    tokens: Option<usize>,
    util: f64,
    block_size: usize,
    max_model_len: usize,
) -> Result<KvPlan, RankError> {
    let place = s.place;
    let block_bytes = backend.kv_block_bytes(block_size).max(1);
    let mut budget_note = String::new();
    let mine = match (tokens, &*backend) {
        (Some(t), _) => t.div_ceil(block_size),
        (None, Backend::Cpu { .. }) => 16384usize.div_ceil(block_size),
        (None, Backend::Cuda(m)) => {
            if !(util > 0.0 && util <= 1.0) {
                return Err(RankError::Invalid(format!(
                    "--gpu-memory-utilization {util} must be in (0, 1]"
                )));
            }
            let (free, total) = m.gpu.mem_info().map_err(gpu_err)?;
            let used = total - free;
            let budget = (util * total as f64) as i64 - used as i64;
            budget_note = format!(
                " (GPU {} {}: {:.1} GiB of {:.1} GiB in use before the cache, --gpu-memory-utilization {util})",
                m.gpu.ordinal,
                m.gpu.name,
                crate::rank::backend::cuda::gib(used),
                crate::rank::backend::cuda::gib(total)
            );
            (budget.max(0) as usize) / block_bytes
        }
    };
    let world: Vec<usize> = (0..s.env.world_size).collect();
    let all = s
        .comm
        .all_gather(&world, &[mine as f32])
        .map_err(|e| RankError::Runtime(format!("agreeing on the KV cache size: {e}")))?;
    let (low_rank, blocks) = all
        .iter()
        .enumerate()
        .map(|(r, v)| (r, v[0] as usize))
        .min_by_key(|(_, b)| *b)
        .unwrap_or((s.env.rank, mine));
    if blocks * block_size < max_model_len {
        return Err(RankError::Invalid(format!(
            "one --max-model-len {max_model_len} sequence needs {} KV tokens ({:.2} GiB on each rank) but rank {low_rank} has room for {}{}; lower --max-model-len, raise --gpu-memory-utilization or --kv-cache-tokens, or spread the model over more GPUs (-tp/-pp)",
            thousands(max_model_len),
            crate::rank::backend::cuda::gib(max_model_len.div_ceil(block_size) * block_bytes),
            thousands(blocks * block_size),
            if low_rank == s.env.rank {
                budget_note.clone()
            } else {
                String::new()
            }
        )));
    }
    let kv_bytes = backend
        .alloc_kv(blocks, block_size)
        .map_err(RankError::Invalid)?;
    let weight_bytes = backend.weight_bytes();
    let where_ = format!(
        "rank {} [tp {}/{} pp {}/{}]",
        s.env.rank,
        place.tp_rank(),
        place.tp,
        place.pp_rank(),
        place.pp
    );
    let mib = |b: usize| b as f64 / 1048576.0;
    let (line, report) = match &*backend {
        Backend::Cpu { .. } => (
            format!(
                "{where_} cpu: weights {:.1} MiB, KV cache {:.1} MiB = {} tokens",
                mib(weight_bytes),
                mib(kv_bytes),
                thousands(blocks * block_size)
            ),
            serde_json::json!({"rank": s.env.rank, "weight_bytes": weight_bytes, "kv_bytes": kv_bytes,
                "kv_tokens": blocks * block_size}),
        ),
        Backend::Cuda(m) => {
            let (free, total) = m.gpu.mem_info().map_err(gpu_err)?;
            let g = crate::rank::backend::cuda::gib;
            (
                format!(
                    "{where_} GPU {} {} ({}): weights {:.1} GiB, KV cache {:.1} GiB = {} tokens, workspace {:.2} GiB, free {:.1} GiB",
                    m.gpu.ordinal,
                    m.gpu.name,
                    m.dt.name(),
                    g(weight_bytes),
                    g(kv_bytes),
                    thousands(blocks * block_size),
                    g(m.workspace_bytes()),
                    g(free)
                ),
                serde_json::json!({"rank": s.env.rank, "weight_bytes": weight_bytes, "kv_bytes": kv_bytes,
                    "kv_tokens": blocks * block_size, "workspace_bytes": m.workspace_bytes(),
                    "used_bytes": total - free, "total_bytes": total}),
            )
        }
    };
    Ok(KvPlan {
        blocks,
        kv_bytes,
        line,
        report,
    })
}

/// Loads this rank's slices onto its device (the checkpoint was validated by
/// [`prepare`]); on GPU this also joins the NCCL groups.
pub fn load_backend(engine: &EngineArgs, s: &mut Startup) -> Result<Backend, RankError> {
    let dir = model_dir(engine)?;
    let ckpt = Checkpoint::open(&dir)?;
    let weights = ckpt.map()?;
    match s.device {
        Device::Cpu => {
            let threads = engine.threads.unwrap_or_else(|| {
                (crate::launch::devices::cpu_count() / s.env.local_world_size.max(1)).max(1)
            });
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build_global();
            Ok(Backend::Cpu {
                model: Box::new(RankModel::load(s.cfg.clone(), &weights, s.place, threads)),
                kv: None,
            })
        }
        Device::Cuda(dt) => {
            let gpu = s.gpu.take().expect("prepare opened the GPU");
            let m = CudaModel::load(
                gpu,
                s.cfg.clone(),
                &weights,
                s.place,
                dt,
                engine.block_size,
                s.store.as_mut(),
                s.env.attempt,
            )
            .map_err(gpu_err)?;
            let mut m = m;
            // Kernel timing (RRANK_PROFILE=1) times eager launches only.
            m.graphs.enabled = !engine.enforce_eager && m.gpu.profile.is_none();
            if s.env.rank == 0 && s.env.world_size > 1 {
                let v = super::backend::cuda::nccl::Nccl::version().unwrap_or(0);
                crate::eline!(
                    "rrank: NCCL {}.{}.{} through the store (LD_LIBRARY_PATH={})",
                    v / 10000,
                    v / 100 % 100,
                    v % 100,
                    std::env::var("LD_LIBRARY_PATH").unwrap_or_default()
                );
            }
            Ok(Backend::Cuda(Box::new(m)))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_separators() {
        assert_eq!(super::thousands(0), "0");
        assert_eq!(super::thousands(999), "999");
        assert_eq!(super::thousands(1056), "1,056");
        assert_eq!(super::thousands(24541936), "24,541,936");
    }
}
