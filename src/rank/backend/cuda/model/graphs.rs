//! CUDA graphs of decode steps: a decode step of n sequences is padded to the next
//! [`GRAPH_BUCKETS`] size; the first step of a size runs eagerly (it warms cuBLAS and
//! NCCL), the second is captured, later ones replay the graph. Graphs captured before
//! a workspace buffer moved are dropped (their addresses are stale).

use std::collections::{HashMap, HashSet};

use cudarc::driver::{CudaGraph, sys};

use super::super::{GpuError, Result};
use super::CudaModel;
use super::meta::MetaPtrs;

/// Token counts a decode step is padded to so that it can replay a CUDA graph.
pub const GRAPH_BUCKETS: [usize; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512];

/// The size a decode step of `n` sequences is padded to (none past the largest).
pub fn graph_bucket(n: usize) -> Option<usize> {
    GRAPH_BUCKETS.iter().copied().find(|&b| b >= n)
}

/// The CUDA graphs of decode steps, one per padded size.
pub struct Graphs {
    /// Off with `--enforce-eager` or kernel timing (the same on every rank: it decides
    /// the padding, which the ranks' collectives must agree on).
    pub enabled: bool,
    /// A capture failed on this rank: it replays nothing but still pads.
    failed: bool,
    /// Sizes run once eagerly (the next one is captured).
    seen: HashSet<usize>,
    exec: HashMap<usize, CudaGraph>,
    /// The workspace epoch the graphs were captured in.
    epoch: u64,
}

impl Graphs {
    pub fn new(enabled: bool) -> Graphs {
        Graphs {
            enabled,
            failed: false,
            seen: HashSet::new(),
            exec: HashMap::new(),
            epoch: 0,
        }
    }
}

impl CudaModel {
    /// The forward of a padded decode step of `n` tokens: eager the first time this
    /// size is seen (it warms cuBLAS and NCCL), captured into a CUDA graph and
    /// replayed after that. A capture that fails turns replays off for the process
    /// (the padding stays, as the other ranks expect it).
    pub(super) fn forward_graphed(&mut self, n: usize, r: usize, at: &MetaPtrs) -> Result<()> {
        if self.graphs.epoch != self.ws.epoch {
            // A workspace buffer moved: every captured address is stale.
            self.graphs.exec.clear();
            self.graphs.epoch = self.ws.epoch;
        }
        if self.graphs.failed {
            return self.forward(n, r, at);
        }
        if let Some(g) = self.graphs.exec.get(&n) {
            return g.launch().map_err(|e| {
                GpuError::Run(format!("replaying the CUDA graph of {n} tokens: {e:?}"))
            });
        }
        if self.graphs.seen.insert(n) {
            return self.forward(n, r, at);
        }
        let stream = self.gpu.stream.clone();
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(|e| GpuError::Run(format!("starting a CUDA graph capture: {e:?}")))?;
        let run = self.forward(n, r, at);
        let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0));
        match (run, graph) {
            (Ok(()), Ok(Some(g))) => {
                g.launch().map_err(|e| {
                    GpuError::Run(format!("launching the CUDA graph of {n} tokens: {e:?}"))
                })?;
                self.graphs.exec.insert(n, g);
                Ok(())
            }
            (run, graph) => {
                crate::eline!(
                    "rrank: warning: capturing a CUDA graph of {n} tokens failed ({}); running eagerly from now on",
                    match (&run, &graph) {
                        (Err(e), _) => e.to_string(),
                        (_, Err(e)) => format!("{e:?}"),
                        _ => "empty graph".into(),
                    }
                );
                self.graphs.failed = true;
                self.graphs.exec.clear();
                self.forward(n, r, at)
            }
        }
    }
}
