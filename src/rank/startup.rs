//! rrank's one start-up path, used by the server and `rrank generate` alike, in the
//! order vLLM's worker uses. [`prepare`]: the env contract, validation of placement and
//! checkpoint (headers only: no weight is read before everything checks out), the
//! device (libraries, one rank per GPU, kernels), the tokenizer, the store and the
//! communicator. [`Startup::bring_up`]: this rank's weights on its device, the step
//! buffers, the KV cache sized and agreed by every rank, the warm-up.

use std::path::PathBuf;
use std::time::Instant;

use super::backend::cuda::libs::{self, Lib};
use super::backend::cuda::{DType, Gpu, GpuError, gib};
use super::backend::{self, Backend, BackendError, Device, Options, StepSizes};
use super::cli::EngineArgs;
use super::dist::tcp::TcpComm;
use super::dist::{Comm, Placement, RankEnv, Solo};
use super::error::RankError;
use super::model::checkpoint::Checkpoint;
use super::model::config::ModelConfig;
use super::model::quant::Activations;
use super::tokenizer::TextCodec;
use crate::console::thousands;
use crate::store::{Client, StoreServer};

/// The device kind a rank computes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
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
    pub device: DeviceKind,
    /// The checkpoint, opened and validated once.
    ckpt: Checkpoint,
    /// This rank's GPU, opened and with its kernels loaded (CUDA only).
    gpu: Option<Gpu>,
    /// The job's store (multi-rank only), for the NCCL ids.
    store: Option<Client>,
    /// The store this rank hosts when no launcher does (rank 0 only).
    server: Option<StoreServer>,
    /// When start-up began.
    t0: Instant,
}

/// What a mode needs sized before it runs.
pub struct Sizing {
    /// The largest step.
    pub step: StepSizes,
    /// KV-cache capacity in tokens; `None`: what the device's memory leaves (GPU) or
    /// the CPU default.
    pub kv_tokens: Option<usize>,
    /// Share of the GPU's memory rrank may use.
    pub util: f64,
    /// One sequence of this length must fit in the cache.
    pub max_model_len: usize,
    /// Prefill chunk sizes and the most sequences of a decode step to warm up (none:
    /// no warm-up).
    pub warm_up: Option<(Vec<usize>, usize)>,
    /// Write this rank's memory line once the cache is allocated.
    pub print_memory: bool,
}

/// A rank ready to run steps.
pub struct Ready {
    pub env: RankEnv,
    pub place: Placement,
    pub cfg: ModelConfig,
    pub comm: Box<dyn Comm>,
    pub backend: Box<dyn Backend>,
    pub kv: KvPlan,
    /// Seconds from the start to the loaded weights, then the KV cache, then the warm-up.
    pub times: [f64; 3],
    /// The store this rank hosts when no launcher does (kept alive while running).
    pub _server: Option<StoreServer>,
}

fn model_dir(engine: &EngineArgs) -> Result<PathBuf, RankError> {
    engine
        .model
        .clone()
        .ok_or_else(|| RankError::Invalid("--model DIR is required".into()))
}

fn gpu_err(e: GpuError) -> RankError {
    backend_err(e.into())
}

fn backend_err(e: BackendError) -> RankError {
    match e {
        BackendError::Setup(m) => RankError::Invalid(m),
        e => RankError::Runtime(e.to_string()),
    }
}

/// `--device` and `--dtype` resolved against the machine and the checkpoint.
fn resolve_device(engine: &EngineArgs, ckpt: &Checkpoint) -> Result<DeviceKind, RankError> {
    let cuda = match engine.device.as_str() {
        "cpu" => false,
        "cuda" => true,
        _ => libs::available(Lib::Driver) && crate::host::devices::visible_gpu_count() > 0,
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
        return Ok(DeviceKind::Cpu);
    }
    Ok(DeviceKind::Cuda(dtype))
}

