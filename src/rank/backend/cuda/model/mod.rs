//! The Llama family on one GPU rank, sharded as the weights recipe cuts it: fused
//! q|k|v and gate|up column-parallel products, o and down row-parallel with an
//! all-reduce each (NCCL, or the P2P one-shot of [`super::allreduce`] for small
//! messages), a vocab-parallel embedding and LM head (padded to equal slices so one
//! all-gather collects the logits), KV heads split or replicated, and a contiguous
//! layer range per pipeline stage with NCCL send/recv between stages.
//!
//! The paged KV cache is one K and one V buffer per layer,
//! `[num_blocks · block_size, kv_heads, head_dim]` (NHD). Every step runs on the rank's
//! one stream: its metadata goes up in one copy ([`meta`]), the launches of
//! [`forward`] run eagerly or from a CUDA graph ([`graphs`]) over the typed
//! [`workspace`], attention takes the kernel [`attention`] picks, and the sampling rank
//! draws on the GPU. [`load`] builds it all.

mod attention;
mod forward;
mod graphs;
mod load;
mod meta;
mod workspace;

pub use graphs::{GRAPH_BUCKETS, graph_bucket};

use super::allreduce::CustomAllReduce;
use super::nccl::Nccl;
use super::sample::{self, MAX_TOP, Scratch};
use super::{DType, DevBuf, Gpu, Result, gib};
use crate::console::thousands;
use crate::rank::backend::{self, Backend, MemoryReport, SeqChunk, StepOut, StepSizes};
use crate::rank::dist::{Comm, Placement};
use crate::rank::model::config::ModelConfig;
use crate::rank::model::recipe::RankWeights;
use crate::rank::model::shard::Shard;
use crate::rank::sampling::DrawReq;
use attention::DecodeAttention;
use graphs::Graphs;
use meta::{Meta, MetaPtrs};
use workspace::{Workspace, Ws};

/// Communicators: `tp` for the stage's reductions, `world` for stage hand-offs.
struct Comms {
    tp: Option<Nccl>,
    /// The tensor-parallel group's P2P path for small all-reduces, where it works.
    custom: Option<CustomAllReduce>,
    world: Option<Nccl>,
}

/// This rank's part of the model on its GPU.
pub struct CudaModel {
    pub cfg: ModelConfig,
    pub place: Placement,
    pub dt: DType,
    pub shard: Shard,
    pub weight_bytes: usize,
    pub block_size: usize,
    pub kv_blocks: usize,
    w: RankWeights<DevBuf>,
    inv_freq: DevBuf,
    kv: Vec<(DevBuf, DevBuf)>,
    ws: Workspace,
    pub graphs: Graphs,
    attention: DecodeAttention,
    /// Bytes of the decode attention's split partials ([`CudaModel::part_bytes`]).
    part_max: usize,
    /// Seconds of host time per step phase: metadata and buffers, launches, then
    /// waiting for the GPU and sampling; and the steps counted.
    times: ([f64; 3], u64),
    /// Prefill tiles take the tensor-core kernel (bf16/f16, head_dim 64 or 128;
    /// `RRANK_PREFILL_ATTENTION=cuda-cores` for the f32-arithmetic one).
    prefill_tc: bool,
    /// One-token steps build the RMSNorm and act·up inputs inside the next GEMV
    /// ([`Gpu::gemv_fused`]) instead of in kernels of their own.
    fuse: bool,
    comms: Comms,
    pub gpu: Gpu,
}

impl CudaModel {
    /// Bytes of one KV block across this rank's layers.
    fn kv_bytes_per_block(&self) -> usize {
        2 * (self.shard.layers.1 - self.shard.layers.0)
            * self.block_size
            * self.shard.kv_heads
            * self.cfg.head_dim
            * self.dt.size()
    }

    /// Allocates the paged cache: `blocks` blocks of every layer's K and V.
    fn alloc_cache(&mut self, blocks: usize) -> Result<usize> {
        self.kv.clear();
        let per =
            blocks * self.block_size * self.shard.kv_heads * self.cfg.head_dim * self.dt.size();
        for _ in self.shard.layers.0..self.shard.layers.1 {
            let k = self.gpu.alloc(per)?;
            let v = self.gpu.alloc(per)?;
            self.kv.push((k, v));
        }
        self.kv_blocks = blocks;
        Ok(2 * per * (self.shard.layers.1 - self.shard.layers.0))
    }

