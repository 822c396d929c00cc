//! Which slice of the model one rank holds: its query and KV heads, its part of the
//! MLP width and of the vocabulary (Megatron-style tensor parallelism), and its
//! contiguous range of layers (pipeline parallelism). Computed once from config.json
//! and the placement, so the weights recipe and both backends see local shapes only.

use super::config::{ModelConfig, stage_layers};
use crate::rank::dist::Placement;

/// Vocab rows of TP rank `r`: equal contiguous chunks (the last may be short or empty).
pub fn vocab_range(vocab: usize, tp: usize, r: usize) -> (usize, usize) {
    let chunk = vocab.div_ceil(tp);
    ((r * chunk).min(vocab), ((r + 1) * chunk).min(vocab))
}

/// Which slice of every tensor one rank holds.
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

    /// Layers of this stage.
    pub fn num_layers(&self) -> usize {
        self.layers.1 - self.layers.0
    }

    /// Width of the fused q|k|v row: local query heads, then K and V heads.
    pub fn qkv_width(&self, head_dim: usize) -> usize {
        (self.heads + 2 * self.kv_heads) * head_dim
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
