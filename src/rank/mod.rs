//! rrank, the rank process of a tensor/pipeline-parallel Llama-family server
//! (shared/DESIGN.md): every rank validates, connects, loads its shard on its device
//! and runs the steps; rank 0 also serves HTTP and schedules.
//!
//! - [`dist`] — env contract, TP × PP placement, the `Comm` trait (a TCP mesh: the
//!   control plane, and all collectives on CPU)
//! - [`model`] — config.json + validation, safetensors shards, the sharded Llama forward (CPU)
//! - [`backend`] — f32 CPU kernels; the CUDA backend (its own sharded model, NCCL)
//! - [`kv`] — the paged KV cache and block allocator
//! - [`engine`] — scheduler, StepPlan, executor (over either backend), sampler
//! - [`serve`] — the HTTP server; [`generate`] — one prompt offline; [`startup`] — the order of it all

pub mod backend;
pub mod cli;
pub mod dist;
pub mod engine;
pub mod generate;
pub mod kv;
pub mod model;
pub mod serve;
pub mod startup;
pub mod tokenizer;

use model::config::ValidationError;

/// Why rrank stopped.
#[derive(Debug, thiserror::Error)]
pub enum RankError {
    /// Bad flags, placement or checkpoint: nothing was loaded. Exit code 2.
    #[error("{0}")]
    Invalid(String),
    /// Failure while running. Exit code 1.
    #[error("{0}")]
    Runtime(String),
}

impl From<ValidationError> for RankError {
    fn from(e: ValidationError) -> Self {
        RankError::Invalid(e.0)
    }
}

/// The env contract is wrong: nothing was started.
impl From<dist::EnvError> for RankError {
    fn from(e: dist::EnvError) -> Self {
        RankError::Invalid(e.to_string())
    }
}

impl From<dist::tcp::ConnectError> for RankError {
    fn from(e: dist::tcp::ConnectError) -> Self {
        RankError::Runtime(e.to_string())
    }
}

impl From<serve::http::FrontError> for RankError {
    fn from(e: serve::http::FrontError) -> Self {
        RankError::Runtime(e.to_string())
    }
}

/// A prompt that cannot be tokenized or templated is the user's input.
impl From<tokenizer::TextError> for RankError {
    fn from(e: tokenizer::TextError) -> Self {
        RankError::Invalid(e.to_string())
    }
}

impl From<engine::plan::PlanError> for RankError {
    fn from(e: engine::plan::PlanError) -> Self {
        RankError::Runtime(e.to_string())
    }
}

impl RankError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            RankError::Invalid(_) => 2,
            RankError::Runtime(_) => 1,
        }
    }
}

/// Runs rrank with parsed flags.
pub fn run(cli: cli::Cli) -> Result<(), RankError> {
    match &cli.command {
        Some(cli::Command::Generate(g)) => generate::run(&cli.engine, g),
        Some(cli::Command::Kernels(k)) => kernels(k),
        None => serve::run(&cli.engine, &cli.serve),
    }
}

/// `rrank kernels`: compiles every kernel module for each architecture.
fn kernels(k: &cli::KernelsArgs) -> Result<(), RankError> {
    use backend::cuda::libs::{self, Lib};
    libs::ensure(&[Lib::Nvrtc]).map_err(RankError::Invalid)?;
    let (ma, mi) = backend::cuda::nvrtc::version().map_err(RankError::Runtime)?;
    if k.resources {
        for arch in &k.arch {
            for line in backend::cuda::nvrtc::resources(arch).map_err(RankError::Runtime)? {
                println!("{arch} {line}");
            }
        }
        return Ok(());
    }
    for arch in &k.arch {
        for (name, bytes, cached) in
            backend::cuda::nvrtc::compile_all(arch).map_err(RankError::Runtime)?
        {
            println!(
                "{name} {arch}: {bytes} bytes of CUBIN (NVRTC {ma}.{mi}{})",
                if cached { ", from the cache" } else { "" }
            );
        }
    }
    Ok(())
}
