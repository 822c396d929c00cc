//! Compute backends behind one [`Backend`] trait: `cpu` is the f32 reference (and what
//! CI runs), `cuda` runs the same recipe on NVIDIA GPUs through cudarc (loaded at run
//! time, so a CPU-only machine never touches a CUDA library). The engine and start-up
//! know only the trait; [`open`] is the one place a backend is built.

pub mod cpu;
pub mod cuda;

use std::io;

use crate::rank::dist::Placement;
use crate::rank::kv::BlockTable;
use crate::rank::model::checkpoint::Weights;
use crate::rank::model::config::ModelConfig;
use crate::rank::sampling::{DrawReq, Sampled};
use crate::store::Client;
use cuda::{DType, Gpu, GpuError};

/// Why a backend call failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A refusal before anything ran: libraries, devices, memory (exit code 2).
    #[error("{0}")]
    Setup(String),
    /// A failure while running (exit code 1).
    #[error("{0}")]
    Run(String),
    /// A peer rank could not be reached.
    #[error("communication failed: {0}")]
    Comm(#[from] io::Error),
}

impl From<GpuError> for BackendError {
    fn from(e: GpuError) -> Self {
        match e {
            GpuError::Setup(m) => BackendError::Setup(m),
            GpuError::Run(m) => BackendError::Run(m),
        }
    }
}

pub type Result<T> = std::result::Result<T, BackendError>;

/// One sequence's part of a step.
pub struct SeqChunk<'a> {
    pub tokens: &'a [u32],
    /// Position of `tokens[0]`.
    pub start: usize,
    pub table: &'a BlockTable,
    /// Return logits for every token of the chunk (else only the last one).
    pub all_logits: bool,
}

/// What a step yields on the sampling rank.
pub struct StepOut {
    pub sampled: Vec<Sampled>,
    /// Every logits row as f32 `[rows, vocab]`, when asked for.
    pub logits: Option<Vec<f32>>,
}

/// The largest step a backend must be ready for, so its buffers are sized before the
/// KV cache takes the rest of the memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepSizes {
    /// Tokens of the largest step (prefill chunk plus decode tokens).
    pub tokens: usize,
    /// Logits rows of the largest step.
    pub rows: usize,
    /// Sequences of the largest step (decode steps may be padded past it).
    pub seqs: usize,
    /// Block-table entries of the largest step, over all its sequences.
    pub blocks: usize,
}

/// A rank's memory as the start-up line and /metrics show it.
pub struct MemoryReport {
    /// "cpu: weights 64.0 MiB, KV cache …" or "GPU 0 H200 (bfloat16): weights …".
    pub line: String,
    /// weight_bytes, kv_bytes, kv_tokens and, on GPU, workspace_bytes, used_bytes, total_bytes.
    pub figures: serde_json::Value,
}

/// A rank's model on its device, with its KV cache.
pub trait Backend {
    /// Bytes of weights this rank holds.
    fn weight_bytes(&self) -> usize;

    /// Bytes of one KV block across this rank's layers.
    fn kv_block_bytes(&self) -> usize;

    /// KV blocks that fit in `util` of the device's memory after the weights and the
    /// workspace, with a note on where the memory went for a refusal; `None` where the
    /// backend has no memory budget to measure (the caller's default applies).
    fn kv_room(&self, util: f64) -> Result<Option<(usize, String)>>;

    /// Allocates a KV cache of `blocks` blocks; returns its bytes.
    fn alloc_kv(&mut self, blocks: usize) -> Result<usize>;

    /// Sizes the step buffers for steps up to `sizes`.
    fn reserve(&mut self, sizes: StepSizes) -> Result<()>;

    /// Runs what the first requests would otherwise pay for (kernel loading, GEMM
    /// tuning, CUDA-graph capture) for prefill chunks of `prefill` tokens and decode
    /// steps up to `max_seqs`; needs the KV cache. Every rank calls it alike.
    fn warm_up(&mut self, _prefill: &[usize], _max_seqs: usize) -> Result<()> {
        Ok(())
    }

    /// Runs this rank's part of one step over `chunks`; on the sampling rank, draws
    /// `draws` (and returns every row's logits with `want_logits`); `None` elsewhere.
    fn step(
        &mut self,
        comm: &mut dyn crate::rank::dist::Comm,
        chunks: &[SeqChunk<'_>],
        draws: &mut [DrawReq<'_>],
        want_logits: bool,
    ) -> Result<Option<StepOut>>;

    /// The memory line and figures, once the KV cache (`kv_bytes`, `kv_tokens`) is in place.
    fn memory(&self, kv_bytes: usize, kv_tokens: usize) -> Result<MemoryReport>;

    /// Whether decode steps replay CUDA graphs (captured during warm-up).
    fn graphs(&self) -> bool {
        false
    }

    /// Where this rank's step time went, for the shutdown log.
    fn step_times(&self) -> Option<String> {
        None
    }
}

/// The device a rank computes on, opened (for a GPU: libraries checked, kernels loaded).
pub enum Device {
    /// The f32 reference; `threads` for its matrix products.
    Cpu {
        threads: usize,
    },
    Cuda {
        gpu: Box<Gpu>,
        dtype: DType,
    },
}

/// How the backend runs, from the flags.
pub struct Options {
    /// Tokens per KV block.
    pub block_size: usize,
    /// Launch every kernel eagerly instead of replaying CUDA graphs.
    pub enforce_eager: bool,
}

/// Builds this rank's backend: loads its slice of the weights onto `device` (and on
/// GPU joins the NCCL groups through `store`, named by `attempt`).
pub fn open(
    device: Device,
    cfg: &ModelConfig,
    weights: &Weights<'_>,
    place: Placement,
    opts: &Options,
    store: Option<&mut Client>,
    attempt: u32,
) -> Result<Box<dyn Backend>> {
    match device {
        Device::Cpu { threads } => Ok(Box::new(cpu::CpuModel::load(
            cfg.clone(),
            weights,
            place,
            opts.block_size,
            threads,
        ))),
        Device::Cuda { gpu, dtype } => Ok(Box::new(cuda::model::CudaModel::load(
            *gpu,
            cfg.clone(),
            weights,
            place,
            dtype,
            opts,
            store,
            attempt,
        )?)),
    }
}
