//! What every rank does with a StepPlan: run its part of the forward over the plan's
//! sequences, and on the sampling rank draw each sequence's next token (seeded per
//! request and step, so a draw never depends on the batch) and send them to rank 0.

use std::io;

use super::plan::{Plan, PlanSeq};
use super::sampler::{Rng, Sampled, sample_with_logprobs};
use crate::rank::dist::Comm;
use crate::rank::kv::{BlockTable, KvCache};
use crate::rank::model::llama::{RankModel, SeqChunk};

/// A rank's model and cache.
pub struct Executor {
    pub model: RankModel,
    pub kv: KvCache,
}

/// The draw generator for `seed` at generation step `step`.
pub fn step_rng(seed: u64, step: u32) -> Rng {
    Rng::new(seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

impl Executor {
    /// Runs one step. Returns, on rank 0, what was drawn for every `sample` sequence
    /// (in plan order); `None` on other ranks.
    pub fn step(
        &mut self,
        comm: &mut dyn Comm,
        seqs: &[PlanSeq],
    ) -> io::Result<Option<Vec<Sampled>>> {
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
        let logits = self.model.forward(comm, &mut self.kv, &chunks)?;
        let sampler = self.model.place.sampler();
        let rank = comm.rank();
        let mut drawn = Vec::new();
        if rank == sampler {
            let v = self.model.cfg.vocab_size;
            let logits = logits.expect("the sampling rank is on the last stage");
            for (i, s) in seqs.iter().enumerate() {
                if s.sample {
                    let row = &logits[i * v..(i + 1) * v];
                    drawn.push(sample_with_logprobs(
                        row,
                        &s.params,
                        &mut step_rng(s.seed, s.step),
                        s.logprobs,
                        s.history.as_ref(),
                    ));
                }
            }
            if sampler != 0 {
                comm.send(0, &serde_json::to_vec(&drawn).expect("serializable"))?;
            }
        }
        if rank != 0 {
            return Ok(None);
        }
        if sampler != 0 {
            let b = comm.recv(sampler)?;
            drawn = serde_json::from_slice(&b)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        }
        Ok(Some(drawn))
    }

    /// The loop of every rank but 0: receive a plan, execute it, until Shutdown.
    pub fn follow(&mut self, comm: &mut dyn Comm) -> Result<(), String> {
        let world: Vec<usize> = (0..comm.world()).collect();
        loop {
            let b = comm
                .broadcast(&world, 0, vec![])
                .map_err(|e| format!("lost rank 0: {e}"))?;
            match Plan::decode(&b)? {
                Plan::Shutdown => return Ok(()),
                Plan::Step(seqs) => {
                    self.step(comm, &seqs)
                        .map_err(|e| format!("step failed: {e}"))?;
                }
            }
        }
    }
}
