//! The model as data: config.json and its validation ([`config`]), safetensors
//! checkpoints ([`checkpoint`]), which slice a rank holds ([`shard`]), which checkpoint
//! tensors make which weight ([`recipe`]), quantized formats ([`quant`]) and the RoPE
//! frequencies ([`rope`]). The
//! forwards that compute with it live in the backends.

pub mod checkpoint;
pub mod config;
pub mod quant;
pub mod recipe;
pub mod rope;
pub mod shard;
