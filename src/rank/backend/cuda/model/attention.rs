//! Which attention kernel runs for which tokens, and its launches: decode tokens (and
//! prefill tokens where tiles don't apply) take one block per token, either the
//! GQA-grouped split-KV kernel (`attention_decode{gm}`, merged by `attention_merge`
//! when split) or the per-head one for shapes it does not take; prefill chunks take
//! tiles of [`super::meta::TILE_TOKENS`] tokens, on tensor cores for bf16/f16 with
//! head_dim 64 or 128.

use super::super::{Args, DevBuf, Result};
use super::CudaModel;
use super::meta::MetaPtrs;
use super::workspace::Ws;

/// Threads of a per-token attention block: 16 warps, or 32 (kernels/attention_decode.cu's
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
pub(super) enum DecodeAttention {
    /// `attention_decode{gm}`: one block per (token, KV head, split) for up to `gm`
    /// query heads sharing the KV head, `tg` lanes per key (kernels/attention_decode.cu).
    Grouped { gm: usize, tg: usize },
    /// `attention`: one block per (token, query head); for head sizes the grouped
    /// kernel does not take (head_dim % 8 != 0 or > 256, > 8 query heads per KV
    /// head) and with `RRANK_ATTENTION=per-head`.
    PerHead,
}

impl DecodeAttention {
    /// The kernel for `head_dim` with at most `group` local query heads per KV head.
    pub(super) fn choose(head_dim: usize, group: usize, per_head: bool) -> DecodeAttention {
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

impl CudaModel {
    /// Bytes of attention_decode's per-split partial results: the most any step can
    /// need (only steps of fewer than 2 × SMs tokens are split), so the buffer is
    /// sized once, not worked out again every step.
    pub(super) fn part_bytes(&self) -> usize {
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

    /// at most 128); otherwise every token takes the per-token kernel.
    pub(super) fn prefill_tiles(&self) -> bool {
        let hd = self.cfg.head_dim;
        hd.is_multiple_of(4) && hd <= 128
    }

    /// Attention of layer `li` (sliding `window`, 0: none) for every token of the
    /// step: reads q from the fused q|k|v rows, K/V from the paged cache, writes `attn`.
    pub(super) fn attention(
        &self,
        kv: (&DevBuf, &DevBuf),
        at: &MetaPtrs,
        window: i32,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let (hd, bs) = (cfg.head_dim, self.block_size);
        let qkvw = self.shard.qkv_width(hd);
        let group = cfg.num_heads / cfg.num_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let (kc, vc) = kv;
        let p = |w: Ws| self.ws.ptr(w);
        let (qkv, attn) = (p(Ws::Qkv), p(Ws::Attn));
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
                        common(list(args.ptr(p(Ws::Part)))).i32(tg as i32),
                    )?;
                    if z > 1 {
                        self.gpu.launch(
                            &format!("attention_merge_{sfx}"),
                            (n_one, self.shard.heads as u32, 1),
                            hd.next_multiple_of(32) as u32,
                            Args::new()
                                .ptr(p(Ws::Part))
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
