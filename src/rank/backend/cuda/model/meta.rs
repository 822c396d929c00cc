//! A step's metadata as the kernels read it: token ids, positions, cache slots,
//! logits rows, which tokens take the per-token attention kernel and which prefill
//! tiles the tiled one, and the block tables, packed into one buffer and uploaded in
//! one copy. Bad positions, blocks and ids are refused here, before any launch.

use super::super::{GpuError, Result};
use crate::rank::backend::SeqChunk;

/// A step's metadata, uploaded in one copy: token ids, positions, each token's
/// offset into the concatenated block tables, its cache slot, the logits rows, the
/// tokens whose attention runs one block per token (`one`: decode tokens), the
/// prefill tiles (4 ints each: first token, tokens, first position, table offset)
/// and the block tables.
#[derive(Default)]
pub(super) struct Meta {
    pub(super) tok: Vec<i32>,
    pub(super) pos: Vec<i32>,
    pub(super) tab: Vec<i32>,
    pub(super) slot: Vec<i32>,
    pub(super) rows: Vec<i32>,
    pub(super) one: Vec<i32>,
    pub(super) tiles: Vec<i32>,
    pub(super) blocks: Vec<i32>,
}

/// Device addresses of [`Meta`]'s parts, and the counts the launches need.
pub(super) struct MetaPtrs {
    pub(super) tok: u64,
    pub(super) pos: u64,
    pub(super) tab: u64,
    pub(super) slot: u64,
    pub(super) rows: u64,
    pub(super) one: u64,
    pub(super) tiles: u64,
    pub(super) blocks: u64,
    pub(super) n_one: usize,
    pub(super) n_tiles: usize,
}

/// Tokens per prefill attention tile (kernels/attention_prefill.cu's RR_TQ).
pub(super) const TILE_TOKENS: usize = 32;

impl Meta {
    /// The metadata of a step over `chunks` (block size `bs`): prefill chunks split
    /// into tiles when `tiled`, every other token listed for the per-token kernel.
    /// Positions past a sequence's table, blocks outside the `kv_blocks` cache and ids
    /// outside the vocabulary are errors.
    pub(super) fn build(
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
    pub(super) fn pad(&mut self, n: usize) {
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
    pub(super) fn bytes(t: usize, r: usize, blocks: usize) -> usize {
        (9 * t + r + blocks) * 4
    }

    pub(super) fn pack(&self) -> Vec<i32> {
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

    pub(super) fn ptrs(&self, base: u64) -> MetaPtrs {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rank::kv::BlockTable;

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