/// `--quantization` against the checkpoint's quantization_config, as vLLM checks it.
fn check_quantization(engine: &EngineArgs, cfg: &ModelConfig) -> Result<(), RankError> {
    let Some(asked) = engine.quantization.as_deref() else {
        return Ok(());
    };
    match (asked, cfg.quant_method.as_deref()) {
        ("compressed-tensors", Some("compressed-tensors")) | ("fp8", Some("fp8")) => Ok(()),
        (a, Some(m)) => Err(RankError::Invalid(format!(
            "--quantization {a} but the checkpoint's quantization_config says quant_method {m:?}; drop --quantization (rrank reads the method from config.json) or pass --quantization {m}"
        ))),
        ("fp8", None) => Ok(()),
        (a, None) => Err(RankError::Invalid(format!(
            "--quantization {a}: the checkpoint has no quantization_config; rrank serves compressed-tensors FP8 checkpoints as they are and unquantized ones without the flag"
        ))),
    }
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
    let host = crate::host::net::hostname();
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
    let t0 = Instant::now();
    let env = RankEnv::from_env()?;
    let dir = model_dir(engine)?;
    let mut cfg = ModelConfig::load(&dir)?;
    let (tp, pp) = (engine.tensor_parallel_size, engine.pipeline_parallel_size);
    cfg.validate_placement(tp, pp, env.world_size)?;
    if engine.block_size == 0 {
        return Err(RankError::Invalid("--block-size must be at least 1".into()));
    }
    let ckpt = Checkpoint::open(&dir)?;
    ckpt.validate(&cfg)?;
    super::model::recipe::check_block_cuts(&cfg, tp).map_err(RankError::Invalid)?;
    check_quantization(engine, &cfg)?;
    if engine.quantization.as_deref() == Some("fp8") && cfg.quant_method.is_none() {
        cfg.fp8 = Some(super::model::quant::Fp8::at_load());
    }
    let device = resolve_device(engine, &ckpt)?;
    if let (DeviceKind::Cuda(_), Some(_)) = (device, &cfg.fp8) {
        return Err(RankError::Invalid(
            "this FP8 checkpoint runs on the CPU backend only so far; use --device cpu, or an unquantized checkpoint on the GPU".into(),
        ));
    }
    if let Some(f) = cfg.fp8.as_ref().filter(|_| env.rank == 0) {
        let acts = match f.activations {
            Activations::None => "",
            Activations::DynamicToken => {
                ", so the checkpoint's per-token activation quantization is not applied"
            }
            Activations::StaticTensor => {
                ", so the checkpoint's static input scales (checked) are not applied"
            }
        };
        crate::eline!(
            "rrank: FP8 weights{} are dequantized inside the CPU kernels; activations stay f32 (the dequantized model's math){acts}",
            if f.at_load {
                " (quantized at load, per channel)"
            } else {
                ""
            }
        );
    }
    let gpu = match device {
        DeviceKind::Cpu => None,
        DeviceKind::Cuda(_) => {
            if env.world_size > 1 {
                // Before any store or thread: this may re-execute rrank.
                libs::ensure(&[Lib::Nccl]).map_err(|e| RankError::Invalid(e.to_string()))?;
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
        ckpt,
        gpu,
        store: kept_store,
        server,
        t0,
    })
}

/// The KV cache, sized and agreed by every rank, with this rank's memory report.
pub struct KvPlan {
    pub blocks: usize,
    pub kv_bytes: usize,
    /// The start-up line ("rank 1 [tp 1/2 pp 0/1] GPU 1 H100: weights …").
    pub line: String,
    /// Figures for /metrics: rank, weight_bytes, kv_bytes, kv_tokens and, on GPU,
    /// workspace_bytes, used_bytes, total_bytes.
    pub report: serde_json::Value,
}

impl Startup {
    /// The effective --max-model-len: the model's max_position_embeddings (at most
    /// 4096 on CPU, where the KV cache is small).
    pub fn max_model_len(&self, engine: &EngineArgs) -> usize {
        engine.max_model_len.unwrap_or(match self.device {
            DeviceKind::Cpu => self.cfg.max_position_embeddings.min(4096),
            DeviceKind::Cuda(_) => self.cfg.max_position_embeddings,
        })
    }

    /// Brings the rank up for `sizing`: its weights on its device (on GPU joining the
    /// NCCL groups), the step buffers, the KV cache, then the warm-up. Every rank calls
    /// it with the same sizing: the collectives inside must match.
    pub fn bring_up(mut self, engine: &EngineArgs, sizing: &Sizing) -> Result<Ready, RankError> {
        let weights = self.ckpt.map()?;
        let device = match self.gpu.take() {
            None => {
                let threads = engine.threads.unwrap_or_else(|| {
                    (crate::host::devices::cpu_count() / self.env.local_world_size.max(1)).max(1)
                });
                let _ = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build_global();
                Device::Cpu { threads }
            }
            Some(gpu) => {
                let DeviceKind::Cuda(dtype) = self.device else {
                    unreachable!("a GPU is opened for CUDA only")
                };
                Device::Cuda {
                    gpu: Box::new(gpu),
                    dtype,
                }
            }
        };
        let cuda = matches!(device, Device::Cuda { .. });
        let opts = Options {
            block_size: engine.block_size,
            enforce_eager: engine.enforce_eager,
        };
        let mut backend = backend::open(
            device,
            &self.cfg,
            &weights,
            self.place,
            &opts,
            self.store.as_mut(),
            self.env.attempt,
        )
        .map_err(backend_err)?;
        drop(weights);
        if cuda && self.env.rank == 0 && self.env.world_size > 1 {
            let v = super::backend::cuda::nccl::Nccl::version().unwrap_or(0);
            crate::eline!(
                "rrank: NCCL {}.{}.{} through the store (LD_LIBRARY_PATH={})",
                v / 10000,
                v / 100 % 100,
                v % 100,
                std::env::var("LD_LIBRARY_PATH").unwrap_or_default()
            );
        }
        let t_loaded = Instant::now();
        // The step buffers are sized for the largest step before the cache takes the rest.
        backend.reserve(sizing.step).map_err(backend_err)?;
        let kv = self.plan_kv(backend.as_mut(), sizing, engine.block_size)?;
        if sizing.print_memory {
            crate::eline!("rrank: {}", kv.line);
        }
        let t_kv = Instant::now();
        if let Some((prefill, seqs)) = &sizing.warm_up {
            backend.warm_up(prefill, *seqs).map_err(backend_err)?;
        }
        Ok(Ready {
            times: [
                (t_loaded - self.t0).as_secs_f64(),
                (t_kv - t_loaded).as_secs_f64(),
                t_kv.elapsed().as_secs_f64(),
            ],
            env: self.env,
            place: self.place,
            cfg: self.cfg,
            comm: self.comm,
            backend,
            kv,
            _server: self.server,
        })
    }

    /// Sizes the KV cache: `sizing.kv_tokens` when given, else what the device's memory
    /// leaves under `--gpu-memory-utilization` (the CPU default without a budget).
    /// Every rank takes the smallest count of any rank, allocates it, and refuses with
    /// the numbers when one `max_model_len` sequence does not fit.
    fn plan_kv(
        &mut self,
        backend: &mut dyn Backend,
        sizing: &Sizing,
        block_size: usize,
    ) -> Result<KvPlan, RankError> {
        let (place, util) = (self.place, sizing.util);
        let block_bytes = backend.kv_block_bytes().max(1);
        let mut budget_note = String::new();
        let mine = match sizing.kv_tokens {
            Some(t) => t.div_ceil(block_size),
            None => match backend.kv_room(util).map_err(backend_err)? {
                None => backend::cpu::DEFAULT_KV_TOKENS.div_ceil(block_size),
                Some((blocks, note)) => {
                    if !(util > 0.0 && util <= 1.0) {
                        return Err(RankError::Invalid(format!(
                            "--gpu-memory-utilization {util} must be in (0, 1]"
                        )));
                    }
                    budget_note = note;
                    blocks
                }
            },
        };
        let world: Vec<usize> = (0..self.env.world_size).collect();
        let all = self
            .comm
            .all_gather(&world, &[mine as f32])
            .map_err(|e| RankError::Runtime(format!("agreeing on the KV cache size: {e}")))?;
        let (low_rank, blocks) = all
            .iter()
            .enumerate()
            .map(|(r, v)| (r, v[0] as usize))
            .min_by_key(|(_, b)| *b)
            .unwrap_or((self.env.rank, mine));
        let max_model_len = sizing.max_model_len;
        if blocks * block_size < max_model_len {
            return Err(RankError::Invalid(format!(
                "one --max-model-len {max_model_len} sequence needs {} KV tokens ({:.2} GiB on each rank) but rank {low_rank} has room for {}{}; lower --max-model-len, raise --gpu-memory-utilization or --kv-cache-tokens, or spread the model over more GPUs (-tp/-pp)",
                thousands(max_model_len),
                gib(max_model_len.div_ceil(block_size) * block_bytes),
                thousands(blocks * block_size),
                if low_rank == self.env.rank {
                    budget_note.as_str()
                } else {
                    ""
                }
            )));
        }
        let kv_bytes = backend.alloc_kv(blocks).map_err(backend_err)?;
        let mem = backend
            .memory(kv_bytes, blocks * block_size)
            .map_err(backend_err)?;
        let mut report = mem.figures;
        report["rank"] = serde_json::json!(self.env.rank);
        Ok(KvPlan {
            blocks,
            kv_bytes,
            line: format!(
                "rank {} [tp {}/{} pp {}/{}] {}",
                self.env.rank,
                place.tp_rank(),
                place.tp,
                place.pp_rank(),
                place.pp,
                mem.line
            ),
            report,
        })
    }
}
