//! The Llama family (Llama 2/3, Mistral, Qwen2) sharded Megatron-style for one rank:
//! q/k/v and gate/up column-parallel, o and down row-parallel with an all-reduce
//! each, vocab-parallel embedding and LM head, KV heads split or replicated, and a
//! contiguous range of layers per pipeline stage. Each layer takes its own sliding
//! window (by global layer index) and the configured MLP activation.
//!
//! [`RankModel::forward`] runs one step over any number of sequence chunks (prefill
//! chunks and decode tokens alike), writing K/V into the paged cache.

use std::io;

use rayon::prelude::*;

use super::checkpoint::Weights;
use super::config::{ModelConfig, stage_layers};
use crate::rank::backend::cpu::{self, Mat};
use crate::rank::dist::{Comm, Placement};
use crate::rank::kv::{BlockTable, KvCache};

struct Layer {
    in_norm: Vec<f32>,
    post_norm: Vec<f32>,
    wq: Mat,
    wk: Mat,
    wv: Mat,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    /// `[hidden, local_heads · head_dim]`
    wo: Mat,
    bo: Option<Vec<f32>>,
    w_gate: Mat,
    w_up: Mat,
    b_gate: Option<Vec<f32>>,
    b_up: Option<Vec<f32>>,
    /// `[hidden, local_intermediate]`
    w_down: Mat,
    b_down: Option<Vec<f32>>,
}

/// A vocab slice `[v0, v1)` of an embedding or LM head, `[v1 - v0, hidden]`.
struct VocabSlice {
    table: Mat,
    v0: usize,
    v1: usize,
}

/// One sequence's part of a step.
pub struct SeqChunk<'a> {
    pub tokens: &'a [u32],
    /// Position of `tokens[0]`.
    pub start: usize,
    pub table: &'a BlockTable,
    /// Return logits for every token of the chunk (else only the last one).
    pub all_logits: bool,
}

/// This rank's part of the model.
pub struct RankModel {
    pub cfg: ModelConfig,
    pub place: Placement,
    pub shard: Shard,
    weights: Vec<Layer>,
    embed: Option<VocabSlice>,
    final_norm: Option<Vec<f32>>,
    lm_head: Option<VocabSlice>,
    inv_freq: Vec<f32>,
    threads: usize,
}

/// Vocab rows of TP rank `r`: equal contiguous chunks (the last may be short or empty).
pub fn vocab_range(vocab: usize, tp: usize, r: usize) -> (usize, usize) {
    let chunk = vocab.div_ceil(tp);
    ((r * chunk).min(vocab), ((r + 1) * chunk).min(vocab))
}

/// Which slice of every tensor one rank holds; the CPU and CUDA models shard alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// Query and KV heads of this rank. Local q head h uses local KV head
    /// `(q_start + h) / group - kv_start`.
    pub heads: usize,
    pub kv_heads: usize,
    pub q_start: usize,
    pub kv_start: usize,
    /// Local MLP width.
    pub inter: usize,
    /// Rows of q_proj, of k/v_proj and of gate/up_proj (the columns of o and down).
    pub q: (usize, usize),
    pub kv: (usize, usize),
    pub mlp: (usize, usize),
    /// Vocab rows of the embedding and LM head, and the equal slice every rank pads to.
    pub vocab: (usize, usize),
    pub chunk: usize,
    /// Global indices of this stage's layers.
    pub layers: (usize, usize),
}

impl Shard {
    pub fn new(cfg: &ModelConfig, place: Placement) -> Shard {
        let (tp, tr) = (place.tp, place.tp_rank());
        let hd = cfg.head_dim;
        let heads = cfg.num_heads / tp;
        let kv_heads = cfg.kv_heads_per_rank(tp);
        let kv_start = cfg.kv_head_start(tp, tr);
        let inter = cfg.intermediate_size / tp;
        Shard {
            heads,
            kv_heads,
            q_start: tr * heads,
            kv_start,
            inter,
            q: (tr * heads * hd, (tr + 1) * heads * hd),
            kv: (kv_start * hd, (kv_start + kv_heads) * hd),
            mlp: (tr * inter, (tr + 1) * inter),
            vocab: vocab_range(cfg.vocab_size, tp, tr),
            chunk: cfg.vocab_size.div_ceil(tp),
            layers: stage_layers(cfg.num_layers, place.pp, place.pp_rank()),
        }
    }
}

