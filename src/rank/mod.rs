//! rrank, the rank process of a tensor/pipeline-parallel Llama-family server
//! (shared/DESIGN.md). Today: the CPU reference backend and `rrank generate`; the
//! HTTP server and the CUDA backend build on the same model and communicator.
//!
//! - [`dist`] — env contract, TP × PP placement, the `Comm` trait (TCP between CPU ranks)
//! - [`model`] — config.json + validation, safetensors shards, the sharded Llama forward
//! - [`backend`] — f32 CPU kernels
//! - [`kv`] — the paged KV cache
//! - [`engine`] — sampling
//! - [`startup`], [`generate`]: the offline generation path

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
