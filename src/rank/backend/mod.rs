//! Compute backends. `cpu` is the f32 reference (and the backend CI tests).

pub mod cpu;
