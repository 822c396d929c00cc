//! What every rank does with a StepPlan: run its part of the forward over the plan's
//! sequences, and on the sampling rank draw each sequence's next token (seeded per
//! request and step, so a draw never depends on the batch) and send them to rank 0.

use std::io;

use super::plan::{Plan, PlanSeq};
use super::sampler::{DrawReq, Rng, Sampled};
use crate::rank::backend::cuda::model::CudaModel;
use crate::rank::dist::Comm;
use crate::rank::kv::{BlockTable, KvCache};
use crate::rank::model::llama::{RankModel, SeqChunk};

/// The model on its device, with its KV cache.
pub enum Backend {
    Cpu {
        model: Box<RankModel>,
        kv: Option<KvCache>,
    },
    Cuda(Box<CudaModel>),
}

/// What a step yields on the sampling rank.
pub struct StepOut {
    pub sampled: Vec<Sampled>,
    /// Every logits row as f32 `[rows, vocab]`, when asked for.
    pub logits: Option<Vec<f32>>,
}

impl Backend {
    /// Where this rank's step time went on the GPU backend (host preparation,
    /// launches, waiting for the GPU and sampling), for the shutdown log.
    pub fn step_times(&self) -> Option<String> {
        match self {
            Backend::Cuda(m) => m.step_times(),
            _ => None,
        }
    }

    /// Bytes of weights this rank holds.
    pub fn weight_bytes(&self) -> usize {
        match self {
            Backend::Cpu { model, .. } => model.weight_bytes(),
            Backend::Cuda(m) => m.weight_bytes,
        }
    }

    /// Bytes of one KV block across this rank's layers.
    pub fn kv_block_bytes(&self, block_size: usize) -> usize {
        match self {
            Backend::Cpu { model, .. } => KvCache::block_bytes(
                model.num_local_layers(),
                block_size,
                model.kv_heads(),
                model.cfg.head_dim,
            ),
            Backend::Cuda(m) => m.kv_block_bytes(),
        }
    }

    /// Allocates a KV cache of `blocks` blocks; returns its bytes.
    pub fn alloc_kv(&mut self, blocks: usize, block_size: usize) -> Result<usize, String> {
        let bytes = self.kv_block_bytes(block_size) * blocks;
        match self {
            Backend::Cpu { model, kv } => {
                *kv = Some(KvCache::new(
                    model.num_local_layers(),
                    blocks,
                    block_size,
                    model.kv_heads(),
                    model.cfg.head_dim,
                ));
                Ok(bytes)
            }
            Backend::Cuda(m) => m.alloc_kv(blocks).map_err(|e| e.to_string()),
        }
    }

    /// Runs one step: this rank's part of the forward over `chunks`, then, on the
    /// sampling rank, the draws (and every row's logits with `want_logits`).
    pub fn step(
        &mut self,
        comm: &mut dyn Comm,
        chunks: &[SeqChunk<'_>],
        draws: &mut [DrawReq<'_>],
        want_logits: bool,
    ) -> io::Result<Option<StepOut>> {
        match self {
            Backend::Cpu { model, kv } => {
                let kv = kv
                    .as_mut()
                    .expect("KV cache allocated before the first step");
                let logits = model.forward(comm, kv, chunks)?;
                if comm.rank() != model.place.sampler() {
                    return Ok(None);
                }
                let logits = logits.expect("the sampling rank is on the last stage");
                let v = model.cfg.vocab_size;
                let sampled = draws
                    .iter_mut()
                    .map(|d| d.on_host(&logits[d.row * v..(d.row + 1) * v]))
                    .collect();
                Ok(Some(StepOut {
                    sampled,
                    logits: want_logits.then_some(logits),
                }))
            }
            Backend::Cuda(m) => {
                let sampler = comm.rank() == m.place.sampler();
                m.step(chunks, draws, want_logits, sampler)
                    .map_err(|e| io::Error::other(e.to_string()))
            }
        }
    }

    /// The sampling rank of this placement.
    pub fn sampler(&self) -> usize {
        match self {
            Backend::Cpu { model, .. } => model.place.sampler(),
            Backend::Cuda(m) => m.place.sampler(),
        }
    }
}

/// A rank's model and cache.
pub struct Executor {
    pub backend: Backend,
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
        let sampler = self.backend.sampler();
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
            drawn = postcard::from_bytes(&b)
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
            match Plan::decode(&b).map_err(|e| e.to_string())? {
                Plan::Shutdown => return Ok(()),
                Plan::Step(seqs) => {
                    self.step(comm, &seqs)
                        .map_err(|e| format!("step failed: {e}"))?;
                }
            }
        }
    }
}
