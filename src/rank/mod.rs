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
//! - [`knobs`] — the environment variables, read and checked once at start-up
//! - [`error`] — why rrank stopped, and its exit code

pub mod backend;
pub mod cli;
pub mod dist;
pub mod engine;
pub mod error;
pub mod generate;
pub mod knobs;
pub mod kv;
pub mod model;
pub mod sampling;
pub mod serve;
pub mod startup;
pub mod tokenizer;

pub use error::RankError;

/// Runs rrank with parsed flags. The environment's knobs are read and checked first:
/// a bad one stops rrank before anything else happens (exit code 2).
pub fn run(cli: cli::Cli) -> Result<(), RankError> {
    let checked = knobs::init()
        .map(|_| ())
        .map_err(|e| RankError::Invalid(e.to_string()));
    if let Some(cli::Command::Knobs(k)) = &cli.command {
        return knobs_command(k, checked);
    }
    checked?;
    match &cli.command {
        Some(cli::Command::Generate(g)) => generate::run(&cli.engine, g),
        Some(cli::Command::Kernels(k)) => kernels(k),
        Some(cli::Command::Knobs(_)) => Ok(()),
        None => serve::run(&cli.engine, &cli.serve),
    }
}

/// `rrank knobs`: the list (or docs/knobs.md), then the environment's check, so a bad
/// value is reported after the list that explains it.
fn knobs_command(k: &cli::KnobsArgs, checked: Result<(), RankError>) -> Result<(), RankError> {
    if k.markdown {
        print!("{}", knobs::markdown());
        return Ok(());
    }
    print!("{}", knobs::text(true));
    checked
}

/// `rrank kernels`: compiles every kernel module for each architecture.
fn kernels(k: &cli::KernelsArgs) -> Result<(), RankError> {
    use backend::cuda::libs::{self, Lib};
    libs::ensure(&[Lib::Nvrtc]).map_err(|e| RankError::Invalid(e.to_string()))?;
    let runtime = |e: backend::cuda::nvrtc::NvrtcError| RankError::Runtime(e.to_string());
    let (ma, mi) = backend::cuda::nvrtc::version().map_err(runtime)?;
    if k.resources {
        for arch in &k.arch {
            for line in backend::cuda::nvrtc::resources(arch).map_err(runtime)? {
                println!("{arch} {line}");
            }
        }
        return Ok(());
    }
    for arch in &k.arch {
        for (name, bytes, cached) in backend::cuda::nvrtc::compile_all(arch).map_err(runtime)? {
            println!(
                "{name} {arch}: {bytes} bytes of CUBIN (NVRTC {ma}.{mi}{})",
                if cached { ", from the cache" } else { "" }
            );
        }
    }
    Ok(())
}
