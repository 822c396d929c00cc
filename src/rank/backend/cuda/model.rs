//! The Llama family on one GPU rank, sharded exactly as the CPU model
//! (`model/llama.rs`): fused q|k|v and gate|up column-parallel products, o and down
//! row-parallel with an all-reduce each (NCCL, or the P2P one-shot of [`super::allreduce`]
//! for small messages), a vocab-parallel embedding and LM
//! head (padded to equal slices so one all-gather collects the logits), KV heads
//! split or replicated, and a contiguous layer range per pipeline stage with NCCL
//! send/recv between stages.
//!
//! Weights stream from the memory map to the GPU in the checkpoint's dtype and are
//! converted there. The paged KV cache is one K and one V buffer per layer,
//! `[num_blocks · block_size, kv_heads, head_dim]` (NHD). Every step runs on the
//! rank's one stream; host metadata (ids, positions, block tables, slots) is copied
//! up once per step.

use std::collections::{HashMap, HashSet};

use cudarc::driver::{CudaGraph, sys};

use super::allreduce::CustomAllReduce;
use super::nccl::Nccl;
use super::profile;
use super::sample::{self, MAX_TOP, Scratch};
use super::upload::Stager;
use super::{Args, DType, DevBuf, Fused, Gpu, GpuError, Result};
use crate::rank::backend::cpu;
use crate::rank::dist::Placement;
use crate::rank::engine::executor::StepOut;
use crate::rank::engine::sampler::DrawReq;
use crate::rank::model::checkpoint::Weights;
use crate::rank::model::config::ModelConfig;
use crate::rank::model::llama::{SeqChunk, Shard};
use crate::store::Client;

struct Layer {
    in_norm: DevBuf,
    post_norm: DevBuf,
    /// `[nq + 2·nkv, hidden]`
    qkv: DevBuf,
    qkv_bias: Option<DevBuf>,
    /// `[hidden, nq]`
    o: DevBuf,
    o_bias: Option<DevBuf>,
    /// `[2·inter, hidden]`
    gu: DevBuf,
    gu_bias: Option<DevBuf>,
    /// `[hidden, inter]`
    down: DevBuf,
    down_bias: Option<DevBuf>,
}

/// Token counts a decode step is padded to so that it can replay a CUDA graph.
pub const GRAPH_BUCKETS: [usize; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512];

/// The size a decode step of `n` sequences is padded to (none past the largest).
pub fn graph_bucket(n: usize) -> Option<usize> {
    GRAPH_BUCKETS.iter().copied().find(|&b| b >= n)
}

/// Threads of a per-token attention block: 16 warps, or 32 (kernels/llama.cu's
/// RR_ATT_WARPS) when the step has so few blocks that the GPU's multiprocessors would
/// idle (batch-1 decode: one block per head), so each block's keys go twice as fast.
fn attention_threads(blocks: usize) -> u32 {
    if blocks <= 256 { 1024 } else { 512 }
}

/// The most parts attention_decode splits one token's keys into.
const MAX_SPLITS: usize = 32;

/// How attention runs for the tokens that take one block each (decode tokens, and
/// prefill tokens when tiles are off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecodeAttention {
    /// `attention_decode{gm}`: one block per (token, KV head, split) for up to `gm`
    /// query heads sharing the KV head, `tg` lanes per key (kernels/llama.cu).
    Grouped { gm: usize, tg: usize },
    /// `attention`: one block per (token, query head); for head sizes the grouped
    /// kernel does not take (head_dim % 8 != 0 or > 256, > 8 query heads per KV
    /// head) and with `RRANK_ATTENTION=per-head` (for comparisons).
    PerHead,
}

impl DecodeAttention {
    /// The kernel for `head_dim` with at most `group` local query heads per KV head.
    fn choose(head_dim: usize, group: usize, per_head: bool) -> DecodeAttention {
        let gm = group.max(1).next_power_of_two();
        let tg = head_dim.div_ceil(8).next_power_of_two();
        if per_head || !head_dim.is_multiple_of(8) || tg > 32 || gm > 8 {
            DecodeAttention::PerHead
        } else {
            DecodeAttention::Grouped { gm, tg }
        }
    }
}

/// Parts each token's keys are split into when `tokens` tokens take the grouped
/// decode kernel over `kv_heads` KV heads: enough blocks for two per multiprocessor
/// (`sms`), so batch-1 decode does not leave most of the GPU idle, and one part
/// once the tokens fill the GPU by themselves.
fn splits(tokens: usize, kv_heads: usize, sms: usize) -> usize {
    (2 * sms)
        .div_ceil((tokens * kv_heads).max(1))
        .clamp(1, MAX_SPLITS)
}

/// The CUDA graphs of decode steps, one per padded size.
pub struct Graphs {
    /// Off with `--enforce-eager` (the same on every rank: it decides the padding,
    /// which the ranks' collectives must agree on).
    pub enabled: bool,
    /// A capture failed on this rank: it replays nothing but still pads.
    failed: bool,
    /// Sizes run once eagerly (the next one is captured).
    seen: HashSet<usize>,
    exec: HashMap<usize, CudaGraph>,
    /// The workspace epoch the graphs were captured in.
    epoch: u64,
}

impl Default for Graphs {
    fn default() -> Self {
        Graphs {
            enabled: true,
            failed: false,
            seen: HashSet::new(),
            exec: HashMap::new(),
            epoch: 0,
        }
    }
}

/// A step's metadata, uploaded in one copy: token ids, positions, each token's
/// offset into the concatenated block tables, its cache slot, the logits rows, the
/// tokens whose attention runs one block per token (`one`: decode tokens), the
/// prefill tiles (4 ints each: first token, tokens, first position, table offset)
/// and the block tables.
#[derive(Default)]
struct Meta {
    tok: Vec<i32>,
    pos: Vec<i32>,
    tab: Vec<i32>,
    slot: Vec<i32>,
    rows: Vec<i32>,
    one: Vec<i32>,
    tiles: Vec<i32>,
    blocks: Vec<i32>,
}

