//! What every rank does with a StepPlan: run its part of the forward over the plan's
//! sequences, and on the sampling rank draw each sequence's next token (seeded per
//! request and step, so a draw never depends on the batch) and send them to rank 0.

use super::plan::{Plan, PlanSeq};
use crate::rank::backend::{Backend, BackendError, SeqChunk};
use crate::rank::dist::Comm;
use crate::rank::kv::BlockTable;
use crate::rank::sampling::{DrawReq, Sampled, step_rng};

/// Why a rank's step loop stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("step failed: {0}")]
    Step(#[from] BackendError),
    #[error("lost rank 0: {0}")]
    LostLeader(std::io::Error),
    #[error(transparent)]
    Plan(#[from] crate::rank::engine::plan::PlanError),
}

/// A rank's model and cache.
pub struct Executor {
    pub backend: Box<dyn Backend>,
    /// The rank that samples (TP rank 0 of the last stage).
    pub sampler: usize,
}

impl Executor {
    /// Runs one step. Returns, on rank 0, what was drawn for every `sample` sequence
    /// (in plan order); `None` on other ranks.
    pub fn step(
        &mut self,
        comm: &mut dyn Comm,
        seqs: &[PlanSeq],
    ) -> Result<Option<Vec<Sampled>>, BackendError> {
        let tables: Vec<BlockTable> = seqs.iter().map(|s| BlockTable(s.blocks.clone())).collect();
        let chunks: Vec<SeqChunk<'_>> = seqs
            .iter()
            .zip(&tables)
            .map(|(s, t)| SeqChunk {
                tokens: &s.tokens,
                start: s.start,
                table: t,
                all_logits: false,
            })
            .collect();
        // One logits row per non-empty chunk, in order.
        let mut draws: Vec<DrawReq<'_>> = vec![];
        let mut row = 0;
        for s in seqs {
            if s.tokens.is_empty() {
                continue;
            }
            if s.sample {
                draws.push(DrawReq {
                    row,
                    params: &s.params,
                    rng: step_rng(s.seed, s.step),
                    logprobs: s.logprobs,
                    history: s.history.as_ref(),
                });
            }
            row += 1;
        }
        let out = self.backend.step(comm, &chunks, &mut draws, false)?;
        let sampler = self.sampler;
        let rank = comm.rank();
        let mut drawn = Vec::new();
        if rank == sampler {
            drawn = out.expect("the sampling rank gets the draws").sampled;
            if sampler != 0 {
                comm.send(0, &postcard::to_allocvec(&drawn).expect("serializable"))?;
            }
        }
        if rank != 0 {
            return Ok(None);
        }
        if sampler != 0 {
            let b = comm.recv(sampler)?;
            drawn = postcard::from_bytes(&b).map_err(|e| {
                BackendError::Comm(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
            })?;
        }
        Ok(Some(drawn))
    }

    /// The loop of every rank but 0: receive a plan, execute it, until Shutdown.
    pub fn follow(&mut self, comm: &mut dyn Comm) -> Result<(), ExecError> {
        let world: Vec<usize> = (0..comm.world()).collect();
        loop {
            let b = comm
                .broadcast(&world, 0, vec![])
                .map_err(ExecError::LostLeader)?;
            match Plan::decode(&b)? {
                Plan::Shutdown => return Ok(()),
                Plan::Step(seqs) => {
                    self.step(comm, &seqs)?;
                }
            }
        }
    }
}