impl RankModel {
    /// Reads this rank's slices. `threads`: GEMM threads for this rank.
    pub fn load(cfg: ModelConfig, w: &Weights<'_>, place: Placement, threads: usize) -> RankModel {
        let shard = Shard::new(&cfg, place);
        let ((q0, q1), (k0, k1), (i0, i1)) = (shard.q, shard.kv, shard.mlp);
        let layers = shard.layers;
        // Biases as config.json declares them (validated present); others in the
        // checkpoint are ignored, as transformers ignores them.
        let opt = |on: bool, name: String, a: usize, b: usize| on.then(|| w.rows(&name, a, b));
        let (qkv_b, o_b, mlp_b) = (cfg.qkv_bias, cfg.o_bias, cfg.mlp_bias);
        let h = cfg.hidden_size;
        let weights: Vec<Layer> = (layers.0..layers.1)
            .map(|l| {
                let p = format!("model.layers.{l}");
                let n = |s: &str| format!("{p}.{s}");
                Layer {
                    in_norm: w.all(&n("input_layernorm.weight")),
                    post_norm: w.all(&n("post_attention_layernorm.weight")),
                    wq: w.rows_mat(&n("self_attn.q_proj.weight"), q0, q1),
                    wk: w.rows_mat(&n("self_attn.k_proj.weight"), k0, k1),
                    wv: w.rows_mat(&n("self_attn.v_proj.weight"), k0, k1),
                    bq: opt(qkv_b, n("self_attn.q_proj.bias"), q0, q1),
                    bk: opt(qkv_b, n("self_attn.k_proj.bias"), k0, k1),
                    bv: opt(qkv_b, n("self_attn.v_proj.bias"), k0, k1),
                    wo: w.cols_mat(&n("self_attn.o_proj.weight"), q0, q1),
                    bo: opt(o_b, n("self_attn.o_proj.bias"), 0, h),
                    w_gate: w.rows_mat(&n("mlp.gate_proj.weight"), i0, i1),
                    w_up: w.rows_mat(&n("mlp.up_proj.weight"), i0, i1),
                    b_gate: opt(mlp_b, n("mlp.gate_proj.bias"), i0, i1),
                    b_up: opt(mlp_b, n("mlp.up_proj.bias"), i0, i1),
                    w_down: w.cols_mat(&n("mlp.down_proj.weight"), i0, i1),
                    b_down: opt(mlp_b, n("mlp.down_proj.bias"), 0, h),
                }
            })
            .collect();
        let (v0, v1) = shard.vocab;
        let embed = place.first_stage().then(|| VocabSlice {
            table: Mat::F32(w.rows("model.embed_tokens.weight", v0, v1)),
            v0,
            v1,
        });
        let lm_name = if w.has("lm_head.weight") {
            "lm_head.weight"
        } else {
            "model.embed_tokens.weight"
        };
        let lm_head = place.last_stage().then(|| VocabSlice {
            table: w.rows_mat(lm_name, v0, v1),
            v0,
            v1,
        });
        let final_norm = place.last_stage().then(|| w.all("model.norm.weight"));
        RankModel {
            inv_freq: cpu::inv_freq(&cfg),
            shard,
            cfg,
            place,
            weights,
            embed,
            final_norm,
            lm_head,
            threads,
        }
    }

    /// Bytes of weights this rank holds.
    pub fn weight_bytes(&self) -> usize {
        let l: usize = self
            .weights
            .iter()
            .map(|l| {
                [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]
                    .iter()
                    .map(|m| m.bytes())
                    .sum::<usize>()
                    + 8 * l.in_norm.len()
            })
            .sum();
        l + self.embed.as_ref().map_or(0, |e| e.table.bytes())
            + self.lm_head.as_ref().map_or(0, |e| e.table.bytes())
    }

    /// KV heads this rank caches per layer.
    pub fn kv_heads(&self) -> usize {
        self.shard.kv_heads
    }

    /// Number of layers in this stage.
    pub fn num_local_layers(&self) -> usize {
        self.weights.len()
    }

    fn embed(&self, comm: &mut dyn Comm, tokens: &[u32]) -> io::Result<Vec<f32>> {
        let h = self.cfg.hidden_size;
        let e = self
            .embed
            .as_ref()
            .expect("first stage holds the embedding");
        let table = e.table.to_f32();
        let mut x = vec![0f32; tokens.len() * h];
        for (t, &id) in tokens.iter().enumerate() {
            let id = id as usize;
            if (e.v0..e.v1).contains(&id) {
                x[t * h..(t + 1) * h].copy_from_slice(&table[(id - e.v0) * h..(id - e.v0 + 1) * h]);
            }
        }
        comm.all_reduce_sum(&self.place.tp_group(), &mut x)?;
        Ok(x)
    }