/// Device addresses of [`Meta`]'s parts, and the counts the launches need.
struct MetaPtrs {
    tok: u64,
    pos: u64,
    tab: u64,
    slot: u64,
    rows: u64,
    one: u64,
    tiles: u64,
    blocks: u64,
    n_one: usize,
    n_tiles: usize,
}

/// Tokens per prefill attention tile (kernels/llama.cu's RR_TQ).
const TILE_TOKENS: usize = 32;

impl Meta {
    /// The metadata of a step over `chunks` (block size `bs`): prefill chunks split
    /// into tiles when `tiled`, every other token listed for the per-token kernel.
    /// Positions past a sequence's table, blocks outside the `kv_blocks` cache and ids
    /// outside the vocabulary are errors.
    fn build(
        chunks: &[SeqChunk<'_>],
        bs: usize,
        kv_blocks: usize,
        vocab: usize,
        tiled: bool,
    ) -> Result<Meta> {
        let mut m = Meta::default();
        for c in chunks {
            let off = m.blocks.len() as i32;
            m.blocks.extend(c.table.0.iter().map(|&b| b as i32));
            let first = m.tok.len();
            if tiled && c.tokens.len() > 1 {
                for (k, part) in c.tokens.chunks(TILE_TOKENS).enumerate() {
                    let i = k * TILE_TOKENS;
                    m.tiles.extend([
                        (first + i) as i32,
                        part.len() as i32,
                        (c.start + i) as i32,
                        off,
                    ]);
                }
            } else {
                m.one
                    .extend((first..first + c.tokens.len()).map(|i| i as i32));
            }
            for (i, &t) in c.tokens.iter().enumerate() {
                let p = c.start + i;
                let b = *c.table.0.get(p / bs).ok_or_else(|| {
                    GpuError::Run(format!(
                        "position {p} is past the sequence's {} blocks",
                        c.table.0.len()
                    ))
                })?;
                if b >= kv_blocks {
                    return Err(GpuError::Run(format!(
                        "block {b} is outside the {}-block cache",
                        kv_blocks
                    )));
                }
                if t as usize >= vocab {
                    return Err(GpuError::Run(format!(
                        "token id {t} is outside the vocabulary ({})",
                        vocab
                    )));
                }
                if c.all_logits || i + 1 == c.tokens.len() {
                    m.rows.push(m.tok.len() as i32);
                }
                m.tok.push(t as i32);
                m.pos.push(p as i32);
                m.tab.push(off);
                m.slot.push((b * bs + p % bs) as i32);
            }
        }
        Ok(m)
    }

    /// Pads to `n` tokens and rows: token 0 at position 0 reading the first table
    /// entry, writing no K/V (slot −1); its logits row is computed and never drawn.
    fn pad(&mut self, n: usize) {
        while self.tok.len() < n {
            self.rows.push(self.tok.len() as i32);
            self.one.push(self.tok.len() as i32);
            self.tok.push(0);
            self.pos.push(0);
            self.tab.push(0);
            self.slot.push(-1);
        }
    }

    /// Bytes of the most metadata `t` tokens, `r` rows and `blocks` table entries
    /// can take (every token its own tile at worst).
    fn bytes(t: usize, r: usize, blocks: usize) -> usize {
        (9 * t + r + blocks) * 4
    }

    fn pack(&self) -> Vec<i32> {
        [
            &self.tok,
            &self.pos,
            &self.tab,
            &self.slot,
            &self.rows,
            &self.one,
            &self.tiles,
            &self.blocks,
        ]
        .into_iter()
        .flatten()
        .copied()
        .collect()
    }

    fn ptrs(&self, base: u64) -> MetaPtrs {
        let mut at = base;
        let mut next = |len: usize| {
            let p = at;
            at += 4 * len as u64;
            p
        };
        let t = self.tok.len();
        MetaPtrs {
            tok: next(t),
            pos: next(t),
            tab: next(t),
            slot: next(t),
            rows: next(self.rows.len()),
            one: next(self.one.len()),
            tiles: next(self.tiles.len()),
            blocks: next(self.blocks.len()),
            n_one: self.one.len(),
            n_tiles: self.tiles.len() / 4,
        }
    }
}

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
    weights: Vec<Layer>,
    embed: Option<DevBuf>,
    final_norm: Option<DevBuf>,
    lm_head: Option<DevBuf>,
    inv_freq: DevBuf,
    kv: Vec<(DevBuf, DevBuf)>,
    ws: HashMap<&'static str, DevBuf>,
    /// Bumped whenever a workspace buffer is reallocated.
    ws_epoch: u64,
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
    staging: Option<DevBuf>,
    /// One-token steps build the RMSNorm and SiLU inputs inside the next GEMV
    /// ([`Gpu::gemv_fused`]) instead of in kernels of their own.
    fuse: bool,
    /// Pinned host buffers the weights travel through while loading.
    stager: Option<Stager>,
    comms: Comms,
    pub gpu: Gpu,
}

/// The workspace buffer `name`, reallocated when it is smaller than `bytes` (and
/// `epoch` bumped, which retires the captured CUDA graphs, unless only sampling
/// uses the buffer).
fn grow(
    gpu: &Gpu,
    ws: &mut HashMap<&'static str, DevBuf>,
    epoch: &mut u64,
    name: &'static str,
    bytes: usize,
) -> Result<u64> {
    let bytes = bytes.max(16);
    if let Some(b) = ws.get(name)
        && b.bytes >= bytes
    {
        return Ok(b.ptr);
    }
    // Sampling's buffers are used outside the graphs; the others are captured in them.
    if !matches!(name, "draws" | "pens" | "work" | "out") {
        *epoch += 1;
    }
    ws.remove(name);
    let b = gpu.alloc(bytes)?;
    let p = b.ptr;
    ws.insert(name, b);
    Ok(p)
}

