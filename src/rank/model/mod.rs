//! The model: config.json and its validation, safetensors checkpoints, and the
//! sharded Llama-family forward.

pub mod checkpoint;
pub mod config;
pub mod llama;
