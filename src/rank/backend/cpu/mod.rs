//! The CPU backend: the Llama family's forward for one rank in f32, sharded as the
//! weights recipe cuts it (fused q|k|v and gate|up column-parallel, o and down
//! row-parallel with an all-reduce each, vocab-parallel embedding and LM head, a
//! contiguous range of layers per pipeline stage), over the paged KV cache of
//! [`crate::rank::kv::KvCache`]. Each layer takes its own sliding window (by global
//! layer index) and the configured MLP activation; [`kernels`] has the math.
//!
//! [`CpuModel::forward`] runs one step over any number of sequence chunks (prefill
//! chunks and decode tokens alike). Every output element is one fixed-order dot
//! product, so a sequence's numbers never depend on what else is in the step.

pub mod kernels;

use std::io;

use rayon::prelude::*;

use super::{Backend, MemoryReport, Result, SeqChunk, StepOut, StepSizes};
use crate::console::thousands;
use crate::rank::dist::{Comm, Placement};
use crate::rank::kv::KvCache;
use crate::rank::model::checkpoint::{Weights, to_f32};
use crate::rank::model::config::ModelConfig;
use crate::rank::model::quant::{channel_scale, f32_to_e4m3};
use crate::rank::model::recipe::{self, Cut, Kind, Piece, RankWeights, Role, Tensor};
use crate::rank::model::rope::inv_freq;
use crate::rank::model::shard::{Shard, vocab_range};
use crate::rank::sampling::DrawReq;
use kernels::Mat;

/// KV-cache tokens when `--kv-cache-tokens` is not given.
pub const DEFAULT_KV_TOKENS: usize = 16384;

/// This rank's part of the model, with its KV cache.
pub struct CpuModel {
    pub cfg: ModelConfig,
    pub place: Placement,
    pub shard: Shard,
    w: RankWeights<Mat>,
    inv_freq: Vec<f32>,
    block_size: usize,
    kv: Option<KvCache>,
    threads: usize,
}

/// One recipe tensor read from the checkpoint: matrices stored as bf16 stay bf16
/// (widening is exact), everything else becomes f32; rows past the pieces are zeros.
fn read(w: &Weights<'_>, t: &Tensor) -> Mat {
    let parts: Vec<_> = t.pieces.iter().map(|p| w.read(p)).collect();
    if t.is_fp8() {
        let mut bits: Vec<u8> = Vec::with_capacity(t.elems());
        for (_, b) in &parts {
            bits.extend_from_slice(b);
        }
        bits.resize(t.elems(), 0);
        // One scale row per weight row: weight row r of a piece takes scale row r / block rows.
        let block = t.scales[0].block.1;
        let scale_cols = t.cols.div_ceil(block);
        let mut scale = Vec::with_capacity(t.rows * scale_cols);
        for sp in &t.scales {
            let (d, b) = w.read(&sp.piece);
            let mut v = Vec::new();
            to_f32(d, &b, &mut v);
            for r in 0..sp.rows {
                let at = (r / sp.block.0) * scale_cols;
                scale.extend_from_slice(&v[at..at + scale_cols]);
            }
        }
        scale.resize(t.rows * scale_cols, 0.0);
        return Mat::Fp8 {
            bits,
            scale,
            scale_cols,
            block,
        };
    }
    if t.quantize_at_load {
        return quantize_at_load(w, t);
    }
    if t.kind == Kind::Matrix && parts.iter().all(|(d, _)| *d == "BF16") {
        let mut v: Vec<u16> = Vec::with_capacity(t.elems());
        for (_, b) in &parts {
            v.extend(b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])));
        }
        v.resize(t.elems(), 0);
        return Mat::Bf16(v);
    }
    let mut v = Vec::with_capacity(t.elems());
    for (d, b) in &parts {
        to_f32(d, b, &mut v);
    }
    v.resize(t.elems(), 0.0);
    Mat::F32(v)
}