    /// A row-parallel layer with its residual: `x += all_reduce(input · wᵀ) + bias`
    /// (the bias is added once, after the reduction).
    #[allow(clippy::too_many_arguments)]
    fn row_parallel(
        &self,
        comm: &mut dyn Comm,
        group: &[usize],
        input: &[f32],
        t: usize,
        w: &Mat,
        bias: Option<&[f32]>,
        x: &mut [f32],
    ) -> io::Result<()> {
        let mut y = cpu::linear(input, t, w, self.cfg.hidden_size, None, self.threads);
        comm.all_reduce_sum(group, &mut y)?;
        if let Some(b) = bias {
            cpu::add_bias(&mut y, b);
        }
        cpu::add_in_place(x, &y);
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
        let tp_group = self.place.tp_group();

        let mut x = if self.place.first_stage() {
            self.embed(comm, &tokens)?
        } else {
            let mut x = vec![0f32; t * h];
            comm.recv_f32(self.place.prev_stage(), &mut x)?;
            x
        };
        let eps = cfg.rms_norm_eps as f32;
        let (nq, nkv) = (self.shard.heads * hd, self.shard.kv_heads * hd);
        let group = cfg.num_heads / cfg.num_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        for (li, l) in self.weights.iter().enumerate() {
            let window = cfg.window(self.shard.layers.0 + li);
            let mut a = x.clone();
            cpu::rms_norm(&mut a, &l.in_norm, eps);
            let mut q = cpu::linear(&a, t, &l.wq, nq, l.bq.as_deref(), self.threads);
            let mut k = cpu::linear(&a, t, &l.wk, nkv, l.bk.as_deref(), self.threads);
            let v = cpu::linear(&a, t, &l.wv, nkv, l.bv.as_deref(), self.threads);
            cpu::rope(&mut q, self.shard.heads, hd, &positions, &self.inv_freq);
            cpu::rope(&mut k, self.shard.kv_heads, hd, &positions, &self.inv_freq);
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
                for hh in 0..self.shard.heads {
                    let kvh = (self.shard.q_start + hh) / group - self.shard.kv_start;
                    let qv = &q[i * nq + hh * hd..][..hd];
                    for (j, s) in (first..=pos).zip(scores.iter_mut()) {
                        let kk = &kvr.read(li, table, j).0[kvh * hd..][..hd];
                        *s = qv.iter().zip(kk).map(|(a, b)| a * b).sum::<f32>() * scale;
                    }
                    cpu::softmax(&mut scores);
                    let o = &mut out[hh * hd..][..hd];
                    for (j, p) in (first..=pos).zip(&scores) {
                        let vv = &kvr.read(li, table, j).1[kvh * hd..][..hd];
                        for (oo, vvv) in o.iter_mut().zip(vv) {
                            *oo += p * vvv;
                        }
                    }
                }
            });
            self.row_parallel(comm, &tp_group, &attn, t, &l.wo, l.bo.as_deref(), &mut x)?;

            let mut a = x.clone();
            cpu::rms_norm(&mut a, &l.post_norm, eps);
            let mut g = cpu::linear(
                &a,
                t,
                &l.w_gate,
                self.shard.inter,
                l.b_gate.as_deref(),
                self.threads,
            );
            let u = cpu::linear(
                &a,
                t,
                &l.w_up,
                self.shard.inter,
                l.b_up.as_deref(),
                self.threads,
            );
            cpu::act_mul(cfg.hidden_act, &mut g, &u);
            self.row_parallel(
                comm,
                &tp_group,
                &g,
                t,
                &l.w_down,
                l.b_down.as_deref(),
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
        cpu::rms_norm(&mut sel, self.final_norm.as_ref().unwrap(), eps);
        let head = self.lm_head.as_ref().unwrap();
        let local_v = head.v1 - head.v0;
        let local = if local_v == 0 {
            vec![]
        } else {
            cpu::linear(&sel, rows.len(), &head.table, local_v, None, self.threads)
        };
        let parts = comm.all_gather(&tp_group, &local)?;
        let vocab = cfg.vocab_size;
        let mut logits = vec![0f32; rows.len() * vocab];
        for (r, part) in parts.iter().enumerate() {
            let (v0, v1) = vocab_range(vocab, self.place.tp, r);
            let w = v1 - v0;
            for i in 0..rows.len() {
                logits[i * vocab + v0..i * vocab + v1].copy_from_slice(&part[i * w..(i + 1) * w]);
            }
        }
        Ok(Some(logits))
    }
}

#[cfg(test)]
mod tests {
    use super::vocab_range;

    #[test]
    fn vocab_ranges_tile_the_vocab() {
        assert_eq!(vocab_range(10, 4, 0), (0, 3));
        assert_eq!(vocab_range(10, 4, 3), (9, 10));
        assert_eq!(vocab_range(2, 4, 3), (2, 2));
    }
}
