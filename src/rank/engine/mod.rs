//! Token selection now; the continuous-batching scheduler and StepPlan come with
//! the serving engine.

pub mod sampler;