/// An unquantized weight quantized to FP8 per output channel (`--quantization fp8`):
/// each row's scale comes from the whole checkpoint row, also where this rank holds only
/// some of its columns (row-parallel o and down), so every placement quantizes alike.
fn quantize_at_load(w: &Weights<'_>, t: &Tensor) -> Mat {
    let mut bits = Vec::with_capacity(t.elems());
    let mut scale = Vec::with_capacity(t.rows);
    for p in &t.pieces {
        let (d, b) = w.read(p);
        let mut local = Vec::new();
        to_f32(d, &b, &mut local);
        let full = match p.cut {
            Cut::Cols(..) => {
                let (d, b) = w.read(&Piece {
                    name: p.name.clone(),
                    cut: Cut::All,
                });
                let mut v = Vec::new();
                to_f32(d, &b, &mut v);
                v
            }
            _ => local.clone(),
        };
        let rows = local.len() / t.cols;
        let full_cols = full.len() / rows.max(1);
        for r in 0..rows {
            let s = channel_scale(&full[r * full_cols..(r + 1) * full_cols]);
            bits.extend(
                local[r * t.cols..(r + 1) * t.cols]
                    .iter()
                    .map(|v| f32_to_e4m3(v / s)),
            );
            scale.push(s);
        }
    }
    bits.resize(t.elems(), 0);
    scale.resize(t.rows, 0.0);
    Mat::Fp8 {
        bits,
        scale,
        scale_cols: 1,
        block: t.cols,
    }
}

/// Columns `[c0, c0 + n)` of every row of `x` (rows `width` wide).
fn columns(x: &[f32], width: usize, c0: usize, n: usize) -> Vec<f32> {
    x.chunks_exact(width)
        .flat_map(|r| r[c0..c0 + n].iter().copied())
        .collect()
}

impl CpuModel {
    /// Reads this rank's weights. `threads`: matrix-product threads for this rank.
    pub fn load(
        cfg: ModelConfig,
        w: &Weights<'_>,
        place: Placement,
        block_size: usize,
        threads: usize,
    ) -> CpuModel {
        let shard = Shard::new(&cfg, place);
        let plan = recipe::for_rank(&cfg, &shard, place, w.has("lm_head.weight"));
        let weights = plan
            .load(|t| Ok::<_, std::convert::Infallible>(read(w, t)))
            .unwrap_or_else(|e| match e {});
        CpuModel {
            inv_freq: inv_freq(&cfg),
            shard,
            cfg,
            place,
            w: weights,
            block_size,
            kv: None,
            threads,
        }
    }

    fn embed(&self, comm: &mut dyn Comm, tokens: &[u32]) -> io::Result<Vec<f32>> {
        let h = self.cfg.hidden_size;
        let table = self
            .w
            .embed
            .as_ref()
            .expect("the first stage holds the embedding")
            .to_f32();
        let (v0, v1) = self.shard.vocab;
        let mut x = vec![0f32; tokens.len() * h];
        for (t, &id) in tokens.iter().enumerate() {
            let id = id as usize;
            if (v0..v1).contains(&id) {
                x[t * h..(t + 1) * h].copy_from_slice(&table[(id - v0) * h..(id - v0 + 1) * h]);
            }
        }
        comm.all_reduce_sum(&self.place.tp_group(), &mut x)?;
        Ok(x)
    }

    /// `input · wᵀ (+ bias)` for `t` rows of `out` outputs.
    fn linear(
        &self,
        (input, t): (&[f32], usize),
        (w, out): (&Mat, usize),
        bias: Option<&Mat>,
    ) -> Vec<f32> {
        let bias = bias.map(|b| b.to_f32());
        kernels::linear(input, t, w, out, bias.as_deref(), self.threads)
    }

    /// A row-parallel layer with its residual: `x += all_reduce(input · wᵀ) + bias`
    /// (the bias is added once, after the reduction).
    fn row_parallel(
        &self,
        comm: &mut dyn Comm,
        (input, t): (&[f32], usize),
        w: &Mat,
        bias: Option<&Mat>,
        x: &mut [f32],
    ) -> io::Result<()> {
        let mut y = kernels::linear(input, t, w, self.cfg.hidden_size, None, self.threads);
        comm.all_reduce_sum(&self.place.tp_group(), &mut y)?;
        if let Some(b) = bias {
            kernels::add_bias(&mut y, &b.to_f32());
        }
        kernels::add_in_place(x, &y);
        Ok(())
    }