    /// Sizes the workspace for steps of up to `tokens` tokens, `rows` logits rows,
    /// `draws` draws with `pens` history entries, before the KV cache takes the rest.
    fn reserve_exact(
        &mut self,
        tokens: usize,
        rows: usize,
        draws: usize,
        pens: usize,
        blocks: usize,
    ) -> Result<()> {
        let (es, h, hd) = (self.dt.size(), self.cfg.hidden_size, self.cfg.head_dim);
        let (nq, nkv) = (self.shard.heads * hd, self.shard.kv_heads * hd);
        let (t, r, tp) = (tokens, rows, self.place.tp);
        let vocab = self.cfg.vocab_size;
        let last = self.place.last_stage();
        for w in Ws::ALL {
            if w.last_stage_only() && !last {
                continue;
            }
            let bytes = match w {
                Ws::Meta => Meta::bytes(t, r, blocks),
                Ws::Part => self.part_max,
                Ws::X | Ws::X2 | Ws::Y | Ws::A => t * h * es,
                Ws::Qkv => t * (nq + 2 * nkv) * es,
                Ws::Attn => t * nq * es,
                Ws::Gu => t * 2 * self.shard.inter * es,
                Ws::Act => t * self.shard.inter * es,
                Ws::Sel | Ws::Seln => r * h * es,
                Ws::Lg => r * self.shard.chunk * es,
                Ws::LgAll => tp * r * self.shard.chunk * es,
                Ws::Draws => draws * 48,
                Ws::Pens => pens * 12,
                Ws::Work => draws * vocab * 4,
                Ws::Out => draws * (8 + MAX_TOP * 8),
            };
            self.ws.grow(&self.gpu, w, bytes)?;
        }
        Ok(())
    }

