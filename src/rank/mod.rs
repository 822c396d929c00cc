//! rrank, the rank process of a tensor/pipeline-parallel Llama-family server
//! (docs/ARCHITECTURE.md): every rank validates, connects, loads its shard on its
//! device and runs the steps; rank 0 also serves HTTP and schedules.
//!
//! - [`startup`] — the one start-up path (device → weights → KV sizing → warm-up)
//! - [`dist`] — env contract, TP × PP placement, the `Comm` trait (a TCP mesh: the
//!   control plane, and all collectives on CPU)
//! - [`model`] — the model as data: config.json, checkpoint, shard, weights recipe
//! - [`backend`] — the `Backend` trait; the CPU reference and the CUDA backend
//! - [`kv`] — the paged KV cache and block allocator
//! - [`sampling`] — sampling parameters and the seeded draws both backends make
//! - [`engine`] — scheduler, StepPlan, executor (over any backend)
//! - [`serve`] — the HTTP server; [`generate`] — one prompt offline

pub mod backend;
pub mod cli;
pub mod dist;
pub mod engine;
pub mod generate;
pub mod kv;
pub mod model;
pub mod sampling;
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