    /// Runs this rank's part of one step. Returns, on the last stage, the logits of
    /// the requested tokens (`[rows, vocab]`, rows in chunk order); `None` elsewhere.
    pub fn forward(
        &self,
        comm: &mut dyn Comm,
        kv: &mut KvCache,
        chunks: &[SeqChunk<'_>],
    ) -> io::Result<Option<Vec<f32>>> {
        let cfg = &self.cfg;
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let tokens: Vec<u32> = chunks
            .iter()
            .flat_map(|c| c.tokens.iter().copied())
            .collect();
        let t = tokens.len();
        let positions: Vec<usize> = chunks
            .iter()
            .flat_map(|c| c.start..c.start + c.tokens.len())
            .collect();
        // Which chunk each token belongs to.
        let owner: Vec<usize> = chunks
            .iter()
            .enumerate()
            .flat_map(|(i, c)| std::iter::repeat_n(i, c.tokens.len()))
            .collect();

        let mut x = if self.place.first_stage() {
            self.embed(comm, &tokens)?
        } else {
            let mut x = vec![0f32; t * h];
            comm.recv_f32(self.place.prev_stage(), &mut x)?;
            x
        };
        let eps = cfg.rms_norm_eps as f32;
        let sh = &self.shard;
        let (nq, nkv) = (sh.heads * hd, sh.kv_heads * hd);
        let qkv_w = sh.qkv_width(hd);
        let group = cfg.num_heads / cfg.num_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        for (li, l) in self.w.layers.iter().enumerate() {
            let window = cfg.window(sh.layers.0 + li);
            let mut a = x.clone();
            kernels::rms_norm(&mut a, &l.get(Role::InNorm).to_f32(), eps);
            let qkv = self.linear((&a, t), (l.get(Role::Qkv), qkv_w), l.opt(Role::QkvBias));
            let mut q = columns(&qkv, qkv_w, 0, nq);
            let mut k = columns(&qkv, qkv_w, nq, nkv);
            let v = columns(&qkv, qkv_w, nq + nkv, nkv);
            kernels::rope(&mut q, sh.heads, hd, &positions, &self.inv_freq);
            kernels::rope(&mut k, sh.kv_heads, hd, &positions, &self.inv_freq);
            for i in 0..t {
                kv.write(
                    li,
                    chunks[owner[i]].table,
                    positions[i],
                    &k[i * nkv..(i + 1) * nkv],
                    &v[i * nkv..(i + 1) * nkv],
                );
            }
            let mut attn = vec![0f32; t * nq];
            let kvr: &KvCache = kv;
            attn.par_chunks_mut(nq).enumerate().for_each(|(i, out)| {
                let table = chunks[owner[i]].table;
                let pos = positions[i];
                let first = window.map_or(0, |w| (pos + 1).saturating_sub(w));
                let mut scores = vec![0f32; pos + 1 - first];
                for hh in 0..sh.heads {
                    let kvh = (sh.q_start + hh) / group - sh.kv_start;
                    let qv = &q[i * nq + hh * hd..][..hd];
                    for (j, s) in (first..=pos).zip(scores.iter_mut()) {
                        let kk = &kvr.read(li, table, j).0[kvh * hd..][..hd];
                        *s = qv.iter().zip(kk).map(|(a, b)| a * b).sum::<f32>() * scale;
                    }
                    kernels::softmax(&mut scores);
                    let o = &mut out[hh * hd..][..hd];
                    for (j, p) in (first..=pos).zip(&scores) {
                        let vv = &kvr.read(li, table, j).1[kvh * hd..][..hd];
                        for (oo, vvv) in o.iter_mut().zip(vv) {
                            *oo += p * vvv;
                        }
                    }
                }
            });
            self.row_parallel(comm, (&attn, t), l.get(Role::O), l.opt(Role::OBias), &mut x)?;

            let mut a = x.clone();
            kernels::rms_norm(&mut a, &l.get(Role::PostNorm).to_f32(), eps);
            let gu = self.linear(
                (&a, t),
                (l.get(Role::GateUp), 2 * sh.inter),
                l.opt(Role::GateUpBias),
            );
            let mut g = columns(&gu, 2 * sh.inter, 0, sh.inter);
            let u = columns(&gu, 2 * sh.inter, sh.inter, sh.inter);
            kernels::act_mul(cfg.hidden_act, &mut g, &u);
            self.row_parallel(
                comm,
                (&g, t),
                l.get(Role::Down),
                l.opt(Role::DownBias),
                &mut x,
            )?;
        }
        if !self.place.last_stage() {
            comm.send_f32(self.place.next_stage(), &x)?;
            return Ok(None);
        }
        // Rows whose logits are wanted.
        let mut rows = Vec::new();
        let mut at = 0;
        for c in chunks {
            let n = c.tokens.len();
            if c.all_logits {
                rows.extend(at..at + n);
            } else if n > 0 {
                rows.push(at + n - 1);
            }
            at += n;
        }
        let mut sel: Vec<f32> = rows
            .iter()
            .flat_map(|&r| x[r * h..(r + 1) * h].iter().copied())
            .collect();
        let norm = self
            .w
            .final_norm
            .as_ref()
            .expect("the last stage holds the final norm");
        kernels::rms_norm(&mut sel, &norm.to_f32(), eps);
        let head = self
            .w
            .lm_head
            .as_ref()
            .expect("the last stage holds the LM head");
        // Every rank's slice is padded to `chunk` rows, so one all-gather collects them.
        let local = if rows.is_empty() {
            vec![]
        } else {
            kernels::linear(&sel, rows.len(), head, sh.chunk, None, self.threads)
        };
        let parts = comm.all_gather(&self.place.tp_group(), &local)?;
        let vocab = cfg.vocab_size;
        let mut logits = vec![0f32; rows.len() * vocab];
        for (r, part) in parts.iter().enumerate() {
            let (v0, v1) = vocab_range(vocab, self.place.tp, r);
            let w = v1 - v0;
            for i in 0..rows.len() {
                logits[i * vocab + v0..i * vocab + v1]
                    .copy_from_slice(&part[i * sh.chunk..i * sh.chunk + w]);
            }
        }
        Ok(Some(logits))
    }
}

impl Backend for CpuModel {
    fn weight_bytes(&self) -> usize {
        self.w.all().map(|m| m.bytes()).sum()
    }

