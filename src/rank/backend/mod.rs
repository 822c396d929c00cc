//! Compute backends. `cpu` is the f32 reference (and the backend CI runs); `cuda`
//! runs the same model on NVIDIA GPUs through cudarc (loaded at run time, so a
//! CPU-only machine never touches a CUDA library).

pub mod cpu;
pub mod cuda;