    /// Runs this rank's part of one step over `chunks`. On the sampling rank
    /// (`sampler`), draws `draws` from the logits rows and, with `want_logits`, also
    /// returns every row's logits; `None` elsewhere.
    ///
    /// A decode step (one token per sequence, no logits asked for) is padded to the
    /// next [`GRAPH_BUCKETS`] size and, from the second step of that size on, replays
    /// a CUDA graph of the whole forward (captured once per size); padding tokens
    /// write no K/V (slot −1) and their rows are never drawn.
    fn run_step(
        &mut self,
        chunks: &[SeqChunk<'_>],
        draws: &mut [DrawReq<'_>],
        want_logits: bool,
        sampler: bool,
    ) -> Result<Option<StepOut>> {
        let bs = self.block_size;
        let t0 = std::time::Instant::now();
        let decode = !want_logits && chunks.iter().all(|c| c.tokens.len() == 1 && !c.all_logits);
        let real = chunks.iter().map(|c| c.tokens.len()).sum::<usize>();
        let bucket = if decode && self.graphs.enabled {
            graph_bucket(real)
        } else {
            None
        };
        let mut m = Meta::build(
            chunks,
            bs,
            self.kv_blocks,
            self.cfg.vocab_size,
            self.prefill_tiles(),
        )?;
        if real == 0 {
            return Ok(sampler.then(|| StepOut {
                sampled: vec![],
                logits: None,
            }));
        }
        if let Some(n) = bucket {
            m.pad(n);
        }
        let (t, r) = (m.tok.len(), m.rows.len());
        let pens: usize = draws
            .iter()
            .map(|d| d.history.map_or(0, |(p, o)| p.len() + o.len()))
            .sum();
        // Nothing of the last step may still read the buffers rewritten below.
        self.gpu.sync()?;
        self.reserve_exact(t, r, draws.len(), pens, m.blocks.len())?;
        let at = self.upload_meta(&m)?;
        let t1 = std::time::Instant::now();
        match bucket {
            Some(n) => self.forward_graphed(n, r, &at)?,
            None => self.forward(t, r, &at)?,
        }
        let t2 = std::time::Instant::now();
        self.times.0[0] += (t1 - t0).as_secs_f64();
        self.times.0[1] += (t2 - t1).as_secs_f64();
        self.times.1 += 1;
        if !self.place.last_stage() || !sampler {
            return Ok(None);
        }
        let logits = self.logits_ptr();
        let p = |w: Ws| self.ws.ptr(w);
        let scratch = Scratch {
            draws: p(Ws::Draws),
            pens: p(Ws::Pens),
            work: p(Ws::Work),
            out: p(Ws::Out),
        };
        let sampled = sample::sample(
            &self.gpu,
            self.dt,
            logits,
            r,
            self.shard.chunk,
            self.cfg.vocab_size,
            draws,
            &scratch,
        )?;
        let host = if want_logits {
            Some(self.logits_to_host(logits, r)?)
        } else {
            None
        };
        self.times.0[2] += t2.elapsed().as_secs_f64();
        Ok(Some(StepOut {
            sampled,
            logits: host,
        }))
    }

    /// Runs the forward on padding tokens (nothing is written to the KV cache) once
    /// per prefill size in `prefill`, and twice per decode size up to `max_seqs`
    /// (the second run captures that size's CUDA graph), so that no request pays for
    /// lazy kernel loading, GEMM tuning or graph capture. Needs the KV cache. Every
    /// rank must call it with the same arguments at the same point: the collectives
    /// inside have to match.
    fn warm_up_steps(&mut self, prefill: &[usize], max_seqs: usize) -> Result<()> {
        let decode: Vec<usize> = if self.graphs.enabled {
            let top = graph_bucket(max_seqs).unwrap_or(0);
            GRAPH_BUCKETS
                .iter()
                .copied()
                .filter(|&b| b <= top)
                .collect()
        } else {
            vec![]
        };
        let most = prefill.iter().chain(&decode).copied().max().unwrap_or(0);
        if most == 0 || self.kv_blocks == 0 {
            return Ok(());
        }
        // Everything sized first, so no buffer moves under a captured graph (a
        // prefill has one logits row; a decode step one per token).
        let rows = decode.last().copied().unwrap_or(1);
        self.reserve_exact(most, rows, 0, 0, 1)?;
        let padding = |n: usize, rows: Vec<i32>| Meta {
            tok: vec![0; n],
            pos: vec![0; n],
            tab: vec![0; n],
            slot: vec![-1; n],
            rows,
            one: (0..n as i32).collect(),
            tiles: vec![],
            blocks: vec![0],
        };
        let tiled = self.prefill_tiles();
        for &n in prefill {
            let mut m = padding(n, vec![n as i32 - 1]);
            if tiled {
                // One-token tiles at position 0: the prefill kernel runs and reads
                // only the first table entry.
                m.one.clear();
                m.tiles = (0..n as i32).flat_map(|i| [i, 1, 0, 0]).collect();
            }
            let at = self.upload_meta(&m)?;
            self.forward(n, 1, &at)?;
        }
        for &n in &decode {
            let m = padding(n, (0..n as i32).collect());
            let at = self.upload_meta(&m)?;
            for _ in 0..2 {
                self.forward_graphed(n, n, &at)?;
            }
        }
        self.gpu.sync()?;
        if let Some(p) = &self.gpu.profile {
            p.reset();
        }
        Ok(())
    }

    fn upload_meta(&mut self, m: &Meta) -> Result<MetaPtrs> {
        let host = m.pack();
        let ptr = self.ws.grow(&self.gpu, Ws::Meta, host.len() * 4)?;
        self.gpu.upload(ptr, &host)?;
        Ok(m.ptrs(ptr))
    }
}

impl Backend for CudaModel {
    fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    fn kv_block_bytes(&self) -> usize {
        self.kv_bytes_per_block()
    }

    fn kv_room(&self, util: f64) -> backend::Result<Option<(usize, String)>> {
        let (free, total) = self.gpu.mem_info()?;
        let used = total - free;
        let budget = (util * total as f64) as i64 - used as i64;
        let note = format!(
            " (GPU {} {}: {:.1} GiB of {:.1} GiB in use before the cache, --gpu-memory-utilization {util})",
            self.gpu.ordinal,
            self.gpu.name,
            gib(used),
            gib(total)
        );
        Ok(Some((
            (budget.max(0) as usize) / self.kv_bytes_per_block().max(1),
            note,
        )))
    }

    fn alloc_kv(&mut self, blocks: usize) -> backend::Result<usize> {
        Ok(self.alloc_cache(blocks)?)
    }

    /// Decode steps of `sizes.seqs` sequences are padded to their CUDA-graph size, so
    /// the buffers hold that many tokens and rows too.
    fn reserve(&mut self, sizes: StepSizes) -> backend::Result<()> {
        let padded = graph_bucket(sizes.seqs).unwrap_or(sizes.seqs);
        self.reserve_exact(
            sizes.tokens.max(padded),
            sizes.rows.max(padded),
            sizes.seqs,
            0,
            sizes.blocks,
        )?;
        Ok(())
    }

    fn warm_up(&mut self, prefill: &[usize], max_seqs: usize) -> backend::Result<()> {
        self.warm_up_steps(prefill, max_seqs)
            .map_err(|e| backend::BackendError::Run(format!("warm-up: {e}")))
    }

    fn step(
        &mut self,
        comm: &mut dyn Comm,
        chunks: &[SeqChunk<'_>],
        draws: &mut [DrawReq<'_>],
        want_logits: bool,
    ) -> backend::Result<Option<StepOut>> {
        let sampler = comm.rank() == self.place.sampler();
        Ok(self.run_step(chunks, draws, want_logits, sampler)?)
    }

    fn memory(&self, kv_bytes: usize, kv_tokens: usize) -> backend::Result<MemoryReport> {
        let (free, total) = self.gpu.mem_info()?;
        let ws = self.ws.bytes();
        Ok(MemoryReport {
            line: format!(
                "GPU {} {} ({}): weights {:.1} GiB, KV cache {:.1} GiB = {} tokens, workspace {:.2} GiB, free {:.1} GiB",
                self.gpu.ordinal,
                self.gpu.name,
                self.dt.name(),
                gib(self.weight_bytes),
                gib(kv_bytes),
                thousands(kv_tokens),
                gib(ws),
                gib(free)
            ),
            figures: serde_json::json!({"weight_bytes": self.weight_bytes, "kv_bytes": kv_bytes,
                "kv_tokens": kv_tokens, "workspace_bytes": ws,
                "used_bytes": total - free, "total_bytes": total}),
        })
    }

    fn graphs(&self) -> bool {
        self.graphs.enabled
    }

    fn step_times(&self) -> Option<String> {
        let ([prep, launch, finish], n) = self.times;
        (n > 0).then(|| {
            let ms = |s: f64| s * 1e3 / n as f64;
            format!(
                "GPU rank step phases (mean of {n}): {:.2} ms metadata and buffers, {:.2} ms launches, {:.2} ms waiting for the GPU and sampling",
                ms(prep),
                ms(launch),
                ms(finish)
            )
        })
    }
}
