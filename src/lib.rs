//! rrun: a drop-in `torchrun` in Rust, and `rrank`, the rank process of a
//! tensor/pipeline-parallel LLM server. The map of the crate is docs/ARCHITECTURE.md.
//!
//! - [`store`]: PyTorch's TCPStore protocol — codec, server, blocking client.
//! - [`launch`]: the rrun agent — CLI, rendezvous, worker env, spawn, supervision,
//!   logs and the failure summary.
//! - [`rank`]: rrank — placement, communicator, model, CPU backend, KV cache, engine,
//!   HTTP serving.
//! - [`bench`]: `rrun-bench`, the load generator.
//! - [`host`]: this machine's GPUs, CPUs, names and ports (launcher and ranks).
//! - [`console`]: stderr and stdout lines written whole (one `write(2)` each).

pub mod bench;
pub mod console;
pub mod host;
pub mod launch;
pub mod rank;
pub mod store;