    fn kv_block_bytes(&self) -> usize {
        KvCache::block_bytes(
            self.shard.num_layers(),
            self.block_size,
            self.shard.kv_heads,
            self.cfg.head_dim,
        )
    }

    fn kv_room(&self, _util: f64) -> Result<Option<(usize, String)>> {
        Ok(None)
    }

    fn alloc_kv(&mut self, blocks: usize) -> Result<usize> {
        self.kv = Some(KvCache::new(
            self.shard.num_layers(),
            blocks,
            self.block_size,
            self.shard.kv_heads,
            self.cfg.head_dim,
        ));
        Ok(blocks * self.kv_block_bytes())
    }

    fn reserve(&mut self, _sizes: StepSizes) -> Result<()> {
        Ok(())
    }

    fn step(
        &mut self,
        comm: &mut dyn Comm,
        chunks: &[SeqChunk<'_>],
        draws: &mut [DrawReq<'_>],
        want_logits: bool,
    ) -> Result<Option<StepOut>> {
        let mut kv = self
            .kv
            .take()
            .expect("the KV cache is allocated before the first step");
        let logits = self.forward(comm, &mut kv, chunks);
        self.kv = Some(kv);
        let logits = logits?;
        if comm.rank() != self.place.sampler() {
            return Ok(None);
        }
        let logits = logits.expect("the sampling rank is on the last stage");
        let v = self.cfg.vocab_size;
        let sampled = draws
            .iter_mut()
            .map(|d| d.on_host(&logits[d.row * v..(d.row + 1) * v]))
            .collect();
        Ok(Some(StepOut {
            sampled,
            logits: want_logits.then_some(logits),
        }))
    }

    fn memory(&self, kv_bytes: usize, kv_tokens: usize) -> Result<MemoryReport> {
        let mib = |b: usize| b as f64 / 1048576.0;
        let weight_bytes = self.weight_bytes();
        Ok(MemoryReport {
            line: format!(
                "cpu: weights {:.1} MiB, KV cache {:.1} MiB = {} tokens",
                mib(weight_bytes),
                mib(kv_bytes),
                thousands(kv_tokens)
            ),
            figures: serde_json::json!({"weight_bytes": weight_bytes, "kv_bytes": kv_bytes,
                "kv_tokens": kv_tokens}),
        })
    }
}