impl CudaModel {
    /// Loads this rank's slices onto `gpu` in `dt` and joins the NCCL groups.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        gpu: Gpu,
        cfg: ModelConfig,
        w: &Weights<'_>,
        place: Placement,
        dt: DType,
        block_size: usize,
        store: Option<&mut Client>,
        attempt: u32,
    ) -> Result<CudaModel> {
        let (tp, tr) = (place.tp, place.tp_rank());
        let shard = Shard::new(&cfg, place);
        // Communicators first: a peer that fails to load must not leave others
        // waiting in ncclCommInitRank after they spent minutes loading.
        let mut comms = Comms {
            tp: None,
            custom: None,
            world: None,
        };
        if let Some(store) = store {
            if place.pp > 1 {
                comms.world = Some(Nccl::join(
                    &gpu,
                    store,
                    attempt,
                    "world",
                    place.rank,
                    tp * place.pp,
                )?);
            }
            if tp > 1 {
                let name = format!("tp{}", place.pp_rank());
                comms.tp = Some(Nccl::join(&gpu, store, attempt, &name, tr, tp)?);
                comms.custom = CustomAllReduce::setup(&gpu, store, attempt, &name, tr, tp)?;
            }
        }
        let mut m = CudaModel {
            shard,
            weight_bytes: 0,
            block_size,
            kv_blocks: 0,
            weights: vec![],
            embed: None,
            final_norm: None,
            lm_head: None,
            inv_freq: DevBuf { ptr: 0, bytes: 0 },
            kv: vec![],
            ws: HashMap::new(),
            ws_epoch: 0,
            graphs: Graphs::default(),
            attention: DecodeAttention::choose(
                cfg.head_dim,
                (cfg.num_heads / cfg.num_kv_heads).min(shard.heads),
                std::env::var("RRANK_ATTENTION").as_deref() == Ok("per-head"),
            ),
            part_max: 0,
            times: ([0.0; 3], 0),
            prefill_tc: dt != DType::F32
                && matches!(cfg.head_dim, 64 | 128)
                && std::env::var("RRANK_PREFILL_ATTENTION").as_deref() != Ok("cuda-cores"),
            staging: None,
            fuse: false,
            stager: Some(Stager::new(&gpu)?),
            comms,
            dt,
            place,
            gpu,
            cfg,
        };
        m.part_max = m.part_bytes();
        m.fuse = m.gpu.gemv_fusable(dt, m.cfg.hidden_size) && m.gpu.gemv_fusable(dt, m.shard.inter);
        let inv = cpu::inv_freq(&m.cfg);
        m.inv_freq = m.gpu.alloc(inv.len() * 4)?;
        m.gpu.upload(m.inv_freq.ptr, &inv)?;
        let h = m.cfg.hidden_size;
        let sh = m.shard;
        let ((q0, q1), (i0, i1)) = (sh.q, sh.mlp);
        let (nq, inter) = (q1 - q0, i1 - i0);
        for l in sh.layers.0..sh.layers.1 {
            let n = |s: &str| format!("model.layers.{l}.{s}");
            let in_norm = m.rows_to_new(w, &n("input_layernorm.weight"), 0, h, h)?;
            let post_norm = m.rows_to_new(w, &n("post_attention_layernorm.weight"), 0, h, h)?;
            let qkv_parts = |kind: &str| {
                [("q", sh.q), ("k", sh.kv), ("v", sh.kv)]
                    .map(|(p, rows)| (n(&format!("self_attn.{p}_proj.{kind}")), rows))
            };
            // Biases as config.json declares them (validated present); others in the
            // checkpoint are ignored, as transformers ignores them.
            let (qkv_b, o_b, mlp_b) = (m.cfg.qkv_bias, m.cfg.o_bias, m.cfg.mlp_bias);
            let (qkv, qkv_bias) = m.fused_with_bias(w, qkv_parts, h, qkv_b)?;
            let o = m.cols_to_new(w, &n("self_attn.o_proj.weight"), q0, q1, h * nq)?;
            let o_bias = m.opt_all(w, o_b, &n("self_attn.o_proj.bias"), h)?;
            let gu_parts =
                |kind: &str| ["gate", "up"].map(|p| (n(&format!("mlp.{p}_proj.{kind}")), sh.mlp));
            let (gu, gu_bias) = m.fused_with_bias(w, gu_parts, h, mlp_b)?;
            let down = m.cols_to_new(w, &n("mlp.down_proj.weight"), i0, i1, h * inter)?;
            let down_bias = m.opt_all(w, mlp_b, &n("mlp.down_proj.bias"), h)?;
            m.weights.push(Layer {
                in_norm,
                post_norm,
                qkv,
                qkv_bias,
                o,
                o_bias,
                gu,
                gu_bias,
                down,
                down_bias,
            });
        }
        let ((v0, v1), chunk) = (sh.vocab, sh.chunk);
        if place.first_stage() {
            m.embed = Some(m.rows_to_new(w, "model.embed_tokens.weight", v0, v1, (v1 - v0) * h)?);
        }
        if place.last_stage() {
            let name = if w.has("lm_head.weight") {
                "lm_head.weight"
            } else {
                "model.embed_tokens.weight"
            };
            m.lm_head = Some(m.rows_to_new(w, name, v0, v1, chunk * h)?);
            m.final_norm = Some(m.rows_to_new(w, "model.norm.weight", 0, h, h)?);
        }
        m.staging = None;
        m.stager = None;
        m.gpu.sync()?;
        Ok(m)
    }

    fn alloc_t(&mut self, elems: usize) -> Result<DevBuf> {
        let b = self.gpu.alloc(elems * self.dt.size())?;
        self.weight_bytes += b.bytes;
        Ok(b)
    }

    /// Copies stored bytes of dtype `src` to `dst`, converting on the GPU.
    fn put(&mut self, src: &str, bytes: &[u8], dst: u64) -> Result<()> {
        let sd = DType::parse(src)
            .ok_or_else(|| GpuError::Setup(format!("unsupported tensor dtype {src}")))?;
        if sd == self.dt {
            return self.send(dst, bytes);
        }
        if self.staging.as_ref().is_none_or(|s| s.bytes < bytes.len()) {
            self.staging = None;
            self.staging = Some(self.gpu.alloc(bytes.len())?);
        }
        let st = self.staging.as_ref().expect("just made").ptr;
        self.send(st, bytes)?;
        let n = bytes.len() / sd.size();
        self.gpu.launch_1d(
            &format!("convert_{}_{}", sd.suffix(), self.dt.suffix()),
            n,
            Args::new().ptr(st).ptr(dst).i64(n as i64),
        )
    }

    /// Host bytes to `dst` through the pinned stager while loading.
    fn send(&mut self, dst: u64, bytes: &[u8]) -> Result<()> {
        match &mut self.stager {
            Some(st) => st.upload(&self.gpu, dst, bytes),
            None => self.gpu.upload(dst, bytes),
        }
    }

    fn rows_into(
        &mut self,
        w: &Weights<'_>,
        name: &str,
        r0: usize,
        r1: usize,
        dst: u64,
    ) -> Result<()> {
        let (d, b) = w.rows_raw(name, r0, r1);
        let d = d.to_string();
        self.put(&d, b, dst)
    }

    fn rows_to_new(
        &mut self,
        w: &Weights<'_>,
        name: &str,
        r0: usize,
        r1: usize,
        elems: usize,
    ) -> Result<DevBuf> {
        let buf = self.alloc_t(elems)?;
        self.rows_into(w, name, r0, r1, buf.ptr)?;
        Ok(buf)
    }

    /// Row slices of several tensors stacked in one buffer (`row` elements per row), as
    /// the fused q|k|v and gate|up products read them; a missing part stays zero.
    fn fused(
        &mut self,
        w: &Weights<'_>,
        parts: &[(String, (usize, usize))],
        row: usize,
    ) -> Result<DevBuf> {
        let total: usize = parts.iter().map(|(_, (a, b))| b - a).sum();
        let buf = self.alloc_t(total * row)?;
        let mut at = 0;
        for (name, (a, b)) in parts {
            if w.has(name) {
                self.rows_into(w, name, *a, *b, buf.at(at * row, self.dt.size()))?;
            }
            at += b - a;
        }
        Ok(buf)
    }

    /// The fused weight (`row` wide) of `parts("weight")` and, when config.json
    /// declares these biases (`bias`), the fused bias of `parts("bias")`.
    fn fused_with_bias<const N: usize>(
        &mut self,
        w: &Weights<'_>,
        parts: impl Fn(&str) -> [(String, (usize, usize)); N],
        row: usize,
        bias: bool,
    ) -> Result<(DevBuf, Option<DevBuf>)> {
        let weight = self.fused(w, &parts("weight"), row)?;
        let bias = bias.then(|| self.fused(w, &parts("bias"), 1)).transpose()?;
        Ok((weight, bias))
    }

    fn cols_to_new(
        &mut self,
        w: &Weights<'_>,
        name: &str,
        c0: usize,
        c1: usize,
        elems: usize,
    ) -> Result<DevBuf> {
        let buf = self.alloc_t(elems)?;
        let (d, b) = w.cols_raw(name, c0, c1);
        let d = d.to_string();
        self.put(&d, &b, buf.ptr)?;
        Ok(buf)
    }

    /// A 1-D tensor of `n` elements when config.json declares it (`on`), else `None`.
    fn opt_all(
        &mut self,
        w: &Weights<'_>,
        on: bool,
        name: &str,
        n: usize,
    ) -> Result<Option<DevBuf>> {
        if !on {
            return Ok(None);
        }
        self.rows_to_new(w, name, 0, n, n).map(Some)
    }

    /// KV heads this rank caches per layer.
    pub fn kv_heads(&self) -> usize {
        self.shard.kv_heads
    }

    /// Bytes of one KV block across this rank's layers.
    pub fn kv_block_bytes(&self) -> usize {
        2 * (self.shard.layers.1 - self.shard.layers.0)
            * self.block_size
            * self.shard.kv_heads
            * self.cfg.head_dim
            * self.dt.size()
    }

    /// Allocates the paged cache: `blocks` blocks of every layer's K and V.
    pub fn alloc_kv(&mut self, blocks: usize) -> Result<usize> {
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

    /// Bytes of the step workspace in use.
    pub fn workspace_bytes(&self) -> usize {
        self.ws.values().map(|b| b.bytes).sum()
    }

    /// Sizes the workspace for steps of up to `tokens` tokens, `rows` logits rows,
    /// `draws` draws with `pens` history entries, before the KV cache takes the rest.
    pub fn reserve(
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
        let sizes: [(&'static str, usize); 18] = [
            ("meta", Meta::bytes(t, r, blocks)),
            ("part", self.part_max),
            ("x", t * h * es),
            ("x2", t * h * es),
            ("y", t * h * es),
            ("a", t * h * es),
            ("qkv", t * (nq + 2 * nkv) * es),
            ("attn", t * nq * es),
            ("gu", t * 2 * self.shard.inter * es),
            ("act", t * self.shard.inter * es),
            ("sel", r * h * es),
            ("seln", r * h * es),
            ("lg", r * self.shard.chunk * es),
            ("lgall", tp * r * self.shard.chunk * es),
            ("draws", draws * 48),
            ("pens", pens * 12),
            ("work", draws * vocab * 4),
            ("out", draws * (8 + MAX_TOP * 8)),
        ];
        let last = self.place.last_stage();
        for (name, bytes) in sizes {
            let logits_part = matches!(
                name,
                "sel" | "seln" | "lg" | "lgall" | "draws" | "pens" | "work" | "out"
            );
            if logits_part && !last {
                continue;
            }
            grow(&self.gpu, &mut self.ws, &mut self.ws_epoch, name, bytes)?;
        }
        Ok(())
    }

    /// Bytes of attention_decode's per-split partial results: the most any step can
    /// need (only steps of fewer than 2 × SMs tokens are split), so the buffer is
    /// sized once, not worked out again every step.
    fn part_bytes(&self) -> usize {
        let (kvh, sms) = (self.shard.kv_heads, self.gpu.sms);
        if !matches!(self.attention, DecodeAttention::Grouped { .. }) {
            return 0;
        }
        (1..=2 * sms)
            .map(|n| match splits(n, kvh, sms) {
                1 => 0,
                z => n * self.shard.heads * z * (self.cfg.head_dim + 2) * 4,
            })
            .max()
            .unwrap_or(0)
    }

    fn tp_all_reduce(&self, buf: u64, count: usize) -> Result<()> {
        if let Some(ar) = &self.comms.custom
            && ar.fits(buf, count, self.dt)
        {
            return self.gpu.timed(
                || ar.run(&self.gpu, buf, count, self.dt),
                |_| format!("p2p all_reduce {}", profile::count_label(count)),
            );
        }
        match &self.comms.tp {
            Some(c) => self.gpu.timed(
                || c.all_reduce_sum(buf, count, self.dt),
                |_| format!("nccl all_reduce {}", profile::count_label(count)),
            ),
            None => Ok(()),
        }
    }

    fn launch_rows(&self, name: &str, rows: usize, cols: usize, args: Args) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        let block = cols.next_multiple_of(32).clamp(32, 1024) as u32;
        self.gpu.launch(
            &format!("{name}_{}", self.dt.suffix()),
            (rows as u32, 1, 1),
            block,
            args,
        )
    }

    fn elementwise(&self, name: &str, n: usize, args: Args) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        self.gpu
            .launch_1d(&format!("{name}_{}", self.dt.suffix()), n, args)
    }

    /// `buf[r, c] += bias[c]` over `rows` rows of `cols`, when there is a bias.
    fn add_bias(&self, buf: u64, bias: Option<&DevBuf>, rows: usize, cols: usize) -> Result<()> {
        let Some(b) = bias else {
            return Ok(());
        };
        let n = rows * cols;
        self.elementwise(
            "add_bias",
            n,
            Args::new()
                .ptr(buf)
                .ptr(b.ptr)
                .i32(cols as i32)
                .i64(n as i64),
        )
    }

    /// `out = rms_norm(x [+= y]) · w` over `rows` rows (`y = 0`: no residual add).
    fn rms_norm(&self, x: u64, y: u64, w: &DevBuf, out: u64, rows: usize) -> Result<()> {
        let h = self.cfg.hidden_size;
        self.launch_rows(
            "rms_norm",
            rows,
            h,
            Args::new()
                .ptr(x)
                .ptr(y)
                .ptr(w.ptr)
                .ptr(out)
                .i32(h as i32)
                .f32(self.cfg.rms_norm_eps as f32),
        )
    }

    /// `out = rms_norm(x [+= delta]) · norm · wᵀ` for `t` token rows (`w` is `[n, hidden]`;
    /// `delta = 0`: no residual add). With `fuse` (one row) the GEMV builds its input
    /// itself and writes `x + delta` to `spare` instead of into `x`; returns whether the
    /// residual stream moved there.
    fn normed_product(
        &self,
        fuse: bool,
        t: usize,
        (x, delta, spare): (u64, u64, u64),
        norm: &DevBuf,
        (n, w): (usize, &DevBuf),
        out: u64,
    ) -> Result<bool> {
        let h = self.cfg.hidden_size;
        if fuse {
            let eps = self.cfg.rms_norm_eps as f32;
            let input = (x, delta, spare, norm.ptr);
            self.gpu
                .gemv_fused(Fused::Norm, self.dt, n, h, input, w.ptr, out, eps)?;
            return Ok(delta != 0);
        }
        let a = self.ws["a"].ptr;
        self.rms_norm(x, delta, norm, a, t)?;
        self.gpu.gemm(self.dt, t, n, h, a, w.ptr, out)?;
        Ok(false)
    }

    /// A row-parallel product: `y = all_reduce(input[t, k] · wᵀ) + bias` (bias once).
    fn row_parallel(
        &self,
        t: usize,
        k: usize,
        input: u64,
        w: &DevBuf,
        bias: Option<&DevBuf>,
        y: u64,
    ) -> Result<()> {
        let h = self.cfg.hidden_size;
        self.gpu.gemm(self.dt, t, h, k, input, w.ptr, y)?;
        self.row_parallel_tail(t, bias, y)
    }

    /// The rest of a row-parallel product once this rank's part is in `y`.
    fn row_parallel_tail(&self, t: usize, bias: Option<&DevBuf>, y: u64) -> Result<()> {
        let h = self.cfg.hidden_size;
        self.tp_all_reduce(y, t * h)?;
        self.add_bias(y, bias, t, h)
    }

    /// Runs this rank's part of one step over `chunks`. On the sampling rank
    /// (`sampler`), draws `draws` from the logits rows and, with `want_logits`, also
    /// returns every row's logits; `None` elsewhere.
    ///
    /// A decode step (one token per sequence, no logits asked for) is padded to the
    /// next [`GRAPH_BUCKETS`] size and, from the second step of that size on, replays
    /// a CUDA graph of the whole forward (captured once per size); padding tokens
    /// write no K/V (slot −1) and their rows are never drawn.
    pub fn step(
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
        self.reserve(t, r, draws.len(), pens, m.blocks.len())?;
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
        let p = |n: &str| self.ws[n].ptr;
        let scratch = Scratch {
            draws: p("draws"),
            pens: p("pens"),
            work: p("work"),
            out: p("out"),
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

    /// Mean host time per step by phase (None before the first step).
    pub fn step_times(&self) -> Option<String> {
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

    /// Runs the forward on padding tokens (nothing is written to the KV cache) once
    /// per prefill size in `prefill`, and twice per decode size up to `max_seqs`
    /// (the second run captures that size's CUDA graph), so that no request pays for
    /// lazy kernel loading, GEMM tuning or graph capture. Needs the KV cache. Every
    /// rank must call it with the same arguments at the same point: the collectives
    /// inside have to match.
    pub fn warmup(&mut self, prefill: &[usize], max_seqs: usize) -> Result<()> {
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
        self.reserve(most, rows, 0, 0, 1)?;
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

    /// Whether prefill chunks take the tiled attention kernel (head_dim % 4 == 0,
    /// at most 128); otherwise every token takes the per-token kernel.
    fn prefill_tiles(&self) -> bool {
        let hd = self.cfg.head_dim;
        hd.is_multiple_of(4) && hd <= 128
    }

    fn upload_meta(&mut self, m: &Meta) -> Result<MetaPtrs> {
        let host = m.pack();
        let ptr = grow(
            &self.gpu,
            &mut self.ws,
            &mut self.ws_epoch,
            "meta",
            host.len() * 4,
        )?;
        self.gpu.upload(ptr, &host)?;
        Ok(m.ptrs(ptr))
    }

    /// Where the step's gathered logits `[tp][rows][chunk]` are.
    fn logits_ptr(&self) -> u64 {
        if self.comms.tp.is_some() {
            self.ws["lgall"].ptr
        } else {
            self.ws["lg"].ptr
        }
    }

    /// The forward of a padded decode step of `n` tokens: eager the first time this
    /// size is seen (it warms cuBLAS and NCCL), captured into a CUDA graph and
    /// replayed after that. A capture that fails turns replays off for the process
    /// (the padding stays, as the other ranks expect it).
    fn forward_graphed(&mut self, n: usize, r: usize, at: &MetaPtrs) -> Result<()> {
        if self.graphs.epoch != self.ws_epoch {
            // A workspace buffer moved: every captured address is stale.
            self.graphs.exec.clear();
            self.graphs.epoch = self.ws_epoch;
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

    /// Launches the forward of `t` tokens with `r` logits rows (metadata already on
    /// the GPU at `at`): embedding or the previous stage's hidden states, this
    /// stage's layers, then the next stage's send or the gathered logits. Launches
    /// only — no host copies or waits, so a CUDA graph can capture it.
    fn forward(&self, t: usize, r: usize, at: &MetaPtrs) -> Result<()> {
        let cfg = &self.cfg;
        let (h, hd, bs) = (cfg.hidden_size, cfg.head_dim, self.block_size);
        let (nq, nkv) = (self.shard.heads * hd, self.shard.kv_heads * hd);
        let qkvw = nq + 2 * nkv;
        let p = |n: &str| self.ws[n].ptr;
        let (x, y) = (p("x"), p("y"));
        // With fused GEMVs the residual stream moves between x and x2 at every norm
        // that adds a delta: `x` is where it is now, `spare` the other buffer.
        let fuse = t == 1 && self.fuse;
        let eps = cfg.rms_norm_eps as f32;
        let (mut x, mut spare) = (x, p("x2"));
        let (qkv, attn, gu, act) = (p("qkv"), p("attn"), p("gu"), p("act"));
        if let Some(e) = &self.embed {
            self.launch_rows(
                "embed",
                t,
                h,
                Args::new()
                    .ptr(at.tok)
                    .ptr(e.ptr)
                    .ptr(x)
                    .i32(h as i32)
                    .i32(self.shard.vocab.0 as i32)
                    .i32(self.shard.vocab.1 as i32),
            )?;
            self.tp_all_reduce(x, t * h)?;
        } else {
            let world = self
                .comms
                .world
                .as_ref()
                .expect("stages > 1 have a world comm");
            self.gpu.timed(
                || world.recv(x, t * h, self.dt, self.place.prev_stage()),
                |_| "nccl recv".into(),
            )?;
        }
        let group = cfg.num_heads / cfg.num_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let hidden_act = cfg.hidden_act;
        let mut pending = false;
        for (li, l) in self.weights.iter().enumerate() {
            // This layer's sliding window (0: none), by its global index.
            let window = cfg.window(self.shard.layers.0 + li).map_or(0, |w| w as i32);
            let (kc, vc) = (&self.kv[li].0, &self.kv[li].1);
            let delta = if pending { y } else { 0 };
            let stream = (x, delta, spare);
            if self.normed_product(fuse, t, stream, &l.in_norm, (qkvw, &l.qkv), qkv)? {
                std::mem::swap(&mut x, &mut spare);
            }
            self.add_bias(qkv, l.qkv_bias.as_ref(), t, qkvw)?;
            self.launch_rows(
                "rope_kv",
                t,
                (self.shard.heads + self.shard.kv_heads) * hd / 2,
                Args::new()
                    .ptr(qkv)
                    .ptr(kc.ptr)
                    .ptr(vc.ptr)
                    .ptr(at.pos)
                    .ptr(at.slot)
                    .ptr(self.inv_freq.ptr)
                    .i32(self.shard.heads as i32)
                    .i32(self.shard.kv_heads as i32)
                    .i32(hd as i32)
                    .i32(qkvw as i32),
            )?;
            let common = |args: Args| {
                args.i32(self.shard.heads as i32)
                    .i32(self.shard.kv_heads as i32)
                    .i32(hd as i32)
                    .i32(qkvw as i32)
                    .i32(self.shard.q_start as i32)
                    .i32(group as i32)
                    .i32(self.shard.kv_start as i32)
                    .i32(bs as i32)
                    .f32(scale)
                    .i32(window)
            };
            if at.n_one > 0 {
                let args = Args::new().ptr(qkv).ptr(kc.ptr).ptr(vc.ptr).ptr(attn);
                let sfx = self.dt.suffix();
                let n_one = at.n_one as u32;
                let list = |a: Args| a.ptr(at.one).ptr(at.pos).ptr(at.tab).ptr(at.blocks);
                match self.attention {
                    DecodeAttention::Grouped { gm, tg } => {
                        let kvh = self.shard.kv_heads;
                        let z = splits(at.n_one, kvh, self.gpu.sms);
                        self.gpu.launch(
                            &format!("attention_decode{gm}_{sfx}"),
                            (n_one, kvh as u32, z as u32),
                            128,
                            common(list(args.ptr(p("part")))).i32(tg as i32),
                        )?;
                        if z > 1 {
                            self.gpu.launch(
                                &format!("attention_merge_{sfx}"),
                                (n_one, self.shard.heads as u32, 1),
                                hd.next_multiple_of(32) as u32,
                                Args::new()
                                    .ptr(p("part"))
                                    .ptr(at.one)
                                    .ptr(attn)
                                    .i32(self.shard.heads as i32)
                                    .i32(hd as i32)
                                    .i32(z as i32),
                            )?;
                        }
                    }
                    DecodeAttention::PerHead => self.gpu.launch(
                        &format!("attention_{sfx}"),
                        (n_one, self.shard.heads as u32, 1),
                        attention_threads(at.n_one * self.shard.heads),
                        common(list(args)),
                    )?,
                }
            }
            if at.n_tiles > 0 {
                let (name, threads) = match self.prefill_tc {
                    true => (format!("attention_prefill_tc{hd}_{}", self.dt.suffix()), 64),
                    false => (format!("attention_prefill_{}", self.dt.suffix()), 256),
                };
                self.gpu.launch(
                    &name,
                    (at.n_tiles as u32, self.shard.heads as u32, 1),
                    threads,
                    common(
                        Args::new()
                            .ptr(qkv)
                            .ptr(kc.ptr)
                            .ptr(vc.ptr)
                            .ptr(attn)
                            .ptr(at.tiles)
                            .ptr(at.blocks),
                    ),
                )?;
            }
            self.row_parallel(t, nq, attn, &l.o, l.o_bias.as_ref(), y)?;
            let (i1, i2) = (self.shard.inter, 2 * self.shard.inter);
            if self.normed_product(fuse, t, (x, y, spare), &l.post_norm, (i2, &l.gu), gu)? {
                std::mem::swap(&mut x, &mut spare);
            }
            self.add_bias(gu, l.gu_bias.as_ref(), t, i2)?;
            if fuse {
                let input = (gu, 0, 0, 0);
                self.gpu.gemv_fused(
                    Fused::Mlp(hidden_act),
                    self.dt,
                    h,
                    i1,
                    input,
                    l.down.ptr,
                    y,
                    eps,
                )?;
                self.row_parallel_tail(t, l.down_bias.as_ref(), y)?;
            } else {
                let n = t * i1;
                self.elementwise(
                    hidden_act.mul_kernel(),
                    n,
                    Args::new().ptr(gu).ptr(act).i32(i1 as i32).i64(n as i64),
                )?;
                self.row_parallel(t, i1, act, &l.down, l.down_bias.as_ref(), y)?;
            }
            pending = true;
        }
        if pending {
            self.elementwise("add", t * h, Args::new().ptr(x).ptr(y).i64((t * h) as i64))?;
        }
        if !self.place.last_stage() {
            let world = self
                .comms
                .world
                .as_ref()
                .expect("stages > 1 have a world comm");
            return self.gpu.timed(
                || world.send(x, t * h, self.dt, self.place.next_stage()),
                |_| "nccl send".into(),
            );
        }
        let (sel, seln, lg) = (p("sel"), p("seln"), p("lg"));
        self.launch_rows(
            "gather_rows",
            r,
            h,
            Args::new().ptr(x).ptr(at.rows).ptr(sel).i32(h as i32),
        )?;
        self.rms_norm(
            sel,
            0,
            self.final_norm.as_ref().expect("last stage"),
            seln,
            r,
        )?;
        let head = self.lm_head.as_ref().expect("last stage").ptr;
        self.gpu
            .gemm(self.dt, r, self.shard.chunk, h, seln, head, lg)?;
        if let Some(c) = &self.comms.tp {
            self.gpu.timed(
                || c.all_gather(lg, p("lgall"), r * self.shard.chunk, self.dt),
                |_| "nccl all_gather".into(),
            )?;
        }
        Ok(())
    }

    /// The gathered logits `[tp][rows][chunk]` as `[rows, vocab]` f32 on the host.
    fn logits_to_host(&self, logits: u64, r: usize) -> Result<Vec<f32>> {
        let (tp, chunk, vocab) = (self.place.tp, self.shard.chunk, self.cfg.vocab_size);
        let n = tp * r * chunk;
        let raw: Vec<f32> = match self.dt {
            DType::F32 => {
                let mut v = vec![0f32; n];
                self.gpu.download(&mut v, logits)?;
                v
            }
            DType::Bf16 => {
                let mut v = vec![half::bf16::ZERO; n];
                self.gpu.download(&mut v, logits)?;
                v.iter().map(|x| x.to_f32()).collect()
            }
            DType::F16 => {
                let mut v = vec![half::f16::ZERO; n];
                self.gpu.download(&mut v, logits)?;
                v.iter().map(|x| x.to_f32()).collect()
            }
        };
        let mut out = vec![0f32; r * vocab];
        for row in 0..r {
            for id in 0..vocab {
                out[row * vocab + id] = raw[((id / chunk) * r + row) * chunk + id % chunk];
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rank::kv::BlockTable;

    #[test]
    fn decode_attention_groups_query_heads_where_the_kernel_fits() {
        use DecodeAttention::*;
        let g = |gm, tg| Grouped { gm, tg };
        // (head_dim, query heads per KV head, RRANK_ATTENTION=per-head) → kernel
        for (hd, group, per_head, want) in [
            // Llama-3-8B; Qwen2-0.5B at TP1 (7 rounds up to 8); tiny test models; wide heads.
            (128, 4, false, g(4, 16)),
            (64, 7, false, g(8, 8)),
            (8, 2, false, g(2, 1)),
            (16, 1, false, g(1, 2)),
            (256, 8, false, g(8, 32)),
            // Too many query heads per KV head, odd or too wide heads, or asked for.
            (128, 16, false, PerHead),
            (100, 4, false, PerHead),
            (512, 4, false, PerHead),
            (128, 4, true, PerHead),
        ] {
            assert_eq!(
                DecodeAttention::choose(hd, group, per_head),
                want,
                "{hd} {group}"
            );
        }
    }

    #[test]
    fn few_decode_tokens_split_their_keys_to_fill_the_gpu() {
        // One token, 8 KV heads, 132 SMs: 33 parts → capped at 32 (256 blocks).
        assert_eq!(splits(1, 8, 132), 32);
        assert_eq!(splits(4, 8, 132), 9);
        // 33 tokens × 8 heads = 264 blocks already fill the GPU twice.
        assert_eq!(splits(33, 8, 132), 1);
        assert_eq!(splits(256, 8, 132), 1);
        assert_eq!(splits(0, 8, 132), 32);
    }

    fn chunk<'a>(tokens: &'a [u32], start: usize, table: &'a BlockTable) -> SeqChunk<'a> {
        SeqChunk {
            tokens,
            start,
            table,
            all_logits: false,
        }
    }

    #[test]
    fn decode_tokens_take_the_per_token_kernel_and_pad_to_a_bucket() {
        let (a, b) = (BlockTable(vec![3]), BlockTable(vec![5, 7]));
        let chunks = [chunk(&[11], 4, &a), chunk(&[12], 17, &b)];
        let mut m = Meta::build(&chunks, 16, 8, 100, true).unwrap();
        assert_eq!(m.one, [0, 1]);
        assert!(m.tiles.is_empty());
        assert_eq!(m.slot, [3 * 16 + 4, 7 * 16 + 1]);
        assert_eq!(m.tab, [0, 1]);
        assert_eq!(m.blocks, [3, 5, 7]);
        assert_eq!(m.rows, [0, 1]);
        m.pad(4);
        assert_eq!(m.tok, [11, 12, 0, 0]);
        assert_eq!(m.slot[2..], [-1, -1], "padding writes no K/V");
        assert_eq!(m.rows, [0, 1, 2, 3]);
        assert_eq!(m.one, [0, 1, 2, 3]);
    }

    #[test]
    fn prefill_chunks_split_into_tiles_after_the_decode_tokens() {
        let (a, b) = (BlockTable(vec![0]), BlockTable(vec![1, 2, 3, 4, 5]));
        let prompt: Vec<u32> = (0..70).collect();
        let chunks = [chunk(&[9], 3, &a), chunk(&prompt, 10, &b)];
        let m = Meta::build(&chunks, 16, 8, 100, true).unwrap();
        assert_eq!(m.one, [0]);
        // (first token, tokens, first position, table offset)
        assert_eq!(
            m.tiles,
            [1, 32, 10, 1, 33, 32, 42, 1, 65, 6, 74, 1],
            "tiles of 32 consecutive tokens"
        );
        assert_eq!(m.rows, [0, 70], "the last token of each chunk");
        assert_eq!(m.slot[1], 16 + 10, "position 10 is in the first block, 1");
        assert_eq!(
            m.slot[70],
            5 * 16 + 79 % 16,
            "position 79 in the fifth block, 5"
        );
        // Without tiles (head_dim not supported) every token is listed.
        let m = Meta::build(&chunks, 16, 8, 100, false).unwrap();
        assert_eq!(m.one.len(), 71);
        assert!(m.tiles.is_empty());
    }

    #[test]
    fn packed_offsets_match_the_parts() {
        let t = BlockTable(vec![2, 4]);
        let prompt: Vec<u32> = (1..21).collect();
        let m = Meta::build(&[chunk(&prompt, 0, &t)], 16, 8, 100, true).unwrap();
        let host = m.pack();
        let at = m.ptrs(1000);
        let word = |p: u64| host[((p - 1000) / 4) as usize];
        assert_eq!(word(at.tok), 1);
        assert_eq!(word(at.pos + 4 * 19), 19);
        assert_eq!(word(at.slot + 4 * 17), 4 * 16 + 1);
        assert_eq!(word(at.rows), 19);
        assert_eq!(word(at.tiles + 4), 20, "one tile of 20 tokens");
        assert_eq!(word(at.blocks + 4), 4);
        assert_eq!((at.n_one, at.n_tiles), (0, 1));
        assert_eq!(host.len() as u64 * 4, at.blocks + 8 - 1000);
        assert!(host.len() * 4 <= Meta::bytes(20, 1, 2));
    }

    #[test]
    fn bad_positions_blocks_and_ids_are_errors() {
        let t = BlockTable(vec![1]);
        let past = Meta::build(&[chunk(&[1], 16, &t)], 16, 8, 100, true);
        assert!(
            matches!(past, Err(GpuError::Run(e)) if e.contains("past the sequence's 1 blocks"))
        );
        let t9 = BlockTable(vec![9]);
        let outside = Meta::build(&[chunk(&[1], 0, &t9)], 16, 8, 100, true);
        assert!(
            matches!(outside, Err(GpuError::Run(e)) if e.contains("outside the 8-block cache"))
        );
        let id = Meta::build(&[chunk(&[100], 0, &t)], 16, 8, 100, true);
        assert!(matches!(id, Err(GpuError::Run(e)) if e.contains("outside the vocabulary")));
    }
}
